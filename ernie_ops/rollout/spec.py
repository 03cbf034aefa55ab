"""ROLLOUT.yaml: the stages a candidate goes through and the gates each must pass.

    gateway: http://127.0.0.1:8200        # the built-in gateway (`ernie-ops gateway run`), or:
    # haproxy: {socket: /run/haproxy/admin.sock, backend: llm, log: 127.0.0.1:5140}
    admin_key_env: ERNIE_OPS_GATEWAY_ADMIN_KEY
    interval_s: 1.0                       # how often the gates are read
    gates:                                # every stage's; a stage's own `gates` replace the keys it names
      max_error_rate: 0.01                # candidate failures / candidate requests
      ttft_p99_s: 2.0                     # the candidate's p99 time to first token
      e2e_p99_s: 20.0                     # the candidate's p99 end-to-end latency
      min_agreement: 0.9                  # shadow stages: answers equal to stable's / compared
      min_samples: 20                     # requests before a gate can fail
    stages:
      - {name: shadow, mode: shadow, min_duration_s: 300, min_requests: 200,
         gates: {eval: {suite: evals/smoke.jsonl, max_drop: 0.02}}}
      - {name: 5%, mode: split, weight: 5, min_duration_s: 600, min_requests: 100}
      - {name: 50%, mode: split, weight: 50, min_duration_s: 600, min_requests: 500}
    promote: true                         # all stages passed: all traffic to the candidate

A stage passes when it has run `min_duration_s` with `min_requests` candidate requests (at least
`min_samples`) and every gate holds; a gate that fails (once `min_samples` requests are in) rolls
back to all-stable at once.

Suite gates (`ernie_ops.rollout.suitegates`), run once in each stage whose gates name them, from the
stage's start; the stage cannot pass before they have answered:

- `agreement: {suite: FILE, judge: f1}`: the suite's prompts go to stable and to the candidate
  (temperature 0) and each candidate answer is scored by the judge with stable's answer as the
  expected one; the mean must reach `min_agreement`. It replaces the gateway's exact comparison of
  the shadow traffic as the agreement gate (which is still reported), and works at any stage and
  with any router (HAProxy cannot shadow). The judge defaults to each item's own, else exact.
- `eval: {suite: FILE, min_score: 0.6, max_drop: 0.02}`: the eval suite against the candidate
  (`ernie-ops eval`); it fails below `min_score`, or more than `max_drop` below stable's score on
  the same suite (stable is then evaluated too).

Both reach the models directly: `stable:` and `candidate:` URLs, or with the gateway, the backends
it reports. Read with ernie_ops.spec: every problem with its file:line, unknown keys with a
did-you-mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ernie_ops.errors import did_you_mean
from ernie_ops.recipe.problems import Problem, error
from ernie_ops.spec import check_fields, load_yaml, missing, raise_problems

STAGE_MODES = ("shadow", "split", "all-candidate")


@dataclass(frozen=True)
class AgreementGate:
    suite: str
    judge: str | None = None  # the items' own judge, else exact
    max_tokens: int = 128
    concurrency: int = 4


@dataclass(frozen=True)
class EvalGate:
    suite: str
    min_score: float | None = None
    max_drop: float | None = None  # below stable's score on the same suite
    judge: str = "exact"  # for items that name none
    max_tokens: int = 256
    concurrency: int = 4


@dataclass(frozen=True)
class Gates:
    max_error_rate: float = 0.01
    ttft_p99_s: float | None = None
    e2e_p99_s: float | None = None
    min_agreement: float | None = None
    min_samples: int = 20
    agreement: AgreementGate | None = None
    eval: EvalGate | None = None

    @property
    def suites(self) -> bool:
        return self.agreement is not None or self.eval is not None


@dataclass(frozen=True)
class HaproxySpec:
    """HAProxy's runtime API (`stats socket ... level admin`) and the backend to weigh."""

    socket: str  # a unix socket path, or host:port
    backend: str
    stable_server: str = "stable"
    candidate_server: str = "candidate"
    log: str | None = None  # host:port this controller receives HAProxy's httplog on (UDP syslog)


@dataclass(frozen=True)
class Stage:
    mode: str
    weight: float = 0.0
    name: str = ""
    min_duration_s: float = 60.0
    min_requests: int = 100
    gates: Gates | None = None  # the rollout's gates with the keys given here replaced

    @property
    def label(self) -> str:
        return self.name or (f"{self.mode} {self.weight:g}%" if self.mode == "split" else self.mode)


