"""`ernie-ops serve` (the real serving path) driven by streaming HTTP clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from servebench.checkpoint import BATCH, PROMPT_LEN, SEED, SERVED_NAME, prompt_texts, prompts
from servebench.measure import cpu_seconds, free_port, vm_hwm_mb

SERVE_CONTEXT = 2048  # max_model_len of the served contenders: room for the prompts, a small KV cache


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
