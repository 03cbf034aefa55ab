"""The embedded engine in-process: the engine-detail runs and the compare contenders' phase."""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from servebench.checkpoint import BATCH, PROMPT_LEN, SEED, prompts
from servebench.measure import peak_rss_mb, vm_rss_mb

# ---------------------------------------------------------------------------------------------
# the engine, in-process


def engine_run(engine: Any, batch: list[list[int]], new_tokens: int) -> dict[str, float]:
    """Submit all prompts at once to the running engine; per-request token timestamps."""
    from ernie_ops.serve.engine import SamplingParams

    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    started = time.perf_counter()
    handles = [engine.submit(p, params) for p in batch]
    stamps: list[list[tuple[float, int]]] = [[] for _ in handles]

    def consume(i: int) -> None:
        for delta in handles[i].stream():
            if delta.token_ids:
                stamps[i].append((time.perf_counter(), len(delta.token_ids)))

    readers = [threading.Thread(target=consume, args=(i,)) for i in range(len(handles))]
    for r in readers:
        r.start()
    for r in readers:
        r.join()
    ended = time.perf_counter()
    results = [h.result() for h in handles]
    bad = [r for r in results if len(r.token_ids) != new_tokens or r.finish_reason != "length"]
    if bad:
        raise RuntimeError(f"engine: {bad[0].request_id} ended {bad[0].finish_reason!r} {bad[0].error or ''}")
    first = [s[0][0] for s in stamps]
    tokens = len(batch) * new_tokens
    decode_s = ended - max(first)  # every row is decoding from the last first token on
    # tokens produced after the slowest row's first token / the time since then
    late = sum(n for s in stamps for t, n in s if t > max(first))
    return {
        "ttft_s": statistics.median(f - started for f in first),
        "ttft_max_s": max(first) - started,
        "decode_tok_s": late / decode_s if decode_s > 0 else float("nan"),
        "e2e_tok_s": tokens / (ended - started),
        "wall_s": ended - started,
    }


def long_prompt_arrival(engine: Any, chunk: int, long_len: int) -> dict[str, float]:
    """Four streams decoding when a `long_len`-token prompt arrives: their longest gap between tokens
    while it is prefilled (in chunks of `chunk` tokens), and its time to first token."""
    from ernie_ops.serve.engine import SamplingParams

    engine.prefill_chunk = chunk
    params = SamplingParams(max_tokens=10_000, temperature=0.0, ignore_eos=True)
    running = [engine.submit(p, params) for p in prompts(4, PROMPT_LEN, 7)]
    streams = [h.stream() for h in running]
    for s in streams:  # every stream is decoding
        next(s)
    submitted = time.perf_counter()
    long = engine.submit(prompts(1, long_len, 8)[0], SamplingParams(max_tokens=1, temperature=0.0))
    gaps, last = [], time.perf_counter()
    while not long.finished:
        next(streams[0])
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
    ttft = time.perf_counter() - submitted
    for h in running:
        engine.cancel(h.request_id)
    for h in running:
        h.result()
    return {"max_gap_s": max(gaps), "ttft_long_s": ttft, "chunk": chunk}


def plan(label: str, repeat: int, quick: bool, new_tokens: int) -> tuple[int, int]:
    """(warm-up new tokens at the measured shape, measured runs): batch 8 is measured once."""
    if quick:
        return 2, 1
    return (new_tokens, repeat) if label == "batch1" else (8, 1)


def bench_engine(model_dir: Path, repeat: int, new_tokens: int, quick: bool) -> dict[str, Any]:
    from ernie_ops.serve.engine import PREFILL_CHUNK, Engine

    started = time.perf_counter()
    engine = Engine.load(model_dir, max_batch_size=BATCH)
    load_s = time.perf_counter() - started
    engine.start()
    try:
        out: dict[str, Any] = {"load_s": load_s}
        for label, n in (("batch1", 1), ("batch8", BATCH)):
            warm, times = plan(label, repeat, quick, new_tokens)
            engine_run(engine, prompts(n, PROMPT_LEN, 99), warm)  # first-touch allocations, not counted
            runs = [engine_run(engine, prompts(n, PROMPT_LEN, SEED + r), new_tokens) for r in range(times)]
            out[label] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            out[label]["runs"] = len(runs)
            print(
                f"engine {label}: decode {out[label]['decode_tok_s']:.2f} tok/s, "
                f"e2e {out[label]['e2e_tok_s']:.2f} tok/s, TTFT {out[label]['ttft_s']:.3f} s",
                flush=True,
            )
        long_len = 1024 if quick else 2048
        for label, chunk in (("long_whole", 10**9), ("long_chunked", PREFILL_CHUNK)):
            out[label] = long_prompt_arrival(engine, chunk, long_len) | {"long_tokens": long_len}
            print(
                f"engine {long_len}-token prompt arriving ({label}): streams' longest gap "
                f"{out[label]['max_gap_s']:.2f} s, its TTFT {out[label]['ttft_long_s']:.2f} s",
                flush=True,
            )
        return out
    finally:
        engine.stop()


def engine_phase(model_dir: Path, quantization: str | None, new_tokens: int) -> dict[str, Any]:
    from ernie_ops.serve.engine import Engine

    started = time.perf_counter()
    engine = Engine.load(model_dir, max_batch_size=BATCH, quantization=quantization)
    out: dict[str, Any] = {
        "load_s": time.perf_counter() - started,
        "load_peak_rss_mb": peak_rss_mb(),
        "source": sys.modules[Engine.__module__].__file__,  # which tree's engine ran (engine@REV)
    }
    engine.start()
    try:
        engine_run(engine, prompts(1, PROMPT_LEN, 99), 2)  # first-touch allocations, not counted
        b1 = engine_run(engine, prompts(1, PROMPT_LEN, SEED), new_tokens)
        engine_run(engine, prompts(BATCH, PROMPT_LEN, 99), 2)
        b8 = engine_run(engine, prompts(BATCH, PROMPT_LEN, SEED), new_tokens)
    finally:
        engine.stop()
    return out | {
        "b1_decode_tok_s": b1["decode_tok_s"],
        "b1_ttft_s": b1["ttft_s"],
        "b8_e2e_tok_s": b8["e2e_tok_s"],
        "b8_decode_tok_s": b8["decode_tok_s"],
        "rss_mb": vm_rss_mb(os.getpid()),
        "peak_rss_mb": peak_rss_mb(),
    }
