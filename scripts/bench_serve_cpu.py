#!/usr/bin/env python
"""CPU serving speed of the embedded engine at the real ERNIE-4.5-0.3B shape, beside llama.cpp and
PyTorch (issue #21).

A random checkpoint with ERNIE-4.5-0.3B's shapes (hidden 1024, 18 layers, 16 heads / 2 KV heads,
head_dim 128, intermediate 3072, vocab 103424, tied embeddings; float32) is built once with
ERNIEKit's classes and cached (--model-dir), with its GGUF exports (f32, q8_0, q4_0; `ernie-ops
export DIR --format gguf`) beside it. Its tokenizer is the tiny model's, padded with inert pieces to
the model's vocab so every sampled id decodes.

--part compare (the default): each contender of --contenders in a fresh child process, taken in
turn, --rounds times (the order reversed every other round, so a busy neighbour slows all alike),
with the 1-minute load average recorded at each run. Each runs batch 1 (a 64-token prompt, 32 new
tokens, greedy) and 8 concurrent requests: batch-1 decode tokens/s (after the first token), time to
first token, 8-concurrent end-to-end output tokens/s (prefill included), RSS and peak RSS (the
process's ru_maxrss; a server's VmHWM). Contenders:
- engine / engine-wint8: the embedded engine in-process (wint8: FastDeploy's arithmetic emulated,
  still float32 compute);
- llamacpp-f32 / -q8_0 / -q4_0: llama.cpp's own figures: `llama-bench -o json` (batch-1 decode:
  its tg test of the new tokens; TTFT: the prompt over its pp rate) and `llama-batched-bench -o jsonl`
  (8 concurrent: BATCH prompts prefilled at once, then new tokens - 1 steps of all of them, whose
  first token comes from the prefill as a server's does: BATCH x new tokens over its total time),
  the binaries installed beside llama-server by scripts/build_llama_server.sh (the same build). Without
  them, llama.cpp in-process through llama-cpp-python's C API, batched as llama-batched-bench does
  (all prompts in one decode call, then one call per step for all sequences), and a note says so;
- llamacpp-serve-f32 / -q8_0 / -q4_0 and engine-serve: `ernie-ops serve FILE --engine llamacpp`
  (paddle: the embedded engine), the real serving path, driven by streaming HTTP clients;
- pytorch: transformers' Ernie4_5ForCausalLM `generate` with the KV cache, static batch 8.
The table shows each metric's best round per contender (a busy round only ever slows) with its
ratio to llamacpp-f32, then
issue #21's targets: engine batch-1 decode and 8-concurrent >= 1.0x llama.cpp f32, engine load peak
<= 1.3x the weight bytes, `ernie-ops serve` llama.cpp q4_0 >= 0.9x llama.cpp's own q4_0 figures.
A missed target is reported, not an exit status: the script fails only when something breaks.

    .venv/bin/python scripts/bench_serve_cpu.py                      # compare, 3 rounds: ~10 min
    .venv/bin/python scripts/bench_serve_cpu.py --rounds 5 --contenders engine,llamacpp-f32
    .venv/bin/python scripts/bench_serve_cpu.py --before f20ea1a --contenders engine,llamacpp-f32
    .venv/bin/python scripts/bench_serve_cpu.py --quick              # 1 round, 8 new tokens
    .venv/bin/python scripts/bench_serve_cpu.py --part engine-detail # long prompts, soak, PyTorch
    .venv/bin/python scripts/bench_serve_cpu.py --part server-overhead   # ~3 minutes, see below
    .venv/bin/python scripts/bench_serve_cpu.py --part llamacpp-serve    # ~10 minutes, see below
    .venv/bin/python scripts/bench_serve_cpu.py --part paired --rounds 9  # ~3 minutes, see below
    .venv/bin/python scripts/bench_serve_cpu.py --part decode-step --rounds 3  # ~2 minutes, see below

--part paired (issue #21's engine-vs-llama.cpp-f32 figures on a host whose memory bandwidth comes
and goes): the engine stays loaded in a child process, and each of its measurements (batch-1
decode, then 8 concurrent end-to-end) is paired with llama.cpp's own benchmark of the same shape
on the f32 GGUF, run right before or after it (alternating), so both fall in the same bandwidth
window; each pair's ratio, their median (the target: >= 1.0x), min and max, and in how many pairs
the engine was ahead. Written to runs/bench/serve_cpu_paired.json.

--part decode-step: one decode step of the engine's forward (1 to 16 rows at a 64-token context,
on --threads threads) through numpy and through the compiled step with each set of kernels the CPU
runs, in turn, in this process; each path's best round, its ratio to numpy's, and one row's
weight-read rate beside a numpy copy's. Written to runs/bench/serve_cpu_decode_step.json.

--part llamacpp-serve (issue #21's served-llama.cpp acceptance): llamacpp-q4_0 (llama.cpp's own
benchmarks) and llamacpp-serve-q4_0 (`ernie-ops serve`, streaming clients) interleaved, --rounds
rounds, at each thread count of --serve-threads (default 1 and every CPU); each metric's best
round, the ratios (target >= 0.9x for batch-1 decode and 8 concurrent), the load average, and the
CPU seconds of the streaming client (it shares the cores), of `ernie-ops serve` and of
llama-server's threads; --hogs N adds N busy-looping neighbours. Written to
runs/bench/serve_cpu_llamacpp.json.

--part engine-detail: the engine in-process (batch 1, 8 concurrent, then a 2048-token prompt
(1024 with --quick) arriving while 4 streams decode, prefilled whole and in chunks: the streams'
longest gap between tokens and its own time to first token); PyTorch's batch 1 and static batch
8 (decode rate B * (N - 1) / (t(N new) - t(1 new)), end-to-end B * N / t(N new)); the
memory-bandwidth floor at batch 1 (fp32 weight bytes / numpy copy bandwidth over the same
threads); the OpenAI-compatible server as a child: 16 concurrent streaming clients, then a soak of
200 requests counting errors, with the server's VmRSS before and after. Targets: engine batch 1 >=
0.9x PyTorch, 8 concurrent >= 1.0x PyTorch static batch 8, batch 1 within 2x of the bandwidth
floor, soak 0 errors and RSS after <= 1.1x before. Written to runs/bench/serve_cpu_engine.json.

--part server-overhead (issue #15): the server as it was before the async engine client (9659adf^,
a pump thread per request; run from a `git archive` of that commit on PYTHONPATH) and this
checkout's, both up at once and driven in turn at 1, 16 and 128 streaming clients, on the tiny
dense model (ernie_ops.tiny_model defaults, max batch 128, so engine time is small and the
server's own cost shows). The server process stamps each text delta when the engine produces it
(a wrapper of Engine._emit; CLOCK_MONOTONIC) and the client stamps each text chunk on arrival,
matched by request id and chunk index: the produce -> receive delay p50 / p99. Also TTFT / ITL
through each server and of the engine in-process (a listener stamping in the engine thread), and
the server process's peak thread count at each level (psutil). Targets: p99 added delay < 5 ms at
16 clients and < 20 ms at 128; threads independent of the number of streams. Written to
runs/bench/serve_cpu_overhead.json.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from servebench.checkpoint import (
    BATCH,
    DEFAULT_MODEL_DIR,
    NEW_TOKENS,
    PROMPT_LEN,
    SHAPE,
    build_model,
    weight_bytes,
)
from servebench.compare import CONTENDERS, DEFAULT_CONTENDERS, compare_main, run_phase
from servebench.decode_step import decode_step_main
from servebench.engine import bench_engine
from servebench.llamacpp_serve import llamacpp_serve_main
from servebench.measure import copy_bandwidth
from servebench.overhead import OVERHEAD_REV, overhead_main
from servebench.paired import engine_worker, paired_main
from servebench.pytorch import bench_torch, torch_phase
from servebench.server import bench_server

# what bench_quant, bench_export and the tests take through ernie_ops.benchmark.script("bench_serve_cpu")
from servebench.checkpoint import SEED, prompts  # noqa: F401  # isort: skip
from servebench.engine import engine_run  # noqa: F401  # isort: skip
from servebench.llamacpp import own_benchmarks, own_phase  # noqa: F401  # isort: skip

from ernie_ops.benchmark import bench_parser, print_table, write_report


def main() -> int:
    parser = bench_parser(__doc__, "serve_cpu", repeat=2)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: fewer, shorter runs (~5 minutes for every contender on 2 cores)",
    )
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR, help="cached checkpoint")
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="threads of every contender: numpy's and Paddle's BLAS, llama.cpp, PyTorch (default: every CPU)",
    )
    parser.add_argument("--new-tokens", type=int, default=None, help=argparse_hidden())
    parser.add_argument("--torch-phase", type=Path, default=None, help=argparse_hidden())
    parser.add_argument("--phase", nargs=2, metavar=("NAME", "OUT"), default=None, help=argparse_hidden())
    parser.add_argument("--engine-worker", action="store_true", help=argparse_hidden())
    parser.add_argument(
        "--part",
        choices=["compare", "paired", "decode-step", "engine-detail", "server-overhead", "llamacpp-serve"],
        default="compare",
        help="compare (the default): the contenders of --contenders, interleaved, --rounds rounds; "
        "paired: the engine and llama.cpp f32 measured in pairs seconds apart, --rounds rounds (see above); "
        "decode-step: one decode step of 1 to 16 rows, numpy's against the compiled one, --rounds rounds; "
        "engine-detail: the embedded engine's own checks (long prompt arriving, server soak, bandwidth "
        "floor) beside PyTorch, not interleaved; server-overhead: the server's added latency and threads, "
        f"the server before {OVERHEAD_REV} against this checkout (tiny model, ~3 min); llamacpp-serve: "
        "`ernie-ops serve` llama.cpp q4_0 against llama.cpp's own benchmarks, at each of --serve-threads",
    )
    parser.add_argument(
        "--serve-threads",
        type=thread_list,
        default=sorted({1, os.cpu_count() or 1}),
        help="--part llamacpp-serve: comma-separated thread counts (default 1 and every CPU)",
    )
    parser.add_argument(
        "--hogs",
        type=int,
        default=0,
        help="--part llamacpp-serve: busy-looping neighbour processes during the runs (default 0)",
    )
    parser.add_argument(
        "--contenders",
        type=contender_list,
        default=list(DEFAULT_CONTENDERS),
        help=f"--part compare: comma-separated, of {', '.join(CONTENDERS)} "
        f"(default {','.join(DEFAULT_CONTENDERS)})",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="--part compare / paired / decode-step: interleaved rounds (default 3)",
    )
    parser.add_argument(
        "--before",
        metavar="REV",
        default=None,
        help="--part compare: also the embedded engine of commit REV (a git archive of it), "
        "as contender engine@REV",
    )
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, not {args.rounds}")
    if args.hogs < 0:
        parser.error(f"--hogs must be 0 or more, not {args.hogs}")
    child = args.phase or args.torch_phase or args.engine_worker  # this script's own children
    for dest, parts in PART_OPTIONS.items():
        if not child and args.part not in parts and getattr(args, dest) != parser.get_default(dest):
            parser.error(f"--{dest.replace('_', '-')} applies to --part {' / '.join(parts)}, not {args.part}")
    if args.part != "compare" and args.out == parser.get_default("out"):
        args.out = args.out.with_name(
            {
                "engine-detail": "serve_cpu_engine.json",
                "llamacpp-serve": "serve_cpu_llamacpp.json",
                "paired": "serve_cpu_paired.json",
                "decode-step": "serve_cpu_decode_step.json",
            }.get(args.part, "serve_cpu_overhead.json")
        )
    new_tokens = args.new_tokens or (4 if args.quick else NEW_TOKENS)
    repeat = 1 if args.quick else max(1, args.repeat)

    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}
    os.environ.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)  # before paddle / torch load

    if args.torch_phase is not None:
        torch_phase(args.threads, repeat, new_tokens, args.quick, args.torch_phase)
        return 0
    if args.engine_worker:
        return engine_worker(args.model_dir, new_tokens)
    if args.phase is not None:
        name, out = args.phase
        Path(out).write_text(json.dumps(run_phase(name, args), indent=2) + "\n")
        return 0

    # SIGTERM ends the run like Ctrl-C does, so the `finally`s stop the server
    signal.signal(signal.SIGTERM, _interrupt)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    if args.part == "server-overhead":
        return overhead_main(args, env)
    if args.part == "compare":
        return compare_main(args, env)
    if args.part == "llamacpp-serve":
        return llamacpp_serve_main(args, env)
    if args.part == "paired":
        return paired_main(args, env)
    if args.part == "decode-step":
        return decode_step_main(args)
    started = time.perf_counter()
    model_dir = build_model(args.model_dir)
    wbytes = weight_bytes(model_dir)

    bandwidth = copy_bandwidth(args.threads, 256 if args.quick else 1024, 2 if args.quick else 3)
    floor = bandwidth * 1e9 / wbytes
    print(f"bandwidth: {bandwidth:.1f} GB/s copy, weights {wbytes / 1e9:.2f} GB -> floor {floor:.2f} tok/s")

    eng = bench_engine(model_dir, repeat, new_tokens, args.quick)
    gc.collect()
    pt = bench_torch(args.threads, repeat, new_tokens, args.quick, env)
    srv = bench_server(model_dir, env, args.quick, new_tokens)

    # -- the table ------------------------------------------------------------------------------
    def f(x: float, d: int = 2) -> str:
        return f"{x:.{d}f}"

    has_pt = "skipped" not in pt
    e1, e8 = eng["batch1"], eng["batch8"]
    r1 = e1["decode_tok_s"] / pt["batch1"]["decode_tok_s"] if has_pt else float("nan")
    r8 = e8["e2e_tok_s"] / pt["batch8"]["e2e_tok_s"] if has_pt else float("nan")
    floor_ratio = floor / e1["decode_tok_s"]
    conc, sk = srv["concurrent"], srv["soak"]
    targets = {
        "batch1_vs_pytorch": {"target": ">= 0.9", "value": r1, "met": bool(has_pt and r1 >= 0.9)},
        "batch8_vs_pytorch_static8": {"target": ">= 1.0", "value": r8, "met": bool(has_pt and r8 >= 1.0)},
        "batch1_floor_gap": {"target": "<= 2.0", "value": floor_ratio, "met": floor_ratio <= 2.0},
        "soak_errors": {"target": "== 0", "value": sk["errors"], "met": sk["errors"] == 0},
        "soak_rss_ratio": {"target": "<= 1.10", "value": sk["rss_ratio"], "met": sk["rss_ratio"] <= 1.10},
    }

    def met(key: str) -> str:
        if "pytorch" in key and not has_pt:
            return "n/a"
        return "yes" if targets[key]["met"] else "NO"

    pt1 = pt.get("batch1", {})
    pt8 = pt.get("batch8", {})
    na = "skipped"
    rows = [
        ["measurement", "value", "target", "met"],
        ["engine batch 1 decode tok/s", f(e1["decode_tok_s"]), "", ""],
        ["engine batch 1 e2e tok/s (prefill incl.)", f(e1["e2e_tok_s"]), "", ""],
        ["engine batch 1 TTFT s", f(e1["ttft_s"], 3), "", ""],
        ["bandwidth floor batch 1 tok/s", f(floor), "", ""],
        ["  floor / engine batch 1", f(floor_ratio) + "x", "<= 2x", met("batch1_floor_gap")],
        ["pytorch batch 1 decode tok/s", f(pt1["decode_tok_s"]) if has_pt else na, "", ""],
        ["pytorch batch 1 e2e tok/s", f(pt1["e2e_tok_s"]) if has_pt else na, "", ""],
        ["  engine / pytorch batch 1 (decode)", f(r1) + "x", ">= 0.9x", met("batch1_vs_pytorch")],
        [f"engine {BATCH} concurrent e2e tok/s", f(e8["e2e_tok_s"]), "", ""],
        [f"engine {BATCH} concurrent decode tok/s", f(e8["decode_tok_s"]), "", ""],
        [
            f"engine {BATCH} concurrent TTFT p50 / max s",
            f"{e8['ttft_s']:.2f} / {e8['ttft_max_s']:.2f}",
            "",
            "",
        ],
        [f"pytorch static batch {BATCH} e2e tok/s", f(pt8["e2e_tok_s"]) if has_pt else na, "", ""],
        [f"pytorch static batch {BATCH} decode tok/s", f(pt8["decode_tok_s"]) if has_pt else na, "", ""],
        [f"  engine / pytorch batch {BATCH} (e2e)", f(r8) + "x", ">= 1.0x", met("batch8_vs_pytorch_static8")],
        [
            f"{eng['long_whole']['long_tokens']}-token prompt arriving: 4 streams' longest gap s, "
            "whole / chunked prefill",
            f"{eng['long_whole']['max_gap_s']:.2f} / {eng['long_chunked']['max_gap_s']:.2f}",
            "",
            "",
        ],
        [
            "  its TTFT s, whole / chunked",
            f"{eng['long_whole']['ttft_long_s']:.2f} / {eng['long_chunked']['ttft_long_s']:.2f}",
            "",
            "",
        ],
        [f"server {conc['clients']} streaming clients tok/s", f(conc["tok_s"]), "", ""],
        ["server TTFT p50 / p90 s", f"{conc['ttft_p50_s']:.2f} / {conc['ttft_p90_s']:.2f}", "", ""],
        ["server e2e latency p50 s", f(conc["e2e_p50_s"]), "", ""],
        [f"soak {sk['requests']} requests: errors", str(sk["errors"]), "0", met("soak_errors")],
        [
            "soak server RSS before -> after MiB",
            f"{sk['rss_before_mb']:.0f} -> {sk['rss_after_mb']:.0f}",
            "",
            "",
        ],
        ["  RSS after / before", f(sk["rss_ratio"], 3), "<= 1.10", met("soak_rss_ratio")],
    ]
    print()
    print_table(rows)
    total = time.perf_counter() - started
    print(
        f"\n{PROMPT_LEN}-token prompts, {new_tokens} new tokens, greedy, EOS ignored; {args.threads} threads;"
        f" runs (median): batch 1 {e1['runs']}, batch {BATCH} {e8['runs']}, each after a warm-up;"
        f" soak prompts 1-{sk['max_prompt']} tokens, max_tokens 1-{sk['max_tokens']}; total {total:.0f} s"
    )
    write_report(
        args.out,
        settings={
            "quick": args.quick,
            "threads": args.threads,
            "prompt_tokens": PROMPT_LEN,
            "new_tokens": new_tokens,
            "repeat": repeat,
            "shape": SHAPE,
            "model_dir": str(model_dir),
        },
        weight_bytes=wbytes,
        copy_bandwidth_gb_s=bandwidth,
        bandwidth_floor_tok_s=floor,
        engine=eng,
        pytorch=pt,
        server=srv,
        targets=targets,
        total_s=total,
    )
    return 0


# options that only some parts read: given to another part, they are refused rather than ignored
PART_OPTIONS = {
    "contenders": ("compare",),
    "before": ("compare",),
    "rounds": ("compare", "paired", "decode-step", "llamacpp-serve"),
    "serve_threads": ("llamacpp-serve",),
    "hogs": ("llamacpp-serve",),
    "repeat": ("engine-detail", "server-overhead"),
}


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def contender_list(text: str) -> list[str]:
    import argparse

    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONTENDERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown contender(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(CONTENDERS)}"
        )
    return list(dict.fromkeys(names))


def thread_list(text: str) -> list[int]:
    import argparse

    try:
        values = [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected thread counts >= 1, comma-separated (e.g. 1,2)")
    return list(dict.fromkeys(values))


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())
