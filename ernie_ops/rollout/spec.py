"""ROLLOUT.yaml: the stages a candidate goes through and the gates each must pass.

    gateway: http://127.0.0.1:8200        # the gateway (`ernie-ops gateway run`)
    admin_key_env: ERNIE_OPS_GATEWAY_ADMIN_KEY
    interval_s: 1.0                       # how often the gates are read
    gates:                                # every stage's, unless a stage gives its own
      max_error_rate: 0.01                # candidate failures / candidate requests
      ttft_p99_s: 2.0                     # the candidate's p99 time to first token
      e2e_p99_s: 20.0                     # the candidate's p99 end-to-end latency
      min_agreement: 0.9                  # shadow stages: answers equal to stable's / compared
      min_samples: 20                     # requests before a gate can fail
    stages:
      - {name: shadow, mode: shadow, min_duration_s: 300, min_requests: 200}
      - {name: 5%, mode: split, weight: 5, min_duration_s: 600, min_requests: 100}
      - {name: 50%, mode: split, weight: 50, min_duration_s: 600, min_requests: 500}
    promote: true                         # all stages passed: all traffic to the candidate

A stage passes when it has run `min_duration_s` with `min_requests` candidate requests and every
gate holds; a gate that fails (once `min_samples` requests are in) rolls back to all-stable at once.
Read with ernie_ops.spec: every problem with its file:line, unknown keys with a did-you-mean.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ernie_ops.errors import did_you_mean
from ernie_ops.recipe.problems import Problem, error
from ernie_ops.spec import check_fields, load_yaml, missing, raise_problems

STAGE_MODES = ("shadow", "split", "all-candidate")


@dataclass(frozen=True)
class Gates:
    max_error_rate: float = 0.01
    ttft_p99_s: float | None = None
    e2e_p99_s: float | None = None
    min_agreement: float | None = None
    min_samples: int = 20


@dataclass(frozen=True)
class Stage:
    mode: str
    weight: float = 0.0
    name: str = ""
    min_duration_s: float = 60.0
    min_requests: int = 100
    gates: Gates | None = None  # the rollout's gates when not given

    @property
    def label(self) -> str:
        return self.name or (f"{self.mode} {self.weight:g}%" if self.mode == "split" else self.mode)


@dataclass(frozen=True)
class RolloutSpec:
    gateway: str
    stages: list[Stage]
    gates: Gates = field(default_factory=Gates)
    admin_key_env: str = "ERNIE_OPS_GATEWAY_ADMIN_KEY"
    interval_s: float = 1.0
    promote: bool = True
    state: str | None = None  # the controller's state file (default: runs/rollouts/<file name>/state.json)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def load_rollout(path: Path, sets: list[str] | tuple[str, ...] = ()) -> RolloutSpec:
    """The validated spec, or one UserError listing every problem (`file:line: ...`)."""
    loaded, problems = load_yaml(path, sets)
    spec = None
    if loaded is not None:
        spec, more = validate(loaded.values, loaded.where)
        problems += more
    raise_problems(
        f"the rollout {path} has problems",
        problems,
        hint="the format is in `python -m pydoc ernie_ops.rollout.spec`",
    )
    assert spec is not None
    return spec


def validate(values: dict[str, Any], where: Any) -> tuple[RolloutSpec | None, list[Problem]]:
    clean, problems = check_fields(RolloutSpec, values, where, "rollout")
    problems += missing(
        RolloutSpec, values, where, {"gateway": "gateway: http://127.0.0.1:8200", "stages": "stages: [...]"}
    )
    problems += _unknown_nested(values, where)
    stages: list[Stage] = clean.get("stages") or []
    if "stages" in clean and not stages:
        problems.append(error(where("stages"), "stages", "no stages", "e.g. stages: [{mode: shadow}]"))
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
    for key in ("interval_s",):
        if key in clean and clean[key] <= 0:
            problems.append(error(where(key), key, "must be > 0"))
    gates = [clean.get("gates") or Gates()] + [s.gates for s in stages if s.gates]
    for g in gates:
        if not 0 <= g.max_error_rate <= 1 or (g.min_agreement is not None and not 0 <= g.min_agreement <= 1):
            problems.append(
                error(where("gates"), "gates", "max_error_rate and min_agreement are fractions 0..1")
            )
    if any(p.severity == "error" for p in problems):
        return None, problems
    return RolloutSpec(**clean), problems


def _unknown_nested(values: dict[str, Any], where: Any) -> list[Problem]:
    """Unknown keys inside stages and gates (the type check converts them without a word)."""
    out = []
    known_stage = [f.name for f in fields(Stage)]
    known_gates = [f.name for f in fields(Gates)]

    def check(mapping: Any, known: list[str], key: str, at: str) -> None:
        if not isinstance(mapping, dict):
            return
        for name in mapping:
            if name not in known:
                guess = did_you_mean(str(name), known)
                fix = f"did you mean {guess!r}?" if guess else f"the keys are {', '.join(known)}"
                out.append(error(where(at), f"{key}.{name}", "unknown key", fix))

    check(values.get("gates"), known_gates, "gates", "gates")
    stages = values.get("stages")
    for i, stage in enumerate(stages if isinstance(stages, list) else []):
        check(stage, known_stage, f"stages[{i}]", "stages")
        if isinstance(stage, dict):
            check(stage.get("gates"), known_gates, f"stages[{i}].gates", "stages")
    return out
