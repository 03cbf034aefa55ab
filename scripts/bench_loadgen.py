#!/usr/bin/env python
"""The load generator's own ceiling, and whether the latencies it measures are the server's.

A null OpenAI server (ernie_ops/validate/null_server.py: answers at once, K chunks of one token)
runs in a child process pinned to one core; the generator runs in this process pinned to another.
Measured, each `--repeat` times (medians reported), for streamed chat requests of `--chunks` output
chunks at each `--concurrency`:

- ours: `ernie_ops.validate.loadgen.run_level` (the `ernie-ops bench` path, through client.request);
- upstream approach: a plain aiohttp loop in the manner of FastDeploy's benchmarks/benchmark_serving.py
  (a ClientSession per request, iterate `response.content` lines, json.loads, a semaphore and a task
  per request); written here, not copied;
- aiohttp, one session: the same loop with keep-alive and orjson, the cheapest plain aiohttp client;
- httpx: a plain `httpx.AsyncClient` streaming loop.

Requests/s and chunks/s per client, with the CPU each side used (the server's core must not be the
limit; requests per CPU-second of the generator are what it does on a core of its own, which a
shared machine does not always give it). Then latency agreement (unpinned): a second null server
waits `--delay-ms` before each chunk; each request's TTFT and end-to-end latency as the generator
measured them are compared with the server's own timestamps (arrival, first chunk written, last
byte written; perf_counter_ns, the same CLOCK_MONOTONIC in both processes), at concurrency 1 and 16.
The client's latencies start when the request is written (client.Reply.sent); the send lag before
that, the generator's own queueing, is reported beside them.
Targets: >= 1000 streamed requests/s; |difference| <= 5 ms (median and p99 both reported).

    .venv/bin/python scripts/bench_loadgen.py            # ~2 minutes
    .venv/bin/python scripts/bench_loadgen.py --quick    # ~20 s
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import numpy as np
import orjson

from ernie_ops.benchmark import bench_parser, print_table, write_report
from ernie_ops.validate import loadgen
from ernie_ops.validate.client import Endpoint, session

TARGET_RPS = 1000.0
TARGET_AGREEMENT_MS = 5.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


class NullServer:
    """`python -m ernie_ops.validate.null_server` in a child process, pinned to `core`."""

    def __init__(self, core: int | None, delay_ms: float = 0.0):
        cmd = [
            sys.executable,
            "-m",
            "ernie_ops.validate.null_server",
            "--port",
            "0",
            "--delay-ms",
            str(delay_ms),
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        if core is not None:
            os.sched_setaffinity(self.proc.pid, {core})
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "null server listening on http://127.0.0.1:PORT"
        if "listening on" not in line:
            self.proc.kill()
            raise RuntimeError(f"the null server did not start: {line!r}")
        self.url = line.split()[-1]

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def body(chunks: int, i: int) -> dict[str, Any]:
    """A short chat prompt asking for `chunks` tokens; distinct per request."""
    return {
        "messages": [{"role": "user", "content": f"request {i}: say something short"}],
        "max_tokens": chunks,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


# ---------------------------------------------------------------------------------------------
# the clients: each sends n requests with `concurrency` in flight; returns the output chunks counted


async def ours(url: str, n: int, concurrency: int, chunks: int) -> int:
    endpoint = Endpoint.parse(url, model="null-model")
    planned = [loadgen.Planned(body(chunks, i), 8) for i in range(n)]
    options = loadgen.Options([concurrency], progress=False)
    async with session(endpoint, concurrency) as client:
        replies, _ = await loadgen.run_level(client, endpoint, planned, concurrency, options)
    return _check([r.output_tokens if r is not None and r.ok else 0 for r in replies], n, chunks)


async def _upstream_one(url: str, payload: dict[str, Any]) -> int:
    """A session per request; lines from `response.content`; the standard json module."""
    tokens = 0
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as client,
        client.post(url, json=payload, headers={"Content-Type": "application/json"}) as resp,
    ):
        start = last = time.perf_counter()
        itl = []
        async for line in resp.content:
            line = line.strip()
            if not line:
                continue
            text = line.decode().removeprefix("data: ")
            if text == "[DONE]":
                continue
            now = time.perf_counter()
            data = json.loads(text)
            if data.get("choices") and data["choices"][0]["delta"].get("content"):
                tokens += 1
                itl.append(now - last)
                last = now
        del start, itl
    return tokens


async def upstream(url: str, n: int, concurrency: int, chunks: int) -> int:
    limit = asyncio.Semaphore(concurrency)
    target = f"{url}/v1/chat/completions"

    async def one(i: int) -> int:
        async with limit:
            return await _upstream_one(target, {"model": "null-model", **body(chunks, i)})

    return _check(await asyncio.gather(*(one(i) for i in range(n))), n, chunks)


async def aiohttp_shared(url: str, n: int, concurrency: int, chunks: int) -> int:
    target = f"{url}/v1/chat/completions"
    counts = [0] * n
    todo = iter(range(n))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as client:

        async def worker() -> None:
            for i in todo:
                payload = orjson.dumps({"model": "null-model", **body(chunks, i)})
                headers = {"Content-Type": "application/json"}
                async with client.post(target, data=payload, headers=headers) as resp:
                    async for line in resp.content:
                        if line.startswith(b"data: {"):
                            chunk = orjson.loads(line[6:])
                            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                                counts[i] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return _check(counts, n, chunks)


async def httpx_loop(url: str, n: int, concurrency: int, chunks: int) -> int:
    target = f"{url}/v1/chat/completions"
    counts = [0] * n
    todo = iter(range(n))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=600) as client:

        async def worker() -> None:
            for i in todo:
                payload = orjson.dumps({"model": "null-model", **body(chunks, i)})
                headers = {"Content-Type": "application/json"}
                async with client.stream("POST", target, content=payload, headers=headers) as resp:
                    async for line in resp.aiter_lines():
                        if line.startswith("data: {"):
                            chunk = orjson.loads(line[6:])
                            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                                counts[i] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return _check(counts, n, chunks)


def _check(counts: list[int], n: int, chunks: int) -> int:
    """Every request streamed every chunk, or the figure means nothing."""
    bad = sum(c != chunks for c in counts)
    if bad:
        raise RuntimeError(f"{bad} of {n} requests did not stream {chunks} chunks")
    return sum(counts)


CLIENTS: dict[str, Callable[[str, int, int, int], Awaitable[int]]] = {
    "ours (ernie-ops bench)": ours,
    "upstream approach (aiohttp, session per request)": upstream,
    "aiohttp, one session": aiohttp_shared,
    "httpx": httpx_loop,
}
SHARE = {"httpx": 0.2}  # of the requests per run: httpx is an order of magnitude slower


def ceiling(server: NullServer, client: str, n: int, concurrency: int, chunks: int) -> dict[str, float]:
    """One run: requests/s and chunks/s of wall time and per CPU-second of the generator (what one
    core would give it alone: other processes on a shared machine lower the first, not the second),
    and the CPU share each side used."""
    cpu_server, cpu_client = server.cpu_seconds(), time.process_time()
    start = time.perf_counter()
    streamed = asyncio.run(CLIENTS[client](server.url, n, concurrency, chunks))
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu_client
    return {
        "req_s": n / wall,
        "chunks_s": streamed / wall,
        "req_per_cpu_s": n / cpu,
        "chunks_per_cpu_s": streamed / cpu,
        "client_cpu": cpu / wall,
        "server_cpu": (server.cpu_seconds() - cpu_server) / wall,
    }


# ---------------------------------------------------------------------------------------------
# latency agreement


async def agreement(url: str, n: int, concurrency: int, chunks: int) -> dict[str, Any]:
    """Client-measured TTFT and E2E against the server's own timestamps, request by request."""
    endpoint = Endpoint.parse(url, model="null-model")
    planned = [loadgen.Planned(body(chunks, i) | {"user": str(i)}, 8) for i in range(n)]
    options = loadgen.Options([concurrency], progress=False)
    async with session(endpoint, concurrency) as client:
        await _timestamps(client, url)  # clears what an earlier run left
        replies, _ = await loadgen.run_level(client, endpoint, planned, concurrency, options)
        server = {row["user"]: row for row in await _timestamps(client, url)}
    ttft, e2e, first_arrival, lag = [], [], [], []
    seen: dict[str, tuple[list[float], list[float]]] = {"ttft": ([], []), "e2e": ([], [])}  # client, server
    for i, reply in enumerate(replies):
        row = server[str(i)]
        assert reply is not None and reply.ok and reply.ttft is not None, reply
        server_ttft = (row["first_ns"] - row["arrival_ns"]) / 1e6
        server_e2e = (row["last_ns"] - row["arrival_ns"]) / 1e6
        ttft.append(reply.ttft * 1e3 - server_ttft)
        e2e.append(reply.latency * 1e3 - server_e2e)
        first_arrival.append(reply.first * 1e3 - row["first_ns"] / 1e6)  # same clock: one-way delay
        lag.append((reply.send_lag or 0.0) * 1e3)
        for name, client_ms, server_ms in (
            ("ttft", reply.ttft * 1e3, server_ttft),
            ("e2e", reply.latency * 1e3, server_e2e),
        ):
            seen[name][0].append(client_ms)
            seen[name][1].append(server_ms)
    # what `ernie-ops bench` reports (percentiles over the level) against the same percentiles of
    # the server's own timings: the figures a user reads
    reported = {
        f"{name}_{q}": round(float(np.percentile(c, q) - np.percentile(srv, q)), 3)
        for name, (c, srv) in seen.items()
        for q in (50, 90, 99)
    }
    return {
        "requests": n,
        "concurrency": concurrency,
        "ttft_diff_ms": _spread(ttft),
        "e2e_diff_ms": _spread(e2e),
        "reported_percentile_diff_ms": reported,
        "first_chunk_delivery_ms": _spread(first_arrival),
        "send_lag_ms": _spread(lag),  # the generator's own queueing, excluded from its latencies
        "server_ttft_p50_ms": round(statistics.median(r.ttft * 1e3 for r in replies if r and r.ttft), 3),
    }


