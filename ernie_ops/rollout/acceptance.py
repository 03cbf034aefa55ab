"""The rollout acceptance scenario of issue #19, end to end on CPU (scripts/rollout_e2e.py, tests).

Two embedded servers (the tiny model as stable and as the candidate), a router (the built-in
gateway, or HAProxy), a steady client load from `ernie-ops bench` (open loop, streamed), and the
controller. The candidates:

- `good`: the same model as stable (greedy answers agree): promoted through every stage;
- `errors`: the good candidate behind a fault proxy answering HTTP 500 to every second request;
- `slow`: the good candidate behind a proxy holding each request 1.5 s (beyond the SLO);
- `disagrees`: another tiny model (another seed): its answers differ from stable's.

Each bad one must be rolled back at the first gate it fails. Measured: the client's requests and
failures (bench's own count: none may fail or be lost), how long after the failing figures were
read all-stable took effect (the router's clock), and how many client requests reached the
candidate after the rollback (the gateway's request log: requests routed under all-stable; HAProxy:
the candidate server's request counter) — none may.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ernie_ops import supervise
from ernie_ops.errors import UserError
from ernie_ops.rollout.controller import Controller, GatewayRouter, Router
from ernie_ops.rollout.spec import AgreementGate, Gates, RolloutSpec, Stage
from ernie_ops.validate.client import Endpoint

CASES = ("good", "errors", "slow", "disagrees")
MODEL = "tiny"  # the served name of every model (HAProxy does not rename it as the gateway does)
SLOW_S = 1.5


@dataclass
class Outcome:
    router: str
    case: str
    status: str
    failed_stage: str | None
    reason: str
    client_requests: int
    client_failed: int  # failed, cancelled or never sent
    rollback_s: float | None  # failing figures read -> all-stable in effect, on the router's clock
    candidate_after_rollback: int | None  # client requests the candidate got after the rollback
    seconds: float

    @property
    def expected(self) -> str:
        return "promoted" if self.case == "good" else "rolled_back"

    @property
    def ok(self) -> bool:
        return (
            self.status == self.expected
            and self.client_failed == 0
            and self.client_requests > 0
            and (self.status != "rolled_back" or (self.rollback_s is not None and self.rollback_s < 1.0))
            and not self.candidate_after_rollback
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"ok": self.ok}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, child: supervise.Child, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), urllib.request.urlopen(url + "/health", timeout=2) as r:
            if r.status == 200:
                return
        if child.process.poll() is not None or time.monotonic() > deadline:
            raise UserError(f"the server at {url} did not come up (exit {child.process.poll()})")
        time.sleep(0.1)


@contextlib.contextmanager
def embedded(model_dir: Path, log: Path) -> Iterator[str]:
    """The embedded server (`ernie-ops serve --engine paddle`'s) on MODEL_DIR, in its own process."""
    port = free_port()
    command = [sys.executable, "-m", "ernie_ops.serve.openai_server", "--model", str(model_dir)]
    command += ["--port", str(port), "--served-model-name", MODEL, "--max-batch-size", "8"]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        child = supervise.start(command, stdout=out)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, child)
        yield url
    finally:
        child.stop()


