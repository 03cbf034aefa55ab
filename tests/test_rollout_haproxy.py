"""The rollout controller driving a real HAProxy through its runtime API, with stand-in backends.

HAProxy is installed when absent (`apt-get install -y haproxy`, as root); the tests are skipped
with the reason only when that fails. A good candidate is promoted through every split stage; one
that errors, one slower than the E2E SLO and one whose answers disagree with stable's are rolled
back at their first gate; every client request through HAProxy is answered (its retries on stable
cover the candidate's failures). A controller killed mid-rollout continues its stage; weights
changed by hand stop it."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from polling import free_port
from test_gateway_rollout import ClientLoad
from test_rollout_suites import models, suite_file

from ernie_ops.errors import UserError
from ernie_ops.rollout.controller import Controller
from ernie_ops.rollout.haproxy import HaproxyRouter, LogReceiver, RuntimeAPI, local
from ernie_ops.rollout.spec import AgreementGate, Gates, HaproxySpec, RolloutSpec, Stage
from ernie_ops.validate.null_server import Behaviour, fail_every, serve_in_thread


@pytest.fixture(scope="module")
def haproxy() -> str:
    exe = shutil.which("haproxy")
    why = "not root"
    if exe is None and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for update in (False, True):  # stale package lists: update them once and try again
            if update:
                subprocess.run(["apt-get", "update"], capture_output=True, timeout=600, env=env)
            install = ["apt-get", "install", "-y", "haproxy"]
            done = subprocess.run(install, capture_output=True, text=True, timeout=600, env=env)
            exe = shutil.which("haproxy")
            why = (done.stderr.strip().splitlines() or ["no output"])[-1]
            if exe is not None:
                break
    if exe is None:
        pytest.skip(f"haproxy is not installed and `apt-get install -y haproxy` did not install it ({why})")
    return exe


@dataclass
class Rig:
    url: str
    spec: HaproxySpec
    log: LogReceiver
    api: RuntimeAPI
    state_dir: Path

    def router(self, stable: str | None = None, candidate: str | None = None) -> HaproxyRouter:
        return HaproxyRouter(self.spec, self.state_dir / "haproxy-router.json", stable, candidate, self.log)

    def weights(self) -> tuple[int, int]:
        got = [int(self.api(f"get weight llm/{s}").split()[0]) for s in ("stable", "candidate")]
        return got[0], got[1]


@contextlib.contextmanager
def haproxy_rig(stable_url: str, candidate_url: str, tmp_path: Path) -> Iterator[Rig]:
    with local(stable_url, candidate_url, tmp_path, free_port()) as hap:
        yield Rig(hap.url, hap.spec, hap.log, RuntimeAPI(hap.spec.socket), tmp_path)


def spec_for(rig: Rig, **gates: object) -> RolloutSpec:
    defaults: dict[str, object] = dict(max_error_rate=0.05, e2e_p99_s=1.0, min_samples=5)
    return RolloutSpec(
        haproxy=rig.spec,
        interval_s=0.1,
        gates=Gates(**(defaults | gates)),  # type: ignore[arg-type]
        stages=[
            Stage("split", 20, min_duration_s=0.3, min_requests=5),
            Stage("split", 50, min_duration_s=0.3, min_requests=5),
        ],
    )


def roll(
    rig: Rig, spec: RolloutSpec, router: HaproxyRouter
) -> tuple[str, Controller, list[int | str], tuple[int, int]]:
    """The rollout to its end under a steady load: its status, the client statuses, and the
    candidate's request count at the decision and once 20 more client requests were answered."""
    controller = Controller(spec, router, rig.state_dir / "rollout.json", say=print)
    with ClientLoad(rig.url, model="m") as load:  # no gateway renames the model behind HAProxy
        guard = time.monotonic() + 120
        status = controller.run(until=lambda: time.monotonic() > guard)
        stot = _candidate_total(rig)
        wanted = len(load.statuses) + 20  # requests after the decision are answered too
        deadline = time.monotonic() + 60
        while len(load.statuses) < wanted and time.monotonic() < deadline:
            time.sleep(0.05)
        after = _candidate_total(rig)
    return status, controller, load.statuses, (stot, after)


