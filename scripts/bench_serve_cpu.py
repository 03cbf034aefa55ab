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
The table shows each contender's best round (the quietest) with its ratio to llamacpp-f32, then
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

import asyncio
import contextlib
import gc
import itertools
import json
import logging
import os
import random
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ernie_ops.benchmark import bench_parser, print_table, write_report

DEFAULT_MODEL_DIR = Path(tempfile.gettempdir()) / "ernie-ops-bench" / "ernie45-0.3b-random"
SEED = 0
PROMPT_LEN = 64
NEW_TOKENS = 32
BATCH = 8
CLIENTS = 16
SERVED_NAME = "ernie45-0.3b-random"
# ERNIE-4.5-0.3B's shapes (its public config.json)
SHAPE = dict(
    vocab_size=103424,
    hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=18,
    num_attention_heads=16,
    num_key_value_heads=2,
    head_dim=128,
    max_position_embeddings=131072,
    rope_theta=500000.0,
)


# ---------------------------------------------------------------------------------------------
# the checkpoint


def build_model(out: Path) -> Path:
    """The random 0.3B-shaped checkpoint at `out`, built once (tiny_model.json records the shape)."""
    from ernie_ops.tiny_model import TinySpec, build_tiny_model

    spec = TinySpec(**SHAPE)
    marker = out / "tiny_model.json"
    if marker.is_file() and all(json.loads(marker.read_text()).get(k) == v for k, v in SHAPE.items()):
        print(f"model: cached at {out}")
        return out
    print(f"model: building the 0.3B-shaped random checkpoint at {out} (once)", flush=True)
    started = time.perf_counter()
    build_tiny_model(out, seed=SEED, force=True, spec=spec)
    print(f"model: built in {time.perf_counter() - started:.0f} s", flush=True)
    return out


def weight_bytes(model_dir: Path) -> int:
    """Weight bytes one decode step reads: every tensor, the embedding table counted once.

    The embedding lookup reads one row; the LM head (tied: the same table) reads it all. ERNIEKit's
    save_pretrained writes `lm_head.weight` beside `embed_tokens.weight` even when tied, so the
    table is left out when a separate LM head is stored.
    """
    sizes: dict[str, int] = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        with file.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        for name, info in header.items():
            if name != "__metadata__":
                sizes[name] = info["data_offsets"][1] - info["data_offsets"][0]
    if any(k.endswith("lm_head.weight") for k in sizes):
        sizes = {k: v for k, v in sizes.items() if not k.endswith("embed_tokens.weight")}
    return sum(sizes.values())


# ---------------------------------------------------------------------------------------------
# small helpers


def prompts(n: int, length: int, seed: int) -> list[list[int]]:
    """Fixed token-id prompts from the tokenizer's real pieces (ids 3..999)."""
    rng = random.Random(seed)
    return [[rng.randrange(3, 1000) for _ in range(length)] for _ in range(n)]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def vm_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------------------------
# memory bandwidth


def copy_bandwidth(threads: int, mib: int, repeat: int) -> float:
    """GB/s of a numpy array copy split over `threads` (read + write bytes), best of `repeat`."""
    import numpy as np

    src = np.ones(mib * 2**20 // 8, dtype=np.float64)
    dst = np.zeros_like(src)
    parts = np.array_split(np.arange(src.size), threads)
    bounds = [(int(p[0]), int(p[-1]) + 1) for p in parts]

    def copy(lo: int, hi: int) -> None:
        np.copyto(dst[lo:hi], src[lo:hi])  # releases the GIL for large copies

    best = float("inf")
    for _ in range(repeat + 1):  # the first pass faults the pages in
        workers = [threading.Thread(target=copy, args=b) for b in bounds]
        started = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = min(best, time.perf_counter() - started)
    return 2 * src.nbytes / best / 1e9


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


# ---------------------------------------------------------------------------------------------
# PyTorch + transformers (child process, so the two frameworks' OpenMP runtimes never meet)


def torch_phase(threads: int, repeat: int, new_tokens: int, quick: bool, out: Path) -> None:
    import torch
    from transformers import Ernie4_5Config, Ernie4_5ForCausalLM

    torch.set_num_threads(threads)
    torch.manual_seed(SEED)
    config = Ernie4_5Config(
        **SHAPE, tie_word_embeddings=True, use_bias=False, hidden_act="silu", rms_norm_eps=1e-5
    )
    started = time.perf_counter()
    model = Ernie4_5ForCausalLM(config).to(torch.float32).eval()
    build_s = time.perf_counter() - started
    params = sum(p.numel() for p in model.parameters())

    def timed(batch: list[list[int]], n: int) -> float:
        ids = torch.tensor(batch, dtype=torch.long)
        with torch.inference_mode():
            t0 = time.perf_counter()
            gen = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n,
                min_new_tokens=n,  # EOS suppressed: fixed lengths
                do_sample=False,
                use_cache=True,
                pad_token_id=0,
            )
            elapsed = time.perf_counter() - t0
        assert gen.shape[1] == ids.shape[1] + n, gen.shape
        return elapsed

    result: dict[str, Any] = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "params": params,
        "build_s": build_s,
    }
    for label, b in (("batch1", 1), ("batch8", BATCH)):
        warm, times = plan(label, repeat, quick, new_tokens)
        timed(prompts(b, PROMPT_LEN, 99), warm)  # first-touch allocations, not counted
        full, one = [], []
        for r in range(times):
            batch = prompts(b, PROMPT_LEN, SEED + r)
            one.append(timed(batch, 1))
            full.append(timed(batch, new_tokens))
        t_full, t_one = statistics.median(full), statistics.median(one)
        result[label] = {
            "ttft_s": t_one,
            "decode_tok_s": b * (new_tokens - 1) / (t_full - t_one),
            "e2e_tok_s": b * new_tokens / t_full,
            "wall_s": t_full,
            "runs": times,
        }
        print(
            f"pytorch {label}: decode {result[label]['decode_tok_s']:.2f} tok/s, "
            f"e2e {result[label]['e2e_tok_s']:.2f} tok/s",
            flush=True,
        )
    result["rss_mb"], result["peak_rss_mb"] = vm_rss_mb(os.getpid()), peak_rss_mb()
    out.write_text(json.dumps(result, indent=2) + "\n")


