"""The embedded CPU inference engine: ERNIE 4.5 with a KV cache and continuous batching.

It is the core the embedded OpenAI-compatible server stands on (the server is a separate module).
The checkpoint is loaded with ERNIEKit's own `Ernie4_5_MoeForCausalLM` in float32 (Paddle has no
bf16 CPU kernels), the tokenizer is `ernie.tokenizer.Ernie4_5_Tokenizer`.

The forward that serves requests is `DenseForward`: dense ERNIE 4.5's arithmetic written out in numpy
over the loaded weights (embedding, norms and LM head shared zero-copy with Paddle, the linear
layers copied once into [out, in] layout, after which Paddle's copies are freed). With
`reference=True` (the tests) ERNIEKit's model stays whole: `full_logits` runs it, and the tests hold
the fast path to it within float tolerance. Why not ERNIEKit's forward: on CPU it costs
about 3x more per decode step and 4x more per prompt, because Paddle's matmul goes through its
bundled MKL (a slow generic path on non-Intel CPUs, slower gemv everywhere), its attention
concatenates the cache every step, builds masks and casts, and its LM head runs over every prompt
position. Why not `model.generate()`: it re-feeds the whole sequence at every step.

Batching design: one running batch with a *left-padded* KV cache, preallocated and written in place.
- Waiting requests are prefilled together (as many as there are free rows, within PREFILL_TOKENS
  padded tokens and similar lengths): left-padded to the longest prompt, a pad query attends only to
  itself and no real query to a pad key, positions count real tokens only, and only the last
  position goes through the LM head. The group's cache is then merged with the running one,
  right-aligned at the longer length.
- Every row's newest token is in the same column, so a decode step writes all rows' keys and values
  into the next free column of per-layer [B, kv_heads, capacity, head_dim] arrays; attention reads
  columns [0, length] with an additive bias (0 for a real token, -inf for padding), so padding gets
  weight 0 and a row's result does not depend on who else is in the batch (up to float summation
  order). Capacity grows by half when full (one copy), not every step.
- A prompt longer than `prefill_chunk` tokens is prefilled on its own, one chunk per scheduler step,
  in a cache of its own that joins the batch after its last chunk: the running rows decode a token
  between chunks, so a long prompt arriving does not stall every stream for its whole prefill (and
  its attention bias is chunk x length, not length x length).
- Each row carries its own position ids, so RoPE sees the positions the request would have alone.
- Finished / cancelled rows are dropped and cache columns that are padding for every remaining row
  trimmed (one copy), so a long request leaving does not keep the batch wide.

Threading: `submit` / `cancel` may be called from any thread; `step` runs in one thread at a time
(the engine thread started by `start()`, or the caller of `generate` / `stream` when none is running).
numpy's BLAS uses OMP_NUM_THREADS / OPENBLAS_NUM_THREADS threads.
"""

from __future__ import annotations

import itertools
import json
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ernie_ops.errors import UserError
from ernie_ops.extras import optional_imports

log = logging.getLogger(__name__)

FINISH_STOP = "stop"
FINISH_LENGTH = "length"
FINISH_CANCELLED = "cancelled"
FINISH_ERROR = "error"

# At most this many (padded) prompt tokens go through one prefill forward: several waiting prompts
# share a forward, so the time to first token does not grow a prefill per queued request.
PREFILL_TOKENS = 4096
# A longer prompt is prefilled this many tokens per step, between the running rows' decode steps.
PREFILL_CHUNK = 256  # on 2 cores at the 0.3B shape: ~2 s of prefill between two decode steps


