"""`ernie-ops demo`: the whole pipeline on a fresh CPU machine, no GPU and no model hub.

It builds the tiny random ERNIE 4.5 model, writes a task it can learn in a minute of CPU (parity of
unseen numbers, `demo_task.py`), renders the tiny LoRA recipe from the library for that model and
data, and runs `ernie-ops pipeline` on it: check, lint, LoRA training with the real ERNIEKit,
export (merge), verify, the embedded server for the tuned and the base model, smoke test, a short
load test, evaluation of both on the held-out numbers, comparison, report. Then a quantization
step: `ernie-ops sweep` serves the tuned model as fp32, wint8 and wint4 (FastDeploy's weight-only
schemes, emulated by the embedded engine) and, when llama-cpp-python is installed (the `llamacpp`
extra), as q8_0 and q4_0 GGUF files on llama.cpp; the report gains their trade-off table (and says
how to install llama.cpp when its variants were left out). Everything
lands in one directory, `runs/demo-<time>/`: `inputs/` (model, task data, recipe, sweep.yaml),
`pipeline.yaml` (rerun it with `ernie-ops pipeline`), the training run, `quantization/` (the sweep)
and `report.md` / `report.html`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import yaml

from ernie_ops.pipeline.demo_task import DEMO_SPEC, write_demo_task
from ernie_ops.pipeline.runner import Pipeline
from ernie_ops.pipeline.spec import PipelineSpec


def prepare_demo(directory: Path, seed: int = 0, echo: Callable[[str], None] = print) -> PipelineSpec:
    """The model, task, recipe and pipeline spec of a demo in `directory`."""
    from ernie_ops.recipe.library import find_entry
    from ernie_ops.recipe.render import render
    from ernie_ops.tiny_model import build_tiny_model

    inputs = directory / "inputs"
    echo(f"[demo] building the tiny ERNIE 4.5 model (seed {seed}) in {inputs / 'model'}")
    model = build_tiny_model(inputs / "model", kind="dense", seed=seed, spec=DEMO_SPEC)
    task = write_demo_task(inputs / "task", seed)
    echo(f"[demo] task: {task.train.name} and a held-out suite of unseen numbers ({task.suite})")
    entry = find_entry("tiny", "sft-lora", 256)
    settings = {**entry.settings, "model_name_or_path": str(model), "output_dir": "output"}
    title = ["# ernie-ops demo: SFT with LoRA of the tiny model on the parity task (see pipeline.yaml)"]
    recipe = inputs / "recipe.yaml"
    recipe.write_text(render(entry, settings, title=title), encoding="utf-8")
    spec = PipelineSpec(
        name="demo",
        recipe=str(recipe),
        overrides=task.override_args(),
        eval_suite=str(task.suite),
        eval_max_tokens=task.max_tokens,
        eval_concurrency=4,
        bench_concurrency=[1, 4],
        bench_num_prompts=16,
        bench_output_len=16,
        bench_ignore_eos=True,  # the tuned model answers in 2 tokens: load it with full-length outputs
        compare_base=True,
        max_drop=0.0,
    )
    (directory / "pipeline.yaml").write_text(
        yaml.safe_dump(spec.to_json(), sort_keys=False), encoding="utf-8"
    )
    return spec


# the embedded engine's weight formats: float32 (its "bf16", the profile default), FastDeploy's
# weight-only int8 and int4 applied at load
QUANTIZATIONS = {"fp32": "bf16", "wint8": "wint8", "wint4": "wint4"}
# GGUF files served by llama.cpp on the CPU (the optional `llamacpp` extra), when it is installed
LLAMACPP_QUANTIZATIONS = ("q8_0", "q4_0")
LLAMACPP_INSTALL = 'pip install -e ".[llamacpp]"'  # compiles llama.cpp: about 10-12 min on 2 cores


def llamacpp_unavailable() -> str | None:
    """Why the llama.cpp variants cannot run here (the engine's own check), None when they can."""
    from ernie_ops.serve.backends import get

    return get("llamacpp").unavailable()


def write_quantization_sweep(
    directory: Path, checkpoint: str, spec: PipelineSpec, llamacpp: bool = False
) -> Path:
    """inputs/sweep.yaml: the tuned checkpoint in each weight format (with `llamacpp`, also as q8_0
    and q4_0 GGUF files on llama.cpp), on the pipeline's suite, with a short closed-loop load like the
    pipeline's (rerun it with `ernie-ops sweep`)."""
    variants = [{"name": name, "engine": "paddle", "quantization": q} for name, q in QUANTIZATIONS.items()]
    if llamacpp:  # the sweep exports each GGUF once, into quantization/exports/
        variants += [{"name": q, "engine": "llamacpp", "quantization": q} for q in LLAMACPP_QUANTIZATIONS]
    sweep = {
        "name": "demo-quantization",
        "checkpoint": checkpoint,
        "variants": variants,
        "eval_suite": spec.eval_suite,
        "eval_max_tokens": spec.eval_max_tokens,
        "eval_concurrency": spec.eval_concurrency,
        "smoke_expect": [],  # the tiny model is in no catalog: the basic checks only, as the pipeline's
        "max_drop": 0.05,
        "load": {
            "concurrency": [4],
            "num_prompts": spec.bench_num_prompts,
            "output_len": spec.bench_output_len,
            "ignore_eos": True,
            "slo_ttft_ms": 2000.0,
        },
    }
    from ernie_ops.files import write_text_atomic

    path = directory / "inputs" / "sweep.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "# ernie-ops demo's quantization step: ernie-ops sweep inputs/sweep.yaml\n"
    return write_text_atomic(path, header + yaml.safe_dump(sweep, sort_keys=False))


def quantization_step(pipeline: Pipeline, echo: Callable[[str], None] = print) -> int | None:
    """The tuned export served as fp32, wint8 and wint4 (and as q8_0 and q4_0 on llama.cpp when it is
    installed; the report says how to install it when it is not) by `ernie-ops sweep` into
    quantization/, then the pipeline report written again with their trade-off table; the sweep's
    exit status (None when the pipeline has no verified export to serve)."""
    from ernie_ops.pipeline.report import write_pipeline_report
    from ernie_ops.sweep.runner import Sweep
    from ernie_ops.sweep.spec import load_sweep

    checkpoint = pipeline.record.out("export", "path")
    if not checkpoint or pipeline.record.stages["verify"].status != "passed":
        return None
    directory = pipeline.record.path
    why = llamacpp_unavailable()
    names = [*QUANTIZATIONS, *(() if why else LLAMACPP_QUANTIZATIONS)]
    echo(f"[demo] quantization: the tuned model served as {listed(names)} (ernie-ops sweep)")
    if why:
        echo(f"[demo] llama.cpp's {listed(LLAMACPP_QUANTIZATIONS)} left out: {why}; {LLAMACPP_INSTALL}")
    pipeline.record.demo = {"llamacpp_left_out": why} if why else {}
    pipeline.record.save()
    written = write_quantization_sweep(directory, str(checkpoint), pipeline.spec, llamacpp=why is None)
    sweep_spec, profiles = load_sweep(written)
    code = Sweep.create(sweep_spec, profiles, directory=directory / "quantization").run()
    write_pipeline_report(pipeline.record)
    return code


def listed(names: list[str] | tuple[str, ...]) -> str:
    """'a, b and c'."""
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else "".join(names)


def run_demo(runs_dir: Path = Path("runs"), seed: int = 0, until: str | None = None) -> int:
    directory = (runs_dir / f"demo-{dt.datetime.now():%Y%m%d-%H%M%S}").resolve()
    directory.mkdir(parents=True)
    spec = prepare_demo(directory, seed)
    pipeline = Pipeline.create(spec, directory=directory)
    code = pipeline.run(until)
    tuned, base = pipeline.record.out("eval", "tuned"), pipeline.record.out("eval", "base")
    if tuned and base:
        print(f"[demo] held-out accuracy: tuned {tuned['score']:.3f}, base {base['score']:.3f}")
    if until is None:  # the whole demo: the verdict is the pipeline's, the sweep adds its table
        quantization_step(pipeline)
        print(f"[demo] report: {directory / 'report.html'}")
    return code
