"""A request's life as the caller sees it (`Delta`s, then a `Result`; `RequestHandle`) and as the
engine keeps it (`Request`: its sampler state, text so far and where its deltas go)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ernie_ops.serve.engine.detokenizer import Detokenizer, StopMatcher
from ernie_ops.serve.engine.sampling import SamplingParams

if TYPE_CHECKING:
    from ernie_ops.serve.engine.scheduler import Engine

FINISH_STOP = "stop"
FINISH_LENGTH = "length"
FINISH_CANCELLED = "cancelled"
FINISH_ERROR = "error"


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


class Request:
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

    def __init__(self, engine: Engine, request: Request):
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
