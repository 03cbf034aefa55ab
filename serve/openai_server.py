"""The embedded OpenAI-compatible HTTP server over the CPU engine (`serve/engine/`).

It speaks the subset of the API FastDeploy serves, so the smoke / bench / eval clients cannot tell the
two apart: `/v1/chat/completions`, `/v1/completions` (streaming or not), `/v1/models`, `/health`,
`/metrics`. The wire shapes are in `protocol.py`; this module maps them to engine requests.

The engine is reached only through the async `EngineClient` interface (`engine_client.py`; the CPU
engine through its `AsyncEngine` adapter, a fake one in the tests): `generate` gives a request's
deltas as an async iterator, `abort` ends it, `check_health` and `load` feed /health and /metrics.
Threads: the engine steps in its own thread and hands its tokens to the event loop as they are
produced (no thread per request). Parsing, the chat template and tokenizing run in a small pool of
their own, so a large prompt never holds up /health or the streams of others.

Hostile clients: a request body has a size limit (413 before it is read whole) and a deadline
(408); a connection that has not sent a whole request head within the read timeout is closed; past
`max_connections` a new connection gets a 503 at once; every path but /health needs the API key;
repeated warnings are logged once with a count.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from ernie_ops.errors import UserError
from ernie_ops.extras import optional_imports
from ernie_ops.serve.engine_client import (
    FINISH_CANCELLED,
    FINISH_ERROR,
    Delta,
    EngineClient,
    EngineUnhealthy,
    SamplingParams,
    as_engine_client,
)
from ernie_ops.serve.metrics import Metrics
from ernie_ops.serve.protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    DeltaMessage,
    ErrorInfo,
    ErrorResponse,
    ModelCard,
    ModelList,
    ResponseMessage,
    SamplingFields,
    Usage,
    openai_param,
)

if TYPE_CHECKING:
    from fastapi import FastAPI, Request
    from fastapi.responses import Response
    from starlette.types import ASGIApp, Receive, Scope, Send

    from ernie_ops.serve.engine import Engine

log = logging.getLogger("ernie_ops.serve.openai_server")  # this name also when run as __main__

THINK_END = "</think>"
DEFAULT_MAX_WAITING = 64
DISCONNECT_POLL_S = 0.25  # how often a quiet request checks whether its client is still there
# a prompt the context holds is well under 1 MB of text; the limit only stops abuse
DEFAULT_MAX_REQUEST_MB = 4.0
DEFAULT_READ_TIMEOUT_S = 30.0  # to send a request's head, and then its body
DEFAULT_MAX_CONNECTIONS = 256
PREPARE_THREADS = 2  # parse + chat template + tokenize, off the event loop
OPEN_PATHS = frozenset({"/health"})  # everything else needs the API key when one is set
_BAD_KEY = "invalid_api_key"
SAMPLING_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty")
OPENAI_SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0}


class APIError(Exception):
    """A request the server refuses; becomes an OpenAI-style error body with this status."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str,
        param: str | None = None,
        code: str | None = None,
        close: bool = False,  # end the connection after the answer (a body left unread)
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.close = close

    def body(self) -> dict[str, Any]:
        info = ErrorInfo(message=self.message, type=self.type, param=self.param, code=self.code)
        return ErrorResponse(error=info).model_dump()


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, "invalid_request_error", param, code)


# ---------------------------------------------------------------------------------------------
# reasoning split (the way FastDeploy's ERNIE reasoning parsers do it)


def split_reasoning(text: str, thinking: bool) -> tuple[str | None, str | None]:
    """(reasoning_content, content) of a whole output.

    Text before the first `</think>` is reasoning; without one the output is content, unless the
    request was in thinking mode (then it is a thought cut short, as the stream already showed it).
    """
    reasoning, marker, content = text.partition(THINK_END)
    if marker:
        return reasoning, content
    return (text, None) if thinking else (None, text)


class ReasoningStream:
    """The streaming counterpart of `split_reasoning`: routes text deltas to reasoning or content.

    In thinking mode text is reasoning until `</think>`; otherwise it is content from the start
    (a later `</think>` is dropped, the text already sent cannot be taken back). A tail that could be
    the start of `</think>` is held back so the marker never leaks when split across deltas.
    """

    def __init__(self, thinking: bool):
        self.in_reasoning = thinking
        self.done = False  # the marker has been seen: everything from now on is content
        self.buffer = ""

    def feed(self, text: str, final: bool = False) -> tuple[str, str]:
        if self.done:
            return "", text
        self.buffer += text
        before, marker, after = self.buffer.partition(THINK_END)
        if marker:
            self.done, self.buffer = True, ""
            return (before, after) if self.in_reasoning else ("", before + after)
        keep = 0 if final else _marker_prefix(self.buffer)
        ready, self.buffer = self.buffer[: len(self.buffer) - keep], self.buffer[len(self.buffer) - keep :]
        return (ready, "") if self.in_reasoning else ("", ready)


