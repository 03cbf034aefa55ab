"""The gateway: one OpenAI-compatible front for a stable and a candidate endpoint.

    client -> gateway -> stable    (all-stable, shadow, split: 100 - weight %)
                      -> candidate (all-candidate, split: weight %, shadow: a background copy)

Built on aiohttp (server and client, a core dependency): a request's body is read once, the model
name is rewritten to the chosen backend's served name when they differ, and the backend's answer is
passed through as it arrives, each piece written to the client as soon as it is read (no buffering
of a stream). What the answer held (finish reason, tool calls, tokens, the text for a shadow
comparison) is read from a copy of the bytes after the client has its last byte.

- **Retry on stable.** A candidate that fails before its first byte (connect error, timeout, HTTP
  5xx) in split or all-candidate mode is retried on stable and counted; the client sees one answer.
  Once bytes have reached the client nothing can be retried: the stream ends and the error counts.
- **Shadow.** The client is answered by stable; the request is put on a bounded queue for the
  candidate (`shadow_queue`), sent by `shadow_workers` tasks with their own connection pool. A full
  queue drops the copy and counts it: the client never waits for the candidate. Both answers are
  compared (`answers.agree`) and logged; a disagreement goes to the review queue.
- **Review queue.** Shadow disagreements, and answers to a judge suite's prompts that its judge
  scores below the bar (`ernie_ops.rollout.judge`), are written as items for `ernie-ops review`
  (`ernie_ops.rollout.review`) by a thread behind a bounded queue: content masked, off the request
  path, dropped and counted when the writer is behind.
- **Routing state.** `GET/POST /admin/state` (Bearer key from the environment) reads and changes the
  mode and weight; each change is written atomically to the state file before it takes effect, and a
  restarted gateway continues from that file. `GET /admin/stats?since=T` gives exact error rates and
  p50 / p99 latencies per backend since T for the rollout controller's gates.
- `/health`, `/metrics` (Prometheus: `ernie_ops.rollout.metrics`), `/v1/models` (the backend that
  answers un-keyed requests, the other one when it is down).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import logging
import os
import re
import threading
import time
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
from aiohttp import web

from ernie_ops.errors import UserError
from ernie_ops.rollout.answers import Answer, difference, read_stream, read_whole
from ernie_ops.rollout.metrics import GatewayMetrics
from ernie_ops.rollout.requestlog import RequestLog
from ernie_ops.rollout.review import Case, ReviewWriter, Side
from ernie_ops.rollout.routing import CANDIDATE, STABLE, Routing, StateFile, check_mode, check_weight, pick
from ernie_ops.validate.client import Endpoint

if TYPE_CHECKING:
    from ernie_ops.rollout.judge import LiveJudge
    from ernie_ops.validate.suite import SuiteItem

log = logging.getLogger(__name__)

ROUTES = ("/v1/chat/completions", "/v1/completions")
BACKEND_HEADER = "X-Ernie-Ops-Backend"  # which backend answered, on every completion response
SSE = "text/event-stream"
# a candidate failing this many client requests in a row before their first byte rests this long:
# its requests go straight to stable instead of waiting for a dead candidate's timeout each time
BREAKER_FAILURES = 5
BREAKER_REST_S = 5.0
# the first piece of a stream that carries generated output (a role-only opening event does not):
# TTFT is measured to it, as the servers themselves measure time to first token
_TOKEN = re.compile(rb'"(?:content|text|reasoning_content)": ?"[^"]|"tool_calls"')
# a write to a client that left (aiohttp >= 3.10 raises its own subclass; 3.9, ConnectionResetError)
_CLIENT_GONE: tuple[type[BaseException], ...] = (
    ConnectionResetError,
    getattr(aiohttp, "ClientConnectionResetError", ConnectionResetError),
)


@dataclass
class GatewayConfig:
    stable: Endpoint
    candidate: Endpoint | None = None
    routing: Routing = field(default_factory=Routing)  # used when the state file has none
    state_path: Path | None = None
    log_dir: Path | None = None
    log_max_bytes: int = 100 * 2**20
    retention_days: float = 30.0  # the request log's rotated files and the review queue's items
    log_content: bool = False  # prompts and answers in the log, PII-masked
    mask: bool = True  # content in the log and the review queue (off: --no-mask, and they say so)
    review_dir: Path | None = None  # the review queue (None: none)
    review_capacity: int = 256  # cases waiting for the review writer at most
    judge: LiveJudge | None = None  # scores answers to its suite's prompts for the review queue
    admin_key: str | None = None  # the admin API is refused without one
    api_key: str | None = None  # clients must send it when set
    sticky_header: str = "X-Session-Id"
    shadow_queue: int = 256
    shadow_workers: int = 8
    connect_timeout: float = 3.0
    timeout: float = 300.0  # first byte, and between two pieces of an answer
    candidate_timeout: float | None = None  # the candidate's (default: timeout)
    total_timeout: float = 1800.0
    max_connections: int = 1024  # per backend


@dataclass(slots=True)
class Attempt:
    """One request sent to one backend, as the gateway saw it."""

    backend: str
    status: int | None = None  # the backend's HTTP status; None when it gave none
    error: str | None = None  # connect, timeout, http_5xx, upstream_closed, client_gone
    started: bool = False  # bytes reached the client (nothing can be retried after that)
    sent: float = 0.0  # perf_counter when the request went out
    ttft: float | None = None  # seconds from arrival to the first output event (whole answer: to it)
    e2e: float = 0.0
    answer: Answer | None = None
    error_body: bytes = b""  # the backend's error answer, relayed when nothing else can answer
    content_type: str = "application/json"

    @property
    def before_first_byte(self) -> bool:
        return self.error is not None and not self.started

    def log_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"backend": self.backend, "status": self.status}
        if self.error:
            entry["error"] = self.error
        if self.ttft is not None:
            entry["ttft_ms"] = round(self.ttft * 1000, 3)
        entry["e2e_ms"] = round(self.e2e * 1000, 3)
        if self.answer is not None:
            entry.update(self.answer.summary())
        return entry


@dataclass(slots=True)
class Exchange:
    """One client request as the gateway relays it: the same whichever backend answers it."""

    request: web.Request
    response: web.StreamResponse
    route: str
    body: dict[str, Any]
    raw: bytes
    arrival: float  # perf_counter when the request arrived
    want_text: bool  # keep the answer's text (a shadow comparison, a content log)


@dataclass(slots=True)
class ShadowJob:
    rid: str
    route: str
    body: dict[str, Any]
    raw: bytes
    stable: asyncio.Future[Answer | None]
    item: SuiteItem | None = None  # the judge suite's item the request is, if any


class Backend:
    """A backend endpoint with its own connection pool and served model name."""

    def __init__(self, role: str, endpoint: Endpoint, config: GatewayConfig, timeout: float):
        self.role = role
        self.endpoint = endpoint
        self.model = endpoint.model  # the served name, discovered from /v1/models when not given
        self.base = endpoint.base
        self.headers = endpoint.headers()
        self._timeout = aiohttp.ClientTimeout(
            total=config.total_timeout, sock_connect=config.connect_timeout, sock_read=timeout
        )
        self._limit = config.max_connections
        self.session: aiohttp.ClientSession | None = None
        self.failures = 0  # consecutive failures before the first byte
        self.resting_until = 0.0  # monotonic: client requests skip this backend until then

    def resting(self, now: float) -> bool:
        return now < self.resting_until

    def outcome(self, failed: bool, now: float) -> None:
        """Count consecutive failures; after BREAKER_FAILURES the backend rests BREAKER_REST_S."""
        if not failed:
            self.failures = 0
            return
        self.failures += 1
        if self.failures >= BREAKER_FAILURES:
            self.resting_until = now + BREAKER_REST_S
            self.failures = 0

    def open(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._limit, limit_per_host=0, keepalive_timeout=3.0, enable_cleanup_closed=True
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("Accept-Encoding", "User-Agent"),
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def discover(self) -> str | None:
        """The first model the backend lists (None when it cannot be reached)."""
        assert self.session is not None
        try:
            async with self.session.get(
                self.base + "/models", headers=self.headers, timeout=aiohttp.ClientTimeout(total=5)
            ) as r:
                data = await r.json(content_type=None) if r.status == 200 else None
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return None
        models = data.get("data") if isinstance(data, dict) else None
        if models and isinstance(models[0], dict) and isinstance(models[0].get("id"), str):
            self.model = models[0]["id"]
        return self.model


class Gateway:
    def __init__(self, config: GatewayConfig):
        self.config = config
        self.metrics = GatewayMetrics()
        self.state = StateFile(config.state_path) if config.state_path else None
        recorded = self.state.load() if self.state else None
        self.routing = recorded or config.routing
        self.restored = recorded is not None
        if self.routing.mode != "all-stable" and config.candidate is None:
            raise UserError(
                f"gateway mode {self.routing.mode} needs a candidate endpoint", hint="give --candidate URL"
            )
        if self.state and not recorded:
            self.state.save(self.routing)  # from now on the file is the truth
        self.metrics.routing(self.routing.mode, self.routing.weight)
        self.stable = Backend(STABLE, config.stable, config, config.timeout)
        self.candidate = (
            Backend(CANDIDATE, config.candidate, config, config.candidate_timeout or config.timeout)
            if config.candidate
            else None
        )
        self.log = (
            RequestLog(
                config.log_dir, config.log_max_bytes, config.retention_days, config.log_content, config.mask
            )
            if config.log_dir
            else None
        )
        self.shadow: asyncio.Queue[ShadowJob] | None = None
        self.review: ReviewWriter | None = None
        if config.judge is not None and config.review_dir is None:
            raise UserError("a judge suite needs a review queue to put flagged answers in")
        self._ids = itertools.count(1)
        self._prefix = f"{int(time.time()):x}-"
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- lifecycle -----------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 2**20)
        for route in ROUTES:
            app.router.add_post(route, self.complete)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.render_metrics)
        app.router.add_get("/admin/state", self.get_state)
        app.router.add_post("/admin/state", self.set_state)
        app.router.add_get("/admin/stats", self.stats)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        for backend in self.backends():
            backend.open()
        await asyncio.gather(*(b.discover() for b in self.backends() if b.model is None))
        self.shadow = asyncio.Queue(maxsize=self.config.shadow_queue)
        if self.config.review_dir is not None and self.review is None:
            self.review = ReviewWriter(
                self.config.review_dir,
                self.metrics.registry,
                self.config.mask,
                self.config.judge,
                self.config.review_capacity,
                self.config.retention_days * 86400,
            )
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._shadow_worker()) for _ in range(self.config.shadow_workers)]
        self._tasks.append(loop.create_task(self._housekeeping()))
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=30.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, backlog=4096, reuse_address=True)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port

    async def stop(self) -> None:
        """Stop accepting, let the requests in flight finish, flush the log."""
        if self._runner is not None:
            await self._runner.cleanup()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for backend in self.backends():
            await backend.close()
        if self.log is not None:
            self.log.close()
        if self.review is not None:
            await asyncio.to_thread(self.review.close)

    def backends(self) -> list[Backend]:
        return [self.stable] + ([self.candidate] if self.candidate else [])

    async def _housekeeping(self) -> None:
        """Every second: the request log is flushed; a backend whose model name is unknown is asked."""
        while True:
            await asyncio.sleep(1.0)
            if self.log is not None:
                try:
                    self.log.flush()
                except OSError as err:
                    log.warning("request log: %s", err)
            for backend in self.backends():
                if backend.model is None:
                    await backend.discover()

    # -- the OpenAI routes ---------------------------------------------------------------------

    def _authorized(self, request: web.Request, key: str | None) -> bool:
        if key is None:
            return True
        given = request.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {key}".encode())

    async def complete(self, request: web.Request) -> web.StreamResponse:
        arrival = time.perf_counter()
        if not self._authorized(request, self.config.api_key):
            return _error(401, "missing or wrong API key", "authentication_error")
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            return _error(400, "the body is not a JSON object", "invalid_request_error")
        route = request.path
        routing = self.routing
        key = request.headers.get(self.config.sticky_header)
        if key is None and isinstance(body.get("user"), str) and body["user"]:
            key = body["user"]
        target = pick(routing, key)
        rid = self._prefix + str(next(self._ids))
        item = self.config.judge.match(route, body) if self.config.judge is not None else None
        job = None
        if routing.mode == "shadow" and self.candidate is not None:
            job = self._queue_shadow(rid, route, body, raw, item)
        want_text = job is not None or item is not None or (self.log is not None and self.log.content)
        backend = self.candidate if target == CANDIDATE and self.candidate else self.stable
        if backend is self.candidate and backend.resting(arrival):
            self.metrics.rested.inc()
            # a failure of the candidate's for the gates: a dead candidate must not look idle
            self.metrics.of(CANDIDATE, "client").outcomes.add(time.time(), False, None, 0.0)
            backend = self.stable
        response = web.StreamResponse()
        exchange = Exchange(request, response, route, body, raw, arrival, want_text)
        attempts: list[Attempt] = []
        try:
            attempts.append(await self._forward(exchange, backend))
            if backend is self.candidate:
                backend.outcome(attempts[-1].before_first_byte, time.perf_counter())
            if attempts[-1].before_first_byte and backend is self.candidate:
                self.metrics.retries.inc()
                self.metrics.retried += 1
                attempts.append(await self._forward(exchange, self.stable))
        finally:
            last = attempts[-1] if attempts else None
            if job is not None and not job.stable.done():
                ok = last is not None and last.error is None
                job.stable.set_result(last.answer if ok and last is not None else None)
        assert last is not None
        if last.before_first_byte:
            response = _relay_failure(last)
        if self.log is not None:
            self._log_request(rid, route, routing, key, body, attempts)
        if item is not None and _answered(last):
            self._judge(rid, route, body, item, last)
        return response

    def _judge(self, rid: str, route: str, body: dict[str, Any], item: SuiteItem, attempt: Attempt) -> None:
        """Hand an answer to a judge suite's prompt to the review writer, which scores it."""
        assert self.review is not None and attempt.answer is not None
        side = self._side(attempt.backend, attempt.answer)
        self.review.submit(Case(rid, route, body, [side], "judge", judged=side, item=item))

    def _side(self, role: str, answer: Answer) -> Side:
        backend = self.candidate if role == CANDIDATE and self.candidate else self.stable
        return Side(role, backend.base, answer, backend.model)

    async def _forward(self, exchange: Exchange, backend: Backend) -> Attempt:
        """Send the request to BACKEND and pass its answer to the client as it arrives. A failure
        before the first byte is returned for the caller to retry or relay, not answered here."""
        series = self.metrics.of(backend.role, "client")
        attempt = Attempt(backend.role)
        series.in_flight.inc()
        try:
            await self._send(exchange, backend, attempt)
        finally:
            series.in_flight.dec()
            attempt.e2e = time.perf_counter() - exchange.arrival
            self._account(series, exchange.route, attempt)
        return attempt

    async def _send(self, exchange: Exchange, backend: Backend, attempt: Attempt) -> None:
        assert backend.session is not None
        request, response = exchange.request, exchange.response
        payload = _payload(exchange.body, exchange.raw, backend.model)
        attempt.sent = time.perf_counter()
        try:
            upstream = await backend.session.post(
                backend.base + exchange.route[3:], data=payload, headers=backend.headers
            )
        except asyncio.TimeoutError:
            attempt.error = "timeout"
            return
        except (aiohttp.ClientError, OSError):
            attempt.error = "connect"
            return
        try:
            attempt.status = upstream.status
            ctype = upstream.headers.get("Content-Type", "application/json")
            attempt.content_type = ctype
            if upstream.status >= 500:
                attempt.error = "http_5xx"
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    attempt.error_body = await upstream.read()
                return
            if not ctype.startswith(SSE):
                data = await _read(upstream.read(), attempt)
                if data is None:
                    return
                attempt.ttft = time.perf_counter() - exchange.arrival
                response.set_status(upstream.status)
                response.headers["Content-Type"] = ctype
                response.headers[BACKEND_HEADER] = backend.role
                response.content_length = len(data)
                attempt.started = True
                try:
                    await response.prepare(request)
                    await response.write(data)
                    await response.write_eof()
                except _CLIENT_GONE:
                    attempt.error = "client_gone"
                attempt.answer = read_whole(data, exchange.want_text) if upstream.status == 200 else None
                return
            await self._stream(exchange, backend, upstream, attempt)
        finally:
            upstream.release()

    async def _stream(
        self, exchange: Exchange, backend: Backend, upstream: aiohttp.ClientResponse, attempt: Attempt
    ) -> None:
        request, response, arrival = exchange.request, exchange.response, exchange.arrival
        content = upstream.content
        first = await _read(content.readany(), attempt)
        if first is None:
            return
        if not first:  # the backend closed an event stream before any event: nothing was answered
            attempt.error = "upstream_closed"
            return
        if _TOKEN.search(first):
            attempt.ttft = time.perf_counter() - arrival
        response.set_status(upstream.status)
        response.headers["Content-Type"] = attempt.content_type
        response.headers["Cache-Control"] = "no-cache"
        response.headers[BACKEND_HEADER] = backend.role
        attempt.started = True
        pieces = [first]
        try:
            await response.prepare(request)
            await response.write(first)
            while True:
                data = await _read(content.readany(), attempt)
                if not data:  # the end, or a failure (recorded)
                    break
                if attempt.ttft is None and _TOKEN.search(data):
                    attempt.ttft = time.perf_counter() - arrival
                pieces.append(data)
                await response.write(data)
            await response.write_eof()
        except _CLIENT_GONE:
            attempt.error = "client_gone"
            upstream.close()  # the backend stops generating for nobody
        attempt.answer = read_stream(b"".join(pieces), exchange.want_text)

    def _account(self, series: Any, route: str, attempt: Attempt) -> None:
        status = str(attempt.status) if attempt.status is not None else "error"
        series.status(route, status)
        if attempt.error == "client_gone":
            self.metrics.disconnects.inc()
        elif attempt.error:
            series.error(attempt.error)
        ok = attempt.error is None and attempt.status is not None and attempt.status < 500
        if ok:
            if attempt.ttft is not None:
                series.ttft.observe(attempt.ttft)
            series.e2e.observe(attempt.e2e)
        answer = attempt.answer
        if answer is not None:
            if answer.prompt_tokens:
                series.prompt.inc(answer.prompt_tokens)
            if answer.completion_tokens:
                series.generated.inc(answer.completion_tokens)
        if attempt.error != "client_gone":
            series.outcomes.add(time.time(), ok, attempt.ttft, attempt.e2e)

    def _log_request(
        self,
        rid: str,
        route: str,
        routing: Routing,
        key: str | None,
        body: dict[str, Any],
        attempts: list[Attempt],
    ) -> None:
        assert self.log is not None
        last = attempts[-1]
        record: dict[str, Any] = {
            "time": round(time.time(), 3),
            "id": rid,
            "route": route,
            "mode": routing.mode,
            "weight": routing.weight,
            "stream": bool(body.get("stream")),
            "sticky": key is not None,
            "answered_by": last.backend if not last.before_first_byte else None,
            "status": last.status if not last.before_first_byte else _failure_status(last),
            "retried": len(attempts) > 1,
            "attempts": [a.log_entry() for a in attempts],
        }
        if self.log.content:
            record["request"] = body.get("messages") if "messages" in body else body.get("prompt")
            record["answer"] = last.answer.text if last.answer else None
        self.log.add(record)

    # -- shadow --------------------------------------------------------------------------------

    def _queue_shadow(
        self, rid: str, route: str, body: dict[str, Any], raw: bytes, item: SuiteItem | None
    ) -> ShadowJob | None:
        assert self.shadow is not None
        job = ShadowJob(rid, route, body, raw, asyncio.get_running_loop().create_future(), item)
        try:
            self.shadow.put_nowait(job)
        except asyncio.QueueFull:
            self.metrics.shadow_dropped.inc()
            self.metrics.dropped += 1
            return None
        return job

    async def _shadow_worker(self) -> None:
        assert self.shadow is not None
        while True:
            job = await self.shadow.get()
            try:
                await self._run_shadow(job)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("shadow request %s", job.rid)

    async def _run_shadow(self, job: ShadowJob) -> None:
        backend = self.candidate
        assert backend is not None and backend.session is not None
        series = self.metrics.of(CANDIDATE, "shadow")
        attempt = Attempt(CANDIDATE)
        sent = attempt.sent = time.perf_counter()
        stream = bool(job.body.get("stream"))
        series.in_flight.inc()
        try:
            async with backend.session.post(
                backend.base + job.route[3:],
                data=_payload(job.body, job.raw, backend.model),
                headers=backend.headers,
            ) as upstream:
                attempt.status = upstream.status
                if upstream.status >= 500:
                    attempt.error = "http_5xx"
                    await upstream.read()
                elif stream and upstream.headers.get("Content-Type", "").startswith(SSE):
                    pieces = []
                    async for data in upstream.content.iter_any():
                        if attempt.ttft is None and _TOKEN.search(data):
                            attempt.ttft = time.perf_counter() - sent
                        pieces.append(data)
                    attempt.answer = read_stream(b"".join(pieces), True)
                else:
                    data = await upstream.read()
                    attempt.ttft = time.perf_counter() - sent
                    attempt.answer = read_whole(data, True) if upstream.status == 200 else None
        except asyncio.TimeoutError:
            attempt.error = "timeout"
        except (aiohttp.ClientError, OSError):
            attempt.error = "connect" if attempt.status is None else "upstream_closed"
        finally:
            series.in_flight.dec()
            attempt.e2e = time.perf_counter() - sent
            self._account(series, job.route, attempt)
        try:
            stable = await asyncio.wait_for(asyncio.shield(job.stable), self.config.total_timeout)
        except asyncio.TimeoutError:
            stable = None
        why = None
        if stable is None or not _answered(attempt):
            result = "error"
        else:
            assert attempt.answer is not None
            why = difference(stable, attempt.answer)
            result = "agree" if why is None else "disagree"
        self.metrics.compared_as(result)
        if self.review is not None and attempt.answer is not None and _answered(attempt):
            if why is not None and stable is not None:
                sides = [self._side(STABLE, stable), self._side(CANDIDATE, attempt.answer)]
                self.review.submit(Case(job.rid, job.route, job.body, sides, "shadow-disagreement", why))
            if job.item is not None:
                self._judge(job.rid, job.route, job.body, job.item, attempt)
        if self.log is not None:
            record: dict[str, Any] = {
                "time": round(time.time(), 3),
                "id": job.rid,
                "kind": "shadow",
                "route": job.route,
                "candidate": attempt.log_entry(),
                "agreement": result,
            }
            if self.log.content:
                record["answer"] = attempt.answer.text if attempt.answer else None
            self.log.add(record)

    # -- the other routes ----------------------------------------------------------------------

    async def models(self, request: web.Request) -> web.Response:
        if not self._authorized(request, self.config.api_key):
            return _error(401, "missing or wrong API key", "authentication_error")
        first = self.candidate if self.routing.mode == "all-candidate" and self.candidate else self.stable
        for backend in [first] + [b for b in self.backends() if b is not first]:
            assert backend.session is not None
            try:
                async with backend.session.get(
                    backend.base + "/models", headers=backend.headers, timeout=aiohttp.ClientTimeout(total=10)
                ) as r:
                    if r.status == 200:
                        return web.Response(body=await r.read(), content_type="application/json")
            except (aiohttp.ClientError, asyncio.TimeoutError):
                continue
        return _error(502, "no backend answered /v1/models", "server_error")

    async def health(self, request: web.Request) -> web.Response:
        r = self.routing
        body = {"status": "ok", "mode": r.mode, "weight": r.weight, "revision": r.revision}
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def render_metrics(self, request: web.Request) -> web.Response:
        depth = self.shadow.qsize() if self.shadow is not None else 0
        from prometheus_client import CONTENT_TYPE_LATEST

        return web.Response(body=self.metrics.render(depth), headers={"Content-Type": CONTENT_TYPE_LATEST})

    # -- admin ---------------------------------------------------------------------------------

    def _admin_refusal(self, request: web.Request) -> web.Response | None:
        if self.config.admin_key is None:
            return _error(
                403,
                "the admin API is off: start the gateway with its admin key in the environment",
                "permission_error",
            )
        if not self._authorized(request, self.config.admin_key):
            return _error(401, "missing or wrong admin key", "authentication_error")
        return None

    def state_json(self) -> dict[str, Any]:
        return {
            "routing": self.routing.to_json(),
            "restored": self.restored,
            "backends": {b.role: {"url": b.base, "model": b.model} for b in self.backends()},
            "shadow_queue": self.shadow.qsize() if self.shadow is not None else 0,
        }

    async def get_state(self, request: web.Request) -> web.Response:
        refusal = self._admin_refusal(request)
        if refusal is not None:
            return refusal
        return web.Response(body=orjson.dumps(self.state_json()), content_type="application/json")

    async def set_state(self, request: web.Request) -> web.Response:
        """`{"mode": ..., "weight": ..., "reason": ..., "revision": N}`: the change takes effect once
        written to the state file; with `revision`, only if that is still the current one (409)."""
        refusal = self._admin_refusal(request)
        if refusal is not None:
            return refusal
        try:
            change = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            change = None
        if not isinstance(change, dict) or not set(change) <= {"mode", "weight", "reason", "revision"}:
            return _error(
                400, "expected a JSON object with mode, weight, reason, revision", "invalid_request_error"
            )
        try:
            routing = self.apply(
                change.get("mode"),
                change.get("weight"),
                str(change.get("reason") or ""),
                change.get("revision"),
            )
        except UserError as err:
            status = 409 if "revision" in str(err) else 400
            return _error(status, str(err), "invalid_request_error")
        return web.Response(
            body=orjson.dumps({"routing": routing.to_json()}), content_type="application/json"
        )

    def apply(
        self, mode: str | None, weight: float | None, reason: str = "", revision: int | None = None
    ) -> Routing:
        """Change the routing: written to the state file first, then in effect (for every request
        that arrives after this returns)."""
        if revision is not None and revision != self.routing.revision:
            raise UserError(f"revision {revision} is not the current one ({self.routing.revision})")
        if mode is not None:
            check_mode(mode)
        if weight is not None:
            check_weight(weight)
        new = self.routing.changed(mode, weight, reason)
        if new.mode != "all-stable" and self.candidate is None:
            raise UserError(f"mode {new.mode} needs a candidate endpoint")
        if self.state is not None:
            self.state.save(new)
        self.routing = new
        self.metrics.routing(new.mode, new.weight)
        log.info(
            "routing r%d: %s weight %s (%s)", new.revision, new.mode, new.weight, reason or "no reason given"
        )
        return new

    async def stats(self, request: web.Request) -> web.Response:
        refusal = self._admin_refusal(request)
        if refusal is not None:
            return refusal
        try:
            since = float(request.query.get("since", "0"))
        except ValueError:
            return _error(400, "since: seconds since the epoch", "invalid_request_error")
        figures = self.metrics.figures(since)
        figures["routing"] = self.routing.to_json()
        figures["shadow_dropped"] = self.metrics.dropped
        figures["retries"] = self.metrics.retried
        return web.Response(body=orjson.dumps(figures), content_type="application/json")


