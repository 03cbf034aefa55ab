#!/usr/bin/env python
"""Benchmark the foundation's user-facing costs: CLI start-up (`--help` target < 1 s), `doctor`,
building the tiny models, and a tiny ERNIEKit SFT run on CPU (reference: about 8 s wall for 4 steps).

    .venv/bin/python scripts/bench_foundation.py              # table on stdout
    .venv/bin/python scripts/bench_foundation.py --repeat 5 --out runs/bench/foundation.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXE = shutil.which("ernie-ops", path=str(Path(sys.executable).parent)) or "ernie-ops"


def timed(cmd: list[str], repeat: int, cwd: Path = REPO) -> dict:
    walls = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
        walls.append(time.perf_counter() - start)
    return {"median_s": statistics.median(walls), "max_s": max(walls), "runs": len(walls)}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5, help="runs per fast command (default 5)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench" / "foundation.json")
    args = parser.parse_args()

    results: dict[str, dict] = {}
    targets = {}
    for sub in ("", "doctor", "models", "tiny-model"):
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

    width = max(map(len, results))
    print(f"{'what':{width}}  {'median s':>9}  {'max s':>7}  {'target s':>8}")
    for name, r in results.items():
        target = f"{targets[name]:.1f}" if name in targets else "-"
        print(f"{name:{width}}  {r['median_s']:9.3f}  {r['max_s']:7.3f}  {target:>8}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "results": results,
        "targets_s": targets,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
