"""A null OpenAI-compatible server: answers at once (or after a set delay) with K chunks of nothing.

What it is for: measuring the load generator's own ceiling (`scripts/bench_loadgen.py`) and testing
it without a model. It must cost far less per request than the generator, so it is a bare
`asyncio.Protocol` speaking just enough HTTP/1.1 (Content-Length requests, keep-alive, chunked
responses) with every streamed chunk pre-encoded; no framework, no JSON encoding per token; on uvloop
when it is installed (ernie_ops/eventloop.py).

    python -m ernie_ops.validate.null_server --port 8190 [--delay-ms 20] [--fail-every 10]
    python -m ernie_ops.validate.null_server --slots 8 --service-ms 50     # capacity 160 req/s

A known capacity (`--slots K --service-ms S`, streamed requests): at most K requests are served at
once, each for S ms (its output chunks evenly spread over them, the last at S), the others wait for
a slot in arrival order; the server's capacity is K * 1000 / S requests per second, and a load
above it makes the queue (and the latency) grow without bound. Slots are kept on the clock, not by
sleeping: request n starts at max(its arrival, the earliest time a slot frees) and ends exactly
S ms later, so the capacity holds however late the event loop wakes (a late wake-up delays a
write, not the next request). What `ernie-ops bench --find-max-rate` is checked against
(scripts/bench_loadgen.py).

Endpoints: `GET /health`, `GET /v1/models`, `POST /v1/chat/completions` and `/v1/completions`
(streaming or not; K = `max_tokens` output chunks of one token each, `usage` in a last chunk when
`stream_options.include_usage`), and `GET /v1/null/timestamps[?clear=1]`: per request, the server's
`time.perf_counter_ns()` at arrival (request fully read), first output chunk written and last byte
written. On Linux that clock is CLOCK_MONOTONIC, the same in every process, so a client in another
process can compare its own `time.perf_counter()` readings with them. A write is stamped just
before it happens (the client may read the bytes before this thread runs again), as the client
stamps its request just before writing it: client and server times keep their order by
construction, however loaded the machine. The request's `user` field
(standard OpenAI) is recorded with them to match client and server records.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from ernie_ops import eventloop

MODEL = "null-model"
TOKEN = "tok "
MAX_RECORDS = 1_000_000  # server-side timestamps kept (oldest dropped first)


@dataclass(frozen=True)
class Behaviour:
    """How the server answers one request."""

    delay_ms: float = 0.0  # before every output chunk
    ttft_ms: float | None = None  # before the first output chunk instead (None: delay_ms)
    status: int = 200  # anything else: an OpenAI-style JSON error with this status


@dataclass(frozen=True)
class Capacity:
    """At most `slots` requests in service at once, each for `service_ms`."""

    slots: int
    service_ms: float

    @property
    def rate(self) -> float:
        """Requests per second the server can complete."""
        return self.slots * 1000.0 / self.service_ms


Plan = Behaviour | Callable[[int, dict[str, Any]], Behaviour]  # (1-based arrival index, request body)


@dataclass(slots=True)
class Record:
    index: int
    user: str | None
    arrival_ns: int
    first_ns: int | None = None
    last_ns: int | None = None


def _frame(event: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(event), event)


def _sse(payload: dict[str, Any]) -> bytes:
    return _frame(b"data: " + orjson.dumps(payload) + b"\n\n")


class _Encoded:
    """The pre-encoded pieces of one kind of stream (chat or completions) for one model name."""

    def __init__(self, chat: bool, model: str):
        self.chat = chat
        kind = "chat.completion.chunk" if chat else "text_completion"
        base: dict[str, Any] = {"id": "null", "object": kind, "created": 0, "model": model}

        def choice(content: str | None, finish: str | None) -> dict[str, Any]:
            if chat:
                delta = {"role": "assistant", "content": ""} if content is None else {"content": content}
                return {"index": 0, "delta": delta, "finish_reason": finish}
            return {"index": 0, "text": content or "", "finish_reason": finish}

        self.model = model
        self.base = base
        self.opening = _sse({**base, "choices": [choice(None, None)]}) if chat else b""
        self.token = _sse({**base, "choices": [choice(TOKEN, None)]})
        self.last = _sse({**base, "choices": [choice(TOKEN, "length")]})
        self.done = _frame(b"data: [DONE]\n\n") + b"0\r\n\r\n"

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        return _sse({**self.base, "choices": [], "usage": usage})

    def tokens(self, k: int) -> list[bytes]:
        return [self.token] * (k - 1) + [self.last] if k > 0 else []


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n"
)


def _response(
    status: int, body: bytes, content_type: bytes = b"application/json", close: bool = False
) -> bytes:
    reason = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 411: b"Length Required"}.get(
        status, b"Error"
    )
    connection = b"Connection: close\r\n" if close else b""
    return b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n%s" % (
        status,
        reason,
        content_type,
        len(body),
        connection,
        body,
    )


def _error(status: int, message: str, close: bool = False) -> bytes:
    body = orjson.dumps({"error": {"message": message, "type": "null_server", "code": status}})
    return _response(status, body, close=close)


def _prompt_tokens(body: dict[str, Any]) -> int:
    """Words in the prompt: a stand-in for tokens that a test can predict."""
    if "messages" in body:
        texts = [m.get("content") for m in body.get("messages") or () if isinstance(m, dict)]
    else:
        prompt = body.get("prompt")
        texts = prompt if isinstance(prompt, list) else [prompt]
    return sum(len(t.split()) for t in texts if isinstance(t, str))


class NullServer:
    """The server's state: its plan for requests and the timestamps it recorded."""

    def __init__(self, plan: Plan = Behaviour(), model: str = MODEL, capacity: Capacity | None = None):
        self.plan = plan
        self.model = model
        self.capacity = capacity
        self.free_at: list[float] = [0.0] * capacity.slots if capacity else []  # a heap, perf_counter s
        self.records: deque[Record] = deque(maxlen=MAX_RECORDS)
        self.arrivals = 0
        self._encoded: dict[tuple[bool, str], _Encoded] = {}
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), host, port, backlog=4096)
        self.port = self._server.sockets[0].getsockname()[1]
        return self._server

    def encoded(self, chat: bool, model: str) -> _Encoded:
        key = (chat, model)
        enc = self._encoded.get(key)
        if enc is None:
            enc = self._encoded[key] = _Encoded(chat, model)
        return enc

    def behaviour(self, index: int, body: dict[str, Any]) -> Behaviour:
        return self.plan if isinstance(self.plan, Behaviour) else self.plan(index, body)

    def timestamps(self, clear: bool) -> bytes:
        rows = [
            {"index": r.index, "user": r.user, "arrival_ns": r.arrival_ns, "first_ns": r.first_ns}
            | {"last_ns": r.last_ns}
            for r in self.records
        ]
        if clear:
            self.records.clear()
        return orjson.dumps({"clock": "time.perf_counter_ns (CLOCK_MONOTONIC)", "requests": rows})


