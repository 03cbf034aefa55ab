"""The embedded OpenAI-compatible server as a child: streaming clients and a soak (engine-detail)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from servebench.checkpoint import BATCH, CLIENTS, PROMPT_LEN, SEED, SERVED_NAME, prompts
from servebench.measure import free_port, pct, vm_rss_mb

# ---------------------------------------------------------------------------------------------
# the server


class Server:
    """`python -m ernie_ops.serve.openai_server` on a free loopback port; always stopped on exit."""

    def __init__(
        self,
        model_dir: Path,
        env: dict[str, str],
        log_path: Path,
        program: tuple[str, ...] = ("-m", "ernie_ops.serve.openai_server"),
        batch: int = BATCH,
        cwd: Path | None = None,
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("w")
        cmd = [
            sys.executable,
            *program,
            "--model",
            str(model_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--served-model-name",
            SERVED_NAME,
            "--max-batch-size",
            str(batch),
        ]
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd)

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
