"""PIPELINE.yaml: what `ernie-ops pipeline` runs, validated like recipes (file:line, what, a fix).

    name: support-bot                   # the run directory is runs/<name>-<time>/
    recipe: recipes/ERNIE-4.5-21B-A3B/sft_lora_8k.yaml
    overrides: [train_dataset_path=data/train.jsonl, eval_dataset_path=data/eval.jsonl]
    serve_profile: recipes/serve/ERNIE-4.5-21B-A3B_wint4_1x80G.yaml   # optional
    serve_set: [max_model_len=8192]     # profile overrides (`model` and the port are the pipeline's)
    engine: null                        # fastdeploy | vllm | paddle | llamacpp | null: FastDeploy where
                                        # it can run (`backend:`, its old name, is still read, with a warning)
    smoke_expect: [thinking]            # optional; default: what the catalog says of the base model
    eval_suite: data/eval_suite.jsonl
    eval_judge: exact                   # judge of items without their own
    eval_box_space: pixels              # iou answers' coordinates: pixels | norm1000 | norm1
    eval_max_tokens: 256
    eval_concurrency: 4
    eval_body: {}                       # extra request fields, e.g. chat_template_kwargs
    compare_base: true                  # also serve and evaluate the base model
    max_drop: 0.0                       # how far below the base any metric may fall
    bench_concurrency: [1, 8]           # the load benchmark; [] skips it
    bench_num_prompts: 32
    bench_output_len: 64
    bench_ignore_eos: false             # true: every request generates bench_output_len tokens

The engine decides what the export stage makes besides the verified Paddle checkpoint: vLLM reads the
transformers layout (`ernie-ops export RUN --format hf`), llama.cpp one GGUF file of the profile's
`quantization` (f32 | f16 | q8_0 | q4_0; f16 when the profile keeps its default). It is made into the
training run and recorded in its run.json, as `ernie-ops export` makes it; the base model's, for the
comparison, goes into the pipeline's `exports/`. On a CPU machine, llama.cpp (the `llamacpp` extra):

    engine: llamacpp
    serve_set: [quantization=q4_0]

Relative paths resolve against the current directory, as ERNIEKit resolves a recipe's. The verdict
is SHIP when the smoke test passed, no metric fell more than `max_drop` below the base, and the
tuned model's overall score is above the base's (a fine-tune that changes nothing is not shipped).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ernie_ops.recipe.problems import Problem, error
from ernie_ops.spec import check_fields, load_yaml, missing, raise_problems, text_overrides


@dataclass
class PipelineSpec:
    recipe: str
    eval_suite: str
    name: str = "pipeline"
    overrides: list[str] = field(default_factory=list)
    serve_profile: str | None = None
    serve_set: list[str] = field(default_factory=list)
    engine: str | None = None
    smoke_expect: list[str] | None = None
    eval_judge: str = "exact"
    eval_box_space: str = "pixels"
    eval_max_tokens: int = 256
    eval_concurrency: int = 4
    eval_body: dict[str, Any] = field(default_factory=dict)
    compare_base: bool = True
    max_drop: float = 0.0
    bench_concurrency: list[int] = field(default_factory=lambda: [1, 4])
    bench_num_prompts: int = 16
    bench_output_len: int = 32
    bench_ignore_eos: bool = False
    startup_timeout: float | None = None  # seconds for a server to become ready (default: the profile's)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


REQUIRED_FIX = {"recipe": "recipe: path/to/file", "eval_suite": "eval_suite: path/to/file"}
REQUIRED = tuple(REQUIRED_FIX)
PATHS = ("recipe", "eval_suite", "serve_profile")


def load_pipeline(path: Path, sets: list[str] | tuple[str, ...] = ()) -> PipelineSpec:
    """The validated spec, or one UserError listing every problem (`file:line: ...`)."""
    loaded, problems = load_yaml(path, sets)
    spec = None
    if loaded is not None:
        spec, more = validate(text_overrides(PipelineSpec, loaded), loaded.where)
        problems += more
    raise_problems(
        f"the pipeline {path} has problems",
        problems,
        hint="the format is in `python -m pydoc ernie_ops.pipeline.spec`",
    )
    assert spec is not None
    return spec


def validate(
    values: dict[str, Any], where: Any = lambda key=None: "flags"
) -> tuple[PipelineSpec | None, list[Problem]]:
    """Check types (ernie_ops.spec), required keys, files that must exist and the values with a
    fixed set of choices; every problem at once."""
    from ernie_ops.serve.profile import take_engine_alias

    values = dict(values)
    alias_problems = take_engine_alias(values, where)
    clean, problems = check_fields(PipelineSpec, values, where, "pipeline")
    problems += alias_problems
    problems += missing(PipelineSpec, values, where, REQUIRED_FIX)
    for key in PATHS:
        if isinstance(clean.get(key), str) and not Path(clean[key]).expanduser().is_file():
            problems.append(error(where(key), key, f"{clean[key]}: no such file"))
    problems += _choices(clean, where)
    if any(p.severity == "error" for p in problems):
        return None, problems
    return PipelineSpec(**clean), problems


def _choices(values: dict[str, Any], where: Any) -> list[Problem]:
    from ernie_ops.serve.backends import names as backend_names

    out = []
    backends = backend_names()  # every module in serve/backends/
    if values.get("engine") not in (None, *backends):
        expected = f"expected {', '.join(backends)} or null, not {values['engine']!r}"
        out.append(error(where("engine"), "engine", expected))
    out += validation_choices(values, where)
    for key in ("overrides", "serve_set"):
        for item in values.get(key) or ():
            if "=" not in item:
                out.append(error(where(key), key, f"{item!r} is not key=value"))
    levels = values.get("bench_concurrency") or []
    if not all(c > 0 for c in levels):
        out.append(
            error(
                where("bench_concurrency"), "bench_concurrency", f"expected positive integers, got {levels!r}"
            )
        )
    for key in ("bench_num_prompts", "bench_output_len"):
        if key in values and values[key] < 1:
            out.append(error(where(key), key, f"must be >= 1, not {values[key]}"))
    return out


def validation_choices(values: dict[str, Any], where: Any) -> list[Problem]:
    """The smoke and eval keys a pipeline and a sweep share: eval_judge, eval_box_space, smoke_expect,
    eval_max_tokens, eval_concurrency."""
    from ernie_ops.validate.judges import BOX_SPACES, JUDGES
    from ernie_ops.validate.smoke import CAPABILITIES

    out = []
    if values.get("eval_judge", "exact") not in JUDGES:
        out.append(error(where("eval_judge"), "eval_judge", f"expected one of {', '.join(JUDGES)}"))
    if values.get("eval_box_space", "pixels") not in BOX_SPACES:
        out.append(
            error(where("eval_box_space"), "eval_box_space", f"expected one of {', '.join(BOX_SPACES)}")
        )
    for cap in values.get("smoke_expect") or ():
        if cap not in CAPABILITIES:
            out.append(
                error(
                    where("smoke_expect"),
                    "smoke_expect",
                    f"{cap!r}: expected one of {', '.join(CAPABILITIES)}",
                )
            )
    for key in ("eval_max_tokens", "eval_concurrency"):
        if key in values and values[key] < 1:
            out.append(error(where(key), key, f"must be >= 1, not {values[key]}"))
    return out
