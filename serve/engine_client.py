"""The async engine interface between the embedded OpenAI server and an engine (as vLLM's `EngineClient`).

`openai_server.py` handles requests through `EngineClient` only: `generate` queues a request and
returns an async iterator of its `Delta`s, `abort` ends one, `check_health` says whether the engine
can serve, `load` gives the scheduler's (running, waiting). The server is tested against a small
fake of it (no Paddle); `AsyncEngine` adapts the CPU `Engine` (`serve/engine/`).

How tokens reach the event loop (`AsyncEngine`): the engine thread hands each delta to a listener
of the request (no thread per request). The listener appends it to one inbox and, when the inbox was
empty, schedules a single drain on the loop (`call_soon_threadsafe`), so a scheduler step that
produces a token for 128 streams wakes the loop once, not 128 times; the drain moves each delta onto
its request's stream.

A reader that wants to hear about silence (the server checks whether its client is still there
after `idle_s` without a token) gets `None` from the iterator then. That costs nothing per token: one
timer for the whole adapter looks at the waiting streams every `idle_s / 2` (no task or timer per
token read).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ernie_ops.serve.engine import (
    FINISH_CANCELLED,
    FINISH_ERROR,
    FINISH_LENGTH,
    FINISH_STOP,
    Delta,
    SamplingParams,
)

if TYPE_CHECKING:
    from ernie_ops.serve.engine import Engine

__all__ = [
    "FINISH_CANCELLED",
    "FINISH_ERROR",
    "FINISH_LENGTH",
    "FINISH_STOP",
    "AsyncEngine",
    "Delta",
    "EngineClient",
    "EngineUnhealthy",
    "SamplingParams",
    "as_engine_client",
]

SHUTDOWN_DRAIN_S = 10.0  # how long shutdown waits for aborted requests to leave the engine


class EngineUnhealthy(Exception):
    """`check_health`: the engine cannot serve requests now (the message says why)."""


@runtime_checkable
class EngineClient(Protocol):
    """What the OpenAI layer needs of an engine.

    `generate` checks and queues the request when it is called (a bad request raises `UserError`
    then, before any output) and returns an async iterator of its deltas; the last one has a
    `finish_reason` ("stop", "length", "cancelled" or "error"). Leaving the iterator early, or
    `abort`, ends the request. Everything here is called from the event loop's thread.
    """

    @property
    def max_batch_size(self) -> int:
        """Requests decoded at once."""
        ...

    @property
    def max_length(self) -> int:
        """The context length: prompt + output tokens."""
        ...

    @property
    def generation_config(self) -> dict[str, Any]:
        """The checkpoint's generation_config.json ({} when there is none)."""
        ...

    @property
    def tokenizer(self) -> Any:
        """The tokenizer: `apply_chat_template`, `vocab_size`, `chat_template`."""
        ...

    def encode(self, text: str) -> list[int]:
        """Token ids of text, without special tokens (thread-safe: the prepare pool calls it)."""
        ...

    def generate(
        self, request_id: str, prompt_ids: Sequence[int], params: SamplingParams, idle_s: float | None = None
    ) -> AsyncIterator[Delta | None]:
        """Queue a request; its deltas as they are produced. With `idle_s`, also `None` each time
        about that long (at most 1.5x) passed without a delta; without it, deltas only."""
        ...

    async def abort(self, request_id: str) -> None:
        """End a request (its iterator ends with "cancelled"); unknown or finished ids are ignored."""
        ...

    async def check_health(self) -> None:
        """Return when the engine can serve, raise `EngineUnhealthy` when not."""
        ...

    def load(self) -> tuple[int, int]:
        """(running, waiting) as the scheduler sees them now."""
        ...

    async def start(self) -> None:
        """Start serving (the server's start-up)."""
        ...

    async def shutdown(self) -> None:
        """Abort what is in flight, let the engine apply it, stop (the server's shutdown)."""
        ...


def as_engine_client(engine: Any) -> EngineClient:
    """An `EngineClient` as it is, the CPU `Engine` wrapped in an `AsyncEngine`."""
    if isinstance(engine, EngineClient):
        return engine
    return AsyncEngine(engine)


