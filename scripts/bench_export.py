#!/usr/bin/env python
"""`ernie-ops export --format hf` at the real ERNIE-4.5-0.3B shape: time and peak memory.

The random 0.3B-shaped checkpoint of scripts/bench_serve_cpu.py (hidden 1024, 18 layers, 16 heads /
2 KV heads, head_dim 128, intermediate 3072, vocab 103424, tied embeddings; float32, built once with
ERNIEKit's classes and cached) is converted to the transformers layout by the real command line
(`ernie-ops export CKPT --format hf --out DIR --no-forward --json`: conversion plus the header-only
verification) in a child process per run, which reports its own peak resident set size
(getrusage ru_maxrss) and its RSS once everything is imported, before the conversion starts.

Target (issue #17): peak RSS of the exporting process below 1.5x the checkpoint's size (its
safetensors bytes). The first run may read the checkpoint from disk, later ones from the page cache
(which is not counted in a process's RSS: the conversion reads with plain reads, no mmap).

    .venv/bin/python scripts/bench_export.py              # 3 runs, JSON to runs/bench/export.json
    .venv/bin/python scripts/bench_export.py --repeat 1 --max-shard-size 500MB
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ernie_ops.benchmark import REPO, bench_parser, print_table, write_report

TARGET = 1.5  # peak RSS / checkpoint bytes


def _serve_bench() -> Any:
    """scripts/bench_serve_cpu.py, for its cached 0.3B-shaped checkpoint (one definition of it)."""
    spec = importlib.util.spec_from_file_location("bench_serve_cpu", REPO / "scripts" / "bench_serve_cpu.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rss_now() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def child(src: str, out: str, shard: str) -> int:
    """One export through the CLI in this process; one JSON line of measurements on stdout's last
    line (the CLI's own JSON comes before it)."""
    import ernie_ops.cli.main as cli_main  # everything the command imports, before the baseline
    import ernie_ops.train.export as _export

    assert _export.convert is not None

    baseline = _rss_now()
    argv = [
        "export",
        src,
        "--format",
        "hf",
        "--out",
        out,
        "--no-forward",
        "--json",
        "--max-shard-size",
        shard,
    ]
    started = time.perf_counter()
    code = cli_main.main(argv)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(
        json.dumps({"rc": code, "seconds": seconds, "peak_rss": peak, "baseline_rss": baseline}), flush=True
    )
    return 0


def weights_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("*.safetensors"))


def main() -> int:
    parser = bench_parser(__doc__, "export", repeat=3)
    parser.add_argument("--model-dir", type=Path, default=None, help="the cached 0.3B-shaped checkpoint")
    parser.add_argument("--max-shard-size", default="5GB", help="as `ernie-ops export` (default 5GB)")
    parser.add_argument("--child", nargs=3, metavar=("SRC", "OUT", "SHARD"), help=argparse_hidden())
    args = parser.parse_args()
    if args.child:
        return child(*args.child)

    serve = _serve_bench()
    model = serve.build_model(args.model_dir or serve.DEFAULT_MODEL_DIR)
    size = weights_bytes(model)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ernie-ops-bench-export-", dir=model.parent) as tmp:
        for i in range(args.repeat):
            out = Path(tmp) / f"hf-{i}"
            cmd = [sys.executable, __file__, "--child", str(model), str(out), args.max_shard_size]
            result = subprocess.run(
                cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
            )
            lines = result.stdout.strip().splitlines()
            if result.returncode != 0 or not lines:
                print(result.stdout[-2000:] + result.stderr[-3000:], file=sys.stderr)
                return 1
            measured = json.loads(lines[-1])
            exported = json.loads("\n".join(lines[:-1]))
            if measured["rc"] != 0 or not exported["verify"]["ok"]:
                print(result.stdout[-3000:] + result.stderr[-2000:], file=sys.stderr)
                return 1
            measured.update(
                out_bytes=weights_bytes(out), files=exported["files"], tensors=exported["tensors"]
            )
            runs.append(measured)
            print(
                f"run {i + 1}/{args.repeat}: {measured['seconds']:.1f} s, "
                f"peak RSS {measured['peak_rss'] / 2**20:,.0f} MiB",
                flush=True,
            )
            shutil.rmtree(out)
    peak = max(r["peak_rss"] for r in runs)
    baseline = max(r["baseline_rss"] for r in runs)
    seconds = statistics.median(r["seconds"] for r in runs)
    ratio = peak / size
    mib = 2**20
    rows = [
        ["ERNIE-4.5-0.3B shape, float32", "value"],
        ["checkpoint (Paddle safetensors)", f"{size / mib:,.0f} MiB"],
        [
            "export (transformers safetensors)",
            f"{runs[0]['out_bytes'] / mib:,.0f} MiB in {runs[0]['files']} file(s)",
        ],
        ["export time (median)", f"{seconds:.1f} s"],
        ["export time (each run)", ", ".join(f"{r['seconds']:.1f}" for r in runs) + " s"],
        ["peak RSS of the exporting process", f"{peak / mib:,.0f} MiB"],
        ["  of which imports (RSS before)", f"{baseline / mib:,.0f} MiB"],
        ["peak RSS / checkpoint size", f"{ratio:.2f}x (target < {TARGET}x)"],
        ["throughput", f"{size / mib / seconds:,.0f} MiB/s read"],
    ]
    print()
    print_table(rows)
    met = ratio < TARGET
    print(f"\ntarget peak RSS < {TARGET}x checkpoint: {'met' if met else 'MISSED'}")
    write_report(
        args.out,
        shape=serve.SHAPE,
        dtype="float32",
        checkpoint_bytes=size,
        export_bytes=runs[0]["out_bytes"],
        files=runs[0]["files"],
        tensors=runs[0]["tensors"],
        max_shard_size=args.max_shard_size,
        runs=runs,
        seconds_median=seconds,
        peak_rss=peak,
        baseline_rss=baseline,
        peak_rss_over_checkpoint=ratio,
        target=TARGET,
        target_met=met,
        cpus=os.cpu_count(),
    )
    return 0


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())
