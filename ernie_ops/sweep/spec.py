"""SWEEP.yaml: what `ernie-ops sweep` serves and measures, validated like every spec (file:line).

    name: quant-tradeoffs              # the directory is sweeps/<name>-<time>/ (or --out)
    checkpoint: runs/support-bot       # what every variant serves unless it sets model: (a run
                                       # directory, a checkpoint directory or a pulled hub id)
    serve_profile: recipes/serve/ERNIE-4.5-21B-A3B_wint4_1x80G.yaml   # optional: the variants' base
    variants:                          # served one after another; the first is the quality reference
      - {name: bf16, quantization: bf16}
      - {name: wint8, quantization: wint8}
      - {name: q4-cpu, engine: llamacpp, quantization: q4_0}   # the GGUF export is made first
      - {name: vllm, engine: vllm, model: baidu/ERNIE-4.5-21B-A3B-PT}
    eval_suite: data/eval_suite.jsonl
    eval_judge: exact                  # as in `ernie-ops eval` / the pipeline
    eval_max_tokens: 256
    eval_concurrency: 4
    eval_body: {}
    smoke_expect: null                 # null: what the catalog says of each variant's model (by name)
    max_drop: 0.02                     # how far a variant's quality may fall below the reference
    load:                              # one load per variant (see LoadSpec)
      mode: find_max_rate              # concurrency | rate | find_max_rate
      slo_ttft_ms: 2000
      slo_tpot_ms: 100
      output_len: 128
    startup_timeout: null              # seconds for a server to become ready (default: the profile's)

A variant is a name and any serve-profile field (`python -m pydoc ernie_ops.serve.profile`), laid
over `serve_profile` (else the profile defaults) with `model` = `checkpoint` unless it sets its own;
the port and served name are the sweep's. Each variant's profile is checked by the serve profile's
own rules here, before anything is served. Relative paths resolve against the current directory.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ernie_ops.errors import did_you_mean
from ernie_ops.recipe.load import LoadedRecipe
from ernie_ops.recipe.problems import Problem, error
from ernie_ops.spec import check_fields, load_yaml, missing, raise_problems, text_overrides

LOAD_MODES = ("concurrency", "rate", "find_max_rate")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass
class LoadSpec:
    """The load each variant gets: closed-loop `concurrency` levels, open-loop `rates` (req/s), or
    `find_max_rate`: the highest open-loop rate whose `slo_percentile` meets every SLO given."""

    mode: str = "concurrency"
    concurrency: list[int] = field(default_factory=lambda: [1, 4])
    rates: list[float] = field(default_factory=list)
    num_prompts: int | None = None  # per level (default: the load generator's)
    duration: float = 20.0  # open loop: seconds per level (rate x duration requests)
    input_len: int = 64
    output_len: int = 32
    ignore_eos: bool = True  # every request generates output_len tokens: variants do the same work
    max_concurrency: int | None = None  # open loop: a cap on requests in flight
    slo_ttft_ms: float | None = None
    slo_tpot_ms: float | None = None
    slo_e2e_ms: float | None = None
    slo_percentile: float = 99.0
    precision: float = 0.1  # find_max_rate: (missed - met) / met at which the search stops
    rate_min: float | None = None
    rate_max: float | None = None
    timeout: float = 300.0  # per request, seconds

    @property
    def slo_given(self) -> bool:
        return any(v is not None for v in (self.slo_ttft_ms, self.slo_tpot_ms, self.slo_e2e_ms))


@dataclass
class SweepSpec:
    variants: list[dict[str, Any]]
    eval_suite: str
    name: str = "sweep"
    checkpoint: str | None = None
    serve_profile: str | None = None
    eval_judge: str = "exact"
    eval_box_space: str = "pixels"
    eval_max_tokens: int = 256
    eval_concurrency: int = 4
    eval_body: dict[str, Any] = field(default_factory=dict)
    smoke_expect: list[str] | None = None
    max_drop: float = 0.02
    load: dict[str, Any] = field(default_factory=dict)
    startup_timeout: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def load_spec(self) -> LoadSpec:
        return LoadSpec(**self.load)

    def variant_names(self) -> list[str]:
        return [str(v["name"]) for v in self.variants]


REQUIRED_FIX = {
    "variants": "variants: [{name: bf16, quantization: bf16}, {name: wint8, quantization: wint8}]",
    "eval_suite": "eval_suite: path/to/suite.jsonl",
}
VARIANT_KEYS = ("name",)  # a variant's own keys; the rest are serve-profile fields


def load_sweep(
    path: Path, sets: list[str] | tuple[str, ...] = (), check_files: bool = True
) -> tuple[SweepSpec, dict[str, Any]]:
    """The validated spec and each variant's ServeProfile (by name), or one UserError listing every
    problem (`file:line: ...`). `check_files` False (--print-command) does not require the suite."""
    loaded, problems = load_yaml(path, sets)
    spec, profiles = None, {}  # type: tuple[SweepSpec | None, dict[str, Any]]
    if loaded is not None:
        spec, profiles, more = validate(loaded, check_files)
        problems += more
    raise_problems(
        f"the sweep {path} has problems",
        problems,
        hint="the format is in `python -m pydoc ernie_ops.sweep.spec`",
    )
    assert spec is not None
    if check_files:  # every item's problems now, not once per variant after serving it
        from ernie_ops.validate.suite import load_suite

        load_suite(spec.eval_suite, spec.eval_judge, spec.eval_box_space)
    return spec, profiles


def validate(
    loaded: LoadedRecipe, check_files: bool = True
) -> tuple[SweepSpec | None, dict[str, Any], list[Problem]]:
    lines = nested_lines(loaded)
    where = _where(loaded, lines)
    values = text_overrides(SweepSpec, loaded)
    clean, problems = check_fields(SweepSpec, values, where, "sweep")
    problems += missing(SweepSpec, values, where, REQUIRED_FIX)
    paths = ["eval_suite", "serve_profile"] if check_files else ["serve_profile"]
    for key in paths:
        if isinstance(clean.get(key), str) and not Path(clean[key]).expanduser().is_file():
            problems.append(error(where(key), key, f"{clean[key]}: no such file"))
    problems += _choices(clean, where)
    if isinstance(clean.get("load"), dict):
        problems += _load(clean["load"], where)
    profiles: dict[str, Any] = {}
    if isinstance(clean.get("variants"), list) and not any(p.key == "serve_profile" for p in problems):
        profiles, more = _variants(clean, loaded, lines, where)
        problems += more
    problems.sort(key=lambda p: (p.where.rpartition(":")[0], _line(p.where)))  # in the file's order
    if any(p.severity == "error" for p in problems):
        return None, {}, problems
    return SweepSpec(**clean), profiles, problems


def _line(where: str) -> int:
    tail = where.rpartition(":")[2]
    return int(tail) if tail.isdigit() else 0


def nested_lines(loaded: LoadedRecipe) -> dict[str, int]:
    """The line of every key and list item one and two levels down (`load.slo_ttft_ms`,
    `variants[1]`, `variants[1].quantization`), so a problem inside them names its own line."""
    import yaml

    try:
        root = yaml.compose(loaded.path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    out: dict[str, int] = {}
    if not isinstance(root, yaml.MappingNode):
        return out
    for key_node, value in root.value:
        top = str(key_node.value)
        children: list[tuple[str, Any]] = []
        if isinstance(value, yaml.MappingNode):
            children = [(f"{top}.{k.value}", k) for k, _ in value.value]
        elif isinstance(value, yaml.SequenceNode):
            for i, item in enumerate(value.value):
                children.append((f"{top}[{i}]", item))
                if isinstance(item, yaml.MappingNode):
                    children += [(f"{top}[{i}].{k.value}", k) for k, _ in item.value]
        out.update((name, node.start_mark.line + 1) for name, node in children)
    return out


def _where(loaded: LoadedRecipe, lines: dict[str, int]) -> Any:
    """where(key): the line of `key` (or of the item or mapping holding it) in the file; an
    overridden top-level key is where the override is."""

    def where(key: str | None = None) -> str:
        top = re.split(r"[.\[]", key, maxsplit=1)[0] if key else None
        if top not in loaded.overridden:
            while key:
                if key in lines:
                    return f"{loaded.path}:{lines[key]}"
                key = re.sub(r"(\.[^.\[]+|\[\d+\])$", "", key) if key != top else ""
        return loaded.where(top)

    return where


def _choices(values: dict[str, Any], where: Any) -> list[Problem]:
    from ernie_ops.pipeline.spec import validation_choices

    out = []
    if not NAME.fullmatch(str(values.get("name", "sweep"))):
        out.append(error(where("name"), "name", "letters, digits, '.', '_' and '-' only (a directory name)"))
    out += validation_choices(values, where)
    if values.get("max_drop", 0.0) < 0:
        out.append(error(where("max_drop"), "max_drop", "must be >= 0 (a score difference, 0..1)"))
    if values.get("startup_timeout") is not None and values["startup_timeout"] <= 0:
        out.append(error(where("startup_timeout"), "startup_timeout", "must be > 0 seconds"))
    return out


def _load(load: dict[str, Any], where: Any) -> list[Problem]:
    """The load mapping: keys and types (LoadSpec), then the values that depend on each other."""
    clean, problems = check_fields(
        LoadSpec, load, lambda key=None: where(f"load.{key}" if key else "load"), "load"
    )
    problems = [
        Problem(p.severity, p.where, f"load.{p.key}" if p.key else "load", p.message, p.fix) for p in problems
    ]
    if problems:
        return problems
    spec = LoadSpec(**clean)

    def bad(key: str, message: str, fix: str = "") -> None:
        problems.append(error(where(f"load.{key}"), f"load.{key}", message, fix))

    if spec.mode not in LOAD_MODES:
        guess = did_you_mean(spec.mode, list(LOAD_MODES))
        bad(
            "mode",
            f"{spec.mode!r} is not one of {', '.join(LOAD_MODES)}",
            f"did you mean {guess!r}?" if guess else "",
        )
    elif spec.mode == "concurrency" and (not spec.concurrency or min(spec.concurrency) < 1):
        bad("concurrency", "give at least one concurrency level, each >= 1", "e.g. concurrency: [1, 4]")
    elif spec.mode == "rate" and (not spec.rates or min(spec.rates) <= 0):
        bad("rates", "mode: rate needs at least one rate > 0 (requests / s)", "e.g. rates: [0.5, 1]")
    elif spec.mode == "find_max_rate" and not spec.slo_given:
        bad(
            "mode",
            "find_max_rate needs an SLO to search against",
            "set slo_ttft_ms, slo_tpot_ms or slo_e2e_ms",
        )
    for key in ("input_len", "output_len", "num_prompts", "max_concurrency"):
        value = getattr(spec, key)
        if value is not None and value < 1:
            bad(key, f"must be >= 1, not {value}")
    for key in (
        "duration",
        "timeout",
        "precision",
        "slo_ttft_ms",
        "slo_tpot_ms",
        "slo_e2e_ms",
        "rate_min",
        "rate_max",
    ):
        value = getattr(spec, key)
        if value is not None and value <= 0:
            bad(key, f"must be > 0, not {value}")
    if not 0 < spec.slo_percentile <= 100:
        bad("slo_percentile", "must be in (0, 100]", "e.g. slo_percentile: 99")
    return problems


def _variants(
    values: dict[str, Any], loaded: LoadedRecipe, lines: dict[str, int], where: Any
) -> tuple[dict[str, Any], list[Problem]]:
    """Each variant laid over the base profile and checked by the serve profile's own validation."""
    from ernie_ops.serve.profile import validate as validate_profile

    variants: list[dict[str, Any]] = values["variants"]
    problems: list[Problem] = []
    if not variants:
        problems.append(error(where("variants"), "variants", "no variants", REQUIRED_FIX["variants"]))
    base = None
    if values.get("serve_profile"):
        base, more = load_yaml(Path(values["serve_profile"]).expanduser())
        problems += more
        if base is None:
            return {}, problems
    seen: set[str] = set()
    profiles: dict[str, Any] = {}
    for i, variant in enumerate(variants):
        key = f"variants[{i}]"
        if not isinstance(variant, dict):
            problems.append(
                error(where(key), key, "expected a mapping", "e.g. - {name: wint8, quantization: wint8}")
            )
            continue
        name = variant.get("name")
        if not isinstance(name, str) or not NAME.fullmatch(name):
            problems.append(
                error(
                    where(key),
                    f"{key}.name",
                    "not set" if name is None else f"{name!r}: letters, digits, '.', '_' and '-' only",
                    "every variant needs a name: its directory and its row in the report",
                )
            )
            continue
        if name in seen:
            problems.append(error(where(f"{key}.name"), f"{key}.name", f"{name!r} names two variants"))
        seen.add(name)
        merged = _Variant(
            path=loaded.path,
            values={
                **(base.values if base else {}),
                **{k: v for k, v in variant.items() if k not in VARIANT_KEYS},
            },
            lines={k: lines.get(f"{key}.{k}", lines.get(key, 0)) for k in variant},
            base=base,
            label=key,
        )
        if "model" not in variant and values.get("checkpoint"):
            merged.values["model"] = values["checkpoint"]
            merged.lines["model"] = lines.get("checkpoint", loaded.lines.get("checkpoint", 0))
        if "model" not in merged.values:
            problems.append(
                error(where(key), f"{key}.model", "no model", "set checkpoint: (for every variant) or model:")
            )
            continue
        if "port" in variant or "served_model_name" in variant:
            problems.append(
                error(
                    where(key),
                    key,
                    "port and served_model_name are the sweep's (a free port, the variant's name)",
                )
            )
        profile, more = validate_profile(merged)
        problems += [
            Problem(p.severity, p.where, f"{key}.{p.key}" if p.key else key, p.message, p.fix) for p in more
        ]
        if profile is not None:
            problems += _needs(profile, key, where)
            profiles[name] = profile
    return profiles, problems


def _needs(profile: Any, key: str, where: Any) -> list[Problem]:
    """What a sweep adds to the profile's rules: a llamacpp variant names the GGUF type its export
    is made in."""
    from ernie_ops.serve.profile import GGUF_QUANTIZATIONS

    if profile.engine == "llamacpp" and profile.quantization not in GGUF_QUANTIZATIONS:
        return [
            error(
                where(f"{key}.quantization"),
                f"{key}.quantization",
                "an engine: llamacpp variant needs the GGUF type its export is made in",
                f"quantization: one of {', '.join(GGUF_QUANTIZATIONS)}",
            )
        ]
    return []


@dataclass
class _Variant(LoadedRecipe):
    """A variant's profile values: its own keys are at their lines in the sweep, the base profile's
    in the profile."""

    base: LoadedRecipe | None = None
    label: str = ""

    def where(self, key: str | None = None) -> str:
        line = self.lines.get(key) if key else None
        if line:
            return f"{self.path}:{line}"
        if self.base is not None and key in self.base.values:
            return self.base.where(key)
        first = min((line for line in self.lines.values() if line), default=0)
        return f"{self.path}:{first}" if first else str(self.path)