async def _timestamps(client: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    async with client.get(f"{url}/v1/null/timestamps?clear=1") as resp:
        return (await resp.json())["requests"]


def _spread(diffs: list[float]) -> dict[str, float]:
    x = np.asarray(diffs)
    absolute = np.abs(x)
    return {
        "mean": round(float(x.mean()), 3),
        "median_abs": round(float(np.median(absolute)), 3),
        "p99_abs": round(float(np.percentile(absolute, 99)), 3),
        "max_abs": round(float(absolute.max()), 3),
    }


# ---------------------------------------------------------------------------------------------


def cores() -> tuple[int | None, int | None]:
    """(generator core, server core): two distinct cores when this process may use two."""
    allowed = sorted(os.sched_getaffinity(0))
    return (allowed[0], allowed[1]) if len(allowed) >= 2 else (None, None)


def main() -> int:
    parser = bench_parser(__doc__, "loadgen", repeat=3)
    parser.add_argument("--quick", action="store_true", help="fewer requests, one run each")
    parser.add_argument("--requests", type=int, help="requests per ceiling run (default 4000; quick 1000)")
    parser.add_argument("--chunks", type=int, default=16, help="output chunks per request (default 16)")
    parser.add_argument("--concurrency", default="64,256", help="ceiling levels (default 64,256)")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="per-chunk delay for agreement (20)")
    args = parser.parse_args()
    n = args.requests or (1000 if args.quick else 4000)
    repeat = 1 if args.quick else args.repeat
    levels = loadgen.parse_levels(args.concurrency)
    client_core, server_core = cores()
    allowed = os.sched_getaffinity(0)
    if client_core is not None:
        os.sched_setaffinity(0, {client_core})
    cores_used = f"generator on core {client_core}, null server on core {server_core}"
    print(f"{cores_used}; {n} requests x {args.chunks} chunks")

    load = [round(os.getloadavg()[0], 2)]
    results: list[dict[str, Any]] = []
    server = NullServer(server_core)
    try:
        for concurrency in levels:
            for client in CLIENTS:
                count = max(int(n * SHARE.get(client, 1.0)), concurrency)
                runs = [ceiling(server, client, count, concurrency, args.chunks) for _ in range(repeat)]
                row = {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}
                row |= {"client": client, "concurrency": concurrency, "requests": count}
                row["runs_req_s"] = [round(r["req_s"]) for r in runs]
                results.append(row)
                print(f"  {client} at {concurrency}: {row['req_s']:.0f} req/s", flush=True)
    finally:
        server.stop()

    # agreement is about what the generator measures, not its capacity: no pinning, so neither side
    # waits for its one core while another process on this shared machine holds it
    os.sched_setaffinity(0, allowed)
    delayed = NullServer(None, args.delay_ms)
    try:
        agree = [asyncio.run(agreement(delayed.url, 60 if args.quick else 300, c, 8)) for c in (1, 16)]
    finally:
        delayed.stop()

    table = [
        [
            "client",
            "concurrency",
            "req/s",
            "chunks/s",
            "req/CPU-s",
            "chunks/CPU-s",
            "client CPU",
            "server CPU",
        ]
    ]
    table[0].append("vs ours")
    for row in results:
        mine = next(
            r for r in results if r["concurrency"] == row["concurrency"] and r["client"].startswith("ours")
        )
        table.append(
            [
                row["client"],
                str(row["concurrency"]),
                f"{row['req_s']:.0f}",
                f"{row['chunks_s']:.0f}",
                f"{row['req_per_cpu_s']:.0f}",
                f"{row['chunks_per_cpu_s']:.0f}",
                f"{row['client_cpu']:.0%}",
                f"{row['server_cpu']:.0%}",
                f"{row['req_per_cpu_s'] / mine['req_per_cpu_s']:.2f}x",
            ]
        )
    print()
    print_table(table)
    print(f"\nlatency agreement (null server waits {args.delay_ms:g} ms before each of 8 chunks), ms:")
    rows = [
        [
            "concurrency",
            "requests",
            "TTFT |diff| p50",
            "p99",
            "E2E |diff| p50",
            "p99",
            "1st chunk delivery p50",
            "send lag p50/p99 (excluded)",
            "reported p50/p90/p99 TTFT diff",
            "E2E diff",
        ]
    ]
    for a in agree:
        rows.append(
            [
                str(a["concurrency"]),
                str(a["requests"]),
                f"{a['ttft_diff_ms']['median_abs']:.3f}",
                f"{a['ttft_diff_ms']['p99_abs']:.3f}",
                f"{a['e2e_diff_ms']['median_abs']:.3f}",
                f"{a['e2e_diff_ms']['p99_abs']:.3f}",
                f"{a['first_chunk_delivery_ms']['median_abs']:.3f}",
                f"{a['send_lag_ms']['median_abs']:.2f}/{a['send_lag_ms']['p99_abs']:.2f}",
                "/".join(f"{a['reported_percentile_diff_ms'][f'ttft_{q}']:.2f}" for q in (50, 90, 99)),
                "/".join(f"{a['reported_percentile_diff_ms'][f'e2e_{q}']:.2f}" for q in (50, 90, 99)),
            ]
        )
    print_table(rows)

    best = max(r["req_s"] for r in results if r["client"].startswith("ours"))
    median = max(max(a["ttft_diff_ms"]["median_abs"], a["e2e_diff_ms"]["median_abs"]) for a in agree)
    p99 = max(max(a["ttft_diff_ms"]["p99_abs"], a["e2e_diff_ms"]["p99_abs"]) for a in agree)
    reported = max(abs(v) for a in agree for v in a["reported_percentile_diff_ms"].values())
    met = {
        "ceiling": best >= TARGET_RPS,
        "agreement_median": median <= TARGET_AGREEMENT_MS,
        "agreement_p99": p99 <= TARGET_AGREEMENT_MS,
        "agreement_reported_percentiles": reported <= TARGET_AGREEMENT_MS,
    }

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    print(f"\ntarget: >= {TARGET_RPS:.0f} streamed req/s (wall): {best:.0f} -> {verdict(met['ceiling'])}")
    print(f"target: client vs server |diff| <= {TARGET_AGREEMENT_MS:g} ms, worst level:")
    print(f"  median {median:.2f} ms -> {verdict(met['agreement_median'])}")
    print(f"  p99 {p99:.2f} ms -> {verdict(met['agreement_p99'])}")
    print(
        f"  the reported TTFT / E2E p50, p90, p99 vs the server's own: worst {reported:.2f} ms -> "
        f"{verdict(met['agreement_reported_percentiles'])}"
    )
    print(
        f"load average before/after (other processes on this machine): {load[0]} / {os.getloadavg()[0]:.2f}"
    )
    write_report(
        args.out,
        settings={
            "requests": n,
            "chunks": args.chunks,
            "repeat": repeat,
            "cores": [client_core, server_core],
        },
        load_average=[load[0], round(os.getloadavg()[0], 2)],
        ceiling=results,
        agreement=agree,
        targets={"streamed_req_s": TARGET_RPS, "agreement_ms": TARGET_AGREEMENT_MS, "met": met},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
