"""--part decode-step: one decode step of the embedded engine's forward, in numpy and compiled.

The forward is loaded once, in this process; a step of ROWS rows (a 64-token context, then STEPS
steps) is timed through numpy's forward and through the compiled step with each set of kernels this
CPU runs (AVX-512, AVX2, the plain one), the paths taken in turn for --rounds rounds (the order
reversed every other round). The compiled step runs every row count here, past the MAX_ROWS the
engine gives it, to show where numpy's step catches up. Each path's best round per row count, its
ratio to numpy's, and the weights' bytes a one-row step read per second beside a numpy copy's rate.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from ernie_ops.benchmark import print_table, write_report
from servebench.checkpoint import PROMPT_LEN, build_model, part_settings, weight_bytes
from servebench.measure import copy_bandwidth

ROWS = (1, 2, 4, 8, 12, 16)
STEPS = 12  # timed steps a round (4 with --quick)
KERNELS = {512: "AVX-512", 256: "AVX2", 128: "plain"}


def decode_step_main(args: argparse.Namespace) -> int:
    """The part, on --threads threads of numpy's OpenBLAS (the count it had is restored after)."""
    from ernie_ops.serve.engine.forward import _openblas_threads

    openblas = _openblas_threads()
    if openblas is None:
        raise SystemExit("decode-step: numpy's BLAS is not an OpenBLAS here: --threads cannot be set")
    saved = openblas[0]()
    openblas[1](args.threads)  # numpy's steps' threads, and the compiled step's team (started below)
    try:
        return _measure(args)
    finally:
        openblas[1](saved)


def _measure(args: argparse.Namespace) -> int:
    import numpy as np

    from ernie_ops.serve.engine import fused_decode
    from ernie_ops.serve.engine.forward import DenseForward, blas_threads, load_checkpoint

    started = time.perf_counter()
    model_dir = build_model(args.model_dir)
    config, _, _ = load_checkpoint(model_dir)
    net = DenseForward.load(model_dir, config)
    compiled = net.fused
    widths = [w for w in KERNELS if compiled is not None and fused_decode.use_kernels(w) == w]
    fused_decode.use_kernels(0)
    if compiled is None:
        print(f"the compiled step is not in use here ({fused_decode.problem() or 'no AVX2'}): numpy only")
    paths: list[int | None] = [None, *widths]  # None: numpy's forward
    steps = 4 if args.quick else STEPS

    def step_ms(rows: int) -> float:
        cache = net.new_cache(rows, PROMPT_LEN + steps + 1)
        bias = np.zeros((rows, 1, PROMPT_LEN + steps + 1), dtype=np.float32)
        began = time.perf_counter()
        for i in range(steps):
            at = PROMPT_LEN + i
            ids, positions = np.full((rows, 1), 5 + i), np.full((rows, 1), at)
            net.forward(ids, positions, bias[:, :, : at + 1], cache, at)
        return (time.perf_counter() - began) / steps * 1000

    times: dict[tuple[int, int | None], list[float]] = {}
    loads = []
    serving_rows = dict(fused_decode.MAX_ROWS)
    fused_decode.MAX_ROWS = dict.fromkeys(KERNELS, max(ROWS))  # every count compiled here
    try:
        for rnd in range(args.rounds):
            for rows in ROWS:
                for path in paths if rnd % 2 == 0 else paths[::-1]:
                    net.fused = None if path is None else compiled
                    if path is not None:
                        fused_decode.use_kernels(path)
                    times.setdefault((rows, path), []).append(step_ms(rows))
            loads.append(os.getloadavg()[0])
            print(f"round {rnd + 1} of {args.rounds} (load {loads[-1]:.2f})", flush=True)
    finally:
        net.fused, fused_decode.MAX_ROWS = compiled, serving_rows
        fused_decode.use_kernels(0)

    names: dict[int | None, str] = {None: "numpy"}
    names.update({w: f"compiled, {KERNELS[w]}" for w in widths})
    table = [["step, ms (best round)", *(f"{r} row{'s' * (r > 1)}" for r in ROWS)]]
    results: dict[str, Any] = {}
    for path in paths:
        best = {r: min(times[(r, path)]) for r in ROWS}
        ratio = {r: min(times[(r, None)]) / best[r] for r in ROWS}
        table.append([names[path], *(f"{best[r]:.1f} ({ratio[r]:.2f}x)" for r in ROWS)])
        results[names[path]] = {
            "best_ms": best,
            "vs_numpy": ratio,
            "rounds_ms": {r: times[(r, path)] for r in ROWS},
        }
    print()
    print_table(table)
    wbytes = weight_bytes(model_dir)
    copying = copy_bandwidth(args.threads, 256 if args.quick else 1024, 3)  # read + write bytes
    fastest = min(min(times[(1, p)]) for p in paths)
    print(
        f"\none row's step reads the weights ({wbytes / 1e9:.2f} GB) at {wbytes / fastest / 1e6:.1f} GB/s; "
        f"a numpy copy on {args.threads} threads moves {copying:.1f} GB/s (read + write); ratios: numpy's "
        f"time / the path's; the engine compiles steps of up to {serving_rows} rows (by vector bits); "
        f"load average {min(loads):.2f}-{max(loads):.2f}; total {time.perf_counter() - started:.0f} s"
    )
    write_report(
        args.out,
        settings=part_settings(
            "decode-step", steps, Path(model_dir), rounds=args.rounds, rows=list(ROWS), threads=blas_threads()
        ),
        results=results,
        weight_read_gb_s=wbytes / fastest / 1e6,
        copy_gb_s=copying,
        engine_max_rows=serving_rows,
        load_average=[min(loads), max(loads)],
    )
    return 0