class _Stream:
    """The event-loop side of one request: its deltas queue up here, its reader waits on `waiter`."""

    __slots__ = ("closed", "final", "idle_s", "items", "last", "waiter")

    def __init__(self, idle_s: float | None, now: float) -> None:
        self.items: deque[Delta | None] = deque()
        self.waiter: asyncio.Future[None] | None = None  # set while the reader waits for an item
        self.idle_s = idle_s  # wake the reader with None after this long without an item
        self.last = now  # loop time of the last item (or of the last idle wake-up)
        self.final = False  # the delta with the finish reason is queued
        self.closed = False  # the end (None) is queued: nothing more goes in

    def put(self, item: Delta | None) -> None:
        self.items.append(item)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class AsyncEngine:
    """`EngineClient` over the CPU `Engine`: the engine steps in its own thread, deltas reach the
    event loop through one inbox (see the module docstring); no thread per request."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._streams: dict[str, _Stream] = {}  # in flight, touched on the loop's thread only
        self._inbox: deque[tuple[str, Delta | None]] = deque()
        self._inbox_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle_timer: asyncio.TimerHandle | None = None  # one for all the streams given idle_s

    # -- what the server reads ------------------------------------------------------------------

    @property
    def max_batch_size(self) -> int:
        return self.engine.max_batch_size

    @property
    def max_length(self) -> int:
        return self.engine.max_length

    @property
    def generation_config(self) -> dict[str, Any]:
        return self.engine.generation_config

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    def encode(self, text: str) -> list[int]:
        return self.engine.encode(text)

    def load(self) -> tuple[int, int]:
        return self.engine.scheduler_load()

    # -- requests -------------------------------------------------------------------------------

    def generate(
        self, request_id: str, prompt_ids: Sequence[int], params: SamplingParams, idle_s: float | None = None
    ) -> AsyncIterator[Delta | None]:
        loop = asyncio.get_running_loop()
        if request_id in self._streams:
            raise ValueError(f"request {request_id} is already in flight")
        if idle_s is not None and idle_s <= 0:
            raise ValueError(f"idle_s must be positive, got {idle_s}")
        stream = self._streams[request_id] = _Stream(idle_s, loop.time())
        self._loop = loop
        try:
            self.engine.submit(prompt_ids, params, request_id=request_id, listener=self._listener(request_id))
        except BaseException:
            self._streams.pop(request_id, None)
            raise
        if idle_s is not None and self._idle_timer is None:
            self._idle_timer = loop.call_later(idle_s / 2, self._idle_tick)
        return self._deltas(request_id, stream)

    async def _deltas(self, request_id: str, stream: _Stream) -> AsyncIterator[Delta | None]:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not stream.items:
                    stream.waiter = loop.create_future()
                    try:
                        await stream.waiter
                    finally:
                        stream.waiter = None
                    if not stream.items:  # the idle timer woke us: tell the reader
                        yield None
                        continue
                delta = stream.items.popleft()
                if delta is None:
                    return
                yield delta
        finally:
            if self._streams.pop(request_id, None) is not None and not stream.final:
                self.engine.cancel(request_id)  # the consumer left early: free the row

    def _idle_tick(self) -> None:
        """On the loop, every idle_s / 2 while a stream wants it: wake readers idle for idle_s."""
        self._idle_timer = None
        now, period = asyncio.get_running_loop().time(), None
        for stream in self._streams.values():
            if stream.idle_s is None:
                continue
            period = stream.idle_s / 2 if period is None else min(period, stream.idle_s / 2)
            waiter = stream.waiter
            if waiter is not None and not waiter.done() and now - stream.last >= stream.idle_s:
                stream.last = now
                waiter.set_result(None)
        if period is not None:
            self._idle_timer = asyncio.get_running_loop().call_later(period, self._idle_tick)

    async def abort(self, request_id: str) -> None:
        stream = self._streams.pop(request_id, None)  # later deltas of it are dropped
        if stream is None:
            return
        self.engine.cancel(request_id)
        # end the iterator now (the engine drops the row at its next step, which a long prefill
        # may hold up for seconds)
        if not stream.final:
            stream.final = True
            stream.put(Delta("", [], FINISH_CANCELLED))
        if not stream.closed:
            stream.closed = True
            stream.put(None)

    def _listener(self, request_id: str) -> Any:
        inbox, lock = self._inbox, self._inbox_lock

        def deliver(delta: Delta | None) -> None:  # the engine thread
            with lock:
                wake = not inbox
                inbox.append((request_id, delta))
            loop = self._loop
            if wake and loop is not None:
                with contextlib.suppress(RuntimeError):  # the loop closed (shutdown): nobody listens
                    loop.call_soon_threadsafe(self._drain)

        return deliver

    def _drain(self) -> None:
        """On the loop: every delta the engine produced since the last drain to its request."""
        with self._inbox_lock:
            items = list(self._inbox)
            self._inbox.clear()
        now = self._loop.time() if self._loop is not None else 0.0
        for request_id, delta in items:
            stream = self._streams.get(request_id)
            if stream is None or stream.closed:  # aborted or left: nobody reads it
                continue
            stream.last = now
            stream.put(delta)
            if delta is None:
                stream.closed = True
            elif delta.finish_reason is not None:
                stream.final = True

    # -- health and lifecycle -------------------------------------------------------------------

    async def check_health(self) -> None:
        if not self.engine.running:
            raise EngineUnhealthy("the engine is not running")

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.engine.start()

    async def shutdown(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        for request_id in list(self._streams):
            await self.abort(request_id)
        deadline = time.monotonic() + SHUTDOWN_DRAIN_S
        while self.engine.has_work() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.to_thread(self.engine.stop)