@dataclass
class SamplingParams:
    """How one request is decoded; temperature 0 means greedy."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    repetition_penalty: float = 1.0  # >1 discourages tokens already in the prompt or the output
    seed: int | None = None  # the same seed gives the same sample (numpy RNG per request)
    stop: list[str] = field(default_factory=list)  # strings that end generation, not included
    stop_token_ids: list[int] = field(default_factory=list)  # ids that end generation, not included
    ignore_eos: bool = False
    return_logits: bool = False  # keep every step's logits row (tests, debugging)

    def check(self) -> None:
        problems = []
        if self.max_tokens < 1:
            problems.append(f"max_tokens must be >= 1, not {self.max_tokens}")
        if self.temperature < 0:
            problems.append(f"temperature must be >= 0, not {self.temperature}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], not {self.top_p}")
        if self.top_k < 0:
            problems.append(f"top_k must be >= 0, not {self.top_k}")
        if self.repetition_penalty <= 0:
            problems.append(f"repetition_penalty must be > 0, not {self.repetition_penalty}")
        if any(not s for s in self.stop):
            problems.append("stop strings must not be empty")
        if problems:
            raise UserError("; ".join(problems))


@dataclass
class Result:
    """A finished request. finish_reason: "stop", "length", "cancelled" or "error"."""

    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str
    error: str | None = None
    logits: list[np.ndarray] | None = None


@dataclass(frozen=True)
class Delta:
    """New output of a streamed request; finish_reason is set on the last one only."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None


# ---------------------------------------------------------------------------------------------
# detokenization and sampling (pure functions of the tokenizer / logits)


