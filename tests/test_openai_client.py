"""The OpenAI layer over the async engine interface (`EngineClient`), and the `AsyncEngine` adapter.

The server tests run against `fake_engine.FakeEngine` (no Paddle): protocol, streaming, errors,
disconnects, health and load figures. The adapter is tested over a stub engine thread (no Paddle)
and over the real tiny model (tokens equal to the engine's own, no thread per stream). No assertion
depends on how fast the machine is; deadlines are hang guards.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from fake_engine import FakeEngine
from test_openai_hardening import served

from ernie_ops.serve.engine_client import AsyncEngine, Delta, EngineClient, SamplingParams, as_engine_client
from ernie_ops.serve.openai_server import create_app

MODEL = "m"
KEY = "sk-client"
AUTH = {"Authorization": f"Bearer {KEY}"}
GUARD_S = 30


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + GUARD_S
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def sse(lines: Iterator[str]) -> list[dict | str]:
    return [
        "[DONE]" if line == "data: [DONE]" else json.loads(line.removeprefix("data: "))
        for line in lines
        if line
    ]


def test_the_fake_engine_is_an_engine_client():
    fake = FakeEngine()
    assert isinstance(fake, EngineClient) and as_engine_client(fake) is fake


def test_streamed_chat_and_completion_over_the_fake(tmp_path):
    fake = FakeEngine(tokens=5, finish="length")
    with (
        served(create_app(fake, MODEL, api_key=KEY)) as (base, _),
        httpx.Client(base_url=base, headers=AUTH, timeout=GUARD_S) as http,
    ):
        body = {"model": MODEL, "prompt": "hi", "max_tokens": 5, "stream": True}
        body["stream_options"] = {"include_usage": True}
        with http.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            events = sse(r.iter_lines())
        assert events[-1] == "[DONE]"
        texts = [c["choices"][0]["text"] for c in events[:-2]]
        assert "".join(texts) == "ttttt" and events[-3]["choices"][0]["finish_reason"] == "length"
        assert events[-2]["usage"] == {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}
        chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
        with http.stream("POST", "/v1/chat/completions", json=chat) as r:
            events = sse(r.iter_lines())
        deltas = [c["choices"][0]["delta"] for c in events[:-1]]
        assert deltas[0]["role"] == "assistant"
        assert "".join(d.get("content") or "" for d in deltas) == "ttttt"
        r = http.post("/v1/completions", json={**body, "stream": False})
        assert r.json()["choices"][0]["text"] == "ttttt" and r.json()["usage"]["completion_tokens"] == 5
        r = http.post("/v1/completions", json=body, headers={"Authorization": "Bearer no"})
        assert r.status_code == 401
    assert fake.aborted == [] and fake.active == {}


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_leaving_aborts_its_request(stream):
    # a non-streamed request checks its client when no token came for a while (a slow engine)
    fake = FakeEngine(endless=True, delay=0.01 if stream else 1.0)
    app = create_app(fake, MODEL)
    body = {"model": MODEL, "prompt": "go", "max_tokens": 50, "stream": stream}
    with served(app) as (base, _):
        if stream:
            with (
                httpx.Client(base_url=base, timeout=GUARD_S) as http,
                http.stream("POST", "/v1/completions", json=body) as r,
            ):
                lines = r.iter_lines()
                for _ in range(4):
                    next(lines)
        else:
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(f"{base}/v1/completions", json=body, timeout=0.5)
        wait_for(lambda: fake.aborted and not fake.active, "the request outlived its client")
        wait_for(lambda: not app.state.server.in_flight, "the server kept the request in flight")


def test_an_engine_error_and_a_cancel_are_reported_not_hung():
    with served(create_app(FakeEngine(finish="error"), MODEL)) as (base, _):
        body = {"model": MODEL, "prompt": "x"}
        r = httpx.post(f"{base}/v1/completions", json=body, timeout=GUARD_S)
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
        with httpx.stream("POST", f"{base}/v1/completions", json={**body, "stream": True}) as r:
            events = sse(r.iter_lines())
        errors = [e["error"] for e in events if isinstance(e, dict) and "error" in e]
        assert r.status_code == 200 and errors[0]["type"] == "server_error"
    with served(create_app(FakeEngine(finish="cancelled"), MODEL)) as (base, _):
        r = httpx.post(f"{base}/v1/completions", json=body, timeout=GUARD_S)
        assert r.status_code == 503


def test_health_and_load_come_from_the_engine_client():
    fake = FakeEngine(endless=True, delay=0.01, max_batch_size=1)
    app = create_app(fake, MODEL)

    async def unstarted() -> int:  # ASGITransport runs no lifespan: the client is never started
        idle = create_app(FakeEngine(), MODEL)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=idle), base_url="http://t") as c:
            return (await c.get("/health")).status_code

    assert asyncio.run(unstarted()) == 503
    with served(app) as (base, _):
        assert httpx.get(f"{base}/health").status_code == 200
        body = {"model": MODEL, "prompt": "go", "max_tokens": 50, "stream": True}
        with (
            httpx.Client(base_url=base, timeout=GUARD_S) as a,
            httpx.Client(base_url=base, timeout=GUARD_S) as b,
            a.stream("POST", "/v1/completions", json=body) as r1,
            b.stream("POST", "/v1/completions", json=body) as r2,
        ):
            # the iterators stay referenced: a dropped one is closed at once, and httpx then closes
            # its connection (the server would rightly abort the request)
            lines = r1.iter_lines(), r2.iter_lines()
            next(lines[0]), next(lines[1])
            wait_for(lambda: fake.load() == (1, 1), "two requests in flight")
            assert app.state.server.load() == (1, 1)
            assert httpx.get(f"{base}/metrics").status_code == 200
    assert not fake.running  # shut down with the app


# ---------------------------------------------------------------------------------------------
# the adapter over a stub engine thread (no Paddle)


class StubEngine:
    """The part of `Engine` the adapter uses: a stepping thread that calls each request's listener."""

    max_batch_size = 4
    max_length = 64
    tokenizer = None

    def __init__(self, tokens: int = 20):
        self.generation_config: dict = {}
        self.tokens = tokens
        self.requests: dict[str, tuple[int, object]] = {}
        self.cancelled: set[str] = set()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.stopping = False

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def submit(self, prompt, params, request_id, listener):
        with self.lock:
            self.requests[request_id] = (0, listener)

    def cancel(self, request_id: str) -> None:
        with self.lock:
            self.cancelled.add(request_id)

    def has_work(self) -> bool:
        with self.lock:
            return bool(self.requests)

    def scheduler_load(self) -> tuple[int, int]:
        with self.lock:
            return len(self.requests), 0

    def start(self) -> None:
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopping = True
        if self.thread is not None:
            self.thread.join(GUARD_S)

    def loop(self) -> None:
        while not self.stopping:
            with self.lock:
                items = list(self.requests.items())
            for request_id, (n, listener) in items:
                if request_id in self.cancelled:
                    delta, done = Delta("", [], "cancelled"), True
                else:
                    done = n + 1 == self.tokens
                    delta = Delta(f"{n} ", [n], "length" if done else None)
                listener(delta)  # type: ignore[operator]
                if done:
                    listener(None)  # type: ignore[operator]
                with self.lock:
                    if done:
                        del self.requests[request_id]
                    else:
                        self.requests[request_id] = (n + 1, listener)
            time.sleep(0.001)


