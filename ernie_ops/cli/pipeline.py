from __future__ import annotations

import argparse
from pathlib import Path

from ernie_ops.cli.base import Subcommand, add_mask_argument, add_set_argument, masking_for
from ernie_ops.errors import UserError

STAGE_LIST = "check, lint, train, export, verify, serve, smoke, bench, eval, compare, stop, report"


class PipelineCommand(Subcommand):
    name = "pipeline"
    help = "recipe to validated endpoint: train, export, serve, smoke, bench, eval vs base, report"
    description = (
        f"Run every stage ({STAGE_LIST}) and write report.md / report.html with the verdict: SHIP when "
        "the smoke test passed, no metric fell more than max_drop below the base model, and the tuned "
        "model scores above it. A failed stage stops the pipeline with its diagnosis; --resume continues "
        "from there without redoing what passed. The export stage also makes what the serving engine "
        "reads: the transformers layout for vLLM, a GGUF file of the profile's quantization for llama.cpp "
        "(engine: llamacpp runs on CPU). The spec format: `python -m pydoc "
        "ernie_ops.pipeline.spec`. Exit 0 SHIP, 1 a stage failed or the verdict is DO NOT SHIP, 2 bad input."
    )
    examples = (
        "ernie-ops pipeline my-pipeline.yaml",
        "ernie-ops pipeline --recipe recipes/tiny/sft_lora_cpu.yaml --eval-suite suite.jsonl --name try",
        "ernie-ops pipeline my-pipeline.yaml --until verify            # train and check the checkpoint only",
        "ernie-ops pipeline --resume runs/support-bot-20261123-101500  # after fixing what failed",
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("spec", nargs="?", type=Path, metavar="PIPELINE.yaml")
        add_set_argument(parser, "a spec key")
        parser.add_argument("--recipe", help="instead of a spec file: the recipe")
        parser.add_argument("--eval-suite", help="instead of a spec file: the eval suite")
        parser.add_argument("--serve-profile", help="instead of a spec file: the serve profile (optional)")
        parser.add_argument("--name", help="instead of a spec file: the pipeline's name")
        parser.add_argument(
            "--resume", type=Path, metavar="DIR", help="continue a pipeline from where it stopped"
        )
        parser.add_argument("--until", metavar="STAGE", help=f"stop after this stage ({STAGE_LIST})")
        parser.add_argument(
            "--runs-dir", type=Path, default=Path("runs"), help="where pipeline directories go"
        )
        add_mask_argument(parser)

    def run(self, args: argparse.Namespace) -> int:
        from ernie_ops.pipeline.runner import Pipeline

        if args.resume is not None and (args.spec or args.recipe):
            raise UserError("--resume continues a pipeline as it was started: give no spec or recipe")
        with masking_for(args):  # the stages run in this process and read it, as eval and smoke do
            if args.resume is not None:
                return Pipeline.resume(args.resume).run(args.until)
            return Pipeline.create(_spec(args), args.runs_dir).run(args.until)


def _spec(args: argparse.Namespace):
    from ernie_ops.pipeline.spec import load_pipeline, validate

    if args.spec is not None:
        if args.recipe or args.eval_suite:
            raise UserError("give a PIPELINE.yaml or --recipe/--eval-suite, not both")
        if not args.spec.is_file():
            raise UserError(f"{args.spec}: no such pipeline file", hint="ernie-ops pipeline --help")
        return load_pipeline(args.spec, args.sets)
    if not (args.recipe and args.eval_suite):
        raise UserError(
            "give a PIPELINE.yaml, or at least --recipe and --eval-suite",
            hint="e.g. ernie-ops pipeline --recipe recipes/tiny/sft_lora_cpu.yaml --eval-suite suite.jsonl",
        )
    values = {"recipe": args.recipe, "eval_suite": args.eval_suite}
    if args.serve_profile:
        values["serve_profile"] = args.serve_profile
    if args.name:
        values["name"] = args.name
    import yaml

    for setting in args.sets:
        key, sep, value = setting.partition("=")
        if not sep:
            raise UserError(f"--set {setting!r}: expected key=value")
        values[key.strip()] = yaml.safe_load(value)
    spec, problems = validate(values)
    if spec is None:
        raise UserError("the pipeline flags have problems:\n" + "\n".join(p.render() for p in problems))
    return spec


class Demo(Subcommand):
    name = "demo"
    help = "the whole pipeline on this CPU: tiny model, a task, LoRA, serve, eval vs base, report"
    description = (
        "No GPU and no model hub needed: builds a tiny random ERNIE 4.5 model, writes a task it can "
        "learn in a minute (parity of unseen numbers), fine-tunes it with LoRA through the real "
        "ERNIEKit, exports and verifies the checkpoint, serves the tuned and the base model on the "
        "embedded CPU backend, smoke-tests and load-tests the endpoint, evaluates both on held-out "
        "numbers and writes runs/demo-<time>/report.html with the verdict. Then it sweeps the tuned "
        "model's weight formats into quantization/: fp32, wint8 and wint4 on the embedded engine, and "
        "q8_0 and q4_0 GGUF files on llama.cpp when the `llamacpp` extra is installed (the report says "
        'how to install it otherwise: pip install -e ".[llamacpp]"). A few minutes on 2 cores. '
        "Exit 0 when the verdict is SHIP."
    )
    examples = ("ernie-ops demo", "ernie-ops demo --seed 3 --runs-dir /tmp/runs")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--seed", type=int, default=0, help="model, data and training seed (default 0)")
        parser.add_argument(
            "--runs-dir", type=Path, default=Path("runs"), help="where the demo directory goes"
        )
        parser.add_argument("--until", metavar="STAGE", help=f"stop after this stage ({STAGE_LIST})")

    def run(self, args: argparse.Namespace) -> int:
        from ernie_ops.pipeline.demo import run_demo

        return run_demo(args.runs_dir, args.seed, args.until)