class Detokenizer:
    """Turns a growing list of token ids into text deltas that never split a character.

    Decoding one piece at a time breaks byte-fallback pieces (a CJK character is 3 pieces) and can
    lose a piece's leading space, so every step decodes a short window: the ids from `prefix` on,
    and the same window without the new ids; the delta is the difference. Text ending in U+FFFD is
    an incomplete UTF-8 sequence: it is held back until the next piece completes it.
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # the window starts here (one piece of context before `read`)
        self.read = 0  # ids before this have been emitted

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before) :]

    def flush(self) -> str:
        """What is left when the request ends (an incomplete character comes out as U+FFFD)."""
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return after[len(before) :] if len(after) > len(before) else ""


def sample(logits: np.ndarray, params: SamplingParams, seen: Sequence[int], rng: np.random.Generator) -> int:
    """One token id from a logits row."""
    row = logits.astype(np.float64)
    if params.repetition_penalty != 1.0 and len(seen):
        # CTRL-style: shrink positive logits, grow negative ones, of every token already seen
        ids = np.unique(np.asarray(seen, dtype=np.int64))
        vals = row[ids]
        row[ids] = np.where(vals > 0, vals / params.repetition_penalty, vals * params.repetition_penalty)
    if params.temperature == 0:
        return int(np.argmax(row))
    row = row / params.temperature
    if 0 < params.top_k < row.size:
        kth = np.partition(row, -params.top_k)[-params.top_k]
        row = np.where(row < kth, -np.inf, row)
    probs = np.exp(row - row.max())
    probs /= probs.sum()
    if params.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        # keep the smallest head whose mass reaches top_p (always at least the best token)
        keep = order[: int(np.searchsorted(cumulative, params.top_p)) + 1]
        kept = np.zeros_like(probs)
        kept[keep] = probs[keep]
        probs = kept / kept.sum()
    return int(rng.choice(probs.size, p=probs))


class StopMatcher:
    """Finds the first stop string in text that arrives piece by piece (an Aho-Corasick automaton).

    Each character costs the same however many stop strings a request has, and `held` is the
    longest tail of the text that could still grow into one (the stream holds it back). The first
    stop string to end wins; of those ending there, the longest (it starts earliest).
    """

    def __init__(self, stops: Sequence[str]):
        self._next: list[dict[str, int]] = [{}]  # trie edges; node 0 is the root
        self._depth = [0]  # characters from the root: the tail of the text this node stands for
        self._found = [0]  # length of the longest stop string ending at this node, 0 if none
        for stop in stops:
            node = 0
            for char in stop:
                if char not in self._next[node]:
                    self._next.append({})
                    self._depth.append(self._depth[node] + 1)
                    self._found.append(0)
                    self._next[node][char] = len(self._next) - 1
                node = self._next[node][char]
            self._found[node] = len(stop)
        self._fail = [0] * len(self._next)  # the longest proper suffix that is also a trie node
        frontier = deque(self._next[0].values())
        while frontier:
            node = frontier.popleft()
            for char, child in self._next[node].items():
                self._fail[child] = self._step(self._fail[node], char)
                self._found[child] = self._found[child] or self._found[self._fail[child]]
                frontier.append(child)
        self._state = 0

    def _step(self, node: int, char: str) -> int:
        while node and char not in self._next[node]:
            node = self._fail[node]
        return self._next[node].get(char, 0)

    def feed(self, text: str) -> int | None:
        """Read `text`; where in it the first completed stop string begins (negative: in text fed
        before), or None."""
        if len(self._next) == 1:  # no stop strings
            return None
        for i, char in enumerate(text):
            self._state = self._step(self._state, char)
            if self._found[self._state]:
                return i + 1 - self._found[self._state]
        return None

    @property
    def held(self) -> int:
        return self._depth[self._state]


# ---------------------------------------------------------------------------------------------
# requests and the running batch


class _Request:
    """Engine-side state of one request; touched only by the stepping thread once admitted."""

    def __init__(
        self,
        request_id: str,
        prompt: list[int],
        params: SamplingParams,
        tokenizer: Any,
        stop_ids: frozenset[int],
        listener: Callable[[Delta | None], None] | None = None,
    ):
        self.id = request_id
        self.prompt = prompt
        self.params = params
        self.stop_ids = stop_ids  # built once: a step must not cost more with a longer list
        self.stops = StopMatcher(params.stop)
        self.rng = np.random.default_rng(params.seed)
        self.output: list[int] = []
        self.pending: int | None = None  # sampled but not yet fed to the model
        self.detok = Detokenizer(tokenizer)
        self.text = ""
        self.emitted = 0  # characters of `text` already streamed
        self.emitted_ids = 0
        self.logits: list[np.ndarray] | None = [] if params.return_logits else None
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.deltas: queue.Queue[Delta | None] = queue.Queue()
        # called by the stepping thread with each delta, then None, instead of `deltas` (the
        # async adapter: no thread has to wait on the queue)
        self.listener = listener
        self.done = threading.Event()

    def deliver(self, delta: Delta | None) -> None:
        if self.listener is None:
            self.deltas.put(delta)
        else:
            self.listener(delta)

    def result(self) -> Result:
        return Result(
            self.id,
            self.prompt,
            list(self.output),
            self.text,
            self.finish_reason or "",
            self.error,
            self.logits,
        )


class RequestHandle:
    """What `Engine.submit` returns: stream the deltas, or wait for the result."""

    def __init__(self, engine: Engine, request: _Request):
        self._engine = engine
        self._request = request

    @property
    def request_id(self) -> str:
        return self._request.id

    @property
    def finished(self) -> bool:
        return self._request.done.is_set()

    def stream(self) -> Iterator[Delta]:
        """Deltas as they are produced; drives the engine itself when no engine thread runs."""
        while True:
            try:
                delta = self._request.deltas.get(timeout=0.05 if self._engine.running else 0)
            except queue.Empty:
                if not self._engine.running:
                    self._engine.step()
                continue
            if delta is None:
                return
            yield delta

    def result(self, timeout: float | None = None) -> Result:
        if not self._engine.running:
            while not self._request.done.is_set():
                self._engine.step()
        if not self._request.done.wait(timeout):
            raise TimeoutError(f"request {self.request_id} not finished after {timeout} s")
        return self._request.result()


class DenseForward:
    """A lean numpy forward of dense ERNIE 4.5 over the weights of ERNIEKit's loaded model.

    The same float32 arithmetic as ERNIEKit's `Ernie4_5_MoeForCausalLM` (RMSNorm, fused QKV with
    GQA, interleaved RoPE, softmax attention, SwiGLU MLP, tied or untied LM head), held to it within
    float tolerance by the tests. The embedding / LM head table and the norms are zero-copy views of
    the Paddle parameters; the layer weights are copied once into [out, in] layout (see `_Linear`).
    """

    def __init__(self, model: Any):
        config = model.config
        problems = [
            name
            for name, bad in (
                ("MoE layers", bool(getattr(config, "use_moe", False))),
                ("LayerNorm instead of RMSNorm", not getattr(config, "use_rmsnorm", True)),
                ("3-D RoPE", bool(config.get("rope_3d", False))),
            )
            if bad
        ]
        if problems:
            raise UserError(f"the CPU engine cannot run this model: {', '.join(problems)}")
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(config.num_key_value_heads or self.heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.heads)
        self.eps = float(config.rms_norm_eps)
        self.inner = int(config.intermediate_size)
        self.scale = np.float32(1.0 / self.head_dim**0.5)  # scale_qk_coeff cancels out in ERNIEKit
        ratio = float(getattr(config, "compression_ratio", 1.0) or 1.0)
        dims = np.arange(0, self.head_dim, 2, dtype=np.float32) / self.head_dim
        self.inv_freq = (1.0 / float(config.rope_theta) ** dims / ratio).astype(np.float32)

        self.layers = [
            _Layer(
                _array(layer.input_layernorm.weight),
                _array(layer.post_attention_layernorm.weight),
                _Linear.of(layer.self_attn.qkv_proj),
                _Linear.of(layer.self_attn.o_proj),
                _Linear.of(layer.mlp.up_gate_proj),
                _Linear.of(layer.mlp.down_proj),
            )
            for layer in model.ernie.layers
        ]
        self.embed = _array(model.ernie.embed_tokens.weight)
        self.norm = _array(model.ernie.norm.weight)
        head = _array(model.lm_head.weight)
        bias = getattr(model.lm_head, "bias", None)
        # [V, hidden] (a view): the tied embedding table as it is, an untied [hidden, V] transposed
        self.vocab_rows = head if config.tie_word_embeddings else head.T
        self.head_bias = None if bias is None else _array(bias)

    def new_cache(self, batch: int, capacity: int) -> list[np.ndarray]:
        """Keys and values of every layer: [2 * layers] arrays of [batch, kv_heads, capacity, head_dim]."""
        shape = (batch, self.kv_heads, capacity, self.head_dim)
        return [np.zeros(shape, dtype=np.float32) for _ in range(2 * len(self.layers))]

    def _norm(self, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        variance = np.mean(np.square(x), axis=-1, keepdims=True)
        return x / np.sqrt(variance + self.eps) * weight

    def _rope(self, x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        """ERNIE's RoPE rotates interleaved pairs (x[2i], x[2i+1]) by angle i; x is [B, S, heads, D]."""
        pairs = x.reshape(*x.shape[:-1], -1, 2)
        even, odd = pairs[..., 0], pairs[..., 1]
        out = np.empty_like(pairs)
        out[..., 0] = even * cos - odd * sin
        out[..., 1] = odd * cos + even * sin
        return out.reshape(x.shape)

    def forward(
        self, ids: np.ndarray, positions: np.ndarray, bias: np.ndarray, cache: list[np.ndarray], at: int
    ) -> np.ndarray:
        """Logits [B, V] of the last fed position of every row.

        ids / positions: [B, S]; the S new keys and values are written into `cache` at columns
        [at, at + S) and every query attends to columns [0, at + S) with the additive `bias`
        [B, S, at + S] (0 or -inf).
        """
        rows, steps = ids.shape
        heads, kv, dim = self.heads, self.kv_heads, self.head_dim
        end = at + steps
        angles = positions[..., None].astype(np.float32) * self.inv_freq
        cos, sin = np.cos(angles)[:, :, None], np.sin(angles)[:, :, None]  # [B, S, 1, D/2]
        x = self.embed[ids]  # [B, S, hidden]
        for i, w in enumerate(self.layers):
            qkv = w.qkv(self._norm(x, w.ln1))
            qkv = qkv.reshape(rows, steps, heads + 2 * kv, dim)
            q = self._rope(qkv[:, :, :heads], cos, sin)
            keys, values = cache[2 * i], cache[2 * i + 1]
            keys[:, :, at:end] = self._rope(qkv[:, :, heads : heads + kv], cos, sin).transpose(0, 2, 1, 3)
            values[:, :, at:end] = qkv[:, :, heads + kv :].transpose(0, 2, 1, 3)
            out = self._attend(q, keys[:, :, :end], values[:, :, :end], bias)
            x = x + w.o(out)
            gate_up = w.up_gate(self._norm(x, w.ln2))
            gate, up = gate_up[..., : self.inner], gate_up[..., self.inner :]
            x = x + w.down(gate / (1.0 + np.exp(-gate)) * up)  # SwiGLU: silu(gate) * up
        return self._logits(self._norm(x[:, -1], self.norm))

    def _logits(self, x: np.ndarray) -> np.ndarray:
        """x [B, hidden] @ the LM head -> [B, V] (a gemv for one row, else by blocks of vocabulary)."""
        out = (self.vocab_rows @ x[0])[None] if len(x) == 1 else _skinny_matmul(x, self.vocab_rows)
        return out if self.head_bias is None else out + self.head_bias

    def _attend(self, q: np.ndarray, keys: np.ndarray, values: np.ndarray, bias: np.ndarray) -> np.ndarray:
        """Softmax attention with GQA: q [B, S, heads, D], keys / values [B, kv, L, D] -> [B, S, heads * D].

        The query heads sharing a KV head are stacked as rows of one matmul (no repeated keys). A
        prompt is done per row and in query blocks, so the score matrix stays small.
        """
        rows, steps, heads, dim = q.shape
        kv, group = self.kv_heads, heads // self.kv_heads
        q = q.reshape(rows, steps, kv, group, dim).transpose(0, 2, 3, 1, 4)  # [B, kv, group, S, D]
        out = np.empty((rows, kv, group, steps, dim), dtype=np.float32)
        block = rows if steps == 1 else 1  # decode: every row at once; prefill: a row at a time
        for r in range(0, rows, block):
            k, v = keys[r : r + block], values[r : r + block]
            for s in range(0, steps, 256):
                qs = q[r : r + block, :, :, s : s + 256]
                n, width = qs.shape[3], k.shape[2]
                scores = qs.reshape(-1, kv, group * n, dim) @ k.swapaxes(-1, -2)
                scores = scores.reshape(-1, kv, group, n, width) * self.scale
                scores += bias[r : r + block, None, None, s : s + n]
                scores -= scores.max(axis=-1, keepdims=True)  # every row has a valid column: finite
                np.exp(scores, out=scores)
                scores /= scores.sum(axis=-1, keepdims=True)
                mixed = scores.reshape(-1, kv, group * n, width) @ v
                out[r : r + block, :, :, s : s + n] = mixed.reshape(-1, kv, group, n, dim)
        return out.transpose(0, 3, 1, 2, 4).reshape(rows, steps, heads * dim)