@dataclass(frozen=True)
class RolloutSpec:
    stages: list[Stage]
    gateway: str | None = None
    haproxy: HaproxySpec | None = None
    stable: str | None = None  # the models' own URLs, for the suite gates
    candidate: str | None = None
    gates: Gates = field(default_factory=Gates)
    admin_key_env: str = "ERNIE_OPS_GATEWAY_ADMIN_KEY"
    interval_s: float = 1.0
    promote: bool = True
    state: str | None = None  # the controller's state file (default: runs/rollouts/<file name>/state.json)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def router_name(self) -> str:
        if self.haproxy is not None:
            return f"HAProxy {self.haproxy.socket} backend {self.haproxy.backend}"
        return f"gateway {self.gateway}"


def load_rollout(path: Path, sets: list[str] | tuple[str, ...] = ()) -> RolloutSpec:
    """The validated spec, or one UserError listing every problem (`file:line: ...`)."""
    loaded, problems = load_yaml(path, sets)
    spec = None
    if loaded is not None:
        spec, more = validate(loaded.values, loaded.where, path.parent)
        problems += more
    raise_problems(
        f"the rollout {path} has problems",
        problems,
        hint="the format is in `python -m pydoc ernie_ops.rollout.spec`",
    )
    assert spec is not None
    return spec


def validate(
    values: dict[str, Any], where: Any, base: Path | None = None
) -> tuple[RolloutSpec | None, list[Problem]]:
    """Suite paths are relative to BASE (the spec's folder) when they are not found as given."""
    clean, problems = check_fields(RolloutSpec, values, where, "rollout")
    problems += missing(RolloutSpec, values, where, {"stages": "stages: [...]"})
    problems += _unknown_nested(values, where)
    haproxy: HaproxySpec | None = clean.get("haproxy")
    if (clean.get("gateway") is None) == (haproxy is None) and not problems:
        problems.append(
            error(
                where(),
                "gateway",
                "name one router: `gateway: URL` or `haproxy: {socket, backend}`",
                "e.g. gateway: http://127.0.0.1:8200",
            )
        )
    gates: Gates = clean.get("gates") or Gates()
    stages: list[Stage] = clean.get("stages") or []
    if "stages" in clean and not stages:
        problems.append(error(where("stages"), "stages", "no stages", "e.g. stages: [{mode: shadow}]"))
    raw = values.get("stages")
    raw_stages: list[Any] = raw if isinstance(raw, list) else []
    for i, stage in enumerate(stages):
        key = f"stages[{i}]"
        if stage.mode not in STAGE_MODES:
            problems.append(
                error(where("stages"), key, f"mode {stage.mode!r} is not one of {', '.join(STAGE_MODES)}")
            )
        if stage.mode == "split" and not 0 < stage.weight <= 100:
            problems.append(
                error(where("stages"), key, f"a split needs a weight in (0, 100], not {stage.weight:g}")
            )
        if stage.min_duration_s < 0 or stage.min_requests < 0:
            problems.append(error(where("stages"), key, "min_duration_s and min_requests must be >= 0"))
        if stage.mode == "shadow" and haproxy is not None:
            problems.append(
                error(
                    where("stages"),
                    key,
                    "HAProxy cannot shadow: it does not copy request bodies to a second server "
                    "(only through an SPOE agent)",
                    "use a small split stage first, with `gates: {agreement: {suite: ...}}` for "
                    "the answers; or the built-in gateway for a shadow stage",
                )
            )
        if stage.gates is not None:  # only the keys the stage gives replace the rollout's
            given = raw_stages[i].get("gates") if isinstance(raw_stages[i], dict) else None
            own = {k: getattr(stage.gates, k) for k in given or {} if isinstance(k, str)}
            stages[i] = replace(stage, gates=replace(gates, **own))
    for key in ("interval_s",):
        if key in clean and clean[key] <= 0:
            problems.append(error(where(key), key, "must be > 0"))
    problems += _check_gates(
        [("gates", gates)] + [(f"stages[{i}].gates", s.gates) for i, s in enumerate(stages) if s.gates],
        clean,
        where,
        base,
    )
    if any(p.severity == "error" for p in problems):
        return None, problems
    stages = [replace(s, gates=_with_paths(s.gates, base)) if s.gates else s for s in stages]
    return RolloutSpec(**(clean | {"stages": stages, "gates": _with_paths(gates, base)})), problems


def _with_paths(gates: Gates, base: Path | None) -> Gates:
    """GATES with their suites' paths as found (relative to the spec's folder when not as given)."""
    changes: dict[str, Any] = {}
    for name in ("agreement", "eval"):
        gate = getattr(gates, name)
        if gate is not None:
            changes[name] = replace(gate, suite=str(resolve_suite(gate.suite, base)))
    return replace(gates, **changes)


