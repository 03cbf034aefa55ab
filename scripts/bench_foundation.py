#!/usr/bin/env python
"""Benchmark the foundation's user-facing costs: CLI start-up (`--help` target < 1 s), `doctor`,
building the tiny models, and a tiny ERNIEKit SFT run on CPU (reference: about 8 s wall for 4 steps).

    .venv/bin/python scripts/bench_foundation.py              # table on stdout
    .venv/bin/python scripts/bench_foundation.py --repeat 5 --out runs/bench/foundation.json
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ernie_ops.benchmark import REPO, bench_parser, print_table, write_report
from ernie_ops.cli.main import SUBCOMMANDS

EXE = shutil.which("ernie-ops", path=str(Path(sys.executable).parent)) or "ernie-ops"


def timed(cmd: list[str], repeat: int, cwd: Path = REPO) -> dict:
    walls = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
        walls.append(time.perf_counter() - start)
    return {"median_s": statistics.median(walls), "max_s": max(walls), "runs": len(walls)}


def main() -> int:
    args = bench_parser(__doc__, "foundation").parse_args()

    results: dict[str, dict] = {}
    targets = {}
    for sub in ("", *(cls.name for cls in SUBCOMMANDS)):
        name = f"ernie-ops {sub} --help".replace("  ", " ")
        results[name] = timed([EXE, *([sub] if sub else []), "--help"], args.repeat)
        targets[name] = 1.0
    results["ernie-ops models"] = timed([EXE, "models"], args.repeat)
    targets["ernie-ops models"] = 1.0
    results["ernie-ops doctor"] = timed([EXE, "doctor"], 2)
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("dense", "moe"):
            results[f"ernie-ops tiny-model --kind {kind}"] = timed(
                [EXE, "tiny-model", f"{tmp}/{kind}", "--kind", kind, "--force"], 2
            )
        results["erniekit SFT, tiny dense, 4 steps (CPU)"] = timed(
            [
                sys.executable,
                "-m",
                "erniekit.launcher",
                "train",
                "recipes/tiny/sft_cpu.yaml",
                f"model_name_or_path={tmp}/dense",
                f"output_dir={tmp}/sft",
                "overwrite_output_dir=true",  # else the 2nd run auto-resumes from checkpoint-4
            ],
            2,
        )
        targets["erniekit SFT, tiny dense, 4 steps (CPU)"] = 8.0  # reference figure, not a hard target

    rows = [["what", "median s", "max s", "target s"]]
    for name, r in results.items():
        target = f"{targets[name]:.1f}" if name in targets else "-"
        rows.append([name, f"{r['median_s']:.3f}", f"{r['max_s']:.3f}", target])
    print_table(rows)
    write_report(args.out, results=results, targets_s=targets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
