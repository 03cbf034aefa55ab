"""One OpenAI-compatible endpoint as the validation commands see it, and one request measured
from the client's side.

`smoke`, `bench` and `eval` all talk to the server through `request()`: the same SSE parser, the
same timings (TTFT, inter-token gaps, end-to-end), the same error capture. It works against any
OpenAI-compatible server (FastDeploy, vLLM, the embedded backend). aiohttp rather than httpx: the
load generator must not be the bottleneck, and aiohttp's client is the cheaper one per request
(scripts/bench_loadgen.py measures the ceiling).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from ernie_ops.errors import UserError

CHAT = "chat/completions"
COMPLETIONS = "completions"


@dataclass(frozen=True)
class Endpoint:
    """Where to send requests: `base` ends with /v1; `model` is the served name."""

    base: str
    api_key: str | None = None
    model: str | None = None

    @classmethod
    def parse(cls, url: str, api_key_env: str | None = None, model: str | None = None) -> Endpoint:
        """Accepts `host:port`, `http://host:port`, `.../v1` or a full `.../v1/chat/completions` URL.

        The key is read from the environment variable named by `api_key_env` (never from the
        command line, where `ps` would show it).
        """
        text = url.strip()
        if "://" not in text:
            text = "http://" + text
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UserError(
                f"not an HTTP endpoint: {url!r}",
                hint="give the server's address, e.g. http://127.0.0.1:8180 or http://host:8180/v1",
            )
        path = parts.path.rstrip("/")
        for suffix in ("/" + CHAT, "/" + COMPLETIONS, "/models"):
            path = path.removesuffix(suffix)
        if not path.endswith("/v1"):
            path += "/v1"
        key = None
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise UserError(
                    f"the environment variable {api_key_env} is not set or empty",
                    hint=f"export {api_key_env}=... (the server's API key) and run again",
                )
        return cls(f"{parts.scheme}://{parts.netloc}{path}", key, model)

    @property
    def root(self) -> str:
        """The server's root URL (where /health and /metrics live)."""
        return self.base.removesuffix("/v1")

    @property
    def host(self) -> str:
        return urlsplit(self.base).hostname or ""

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def with_model(self, model: str) -> Endpoint:
        return Endpoint(self.base, self.api_key, model)


def session(endpoint: Endpoint, concurrency: int = 64, timeout: float = 600.0) -> aiohttp.ClientSession:
    """A client session sized for `concurrency` connections to the endpoint (keep-alive reused)."""
    # keep-alive shorter than the servers' (uvicorn, which FastDeploy uses too, closes idle
    # connections after 5 s): reusing a connection the server is closing fails the request
    connector = aiohttp.TCPConnector(
        limit=max(concurrency, 1), keepalive_timeout=3.0, enable_cleanup_closed=True
    )
    return aiohttp.ClientSession(
        connector=connector,
        trace_configs=[_SENT],
        headers=endpoint.headers(),
        timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=10),
        json_serialize=lambda obj: orjson.dumps(obj).decode(),
        # the server's clock is not ours; no cookies, no redirects to other hosts
        cookie_jar=aiohttp.DummyCookieJar(),
    )


async def _body_sent(_session: Any, context: Any, _params: Any) -> None:
    """aiohttp calls this as each piece of a request body is written to the connection."""
    reply = context.trace_request_ctx
    if isinstance(reply, Reply):
        reply.sent = time.perf_counter()


# TTFT and E2E start when the request leaves, not when it was due: with many streams in lockstep a
# single-threaded client handles the replies that end together one after another, and on Python
# < 3.12 aiohttp writes every body from a task of its own that runs only after all of them, so the
# time between (the send lag) is this client's queueing, not the server's latency. It is reported
# on its own (`Reply.send_lag`, the bench's lag column) so a saturated generator shows.
_SENT = aiohttp.TraceConfig()
_SENT.on_request_chunk_sent.append(_body_sent)


async def _connection_reused(_session: Any, context: Any, _params: Any) -> None:
    reply = context.trace_request_ctx
    if isinstance(reply, Reply):
        reply.reused = True


_SENT.on_connection_reuseconn.append(_connection_reused)