def _marker_prefix(text: str) -> int:
    for n in range(min(len(THINK_END) - 1, len(text)), 0, -1):
        if text.endswith(THINK_END[:n]):
            return n
    return 0


# ---------------------------------------------------------------------------------------------
# the server state and request plumbing


@dataclass
class ServerState:
    engine: EngineClient
    model_name: str
    api_key: str | None
    max_waiting: int
    max_body_bytes: int = int(DEFAULT_MAX_REQUEST_MB * 2**20)
    read_timeout: float = DEFAULT_READ_TIMEOUT_S
    defaults: dict[str, float] = field(default_factory=lambda: dict(OPENAI_SAMPLING))
    metrics: Metrics = field(default_factory=Metrics)
    in_flight: dict[str, float] = field(default_factory=dict)  # request id -> arrival time
    preparing: int = 0  # requests in the prepare pool (they count against the capacity too)
    thinking_default: bool = False
    pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(PREPARE_THREADS, thread_name_prefix="prepare")
    )

    @property
    def capacity(self) -> int:
        return self.engine.max_batch_size + self.max_waiting

    def load(self) -> tuple[int, int]:
        """(running, waiting) from the engine's scheduler."""
        return self.engine.load()

    def check_room(self) -> None:
        """429 when the running batch, the queue and the requests being prepared are full."""
        busy = len(self.in_flight) + self.preparing
        if busy >= self.capacity:
            raise APIError(
                429,
                f"the server is busy ({busy} requests in flight); retry later",
                "rate_limit_error",
                code="too_many_requests",
            )


