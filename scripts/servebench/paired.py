"""--part paired: the embedded engine and llama.cpp f32, measured in pairs seconds apart.

This machine kind's memory bandwidth comes and goes (a VM on a shared host: the same gemv read
the weights at 30 GB/s one minute and 45 the next, with nothing else running here), and both
contenders are bound by it. In --part compare a contender's round is a fresh process (a load, then
batch 1, then 8 concurrent), so the two sides of a ratio are tens of seconds apart and often in
different windows: the ratio of two rounds follows the windows more than the code. Here the engine
stays loaded in one child process, and each of its measurements is paired with llama.cpp's own
benchmark of the same shape (llama-bench: batch 1; llama-batched-bench: 8 concurrent) run right
before or after it (the order alternates), so both sides of a pair fall in the same window. Each
pair's ratio is reported, and their median is the comparison (issue #21: >= 1.0x).
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from ernie_ops.benchmark import print_table, write_report
from ernie_ops.proc import die_with_parent
from servebench import SCRIPT
from servebench.checkpoint import (
    BATCH,
    NEW_TOKENS,
    PROMPT_LEN,
    SEED,
    build_model,
    gguf_file,
    part_settings,
    prompts,
)
from servebench.llamacpp import own_batch1, own_batched, own_benchmarks
from servebench.measure import print_targets

# a pair's shapes: the metric compared, the requests at once
SHAPES = {"b1": ("b1_decode_tok_s", 1), "b8": ("b8_e2e_tok_s", BATCH)}
REPLY = "PAIRED "  # the worker's answer lines (libraries may print to stdout too)
REPLY_TIMEOUT_S = 1800.0  # as --part compare's children: a worker that stops answering is killed


def engine_worker(model_dir: Path, new_tokens: int) -> int:
    """The child: the engine loaded once and warmed up at both shapes, then one measurement per line
    of stdin ("b1 SEED" / "b8 SEED"), its figures as a REPLY line; ends at the end of stdin."""
    from ernie_ops.serve.engine import Engine
    from servebench.engine import engine_run

    engine = Engine.load(model_dir, max_batch_size=BATCH)
    engine.start()
    try:
        for n in (1, BATCH):
            engine_run(engine, prompts(n, PROMPT_LEN, 99), 2)  # first-touch allocations, not counted
        print(REPLY + json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            shape, seed = line.split()
            run = engine_run(engine, prompts(SHAPES[shape][1], PROMPT_LEN, int(seed)), new_tokens)
            print(REPLY + json.dumps(run), flush=True)
    finally:
        engine.stop()
    return 0


class EngineWorker:
    """The parent's handle on `engine_worker` (a child that dies with this process)."""

    def __init__(self, args: Any, env: dict[str, str], new_tokens: int, log: IO[str]):
        cmd = [sys.executable, SCRIPT, "--engine-worker", "--model-dir", str(args.model_dir)]
        cmd += ["--threads", str(args.threads), "--new-tokens", str(new_tokens)]
        self.log = log
        self.proc = subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            preexec_fn=die_with_parent(),
        )
        self._reply()  # loaded and warmed up

    def _reply(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        watchdog = threading.Timer(REPLY_TIMEOUT_S, self.proc.kill)
        watchdog.start()
        try:
            for line in self.proc.stdout:
                if line.startswith(REPLY):
                    return dict(json.loads(line[len(REPLY) :]))
        finally:
            watchdog.cancel()
        code = self.proc.wait()
        why = (
            f"gave no answer within {REPLY_TIMEOUT_S:g} s and was killed"
            if code == -9
            else f"exited with {code}"
        )
        self.log.flush()
        raise RuntimeError(f"the engine worker {why}:\n{Path(self.log.name).read_text()[-3000:]}")

    def measure(self, shape: str, seed: int) -> dict[str, float]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{shape} {seed}\n")
        self.proc.stdin.flush()
        run = self._reply()
        if shape == "b1":
            return {"b1_decode_tok_s": run["decode_tok_s"], "b1_ttft_s": run["ttft_s"]}
        return {"b8_e2e_tok_s": run["e2e_tok_s"]}

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()  # the worker's loop ends, it stops the engine
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def paired_main(args: Any, env: dict[str, str]) -> int:
    from servebench.compare import engine_env

    started = time.perf_counter()
    new_tokens = args.new_tokens or (8 if args.quick else NEW_TOKENS)
    rounds = 1 if args.quick else args.rounds
    binaries = own_benchmarks()
    if not binaries:
        print(
            "error: --part paired compares with llama.cpp's own llama-bench / llama-batched-bench, "
            "not found beside llama-server: scripts/build_llama_server.sh installs them",
            file=sys.stderr,
        )
        return 2
    model_dir = build_model(args.model_dir)  # built once, at args.model_dir (the worker's too)
    path = gguf_file(model_dir, "f32")
    own: dict[str, Callable[[], dict[str, Any]]] = {
        "b1": lambda: own_batch1(binaries, path, args.threads, new_tokens),
        "b8": lambda: own_batched(binaries, path, args.threads, new_tokens),
    }
    load_before = os.getloadavg()
    pairs: list[dict[str, Any]] = []
    with tempfile.NamedTemporaryFile("w+", prefix="bench-paired-", suffix=".log") as log:
        worker = EngineWorker(args, engine_env(env), new_tokens, log)
        try:
            for r in range(rounds):
                for k, (shape, (metric, _n)) in enumerate(SHAPES.items()):
                    sides: list[tuple[str, Callable[[], dict[str, Any]]]] = [
                        ("engine", functools.partial(worker.measure, shape, SEED + r)),
                        ("llamacpp-f32", own[shape]),
                    ]
                    if (r + k) % 2:  # who goes first alternates, by round and by shape
                        sides.reverse()
                    pair: dict[str, Any] = {"round": r + 1, "shape": shape, "metric": metric}
                    pair["load_average_1m"] = os.getloadavg()[0]
                    pair |= {name: measure() for name, measure in sides}
                    pair["first"] = sides[0][0]
                    pair["ratio"] = pair["engine"][metric] / pair["llamacpp-f32"][metric]
                    pairs.append(pair)
                    print(
                        f"round {r + 1} {metric}: engine {pair['engine'][metric]:.1f}, llama.cpp f32 "
                        f"{pair['llamacpp-f32'][metric]:.1f} tok/s = {pair['ratio']:.2f}x "
                        f"({pair['first']} first, load {pair['load_average_1m']:.2f})",
                        flush=True,
                    )
        finally:
            worker.close()
    load_after = os.getloadavg()
    summary = summarize(pairs)
    rows = [
        [
            "metric",
            "pairs",
            "engine median",
            "llama.cpp f32 median",
            "paired ratio median",
            "min - max",
            "engine ahead",
        ]
    ]
    for metric, s in summary.items():
        rows.append(
            [
                metric,
                str(s["pairs"]),
                f"{s['engine_median']:.1f}",
                f"{s['llamacpp_median']:.1f}",
                f"{s['ratio_median']:.2f}x",
                f"{s['ratio_min']:.2f} - {s['ratio_max']:.2f}",
                f"{s['engine_ahead']} of {s['pairs']}",
            ]
        )
    print()
    print_table(rows)
    targets = {
        f"engine_{shape}_vs_llamacpp_f32": {
            "target": f">= 1.0x (median of paired ratios, {metric})",
            "value": summary[metric]["ratio_median"],
            "met": summary[metric]["ratio_median"] >= 1.0,
        }
        for shape, (metric, _n) in SHAPES.items()
        if metric in summary
    }
    print_targets(targets)
    total = time.perf_counter() - started
    print(
        f"\n{rounds} round(s) of pairs; {PROMPT_LEN}-token prompts, {new_tokens} new tokens, greedy; "
        f"{args.threads} threads; llama.cpp: llama-bench / llama-batched-bench on {path.name}; load average "
        f"(1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after; total {total:.0f} s"
    )
    write_report(
        args.out,
        settings=part_settings("paired", new_tokens, model_dir, rounds=rounds, threads=args.threads),
        load_average_before=load_before,
        load_average_after=load_after,
        pairs=pairs,
        summary=summary,
        targets=targets,
        total_s=total,
    )
    return 0


def summarize(pairs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per metric: the pairs, each side's median, the paired ratios' median / min / max, and in how
    many pairs the engine was ahead."""
    out: dict[str, dict[str, Any]] = {}
    for metric in dict.fromkeys(p["metric"] for p in pairs):
        mine = [p for p in pairs if p["metric"] == metric]
        ratios = [p["ratio"] for p in mine]
        out[metric] = {
            "pairs": len(mine),
            "engine_median": statistics.median(p["engine"][metric] for p in mine),
            "llamacpp_median": statistics.median(p["llamacpp-f32"][metric] for p in mine),
            "ratio_median": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "engine_ahead": sum(r >= 1.0 for r in ratios),
        }
    return out