def _release_linears(model: Any) -> None:
    """Free the memory of ERNIEKit's attention and MLP weights (the engine computes with copies)."""
    for layer in model.ernie.layers:
        for block in (layer.self_attn, layer.mlp):
            for param in block.parameters():
                param._clear_data()


def _array(param: Any) -> np.ndarray:
    """A zero-copy, read-only numpy view of a Paddle parameter's memory (DLPack)."""
    return np.from_dlpack(param.detach())


@dataclass(frozen=True)
class _Linear:
    """y = x @ W + b, with W kept transposed ([out, in], contiguous: a copy of Paddle's [in, out]).

    OpenBLAS's gemm at a handful of rows (decoding a batch) is about twice as fast with the weight as
    the left operand in [out, in] layout, taken a block of output rows at a time, as x @ W (measured
    at 4 and 8 rows on the 0.3B shapes); one row (gemv) and prompt-sized inputs are as fast either way.
    """

    weight_t: np.ndarray  # [out, in]
    bias: np.ndarray | None

    @classmethod
    def of(cls, layer: Any) -> _Linear:
        bias = getattr(layer, "bias", None)
        # copies, both: Paddle's own linear weights are freed once every layer is copied (`release`)
        return cls(
            np.ascontiguousarray(_array(layer.weight).T), None if bias is None else np.array(_array(bias))
        )

    def __call__(self, x: np.ndarray) -> np.ndarray:
        flat = x.reshape(-1, x.shape[-1])  # one 2-D gemm over all rows, not one per batch row
        if len(flat) == 1:  # gemv down contiguous rows
            y = (self.weight_t @ flat[0])[None]
        elif len(flat) <= 32:
            y = _skinny_matmul(flat, self.weight_t)
        else:
            y = flat @ self.weight_t.T
        y = y.reshape(*x.shape[:-1], -1)
        return y if self.bias is None else y + self.bias


