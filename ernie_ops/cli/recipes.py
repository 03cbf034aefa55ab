from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ernie_ops.cli.base import Subcommand
from ernie_ops.text import format_table


class Recipes(Subcommand):
    name = "recipes"
    help = "list the recipe library, or write a starting recipe for your data"
    description = (
        "`ernie-ops recipes` lists the shipped ERNIEKit recipes (model, method, context, minimum GPUs). "
        "`ernie-ops recipes new` writes one of them filled in with your data and model paths, then "
        "checks it."
    )
    examples = (
        "ernie-ops recipes",
        "ernie-ops recipes --model ERNIE-4.5-21B-A3B --json",
        "ernie-ops recipes new --model ERNIE-4.5-21B-A3B --method sft-lora --seq 32768 "
        "--train data/train.jsonl --eval data/eval.jsonl -o my.yaml",
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--model", help="only this model (catalog name or hub id); `tiny` for CPU recipes"
        )
        parser.add_argument("--json", action="store_true", help="machine-readable list")
        actions = parser.add_subparsers(dest="action", metavar="new")
        new = actions.add_parser(
            "new",
            help="write a starting recipe from the library",
            description="Write a library recipe filled in for your data, then check it.",
            epilog="examples:\n  " + self.examples[-1],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        new.add_argument("--model", required=True, dest="new_model", help="e.g. ERNIE-4.5-21B-A3B (or tiny)")
        new.add_argument("--method", required=True, help="sft, sft-lora, sft-wint4-lora, dpo, dpo-lora, ...")
        new.add_argument("--seq", type=int, default=8192, help="context length: 8192 or 32768 (default 8192)")
        new.add_argument("--train", help="training data (JSONL, ERNIEKit format)")
        new.add_argument("--eval", help="evaluation data (JSONL, ERNIEKit format)")
        new.add_argument("--model-path", help="local model directory (default: the hub id as a local path)")
        new.add_argument("--output-dir", help="where ERNIEKit writes checkpoints (default ./output)")
        new.add_argument("-o", "--out", type=Path, required=True, help="the recipe file to write")
        new.add_argument("--force", action="store_true", help="overwrite --out if it exists")

    def run(self, args: argparse.Namespace) -> int:
        if args.action == "new":
            return _new(args)
        from ernie_ops.catalog import find_model
        from ernie_ops.recipe.library import LIBRARY
        from ernie_ops.recipe.render import relative

        entries = LIBRARY
        if args.model:
            name = "tiny" if args.model == "tiny" else find_model(args.model).name
            entries = [e for e in LIBRARY if e.model == name]
        rows: list[dict[str, Any]] = [
            {
                "model": e.model,
                "method": e.method,
                "context": e.seq,
                "min_gpus": 0 if e.model == "tiny" else e.min_gpus,
                "erniekit": e.erniekit or "",
                "path": relative(e),
            }
            for e in entries
        ]
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        table = [["model", "method", "context", "GPUs (80 GB)", "ERNIEKit", "recipe"]]
        for r in rows:
            gpus = str(r["min_gpus"] or "CPU")
            table.append([r["model"], r["method"], _context(r["context"]), gpus, r["erniekit"], r["path"]])
        print(format_table(table))
        return 0


def _context(tokens: int) -> str:
    return f"{tokens // 1024}K" if tokens >= 1024 else str(tokens)


def _new(args: argparse.Namespace) -> int:
    from ernie_ops.errors import UserError
    from ernie_ops.files import write_text_atomic
    from ernie_ops.recipe.check import check_recipe
    from ernie_ops.recipe.library import find_entry, tiny_length
    from ernie_ops.recipe.render import header, relative, render

    entry = find_entry(args.new_model, args.method, args.seq)
    if args.out.exists() and not args.force:
        raise UserError(f"{args.out} already exists", hint="choose another -o or pass --force")
    if args.out.suffix not in (".yaml", ".yml"):
        raise UserError(f"{args.out}: ERNIEKit reads recipes only from .yaml/.yml files", hint="-o my.yaml")
    settings = dict(entry.settings)
    for key, value in (
        ("train_dataset_path", args.train),
        ("eval_dataset_path", args.eval),
        ("model_name_or_path", args.model_path),
        ("output_dir", args.output_dir),
    ):
        if value is not None:
            settings[key] = value
    if entry.model == "tiny":  # the library's 4 steps test the stack; a recipe for your data must learn
        settings |= tiny_length(settings)
    title = [f"# Written by `ernie-ops recipes new` from {relative(entry)}; edit freely.", *header(entry)]
    text = render(entry, settings, title=title)
    write_text_atomic(args.out, text)  # never over a FIFO or device; follows the umask
    print(f"wrote {args.out} (max_steps: {settings['max_steps']}; change it there or with max_steps=N)")
    print("\n".join(check_recipe(args.out).render(limit=None)))
    return 0  # written: problems such as a model not pulled yet are for `check` / `train` to refuse