def _check_gates(
    all_gates: Sequence[tuple[str, Gates | None]], clean: dict[str, Any], where: Any, base: Path | None
) -> list[Problem]:
    problems = []
    for key, g in all_gates:
        if g is None:
            continue
        at = where("gates") if key == "gates" else where("stages")
        if not 0 <= g.max_error_rate <= 1 or (g.min_agreement is not None and not 0 <= g.min_agreement <= 1):
            problems.append(error(at, key, "max_error_rate and min_agreement are fractions 0..1"))
        haproxy = clean.get("haproxy")
        if haproxy is not None and haproxy.log is None and (g.ttft_p99_s or g.e2e_p99_s):
            problems.append(
                error(
                    at,
                    key,
                    "latency gates behind HAProxy need its log (its stats give averages, not a p99)",
                    "add haproxy: {log: 127.0.0.1:5140} and the same address in haproxy.cfg's `log` line",
                )
            )
        if g.agreement is not None and g.min_agreement is None:
            problems.append(
                error(
                    at,
                    f"{key}.agreement",
                    "a judged agreement needs min_agreement",
                    "e.g. min_agreement: 0.9",
                )
            )
        if g.eval is not None and g.eval.min_score is None and g.eval.max_drop is None:
            problems.append(
                error(at, f"{key}.eval", "an eval gate needs min_score or max_drop", "e.g. max_drop: 0.02")
            )
        for name, suite_gate in (("agreement", g.agreement), ("eval", g.eval)):
            if suite_gate is None:
                continue
            problems += _check_suite_gate(suite_gate, f"{key}.{name}", at, base)
            if clean.get("haproxy") and not (clean.get("stable") and clean.get("candidate")):
                problems.append(
                    error(
                        at,
                        f"{key}.{name}",
                        "a suite gate behind HAProxy needs the models' own URLs",
                        "add stable: URL and candidate: URL",
                    )
                )
    return problems


def _check_suite_gate(gate: AgreementGate | EvalGate, key: str, at: str, base: Path | None) -> list[Problem]:
    from ernie_ops.validate.judges import JUDGES

    problems = []
    judge = gate.judge
    if judge is not None and judge not in JUDGES:
        guess = did_you_mean(judge, list(JUDGES))
        problems.append(
            error(
                at,
                f"{key}.judge",
                f"unknown judge {judge!r}",
                f"did you mean {guess!r}?" if guess else f"one of {', '.join(JUDGES)}",
            )
        )
    if not resolve_suite(gate.suite, base).is_file():
        problems.append(
            error(at, f"{key}.suite", f"no suite file {gate.suite}", "a JSONL suite (`ernie-ops eval`)")
        )
    if gate.max_tokens < 1 or gate.concurrency < 1:
        problems.append(error(at, key, "max_tokens and concurrency must be >= 1"))
    return problems


def resolve_suite(suite: str, base: Path | None) -> Path:
    """SUITE as given when it exists, else relative to the spec's folder."""
    path = Path(suite)
    if path.is_file() or path.is_absolute() or base is None:
        return path
    return base / path


def _unknown_nested(values: dict[str, Any], where: Any) -> list[Problem]:
    """Unknown keys inside stages, gates and haproxy (the type check converts them without a word)."""
    out = []

    def check(mapping: Any, cls: type, key: str, at: str) -> None:
        if not isinstance(mapping, dict):
            return
        known = [f.name for f in fields(cls)]
        for name in mapping:
            if name not in known:
                guess = did_you_mean(str(name), known)
                fix = f"did you mean {guess!r}?" if guess else f"the keys are {', '.join(known)}"
                out.append(error(where(at), f"{key}.{name}", "unknown key", fix))

    def check_gates(gates: Any, key: str, at: str) -> None:
        check(gates, Gates, key, at)
        if isinstance(gates, dict):
            check(gates.get("agreement"), AgreementGate, f"{key}.agreement", at)
            check(gates.get("eval"), EvalGate, f"{key}.eval", at)

    check_gates(values.get("gates"), "gates", "gates")
    check(values.get("haproxy"), HaproxySpec, "haproxy", "haproxy")
    stages = values.get("stages")
    for i, stage in enumerate(stages if isinstance(stages, list) else []):
        check(stage, Stage, f"stages[{i}]", "stages")
        if isinstance(stage, dict):
            check_gates(stage.get("gates"), f"stages[{i}].gates", "stages")
    return out
