"""--part compare: every contender in a fresh child process, interleaved rounds."""

from __future__ import annotations

import atexit
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ernie_ops.benchmark import print_table, write_report
from servebench import REPO, SCRIPT
from servebench.checkpoint import (
    BATCH,
    NEW_TOKENS,
    PROMPT_LEN,
    build_model,
    gguf_file,
    part_settings,
    weight_bytes,
)
from servebench.engine import engine_phase
from servebench.llamacpp import llamacpp_phase, own_benchmarks, own_phase
from servebench.measure import best_per_metric, print_targets
from servebench.overhead import tree_of
from servebench.served import serve_phase

# ---------------------------------------------------------------------------------------------
# the comparison (--part compare, the default): every contender in a fresh child process, the
# contenders taken in turn, `--rounds` times (the order reversed every other round), so a busy
# neighbour slows all of them alike; the 1-minute load average is recorded with every run

CONTENDERS = {
    "engine": "the embedded engine in-process, float32",
    "engine-wint8": "the embedded engine in-process, FastDeploy's wint8 emulated (float32 compute)",
    "engine-serve": "ernie-ops serve CHECKPOINT --engine paddle, streaming HTTP clients",
    "llamacpp-f32": "llama.cpp's own llama-bench / llama-batched-bench (else in-process, batched alike)",
    "llamacpp-q8_0": "the same, q8_0 GGUF",
    "llamacpp-q4_0": "the same, q4_0 GGUF",
    "llamacpp-serve-f32": "ernie-ops serve FILE.gguf --engine llamacpp, streaming HTTP clients",
    "llamacpp-serve-q8_0": "the same, q8_0 GGUF",
    "llamacpp-serve-q4_0": "the same, q4_0 GGUF",
    "pytorch": "PyTorch + transformers' Ernie4_5ForCausalLM generate (static batch 8)",
}
DEFAULT_CONTENDERS = (
    "engine",
    "llamacpp-f32",
    "llamacpp-q8_0",
    "llamacpp-q4_0",
    "llamacpp-serve-q4_0",
    "engine-serve",
    "pytorch",
)
METRICS = ("b1_decode_tok_s", "b1_ttft_s", "b8_e2e_tok_s", "peak_rss_mb", "rss_mb")


def run_phase(name: str, args: Any) -> dict[str, Any]:
    """One contender's measurement, in this (child) process."""
    new_tokens = args.new_tokens or NEW_TOKENS
    if name in ("engine", "engine-wint8") or name.startswith("engine@"):
        return engine_phase(args.model_dir, "wint8" if name == "engine-wint8" else None, new_tokens)
    if name == "engine-serve":
        return serve_phase(args.model_dir, "paddle", args.model_dir, args.threads, new_tokens)
    if name.startswith("llamacpp-serve-"):
        path = gguf_file(args.model_dir, name.rsplit("-", 1)[1])
        return serve_phase(path, "llamacpp", args.model_dir, args.threads, new_tokens)
    if name.startswith("llamacpp-"):
        path = gguf_file(args.model_dir, name.split("-", 1)[1])
        binaries = own_benchmarks()
        if binaries:
            return own_phase(binaries, path, args.threads, new_tokens)
        return llamacpp_phase(path, args.threads, new_tokens) | {"own": "in-process (llama-cpp-python)"}
    raise ValueError(name)


def engine_env(env: dict[str, str]) -> dict[str, str]:
    """ENV for a process running the engine in-process, as the embedded backend sets it for its server:
    else ERNIEKit's tokenizer imports torch through paddleformers and the engine's load peak reads
    1.44x the weights, not 1.28x."""
    return {"USE_TORCH": "0", **env}


