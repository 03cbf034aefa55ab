from __future__ import annotations

import argparse
from pathlib import Path

from ernie_ops.cli.base import Subcommand, add_set_argument
from ernie_ops.errors import UserError


class SweepCommand(Subcommand):
    name = "sweep"
    help = "serve variants one at a time (quantization, engine, batch...), eval + load each, trade-off report"
    description = (
        "For each variant of SWEEP.yaml in turn (any serve-profile fields over a base profile): prepare "
        "the export its engine needs (GGUF for llamacpp, the transformers layout for vllm), serve it, "
        "smoke-test, evaluate and load it, record its memory and stop it. A variant that fails is "
        "recorded with its diagnosis and the sweep goes on. Then report.md / report.html / report.json: "
        "quality with paired bootstrap intervals against the first variant, TTFT / TPOT p50 / p99, "
        "sustainable rate under the SLO, output tok/s, memory, tok/s per GiB, a Pareto chart, and the "
        "cheapest (least memory) variant within max_drop of the reference that met the SLO. The format: "
        "`python -m pydoc ernie_ops.sweep.spec`. Exit 0 when a variant is recommended, 1 when none "
        "qualifies, 2 bad input, 130 interrupted (continue with --resume)."
    )
    examples = (
        "ernie-ops sweep my-sweep.yaml",
        "ernie-ops sweep recipes/sweeps/ERNIE-4.5-21B-A3B_quantization.yaml --print-command",
        "ernie-ops sweep my-sweep.yaml --set checkpoint=runs/support-bot --out sweeps/support-bot",
        "ernie-ops sweep --resume sweeps/quant-20261204-101500   # retries failed and unfinished variants",
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("spec", nargs="?", type=Path, metavar="SWEEP.yaml")
        add_set_argument(parser, "a spec key")
        parser.add_argument(
            "--out", type=Path, metavar="DIR", help="the sweep's directory (default: a new one)"
        )
        parser.add_argument(
            "--sweeps-dir",
            type=Path,
            default=Path("sweeps"),
            help="where new sweep directories go (default sweeps/)",
        )
        parser.add_argument(
            "--resume", type=Path, metavar="DIR", help="continue a sweep: retries what did not pass"
        )
        parser.add_argument(
            "--print-command",
            action="store_true",
            help="print each variant's serve command (and the export it needs) and exit; runs nothing",
        )

    def run(self, args: argparse.Namespace) -> int:
        from ernie_ops.sweep.runner import Sweep
        from ernie_ops.sweep.spec import load_sweep

        if args.resume is not None:
            if args.spec or args.sets or args.out or args.print_command:
                raise UserError(
                    "--resume continues a sweep as it was started: "
                    "give no spec, --set, --out or --print-command"
                )
            return Sweep.resume(args.resume).run()
        if args.spec is None:
            raise UserError("give a SWEEP.yaml (or --resume DIR)", hint="ernie-ops sweep --help")
        if not args.spec.is_file():
            raise UserError(f"{args.spec}: no such sweep file", hint="ernie-ops sweep --help")
        spec, profiles = load_sweep(args.spec, args.sets, check_files=not args.print_command)
        if args.print_command:
            return print_commands(spec, profiles)
        return Sweep.create(spec, profiles, args.sweeps_dir, args.out).run()


def print_commands(spec, profiles) -> int:
    """Each variant's serve command as `ernie-ops serve --print-command` shows it (the sweep serves
    on a free port instead of the profile's), after the export a local checkpoint needs first."""
    import ernie_ops.serve as serve
    from ernie_ops.serve.exports import needed

    for name in spec.variant_names():
        profile = profiles[name]
        need = needed(profile)
        first = ""
        local = Path(profile.model).expanduser()
        # llama.cpp serves only GGUF files; vLLM reads a hub id itself, a local Paddle checkpoint not
        if need and (local.is_dir() if need[0] == "hf" else local.suffix != ".gguf"):
            quant = f" --quant {need[1]}" if need[1] else ""
            first = (
                f"  (first: ernie-ops export {profile.model} --format {need[0]}{quant}; the export is served)"
            )
        print(f"# {name}{first}")
        print(serve.command(profile).shown())
    return 0