class _Connection(asyncio.Protocol):
    """One keep-alive connection: requests are answered in order, one at a time."""

    def __init__(self, server: NullServer):
        self.server = server
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.streaming: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.streaming is not None:
            self.streaming.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._next()

    def _next(self) -> None:
        """Answer every complete request in the buffer (none while a delayed stream is running)."""
        while self.streaming is None and self.transport is not None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = self.buffer[:end].decode("latin-1").split("\r\n")
            length, close = 0, False
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "connection":
                    close = value.strip().lower() == "close"
                elif name == "transfer-encoding":
                    self.transport.write(_error(411, "send a Content-Length body", close=True))
                    self.transport.close()
                    return
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            method, target, *_ = lines[0].split(" ")
            self._answer(method, target, body, time.perf_counter_ns())
            if close and self.transport is not None:
                self.transport.close()

    def _answer(self, method: str, target: str, raw: bytes, arrival: int) -> None:
        assert self.transport is not None
        path, _, query = target.partition("?")
        write = self.transport.write
        if method == "POST" and path in ("/v1/chat/completions", "/v1/completions"):
            self._complete(path == "/v1/chat/completions", raw, arrival)
        elif method == "GET" and path == "/health":
            write(_response(200, b"ok", b"text/plain"))
        elif method == "GET" and path == "/v1/models":
            model = {"id": self.server.model, "object": "model", "created": 0, "owned_by": "null"}
            write(_response(200, orjson.dumps({"object": "list", "data": [model]})))
        elif method == "GET" and path == "/v1/null/timestamps":
            write(_response(200, self.server.timestamps(clear="clear=1" in query)))
        else:
            write(_error(404, f"no route {method} {path}"))

    def _complete(self, chat: bool, raw: bytes, arrival: int) -> None:
        assert self.transport is not None
        server = self.server
        try:
            body = orjson.loads(raw)
            k = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            self.transport.write(_error(400, "the body is not a JSON object with an integer max_tokens"))
            return
        server.arrivals += 1
        record = Record(server.arrivals, body.get("user"), arrival)
        server.records.append(record)
        plan = server.behaviour(record.index, body)
        if plan.status != 200:
            record.last_ns = time.perf_counter_ns()
            self.transport.write(_error(plan.status, f"null server: planned HTTP {plan.status}"))
            return
        enc = server.encoded(chat, str(body.get("model") or server.model))
        usage = None
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            usage = enc.usage(_prompt_tokens(body), k)
        if server.capacity is not None and body.get("stream"):
            now = arrival / 1e9
            begin = max(now, heapq.heappop(server.free_at))
            end = begin + server.capacity.service_ms / 1000
            heapq.heappush(server.free_at, end)
            self.streaming = asyncio.ensure_future(self._served(enc, k, usage, begin, end, record))
        elif not body.get("stream"):
            self._whole(enc, body, k, record)
        elif plan.delay_ms <= 0 and not plan.ttft_ms:
            # everything at once: one write, the client parses the chunks as fast as it can
            first = STREAM_HEAD + b"\r\n" + enc.opening
            record.first_ns = record.last_ns = time.perf_counter_ns()
            self.transport.write(first + b"".join(enc.tokens(k)) + (usage or b"") + enc.done)
        else:
            self.streaming = asyncio.ensure_future(self._stream(enc, k, usage, plan, record))

    def _whole(self, enc: _Encoded, body: dict[str, Any], k: int, record: Record) -> None:
        assert self.transport is not None
        text = TOKEN * k
        if enc.chat:
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}}
        else:
            choice = {"index": 0, "text": text}
        prompt = _prompt_tokens(body)
        usage = {"prompt_tokens": prompt, "completion_tokens": k, "total_tokens": prompt + k}
        reply = {**enc.base, "object": "chat.completion" if enc.chat else "text_completion"}
        reply["choices"] = [choice | {"finish_reason": "length"}]
        reply["usage"] = usage
        record.first_ns = record.last_ns = time.perf_counter_ns()
        self.transport.write(_response(200, orjson.dumps(reply)))

    async def _stream(
        self, enc: _Encoded, k: int, usage: bytes | None, plan: Behaviour, record: Record
    ) -> None:
        def pause(i: int, _chunks: int) -> float:
            delay = plan.ttft_ms if i == 0 and plan.ttft_ms is not None else plan.delay_ms
            return delay / 1000

        await self._write_stream(enc, k, usage, record, pause)

    async def _served(
        self, enc: _Encoded, k: int, usage: bytes | None, begin: float, end: float, record: Record
    ) -> None:
        """A stream in a slot from `begin` to `end` (perf_counter seconds): chunk i at its share."""

        def pause(i: int, chunks: int) -> float:
            return begin + (end - begin) * (i + 1) / chunks - time.perf_counter()

        await self._write_stream(enc, k, usage, record, pause)

    async def _write_stream(
        self,
        enc: _Encoded,
        k: int,
        usage: bytes | None,
        record: Record,
        pause: Callable[[int, int], float],
    ) -> None:
        """Write the event stream of k tokens, sleeping `pause(i, chunks)` seconds (when positive)
        before chunk i; then answer the next request."""
        try:
            assert self.transport is not None
            self.transport.write(STREAM_HEAD + b"\r\n" + enc.opening)
            tokens = enc.tokens(k)
            for i, token in enumerate(tokens):
                wait = pause(i, len(tokens))
                if wait > 0:
                    await asyncio.sleep(wait)
                if self.transport is None:
                    return
                if i == 0:
                    record.first_ns = time.perf_counter_ns()
                self.transport.write(token)
            record.last_ns = time.perf_counter_ns()
            self.transport.write((usage or b"") + enc.done)
        finally:
            self.streaming = None
        self._next()