def contender_round(name: str, args: Any, env: dict[str, str], new_tokens: int) -> dict[str, Any]:
    """One contender in a fresh child process; its figures in METRICS' names. engine@REV runs the
    engine of commit REV (`--before`; a `git archive` of it leads PYTHONPATH)."""
    load = os.getloadavg()[0]
    if name.startswith("engine") and name != "engine-serve":
        env = engine_env(env)
    if name.startswith("engine@"):
        tree = str(args.before_tree)
        env = {**env, "PYTHONPATH": os.pathsep.join(p for p in (tree, env.get("PYTHONPATH")) if p)}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "phase.json"
        common = ["--threads", str(args.threads), "--new-tokens", str(new_tokens)]
        if name == "pytorch":
            cmd = [sys.executable, SCRIPT, "--torch-phase", str(out), "--repeat", "1", *common]
        else:
            cmd = [
                sys.executable,
                SCRIPT,
                "--phase",
                name,
                str(out),
                "--model-dir",
                str(args.model_dir),
                *common,
            ]
        proc = subprocess.run(cmd, env=env, timeout=1800, text=True, capture_output=True)
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"{name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        res = json.loads(out.read_text())
    if name.startswith("engine@") and not str(res["source"]).startswith(str(args.before_tree)):
        raise RuntimeError(f"{name} ran {res['source']}, not the archived tree {args.before_tree}")
    if name == "pytorch":  # its own layout (the engine-detail part's table reads it too)
        res = {
            "b1_decode_tok_s": res["batch1"]["decode_tok_s"],
            "b1_ttft_s": res["batch1"]["ttft_s"],
            "b8_e2e_tok_s": res["batch8"]["e2e_tok_s"],
            "peak_rss_mb": res.get("peak_rss_mb", float("nan")),
            "rss_mb": res.get("rss_mb", float("nan")),
        }
    return res | {"load_average_1m": load}


def compare_targets(best: dict[str, dict[str, float]], wbytes: int) -> dict[str, Any]:
    """Issue #21's acceptance, on the best (quietest) round of each contender; llama.cpp's own
    figures are llama-bench / llama-batched-bench's, or the in-process contenders without them."""
    targets: dict[str, Any] = {}

    def ratio(key: str, a: str, b: str, metric: str, target: float) -> None:
        if a in best and b in best:
            value = best[a][metric] / best[b][metric]
            targets[key] = {
                "target": f">= {target}x ({a} / {b}, {metric})",
                "value": value,
                "met": value >= target,
            }

    ratio("engine_b1_vs_llamacpp_f32", "engine", "llamacpp-f32", "b1_decode_tok_s", 1.0)
    ratio("engine_b8_vs_llamacpp_f32", "engine", "llamacpp-f32", "b8_e2e_tok_s", 1.0)
    if "engine" in best:  # the peak while loading (serving adds the KV cache and activations)
        value = best["engine"]["load_peak_rss_mb"] * 2**20 / wbytes
        targets["engine_load_peak"] = {"target": "<= 1.3x weight bytes", "value": value, "met": value <= 1.3}
    ratio("serve_q4_0_b1_vs_llamacpp", "llamacpp-serve-q4_0", "llamacpp-q4_0", "b1_decode_tok_s", 0.9)
    ratio("serve_q4_0_b8_vs_llamacpp", "llamacpp-serve-q4_0", "llamacpp-q4_0", "b8_e2e_tok_s", 0.9)
    return targets


def own_note(runs: dict[str, list[dict[str, Any]]]) -> str:
    """Where llama.cpp's own figures came from, for the summary line."""
    sources = {r["own"] for v in runs.values() for r in v if "own" in r}
    if not sources:
        return ""
    if sources == {"llama-bench / llama-batched-bench"}:
        return "llama.cpp's own figures: llama-bench / llama-batched-bench; "
    return (
        f"llama.cpp's own figures: {' and '.join(sorted(sources))} (llama-bench / llama-batched-bench "
        "not found beside llama-server: scripts/build_llama_server.sh installs them); "
    )


