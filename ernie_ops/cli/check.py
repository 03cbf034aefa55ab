from __future__ import annotations

import argparse
import json
from pathlib import Path

from ernie_ops.cli.base import Subcommand


class Check(Subcommand):
    name = "check"
    help = "validate an ERNIEKit recipe against ERNIEKit's own schema before launching it"
    description = (
        "Load a recipe the way ERNIEKit does (YAML + key=value overrides) and report every problem at "
        "once with file:line, the key, what was expected and a fix: unknown keys, wrong types, values "
        "ERNIEKit rejects or misreads, settings it overwrites silently, missing data or model files, "
        "data that does not match the stage, parallel degrees that do not divide the GPUs. Exit 0 when "
        "clean (warnings allowed), 1 on errors (or warnings with --strict), 2 when the command is misused."
    )
    examples = (
        "ernie-ops check recipes/ERNIE-4.5-0.3B/sft_8k.yaml",
        "ernie-ops check my.yaml max_steps=100 learning_rate=1.0e-5 --gpus 8 --nnodes 2",
        "ernie-ops check my.yaml --strict --format json --max-problems 0",
        "ernie-ops check --keys | grep lora",
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("recipe", nargs="?", type=Path, metavar="RECIPE.yaml")
        parser.add_argument("overrides", nargs="*", metavar="key=value", help="ERNIEKit-style overrides")
        parser.add_argument("--gpus", type=int, help="GPUs per node, to check parallel degrees")
        parser.add_argument("--nnodes", type=int, default=1, help="nodes (default 1)")
        parser.add_argument("--strict", action="store_true", help="warnings fail the check too")
        parser.add_argument("--format", choices=("text", "json"), default="text")
        parser.add_argument(
            "--max-problems",
            type=int,
            metavar="N",
            help="show the first N problems and count the rest (default 100; 0: all)",
        )
        parser.add_argument(
            "--erniekit-version",
            metavar="V",
            help="check against a shipped schema snapshot; `latest` is the newest (default: installed)",
        )
        parser.add_argument("--keys", action="store_true", help="list the valid keys with type and default")
        parser.add_argument(
            "--no-data-lint",
            action="store_true",
            help="do not lint the dataset files (only their first record)",
        )

    def run(self, args: argparse.Namespace) -> int:
        from ernie_ops.errors import UserError

        if args.keys:
            return _print_keys(args.erniekit_version)
        if args.recipe is None:
            raise UserError("give a recipe to check", hint="ernie-ops check recipes/tiny/sft_cpu.yaml")
        if (args.gpus is not None and args.gpus < 1) or args.nnodes < 1:
            raise UserError("--gpus and --nnodes must be at least 1")
        if args.max_problems is not None and args.max_problems < 0:
            raise UserError("--max-problems must be 0 (all) or more")
        from ernie_ops.recipe.check import SHOWN, check_recipe

        report = check_recipe(
            args.recipe,
            args.overrides,
            gpus=args.gpus,
            nnodes=args.nnodes,
            erniekit_version=args.erniekit_version,
            lint_data=not args.no_data_lint,
        )
        limit = SHOWN if args.max_problems is None else args.max_problems or None
        if args.format == "json":
            print(json.dumps(report.to_dict(limit), indent=2))
        else:
            print("\n".join(report.render(limit)))
        return report.exit_code(args.strict)


def _print_keys(version: str | None) -> int:
    from ernie_ops.recipe.schema import load_schema

    schema = load_schema(version)
    print(f"# {schema.describe()}: {len(schema.fields)} keys")
    for name in sorted(schema.fields):
        f = schema.fields[name]
        print(f"{name}\t{f.type}{'?' if f.optional else ''}\tdefault={f.default!r}")
    return 0
