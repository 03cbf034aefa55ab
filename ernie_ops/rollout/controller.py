"""The rollout controller: carries a candidate through the stages of a ROLLOUT.yaml, gate by gate.

Every `interval_s` it reads the candidate's figures since the stage began from the router (error
rate, TTFT / E2E p99, shadow agreement; exact, from the gateway's `/admin/stats`, or HAProxy's
counters and log: `ernie_ops.rollout.haproxy`) and the stage's suite gates (judged agreement, eval
re-run: `ernie_ops.rollout.suitegates`, run in the background from the stage's start) and:

- a gate fails (once `min_samples` candidate requests are in): all traffic to stable at once
  (`all-stable`), the reason and the figures recorded, exit 1;
- the stage has run `min_duration_s` with `min_requests` candidate requests (and at least
  `min_samples`, so that every gate could have failed) and every gate holds:
  the next stage's mode and weight are set; after the last one, `all-candidate` (promote: true).

The controller's state (stage, when it began, the router's revision it set, the timeline) is
written atomically after every step, so a killed controller restarted on the same file continues
with the same stage and start time (a stage's suite gates run again). It never overrides a change made
by someone else: when the router's revision is not the one it set, it stops and says so. A
rollback is recorded with the router's time of the figures that failed and of the all-stable
change (`decided_at`, `in_effect_at`), so the report says how long it took.

Routers are reached through one small interface (`Router`): the built-in gateway and HAProxy's
runtime API. The next adapters, same interface:

- Envoy: the candidate share as `weighted_clusters` weights of the route, pushed through an xDS
  control plane (RDS), or a runtime key (`runtime_key_prefix`) set with `POST /runtime_modify` on
  the admin port; the figures from `/stats` (`cluster.<name>.upstream_rq_5xx`, and the
  `upstream_rq_time` histogram's P99 per cluster). Shadow: `request_mirror_policies`.
- Kubernetes Gateway API: the `weight` of each `backendRefs` entry of the HTTPRoute, patched through
  the API server (revision: the object's `resourceVersion`, which also detects a foreign change);
  the figures from the implementation's Prometheus metrics. Shadow: the `RequestMirror` filter.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ernie_ops.errors import UserError
from ernie_ops.records import RecordFile
from ernie_ops.rollout import suitegates
from ernie_ops.rollout.spec import Gates, RolloutSpec, Stage
from ernie_ops.validate.client import Endpoint


class Router(Protocol):
    """What the controller needs of whatever splits the traffic."""

    def routing(self) -> dict[str, Any]:
        """{"mode", "weight", "revision"}."""

    def set(self, mode: str, weight: float, reason: str, revision: int | None) -> dict[str, Any]:
        """Change the split (refused when REVISION is given and is not the current one); the new
        routing."""

    def figures(self, since: float) -> dict[str, Any]:
        """Per backend/traffic figures since SINCE (the gateway's /admin/stats shape; `now` is the
        router's time of the figures)."""

    def endpoints(self) -> tuple[str, str] | None:
        """The stable and candidate models' own URLs, when the router knows them (suite gates)."""


class GatewayRouter:
    """The built-in gateway's admin API."""

    def __init__(self, url: str, admin_key: str, timeout: float = 10.0):
        self.url = url.rstrip("/") if "://" in url else "http://" + url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {admin_key}", "Content-Type": "application/json"}
        self.timeout = timeout

    def call(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """The admin API's answer to PATH (a POST of BODY when given): a UserError when the gateway
        refuses, a ConnectionError when it cannot be reached (the controller tries again)."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as r:
                answer: dict[str, Any] = json.loads(r.read())
                return answer
        except urllib.error.HTTPError as err:
            try:
                message = json.loads(err.read())["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = str(err)
            raise UserError(f"the gateway at {self.url} refused {path}: HTTP {err.code}: {message}") from None
        except (urllib.error.URLError, OSError) as err:
            raise ConnectionError(f"the gateway at {self.url} cannot be reached: {err}") from None

    def routing(self) -> dict[str, Any]:
        routing: dict[str, Any] = self.call("/admin/state")["routing"]
        return routing

    def set(self, mode: str, weight: float, reason: str, revision: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {"mode": mode, "weight": weight, "reason": reason}
        if revision is not None:
            body["revision"] = revision
        routing: dict[str, Any] = self.call("/admin/state", body)["routing"]
        return routing

    def figures(self, since: float) -> dict[str, Any]:
        return self.call(f"/admin/stats?since={since!r}")

    def endpoints(self) -> tuple[str, str] | None:
        backends = self.call("/admin/state").get("backends") or {}
        if "stable" not in backends or "candidate" not in backends:
            return None
        return backends["stable"]["url"], backends["candidate"]["url"]


@dataclass
class ControllerState:
    status: str = "running"  # running, rolled_back, promoted
    stage: int = 0
    stage_started: float = 0.0
    revision: int | None = None  # the router revision this controller set last
    timeline: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> ControllerState | None:
        """The state recorded in PATH; None when there is none yet (a new rollout)."""
        if not path.exists():
            return None
        return _store(path).load(path.parent, lambda data: cls(**data))

    def save(self, path: Path) -> None:
        _store(path).save(self, path.parent)


def _store(path: Path) -> RecordFile:
    """The controller's state file (--state: any name) as the record store reads and writes it."""
    return RecordFile(path.name, "rollout", "ernie-ops rollout", "runs/rollouts/<name>")


@dataclass(frozen=True)
class Verdict:
    """A stage's gates read once: failed (a reason), passed, or still waiting."""

    failed: str | None
    passed: bool
    figures: dict[str, Any]


def evaluate(
    stage: Stage, gates: Gates, figures: dict[str, Any], elapsed: float, suite: dict[str, Any] | None = None
) -> Verdict:
    """The gates of STAGE on the router's FIGURES (since the stage began ELAPSED seconds ago) and
    the stage's SUITE gates' figures (None: still running, when the gates have any)."""
    traffic = "shadow" if stage.mode == "shadow" else "client"
    cand = figures.get("backends", {}).get(f"candidate/{traffic}") or {}
    n = int(cand.get("requests") or 0)
    shadow = figures.get("shadow") or {}
    compared = int(shadow.get("agree", 0)) + int(shadow.get("disagree", 0))
    seen: dict[str, Any] = {
        "candidate_requests": n,
        "error_rate": cand.get("error_rate"),
        "ttft_p99_s": cand.get("ttft_p99"),
        "e2e_p99_s": cand.get("e2e_p99"),
        "elapsed_s": round(elapsed, 3),
    }
    if stage.mode == "shadow":
        seen["agreement"] = shadow.get("agree", 0) / compared if compared else None
        seen["compared"] = compared
    failed = None
    if n >= gates.min_samples:
        if (cand.get("error_rate") or 0.0) > gates.max_error_rate:
            failed = f"error rate {cand['error_rate']:.3f} > {gates.max_error_rate:g}"
        elif gates.ttft_p99_s is not None and (cand.get("ttft_p99") or 0.0) > gates.ttft_p99_s:
            failed = f"TTFT p99 {cand['ttft_p99']:.3f} s > {gates.ttft_p99_s:g} s"
        elif gates.e2e_p99_s is not None and (cand.get("e2e_p99") or 0.0) > gates.e2e_p99_s:
            failed = f"E2E p99 {cand['e2e_p99']:.3f} s > {gates.e2e_p99_s:g} s"
    if (
        failed is None
        and stage.mode == "shadow"
        and gates.agreement is None  # a judged agreement replaces the exact one
        and gates.min_agreement is not None
        and compared >= gates.min_samples
        and seen["agreement"] < gates.min_agreement
    ):
        failed = f"agreement with stable {seen['agreement']:.3f} < {gates.min_agreement:g}"
    if suite is not None:
        seen |= {k: v for k, v in suite.items() if k != "failed"}
        failed = failed or suite["failed"]
    # a stage never passes before its gates could have failed: min_samples bounds min_requests
    enough = n >= max(stage.min_requests, gates.min_samples)
    if stage.mode == "shadow" and gates.min_agreement is not None and gates.agreement is None:
        enough = enough and compared >= gates.min_samples
    waiting = gates.suites and suite is None
    passed = failed is None and not waiting and enough and elapsed >= stage.min_duration_s
    return Verdict(failed, passed, seen)


class Controller:
    def __init__(
        self,
        spec: RolloutSpec,
        router: Router,
        state_path: Path,
        say: Callable[[str], None] = print,
        clock: Callable[[], float] = time.time,
    ):
        self.spec = spec
        self.router = router
        self.state_path = Path(state_path)
        self.say = say
        self.clock = clock
        recorded = ControllerState.load(self.state_path)
        self.resumed = recorded is not None
        self.state = recorded or ControllerState()
        self._suite: dict[str, Any] = {}  # the current stage's suite gates' figures, once they answer
        self._endpoints: tuple[Endpoint, Endpoint] | None = None

    def _event(self, event: str, **details: Any) -> None:
        entry = {"time": round(self.clock(), 3), "event": event, **details}
        self.state.timeline.append(entry)
        self.state.save(self.state_path)

    def _gates(self, index: int) -> Gates:
        return self.spec.stages[index].gates or self.spec.gates

    def _set(self, mode: str, weight: float, reason: str, force: bool = False) -> dict[str, Any]:
        """Set the split, only over this controller's own last change unless FORCE (a rollback)."""
        routing = self.router.set(mode, weight, reason, None if force else self.state.revision)
        self.state.revision = int(routing["revision"])
        return routing

    def _enter(self, index: int) -> None:
        stage = self.spec.stages[index]
        self._set(stage.mode, stage.weight, f"rollout stage {index + 1}: {stage.label}")
        self.state.stage = index
        self.state.stage_started = self.clock()
        self._event("stage", stage=index, label=stage.label, mode=stage.mode, weight=stage.weight)
        self.say(f"stage {index + 1}/{len(self.spec.stages)}: {stage.label}")
        self._start_suites(index)

    def _start_suites(self, index: int) -> None:
        """The stage's suite gates, in a thread: the router's gates are read meanwhile."""
        box: dict[str, Any] = {}
        self._suite = box
        gates = self._gates(index)
        if not gates.suites:
            return
        stable, candidate = self._models()
        self.say(f"stage {index + 1}: suite gates running against {candidate.root}")

        def work() -> None:
            try:
                box.update(suitegates.run(gates, stable, candidate))
            except Exception as err:  # an unreachable model, a suite that fails to load: the gate fails
                box.update(failed=f"suite gate could not run: {err}")

        threading.Thread(target=work, name=f"suite-gates-{index}", daemon=True).start()

    def _models(self) -> tuple[Endpoint, Endpoint]:
        """The stable and candidate models' own endpoints (the spec's, else the router's)."""
        if self._endpoints is None:
            urls = (self.spec.stable, self.spec.candidate)
            if not all(urls):
                urls = self.router.endpoints() or (None, None)
            if not (urls[0] and urls[1]):
                raise UserError(
                    "the suite gates need the stable and candidate models' URLs",
                    hint="add stable: URL and candidate: URL to the rollout",
                )
            self._endpoints = (Endpoint.parse(urls[0]), Endpoint.parse(urls[1]))
        return self._endpoints

    def _check_ownership(self) -> None:
        """Stop when someone else changed the routing since this controller last did."""
        current = self.router.routing()
        if self.state.revision is not None and int(current["revision"]) != self.state.revision:
            raise UserError(
                f"the router's routing changed behind the controller (revision {current['revision']}: "
                f"{current['mode']} {current['weight']:g}%; the controller's was {self.state.revision})",
                hint="decide by hand, then remove the controller's state file to start the rollout again",
            )

    def step(self) -> str:
        """Read the gates once and act; the status afterwards."""
        if self.state.status != "running":
            return self.state.status
        index = self.state.stage
        stage = self.spec.stages[index]
        gates = self._gates(index)
        started = self.state.stage_started
        try:
            figures = self.router.figures(started)
        except UserError as err:  # figures that cannot be read cannot pass: all traffic to stable
            verdict = Verdict(f"the gates' figures cannot be read: {err}", False, {})
            figures = {"now": self.clock()}
        else:
            suite = dict(self._suite) if self._suite else None
            verdict = evaluate(stage, gates, figures, self.clock() - started, suite)
        if verdict.failed:
            reason = f"stage {index + 1} ({stage.label}): {verdict.failed}"
            routing = self._set("all-stable", 0.0, f"rollback: {reason}", force=True)
            self.state.status = "rolled_back"
            timing = _timing(figures.get("now"), routing.get("updated"))
            self._event("rollback", stage=index, reason=reason, figures=verdict.figures, **timing)
            self.say(f"ROLLED BACK to all-stable: {reason}")
        elif verdict.passed:
            self._event("passed", stage=index, figures=verdict.figures)
            self.say(f"stage {index + 1} passed: {_brief(verdict.figures)}")
            if index + 1 < len(self.spec.stages):
                self._enter(index + 1)
            else:
                if self.spec.promote:
                    self._set("all-candidate", 100.0, "rollout: every stage passed")
                self.state.status = "promoted"
                self._event("promoted" if self.spec.promote else "finished")
                self.say(
                    "PROMOTED: all traffic to the candidate" if self.spec.promote else "all stages passed"
                )
        return self.state.status

    def run(self, until: Callable[[], bool] = lambda: False) -> str:
        """Step every interval until the rollout ends (or UNTIL says stop); the final status."""
        if self.state.status != "running":
            self.say(f"the rollout in {self.state_path} has ended: {self.state.status}")
            return self.state.status
        if any(self._gates(i).suites for i in range(len(self.spec.stages))):
            self._models()  # no URLs for the suite gates: refused before anything changes
        if not self.state.timeline:
            self._enter(0)
        else:  # a state file from before, or this controller's own earlier run()
            self._check_ownership()
            stage = self.spec.stages[self.state.stage]
            self.say(f"resuming stage {self.state.stage + 1}/{len(self.spec.stages)}: {stage.label}")
            self._start_suites(self.state.stage)
        while not until():
            try:
                status = self.step()
            except ConnectionError as err:
                self.say(f"{err}; retrying")  # the gateway restarting: its state file keeps the split
                status = "running"
            if status != "running":
                return status
            time.sleep(self.spec.interval_s)
        return self.state.status


def _timing(decided: Any, in_effect: Any) -> dict[str, float]:
    """When the failing figures were read and when all-stable took effect, on the router's clock."""
    if not isinstance(decided, int | float) or not isinstance(in_effect, int | float):
        return {}
    return {
        "decided_at": round(decided, 3),
        "in_effect_at": round(in_effect, 3),
        "rollback_s": round(in_effect - decided, 3),
    }


def _brief(figures: dict[str, Any]) -> str:
    parts = []
    for key, value in figures.items():
        if isinstance(value, float):
            parts.append(f"{key} {value:.4g}")
        elif value is not None:
            parts.append(f"{key} {value}")
    return ", ".join(parts)