def _skinny_matmul(x: np.ndarray, rows: np.ndarray, block: int = 1024) -> np.ndarray:
    """x [M, in] @ rows.T for a few rows of x, `rows` [out, in] taken `block` output rows at a time."""
    out_t = np.empty((rows.shape[0], x.shape[0]), dtype=np.float32)
    x_t = np.ascontiguousarray(x.T)
    for start in range(0, rows.shape[0], block):
        np.matmul(rows[start : start + block], x_t, out=out_t[start : start + block])
    return out_t.T


@dataclass(frozen=True)
class _Layer:
    ln1: np.ndarray  # RMSNorm weights before attention / before the MLP
    ln2: np.ndarray
    qkv: _Linear
    o: _Linear
    up_gate: _Linear  # [hidden, 2 * inner]: the gate half, then the up half
    down: _Linear


@dataclass
class _Filling:
    """A long prompt being prefilled a chunk per step, into a cache of its own."""

    request: _Request
    cache: list[np.ndarray]
    done: int = 0  # prompt tokens already in the cache


@dataclass
class _Batch:
    """The running rows and their shared left-padded KV cache.

    Every row's newest token sits at column `length - 1`, so a decode step writes all rows' new
    keys / values into the same column, in place. `bias[row, col]` is 0 where the row has a real
    token and -inf where it is padding; `positions[row]` is the row's next position id.
    """

    rows: list[_Request] = field(default_factory=list)
    cache: list[np.ndarray] = field(default_factory=list)  # [B, kv_heads, capacity, head_dim] each
    bias: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))  # [B, capacity]
    positions: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # [B]
    length: int = 0  # columns in use

    @property
    def capacity(self) -> int:
        return int(self.bias.shape[1])


