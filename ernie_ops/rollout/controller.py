"""The rollout controller: carries a candidate through the stages of a ROLLOUT.yaml, gate by gate.

Every `interval_s` it reads the candidate's figures since the stage began from the router (error
rate, TTFT / E2E p99, shadow agreement; exact, from the gateway's `/admin/stats`) and:

- a gate fails (once `min_samples` candidate requests are in): all traffic to stable at once
  (`all-stable`), the reason and the figures recorded, exit 1;
- the stage has run `min_duration_s` with `min_requests` candidate requests and every gate holds:
  the next stage's mode and weight are set; after the last one, `all-candidate` (promote: true).

The controller's state (stage, when it began, the router's revision it set, the timeline) is
written atomically after every step, so a killed controller restarted on the same file continues
with the same stage and start time. It never overrides a change made by someone else: when the
router's revision is not the one it set, it stops and says so.

Routers are reached through one small interface (`Router`): the built-in gateway today; HAProxy's
runtime API, Envoy and Kubernetes Gateway API weights are the next adapters (#19 item 3).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ernie_ops.errors import UserError
from ernie_ops.files import write_text_atomic
from ernie_ops.rollout.spec import Gates, RolloutSpec, Stage


class Router(Protocol):
    """What the controller needs of whatever splits the traffic."""

    def routing(self) -> dict[str, Any]:
        """{"mode", "weight", "revision"}."""

    def set(self, mode: str, weight: float, reason: str, revision: int | None) -> dict[str, Any]:
        """Change the split (refused when REVISION is given and is not the current one); the new
        routing."""

    def figures(self, since: float) -> dict[str, Any]:
        """Per backend/traffic figures since SINCE (the gateway's /admin/stats shape)."""


class GatewayRouter:
    """The built-in gateway's admin API."""

    def __init__(self, url: str, admin_key: str, timeout: float = 10.0):
        self.url = url.rstrip("/") if "://" in url else "http://" + url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {admin_key}", "Content-Type": "application/json"}
        self.timeout = timeout

    def _call(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
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
        routing: dict[str, Any] = self._call("/admin/state")["routing"]
        return routing

    def set(self, mode: str, weight: float, reason: str, revision: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {"mode": mode, "weight": weight, "reason": reason}
        if revision is not None:
            body["revision"] = revision
        routing: dict[str, Any] = self._call("/admin/state", body)["routing"]
        return routing

    def figures(self, since: float) -> dict[str, Any]:
        return self._call(f"/admin/stats?since={since!r}")


@dataclass
class ControllerState:
    status: str = "running"  # running, rolled_back, promoted
    stage: int = 0
    stage_started: float = 0.0
    revision: int | None = None  # the router revision this controller set last
    timeline: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> ControllerState | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except json.JSONDecodeError as err:
            raise UserError(
                f"{path}: the rollout state is not JSON ({err})", hint="fix or remove it"
            ) from None
        return cls(**data)

    def save(self, path: Path) -> None:
        write_text_atomic(path, json.dumps(asdict(self), indent=2) + "\n")


@dataclass(frozen=True)
class Verdict:
    """A stage's gates read once: failed (a reason), passed, or still waiting."""

    failed: str | None
    passed: bool
    figures: dict[str, Any]


def evaluate(stage: Stage, gates: Gates, figures: dict[str, Any], elapsed: float) -> Verdict:
    """The gates of STAGE on the router's FIGURES (since the stage began ELAPSED seconds ago)."""
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
        and gates.min_agreement is not None
        and compared >= gates.min_samples
        and seen["agreement"] < gates.min_agreement
    ):
        failed = f"agreement with stable {seen['agreement']:.3f} < {gates.min_agreement:g}"
    passed = failed is None and elapsed >= stage.min_duration_s and n >= stage.min_requests
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

    def _event(self, event: str, **details: Any) -> None:
        entry = {"time": round(self.clock(), 3), "event": event, **details}
        self.state.timeline.append(entry)
        self.state.save(self.state_path)

    def _set(self, mode: str, weight: float, reason: str, force: bool = False) -> None:
        """Set the split, only over this controller's own last change unless FORCE (a rollback)."""
        routing = self.router.set(mode, weight, reason, None if force else self.state.revision)
        self.state.revision = int(routing["revision"])

    def _enter(self, index: int) -> None:
        stage = self.spec.stages[index]
        self._set(stage.mode, stage.weight, f"rollout stage {index + 1}: {stage.label}")
        self.state.stage = index
        self.state.stage_started = self.clock()
        self._event("stage", stage=index, label=stage.label, mode=stage.mode, weight=stage.weight)
        self.say(f"stage {index + 1}/{len(self.spec.stages)}: {stage.label}")

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
        gates = stage.gates or self.spec.gates
        started = self.state.stage_started
        figures = self.router.figures(started)
        verdict = evaluate(stage, gates, figures, self.clock() - started)
        if verdict.failed:
            reason = f"stage {index + 1} ({stage.label}): {verdict.failed}"
            self._set("all-stable", 0.0, f"rollback: {reason}", force=True)
            self.state.status = "rolled_back"
            self._event("rollback", stage=index, reason=reason, figures=verdict.figures)
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
        if not self.resumed:
            self._enter(0)
        else:
            self._check_ownership()
            stage = self.spec.stages[self.state.stage]
            self.say(f"resuming stage {self.state.stage + 1}/{len(self.spec.stages)}: {stage.label}")
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


def _brief(figures: dict[str, Any]) -> str:
    parts = []
    for key, value in figures.items():
        if isinstance(value, float):
            parts.append(f"{key} {value:.4g}")
        elif value is not None:
            parts.append(f"{key} {value}")
    return ", ".join(parts)


def markdown(spec: RolloutSpec, state: ControllerState) -> str:
    """The rollout report: the decision, then the timeline with each gate's figures."""
    lines = [f"# Rollout: {state.status}", "", f"Gateway {spec.gateway}; {len(spec.stages)} stages.", ""]
    lines += ["| time (UTC) | event | stage | details |", "|---|---|---|---|"]
    for entry in state.timeline:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(entry["time"]))
        stage = entry.get("stage")
        label = spec.stages[stage].label if isinstance(stage, int) and stage < len(spec.stages) else ""
        details = entry.get("reason") or _brief(entry.get("figures") or {})
        lines.append(f"| {when} | {entry['event']} | {label} | {details} |")
    return "\n".join(lines) + "\n"
