"""The rollout controller end to end on CPU: stand-in backends, the gateway, steady client load.

A good candidate is promoted through every stage; a candidate that errors, one slower than the SLO
and one whose answers disagree with stable are each rolled back at the first gate they fail; and
throughout, every client request is answered (0 lost, 0 errors). A controller stopped mid-rollout
and started again on its state file continues the same stage."""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from standin_openai import create_standin, serving
from test_gateway import gateway

from ernie_ops.errors import UserError
from ernie_ops.rollout.controller import Controller, ControllerState, GatewayRouter, evaluate
from ernie_ops.rollout.report import markdown
from ernie_ops.rollout.routing import Routing
from ernie_ops.rollout.spec import EvalGate, Gates, RolloutSpec, Stage, load_rollout
from ernie_ops.validate.null_server import Behaviour, fail_every, serve_in_thread

GUARD_S = 60.0


class ClientLoad:
    """Threads sending chat requests back to back (streamed and not) until stopped; every status kept."""

    def __init__(self, url: str, threads: int = 3, model: str | None = None):
        self.url = url
        self.model = {"model": model} if model else {}
        self.statuses: list[int | str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, k: int) -> None:
        with httpx.Client(timeout=GUARD_S) as client:
            i = 0
            while not self._stop.is_set():
                body = {
                    "messages": [{"role": "user", "content": f"q{k}-{i}"}],
                    "max_tokens": 3,
                    "stream": i % 2 == 0,
                    **self.model,
                }
                try:
                    r = client.post(self.url + "/v1/chat/completions", json=body)
                    ok = r.status_code == 200 and (not body["stream"] or r.text.rstrip().endswith("[DONE]"))
                    self.statuses.append(r.status_code if ok else f"{r.status_code}: {r.text[:80]}")
                except httpx.HTTPError as err:
                    self.statuses.append(f"{type(err).__name__}")
                i += 1

    def __enter__(self) -> ClientLoad:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(GUARD_S)


def spec_for(url: str, **gates: float) -> RolloutSpec:
    return RolloutSpec(
        gateway=url,
        interval_s=0.1,
        gates=Gates(
            **(
                dict(max_error_rate=0.05, ttft_p99_s=2.0, e2e_p99_s=5.0, min_agreement=0.9, min_samples=5)
                | gates
            )
        ),
        stages=[
            Stage("shadow", name="shadow", min_duration_s=0.3, min_requests=10),
            Stage("split", 20, min_duration_s=0.3, min_requests=5),
            Stage("split", 50, min_duration_s=0.3, min_requests=5),
        ],
    )


@contextlib.contextmanager
def rig(candidate_url: str, tmp_path: Path, stable_url: str | None = None) -> Iterator[str]:
    """The gateway over CANDIDATE_URL and a stable (STABLE_URL, else a null server)."""
    with contextlib.ExitStack() as stack:
        if stable_url is None:
            stable_url = stack.enter_context(serve_in_thread(model="stable-m")).url
        yield stack.enter_context(gateway(stable_url, candidate_url, tmp_path, routing=Routing("all-stable")))


def roll(
    url: str, tmp_path: Path, spec: RolloutSpec | None = None, **gates: float
) -> tuple[str, Controller, list[int | str]]:
    """SPEC (else spec_for's) run to its end under a steady client load; every client status."""
    controller = Controller(
        spec or spec_for(url, **gates), GatewayRouter(url, "sesame"), tmp_path / "rollout.json", say=print
    )
    with ClientLoad(url) as load:
        guard = time.monotonic() + 2 * GUARD_S  # a rollout that never decides fails, not hangs
        status = controller.run(until=lambda: time.monotonic() > guard)
        wanted = max(len(load.statuses) + 10, 30)  # requests after the decision are answered too
        deadline = time.monotonic() + GUARD_S
        while len(load.statuses) < wanted and time.monotonic() < deadline:
            time.sleep(0.05)
    assert len(load.statuses) >= wanted
    return status, controller, load.statuses