def _candidate_total(rig: Rig) -> int:
    text = rig.api("show stat")
    header = text.splitlines()[0][2:].split(",")
    for line in text.splitlines()[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        if row.get("pxname") == "llm" and row.get("svname") == "candidate":
            return int(row["stot"])
    raise AssertionError(text)


def test_a_good_candidate_is_promoted_through_haproxy(haproxy, tmp_path):
    with (
        serve_in_thread(model="m") as stable,
        serve_in_thread(model="m") as cand,
        haproxy_rig(stable.url, cand.url, tmp_path) as rig,
    ):
        assert rig.weights() == (256, 0)
        status, controller, statuses, _ = roll(rig, spec_for(rig), rig.router())
        assert rig.weights() == (0, 256)
    assert status == "promoted"
    assert [s for s in statuses if s != 200] == []
    passed = [e["figures"] for e in controller.state.timeline if e["event"] == "passed"]
    assert len(passed) == 2 and all(f["e2e_p99_s"] is not None and f["error_rate"] == 0 for f in passed)


@pytest.mark.parametrize("bad", ["errors", "slow", "disagrees"])
def test_a_bad_candidate_behind_haproxy_is_rolled_back_at_its_first_gate(bad, haproxy, tmp_path):
    with contextlib.ExitStack() as stack:
        urls: tuple[str | None, str | None] = (None, None)
        gates: dict[str, object] = {}
        if bad == "disagrees":
            stable, cand = stack.enter_context(models(lambda a: "something else", ("m", "m")))
            urls = (stable, cand)
            gates = dict(min_agreement=0.9, agreement=AgreementGate(str(suite_file(tmp_path))))
        else:
            stable = stack.enter_context(serve_in_thread(model="m")).url
            behaviour = fail_every(2, Behaviour()) if bad == "errors" else Behaviour(ttft_ms=1500)
            cand = stack.enter_context(serve_in_thread(behaviour, model="m")).url
        rig = stack.enter_context(haproxy_rig(stable, cand, tmp_path))
        spec = replace(spec_for(rig, **gates), stable=urls[0], candidate=urls[1])
        if bad == "slow":  # half the answers (the streamed ones) take 1.5 s: a stage sees them end
            spec = replace(spec, stages=[replace(s, min_duration_s=2.0) for s in spec.stages])
        status, controller, statuses, (before, after) = roll(rig, spec, rig.router(*urls))
        weights = rig.weights()
    assert status == "rolled_back"
    assert [s for s in statuses if s != 200] == []
    rollback = controller.state.timeline[-1]
    assert rollback["event"] == "rollback" and rollback["stage"] == 0
    expected = {"errors": "error rate", "slow": "E2E p99", "disagrees": "judged agreement"}[bad]
    assert expected in rollback["reason"]
    assert weights == (256, 0)
    # in effect: the candidate got no request after the rollback, under the same load
    assert after == before
    assert 0 <= rollback["rollback_s"] < 1.0


def test_a_controller_restarted_mid_rollout_continues_and_a_weight_changed_by_hand_stops_it(
    haproxy, tmp_path
):
    with (
        serve_in_thread(model="m") as stable,
        serve_in_thread(model="m") as cand,
        haproxy_rig(stable.url, cand.url, tmp_path) as rig,
    ):
        spec = spec_for(rig)
        state = tmp_path / "rollout.json"
        with ClientLoad(rig.url, model="m") as load:
            first = Controller(spec, rig.router(), state, say=print)
            assert first.run(until=lambda: first.state.stage == 1) == "running"
            assert rig.weights() == (128, 128)
            again = Controller(spec, rig.router(), state, say=print)  # a new process's view
            assert again.resumed and again.state.stage == 1
            assert again.state.stage_started == first.state.stage_started
            assert again.run() == "promoted"
        assert [s for s in load.statuses if s != 200] == []
        rig.api("set weight llm/stable 200")  # an operator's change
        state.write_text(state.read_text().replace('"promoted"', '"running"'))
        third = Controller(spec, rig.router(), state, say=print)
        with pytest.raises(UserError, match="changed behind the controller"):
            third.run()
        assert rig.weights() == (200, 256)  # left as the operator set it


def test_shadow_is_refused_on_haproxy(haproxy, tmp_path):
    with (
        serve_in_thread(model="m") as stable,
        haproxy_rig(stable.url, stable.url, tmp_path) as rig,
        pytest.raises(UserError, match="HAProxy cannot do 'shadow'"),
    ):
        rig.router().set("shadow", 0, "", None)


def test_the_rollout_command_drives_haproxy_and_writes_its_reports(haproxy, cli, tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        "gateway: http://127.0.0.1:1\n"  # replaced by --router
        "interval_s: 0.1\n"
        "gates: {max_error_rate: 0.05, min_samples: 3}\n"
        "stages: [{mode: split, weight: 30, min_duration_s: 0.2, min_requests: 3}]\n"
    )
    with (
        serve_in_thread(model="m") as stable,
        serve_in_thread(model="m") as cand,
        haproxy_rig(stable.url, cand.url, tmp_path) as rig,
        ClientLoad(rig.url, model="m"),
    ):
        state = tmp_path / "out" / "state.json"
        args = ["rollout", str(path), "--router", f"haproxy:{rig.spec.socket}", "--backend", "llm"]
        result = cli(*args, "--state", str(state), timeout=120)
        weights = rig.weights()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PROMOTED" in result.stdout and weights == (0, 256)
    assert "# Rollout: promoted" in (tmp_path / "out" / "rollout.md").read_text()
    assert "Router: HAProxy" in (tmp_path / "out" / "rollout.html").read_text()


def test_a_haproxy_that_sends_no_log_line_rolls_the_candidate_back_instead_of_passing_blind(
    haproxy, tmp_path
):
    with (
        serve_in_thread(model="m") as stable,
        serve_in_thread(model="m") as cand,
        haproxy_rig(stable.url, cand.url, tmp_path) as rig,
    ):
        deaf = LogReceiver("127.0.0.1:0", "llm")  # not the address in haproxy.cfg
        try:
            router = HaproxyRouter(rig.spec, tmp_path / "haproxy-router.json", log=deaf)
            spec = replace(spec_for(rig), stages=[replace(s, min_requests=200) for s in spec_for(rig).stages])
            status, controller, statuses, _ = roll(rig, spec, router)
        finally:
            deaf.close()
        assert rig.weights() == (256, 0)
    assert status == "rolled_back" and [s for s in statuses if s != 200] == []
    assert "sent no log line to" in controller.state.timeline[-1]["reason"]


def test_the_shipped_haproxy_cfg_is_valid_and_starts_all_stable(haproxy, repo):
    config = repo / "recipes" / "rollouts" / "haproxy.cfg"
    check = subprocess.run([haproxy, "-c", "-f", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    text = config.read_text()
    assert "server candidate 127.0.0.1:8181 weight 0" in text and "level admin" in text
    assert "retry-on all-retryable-errors" in text and "option httplog" in text
