#!/usr/bin/env python
"""Quality, load time, memory and speed of wint8 / wint4 on the embedded CPU engine, against float32.

The engine quantizes the linear weights at load as FastDeploy's weight-only int8 / int4 do on a GPU
(serve/engine/quantize.py) and then computes in float32: the logits drift is FastDeploy's weight
quantization error; load time, RSS and tok/s are this CPU's, with float32 weights (a GPU stores int8
/ int4 and runs other kernels: nothing here says how fast or small it is there).

On the random checkpoint with ERNIE-4.5-0.3B's shapes (scripts/bench_serve_cpu.py builds and caches
it), each variant (fp32, wint8, wint4) runs in its own child process, one after the other (one 0.3B
engine in memory at a time, and a clean RSS each):
- free-running greedy decoding of fixed prompts (ids from the tokenizer's real pieces): how many
  tokens match fp32's before the first difference;
- teacher-forced next-token logits along fp32's greedy path (each prefix a request of one token):
  against fp32's, max / mean absolute logit difference, top-1 agreement, KL(fp32 || variant);
- load time (Engine.load: ERNIEKit's load, the weight copies, the quantization), RSS after load and
  the peak (VmHWM), batch-1 greedy decode tokens/s after a warm-up.
Random weights are not a trained model: a trained model's outlier channels make absmax quantization
coarser, so the drift here is a floor for the scheme's arithmetic, not a quality prediction.

    .venv/bin/python scripts/bench_quant.py            # about 5 minutes on 2 cores (model cached)
    .venv/bin/python scripts/bench_quant.py --quick    # 2 prompts, 6 steps, 8 decode tokens
    .venv/bin/python scripts/bench_quant.py --variants fp32 wint4 --steps 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ernie_ops.argtypes import positive_int
from ernie_ops.benchmark import bench_parser, memory_bytes, print_table, script, write_report

VARIANTS = ("fp32", "wint8", "wint4")
PROMPT_LEN = 32
DECODE_PROMPT_LEN = 64


# ---------------------------------------------------------------------------------------------
# one variant, in a child process


def child(variant: str, model_dir: Path, out: Path, reference: Path | None, args: Any) -> None:
    """Load VARIANT, generate, write its tokens, teacher-forced logits and figures to OUT (.npz)."""
    from ernie_ops.serve.engine import Engine, SamplingParams

    serve = script("bench_serve_cpu")
    prompts = serve.prompts(args.prompts, PROMPT_LEN, serve.SEED)
    started = time.perf_counter()
    engine = Engine.load(model_dir, max_batch_size=8, quantization=None if variant == "fp32" else variant)
    load_s = time.perf_counter() - started
    rss_mib, peak_mib = memory_bytes("VmRSS") / 2**20, memory_bytes("VmHWM") / 2**20
    engine.start()
    try:
        greedy = SamplingParams(max_tokens=args.steps, temperature=0.0, ignore_eos=True)
        tokens = np.array([r.token_ids for r in engine.generate(prompts, greedy)])
        # fp32's greedy path: each of its prefixes asks for one token, its logits kept
        path = tokens if reference is None else np.load(reference)["tokens"]
        prefixes = [[*p, *path[i, :t].tolist()] for i, p in enumerate(prompts) for t in range(args.steps)]
        one = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True, return_logits=True)
        logits = np.stack([r.logits[0] for r in engine.generate(prefixes, one)])
        decode = serve.prompts(1, DECODE_PROMPT_LEN, 99)
        serve.engine_run(engine, decode, 4)  # warm-up
        runs = [serve.engine_run(engine, decode, args.decode_tokens) for _ in range(args.repeat)]
    finally:
        engine.stop()
    figures = {
        "load_s": load_s,
        "rss_mib": rss_mib,
        "peak_rss_mib": peak_mib,
        "decode_tok_s": statistics.median(r["decode_tok_s"] for r in runs),
        "decode_runs": len(runs),
    }
    np.savez(out, tokens=tokens, logits=logits.astype(np.float32), figures=json.dumps(figures))


def run_child(variant: str, model_dir: Path, out: Path, reference: Path | None, args: Any) -> dict[str, Any]:
    from ernie_ops.supervise import start

    cmd = [
        sys.executable,
        __file__,
        "--child",
        variant,
        "--model-dir",
        str(model_dir),
        "--child-out",
        str(out),
    ]
    cmd += [
        "--prompts",
        str(args.prompts),
        "--steps",
        str(args.steps),
        "--decode-tokens",
        str(args.decode_tokens),
    ]
    cmd += ["--repeat", str(args.repeat), *(["--reference", str(reference)] if reference else [])]
    print(f"{variant}: loading and generating in a child process", flush=True)
    log = out.with_suffix(".log")
    with log.open("w") as sink:
        proc = start(cmd, stdout=sink, text=True)
        try:
            code = proc.process.wait(timeout=3600)
        finally:
            proc.stop()
    if code != 0 or not out.is_file():
        raise RuntimeError(f"the {variant} child failed (exit {code}):\n{log.read_text()[-3000:]}")
    data = np.load(out)
    return {"tokens": data["tokens"], "logits": data["logits"], **json.loads(str(data["figures"]))}


# ---------------------------------------------------------------------------------------------
# drift


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def drift(ref: dict[str, Any], got: dict[str, Any]) -> dict[str, float]:
    """GOT's teacher-forced logits and free greedy tokens against REF's (fp32)."""
    a, b = ref["logits"], got["logits"]
    diff = np.abs(b.astype(np.float64) - a)
    lp, lq = log_softmax(a), log_softmax(b)
    kl = (np.exp(lp) * (lp - lq)).sum(axis=-1)
    same = ref["tokens"] == got["tokens"]
    first_diff = [int(np.argmin(row)) if not row.all() else len(row) for row in same]
    return {
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "ref_logit_std": float(a.std()),
        "top1_agreement": float((a.argmax(-1) == b.argmax(-1)).mean()),
        "kl_mean": float(kl.mean()),
        "kl_max": float(kl.max()),
        "greedy_match_before_first_diff": float(np.mean(first_diff)),
        "greedy_tokens_equal": float(same.mean()),
    }


def main() -> None:
    parser = bench_parser(__doc__, "quant", repeat=2)
    parser.add_argument(
        "--model-dir", type=Path, help="the 0.3B-shaped checkpoint (default: bench_serve_cpu's)"
    )
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--prompts", type=positive_int, default=4, help="fixed prompts (default 4)")
    parser.add_argument("--steps", type=positive_int, default=16, help="greedy steps compared (default 16)")
    parser.add_argument("--decode-tokens", type=positive_int, default=32, help="batch-1 decode tokens timed")
    parser.add_argument("--quick", action="store_true", help="2 prompts, 6 steps, 8 decode tokens, 1 run")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--reference", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.prompts, args.steps, args.decode_tokens, args.repeat = 2, 6, 8, 1
    serve = script("bench_serve_cpu")
    model_dir = args.model_dir or serve.DEFAULT_MODEL_DIR
    if args.child:
        child(args.child, model_dir, args.child_out, args.reference, args)
        return
    if "fp32" not in args.variants:
        args.variants = ["fp32", *args.variants]  # the reference
    serve.build_model(model_dir)
    load_before = os.getloadavg()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ref_file = Path(tmp) / "fp32.npz"
        for variant in dict.fromkeys(args.variants):
            out = Path(tmp) / f"{variant}.npz"
            reference = None if variant == "fp32" else ref_file
            results[variant] = run_child(variant, model_dir, out, reference, args)
            figures = {k: v for k, v in results[variant].items() if k not in ("tokens", "logits")}
            print(f"{variant}: {json.dumps(figures)}", flush=True)
    load_after = os.getloadavg()
    report = {v: {k: x for k, x in r.items() if k not in ("tokens", "logits")} for v, r in results.items()}
    for variant, r in results.items():
        report[variant]["drift_vs_fp32"] = drift(results["fp32"], r)
    rows = [["", *report]]
    for label, key, fmt in (
        ("logit max |diff| vs fp32", "max_abs", "{:.4f}"),
        ("logit mean |diff| vs fp32", "mean_abs", "{:.5f}"),
        ("  (fp32 logit std)", "ref_logit_std", "{:.4f}"),
        ("top-1 agreement (teacher-forced)", "top1_agreement", "{:.1%}"),
        ("KL(fp32 || q) mean, nats", "kl_mean", "{:.2e}"),
        ("KL(fp32 || q) max, nats", "kl_max", "{:.2e}"),
        ("greedy tokens equal to fp32's", "greedy_tokens_equal", "{:.1%}"),
        ("greedy match before 1st diff", "greedy_match_before_first_diff", "{:.1f}"),
    ):
        rows.append([label, *(fmt.format(r["drift_vs_fp32"][key]) for r in report.values())])
    for label, key, fmt in (
        ("load time, s", "load_s", "{:.1f}"),
        ("RSS after load, MiB", "rss_mib", "{:,.0f}"),
        ("peak RSS (VmHWM), MiB", "peak_rss_mib", "{:,.0f}"),
        ("batch-1 decode, tok/s", "decode_tok_s", "{:.2f}"),
    ):
        rows.append([label, *(fmt.format(r[key]) for r in report.values())])
    print()
    print_table(rows)
    print(
        f"\n{args.prompts} prompts x {args.steps} steps; load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after (1 min). CPU figures with float32 weights: not a GPU's."
    )
    write_report(
        args.out,
        shape=serve.SHAPE,
        prompts=args.prompts,
        steps=args.steps,
        decode_tokens=args.decode_tokens,
        load_average={"before": load_before, "after": load_after},
        variants=report,
    )


if __name__ == "__main__":
    main()
