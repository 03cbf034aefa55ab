#!/usr/bin/env python
"""`ernie-ops export --format hf` at the real ERNIE-4.5-0.3B shape: time and peak memory.

The random 0.3B-shaped checkpoint of scripts/bench_serve_cpu.py (hidden 1024, 18 layers, 16 heads /
2 KV heads, head_dim 128, intermediate 3072, vocab 103424, tied embeddings; float32, built once with
ERNIEKit's classes and cached) is converted to the transformers layout by the real command line
(`ernie-ops export CKPT --format hf --out DIR --no-forward --json`: conversion plus the header-only
verification) in a child process per run, which reports its own peak resident set size
(VmHWM) and its RSS once everything is imported, before the conversion starts. The
same checkpoint cast to bfloat16 (what real ERNIE 4.5 checkpoints are; router and correction bias
float32) is exported the same way.

Target (issue #17): peak RSS of the exporting process below 1.5x the checkpoint's size (its
safetensors bytes). The first run may read the checkpoint from disk, later ones from the page cache
(which is not counted in a process's RSS: the conversion reads with plain reads, no mmap).

`--formats` adds GGUF exports (`--format gguf --quant Q`, one file for llama.cpp) beside the
transformers one: `--formats hf,gguf-f32,gguf-q8_0,gguf-q4_0`; each is measured the same way, and
with llama-cpp-python installed (the `llamacpp` extra) its logits are compared with ERNIEKit's:
the exported file loaded by llama.cpp and ERNIEKit's own model of the checkpoint, each in a child
process, on the same 64 random token ids; the largest absolute difference over every position and
the vocabulary (issue #21: below 1e-3 for f32; the quantized files' drift is reported).

    .venv/bin/python scripts/bench_export.py              # 3 runs each, JSON to runs/bench/export.json
    .venv/bin/python scripts/bench_export.py --repeat 1 --max-shard-size 500MB --dtypes bfloat16
    .venv/bin/python scripts/bench_export.py --repeat 1 --formats gguf-q8_0,gguf-q4_0
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ernie_ops.benchmark import bench_parser, memory_bytes, print_table, script, write_report

TARGET = 1.5  # peak RSS / checkpoint bytes
GGUF_F32_LOGITS = 1e-3  # max |logit difference| of an f32 GGUF against ERNIEKit (issue #21)
LOGIT_PROMPT = 64  # token ids, random (seeded) within the vocabulary


def _format_args(fmt: str) -> list[str]:
    """`hf` or `gguf-<quant>` as export arguments."""
    if fmt.startswith("gguf-"):
        return ["--format", "gguf", "--quant", fmt[len("gguf-") :]]
    return ["--format", fmt]


def child(src: str, out: str, shard: str, fmt: str = "hf") -> int:
    """One export through the CLI in this process; one JSON line of measurements on stdout's last
    line (the CLI's own JSON comes before it)."""
    import ernie_ops.cli.main as cli_main  # everything the command imports, before the baseline
    import ernie_ops.train.export as _export

    assert _export.convert is not None

    baseline = memory_bytes("VmRSS")
    argv = [
        "export",
        src,
        *_format_args(fmt),
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
    # VmHWM, the peak RSS of this process image: getrusage's ru_maxrss would carry over the parent's
    # peak (it is preserved across fork + execve)
    peak = memory_bytes("VmHWM")
    print(
        json.dumps({"rc": code, "seconds": seconds, "peak_rss": peak, "baseline_rss": baseline}), flush=True
    )
    return 0


def logits_child(kind: str, path: str, out: str) -> int:
    """The logits [64, vocab] of LOGIT_PROMPT token ids, saved to OUT (.npy): of ERNIEKit's model of
    the checkpoint PATH (kind "erniekit") or of llama.cpp's load of the GGUF file PATH ("llamacpp")."""
    import numpy as np

    vocab = (
        int(json.loads((Path(path) / "config.json").read_text())["vocab_size"]) if kind == "erniekit" else 0
    )
    if kind == "erniekit":
        from ernie_ops.serve.engine.forward import load_reference, reference_logits

        logits = reference_logits(load_reference(Path(path)), _prompt(vocab))
    else:
        from llama_cpp import Llama

        llm = Llama(
            model_path=path, n_ctx=2 * LOGIT_PROMPT, n_batch=LOGIT_PROMPT, logits_all=True, verbose=False
        )
        ids = _prompt(llm.n_vocab())
        llm.eval(ids)
        logits = np.asarray(llm.scores[: len(ids)])
    np.save(out, logits.astype(np.float32))
    return 0


def _prompt(vocab: int) -> list[int]:
    import random

    rng = random.Random(0)
    return [rng.randrange(5, vocab) for _ in range(LOGIT_PROMPT)]  # past the special tokens


def logit_drift(model: Path, gguf: Path, work: Path, reference: dict[Path, Any]) -> float | None:
    """Max |logits(llama.cpp on GGUF) - logits(ERNIEKit on MODEL)|; None without llama-cpp-python.
    ERNIEKit's logits are computed once per checkpoint (kept in REFERENCE)."""
    import importlib.util

    import numpy as np

    if importlib.util.find_spec("llama_cpp") is None:
        return None
    if model not in reference:
        reference[model] = np.load(_logits_in_child("erniekit", model, work / "erniekit.npy"))
    theirs = np.load(_logits_in_child("llamacpp", gguf, work / f"{gguf.stem}.npy"))
    ours = reference[model]
    if theirs.shape != ours.shape:
        raise RuntimeError(f"llama.cpp gave logits {theirs.shape}, ERNIEKit {ours.shape}")
    return float(np.abs(theirs - ours).max())


def _logits_in_child(kind: str, path: Path, out: Path) -> Path:
    cmd = [sys.executable, __file__, "--logits-child", kind, str(path), str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "USE_TORCH": "0"})
    if done.returncode != 0:
        raise RuntimeError(f"the {kind} logits run failed:\n{done.stderr[-3000:]}")
    return out


def weights_bytes(path: Path) -> int:
    if path.is_file():  # a GGUF file
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.glob("*.safetensors"))