def test_a_good_candidate_is_promoted_through_every_stage_with_no_client_request_lost(tmp_path):
    with serve_in_thread(model="cand-m") as candidate, rig(candidate.url, tmp_path) as url:
        status, controller, statuses = roll(url, tmp_path)
        routing = httpx.get(url + "/admin/state", headers={"Authorization": "Bearer sesame"}).json()[
            "routing"
        ]
    assert status == "promoted"
    assert [s for s in statuses if s != 200] == []
    assert routing["mode"] == "all-candidate"
    events = [(e["event"], e.get("stage")) for e in controller.state.timeline]
    assert events == [
        ("stage", 0),
        ("passed", 0),
        ("stage", 1),
        ("passed", 1),
        ("stage", 2),
        ("passed", 2),
        ("promoted", None),
    ]
    assert controller.state.timeline[1]["figures"]["agreement"] == 1.0
    assert "| passed | shadow |" in markdown(controller.spec, controller.state)
    assert controller.state.timeline[-1]["event"] == "promoted"


@pytest.mark.parametrize("bad", ["errors", "slow", "disagrees"])
def test_a_bad_candidate_is_rolled_back_at_its_first_failed_gate_and_no_client_request_is_lost(bad, tmp_path):
    with contextlib.ExitStack() as stack:
        if bad == "errors":
            candidate = stack.enter_context(serve_in_thread(fail_every(2, Behaviour()), model="cand-m")).url
        elif bad == "slow":
            candidate = stack.enter_context(serve_in_thread(Behaviour(ttft_ms=1500), model="cand-m")).url
        else:
            app = create_standin({}, model="cand-m", default="a different answer")
            candidate = stack.enter_context(serving(app))[0]
        url = stack.enter_context(rig(candidate, tmp_path))
        status, controller, statuses = roll(url, tmp_path, ttft_p99_s=1.0)
        state = httpx.get(url + "/admin/state", headers={"Authorization": "Bearer sesame"}).json()["routing"]
    assert status == "rolled_back"
    assert [s for s in statuses if s != 200] == []
    rollback = controller.state.timeline[-1]
    assert rollback["event"] == "rollback" and rollback["stage"] == 0
    expected = {"errors": "error rate", "slow": "TTFT p99", "disagrees": "agreement with stable"}[bad]
    assert expected in rollback["reason"]
    assert state["mode"] == "all-stable" and state["reason"].startswith("rollback: stage 1 (shadow)")
    assert state["updated"] <= rollback["time"]  # in effect before the controller recorded it
    recorded = ControllerState.load(tmp_path / "rollout.json")
    assert recorded is not None and recorded.status == "rolled_back"


def test_a_controller_restarted_mid_rollout_continues_its_stage(tmp_path):
    with serve_in_thread(model="cand-m") as candidate, rig(candidate.url, tmp_path) as url:
        spec = spec_for(url)
        first = Controller(spec, GatewayRouter(url, "sesame"), tmp_path / "rollout.json", say=print)
        with ClientLoad(url) as load:
            assert first.run(until=lambda: first.state.stage == 1) == "running"
            started = first.state.stage_started
            again = Controller(spec, GatewayRouter(url, "sesame"), tmp_path / "rollout.json", say=print)
            assert again.resumed and again.state.stage == 1 and again.state.stage_started == started
            assert again.run() == "promoted"
        assert [s for s in load.statuses if s != 200] == []
        # someone else changes the split: a controller never overrides it
        httpx.post(
            url + "/admin/state",
            json={"mode": "split", "weight": 10},
            headers={"Authorization": "Bearer sesame"},
        )
        (tmp_path / "rollout.json").write_text(
            (tmp_path / "rollout.json").read_text().replace('"promoted"', '"running"')
        )
        third = Controller(spec, GatewayRouter(url, "sesame"), tmp_path / "rollout.json", say=print)
        with pytest.raises(UserError, match="changed behind the controller"):
            third.run()