@contextlib.contextmanager
def fault_proxy(upstream: str, fault: str) -> Iterator[str]:
    """UPSTREAM behind a proxy that fails every second request (`errors`) or holds each one
    SLOW_S seconds (`slow`); answers are relayed whole."""
    import aiohttp
    from aiohttp import web

    count = itertools.count(1)
    box: dict[str, Any] = {}

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.method == "GET":
            async with box["session"].get(upstream + request.path) as r:
                return web.Response(body=await r.read(), status=r.status, content_type=r.content_type)
        body = await request.read()
        if fault == "errors" and next(count) % 2 == 0:
            return web.json_response({"error": {"message": "injected failure"}}, status=500)
        if fault == "slow":
            await asyncio.sleep(SLOW_S)
        headers = {"Content-Type": "application/json"}
        async with box["session"].post(upstream + request.path, data=body, headers=headers) as r:
            return web.Response(
                body=await r.read(), status=r.status, headers={"Content-Type": r.content_type}
            )

    loop = asyncio.new_event_loop()
    started = threading.Event()

    async def start() -> None:
        box["session"] = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        box["runner"] = runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        box["port"] = runner.addresses[0][1]
        started.set()

    thread = threading.Thread(
        target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True
    )
    thread.start()
    if not started.wait(30):
        raise RuntimeError("the fault proxy did not start")
    try:
        yield f"http://127.0.0.1:{box['port']}"
    finally:

        async def stop() -> None:
            await box["runner"].cleanup()
            await box["session"].close()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)


@contextlib.contextmanager
def bench_load(url: str, rate: float, duration: float, out: Path) -> Iterator[dict[str, Any]]:
    """`ernie-ops bench URL --request-rate RATE --duration DURATION` running during the block; the
    dict yielded gets its level's figures once it has finished (at the end of the block)."""
    command = [sys.executable, "-m", "ernie_ops", "bench", url, "--request-rate", f"{rate:g}"]
    command += ["--duration", f"{duration:g}", "--input-len", "8", "--output-len", "4", "--warmup", "0"]
    command += ["--out", str(out), "--timeout", "60", "-q"]
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {}
    with open(out / "bench.log", "ab") as log:
        child = supervise.start(command, stdout=log)
    try:
        yield result
        child.process.wait(duration + 120)
    finally:
        child.stop()
    try:
        level = json.loads((out / "bench.json").read_text())["levels"][0]
    except (OSError, ValueError, KeyError, IndexError) as err:
        raise UserError(
            f"ernie-ops bench wrote no figures in {out} ({err})", hint=f"see {out}/bench.log"
        ) from None
    result.update(level)


def spec_for(router: str, case: str, suite: Path | None, **where: Any) -> RolloutSpec:
    """The stages and gates of the scenario: three short stages, SLOs the tiny model meets by far."""
    gates = Gates(max_error_rate=0.05, ttft_p99_s=1.0, e2e_p99_s=1.0, min_agreement=0.9, min_samples=5)
    split = [
        Stage("split", 25, min_duration_s=1.5, min_requests=5),
        Stage("split", 50, min_duration_s=1.5, min_requests=5),
    ]
    if router == "gateway":
        stages = [Stage("shadow", name="shadow", min_duration_s=1.5, min_requests=8), *split]
    else:  # no shadow on HAProxy: the answers are compared on a suite in the first stage
        first = Stage("split", 10, min_duration_s=1.5, min_requests=3)
        if case in ("good", "disagrees") and suite is not None:
            first = replace(first, gates=replace(gates, agreement=AgreementGate(str(suite), max_tokens=8)))
        stages = [first, *split]
    return RolloutSpec(stages=stages, gates=gates, interval_s=0.1, **where)