def compare_main(args: Any, env: dict[str, str]) -> int:
    started = time.perf_counter()
    contenders = args.contenders
    if args.before:  # the engine as it was at commit BEFORE, beside this checkout's
        rev = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", args.before],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        scratch = tempfile.mkdtemp(prefix="bench-before-")
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)  # also after Ctrl-C or a failure
        args.before_tree = tree_of(rev, Path(scratch))
        contenders = [f"engine@{rev}", *contenders]
    new_tokens = args.new_tokens or (8 if args.quick else NEW_TOKENS)
    rounds = 1 if args.quick else args.rounds
    model_dir = build_model(args.model_dir)
    wbytes = weight_bytes(model_dir)
    for name in contenders:  # the exports happen before any timing
        if name.startswith("llamacpp-"):
            gguf_file(model_dir, name.rsplit("-", 1)[1])
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders}
    load_before = os.getloadavg()
    for r in range(rounds):
        for name in contenders if r % 2 == 0 else contenders[::-1]:
            res = contender_round(name, args, env, new_tokens)
            runs[name].append(res)
            print(
                f"round {r + 1} {name}: batch 1 {res['b1_decode_tok_s']:.1f} tok/s, "
                f"TTFT {res['b1_ttft_s']:.2f} s; "
                f"{BATCH} concurrent {res['b8_e2e_tok_s']:.1f} tok/s; peak RSS {res['peak_rss_mb']:.0f} MiB "
                f"(load {res['load_average_1m']:.2f})",
                flush=True,
            )
    load_after = os.getloadavg()
    # each metric's best round per contender (as --part llamacpp-serve), and the median of each
    best = {c: best_per_metric(v, (*METRICS, "load_peak_rss_mb")) for c, v in runs.items()}
    median = {c: {m: statistics.median(x[m] for x in v) for m in METRICS} for c, v in runs.items()}
    base = "llamacpp-f32" if "llamacpp-f32" in best else None

    def rel(c: str, m: str) -> str:
        if base is None or c == base:
            return ""
        return f" ({best[c][m] / best[base][m]:.2f}x)"

    rows = [
        [
            "contender",
            "batch-1 decode tok/s",
            f"{BATCH} concurrent e2e tok/s",
            "TTFT batch 1 s",
            "RSS / peak MiB",
        ]
    ]
    for c in contenders:
        b = best[c]
        # llama.cpp's own tools report only their peak (the process's ru_maxrss), no steady RSS
        rss = "-" if math.isnan(b["rss_mb"]) else f"{b['rss_mb']:.0f}"
        rows.append(
            [
                c,
                f"{b['b1_decode_tok_s']:.1f}{rel(c, 'b1_decode_tok_s')}",
                f"{b['b8_e2e_tok_s']:.1f}{rel(c, 'b8_e2e_tok_s')}",
                f"{b['b1_ttft_s']:.3f}{rel(c, 'b1_ttft_s')}",
                f"{rss} / {b['peak_rss_mb']:.0f}",
            ]
        )
    print()
    print_table(rows)
    # this run's own threads keep the 1-minute load near the thread count: over 1.5x the CPUs,
    # other processes were taking a share of them
    busy = [c for c in contenders if min(x["load_average_1m"] for x in runs[c]) > 1.5 * (os.cpu_count() or 1)]
    if busy:
        print(f"warning: the load average was over 1.5x the CPUs in every round of {', '.join(busy)}")
    targets = compare_targets(best, wbytes)
    print_targets(targets)
    total = time.perf_counter() - started
    print(
        f"\neach metric's best of {rounds} interleaved round(s) per contender (ratios: to {base or 'none'}); "
        f"{PROMPT_LEN}-token prompts, {new_tokens} new tokens, greedy; {args.threads} threads everywhere; "
        f"weights {wbytes / 1e9:.2f} GB; load average (1 min) {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after; {own_note(runs)}total {total:.0f} s"
    )
    write_report(
        args.out,
        settings=part_settings(
            "compare", new_tokens, model_dir, contenders=list(contenders), rounds=rounds, threads=args.threads
        ),
        weight_bytes=wbytes,
        load_average_before=load_before,
        load_average_after=load_after,
        runs=runs,
        best=best,
        median=median,
        targets=targets,
        total_s=total,
    )
    return 0