def bf16_copy(model: Path) -> Path:
    """The checkpoint cast to bfloat16 (real ERNIE 4.5 checkpoints are bf16; the router and the
    correction bias stay float32, as ERNIEKit keeps them), beside it, built once with the
    exporter's own streaming writer."""
    from ernie_ops.train.hf_format import FP32_NAMES, Piece, Planned, Source, write_weights

    out = model.with_name(model.name + "-bf16")
    if (out / "config.json").is_file():
        return out
    print(f"model: writing a bfloat16 copy at {out} (once)", flush=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    source = Source(model)
    plan = [
        Planned(n, "F32" if FP32_NAMES.search(n) else "BF16", tuple(t.shape), (Piece(n),))
        for n, t in source.tensors.items()
    ]
    write_weights(plan, source, staging, 5 * 10**9, "paddle")
    for file in model.iterdir():
        if file.is_file() and file.suffix != ".safetensors":
            shutil.copyfile(file, staging / file.name)
    config = json.loads((staging / "config.json").read_text())
    (staging / "config.json").write_text(json.dumps({**config, "dtype": "bfloat16"}, indent=2))
    staging.rename(out)
    return out


def measure(
    model: Path, repeat: int, shard: str, fmt: str = "hf", reference: dict[Path, Any] | None = None
) -> dict[str, Any] | None:
    """`repeat` exports of MODEL to FMT, each in its own child process; a GGUF's logits against
    ERNIEKit's (the last run's file; REFERENCE caches ERNIEKit's logits per checkpoint)."""
    size = weights_bytes(model)
    drift = None
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ernie-ops-bench-export-", dir=model.parent) as tmp:
        for i in range(repeat):
            out = Path(tmp) / (f"{fmt}-{i}.gguf" if fmt.startswith("gguf-") else f"{fmt}-{i}")
            cmd = [sys.executable, __file__, "--child", str(model), str(out), shard, fmt]
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            result = subprocess.run(cmd, capture_output=True, text=True, env=env)
            lines = result.stdout.strip().splitlines()
            measured = json.loads(lines[-1]) if result.returncode == 0 and lines else {"rc": -1}
            exported = json.loads("\n".join(lines[:-1])) if measured["rc"] == 0 else {}
            if measured["rc"] != 0 or not exported.get("verify", {"ok": True})["ok"]:
                print(result.stdout[-3000:] + result.stderr[-3000:], file=sys.stderr)
                return None
            measured.update(out_bytes=weights_bytes(out), files=exported.get("files", 1))
            measured["tensors"] = exported["tensors"]
            runs.append(measured)
            print(
                f"{model.name} {fmt} run {i + 1}/{repeat}: {measured['seconds']:.1f} s, "
                f"peak RSS {measured['peak_rss'] / 2**20:,.0f} MiB",
                flush=True,
            )
            if fmt.startswith("gguf-") and i == repeat - 1:
                drift = logit_drift(model, out, Path(tmp), {} if reference is None else reference)
            if out.is_dir():
                shutil.rmtree(out)
            else:
                out.unlink()
    peak = max(r["peak_rss"] for r in runs)
    return {
        "checkpoint_bytes": size,
        "export_bytes": runs[0]["out_bytes"],
        "files": runs[0]["files"],
        "tensors": runs[0]["tensors"],
        "runs": runs,
        "seconds_median": statistics.median(r["seconds"] for r in runs),
        "peak_rss": peak,
        "baseline_rss": max(r["baseline_rss"] for r in runs),
        "peak_rss_over_checkpoint": peak / size,
        "target_met": peak / size < TARGET,
        "format": fmt,
        "logits_max_abs_vs_erniekit": drift,
    }


def main() -> int:
    parser = bench_parser(__doc__, "export", repeat=3)
    parser.add_argument("--model-dir", type=Path, default=None, help="the cached 0.3B-shaped checkpoint")
    parser.add_argument("--max-shard-size", default="5GB", help="as `ernie-ops export` (default 5GB)")
    parser.add_argument(
        "--dtypes", default="float32,bfloat16", help="checkpoint dtypes to export (default: both)"
    )
    parser.add_argument(
        "--formats", default="hf", help="hf and / or gguf-<quant> (f32, f16, q8_0, q4_0), comma-separated"
    )
    parser.add_argument("--child", nargs=4, metavar=("SRC", "OUT", "SHARD", "FMT"), help=argparse_hidden())
    parser.add_argument("--logits-child", nargs=3, metavar=("KIND", "PATH", "OUT"), help=argparse_hidden())
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    if args.logits_child:
        return logits_child(*args.logits_child)

    serve = script("bench_serve_cpu")
    fp32 = serve.build_model(args.model_dir or serve.DEFAULT_MODEL_DIR)
    results: dict[str, dict[str, Any]] = {}
    reference: dict[Path, Any] = {}  # ERNIEKit's logits per checkpoint, for the GGUF files
    formats = args.formats.split(",")
    for dtype in args.dtypes.split(","):
        model = fp32 if dtype == "float32" else bf16_copy(fp32)
        for fmt in formats:
            measured = measure(model, args.repeat, args.max_shard_size, fmt, reference)
            if measured is None:
                return 1
            results[dtype if formats == ["hf"] else f"{dtype} -> {fmt}"] = measured
    mib = 2**20
    rows = [["ERNIE-4.5-0.3B shape", *results]]
    for label, show in (
        ("checkpoint (Paddle safetensors)", lambda r: f"{r['checkpoint_bytes'] / mib:,.0f} MiB"),
        ("export (its files)", lambda r: f"{r['export_bytes'] / mib:,.0f} MiB"),
        ("files written", lambda r: str(r["files"])),
        ("export time (median)", lambda r: f"{r['seconds_median']:.1f} s"),
        ("export time (each run)", lambda r: ", ".join(f"{x['seconds']:.1f}" for x in r["runs"]) + " s"),
        ("peak RSS of the exporting process", lambda r: f"{r['peak_rss'] / mib:,.0f} MiB"),
        ("  of which imports (RSS before)", lambda r: f"{r['baseline_rss'] / mib:,.0f} MiB"),
        ("peak RSS / checkpoint size", lambda r: f"{r['peak_rss_over_checkpoint']:.2f}x"),
        ("read rate", lambda r: f"{r['checkpoint_bytes'] / mib / r['seconds_median']:,.0f} MiB/s"),
        ("logits max |diff| vs ERNIEKit", _drift_cell),
    ):
        rows.append([label, *(show(r) for r in results.values())])
    print()
    print_table(rows)
    met = all(r["target_met"] for r in results.values())
    print(f"\ntarget peak RSS < {TARGET}x checkpoint: {'met' if met else 'MISSED'}")
    f32 = [r["logits_max_abs_vs_erniekit"] for k, r in results.items() if k.endswith("gguf-f32")]
    if f32 and f32[0] is not None:
        print(
            f"target f32 GGUF logits within {GGUF_F32_LOGITS:g} of ERNIEKit's: {f32[0]:.2e}, "
            f"{'met' if f32[0] < GGUF_F32_LOGITS else 'MISSED'}"
        )
    write_report(
        args.out,
        shape=serve.SHAPE,
        max_shard_size=args.max_shard_size,
        target=TARGET,
        target_met=met,
        cpus=os.cpu_count(),
        results=results,
    )
    return 0


def _drift_cell(r: dict[str, Any]) -> str:
    drift = r["logits_max_abs_vs_erniekit"]
    if not r["format"].startswith("gguf-"):
        return ""
    return "no llama-cpp-python" if drift is None else f"{drift:.2e}"


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())