@dataclass
class Prepared:
    """A validated request turned into engine terms."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    stream: bool
    include_usage: bool
    thinking: bool = False


def sampling_defaults(generation_config: dict[str, Any]) -> dict[str, float]:
    """What a request that leaves out temperature, top_p, top_k or repetition_penalty gets: the
    checkpoint's generation_config.json (as vLLM and FastDeploy do), else OpenAI's defaults. A tuned
    ERNIE checkpoint says temperature 0.8 / top_p 0.8; sampled at 1.0 it can answer garbage."""
    defaults = dict(OPENAI_SAMPLING)
    for key in SAMPLING_KEYS:
        value = generation_config.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            defaults[key] = value
    try:
        _engine_params(defaults, max_tokens=1).check()
    except UserError as err:
        raise UserError(f"generation_config.json: {err.message}", hint="fix the checkpoint's file") from None
    return defaults


def _engine_params(values: dict[str, Any], **more: Any) -> SamplingParams:
    return SamplingParams(
        temperature=float(values["temperature"]),
        top_p=float(values["top_p"]),
        top_k=max(int(values["top_k"]), 0),
        repetition_penalty=float(values["repetition_penalty"]),
        **more,
    )


def _authorized(api_key: str | None, header: str) -> bool:
    if api_key is None:
        return True
    scheme, _, token = header.partition(" ")
    # compare_digest: the time taken must not reveal how much of the key was right
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())


class _RequireKey:
    """Every path but /health answers only with the API key (the docs and /metrics too)."""

    def __init__(self, app: ASGIApp, api_key: str | None):
        self.app, self.api_key = app, api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        from starlette.datastructures import Headers
        from starlette.responses import JSONResponse

        guarded = scope["type"] == "http" and scope["path"] not in OPEN_PATHS
        if guarded and not _authorized(self.api_key, Headers(scope=scope).get("authorization", "")):
            error = APIError(401, "invalid or missing API key", "authentication_error", code=_BAD_KEY)
            await JSONResponse(error.body(), status_code=401)(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def _read_body(state: ServerState, request: Request) -> bytes:
    """The body, refused with 413 past the size limit (before it is read whole: at once when its
    Content-Length says so) and with 408 when it has not all arrived within the read timeout."""
    from starlette.requests import ClientDisconnect

    limit = state.max_body_bytes
    too_large = APIError(
        413,
        f"the request body is larger than this server's limit of {limit} bytes",
        "invalid_request_error",
        code="request_too_large",
        close=True,
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()

    async def read() -> None:
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limit:
                raise too_large

    try:
        await asyncio.wait_for(read(), state.read_timeout)
    except asyncio.TimeoutError:
        raise APIError(
            408,
            f"the request body did not arrive within {state.read_timeout:g} s",
            "invalid_request_error",
            code="request_timeout",
            close=True,
        ) from None
    except ClientDisconnect:  # the client left mid-body: nothing to answer, nothing to log
        raise APIError(499, "the client closed the request", "client_closed_request") from None
    return bytes(body)


def _parse(body: bytes, model: type[SamplingFields]) -> Any:
    """The JSON body validated against `model`; any problem is a 400 naming the field."""
    try:
        return model.model_validate_json(body)
    except ValidationError as err:
        errors = err.errors()
        if errors[0]["type"] == "json_invalid":
            raise bad_request(f"the request body is not valid JSON: {errors[0]['msg']}") from None
        # the deepest error is the most precise (a union's members fail at its top level too)
        worst = max(errors, key=lambda e: len(e["loc"]))
        param = openai_param(worst["loc"])
        message = worst["msg"].removeprefix("Value error, ")
        raise bad_request(f"{param}: {message}" if param else message, param=param) from None


def _sampling(
    state: ServerState,
    req: SamplingFields,
    prompt_len: int,
    limit: int | None,
    default: int,
    prompt_param: str,
) -> SamplingParams:
    max_len = state.engine.max_length
    room = max_len - prompt_len
    max_tokens = limit if limit is not None else min(default, room) if default else room
    if max_tokens > room or room <= 0:
        raise bad_request(
            f"this model's maximum context length is {max_len} tokens; the prompt has {prompt_len} "
            f"and {max_tokens} more were requested",
            param="max_tokens" if limit is not None and prompt_len < max_len else prompt_param,
            code="context_length_exceeded",
        )
    vocab = _vocab_size(state)
    if vocab and any(i >= vocab for i in req.stop_token_ids):
        raise bad_request(f"stop_token_ids: token ids must be in [0, {vocab})", param="stop_token_ids")
    given = {key: getattr(req, key) for key in SAMPLING_KEYS if getattr(req, key) is not None}
    return _engine_params(
        {**state.defaults, **given},
        max_tokens=max_tokens,
        seed=req.seed,
        stop=req.stop_list(),
        stop_token_ids=list(req.stop_token_ids),
        ignore_eos=req.ignore_eos,
    )


def _vocab_size(state: ServerState) -> int:
    return int(getattr(state.engine.tokenizer, "vocab_size", 0) or 0)


def _check_model(state: ServerState, name: str) -> None:
    if name != state.model_name:
        raise APIError(
            404,
            f"the model `{name}` does not exist; this server serves `{state.model_name}`",
            "invalid_request_error",
            param="model",
            code="model_not_found",
        )


def _prepare_chat(state: ServerState, body: bytes) -> Prepared:
    req: ChatCompletionRequest = _parse(body, ChatCompletionRequest)
    _check_model(state, req.model)
    images = [f"messages[{i}].content[{j}]" for i, m in enumerate(req.messages) for j in m.image_parts()]
    if images:
        raise bad_request(
            f"{images[0]}: this model reads text only; image_url parts are not supported",
            param=f"{images[0]}.type",
        )
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages
    ]
    switches = req.chat_template_kwargs.model_dump(exclude_none=True)
    try:
        text = state.engine.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **switches
        )
    except Exception as err:  # a template error is caused by what the client sent
        raise bad_request(f"the chat template failed on these messages: {err}", param="messages") from None
    ids = state.engine.encode(str(text))
    thinking = bool(switches.get("enable_thinking", state.thinking_default))
    params = _sampling(state, req, len(ids), req.token_limit(), default=0, prompt_param="messages")
    return Prepared(f"chatcmpl-{uuid.uuid4().hex}", ids, params, req.stream, _usage_wanted(req), thinking)


def _prepare_completion(state: ServerState, body: bytes) -> Prepared:
    req: CompletionRequest = _parse(body, CompletionRequest)
    _check_model(state, req.model)
    prompt = req.single_prompt()
    ids = state.engine.encode(prompt) if isinstance(prompt, str) else list(prompt)
    if not ids:
        raise bad_request("the prompt is empty", param="prompt")
    vocab = _vocab_size(state)
    if vocab and any(not 0 <= i < vocab for i in ids):
        raise bad_request(f"prompt token ids must be in [0, {vocab})", param="prompt")
    # OpenAI's completions default is 16 new tokens
    params = _sampling(state, req, len(ids), req.max_tokens, default=16, prompt_param="prompt")
    return Prepared(f"cmpl-{uuid.uuid4().hex}", ids, params, req.stream, _usage_wanted(req))


async def _prepare(state: ServerState, request: Request, endpoint: str) -> Prepared:
    """Read the body, then parse, template and tokenize it in the prepare pool (a large prompt
    takes seconds there, and must not hold up the event loop)."""
    state.check_room()
    state.preparing += 1
    try:
        body = await _read_body(state, request)
        prepare = _prepare_chat if endpoint == "chat" else _prepare_completion
        return await asyncio.get_running_loop().run_in_executor(state.pool, prepare, state, body)
    finally:
        state.preparing -= 1


def _usage_wanted(req: SamplingFields) -> bool:
    return req.stream_options is not None and req.stream_options.include_usage


@dataclass
class _Ticket:
    """An admitted request: its deltas come from `deltas`; `release` must run however it ends."""

    state: ServerState
    request_id: str
    deltas: AsyncIterator[Delta | None]  # None: DISCONNECT_POLL_S passed without a delta
    arrived: float
    finished: bool = False

    async def release(self) -> None:
        if self.state.in_flight.pop(self.request_id, None) is not None and not self.finished:
            await self.state.engine.abort(self.request_id)  # the client left (or failed): free the slot
        aclose = getattr(self.deltas, "aclose", None)
        if aclose is not None:  # an iterator left early ends now, not when it is collected
            with contextlib.suppress(RuntimeError):  # still closing from a cancelled read: it ends anyway
                await aclose()


def _admit(state: ServerState, prep: Prepared) -> _Ticket:
    """Submit to the engine, or refuse with 429 when the waiting queue is full."""
    state.check_room()
    try:
        deltas = state.engine.generate(prep.request_id, prep.prompt_ids, prep.params, DISCONNECT_POLL_S)
    except UserError as err:
        raise bad_request(err.message) from None
    ticket = _Ticket(state, prep.request_id, deltas, time.perf_counter())
    state.in_flight[prep.request_id] = ticket.arrived
    state.metrics.tokens(len(prep.prompt_ids), 0)
    return ticket


async def _deltas(ticket: _Ticket, request: Request) -> AsyncIterator[Delta]:
    """The request's deltas until the last one, or until the client is seen to be gone (checked
    when the engine client reports DISCONNECT_POLL_S without a delta: nothing per token)."""
    metrics, first = ticket.state.metrics, True
    async for delta in ticket.deltas:
        if delta is None:  # quiet for a while: is the client still there?
            if await request.is_disconnected():
                return
            continue
        if first and (delta.text or delta.token_ids):
            metrics.first_token(time.perf_counter() - ticket.arrived)
            first = False
        metrics.tokens(0, len(delta.token_ids))
        if delta.finish_reason is not None:
            ticket.finished = True
            metrics.finished(time.perf_counter() - ticket.arrived)
        yield delta
    ticket.finished = True


def _refusal(reason: str | None) -> APIError | None:
    """The error for a request that ended without a client-facing finish reason."""
    if reason == FINISH_CANCELLED:
        return APIError(503, "the request was cancelled (the server is shutting down)", "server_error")
    if reason == FINISH_ERROR or reason is None:
        return APIError(500, "the engine failed while generating; see the server log", "server_error")
    return None


async def _collect(state: ServerState, prep: Prepared, request: Request) -> tuple[str, int, str]:
    """Run a request to the end: (text, completion tokens, finish reason)."""
    ticket = _admit(state, prep)
    parts: list[str] = []
    n_tokens, reason = 0, None
    try:
        async for delta in _deltas(ticket, request):
            parts.append(delta.text)
            n_tokens += len(delta.token_ids)
            reason = delta.finish_reason or reason
    finally:
        await ticket.release()
    if not ticket.finished:  # the client is gone; nobody reads this
        raise APIError(499, "the client closed the request", "client_closed_request")
    error = _refusal(reason)
    if error is not None:
        raise error
    return "".join(parts), n_tokens, str(reason)


def _sse(payload: BaseModel | dict[str, Any]) -> str:
    if isinstance(payload, BaseModel):
        return f"data: {payload.model_dump_json(exclude_none=True)}\n\n"
    return f"data: {json.dumps(payload)}\n\n"


async def _stream(
    state: ServerState,
    prep: Prepared,
    request: Request,
    first: str,
    render: Callable[[Delta, bool], str | None],
    usage_event: Callable[[Usage], str],
) -> AsyncIterator[str]:
    """The SSE body both endpoints share: `first` at once (it sends the 200 header), each delta as
    `render` draws it, a refusal as an error event, usage when asked for, then `data: [DONE]`."""
    ticket = _admit(state, prep)  # before the first chunk, so a refusal is still an HTTP error
    try:
        n_tokens = 0
        yield first
        async for delta in _deltas(ticket, request):
            n_tokens += len(delta.token_ids)
            final = delta.finish_reason is not None
            error = _refusal(delta.finish_reason) if final else None
            if error is not None:
                yield _sse(error.body())
                break
            event = render(delta, final)
            if event:
                yield event
        if not ticket.finished:
            return
        if prep.include_usage:
            yield usage_event(Usage.of(len(prep.prompt_ids), n_tokens))
        yield "data: [DONE]\n\n"
    finally:
        await ticket.release()


def _chat_stream(state: ServerState, prep: Prepared, request: Request) -> AsyncIterator[str]:
    def chunk(delta: DeltaMessage, finish: str | None = None) -> ChatCompletionChunk:
        choice = ChatChunkChoice(delta=delta, finish_reason=finish)  # type: ignore[arg-type]
        return ChatCompletionChunk(id=prep.request_id, model=state.model_name, choices=[choice])

    splitter = ReasoningStream(prep.thinking)

    def render(delta: Delta, final: bool) -> str | None:
        reasoning, content = splitter.feed(delta.text, final=final)
        if not (reasoning or content or final):
            return None
        message = DeltaMessage(reasoning_content=reasoning or None, content=content or None)
        return _sse(chunk(message, delta.finish_reason))

    def usage_event(usage: Usage) -> str:
        return _sse(ChatCompletionChunk(id=prep.request_id, model=state.model_name, choices=[], usage=usage))

    first = _sse(chunk(DeltaMessage(role="assistant", content="")))
    return _stream(state, prep, request, first, render, usage_event)


def _completion_stream(state: ServerState, prep: Prepared, request: Request) -> AsyncIterator[str]:
    def chunk(text: str, finish: str | None = None, usage: Usage | None = None) -> CompletionResponse:
        choices = [] if usage else [CompletionChoice(text=text, finish_reason=finish)]  # type: ignore[arg-type]
        return CompletionResponse(id=prep.request_id, model=state.model_name, choices=choices, usage=usage)

    def render(delta: Delta, final: bool) -> str | None:
        return _sse(chunk(delta.text, delta.finish_reason)) if delta.text or final else None

    # an empty first chunk sends the 200 header at once (OpenAI's stream starts with text)
    return _stream(state, prep, request, _sse(chunk("")), render, lambda usage: _sse(chunk("", usage=usage)))


# ---------------------------------------------------------------------------------------------
# the app


def _template_thinks(tokenizer: Any) -> bool:
    """Whether the chat template thinks unless told otherwise (ERNIE's thinking models' templates do)."""
    template = getattr(tokenizer, "chat_template", None)
    return isinstance(template, str) and "enable_thinking" in template and "<think>" in template


def create_app(
    engine: EngineClient | Engine,
    model_name: str,
    api_key: str | None = None,
    max_waiting: int = DEFAULT_MAX_WAITING,
    max_request_mb: float = DEFAULT_MAX_REQUEST_MB,
    read_timeout: float = DEFAULT_READ_TIMEOUT_S,
    docs: bool = False,
    quantization: str | None = None,
) -> FastAPI:
    """The FastAPI app over an `EngineClient` (the CPU `Engine` is wrapped in `AsyncEngine`); the
    client starts with the app and shuts down with it.

    Up to `engine.max_batch_size` requests run at once and `max_waiting` more may queue; beyond
    that a request gets 429 at once rather than an unbounded wait. Bodies over `max_request_mb` get
    413, bodies slower than `read_timeout` 408. `docs`: serve /docs and /openapi.json (off: nothing
    a client needs). Sampling defaults come from the checkpoint's generation config. `quantization`
    is what /v1/models says the weights went through.
    """
    with optional_imports("serve", "the embedded CPU server"):
        from fastapi import FastAPI
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
        from starlette.exceptions import HTTPException as StarletteHTTPException

    client = as_engine_client(engine)
    state = ServerState(
        client,
        model_name,
        api_key or None,
        max_waiting,
        max_body_bytes=int(max_request_mb * 2**20),
        read_timeout=read_timeout,
        defaults=sampling_defaults(client.generation_config),
        thinking_default=_template_thinks(client.tokenizer),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await client.start()
        sampling = " ".join(f"{key}={state.defaults[key]:g}" for key in SAMPLING_KEYS)
        source = "OpenAI's defaults"
        if client.generation_config:
            source = "the checkpoint's generation_config.json"
        log.info("serving %s; requests without them get %s (from %s)", model_name, sampling, source)
        yield
        # uvicorn has drained (or, after its graceful timeout, cut) the connections; the client
        # aborts what is still in flight and lets the engine apply that before it stops
        await client.shutdown()
        state.pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="ernie-ops embedded OpenAI-compatible server",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.add_middleware(_RequireKey, api_key=state.api_key)
    app.state.server = state

    def error_response(err: APIError) -> JSONResponse:
        headers = {"Connection": "close"} if err.close else None
        return JSONResponse(err.body(), status_code=err.status, headers=headers)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError) -> JSONResponse:
        return error_response(err)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        return error_response(bad_request(str(err.errors()[:1])))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        type_ = "not_found_error" if err.status_code == 404 else "invalid_request_error"
        return error_response(APIError(err.status_code, str(err.detail), type_))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return error_response(APIError(500, f"internal error: {type(err).__name__}", "server_error"))

    async def completion_endpoint(request: Request, endpoint: str) -> Response:
        status = 200
        try:
            prep = await _prepare(state, request, endpoint)
            if prep.stream:
                stream = _chat_stream if endpoint == "chat" else _completion_stream
                body = stream(state, prep, request)
                first = await _first_chunk(body)  # a 429 / 400 must come before the 200 header
                return StreamingResponse(
                    _prepend(first, body),
                    media_type="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                )
            text, n_tokens, reason = await _collect(state, prep, request)
            usage = Usage.of(len(prep.prompt_ids), n_tokens)
            if endpoint == "chat":
                reasoning, content = split_reasoning(text, prep.thinking)
                message = ResponseMessage(content=content, reasoning_content=reasoning)
                choice = ChatChoice(message=message, finish_reason=reason)  # type: ignore[arg-type]
                result: BaseModel = ChatCompletionResponse(
                    id=prep.request_id, model=model_name, choices=[choice], usage=usage
                )
            else:
                choice_c = CompletionChoice(text=text, finish_reason=reason)  # type: ignore[arg-type]
                result = CompletionResponse(
                    id=prep.request_id, model=model_name, choices=[choice_c], usage=usage
                )
            return JSONResponse(result.model_dump(mode="json"))
        except APIError as err:
            status = err.status
            return error_response(err)
        except Exception:
            status = 500  # answered by `_unexpected`
            raise
        finally:
            state.metrics.request_done(endpoint, status)

    async def chat_completions(request: Request) -> Response:
        return await completion_endpoint(request, "chat")

    async def completions(request: Request) -> Response:
        return await completion_endpoint(request, "completions")

    async def models(request: Request) -> JSONResponse:
        card = ModelCard(id=model_name, max_model_len=client.max_length, quantization=quantization)
        return JSONResponse(ModelList(data=[card]).model_dump(mode="json"))

    async def health(request: Request) -> Response:
        try:
            await client.check_health()
        except EngineUnhealthy as err:
            return error_response(APIError(503, str(err), "server_error"))
        return PlainTextResponse("ok")

    async def metrics(request: Request) -> PlainTextResponse:
        running, waiting = state.load()
        return PlainTextResponse(
            state.metrics.render(running, waiting), media_type=state.metrics.content_type
        )

    # plain Starlette routes: the handlers take the Request positionally (no FastAPI injection,
    # which would need the annotations importable at module level)
    app.add_route("/v1/chat/completions", chat_completions, methods=["POST"])
    app.add_route("/v1/completions", completions, methods=["POST"])
    app.add_route("/v1/models", models, methods=["GET"])
    app.add_route("/health", health, methods=["GET"])
    app.add_route("/metrics", metrics, methods=["GET"])
    return app


async def _first_chunk(body: AsyncIterator[str]) -> str:
    """Run a stream up to its first chunk, so errors raised before any output are still HTTP errors."""
    return await body.__anext__()


async def _prepend(first: str, rest: AsyncIterator[str]) -> AsyncIterator[str]:
    yield first
    async for chunk in rest:
        yield chunk


def _guarded_protocol(read_timeout: float, max_connections: int) -> type[asyncio.Protocol]:
    """uvicorn's HTTP/1.1 protocol with what it lacks against hostile clients.

    uvicorn times out only an idle kept-alive connection, and a byte of data cancels that: a client
    that sends nothing, or a request head a byte at a time, held its connection (and a file
    descriptor) forever. Here a connection must send a whole request head within `read_timeout` of
    opening or of its previous answer (the body has its own deadline in `_read_body`). Past
    `max_connections` open ones, a new connection closes the one idle longest (no request in
    progress: a flood of silent connections cannot lock others out), or, when every one is busy,
    gets a 503 at once.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    busy = APIError(503, "too many open connections; retry later", "server_error", code="server_busy").body()
    refusal = json.dumps(busy).encode()
    refusal = (
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(refusal), refusal)
    )

    # per server, O(1) per connection: a flood must not make each new connection scan the others
    idle: dict[GuardedH11Protocol, None] = {}  # connections without a request, idle longest first
    live = [0]  # connections open and not being closed by us

    class GuardedH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _live = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if live[0] >= max_connections:
                if not idle:
                    log.warning("refused a connection: %d are open, all busy (the limit)", max_connections)
                    transport.write(refusal)
                    transport.close()
                    return
                log.warning("closed the longest idle connection: %d are open (the limit)", max_connections)
                next(iter(idle))._close()
            live[0] += 1
            self._live = True
            self._arm()

        def handle_events(self) -> None:
            super().handle_events()
            if not self._idle():  # a whole request head arrived
                idle.pop(self, None)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def send_400_response(self, msg: str) -> None:
            # a malformed request: its handler may already be answering (401 before the body);
            # it must find the connection gone, not write into a response h11 has closed
            cycle = self.cycle
            if cycle is not None:
                cycle.disconnected = True
                if cycle.response_started:  # too late for a 400
                    self.transport.close()
                    return
            super().send_400_response(msg)

        def connection_lost(self, exc: Exception | None) -> None:
            self._forget()
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

        def _idle(self) -> bool:
            """No request in progress: nothing yet, half a request head, or between requests."""
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            if self._idle():
                idle.pop(self, None)
                idle[self] = None  # idle from now: the end of the line
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline = self.loop.call_later(read_timeout, self._expire)

        def _expire(self) -> None:
            if self._idle():  # no whole request head since
                self._close()

        def _close(self) -> None:
            self._forget()
            self.transport.close()

        def _forget(self) -> None:
            idle.pop(self, None)
            if self._live:
                self._live = False
                live[0] -= 1

    return GuardedH11Protocol


