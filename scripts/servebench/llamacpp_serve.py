"""--part llamacpp-serve: the served llama.cpp against llama.cpp's own benchmarks."""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from ernie_ops.benchmark import print_table, write_report
from servebench.checkpoint import BATCH, NEW_TOKENS, PROMPT_LEN, build_model, gguf_file, part_settings
from servebench.compare import contender_round, own_note
from servebench.llamacpp import own_benchmarks
from servebench.measure import best_per_metric, print_targets

# ---------------------------------------------------------------------------------------------
# the served llama.cpp against llama.cpp's own benchmarks (--part llamacpp-serve, issue #21)

SERVE_PAIR = ("llamacpp-q4_0", "llamacpp-serve-q4_0")
SERVE_PAIR_METRICS = ("b1_decode_tok_s", "b8_e2e_tok_s")


@contextlib.contextmanager
def cpu_hogs(n: int) -> Any:
    """N busy-looping processes for the block: a neighbour taking CPU, as on a shared machine."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def llamacpp_serve_main(args: Any, env: dict[str, str]) -> int:
    import argparse

    started = time.perf_counter()
    new_tokens = args.new_tokens or (8 if args.quick else NEW_TOKENS)
    rounds = 1 if args.quick else args.rounds
    model_dir = build_model(args.model_dir)
    gguf_file(model_dir, "q4_0")
    if own_benchmarks() is None:
        print(
            "note: llama-bench / llama-batched-bench not found beside llama-server: llama.cpp's own "
            "figures are in-process through llama-cpp-python (scripts/build_llama_server.sh installs them)"
        )
    runs: dict[int, dict[str, list[dict[str, Any]]]] = {
        t: {c: [] for c in SERVE_PAIR} for t in args.serve_threads
    }
    load_before = os.getloadavg()
    with cpu_hogs(args.hogs):
        for r in range(rounds):
            for t in args.serve_threads:
                for name in SERVE_PAIR if r % 2 == 0 else SERVE_PAIR[::-1]:
                    res = contender_round(
                        name, argparse.Namespace(**{**vars(args), "threads": t}), env, new_tokens
                    )
                    runs[t][name].append(res)
                    cpu = (
                        f"; client CPU {res['client_cpu_s']:.2f} s, llama-server CPU "
                        f"{res['server_cpu_s']:.1f} s in {res['drive_wall_s']:.1f} s"
                        if "client_cpu_s" in res
                        else ""
                    )
                    print(
                        f"round {r + 1} {t} thread(s) {name}: batch 1 {res['b1_decode_tok_s']:.1f} tok/s, "
                        f"{BATCH} concurrent {res['b8_e2e_tok_s']:.1f} tok/s{cpu} "
                        f"(load {res['load_average_1m']:.2f})",
                        flush=True,
                    )
    load_after = os.getloadavg()
    best = {t: {c: best_per_metric(v, SERVE_PAIR_METRICS) for c, v in per.items()} for t, per in runs.items()}
    own, served = SERVE_PAIR
    rows = [
        [
            "threads",
            "own batch-1 tok/s",
            "served batch-1 tok/s",
            "ratio",
            f"own {BATCH} conc. tok/s",
            f"served {BATCH} conc. tok/s",
            "ratio",
            "CPU s: client / ernie-ops serve / wall",
        ]
    ]
    targets: dict[str, Any] = {}
    for t, b in best.items():
        ratios = {m: b[served][m] / b[own][m] for m in SERVE_PAIR_METRICS}
        for m, value in ratios.items():
            targets[f"threads_{t}_{m}"] = {
                "target": f">= 0.9x ({served} / {own})",
                "value": value,
                "met": value >= 0.9,
            }
        clients = runs[t][served]
        rows.append(
            [
                str(t),
                f"{b[own]['b1_decode_tok_s']:.1f}",
                f"{b[served]['b1_decode_tok_s']:.1f}",
                f"{ratios['b1_decode_tok_s']:.2f}x",
                f"{b[own]['b8_e2e_tok_s']:.1f}",
                f"{b[served]['b8_e2e_tok_s']:.1f}",
                f"{ratios['b8_e2e_tok_s']:.2f}x",
                " / ".join(
                    f"{statistics.median(x.get(k, float('nan')) for x in clients):.2f}"
                    for k in ("client_cpu_s", "supervisor_cpu_s", "drive_wall_s")
                ),
            ]
        )
    print()
    print_table(rows)
    print_targets(targets)
    total = time.perf_counter() - started
    print(
        f"\nq4_0, best of {rounds} interleaved round(s) per metric; {PROMPT_LEN}-token prompts, {new_tokens} "
        f"new tokens, greedy; {args.hogs} busy-looping neighbour(s); load average (1 min) "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after, {os.cpu_count()} cpus; "
        f"{own_note({str(t): per[own] for t, per in runs.items()})}total {total:.0f} s"
    )
    write_report(
        args.out,
        settings=part_settings(
            "llamacpp-serve", new_tokens, model_dir, threads=args.serve_threads, rounds=rounds, hogs=args.hogs
        ),
        load_average_before=load_before,
        load_average_after=load_after,
        runs={str(t): per for t, per in runs.items()},
        best={str(t): per for t, per in best.items()},
        targets=targets,
        total_s=total,
    )
    return 0