@dataclass
class Reply:
    """One request as the client saw it; times are `time.perf_counter()` seconds."""

    status: int = 0  # HTTP status; 0 when no response arrived
    text: str = ""
    reasoning: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None  # the server's error message, or what went wrong on the way
    body: dict[str, Any] | None = None  # the JSON body (non-streaming replies and errors)
    start: float = 0.0  # when request() was called
    sent: float | None = None  # when the body was written (None: no body was written)
    first: float | None = None  # arrival of the first chunk carrying output (content, reasoning, tool call)
    end: float = 0.0
    chunk_times: list[float] = field(default_factory=list)  # arrival of every chunk carrying output
    reused: bool = False  # the request went out on a kept-alive connection

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None

    @property
    def origin(self) -> float:
        """Where the server's part begins: the request written, else (nothing written) called."""
        return self.start if self.sent is None else self.sent

    @property
    def send_lag(self) -> float | None:
        """From the call to the body written: the client's own queueing."""
        return None if self.sent is None else self.sent - self.start

    @property
    def latency(self) -> float:
        return self.end - self.origin

    @property
    def ttft(self) -> float | None:
        return None if self.first is None else self.first - self.origin

    @property
    def itl(self) -> list[float]:
        """Inter-token latencies: the gaps between output chunks."""
        t = self.chunk_times
        return [b - a for a, b in itertools.pairwise(t)]

    @property
    def output_tokens(self) -> int:
        """Completion tokens from `usage`, else the output chunks counted (one token each)."""
        return self.completion_tokens if self.completion_tokens is not None else len(self.chunk_times)

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first."""
        n = self.output_tokens
        if self.first is None or n < 2:
            return None
        return (self.end - self.first) / (n - 1)


async def request(
    client: aiohttp.ClientSession,
    endpoint: Endpoint,
    body: dict[str, Any],
    path: str = CHAT,
    timeout: float | None = None,
) -> Reply:
    """POST `body` (an OpenAI request without `model`, which comes from the endpoint) and measure it.

    Streaming when `body["stream"]` is true (usage requested unless the body says otherwise). Never
    raises for what the server or the network did: the reply carries the status and the error.
    """
    payload = {"model": endpoint.model, **body}
    if payload.get("stream") and "stream_options" not in payload:
        payload["stream_options"] = {"include_usage": True}
    start = time.perf_counter()
    for _attempt in range(_STALE_RETRIES + 1):
        reply = Reply(start=start)
        stale = await _post(client, endpoint, payload, path, timeout, reply)
        # A kept-alive connection the server had closed (llama-server does after a stream now and
        # then; any server may at its idle timeout) answered nothing: the request goes out again,
        # as HTTP clients do for pooled connections. The reply keeps its start: the lost attempt
        # is part of the latency the client saw.
        if not (stale and reply.reused and reply.status == 0):
            break
    return reply


_STALE_RETRIES = 2


async def _post(
    client: aiohttp.ClientSession,
    endpoint: Endpoint,
    payload: dict[str, Any],
    path: str,
    timeout: float | None,
    reply: Reply,
) -> bool:
    """Send once into `reply`; True when the connection was found closed before any answer."""
    stale = False
    try:
        async with client.post(
            f"{endpoint.base}/{path}",
            data=orjson.dumps(payload),
            timeout=aiohttp.ClientTimeout(total=timeout) if timeout else None,
            allow_redirects=False,  # load and prompts go to the endpoint given, nowhere else
            trace_request_ctx=reply,
        ) as resp:
            reply.status = resp.status
            if resp.status != 200 or not payload.get("stream"):
                raw = await resp.read()
                reply.end = time.perf_counter()
                _read_body(reply, raw)
            else:
                await _read_stream(reply, resp)
    except asyncio.TimeoutError:
        reply.error = f"timed out after {timeout or client.timeout.total:g} s"
    except aiohttp.ClientConnectorError as err:
        reply.error = f"cannot connect to {endpoint.root}: {err.os_error.strerror or err}"
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as err:
        reply.error = f"{type(err).__name__}: {err}".rstrip(": ")
        stale = True  # only acted on when no status arrived on a reused connection
    except (aiohttp.ClientError, OSError) as err:
        reply.error = f"{type(err).__name__}: {err}".rstrip(": ")
    # the reply ended when its last byte arrived, not after the connection went back to the pool
    reply.end = reply.end or time.perf_counter()
    return stale


def _read_body(reply: Reply, raw: bytes) -> None:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        reply.error = f"HTTP {reply.status}: the body is not JSON: {raw[:200]!r}"
        return
    reply.body = body if isinstance(body, dict) else {"value": body}
    if reply.status != 200 or "error" in reply.body:
        reply.error = _error_message(reply.body) or f"HTTP {reply.status}"
        return
    choices = reply.body.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    reply.text = message.get("content") or choice.get("text") or ""
    reply.reasoning = message.get("reasoning_content") or ""
    reply.tool_calls = message.get("tool_calls") or []
    reply.finish_reason = choice.get("finish_reason")
    _read_usage(reply, reply.body.get("usage"))
    reply.first = reply.end
    if reply.text or reply.reasoning:
        reply.chunk_times.append(reply.first)


async def _read_stream(reply: Reply, resp: aiohttp.ClientResponse) -> None:
    """Server-sent events: `data: {json}` lines until `data: [DONE]`.

    Reads whatever has arrived (`readany`) and splits the lines itself: one await per network read
    instead of one per line (an event is two lines), which is most of the client's cost per token.
    Chunks that arrived in the same read share its arrival time.
    """
    text: list[str] = []
    reasoning: list[str] = []
    content = resp.content
    partial = b""  # a line cut by the end of a read
    while True:
        data = await content.readany()
        now = time.perf_counter()
        if not data:  # end of the body: a last line without its newline still counts
            lines, partial = [partial], b""
        else:
            lines = (partial + data if partial else data).split(b"\n")
            partial = lines.pop()
        for line in lines:
            if not line.startswith(b"data:"):
                continue  # blank separators, comments (keep-alives), `event:` lines
            outcome = _event(reply, line[5:].strip(), now, text, reasoning)
            if outcome is not None:
                if outcome:  # data: [DONE]
                    reply.end = now
                    reply.text = "".join(text)
                    reply.reasoning = "".join(reasoning)
                return
        if not data:
            break
    reply.text = "".join(text)
    reply.reasoning = "".join(reasoning)
    if reply.error is None:
        reply.error = "the stream ended without data: [DONE]"


def _event(reply: Reply, data: bytes, now: float, text: list[str], reasoning: list[str]) -> bool | None:
    """Take one event into the reply: True at `[DONE]`, False when the stream must stop (an error)."""
    if data == b"[DONE]":
        return True
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        reply.error = f"a streamed event is not JSON: {data[:200]!r}"
        return False
    if "error" in chunk:
        reply.error = _error_message(chunk) or "the stream carried an error"
        return False
    usage = chunk.get("usage")
    if usage:
        _read_usage(reply, usage)
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        piece = delta.get("content") or choice.get("text")
        thought = delta.get("reasoning_content")
        calls = delta.get("tool_calls")
        if piece:
            text.append(piece)
        if thought:
            reasoning.append(thought)
        if calls:
            _merge_tool_calls(reply.tool_calls, calls)
        if piece or thought or calls:
            if reply.first is None:
                reply.first = now
            reply.chunk_times.append(now)
        if choice.get("finish_reason"):
            reply.finish_reason = choice["finish_reason"]
    return None


def _merge_tool_calls(calls: list[dict[str, Any]], deltas: list[dict[str, Any]]) -> None:
    """Streamed tool calls arrive in pieces keyed by index: the name once, the arguments in parts."""
    for delta in deltas:
        index = delta.get("index", len(calls))
        while len(calls) <= index:
            calls.append({"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
        call = calls[index]
        call["id"] = delta.get("id") or call["id"]
        function = delta.get("function") or {}
        call["function"]["name"] += function.get("name") or ""
        call["function"]["arguments"] += function.get("arguments") or ""


def _read_usage(reply: Reply, usage: Any) -> None:
    if isinstance(usage, dict):
        reply.prompt_tokens = usage.get("prompt_tokens", reply.prompt_tokens)
        reply.completion_tokens = usage.get("completion_tokens", reply.completion_tokens)


def _error_message(body: dict[str, Any]) -> str | None:
    error = body.get("error")
    if isinstance(error, dict):
        return str(error.get("message") or error)
    if error:
        return str(error)
    return str(body.get("detail") or body.get("message") or "") or None


async def get_json(client: aiohttp.ClientSession, url: str, timeout: float = 10.0) -> tuple[int, Any]:
    """(status, JSON body or text) of a GET; status 0 and the reason when nothing answered."""
    try:
        async with client.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            raw = await resp.read()
            try:
                return resp.status, orjson.loads(raw)
            except orjson.JSONDecodeError:
                return resp.status, raw.decode(errors="replace")
    except asyncio.TimeoutError:
        return 0, f"no answer within {timeout:g} s"
    except (aiohttp.ClientError, OSError) as err:
        return 0, str(err)


async def resolve_model(client: aiohttp.ClientSession, endpoint: Endpoint) -> Endpoint:
    """The endpoint with its model named: the one given, else the first `/v1/models` lists."""
    status, body = await get_json(client, f"{endpoint.base}/models")
    if status == 0:
        raise UserError(
            f"nothing answers at {endpoint.root}: {body}",
            hint="is the server running? `ernie-ops serve status` lists the servers started here",
        )
    if status == 401:
        raise UserError(
            f"{endpoint.root} refused the API key (HTTP 401)",
            hint="pass --api-key-env VAR naming the environment variable that holds the key",
        )
    models = [m.get("id") for m in body.get("data", [])] if status == 200 and isinstance(body, dict) else []
    if endpoint.model:
        if models and endpoint.model not in models:
            raise UserError(
                f"{endpoint.root} does not serve model {endpoint.model!r}; it serves: {', '.join(models)}",
                hint="leave out --model to use the first one",
            )
        return endpoint
    if not models:
        raise UserError(
            f"{endpoint.base}/models answered HTTP {status} with no model",
            hint="name the model with --model",
        )
    return endpoint.with_model(str(models[0]))
