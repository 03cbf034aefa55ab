"""The engine: continuous-batching, KV-cached generation of ERNIE 4.5 on one CPU process.

`Engine` owns the request lifecycle: `submit` queues, and each scheduler `step` cancels, admits,
decodes one token for every running row and retires the finished ones.
- Waiting requests are prefilled together (as many as there are free rows, within PREFILL_TOKENS
  padded tokens and similar lengths) in one forward, of which only the last position goes through
  the LM head; the group then joins the running batch (`kv_cache.py` has the layout).
- A prompt longer than `prefill_chunk` tokens is prefilled on its own, one chunk per scheduler step,
  in a cache of its own that joins the batch after its last chunk: the running rows decode a token
  between chunks, so a long prompt arriving does not stall every stream for its whole prefill (and
  its attention bias is chunk x length, not length x length).
- Finished / cancelled rows leave the batch at the end of the step that finished them.

Threading: `submit` / `cancel` may be called from any thread; `step` runs in one thread at a time
(the engine thread started by `start()`, or the caller of `generate` / `stream` when none is running).
numpy's BLAS uses OMP_NUM_THREADS / OPENBLAS_NUM_THREADS threads (default: every CPU), and Paddle's
matmul and the batch's small products (the stepping thread and helper threads woken a job at a time,
`forward._in_parallel`) as many (`forward.blas_threads`).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ernie_ops.errors import UserError
from ernie_ops.serve.engine.forward import DenseForward, load_checkpoint, load_reference, reference_logits
from ernie_ops.serve.engine.kv_cache import Batch, Filling, merge, prefill_inputs, relayout, shrink, with_room
from ernie_ops.serve.engine.request import (
    FINISH_CANCELLED,
    FINISH_ERROR,
    FINISH_LENGTH,
    FINISH_STOP,
    Delta,
    Request,
    RequestHandle,
    Result,
)
from ernie_ops.serve.engine.sampling import SamplingParams, sample

log = logging.getLogger(__name__)

# At most this many (padded) prompt tokens go through one prefill forward: several waiting prompts
# share a forward, so the time to first token does not grow a prefill per queued request.
PREFILL_TOKENS = 4096
# A longer prompt is prefilled this many tokens per step, between the running rows' decode steps.
PREFILL_CHUNK = 256  # on 2 cores at the 0.3B shape: ~2 s of prefill between two decode steps
# An idle engine woken by a request waits while more keep arriving (each within GATHER_S of the one
# before, GATHER_MAX_S at most) so that requests sent together share one prefill: 8 prompts submitted
# in a loop were otherwise prefilled as 2 + 6 or so, which took 4.20 s to 32 tokens each against 4.09
# (0.3B shape, 2 cores). A lone request's first token comes GATHER_S later.
GATHER_S = 0.002
GATHER_MAX_S = 0.02


class Engine:
    """Continuous-batching, KV-cached generation on one CPU process."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        max_batch_size: int = 8,
        max_length: int | None = None,
        reference: bool = True,
        prefill_chunk: int = PREFILL_CHUNK,
        generation_config: dict[str, Any] | None = None,
        quantization: str | None = None,
        net: DenseForward | None = None,
    ):
        """MODEL: ERNIEKit's loaded model, the reference of `full_logits` (None with NET given and
        no reference wanted); NET: the forward that serves (built over MODEL's weights when None)."""
        if net is None:
            if model is None:
                raise ValueError("Engine needs ERNIEKit's model or a DenseForward")
            net = DenseForward.of_model(model, quantization)  # wint8 / wint4: FastDeploy's arithmetic
        self.net = net
        self.model = model if reference else None  # ERNIEKit's: the reference forward of `full_logits`
        self.quantization = quantization
        self.reference = reference and model is not None
        self.tokenizer = tokenizer
        self.generation_config = generation_config or {}  # the checkpoint's generation_config.json
        self.max_batch_size = max_batch_size
        self.prefill_chunk = prefill_chunk
        self.max_length = max_length or int(getattr(net.config, "max_position_embeddings", 4096))
        # ERNIE 4.5 ends a chat turn with <|end_of_sentence|> and a document with </s>: either ends
        eos = [getattr(tokenizer, "eos_token_id", None), getattr(tokenizer, "sep_token_id", None)]
        self.eos_token_ids = {int(i) for i in eos if i is not None}
        self._batch = Batch()
        self._filling: Filling | None = None
        self._waiting: deque[Request] = deque()
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()  # guards _waiting and _cancelled (the cross-thread inbox)
        self._step_lock = threading.Lock()  # one stepping thread at a time
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._ids = itertools.count()

    # -- loading ------------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        model_dir: Path | str,
        max_batch_size: int = 8,
        reference: bool = False,
        quantization: str | None = None,
    ) -> Engine:
        """Load a dense ERNIE 4.5 Paddle checkpoint in float32 on the CPU, its weights read from the
        safetensors files once; `reference` also loads ERNIEKit's own model (`full_logits`, for tests),
        a second copy of the weights."""
        path = Path(model_dir)
        config, tokenizer, generation_config = load_checkpoint(path)
        net = DenseForward.load(path, config, quantization)
        return cls(
            load_reference(path) if reference else None,
            tokenizer,
            max_batch_size=max_batch_size,
            reference=reference,
            generation_config=generation_config,
            quantization=quantization,
            net=net,
        )

    # -- text helpers -------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        # no attention mask: ERNIE's tokenizer builds it as an n x n causal matrix (quadratic time
        # and memory; a 4,000-word prompt took 12 s and a 128K one would exhaust memory)
        return list(self.tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"])

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of a conversation in ERNIE 4.5's chat format, ending with "Assistant: "."""
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.encode(str(text))

    # -- the model ----------------------------------------------------------------------------

    def full_logits(self, token_ids: Sequence[int]) -> np.ndarray:
        """Logits [n, V] of one sequence in one uncached forward of ERNIEKit's own model.

        The reference the tests hold the fast path to; serving never calls it.
        """
        if not self.reference:
            raise RuntimeError("ERNIEKit's model was not loaded: load with Engine.load(..., reference=True)")
        return reference_logits(self.model, token_ids)

    # -- submitting ---------------------------------------------------------------------------

    def submit(
        self,
        prompt: str | Sequence[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        listener: Callable[[Delta | None], None] | None = None,
    ) -> RequestHandle:
        """Queue a request (thread-safe); it joins the running batch at the next step.

        With a `listener`, the stepping thread calls it with each delta and then None (it must be
        quick and must not block), and the handle's `stream` has nothing to read."""
        params = params or SamplingParams()
        params.check()
        ids = self.encode(prompt) if isinstance(prompt, str) else [int(i) for i in prompt]
        if not ids:
            raise UserError("the prompt is empty")
        if len(ids) >= self.max_length:
            raise UserError(f"the prompt has {len(ids)} tokens; the model takes at most {self.max_length}")
        stop_ids = frozenset(params.stop_token_ids) | (
            frozenset() if params.ignore_eos else self.eos_token_ids
        )
        request = Request(
            request_id or f"req-{next(self._ids)}", ids, params, self.tokenizer, stop_ids, listener
        )
        with self._lock:
            self._waiting.append(request)
        self._wake.set()
        return RequestHandle(self, request)

    def cancel(self, request_id: str) -> None:
        """Stop a request at the next step (finish_reason "cancelled"); unknown ids are ignored."""
        with self._lock:
            self._cancelled.add(request_id)
        self._wake.set()

    def generate(
        self,
        prompts: Sequence[str | Sequence[int]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[Result]:
        """Run prompts to the end, batched together; results in the order of the prompts."""
        per_prompt = list(params) if isinstance(params, Sequence) else [params] * len(prompts)
        if len(per_prompt) != len(prompts):
            raise UserError(f"{len(prompts)} prompts but {len(per_prompt)} SamplingParams")
        handles = [self.submit(p, sp) for p, sp in zip(prompts, per_prompt, strict=True)]
        return [h.result() for h in handles]

    # -- the engine thread --------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Step in a background thread from now on (what a server does)."""
        if self.running:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="ernie-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None

    def _loop(self) -> None:
        idle = True
        while not self._stopping:
            if not self.has_work():
                self._wake.wait(0.5)
                self._wake.clear()
                idle = True
                continue
            if idle:
                self._gather()
                idle = False
            self.step()

    def _gather(self) -> None:
        """Wait while requests keep arriving at the idle engine (see GATHER_S), up to a full batch."""
        deadline = time.monotonic() + GATHER_MAX_S
        seen = 0
        while time.monotonic() < deadline:
            with self._lock:
                waiting = len(self._waiting)
            if waiting == seen or waiting >= self.max_batch_size:
                return
            seen = waiting
            time.sleep(GATHER_S)

    def has_work(self) -> bool:
        with self._lock:
            return bool(self._waiting or self._batch.rows or self._filling)

    def scheduler_load(self) -> tuple[int, int]:
        """(running, waiting): rows in the batch (a long prompt being prefilled counts), the queue."""
        with self._lock:
            waiting = len(self._waiting)
        return len(self._batch.rows) + (self._filling is not None), waiting

    # -- one scheduler step -------------------------------------------------------------------

    def step(self) -> int:
        """Cancel, admit (prefill; the next chunk of a long prompt), decode one token for every
        running request, retire.

        Returns the number of requests still running.
        """
        with self._step_lock:
            try:
                self._apply_cancellations()
                self._admit()
                if self._filling is not None:
                    self._fill()
                if self._batch.rows:
                    self._decode()
            except Exception as err:  # a failed forward fails its requests, not the engine thread
                log.exception("engine step failed")
                self._fail_all(f"{type(err).__name__}: {err}")
            return len(self._batch.rows)

    def _apply_cancellations(self) -> None:
        with self._lock:
            cancelled, self._cancelled = self._cancelled, set()
            for request in [r for r in self._waiting if r.id in cancelled]:
                self._waiting.remove(request)
                self._finish(request, FINISH_CANCELLED)
        if self._filling is not None and self._filling.request.id in cancelled:
            self._finish(self._filling.request, FINISH_CANCELLED)
            self._filling = None
        gone = [i for i, r in enumerate(self._batch.rows) if r.id in cancelled]
        for i in gone:
            self._finish(self._batch.rows[i], FINISH_CANCELLED)
        if gone:
            self._retire()

    def _admit(self) -> None:
        """Prefill waiting requests into free rows: short prompts several per forward; the first
        long one (over `prefill_chunk` tokens) starts filling, a chunk per step (`_fill`)."""
        while True:
            with self._lock:
                free = self.max_batch_size - len(self._batch.rows) - (self._filling is not None)
                if free <= 0 or not self._waiting:
                    return
                long = [r for r in self._waiting if len(r.prompt) > self.prefill_chunk]
                if long and self._filling is None:
                    self._waiting.remove(long[0])
                    cache = self.net.new_cache(1, with_room(len(long[0].prompt)))
                    self._filling = Filling(long[0], cache)
                    continue
                short = [r for r in self._waiting if len(r.prompt) <= self.prefill_chunk][:free]
                if not short:
                    return
                group = _prefill_group(short, PREFILL_TOKENS)
                for request in group:
                    self._waiting.remove(request)
            try:
                self._prefill(group)
            except Exception as err:  # the group is in neither the queue nor the batch: fail it here
                for request in group:
                    if request.finish_reason is None:
                        self._finish(request, FINISH_ERROR, f"{type(err).__name__}: {err}", flush=False)
                raise

    def _prefill(self, group: list[Request]) -> None:
        """Run the prompts left-padded to a common length, sample each first token, join the batch.

        A pad query attends to itself only and no real query attends to a pad key, so each row gets
        what it would alone (up to float summation order).
        """
        ids, positions, bias, real = prefill_inputs([r.prompt for r in group])
        width = ids.shape[1]
        capacity = with_room(width)
        cache = self.net.new_cache(len(group), capacity)
        logits = self.net.forward(ids, positions, bias, cache, 0)
        for row, request in enumerate(group):
            self._accept(request, logits[row])
        keep = [i for i, r in enumerate(group) if r.finish_reason is None]
        if not keep:
            return
        valid = np.full((len(keep), capacity), -np.inf, dtype=np.float32)
        valid[:, :width][real[keep]] = 0
        new = Batch(
            [group[i] for i in keep],
            cache if len(keep) == len(group) else [c[keep] for c in cache],
            valid,
            np.asarray([len(group[i].prompt) for i in keep], dtype=np.int64),
            width,
        )
        self._batch = merge(self._batch, new) if self._batch.rows else new

    def _fill(self) -> None:
        """Feed the long prompt its next chunk; after the last, sample its first token and let it
        join the batch (its cache right-aligned with the running rows', as a prefill group's)."""
        assert self._filling is not None
        request, cache, at = self._filling.request, self._filling.cache, self._filling.done
        end = min(at + self.prefill_chunk, len(request.prompt))
        positions = np.arange(at, end)
        causal = np.arange(end)[None, :] <= positions[:, None]  # [chunk, end]
        bias = np.where(causal, np.float32(0), np.float32(-np.inf))[None]
        try:
            ids = np.asarray([request.prompt[at:end]], dtype=np.int64)
            logits = self.net.forward(ids, positions[None], bias, cache, at)
        except Exception as err:  # the request is in neither the queue nor the batch: fail it here
            self._filling = None
            self._finish(request, FINISH_ERROR, f"{type(err).__name__}: {err}", flush=False)
            raise
        self._filling.done = end
        if end < len(request.prompt):
            return
        self._filling = None
        self._accept(request, logits[0])
        if request.finish_reason is not None:
            return
        valid = np.full((1, cache[0].shape[2]), -np.inf, dtype=np.float32)
        valid[:, :end] = 0
        new = Batch([request], cache, valid, np.asarray([end], dtype=np.int64), end)
        self._batch = merge(self._batch, new) if self._batch.rows else new

    def _decode(self) -> None:
        """Feed every row its pending token at column `length`; one batched forward."""
        batch = self._batch
        if batch.length == batch.capacity:  # no free column left: copy into a larger cache
            batch = self._batch = relayout(batch, list(range(len(batch.rows))), 0)
        at = batch.length
        batch.bias[:, at] = 0
        ids = np.asarray([[r.pending] for r in batch.rows], dtype=np.int64)
        logits = self.net.forward(
            ids, batch.positions[:, None], batch.bias[:, None, : at + 1], batch.cache, at
        )
        batch.length += 1
        batch.positions += 1
        for row, request in enumerate(batch.rows):
            self._accept(request, logits[row])
        self._retire()

    def _retire(self) -> None:
        """Drop finished rows from the batch and cache columns no remaining row uses."""
        batch = self._batch
        keep = [i for i, r in enumerate(batch.rows) if r.finish_reason is None]
        if len(keep) == len(batch.rows):
            return
        if not keep:
            self._batch = Batch()
            return
        self._batch = shrink(batch, keep)

    # -- per-request bookkeeping --------------------------------------------------------------

    def _accept(self, request: Request, logits: np.ndarray) -> None:
        """Sample the next token from a logits row and decide whether the request is done."""
        params = request.params
        if request.logits is not None:
            request.logits.append(logits.copy())
        token = sample(logits, params, [*request.prompt, *request.output], request.rng)
        if token in request.stop_ids:
            self._finish(request, FINISH_STOP)
            return
        request.output.append(token)
        request.pending = token
        if self._cut_at_stop(request, request.detok.add(token)):
            self._finish(request, FINISH_STOP, flush=False)  # the text ends where the stop string began
        elif len(request.output) >= params.max_tokens or len(request.prompt) + len(request.output) >= (
            self.max_length
        ):
            self._finish(request, FINISH_LENGTH)
        else:
            self._emit(request, final=False)

    @staticmethod
    def _cut_at_stop(request: Request, new_text: str) -> bool:
        """Append `new_text`; True when a stop string completed (the text is cut where it began)."""
        request.text += new_text
        start = request.stops.feed(new_text)
        if start is None:
            return False
        request.text = request.text[: len(request.text) - len(new_text) + start]
        return True

    def _emit(self, request: Request, final: bool) -> None:
        """Stream the text that can no longer change (a possible stop-string start is held back)."""
        safe = len(request.text) if final else len(request.text) - request.stops.held
        if safe <= request.emitted and not final:
            return
        delta = Delta(
            request.text[request.emitted : safe],
            request.output[request.emitted_ids :],
            request.finish_reason if final else None,
        )
        request.emitted, request.emitted_ids = max(safe, request.emitted), len(request.output)
        request.deliver(delta)

    def _finish(self, request: Request, reason: str, error: str | None = None, flush: bool = True) -> None:
        if flush:  # an incomplete character at the very end still comes out (as U+FFFD)
            self._cut_at_stop(request, request.detok.flush())
        request.finish_reason, request.error = reason, error
        self._emit(request, final=True)
        request.deliver(None)
        request.done.set()

    def _fail_all(self, error: str) -> None:
        with self._lock:
            failed = [*self._batch.rows, *self._waiting]
            self._waiting.clear()
        for request in failed:
            if request.finish_reason is None:
                self._finish(request, FINISH_ERROR, error, flush=False)
        self._batch = Batch()


def _prefill_group(waiting: list[Request], budget: int) -> list[Request]:
    """The first waiting request and those after it that fit one padded prefill of `budget` tokens.

    Prompts are left-padded to the longest, so a much longer prompt waits for a later group rather
    than making every row pay for its length.
    """
    group = [waiting[0]]
    for request in waiting[1:]:
        lengths = [len(r.prompt) for r in (*group, request)]
        longest = max(lengths)
        if longest * len(lengths) <= budget and longest <= 2 * min(lengths) + 32:
            group.append(request)
    return group
