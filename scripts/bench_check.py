#!/usr/bin/env python
"""How much sooner `ernie-ops check` reports a recipe mistake than ERNIEKit itself.

For each mistake, a copy of recipes/tiny/sft_cpu.yaml with that one mistake (and the tiny model,
built here) is given to `ernie-ops check` (wall time to the report, median of --repeat runs) and
to `python -m erniekit.launcher train` (wall time until it fails, or until it finishes without
noticing). On a GPU node ERNIEKit also loads a real model before most of these failures, so the
ratios here are lower bounds. Targets: check < 0.5 s and >= 20x faster.

Then hostile recipes (#14): N unknown keys (the time must grow linearly: the same microseconds
per key at every N), an alias bomb with and without an override, 5,000-deep YAML, each with a
deadline (a hang shows as "> DEADLINE").

    .venv/bin/python scripts/bench_check.py                 # table on stdout, JSON in runs/bench/
    .venv/bin/python scripts/bench_check.py --part hostile --keys 1000,20000,500000
    .venv/bin/python scripts/bench_check.py --part corpus    # ERNIEKit's own examples (#16)
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ernie_ops.benchmark import REPO, bench_parser, print_table, write_report

RECIPE = REPO / "recipes" / "tiny" / "sft_cpu.yaml"
EXE = shutil.which("ernie-ops", path=str(Path(sys.executable).parent)) or "ernie-ops"

# name -> (line to replace, replacement)
MISTAKES = {
    "typo: lerning_rate": ("learning_rate: 0.001", "lerning_rate: 0.001"),
    "YAML string 1e-3 as learning_rate": ("learning_rate: 0.001", "learning_rate: 1e-3"),
    "stage: sft (lower case)": ("stage: SFT", "stage: sft"),
    "compute_type: wint4": ("fine_tuning: Full", "fine_tuning: Full\ncompute_type: wint4"),
    "missing train file": (
        "train_dataset_path: recipes/data/sft-train.jsonl",
        "train_dataset_path: data/train.jsonl",
    ),
    "per_device_train_batch_size: 4 (overwritten)": ("batch_size: 1", "per_device_train_batch_size: 4"),
}


def timed(cmd: list[str], timeout: float = 600) -> tuple[float, int, str]:
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    return time.perf_counter() - start, result.returncode, result.stdout + result.stderr


def main() -> int:
    parser = bench_parser(__doc__, "check")
    parser.add_argument("--part", choices=("mistakes", "hostile", "corpus", "all"), default="all")
    parser.add_argument("--keys", default="1000,10000,100000,500000", help="unknown-key counts (hostile)")
    parser.add_argument("--deadline", type=float, default=300, help="seconds before a run counts as hung")
    args = parser.parse_args()
    report = {}
    if args.part in ("mistakes", "all"):
        report["results"] = mistakes(args.repeat)
    if args.part in ("hostile", "all"):
        report["hostile"] = hostile([int(n) for n in args.keys.split(",")], args.deadline)
    if args.part in ("corpus", "all"):
        report["corpus"] = corpus(args.repeat)
    write_report(args.out, **report, targets={"check_s": 0.5, "speedup": 20})
    return 0


def hostile(sizes: list[int], deadline: float) -> list[dict]:
    """`python -m ernie_ops check` (so PYTHONPATH can point at another checkout) on hostile recipes."""
    base = RECIPE.read_text()
    cases: list[tuple[str, str, list[str], int]] = []
    for n in sizes:
        unknown = "".join(f"unknown_key_{i:07d}: {i}\n" for i in range(n))
        cases.append((f"{n:,} unknown keys", base + unknown, [], n))
    lines = ['lol0: &lol0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"lol{i}: &lol{i} [" + ", ".join([f"*lol{i - 1}"] * 10) + "]" for i in range(1, 9)]
    bomb = base + "\n".join(lines) + "\n"
    cases.append(("alias bomb, 9 levels", bomb, [], 0))
    cases.append(("alias bomb, 9 levels, seed=1", bomb, ["seed=1"], 0))
    cases.append(("5,000-deep YAML", base + "eval_steps: " + "[" * 5000 + "]" * 5000 + "\n", [], 0))
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, text, overrides, keys in cases:
            recipe = Path(tmp) / "hostile.yaml"
            recipe.write_text(text)
            cmd = [sys.executable, "-m", "ernie_ops", "check", str(recipe), *overrides, "--no-data-lint"]
            try:
                seconds, code, out = timed(cmd, timeout=deadline)
                outcome = "traceback" if "Traceback" in out else f"exit {code}"
            except subprocess.TimeoutExpired:
                seconds, outcome = float(deadline), "hung"
            results.append(
                {
                    "case": name,
                    "mb": round(len(text.encode()) / 1e6, 2),
                    "s": round(seconds, 2),
                    "us_per_key": round(seconds / keys * 1e6, 1) if keys else None,
                    "outcome": outcome,
                }
            )
    rows = [["hostile recipe", "MB", "s", "us/key", "outcome"]]
    for r in results:
        shown = f"> {r['s']:.0f}" if r["outcome"] == "hung" else f"{r['s']:.2f}"
        per_key = f"{r['us_per_key']:.1f}" if r["us_per_key"] is not None else ""
        rows.append([r["case"], f"{r['mb']:.2f}", shown, per_key, r["outcome"]])
    print()
    print_table(rows)
    return results


def corpus(repeat: int) -> list[dict]:
    """`ernie-ops check --erniekit-version latest` on each of ERNIEKit's example configs
    (tests/erniekit_examples): the whole command, from its own directory (so upstream's relative
    data paths are looked up there), median of --repeat runs; and check_recipe alone, in this
    process once the schema is loaded (what the command adds to Python's and the CLI's start-up)."""
    from ernie_ops.recipe.check import check_recipe

    root = REPO / "tests" / "erniekit_examples"
    results: list[dict[str, Any]] = []
    for path in sorted(root.rglob("*.yaml")):
        runs = [timed([EXE, "check", str(path), "--erniekit-version", "latest"]) for _ in range(repeat)]
        errors = runs[0][2].count(" error: ")
        inside = []
        for _ in range(repeat + 1):
            start = time.perf_counter()
            check_recipe(path, erniekit_version="latest", cwd=REPO)
            inside.append(time.perf_counter() - start)
        results.append(
            {
                "config": str(path.relative_to(root)),
                "check_s": round(statistics.median(r[0] for r in runs), 3),
                "in_process_ms": round(statistics.median(inside[1:]) * 1000, 1),
                "errors": errors,
            }
        )
    rows = [["ERNIEKit example", "check s", "in-process ms", "errors (paths included)"]]
    rows += [
        [r["config"], f"{r['check_s']:.3f}", f"{r['in_process_ms']:.1f}", str(r["errors"])] for r in results
    ]
    print()
    print_table(rows)
    slowest = max(r["check_s"] for r in results)
    median = statistics.median(r["check_s"] for r in results)
    print(f"\ncorpus: median {median:.3f} s, slowest {slowest:.3f} s per recipe (target < 0.5 s)")
    return results


def mistakes(repeat: int) -> list[dict]:
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "tiny"
        subprocess.run([EXE, "-q", "tiny-model", str(model)], check=True)
        base = RECIPE.read_text().replace(
            "model_name_or_path: runs/tiny-dense", f"model_name_or_path: {model}"
        )
        for name, (old, new) in MISTAKES.items():
            assert old in base, old
            recipe = Path(tmp) / f"{len(results)}.yaml"
            recipe.write_text(base.replace(old, new))
            checks = [timed([EXE, "check", str(recipe)]) for _ in range(repeat)]
            check_s = statistics.median(c[0] for c in checks)
            check_out = checks[0][2]
            flagged = " error: " in check_out or " warning: " in check_out
            out_dir = Path(tmp) / f"out{len(results)}"
            ek_s, ek_rc, _ = timed(
                [sys.executable, "-m", "erniekit.launcher", "train", str(recipe), f"output_dir={out_dir}"]
            )
            results.append(
                {
                    "mistake": name,
                    "check_s": round(check_s, 3),
                    "check_flagged": flagged,
                    "erniekit_s": round(ek_s, 2),
                    "erniekit_reported": ek_rc != 0,
                    "speedup": round(ek_s / check_s, 1),
                }
            )

    rows = [["mistake", "check s", "flagged", "ERNIEKit s", "ERNIEKit", "speedup"]]
    for r in results:
        ek = "failed" if r["erniekit_reported"] else "ran on, said nothing"
        rows.append(
            [
                r["mistake"],
                f"{r['check_s']:.3f}",
                "yes" if r["check_flagged"] else "NO",
                f"{r['erniekit_s']:.2f}",
                ek,
                f"{r['speedup']:.1f}x",
            ]
        )
    print_table(rows)
    worst = min(r["speedup"] for r in results)
    slowest = max(r["check_s"] for r in results)
    print(f"\ncheck: slowest {slowest:.3f} s (target < 0.5 s); smallest speedup {worst:.1f}x (target >= 20x)")
    return results


if __name__ == "__main__":
    sys.exit(main())