def test_gates_wait_for_min_samples_and_stage_minimums():
    stage = Stage("split", 10, min_duration_s=5, min_requests=50)
    gates = Gates(max_error_rate=0.01, min_samples=20)
    few = {"backends": {"candidate/client": {"requests": 10, "error_rate": 0.5}}}
    assert evaluate(stage, gates, few, 10).failed is None  # 10 < min_samples: no verdict yet
    many = {
        "backends": {"candidate/client": {"requests": 60, "error_rate": 0.0, "ttft_p99": 0.1, "e2e_p99": 1}}
    }
    assert not evaluate(stage, gates, many, 1).passed  # too early
    assert evaluate(stage, gates, many, 6).passed
    # fewer requests than min_samples never pass a stage: its gates could not have failed yet
    small = Stage("split", 10, min_duration_s=0, min_requests=3)
    four = {"backends": {"candidate/client": {"requests": 4, "error_rate": 0.0}}}
    assert not evaluate(small, Gates(min_samples=5), four, 1).passed
    assert evaluate(small, Gates(min_samples=4), four, 1).passed
    # a stage with suite gates waits for them, and fails on theirs
    suites = Gates(min_samples=4, eval=EvalGate("s.jsonl", min_score=0.5))
    assert not evaluate(small, suites, four, 1).passed
    assert evaluate(small, suites, four, 1, {"failed": None, "eval_score": 0.9}).passed
    verdict = evaluate(small, suites, four, 1, {"failed": "eval score 0.100 < 0.5", "eval_score": 0.1})
    assert verdict.failed == "eval score 0.100 < 0.5" and verdict.figures["eval_score"] == 0.1


def test_rollout_yaml_is_read_with_file_and_line(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("gateway: http://127.0.0.1:8200\nstages:\n  - {mode: shadow, min_requets: 5}\n")
    with pytest.raises(UserError, match=r"r.yaml:2: error: stages\[0\].min_requets: unknown key") as err:
        load_rollout(path)
    assert "did you mean 'min_requests'" in str(err.value)
    path.write_text(
        "gateway: http://127.0.0.1:8200\nstages:\n  - {mode: split, weight: 5}\ngates: {ttft_p99_s: 2}\n"
    )
    spec = load_rollout(path)
    assert spec.stages[0].weight == 5.0 and spec.gates.ttft_p99_s == 2.0


def test_every_shipped_rollout_reads(repo):
    shipped = sorted((repo / "recipes" / "rollouts").glob("*.yaml"))
    assert shipped
    for path in shipped:
        spec = load_rollout(path)
        assert spec.stages and spec.promote


def test_a_gateway_killed_mid_rollout_restarts_with_the_recorded_split_and_the_controller_continues(tmp_path):
    import os
    import signal
    import sys

    from ernie_ops import supervise
    from ernie_ops.rollout.acceptance import free_port, wait_healthy

    port = free_port()
    env = {**os.environ, "ERNIE_OPS_GATEWAY_ADMIN_KEY": "sesame"}
    state = tmp_path / "gateway-state.json"

    def start(stable: str, candidate: str) -> supervise.Child:
        command = [sys.executable, "-m", "ernie_ops", "gateway", "run", "--stable", stable]
        command += ["--candidate", candidate, "--port", str(port), "--state", str(state), "--no-log"]
        child = supervise.start(command, env=env, stdout=subprocess.DEVNULL)
        wait_healthy(url, child, timeout=60)
        return child

    def routing() -> dict:
        return httpx.get(url + "/admin/state", headers={"Authorization": "Bearer sesame"}).json()

    url = f"http://127.0.0.1:{port}"
    with serve_in_thread(model="stable-m") as stable, serve_in_thread(model="cand-m") as candidate:
        gateway = start(stable.url, candidate.url)
        try:
            controller = Controller(spec_for(url), GatewayRouter(url, "sesame"), tmp_path / "rollout.json")
            with ClientLoad(url):
                assert controller.run(until=lambda: controller.state.stage == 1) == "running"
                before = routing()["routing"]
                assert (before["mode"], before["weight"]) == ("split", 20.0)
                os.kill(gateway.pid, signal.SIGKILL)
                gateway.process.wait(10)
                gateway = start(stable.url, candidate.url)  # the command line says all-stable
                after = routing()
                assert after["restored"] and after["routing"] == before
                assert controller.run() == "promoted"  # the same controller, retrying meanwhile
        finally:
            gateway.stop()
    assert [e["event"] for e in controller.state.timeline].count("stage") == 3