def _answered(attempt: Attempt) -> bool:
    """The backend gave a whole answer (no failure, an HTTP success, what it said was read)."""
    return attempt.answer is not None and attempt.error is None and (attempt.status or 0) < 400


async def _read(read: Awaitable[bytes], attempt: Attempt) -> bytes | None:
    """Await a read from the backend; None when it failed (timeout, or the backend's connection
    broke), the failure recorded in ATTEMPT."""
    try:
        return await read
    except asyncio.TimeoutError:
        attempt.error = "timeout"
    except aiohttp.ClientError:
        attempt.error = "upstream_closed"
    return None


def _payload(body: dict[str, Any], raw: bytes, model: str | None) -> bytes:
    """The body for a backend: the client's bytes, or with the backend's served model name."""
    if model is None or body.get("model") == model:
        return raw
    return orjson.dumps({**body, "model": model})


def _failure_status(attempt: Attempt) -> int:
    if attempt.error == "http_5xx" and attempt.status:
        return attempt.status
    return 504 if attempt.error == "timeout" else 502


def _relay_failure(attempt: Attempt) -> web.Response:
    """What the client gets when no backend answered: the backend's own 5xx answer, else 502/504."""
    if attempt.error == "http_5xx" and attempt.status:
        body = attempt.error_body or orjson.dumps(
            {"error": {"message": "backend error", "code": attempt.status}}
        )
        response = web.Response(
            status=attempt.status, body=body, headers={"Content-Type": attempt.content_type}
        )
    else:
        what = "did not answer in time" if attempt.error == "timeout" else "could not be reached"
        response = _error(_failure_status(attempt), f"the {attempt.backend} backend {what}", "server_error")
    response.headers[BACKEND_HEADER] = attempt.backend
    return response


def _error(status: int, message: str, kind: str) -> web.Response:
    body = orjson.dumps({"error": {"message": message, "type": kind, "code": status}})
    return web.Response(status=status, body=body, content_type="application/json")


@contextlib.contextmanager
def run_in_thread(config: GatewayConfig, host: str = "127.0.0.1") -> Iterator[Gateway]:
    """A gateway on a free loopback port in a daemon thread with its own event loop (tests)."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    failure: list[BaseException] = []
    gateway = Gateway(config)

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(gateway.start(host, 0))
        except BaseException as err:
            failure.append(err)
            ready.set()
            return
        ready.set()
        loop.run_forever()
        loop.run_until_complete(gateway.stop())
        loop.close()

    thread = threading.Thread(target=run, name="gateway", daemon=True)
    thread.start()
    if not ready.wait(30):
        raise RuntimeError("the gateway did not start")
    if failure:
        raise failure[0]
    try:
        yield gateway
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(60)


def url_of(gateway: Gateway, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{gateway.port}"


def admin_key_from(env: str) -> str | None:
    value = os.environ.get(env)
    return value or None