def _gateway_candidate_after(log_dir: Path) -> tuple[int, int]:
    """(client requests routed under all-stable, of them any sent to the candidate)."""
    after = to_candidate = 0
    for path in sorted(log_dir.glob("requests-*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record.get("kind") == "shadow" or record.get("mode") != "all-stable":
                continue
            after += 1
            to_candidate += any(a.get("backend") == "candidate" for a in record.get("attempts", []))
    return after, to_candidate


def run_case(
    router: str,
    case: str,
    stable: str,
    candidate: str,
    work: Path,
    rate: float,
    duration: float,
    suite: Path | None,
) -> Outcome:
    """One candidate through one router under the bench load."""
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    if router == "gateway":
        outcome, controller, load = _through_gateway(case, stable, candidate, work, rate, duration)
    else:
        outcome, controller, load = _through_haproxy(case, stable, candidate, work, rate, duration, suite)
    from ernie_ops.rollout import report

    report.write(controller.spec, controller.state, work)
    last = controller.state.timeline[-1] if controller.state.timeline else {}
    stage = last.get("stage") if last.get("event") == "rollback" else None
    return Outcome(
        router,
        case,
        controller.state.status,
        controller.spec.stages[stage].label if isinstance(stage, int) else None,
        last.get("reason", ""),
        int(load.get("requests", 0)),
        int(load.get("failed", 0)) + int(load.get("cancelled", 0)) + int(load.get("not_sent", 0)),
        last.get("rollback_s"),
        outcome,
        round(time.monotonic() - started, 1),
    )


def _drive(controller: Controller, duration: float) -> None:
    deadline = time.monotonic() + duration
    controller.run(until=lambda: time.monotonic() > deadline)


def _through_gateway(
    case: str, stable: str, candidate: str, work: Path, rate: float, duration: float
) -> tuple[int | None, Controller, dict[str, Any]]:
    from ernie_ops.rollout.gateway import GatewayConfig, run_in_thread, url_of
    from ernie_ops.rollout.routing import Routing

    key = secrets.token_hex(8)
    config = GatewayConfig(
        stable=Endpoint.parse(stable),
        candidate=Endpoint.parse(candidate),
        routing=Routing("all-stable"),
        state_path=work / "gateway.json",
        log_dir=work / "requests",
        admin_key=key,
    )
    with run_in_thread(config) as gateway:
        url = url_of(gateway)
        spec = spec_for("gateway", case, None, gateway=url)
        controller = Controller(spec, GatewayRouter(url, key), work / "state.json", say=lambda m: None)
        with bench_load(url, rate, duration, work / "bench") as load:
            _drive(controller, duration)
    _, to_candidate = _gateway_candidate_after(work / "requests")
    return to_candidate if controller.state.status == "rolled_back" else None, controller, load


def _through_haproxy(
    case: str, stable: str, candidate: str, work: Path, rate: float, duration: float, suite: Path | None
) -> tuple[int | None, Controller, dict[str, Any]]:
    from ernie_ops.rollout.haproxy import HaproxyRouter, local

    with local(stable, candidate, work, free_port()) as hap:
        spec = spec_for("haproxy", case, suite, haproxy=hap.spec, stable=stable, candidate=candidate)
        router = HaproxyRouter(hap.spec, work / "haproxy-router.json", stable, candidate, hap.log)
        controller = Controller(spec, router, work / "state.json", say=lambda m: None)
        with bench_load(hap.url, rate, duration, work / "bench") as load:
            _drive(controller, duration)
            at_decision = _started(router)
        after = _started(router) - at_decision if controller.state.status == "rolled_back" else None
    return after, controller, load


def _started(router: Router) -> int:
    """The candidate server's requests so far (HAProxy's `stot`)."""
    from ernie_ops.rollout.haproxy import HaproxyRouter

    assert isinstance(router, HaproxyRouter)
    return router.stats()[router.spec.candidate_server]["stot"]


@contextlib.contextmanager
def candidates(
    stable_dir: Path, other_dir: Path, logs: Path, cases: tuple[str, ...]
) -> Iterator[dict[str, str]]:
    """{"stable": URL, case: URL}: the embedded servers and fault proxies the CASES need."""
    with contextlib.ExitStack() as stack:
        stable = stack.enter_context(embedded(stable_dir, logs / "stable.log"))
        urls = {"stable": stable}
        if set(cases) & {"good", "errors", "slow"}:
            good = stack.enter_context(embedded(stable_dir, logs / "candidate.log"))
            urls["good"] = good
            for fault in ("errors", "slow"):
                if fault in cases:
                    urls[fault] = stack.enter_context(fault_proxy(good, fault))
        if "disagrees" in cases:
            urls["disagrees"] = stack.enter_context(embedded(other_dir, logs / "other.log"))
        yield urls