def test_the_adapter_streams_many_requests_without_a_thread_each():
    stub = StubEngine(tokens=20)
    client = AsyncEngine(stub)  # type: ignore[arg-type]

    async def main() -> tuple[list[str], int, int]:
        await client.start()
        before = threading.active_count()
        peak = [before]

        async def one(i: int) -> str:
            parts = []
            async for delta in client.generate(f"r{i}", [1], SamplingParams()):
                parts.append(delta.text)
                peak[0] = max(peak[0], threading.active_count())
            return "".join(parts)

        texts = await asyncio.gather(*(one(i) for i in range(32)))
        await client.shutdown()
        return texts, before, peak[0]

    texts, before, peak = asyncio.run(main())
    assert texts == ["".join(f"{n} " for n in range(20))] * 32
    assert peak == before  # no thread per stream
    assert not stub.running


def test_the_adapter_reports_silence_only_to_a_reader_that_asks_and_starts_no_task_per_token():
    stub = StubEngine(tokens=5)
    held: dict[str, dict] = {}
    submit = stub.submit
    stub.submit = lambda *a, **kw: held.update({kw["request_id"]: {"prompt": a[0], "params": a[1], **kw}})  # type: ignore[method-assign]
    client = AsyncEngine(stub)  # type: ignore[arg-type]

    async def main() -> tuple[list[Delta | None], set[int]]:
        await client.start()
        stream = client.generate("q", [1], SamplingParams(), idle_s=0.05)
        got = [await stream.__anext__(), await stream.__anext__()]  # the engine is silent: None
        submit(**held["q"])  # now it produces the tokens
        tasks = set()
        async for delta in stream:
            got.append(delta)
            tasks.add(len(asyncio.all_tasks()))
        await client.shutdown()
        return got, tasks

    got, tasks = asyncio.run(main())
    assert got[:2] == [None, None]
    assert "".join(d.text for d in got[2:] if d is not None) == "0 1 2 3 4 "
    assert tasks == {1}  # only main(): reading a delta starts no task


def test_the_adapter_abort_ends_the_stream_and_cancels_in_the_engine():
    stub = StubEngine(tokens=10_000)
    client = AsyncEngine(stub)  # type: ignore[arg-type]

    async def main() -> list[Delta]:
        await client.start()
        seen = []
        async for delta in client.generate("a", [1], SamplingParams()):
            seen.append(delta)
            if len(seen) == 3:
                await client.abort("a")
        left = client.generate("b", [1], SamplingParams())
        await left.__anext__()
        await left.aclose()  # a consumer leaving early cancels too
        await client.shutdown()
        return seen

    seen = asyncio.run(main())
    assert seen[-1].finish_reason == "cancelled" and len(seen) == 4
    assert {"a", "b"} <= stub.cancelled
    assert client.load() == (0, 0)


# ---------------------------------------------------------------------------------------------
# the adapter over the real engine


@pytest.mark.slow
def test_the_adapter_gives_the_engines_own_tokens_with_no_thread_per_stream(tiny_dense):
    from ernie_ops.serve.engine import Engine

    engine = Engine.load(tiny_dense, max_batch_size=4)
    prompts = [[5, 6, 7, 8 + i] for i in range(6)]
    params = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    reference = [r.token_ids for r in engine.generate(prompts, params)]
    client = AsyncEngine(engine)

    async def main() -> tuple[list[list[int]], int, int, tuple[int, int]]:
        await client.start()
        before = threading.active_count()
        peak, load = [before], [(0, 0)]

        async def one(i: int) -> list[int]:
            ids = []
            async for delta in client.generate(f"r{i}", prompts[i], params):
                ids += delta.token_ids
                peak[0] = max(peak[0], threading.active_count())
                load[0] = max(load[0], client.load())
            return ids

        out = await asyncio.gather(*(one(i) for i in range(len(prompts))))
        await client.shutdown()
        return out, before, peak[0], load[0]

    out, before, peak, load = asyncio.run(main())
    assert out == reference
    assert peak == before
    assert load[0] <= engine.max_batch_size and sum(load) >= 1
    assert not engine.running
