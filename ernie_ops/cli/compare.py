from __future__ import annotations

import argparse
import json
from pathlib import Path

from ernie_ops.cli.base import Subcommand


class Compare(Subcommand):
    name = "compare"
    help = "compare two eval reports of the same suite: deltas, bootstrap intervals, a verdict"
    description = (
        "A is the baseline, B the candidate (e.g. bf16 vs wint4, base vs fine-tuned). Items pair by "
        "id; a paired bootstrap gives each metric's delta an interval. B regresses on a metric when "
        "its score is more than --max-drop below A's. Exit 0 no regression, 1 a regression, 2 bad input."
    )
    examples = (
        "ernie-ops compare runs/eval-bf16/eval.json runs/eval-wint4/eval.json",
        "ernie-ops compare runs/eval-base runs/eval-tuned --max-drop 0.0 --out runs/compare",
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("a", type=Path, metavar="A.json", help="baseline eval report (or its directory)")
        parser.add_argument("b", type=Path, metavar="B.json", help="candidate eval report (or its directory)")
        parser.add_argument(
            "--max-drop", type=float, default=0.02, help="allowed drop per metric (default 0.02)"
        )
        parser.add_argument("--confidence", type=float, default=0.95, help="interval level (default 0.95)")
        parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
        parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
        parser.add_argument("--out", type=Path, help="write compare.json, compare.md and compare.html here")
        parser.add_argument("--json", action="store_true", help="the comparison as JSON on stdout")

    def run(self, args: argparse.Namespace) -> int:
        from ernie_ops.text import format_table
        from ernie_ops.validate.compare import compare, load_items, markdown
        from ernie_ops.validate.report import write_report

        result = compare(
            load_items(args.a),
            load_items(args.b),
            str(args.a),
            str(args.b),
            max_drop=args.max_drop,
            confidence=args.confidence,
            resamples=args.resamples,
            seed=args.seed,
        )
        if args.out:
            from ernie_ops.files import write_text_atomic

            inputs = [args.a, args.b]
            args.out.mkdir(parents=True, exist_ok=True)
            write_text_atomic(
                args.out / "compare.json", json.dumps(result.to_json(), indent=2) + "\n", inputs
            )
            write_report(args.out, "compare", "# Comparison\n\n" + markdown(result), "comparison", inputs)
        if args.json:
            print(json.dumps(result.to_json(), indent=2))
        else:
            rows = [["metric", "n", "A", "B", "delta", f"{result.confidence:.0%} CI", "verdict"]]
            for m in result.metrics:
                ci = f"[{m.low:+.3f}, {m.high:+.3f}]"
                rows.append(
                    [m.metric, str(m.n), f"{m.a:.3f}", f"{m.b:.3f}", f"{m.delta:+.3f}", ci, m.verdict]
                )
            print(format_table(rows, right={1, 2, 3, 4}))
            verdict = "PASS" if result.passed else "FAIL: " + ", ".join(m.metric for m in result.regressions)
            print(f"\n{result.paired} paired items; max drop {result.max_drop:g}: {verdict}")
        return 0 if result.passed else 1