# ---------------------------------------------------------------------------------------------
# the engine


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
    ):
        self.model = model  # ERNIEKit's: the weights, and the reference forward of `full_logits`
        self.net = DenseForward(model)
        self.reference = reference
        if not reference:  # the fast path holds its own copies of the linear layers: free Paddle's
            _release_linears(model)  # (~1 GB at the 0.3B shape); norms and embeddings stay shared
        self.tokenizer = tokenizer
        self.generation_config = generation_config or {}  # the checkpoint's generation_config.json
        self.max_batch_size = max_batch_size
        self.prefill_chunk = prefill_chunk
        self.max_length = max_length or int(getattr(model.config, "max_position_embeddings", 4096))
        # ERNIE 4.5 ends a chat turn with <|end_of_sentence|> and a document with </s>: either ends
        eos = [getattr(tokenizer, "eos_token_id", None), getattr(tokenizer, "sep_token_id", None)]
        self.eos_token_ids = {int(i) for i in eos if i is not None}
        self._batch = _Batch()
        self._filling: _Filling | None = None
        self._waiting: deque[_Request] = deque()
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()  # guards _waiting and _cancelled (the cross-thread inbox)
        self._step_lock = threading.Lock()  # one stepping thread at a time
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._ids = itertools.count()

    # -- loading ------------------------------------------------------------------------------

    @classmethod
    def load(cls, model_dir: Path | str, max_batch_size: int = 8, reference: bool = False) -> Engine:
        """Load a dense ERNIE 4.5 Paddle checkpoint in float32 on the CPU; `reference` keeps ERNIEKit's
        own forward usable (`full_logits`, for tests) at the cost of a second copy of the weights."""
        path = Path(model_dir)
        config_file = path / "config.json"
        if not config_file.is_file():
            raise UserError(
                f"{path} has no config.json", hint="give an ERNIE 4.5 Paddle checkpoint directory"
            )
        config = json.loads(config_file.read_text(encoding="utf-8"))
        if int(config.get("moe_num_experts") or 0) > 0:
            raise UserError(
                f"{path} is a MoE model: the embedded CPU engine runs dense ERNIE 4.5 only",
                hint="ERNIEKit's MoE dispatch kernel (moe_gate_dispatch) is GPU-only in Paddle; "
                "serve MoE models with FastDeploy on a GPU",
            )
        with optional_imports("cpu", "the embedded CPU server"):
            import paddle
            from ernie.modeling_moe import Ernie4_5_MoeForCausalLM
            from ernie.tokenizer import Ernie4_5_Tokenizer

        paddle.set_device("cpu")
        started = time.perf_counter()
        # moe_group "dummy": no process group is needed; fp32: no bf16 CPU kernels
        model = Ernie4_5_MoeForCausalLM.from_pretrained(str(path), moe_group="dummy", dtype="float32")
        model.eval()
        tokenizer = Ernie4_5_Tokenizer.from_pretrained(str(path))
        log.info("loaded %s in %.1f s", path, time.perf_counter() - started)
        return cls(
            model,
            tokenizer,
            max_batch_size=max_batch_size,
            reference=reference,
            generation_config=_generation_config(path),
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
            raise RuntimeError("ERNIEKit's weights were released: load with Engine.load(..., reference=True)")
        import paddle

        n = len(token_ids)
        with paddle.no_grad():
            out = self.model(
                input_ids=paddle.to_tensor([list(token_ids)], dtype="int64"),
                position_ids=paddle.to_tensor(np.arange(n)[None], dtype="int64"),
                attention_mask=paddle.to_tensor(np.tril(np.ones((n, n), dtype=bool))[None, None]),
                return_dict=True,
            )
        return np.asarray(out.logits.numpy()[0])

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
        request = _Request(
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
        while not self._stopping:
            if not self.has_work():
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            self.step()

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
                    cache = self.net.new_cache(1, _with_room(len(long[0].prompt)))
                    self._filling = _Filling(long[0], cache)
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

    def _prefill(self, group: list[_Request]) -> None:
        """Run the prompts left-padded to a common length, sample each first token, join the batch.

        A pad query attends to itself only and no real query attends to a pad key, so each row gets
        what it would alone (up to float summation order).
        """
        width = max(len(r.prompt) for r in group)
        pads = np.asarray([width - len(r.prompt) for r in group])
        cols = np.arange(width)
        real = cols[None, :] >= pads[:, None]  # [B, width]
        ids = np.zeros((len(group), width), dtype=np.int64)
        for row, request in enumerate(group):
            ids[row, pads[row] :] = request.prompt
        positions = np.maximum(cols[None, :] - pads[:, None], 0)
        allowed = (cols[None, None, :] <= cols[None, :, None]) & real[:, None, :]
        allowed |= np.eye(width, dtype=bool)[None]
        bias = np.where(allowed, np.float32(0), np.float32(-np.inf))  # [B, width, width]
        capacity = _with_room(width)
        cache = self.net.new_cache(len(group), capacity)
        logits = self.net.forward(ids, positions, bias, cache, 0)
        for row, request in enumerate(group):
            self._accept(request, logits[row])
        keep = [i for i, r in enumerate(group) if r.finish_reason is None]
        if not keep:
            return
        valid = np.full((len(keep), capacity), -np.inf, dtype=np.float32)
        valid[:, :width][real[keep]] = 0
        new = _Batch(
            [group[i] for i in keep],
            cache if len(keep) == len(group) else [c[keep] for c in cache],
            valid,
            np.asarray([len(group[i].prompt) for i in keep], dtype=np.int64),
            width,
        )
        self._batch = _merge(self._batch, new) if self._batch.rows else new

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
        new = _Batch([request], cache, valid, np.asarray([end], dtype=np.int64), end)
        self._batch = _merge(self._batch, new) if self._batch.rows else new

    def _decode(self) -> None:
        """Feed every row its pending token at column `length`; one batched forward."""
        batch = self._batch
        if batch.length == batch.capacity:  # no free column left: copy into a larger cache
            batch = self._batch = _relayout(batch, list(range(len(batch.rows))), 0)
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
            self._batch = _Batch()
            return
        real = np.isfinite(batch.bias[keep, : batch.length])
        start = int(np.argmax(real.any(axis=0)))  # leading columns that are padding for every row
        self._batch = _relayout(batch, keep, start)

    # -- per-request bookkeeping --------------------------------------------------------------

    def _accept(self, request: _Request, logits: np.ndarray) -> None:
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
    def _cut_at_stop(request: _Request, new_text: str) -> bool:
        """Append `new_text`; True when a stop string completed (the text is cut where it began)."""
        request.text += new_text
        start = request.stops.feed(new_text)
        if start is None:
            return False
        request.text = request.text[: len(request.text) - len(new_text) + start]
        return True

    def _emit(self, request: _Request, final: bool) -> None:
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

    def _finish(self, request: _Request, reason: str, error: str | None = None, flush: bool = True) -> None:
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
        self._batch = _Batch()


def _generation_config(model_dir: Path) -> dict[str, Any]:
    """The checkpoint's generation_config.json ({} when there is none)."""
    path = model_dir / "generation_config.json"
    if not path.exists():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path}: {err}", hint="fix or remove the file") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} is not a JSON object", hint="fix or remove the file")
    return config