def fail_every(n: int, behaviour: Behaviour) -> Plan:
    """Every n-th request (by arrival) answers HTTP 500; the others behave as given."""
    failed = Behaviour(status=500)
    return lambda index, _body: failed if n > 0 and index % n == 0 else behaviour


@contextlib.contextmanager
def serve_in_thread(
    plan: Plan = Behaviour(), model: str = MODEL, capacity: Capacity | None = None
) -> Iterator[NullServer]:
    """Run a null server on a free loopback port in a daemon thread (tests, in-process benchmarks)."""
    server = NullServer(plan, model, capacity)
    loop = eventloop.new_loop()
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="null-server", daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("the null server did not start")
    try:
        yield server
    finally:
        if server._server is not None:
            loop.call_soon_threadsafe(server._server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


async def _main(args: argparse.Namespace) -> None:
    behaviour = Behaviour(args.delay_ms, args.ttft_ms)
    capacity = None
    if args.slots or args.service_ms:
        if not (args.slots and args.service_ms and args.slots > 0 and args.service_ms > 0):
            raise SystemExit("--slots and --service-ms go together, both > 0 (capacity = slots * 1000 / ms)")
        capacity = Capacity(args.slots, args.service_ms)
    plan = fail_every(args.fail_every, behaviour) if args.fail_every else behaviour
    server = NullServer(plan, args.model, capacity)
    listening = await server.start(args.host, args.port)
    print(f"null server listening on http://{args.host}:{server.port}", flush=True)
    if capacity is not None:
        print(
            f"capacity {capacity.rate:g} req/s ({capacity.slots} slots x {capacity.service_ms:g} ms)",
            flush=True,
        )
    async with listening:
        await listening.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8190, help="0 picks a free port (printed)")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="before every output chunk (default 0)")
    parser.add_argument("--ttft-ms", type=float, help="before the first output chunk (default: --delay-ms)")
    parser.add_argument("--fail-every", type=int, default=0, help="every N-th request answers HTTP 500")
    parser.add_argument("--slots", type=int, default=0, help="capacity: requests served at once")
    parser.add_argument(
        "--service-ms", type=float, default=0.0, help="capacity: ms each request holds a slot"
    )
    parser.add_argument("--model", default=MODEL, help=f"the name /v1/models lists (default {MODEL})")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        eventloop.run(_main(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
