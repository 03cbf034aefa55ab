"""A small `EngineClient` for the OpenAI-layer tests: no Paddle, no model.

Every request answers "ok" in one delta, unless told otherwise: `tokens` deltas of "t" each
(`delay` seconds apart; `endless` goes on until aborted), a `finish` reason for the last one, or
`fail` (generate raises). It records what it was given: the sampling params, the aborts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from ernie_ops.serve.engine_client import FINISH_CANCELLED, Delta, EngineUnhealthy, SamplingParams


class FakeTokenizer:
    vocab_size = 1000
    chat_template = None

    def __init__(self) -> None:
        self.template_kwargs: list[dict] = []

    def apply_chat_template(self, messages, **kwargs) -> str:
        self.template_kwargs.append(kwargs)
        return "".join(m["content"] for m in messages)


class FakeEngine:
    """What the server uses of an engine (the `EngineClient` protocol)."""

    def __init__(
        self,
        generation_config: dict | None = None,
        fail: bool = False,
        tokens: int = 0,
        delay: float = 0.0,
        endless: bool = False,
        finish: str = "stop",
        max_batch_size: int = 2,
    ):
        self._tokenizer = FakeTokenizer()
        self._generation_config = generation_config or {}
        self._max_batch_size = max_batch_size
        self.submitted: list[SamplingParams] = []
        self.aborted: list[str] = []
        self.active: dict[str, asyncio.Event] = {}  # request id -> its abort
        self.running = False
        self.fail, self.tokens, self.delay, self.endless, self.finish = fail, tokens, delay, endless, finish

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def max_batch_size(self) -> int:
        return self._max_batch_size

    @property
    def max_length(self) -> int:
        return 64

    @property
    def generation_config(self) -> dict[str, Any]:
        return self._generation_config

    def encode(self, text: str) -> list[int]:
        return [ord(c) % 1000 for c in text]

    def generate(
        self, request_id: str, prompt_ids: Sequence[int], params: SamplingParams, idle_s: float | None = None
    ) -> AsyncIterator[Delta | None]:
        if self.fail:
            raise RuntimeError("the engine broke")
        self.submitted.append(params)
        aborted = self.active[request_id] = asyncio.Event()
        return self._deltas(request_id, aborted, idle_s)

    async def _deltas(
        self, request_id: str, aborted: asyncio.Event, idle_s: float | None
    ) -> AsyncIterator[Delta | None]:
        try:
            if not self.tokens and not self.endless:
                yield Delta("ok", [1], self.finish)
                return
            n = 0
            while self.endless or n < self.tokens - 1:
                if self.delay:
                    loop = asyncio.get_running_loop()
                    due = loop.time() + self.delay
                    while not aborted.is_set() and (left := due - loop.time()) > 0:
                        wait = min(left, idle_s or left)
                        with contextlib.suppress(asyncio.TimeoutError):
                            await asyncio.wait_for(aborted.wait(), wait)
                        if idle_s is not None and wait >= idle_s and not aborted.is_set():
                            yield None  # quiet for idle_s, as the real adapter reports it
                else:
                    await asyncio.sleep(0)
                if aborted.is_set():
                    yield Delta("", [], FINISH_CANCELLED)
                    return
                n += 1
                yield Delta("t", [n])
            yield Delta("t", [n + 1], self.finish)
        finally:
            self.active.pop(request_id, None)

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)
        event = self.active.get(request_id)
        if event is not None:
            event.set()

    async def check_health(self) -> None:
        if not self.running:
            raise EngineUnhealthy("the engine is not running")

    def load(self) -> tuple[int, int]:
        n = len(self.active)
        return min(n, self.max_batch_size), max(0, n - self.max_batch_size)

    async def start(self) -> None:
        self.running = True

    async def shutdown(self) -> None:
        for request_id in list(self.active):
            await self.abort(request_id)
        self.running = False