def _prefill_group(waiting: list[_Request], budget: int) -> list[_Request]:
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


def _with_room(length: int) -> int:
    """Cache columns to allocate for `length` used ones: room to decode a while before copying."""
    return length + length // 2 + 32


def _relayout(batch: _Batch, keep: list[int], start: int) -> _Batch:
    """A copy of the batch with rows `keep` and columns from `start` on, with room to grow."""
    used = batch.length - start
    capacity = _with_room(used)
    cache = []
    for old in batch.cache:
        new = np.zeros((len(keep), *old.shape[1:2], capacity, *old.shape[3:]), dtype=np.float32)
        new[:, :, :used] = old[keep, :, start : batch.length]
        cache.append(new)
    bias = np.full((len(keep), capacity), -np.inf, dtype=np.float32)
    bias[:, :used] = batch.bias[keep, start : batch.length]
    return _Batch([batch.rows[i] for i in keep], cache, bias, batch.positions[keep], used)


def _merge(a: _Batch, b: _Batch) -> _Batch:
    """One batch of both: each right-aligned at the longer length (so every row writes the same
    next column), with room to grow."""
    length = max(a.length, b.length)
    capacity = _with_room(length)
    rows = len(a.rows) + len(b.rows)
    cache = []
    for x, y in zip(a.cache, b.cache, strict=True):
        new = np.zeros((rows, x.shape[1], capacity, x.shape[3]), dtype=np.float32)
        new[: len(a.rows), :, length - a.length : length] = x[:, :, : a.length]
        new[len(a.rows) :, :, length - b.length : length] = y[:, :, : b.length]
        cache.append(new)
    bias = np.full((rows, capacity), -np.inf, dtype=np.float32)
    bias[: len(a.rows), length - a.length : length] = a.bias[:, : a.length]
    bias[len(a.rows) :, length - b.length : length] = b.bias[:, : b.length]
    return _Batch([*a.rows, *b.rows], cache, bias, np.concatenate([a.positions, b.positions]), length)