def bench_torch(
    threads: int, repeat: int, new_tokens: int, quick: bool, env: dict[str, str]
) -> dict[str, Any]:
    try:
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            return {"skipped": "torch is not installed (pip install torch==2.13.0)"}
    except ImportError:
        return {"skipped": "torch is not installed"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "torch.json"
        cmd = [
            sys.executable,
            __file__,
            "--torch-phase",
            str(out),
            "--threads",
            str(threads),
            "--repeat",
            str(repeat),
            "--new-tokens",
            str(new_tokens),
            *(["--quick"] if quick else []),
        ]
        proc = subprocess.run(cmd, env=env, timeout=900, text=True, stdout=sys.stdout, stderr=subprocess.PIPE)
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"the PyTorch phase failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


# ---------------------------------------------------------------------------------------------
# the server


class Server:
    """`python -m ernie_ops.serve.openai_server` on a free loopback port; always stopped on exit."""

    def __init__(self, model_dir: Path, env: dict[str, str], log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("w")
        cmd = [
            sys.executable,
            "-m",
            "ernie_ops.serve.openai_server",
            "--model",
            str(model_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--served-model-name",
            SERVED_NAME,
            "--max-batch-size",
            str(BATCH),
        ]
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float) -> float:
        import httpx

        started = time.perf_counter()
        while time.perf_counter() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return time.perf_counter() - started
            time.sleep(0.5)
        raise RuntimeError(f"the server was not healthy after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


async def one_request(
    client: Any, url: str, prompt: list[int], max_tokens: int, stream: bool
) -> dict[str, Any]:
    """One /v1/completions call; times to the first text and to the end, the completion tokens."""
    body: dict[str, Any] = {
        "model": SERVED_NAME,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    started = time.perf_counter()
    ttft, tokens, finish = None, None, None
    if not stream:
        r = await client.post(f"{url}/v1/completions", json=body)
        ended = time.perf_counter()
        if r.status_code != 200:
            return {"error": f"HTTP {r.status_code}: {r.text[:200]}"}
        data = r.json()
        tokens, finish = data["usage"]["completion_tokens"], data["choices"][0]["finish_reason"]
        ttft = ended - started
    else:
        async with client.stream("POST", f"{url}/v1/completions", json=body) as r:
            if r.status_code != 200:
                return {"error": f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"}
            done = False
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                payload = line[6:]
                if payload == "[DONE]":
                    done = True
                    break
                chunk = json.loads(payload)
                if "error" in chunk:
                    return {"error": f"stream error: {chunk['error'].get('message')}"}
                for choice in chunk.get("choices") or []:
                    if choice.get("text") and ttft is None:
                        ttft = time.perf_counter() - started
                    finish = choice.get("finish_reason") or finish
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
            ended = time.perf_counter()
            if not done:
                return {"error": "stream ended without [DONE]"}
    if tokens != max_tokens or finish != "length":
        return {"error": f"got {tokens} tokens (finish {finish!r}), wanted {max_tokens}"}
    return {"ttft_s": ttft, "e2e_s": ended - started, "tokens": tokens, "start": started, "end": ended}


async def concurrent_clients(url: str, n: int, new_tokens: int) -> dict[str, Any]:
    import httpx

    limits = httpx.Limits(max_connections=n + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600, connect=10), limits=limits) as client:
        await one_request(client, url, prompts(1, 16, 99)[0], 4, True)  # warm-up
        started = time.perf_counter()
        results = await asyncio.gather(
            *(one_request(client, url, p, new_tokens, True) for p in prompts(n, PROMPT_LEN, SEED + 100))
        )
        wall = time.perf_counter() - started
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise RuntimeError(f"{len(errors)} of {n} concurrent requests failed, first: {errors[0]}")
    ttfts = [r["ttft_s"] for r in results]
    return {
        "clients": n,
        "tok_s": sum(r["tokens"] for r in results) / wall,
        "ttft_p50_s": pct(ttfts, 0.5),
        "ttft_p90_s": pct(ttfts, 0.9),
        "e2e_p50_s": pct([r["e2e_s"] for r in results], 0.5),
        "wall_s": wall,
    }


async def soak(url: str, n: int, concurrency: int, max_prompt: int, max_new: int, deadline_s: float) -> dict:
    import httpx

    rng = random.Random(SEED + 7)
    jobs = [
        (
            [rng.randrange(3, 1000) for _ in range(rng.randint(1, max_prompt))],
            rng.randint(1, max_new),
            rng.random() < 0.5,
        )
        for _ in range(n)
    ]
    gate = asyncio.Semaphore(concurrency)
    errors: list[str] = []
    tokens = 0

    async def run(client: Any, job: tuple[list[int], int, bool]) -> None:
        nonlocal tokens
        async with gate:
            try:
                r = await one_request(client, url, *job)
            except Exception as err:  # a transport error is an error of the soak, not of this script
                r = {"error": f"{type(err).__name__}: {err}"}
        if "error" in r:
            errors.append(r["error"])
        else:
            tokens += r["tokens"]

    limits = httpx.Limits(max_connections=concurrency + 4)
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=httpx.Timeout(300, connect=10), limits=limits) as client:
        tasks = [asyncio.ensure_future(run(client, job)) for job in jobs]
        _, pending = await asyncio.wait(tasks, timeout=deadline_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    if pending:
        errors.extend(["not finished before the soak's deadline"] * len(pending))
    return {
        "requests": n,
        "concurrency": concurrency,
        "errors": len(errors),
        "first_errors": errors[:5],
        "tokens": tokens,
        "wall_s": time.perf_counter() - started,
    }


def bench_server(model_dir: Path, env: dict[str, str], quick: bool, new_tokens: int) -> dict[str, Any]:
    log_path = Path(tempfile.gettempdir()) / f"bench_serve_cpu.server.{os.getpid()}.log"
    server = Server(model_dir, env, log_path)
    try:
        ready_s = server.wait_ready(timeout=300)
        print(f"server: healthy on {server.url} after {ready_s:.1f} s (log {log_path})", flush=True)
        clients = 4 if quick else CLIENTS
        conc = asyncio.run(concurrent_clients(server.url, clients, new_tokens))
        print(
            f"server {clients} clients: {conc['tok_s']:.2f} tok/s, TTFT p50 {conc['ttft_p50_s']:.2f} s "
            f"p90 {conc['ttft_p90_s']:.2f} s, e2e p50 {conc['e2e_p50_s']:.2f} s",
            flush=True,
        )
        n, max_prompt, max_new = (10, 16, 4) if quick else (200, 24, 8)
        rss_before = vm_rss_mb(server.proc.pid)
        soaked = asyncio.run(
            soak(server.url, n, CLIENTS, max_prompt, max_new, deadline_s=120 if quick else 420)
        )
        time.sleep(1.0)  # let the last responses' buffers go
        rss_after = vm_rss_mb(server.proc.pid)
        soaked.update(
            rss_before_mb=rss_before,
            rss_after_mb=rss_after,
            rss_ratio=rss_after / rss_before,
            max_prompt=max_prompt,
            max_tokens=max_new,
        )
        print(
            f"soak: {n} requests, {soaked['errors']} errors, {soaked['wall_s']:.0f} s, RSS "
            f"{rss_before:.0f} -> {rss_after:.0f} MiB",
            flush=True,
        )
        if server.proc.poll() is not None:
            raise RuntimeError(f"the server died during the run:\n{server.log_tail()}")
        return {"ready_s": ready_s, "concurrent": conc, "soak": soaked}
    finally:
        server.stop()


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
SERVE_CONTEXT = 2048  # max_model_len of the served contenders: room for the prompts, a small KV cache


def gguf_file(model_dir: Path, quant: str) -> Path:
    """The checkpoint's GGUF export in QUANT beside it (`ernie-ops export DIR --format gguf`), made once."""
    from ernie_ops.train.gguf_format import convert, default_name

    path = model_dir.parent / default_name(model_dir, quant)
    if not path.is_file():
        print(f"gguf: exporting {path.name} (once)", flush=True)
        convert(model_dir, path, quant)
    return path


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


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


class LlamaContext:
    """A GGUF model and a context of BATCH sequences through llama-cpp-python's C API (its `Llama`
    class has no n_seq_max), with llama.cpp's extra buffers off where the engine turns them off."""

    def __init__(self, path: Path, threads: int, n_ctx: int):
        import llama_cpp.llama_cpp as lib

        from ernie_ops.serve.backends import _llamacpp_server

        if not _llamacpp_server.extra_buffers():
            _llamacpp_server.disable_extra_buffers()  # AMX CPUs: q8_0 / q4_0 crash in them (see there)
        self.lib = lib
        lib.llama_backend_init()
        self.model = lib.llama_model_load_from_file(str(path).encode(), lib.llama_model_default_params())
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        params = lib.llama_context_default_params()
        params.n_ctx, params.n_seq_max = n_ctx, BATCH
        params.n_batch = params.n_ubatch = BATCH * PROMPT_LEN  # every prompt in one decode call
        params.n_threads = params.n_threads_batch = threads
        self.ctx = lib.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not make a context for {path}")
        self.vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(self.model))

    def close(self) -> None:
        self.lib.llama_free(self.ctx)
        self.lib.llama_model_free(self.model)

    def generate(self, batch: list[list[int]], new_tokens: int) -> dict[str, float]:
        """All prompts in one decode call, then one decode call per step for every sequence (greedy),
        as llama-batched-bench does; the same timings as `engine_run`."""
        import numpy as np

        lib = self.lib
        lib.llama_memory_clear(lib.llama_get_memory(self.ctx), True)
        n = len(batch)
        llama_batch = lib.llama_batch_init(max(sum(len(p) for p in batch), n), 0, n)

        def decode(items: list[tuple[int, int, int, bool]]) -> None:
            llama_batch.n_tokens = len(items)
            for i, (token, pos, seq, logits) in enumerate(items):
                llama_batch.token[i], llama_batch.pos[i], llama_batch.logits[i] = token, pos, logits
                llama_batch.n_seq_id[i] = 1
                llama_batch.seq_id[i][0] = seq
            code = lib.llama_decode(self.ctx, llama_batch)
            if code != 0:
                raise RuntimeError(f"llama_decode returned {code}")

        def greedy(i: int) -> int:
            row = np.ctypeslib.as_array(lib.llama_get_logits_ith(self.ctx, i), shape=(self.vocab,))
            return int(np.argmax(row))

        try:
            started = time.perf_counter()
            decode([(t, p, s, p == len(pr) - 1) for s, pr in enumerate(batch) for p, t in enumerate(pr)])
            ends = list(itertools.accumulate(len(p) for p in batch))
            tokens = [greedy(end - 1) for end in ends]
            first = time.perf_counter()
            for step in range(new_tokens - 1):
                decode([(tokens[s], len(batch[s]) + step, s, True) for s in range(n)])
                tokens = [greedy(s) for s in range(n)]
            ended = time.perf_counter()
        finally:
            lib.llama_batch_free(llama_batch)
        return {
            "ttft_s": first - started,
            "decode_tok_s": n * (new_tokens - 1) / (ended - first),
            "e2e_tok_s": n * new_tokens / (ended - started),
        }


def llamacpp_phase(path: Path, threads: int, new_tokens: int) -> dict[str, Any]:
    started = time.perf_counter()
    llama = LlamaContext(path, threads, BATCH * 256)
    out: dict[str, Any] = {"load_s": time.perf_counter() - started, "load_peak_rss_mb": peak_rss_mb()}
    try:
        llama.generate(prompts(1, PROMPT_LEN, 99), 2)  # warm-up, not counted
        b1 = llama.generate(prompts(1, PROMPT_LEN, SEED), new_tokens)
        llama.generate(prompts(BATCH, PROMPT_LEN, 99), 2)
        b8 = llama.generate(prompts(BATCH, PROMPT_LEN, SEED), new_tokens)
        rss = vm_rss_mb(os.getpid())  # before close: the model's pages are mapped from the file
    finally:
        llama.close()
    return out | {
        "b1_decode_tok_s": b1["decode_tok_s"],
        "b1_ttft_s": b1["ttft_s"],
        "b8_e2e_tok_s": b8["e2e_tok_s"],
        "b8_decode_tok_s": b8["decode_tok_s"],
        "rss_mb": rss,
        "peak_rss_mb": peak_rss_mb(),
    }


OWN_BENCHMARKS = ("llama-bench", "llama-batched-bench")


def own_benchmarks() -> dict[str, str] | None:
    """llama.cpp's own benchmark binaries beside the llama-server `ernie-ops serve` runs (the build
    script installs the three from one build tree); None when either is missing."""
    from ernie_ops.serve.backends import _llama_server

    try:
        server = _llama_server.find()
    except Exception:  # a bad LLAMA_SERVER: the served contender reports it
        return None
    if server is None:
        return None
    found = {name: Path(server).with_name(name) for name in OWN_BENCHMARKS}
    if all(p.is_file() and os.access(p, os.X_OK) for p in found.values()):
        return {name: str(p) for name, p in found.items()}
    return None


def own_output(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    """A benchmark's run: its results on stdout, its log on stderr."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def own_phase(binaries: dict[str, str], path: Path, threads: int, new_tokens: int) -> dict[str, Any]:
    """llama.cpp's own figures for the GGUF at PATH: llama-bench (batch 1) and llama-batched-bench
    (BATCH sequences), both at THREADS threads, with their defaults otherwise (as a user runs them)."""
    import resource

    n = str(threads)
    bench = [binaries["llama-bench"], "-m", str(path), "-t", n, "-p", str(PROMPT_LEN), "-n", str(new_tokens)]
    # one repetition (after its warm-up run), like the served run's one batch-1 request: the rounds
    # repeat both, and the best round of each is compared (an average would count the noisy ones)
    tests = json.loads(own_output([*bench, "-r", "1", "-o", "json"]).stdout)
    pp = next(t for t in tests if t["n_prompt"] == PROMPT_LEN and t["n_gen"] == 0)
    tg = next(t for t in tests if t["n_gen"] == new_tokens and t["n_prompt"] == 0)
    steps = new_tokens - 1  # the first token comes from the prefill's logits, as a server's does
    batched = [binaries["llama-batched-bench"], "-m", str(path), "-t", n, "-tb", n]
    sizes = ["-c", str(BATCH * (PROMPT_LEN + steps)), "-npp", str(PROMPT_LEN), "-ntg", str(steps)]
    # its logger is asynchronous and not flushed at exit (llama.cpp issue 22142): the last lines are
    # lost in about 1 run of 3 on the tiny model. A batch-1 case after ours gives the logger time;
    # when that is too short (a tiny model), the run is repeated
    for _attempt in range(3):
        proc = own_output([*batched, *sizes, "-npl", f"{BATCH},1", "--output-format", "jsonl"])
        rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"n_kv_max"')]
        rows = [row for row in rows if row["pl"] == BATCH]
        if rows:
            break
    else:  # or it skipped the case: it does not fit its context (a silent `continue` there)
        raise RuntimeError(
            f"llama-batched-bench printed no result:\n{proc.stdout[-1000:]}{proc.stderr[-3000:]}"
        )
    row = rows[-1]
    return {
        "b1_decode_tok_s": tg["avg_ts"],
        "b1_ttft_s": PROMPT_LEN / pp["avg_ts"],
        "b8_e2e_tok_s": BATCH * new_tokens / row["t"],
        "b8_decode_tok_s": row["speed_tg"],
        "rss_mb": float("nan"),  # the binaries have exited: their peak only
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "own": "llama-bench / llama-batched-bench",
        "llama_bench": {"pp": pp["samples_ts"], "tg": tg["samples_ts"]},
        "llama_batched_bench": row,
    }


async def timed_stream(client: Any, url: str, prompt: str | list[int], max_tokens: int) -> dict[str, float]:
    """One streamed /v1/completions call: send, first text and end times; it must end by length
    (llama-cpp-python's stream has no usage: finish_reason "length" means max_tokens tokens)."""
    body = {
        "model": SERVED_NAME,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,  # the embedded server's; llama-cpp-python ignores unknown fields
        "stream": True,
    }
    started = time.perf_counter()
    first, finish = None, None
    async with client.stream("POST", f"{url}/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[6:]).get("choices") or []:
                if choice.get("text") and first is None:
                    first = time.perf_counter()
                finish = choice.get("finish_reason") or finish
    ended = time.perf_counter()
    if finish != "length" or first is None:
        raise RuntimeError(f"the stream ended with finish_reason {finish!r}, not after {max_tokens} tokens")
    return {"start": started, "first": first, "end": ended}


async def drive_server(url: str, texts: list[str] | list[list[int]], new_tokens: int) -> dict[str, float]:
    """Batch 1 (one streaming client), then BATCH streaming clients at once (TEXTS: BATCH + 2 prompts)."""
    import httpx

    # a new connection per request: llama-server sometimes closes a kept-alive one after a stream and
    # httpx does not retry (RemoteProtocolError in 3 of 5 runs); locally it costs well under a ms
    limits = httpx.Limits(max_connections=BATCH + 4, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600, connect=10), limits=limits) as client:
        # prompts of their own for the warm-up and batch 1: llama-cpp-python's server reuses the KV
        # cache of a prompt it has just seen (no prefill, a TTFT of a few ms)
        await timed_stream(client, url, texts[BATCH], 2)  # warm-up, not counted
        one = await timed_stream(client, url, texts[BATCH + 1], new_tokens)
        many = await asyncio.gather(*(timed_stream(client, url, t, new_tokens) for t in texts[:BATCH]))
    wall = max(r["end"] for r in many) - min(r["start"] for r in many)
    return {
        "b1_decode_tok_s": (new_tokens - 1) / (one["end"] - one["first"]),
        "b1_ttft_s": one["first"] - one["start"],
        "b8_e2e_tok_s": BATCH * new_tokens / wall,
        "b8_ttft_max_s": max(r["first"] - r["start"] for r in many),
    }


def prompt_texts(model_dir: Path, n: int) -> list[str]:
    """PROMPT_LEN-token prompts as text (both servers take text): the checkpoint tokenizer's decoding
    of `prompts`, so each server tokenizes it back to about PROMPT_LEN tokens."""
    from ernie.tokenizer import Ernie4_5_Tokenizer

    tokenizer = Ernie4_5_Tokenizer.from_pretrained(str(model_dir))
    return [tokenizer.decode(p) for p in prompts(n, PROMPT_LEN, SEED)]


def serve_prompts(model_dir: Path, engine: str, n: int) -> list[str] | list[list[int]]:
    """N prompts for a server: token ids where it takes them (the embedded server, llama-server), so
    it prefills exactly what the in-process and llama.cpp's own runs do; text for llama-cpp-python's
    server, which tokenizes the decoding back to 74-88 tokens, not PROMPT_LEN."""
    from ernie_ops.serve.backends import _llama_server

    if engine == "paddle" or _llama_server.found():
        return prompts(n, PROMPT_LEN, SEED)
    return prompt_texts(model_dir, n)


def serve_phase(target: Path, engine: str, model_dir: Path, threads: int, new_tokens: int) -> dict[str, Any]:
    """`ernie-ops serve TARGET --engine ENGINE` (the real serving path: pre-flight, supervisor,
    the engine's server) on a free port, driven over HTTP; RSS of its server process(es)."""
    import httpx
    import psutil

    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "ernie_ops",
        "serve",
        str(target),
        "--engine",
        engine,
        "--port",
        str(port),
        "--set",
        f"served_model_name={SERVED_NAME}",
        "--set",
        f"max_model_len={SERVE_CONTEXT}",
        "--set",
        f"max_num_seqs={BATCH}",
    ]
    env = {**os.environ, "ERNIE_OPS_LLAMACPP_THREADS": str(threads)}  # its default leaves a core free
    log_path = Path(tempfile.gettempdir()) / f"bench_serve_cpu.{engine}.{os.getpid()}.log"
    url = f"http://127.0.0.1:{port}"
    texts = serve_prompts(model_dir, engine, BATCH + 2)
    with log_path.open("w") as log_file:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            while True:
                if proc.poll() is not None:
                    tail = log_path.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"ernie-ops serve exited with {proc.returncode}:\n{tail}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                        break
                if time.perf_counter() - started > 300:
                    raise RuntimeError(f"ernie-ops serve was not ready after 300 s (log {log_path})")
                time.sleep(0.5)
            ready_s = time.perf_counter() - started
            servers = psutil.Process(proc.pid).children(recursive=True)
            with cpu_seconds(servers, psutil.Process(proc.pid)) as cpu:
                out = asyncio.run(drive_server(url, texts, new_tokens))
            out |= cpu
            out |= {
                "load_s": ready_s,
                "rss_mb": sum(p.memory_info().rss for p in servers) / 2**20,
                "peak_rss_mb": max((vm_hwm_mb(p.pid) for p in servers), default=float("nan")),
            }
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # ernie-ops serve stops its server on Ctrl-C
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
    return out


@contextlib.contextmanager
def cpu_seconds(servers: list[Any], supervisor: Any = None) -> Any:
    """CPU seconds spent while the block runs: this process's (the streaming clients share the
    cores with the server) and each server thread's, the busiest first (llama-server names all its
    threads alike: `main` is the one running its loop and compute thread 0; the other compute
    threads come next, then the HTTP pool; `exited` is the threads that ended meanwhile, such as
    its per-connection HTTP threads), and SUPERVISOR's (`ernie-ops serve` itself), beside the wall
    time. Fills the yielded dict on exit."""
    import resource

    def threads() -> dict[tuple[int, int], tuple[str, float]]:
        out = {}
        for p in servers:
            with contextlib.suppress(Exception):
                for t in p.threads():
                    comm = Path(f"/proc/{p.pid}/task/{t.id}/comm").read_text().strip()
                    name = f"{comm}:{'main' if t.id == p.pid else t.id}"
                    out[(p.pid, t.id)] = (name, t.user_time + t.system_time)
        return out

    def process(processes: list[Any]) -> float:
        total = 0.0
        for p in processes:
            with contextlib.suppress(Exception):
                times = p.cpu_times()
                total += times.user + times.system
        return total

    def own() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    result: dict[str, Any] = {}
    parent = [supervisor] if supervisor is not None else []
    before, server_before, own_before = threads(), process(servers), own()
    parent_before, started = process(parent), time.perf_counter()
    yield result
    wall, client = time.perf_counter() - started, own() - own_before
    spent = {name: cpu - before.get(key, (name, 0.0))[1] for key, (name, cpu) in threads().items()}
    server = process(servers) - server_before
    spent["exited"] = max(server - sum(spent.values()), 0.0)
    result |= {
        "drive_wall_s": wall,
        "client_cpu_s": client,
        "server_cpu_s": server,
        "supervisor_cpu_s": process(parent) - parent_before,
        "server_thread_cpu_s": {k: v for k, v in sorted(spent.items(), key=lambda kv: -kv[1]) if v > 0},
    }


def vm_hwm_mb(pid: int) -> float:
    """A process's peak resident set (VmHWM), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


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


def contender_round(name: str, args: Any, env: dict[str, str], new_tokens: int) -> dict[str, Any]:
    """One contender in a fresh child process; its figures in METRICS' names. engine@REV runs the
    engine of commit REV (`--before`; a `git archive` of it leads PYTHONPATH)."""
    load = os.getloadavg()[0]
    if name.startswith("engine") and name != "engine-serve":
        # as the embedded backend does for its server: else ERNIEKit's tokenizer imports torch
        # through paddleformers and the engine's load peak reads 1.44x the weights, not 1.28x
        env = {"USE_TORCH": "0", **env}
    if name.startswith("engine@"):
        tree = str(args.before_tree)
        env = {**env, "PYTHONPATH": os.pathsep.join(p for p in (tree, env.get("PYTHONPATH")) if p)}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "phase.json"
        common = ["--threads", str(args.threads), "--new-tokens", str(new_tokens)]
        if name == "pytorch":
            cmd = [sys.executable, __file__, "--torch-phase", str(out), "--repeat", "1", *common]
        else:
            cmd = [
                sys.executable,
                __file__,
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
            ["git", "-C", str(Path(__file__).resolve().parent.parent), "rev-parse", "--short", args.before],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        args.before_tree = tree_of(rev, Path(tempfile.mkdtemp(prefix="bench-before-")))
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
    # the best round of each (highest batch-1 decode rate: the quietest), and the median of each metric
    best = {c: max(v, key=lambda x: x["b1_decode_tok_s"]) for c, v in runs.items()}
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
        rows.append(
            [
                c,
                f"{b['b1_decode_tok_s']:.1f}{rel(c, 'b1_decode_tok_s')}",
                f"{b['b8_e2e_tok_s']:.1f}{rel(c, 'b8_e2e_tok_s')}",
                f"{b['b1_ttft_s']:.3f}{rel(c, 'b1_ttft_s')}",
                f"{b['rss_mb']:.0f} / {b['peak_rss_mb']:.0f}",
            ]
        )
    print()
    print_table(rows)
    # this run's own threads keep the 1-minute load near the thread count: over 1.5x the CPUs,
    # other processes were taking a share of them
    busy = [c for c in contenders if best[c]["load_average_1m"] > 1.5 * (os.cpu_count() or 1)]
    if busy:
        print(f"warning: the load average was over 1.5x the CPUs at the best round of {', '.join(busy)}")
    targets = compare_targets(best, wbytes)
    for key, t in targets.items():
        print(f"target {key}: {t['target']}, value {t['value']:.2f}, {'met' if t['met'] else 'NOT met'}")
    total = time.perf_counter() - started
    print(
        f"\nbest of {rounds} interleaved round(s) per contender (ratios: to {base or 'none'}); "
        f"{PROMPT_LEN}-token prompts, {new_tokens} new tokens, greedy; {args.threads} threads everywhere; "
        f"weights {wbytes / 1e9:.2f} GB; load average (1 min) {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after; {own_note(runs)}total {total:.0f} s"
    )
    write_report(
        args.out,
        settings={
            "part": "compare",
            "contenders": list(contenders),
            "rounds": rounds,
            "threads": args.threads,
            "prompt_tokens": PROMPT_LEN,
            "new_tokens": new_tokens,
            "batch": BATCH,
            "model_dir": str(model_dir),
        },
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
    # each metric's best round (the quietest for it): the noise of a shared machine only ever slows
    best = {
        t: {c: {m: max(x[m] for x in v) for m in SERVE_PAIR_METRICS} for c, v in per.items()}
        for t, per in runs.items()
    }
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
    for key, tg in targets.items():
        print(f"target {key}: {tg['target']}, value {tg['value']:.2f}, {'met' if tg['met'] else 'NOT met'}")
    total = time.perf_counter() - started
    print(
        f"\nq4_0, best of {rounds} interleaved round(s) per metric; {PROMPT_LEN}-token prompts, {new_tokens} "
        f"new tokens, greedy; {args.hogs} busy-looping neighbour(s); load average (1 min) "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after, {os.cpu_count()} cpus; "
        f"{own_note({str(t): per[own] for t, per in runs.items()})}total {total:.0f} s"
    )
    write_report(
        args.out,
        settings={
            "part": "llamacpp-serve",
            "threads": args.serve_threads,
            "rounds": rounds,
            "hogs": args.hogs,
            "prompt_tokens": PROMPT_LEN,
            "new_tokens": new_tokens,
            "batch": BATCH,
            "model_dir": str(model_dir),
        },
        load_average_before=load_before,
        load_average_after=load_after,
        runs={str(t): per for t, per in runs.items()},
        best={str(t): per for t, per in best.items()},
        targets=targets,
        total_s=total,
    )
    return 0


# ---------------------------------------------------------------------------------------------
# server overhead (--part server-overhead): the server before 9659adf and now, interleaved

OVERHEAD_REV = "9659adf^"  # the server with a pump thread per request, before the async engine client
OVERHEAD_LEVELS = (1, 16, 128)
OVERHEAD_DELAY_LEVELS = (1, 16, 128)  # produce -> receive delay reported at these (targets: 16, 128)
OVERHEAD_BATCH = 128  # every stream decodes at once at every level: the queue adds nothing
OVERHEAD_MODEL_DIR = Path(tempfile.gettempdir()) / "ernie-ops-bench" / "tiny-dense"

# The server process of the overhead part: stamps each text delta when the engine produces it (a
# wrapper of Engine._emit, CLOCK_MONOTONIC), keeps the stamps in memory, writes them as JSON at exit.
STAMPING_SERVER = r"""
import atexit, json, sys, time
from ernie_ops.serve import engine as engine_module, openai_server
out, argv = sys.argv[1], sys.argv[2:]
stamps = {}
emit = engine_module.Engine._emit
def stamped_emit(self, request, final):
    t, before = time.monotonic(), request.emitted
    emit(self, request, final)
    if request.emitted > before:  # text went out: the client gets a chunk with text for it
        stamps.setdefault(request.id, []).append(t)
engine_module.Engine._emit = stamped_emit
def dump():
    with open(out, "w") as f:
        json.dump(stamps, f)
atexit.register(dump)
print("serving from", openai_server.__file__, flush=True)
sys.exit(openai_server.main(argv))
"""


def tree_of(rev: str, dest: Path) -> Path:
    """An importable `ernie_ops` of commit `rev` (git archive) under dest; the path for PYTHONPATH.

    The repository keeps serve/ and train/ beside ernie_ops/ (setup.py maps them in), so the package
    is laid out as installed: ernie_ops/ with serve and train linked into it."""
    repo = Path(__file__).resolve().parent.parent
    src = dest / "src"
    src.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(repo), "archive", rev], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
    pkg = dest / "pkg" / "ernie_ops"
    pkg.parent.mkdir()
    (dest / "pkg" / "ernie_ops").symlink_to(src / "ernie_ops")
    for top in ("serve", "train"):
        link = src / "ernie_ops" / top
        if not link.exists():
            link.symlink_to(src / top)
    return dest / "pkg"


class StampingServer(Server):
    """The server of a given tree (`pythonpath`; None: this checkout), stamping what it emits."""

    def __init__(self, label: str, model_dir: Path, env: dict[str, str], pythonpath: Path | None, work: Path):
        self.label = label
        self.stamps_path = work / f"stamps-{label}.json"
        env = dict(env)
        if pythonpath is not None:
            env["PYTHONPATH"] = (
                f"{pythonpath}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(pythonpath)
            )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = work / f"server-{label}.log"
        self._log = self.log_path.open("w")
        cmd = [
            sys.executable,
            "-c",
            STAMPING_SERVER,
            str(self.stamps_path),
            "--model",
            str(model_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--served-model-name",
            SERVED_NAME,
            "--max-batch-size",
            str(OVERHEAD_BATCH),
        ]
        # cwd: not the checkout, whose ernie_ops/ would shadow PYTHONPATH's ('' leads sys.path)
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=work)

    def stamps(self) -> dict[str, list[float]]:
        return dict(json.loads(self.stamps_path.read_text()))


class ThreadSampler:
    """The most threads a process had while it runs (psutil, every 20 ms)."""

    def __init__(self, pid: int):
        import psutil

        self._proc = psutil.Process(pid)
        self.peak = self._proc.num_threads()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            with contextlib.suppress(Exception):
                self.peak = max(self.peak, self._proc.num_threads())

    def __enter__(self) -> ThreadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


async def stamped_stream(client: Any, url: str, prompt: list[int], max_tokens: int) -> dict[str, Any]:
    """One streamed /v1/completions call: its id, the send time, the arrival time of each text chunk."""
    body = {
        "model": SERVED_NAME,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    started = time.monotonic()
    request_id, arrivals, done = None, [], False
    async with client.stream("POST", f"{url}/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"stream error: {chunk['error'].get('message')}")
            request_id = chunk.get("id", request_id)
            if any(c.get("text") for c in chunk.get("choices") or []):
                arrivals.append(time.monotonic())
    if not done:
        raise RuntimeError("stream ended without [DONE]")
    return {"id": request_id, "start": started, "arrivals": arrivals}


async def stamped_level(url: str, n: int, new_tokens: int) -> list[dict[str, Any]]:
    import httpx

    limits = httpx.Limits(max_connections=n + 4, max_keepalive_connections=n + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600, connect=30), limits=limits) as client:
        await stamped_stream(client, url, prompts(1, 16, 99)[0], 4)  # warm-up (connection, first step)
        return list(
            await asyncio.gather(
                *(stamped_stream(client, url, p, new_tokens) for p in prompts(n, PROMPT_LEN, SEED + 100 + n))
            )
        )


def ttft_itl(starts: list[float], times: list[list[float]]) -> dict[str, float]:
    """TTFT and inter-token latency p50 / p99 (seconds) of requests' first-text and text times."""
    ttfts = [t[0] - s for s, t in zip(starts, times, strict=True) if t]
    itls = [b - a for t in times for a, b in itertools.pairwise(t)]
    return {
        "ttft_p50_s": pct(ttfts, 0.5),
        "ttft_p99_s": pct(ttfts, 0.99),
        "itl_p50_s": pct(itls, 0.5),
        "itl_p99_s": pct(itls, 0.99),
    }


def engine_level(engine: Any, n: int, new_tokens: int) -> dict[str, float]:
    """The engine in-process, no server: TTFT / ITL of n streams as the engine produces their text
    (a listener stamps each text delta in the engine thread)."""
    from ernie_ops.serve.engine import SamplingParams

    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    times: list[list[float]] = [[] for _ in range(n)]
    done = threading.Semaphore(0)

    def listener(i: int) -> Any:
        def hear(delta: Any) -> None:
            if delta is None:
                done.release()
            elif delta.text:
                times[i].append(time.monotonic())

        return hear

    engine.submit(prompts(1, 16, 99)[0], SamplingParams(max_tokens=4, temperature=0.0)).result()  # warm-up
    started = time.monotonic()
    for i, p in enumerate(prompts(n, PROMPT_LEN, SEED + 100 + n)):
        engine.submit(p, params, request_id=f"engine-{n}-{i}", listener=listener(i))
    for _ in range(n):
        done.acquire()
    return ttft_itl([started] * n, times)


def bench_server_overhead(env: dict[str, str], new_tokens: int, rounds: int) -> dict[str, Any]:
    """Before (OVERHEAD_REV) and after (this checkout) servers up side by side; at each level the
    two are driven in turn, `rounds` times; the engine in-process (this checkout) after them."""
    from ernie_ops.tiny_model import build_tiny_model

    model_dir = OVERHEAD_MODEL_DIR
    if not (model_dir / "config.json").is_file():
        build_tiny_model(model_dir, seed=SEED, force=True)
    work = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    before_rev = subprocess.run(
        ["git", "-C", str(Path(__file__).resolve().parent.parent), "rev-parse", "--short", OVERHEAD_REV],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    old_tree = tree_of(OVERHEAD_REV, work / "before")
    servers = {
        "before": StampingServer("before", model_dir, env, old_tree, work),
        "after": StampingServer("after", model_dir, env, None, work),
    }
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {k: {n: [] for n in OVERHEAD_LEVELS} for k in servers}
    threads: dict[str, dict[int, int]] = {k: {} for k in servers}
    idle_threads: dict[str, int] = {}
    try:
        for label, server in servers.items():
            server.wait_ready(timeout=300)
            # a few requests at once first, so the prepare pool (PREPARE_THREADS) is up at every level
            asyncio.run(stamped_level(server.url, 8, 4))
            idle_threads[label] = ThreadSampler(server.proc.pid).peak
            source = server.log_path.read_text(errors="replace").splitlines()[0]
            if label == "before" and str(work) not in source:
                raise RuntimeError(f"the before server does not run the archived tree: {source}")
            print(f"overhead: {label} server on {server.url}, {source} (log {server.log_path})", flush=True)
        for n in OVERHEAD_LEVELS:
            for r in range(rounds):
                order = list(servers.items()) if r % 2 == 0 else list(reversed(servers.items()))
                for label, server in order:
                    with ThreadSampler(server.proc.pid) as sampler:
                        runs[label][n].extend(asyncio.run(stamped_level(server.url, n, new_tokens)))
                    threads[label][n] = max(threads[label].get(n, 0), sampler.peak)
                    print(f"overhead: {label} {n} clients round {r + 1}: {sampler.peak} threads", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    out: dict[str, Any] = {"before_rev": before_rev, "model": "tiny dense (ernie_ops.tiny_model defaults)"}
    for label, server in servers.items():
        stamps = server.stamps()
        per: dict[Any, Any] = {"idle_threads": idle_threads[label]}
        for n in OVERHEAD_LEVELS:
            results = runs[label][n]
            delays: list[float] = []
            unmatched = 0
            for res in results:
                produced = stamps.get(res["id"] or "", [])
                if len(produced) != len(res["arrivals"]):
                    unmatched += 1
                    continue
                delays.extend(a - p for p, a in zip(produced, res["arrivals"], strict=True))
            per[n] = {
                **ttft_itl([r["start"] for r in results], [r["arrivals"] for r in results]),
                "delay_p50_s": pct(delays, 0.5),
                "delay_p99_s": pct(delays, 0.99),
                "delay_samples": len(delays),
                "unmatched_requests": unmatched,
                "requests": len(results),
                "threads": threads[label][n],
            }
        out[label] = per
    gc.collect()
    from ernie_ops.serve.engine import Engine

    engine = Engine.load(model_dir, max_batch_size=OVERHEAD_BATCH)
    engine.start()
    try:
        out["engine"] = {n: engine_level(engine, n, new_tokens) for n in OVERHEAD_LEVELS}
    finally:
        engine.stop()
    return out


def overhead_table(res: dict[str, Any]) -> tuple[list[list[str]], dict[str, Any]]:
    def ms(x: float) -> str:
        return f"{x * 1e3:.1f}"

    rows = [
        ["measurement (ms unless said)", "clients", f"before ({res['before_rev']})", "after (HEAD)", "engine"]
    ]
    for n in OVERHEAD_LEVELS:
        b, a = res["before"][n], res["after"][n]
        if n in OVERHEAD_DELAY_LEVELS:
            rows.append(
                [
                    "produce -> receive p50 / p99",
                    str(n),
                    f"{ms(b['delay_p50_s'])} / {ms(b['delay_p99_s'])}",
                    f"{ms(a['delay_p50_s'])} / {ms(a['delay_p99_s'])}",
                    "",
                ]
            )
    for n in OVERHEAD_LEVELS:
        b, a, e = res["before"][n], res["after"][n], res["engine"][n]
        for key in ("ttft", "itl"):
            rows.append(
                [
                    f"{key.upper()} p50 / p99",
                    str(n),
                    f"{ms(b[key + '_p50_s'])} / {ms(b[key + '_p99_s'])}",
                    f"{ms(a[key + '_p50_s'])} / {ms(a[key + '_p99_s'])}",
                    f"{ms(e[key + '_p50_s'])} / {ms(e[key + '_p99_s'])}",
                ]
            )
    rows.append(
        [
            "server threads idle (count)",
            "0",
            str(res["before"]["idle_threads"]),
            str(res["after"]["idle_threads"]),
            "",
        ]
    )
    for n in OVERHEAD_LEVELS:
        rows.append(
            [
                "server threads peak (count)",
                str(n),
                str(res["before"][n]["threads"]),
                str(res["after"][n]["threads"]),
                "",
            ]
        )
    a = res["after"]
    flat = len({a[n]["threads"] for n in OVERHEAD_LEVELS}) == 1
    targets = {
        "p99_added_16": {
            "target": "< 5 ms",
            "value": a[16]["delay_p99_s"],
            "met": a[16]["delay_p99_s"] < 0.005,
        },
        "p99_added_128": {
            "target": "< 20 ms",
            "value": a[128]["delay_p99_s"],
            "met": a[128]["delay_p99_s"] < 0.020,
        },
        "threads_flat": {
            "target": "same at every level",
            "value": [a[n]["threads"] for n in OVERHEAD_LEVELS],
            "met": flat,
        },
    }
    return rows, targets


def overhead_main(args: Any, env: dict[str, str]) -> int:
    started = time.perf_counter()
    load_before = os.getloadavg()
    new_tokens = args.new_tokens or (8 if args.quick else NEW_TOKENS)
    rounds = 1 if args.quick else max(1, args.repeat)
    res = bench_server_overhead(env, new_tokens, rounds)
    load_after = os.getloadavg()
    rows, targets = overhead_table(res)
    print()
    print_table(rows)
    for key, t in targets.items():
        print(f"target {key}: {t['target']}, value {t['value']}, {'met' if t['met'] else 'NOT met'}")
    total = time.perf_counter() - started
    print(
        f"\ntiny dense model, {PROMPT_LEN}-token prompts, {new_tokens} new tokens, greedy, EOS ignored, "
        f"max batch {OVERHEAD_BATCH}; {rounds} round(s) per level, before/after alternating; "
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after (1 min); "
        f"{os.cpu_count()} cpus; "
        f"total {total:.0f} s"
    )
    write_report(
        args.out,
        settings={
            "part": "server-overhead",
            "quick": args.quick,
            "threads": args.threads,
            "prompt_tokens": PROMPT_LEN,
            "new_tokens": new_tokens,
            "rounds": rounds,
            "max_batch_size": OVERHEAD_BATCH,
            "model_dir": str(OVERHEAD_MODEL_DIR),
            "before_rev": res["before_rev"],
        },
        load_average_before=load_before,
        load_average_after=load_after,
        overhead={
            k: ({str(n): v for n, v in per.items()} if isinstance(per, dict) else per)
            for k, per in res.items()
        },
        targets=targets,
        total_s=total,
    )
    return 0


# ---------------------------------------------------------------------------------------------


def main() -> int:
    parser = bench_parser(__doc__, "serve_cpu", repeat=2)
    parser.add_argument("--quick", action="store_true", help="a ~1 minute smoke run (fewer, shorter runs)")
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
    parser.add_argument(
        "--part",
        choices=["compare", "engine-detail", "server-overhead", "llamacpp-serve"],
        default="compare",
        help="compare (the default): the contenders of --contenders, interleaved, --rounds rounds; "
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
        "--rounds", type=int, default=3, help="--part compare: interleaved rounds (default 3)"
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
    if args.part != "compare" and args.out == parser.get_default("out"):
        args.out = args.out.with_name(
            {
                "engine-detail": "serve_cpu_engine.json",
                "llamacpp-serve": "serve_cpu_llamacpp.json",
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