class RepeatFilter(logging.Filter):
    """Lets the first of a run of alike warnings through (same logger, message and exception type)
    and counts the others: a flood of bad connections must not flood the log. The count goes out with
    the next one after `interval` seconds."""

    def __init__(self, interval: float = 60.0):
        super().__init__()
        self.interval = interval
        self._lock = threading.Lock()
        self._runs: dict[tuple[Any, ...], list[float]] = {}  # key -> [first logged at, suppressed]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        kind = record.exc_info[0] if record.exc_info else None
        key = (record.name, record.levelno, str(record.msg), kind)
        now = time.monotonic()
        with self._lock:
            run = self._runs.get(key)
            if run is not None and now - run[0] < self.interval:
                run[1] += 1
                return False
            self._runs[key] = [now, 0]
        if run is not None and run[1]:
            record.msg = f"{record.msg} [{int(run[1])} more like this in the last {now - run[0]:.0f} s]"
        return True


def _log_config() -> dict[str, Any]:
    """uvicorn's logging, with repeated warnings folded; our lines and every library's warnings
    (asyncio's too) through the same handler (Paddle puts one of its own on the root logger)."""
    from uvicorn.config import LOGGING_CONFIG

    config = json.loads(json.dumps(LOGGING_CONFIG))
    config["filters"] = {"repeats": {"()": RepeatFilter}}
    for handler in config["handlers"].values():
        handler["filters"] = ["repeats"]
    config["loggers"]["ernie_ops"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    config["root"] = {"handlers": ["default"], "level": "WARNING"}
    return config


def use_chat_template(engine: Engine, path: Path | str) -> None:
    """Render chats with the operator's Jinja template file instead of the checkpoint's (checked
    on a sample conversation now, so a broken template fails the start, not every request)."""
    from ernie_ops.files import regular_file

    file = regular_file(path, "chat template")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read chat template {file}: {err}") from None
    try:
        engine.tokenizer.init_chat_template(text)
        engine.chat_prompt([{"role": "user", "content": "Hello"}])
    except Exception as err:  # Jinja's errors, whatever the template does wrong
        raise UserError(f"chat template {file} does not render: {type(err).__name__}: {err}") from None


def run(
    model_dir: Path | str,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    served_model_name: str | None = None,
    max_batch_size: int = 8,
    max_waiting: int = DEFAULT_MAX_WAITING,
    max_request_mb: float = DEFAULT_MAX_REQUEST_MB,
    read_timeout: float = DEFAULT_READ_TIMEOUT_S,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    chat_template: Path | str | None = None,
    docs: bool = False,
    quantization: str | None = None,
) -> None:
    """Load the checkpoint, then serve it until interrupted (the port opens only once it is loaded).

    Binds loopback unless told otherwise: the embedded server has no TLS and is meant for one machine.
    """
    with optional_imports("serve", "the embedded CPU server"):  # before the model loads
        import uvicorn

    from ernie_ops.serve.engine import Engine
    from ernie_ops.serve.engine_client import AsyncEngine

    engine = Engine.load(model_dir, max_batch_size=max_batch_size, quantization=quantization)
    if chat_template is not None:
        use_chat_template(engine, chat_template)
    name = served_model_name or Path(model_dir).name
    app = create_app(
        AsyncEngine(engine),
        name,
        api_key=api_key,
        max_waiting=max_waiting,
        max_request_mb=max_request_mb,
        read_timeout=read_timeout,
        docs=docs,
        quantization=quantization,
    )
    config = uvicorn.Config(app, host=host, port=port, **uvicorn_settings(read_timeout, max_connections))
    with contextlib.suppress(KeyboardInterrupt):  # as uvicorn.run: Ctrl-C after a graceful shutdown
        guarded_server(config).run()


# The kernel's queue of connections not yet accepted (it caps this at net.core.somaxconn). uvicorn
# passes one `backlog` to asyncio, which uses it both for listen() and as the number of connections
# accepted per loop turn; the accept batch must stay small (see uvicorn_settings), but with an equally
# small listen queue a flood fills it and a health probe's SYN is dropped: the kernel retries it only
# after a second (measured: /health took 1.04 s under a 3,000-connection flood).
LISTEN_BACKLOG = 4096


def guarded_server(config: Any) -> Any:
    """A uvicorn.Server for `config` whose listening sockets get the deep LISTEN_BACKLOG queue once
    asyncio has started serving them (listen() again only resizes the queue)."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            for server in getattr(self, "servers", []):
                for sock in server.sockets:
                    with sock.dup() as same:  # the same socket, another descriptor
                        same.listen(LISTEN_BACKLOG)

    return Server(config)


def uvicorn_settings(
    read_timeout: float = DEFAULT_READ_TIMEOUT_S, max_connections: int = DEFAULT_MAX_CONNECTIONS
) -> dict[str, Any]:
    """How `run` has uvicorn serve the app (the tests serve it the same way)."""
    return {
        "http": _guarded_protocol(read_timeout, max_connections),
        # asyncio accepts up to `backlog` connections per loop turn: at most half the limit, so a
        # connection that sends its request at once is read before newcomers make it the oldest idle
        "backlog": max(16, max_connections // 2),
        "timeout_graceful_shutdown": 30,  # in-flight streams get this long on Ctrl-C / SIGTERM
        "log_config": _log_config(),
        "log_level": "info",
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m ernie_ops.serve.openai_server`: what `ernie-ops serve --engine paddle` supervises.
    The API key comes from $ERNIE_OPS_API_KEY, never from the command line (it would show in `ps`)."""
    import argparse
    import os

    from ernie_ops.argtypes import positive_float, positive_int

    parser = argparse.ArgumentParser(description="The embedded CPU OpenAI-compatible server.")
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name")
    parser.add_argument("--max-batch-size", type=positive_int, default=8)
    parser.add_argument("--max-waiting", type=int, default=DEFAULT_MAX_WAITING)
    parser.add_argument(
        "--max-request-mb",
        type=positive_float,
        default=DEFAULT_MAX_REQUEST_MB,
        help="larger request bodies get 413 (default: %(default)s)",
    )
    parser.add_argument(
        "--read-timeout",
        type=positive_float,
        default=DEFAULT_READ_TIMEOUT_S,
        help="seconds a client has to send a request's head, and then its body (default: %(default)s)",
    )
    parser.add_argument(
        "--max-connections",
        type=positive_int,
        default=DEFAULT_MAX_CONNECTIONS,
        help="open connections beyond this get 503 at once (default: %(default)s)",
    )
    parser.add_argument(
        "--chat-template", type=Path, help="a Jinja chat template file used instead of the checkpoint's"
    )
    parser.add_argument("--docs", action="store_true", help="serve /docs and /openapi.json (with the key)")
    parser.add_argument(
        "--quantization",
        choices=("wint8", "wint4"),
        help="FastDeploy's weight-only int8 / int4 applied to the linear weights at load, as its GPU "
        "kernel computes them (the quality effect; memory and speed stay float32's)",
    )
    args = parser.parse_args(argv)
    try:
        run(
            args.model,
            host=args.host,
            port=args.port,
            api_key=os.environ.get("ERNIE_OPS_API_KEY") or None,
            served_model_name=args.served_model_name,
            max_batch_size=args.max_batch_size,
            max_waiting=args.max_waiting,
            max_request_mb=args.max_request_mb,
            read_timeout=args.read_timeout,
            max_connections=args.max_connections,
            chat_template=args.chat_template,
            docs=args.docs,
            quantization=args.quantization,
        )
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
