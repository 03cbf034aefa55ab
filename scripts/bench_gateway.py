#!/usr/bin/env python
"""The gateway's overhead: a null server behind `ernie-ops gateway` against the same server direct.

Three child processes: a null OpenAI server (ernie_ops/validate/null_server.py), the gateway in
front of it (`ernie-ops gateway run`, all-stable, request log on as by default), and this process as
the client. Two parts, each interleaving direct and gateway requests in one run:

1. **Latency at `--rate` requests/s** (open loop: a request is sent on schedule whether or not the
   earlier ones are done; each pair of due requests goes one direct and one through the gateway, in
   random order). Streamed chat of `--tokens` chunks, the server waiting `--delay-ms` before each
   chunk. The null server stamps each request's arrival, first token written and last byte written
   (perf_counter_ns: CLOCK_MONOTONIC, the same clock as this process), so for every request:
   - outside the server = client's end-to-end - (last byte written - arrival): what the path
     between client and server cost the request (loopback and client for direct; + the gateway);
   - first chunk / last chunk delivery = client receives - server wrote.
   Added latency = the gateway's figure - the direct one, at p50 and p99 (target p99 < 2 ms).
2. **Highest streamed rate**: `--concurrency` closed-loop streams of `--tokens` chunks (the server
   answering at once) for `--seconds`, direct and through the gateway, `--repeat` times
   interleaved. Requests/s achieved, the gateway's CPU seconds (from /proc), and requests per
   gateway CPU-second: the rate the gateway sustains on one core of its own (it is pinned to
   `--gateway-core`; on a shared machine it does not get the whole core, which this figure does
   not depend on). Target >= 1,000 streamed requests/s per core.

    .venv/bin/python scripts/bench_gateway.py            # ~1 minute
    .venv/bin/python scripts/bench_gateway.py --quick    # ~20 s
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson

from ernie_ops.benchmark import bench_parser, print_table, write_report

TARGET_P99_ADDED_MS = 2.0
TARGET_RPS_PER_CORE = 1000.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


NICE = 0  # --nice: the priority of every process of the benchmark (children inherit this one's)


class Child:
    """A child process that prints its URL on its first line of output; pinned to CORE if given."""

    def __init__(self, cmd: list[str], marker: str, core: int | None):
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        if core is not None:
            os.sched_setaffinity(self.proc.pid, {core})
        if NICE:
            os.setpriority(os.PRIO_PROCESS, self.proc.pid, NICE)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if marker not in line:
            self.proc.kill()
            raise RuntimeError(f"{cmd[2]} did not start: {line!r}")
        self.url = next(w for w in line.replace(":", " : ", 0).split() if w.startswith("http")).rstrip(":,")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def null_server(delay_ms: float, core: int | None) -> Child:
    cmd = [sys.executable, "-m", "ernie_ops.validate.null_server", "--port", "0", "--delay-ms", str(delay_ms)]
    return Child(cmd, "listening on", core)


def gateway(stable: str, workdir: Path, core: int | None) -> Child:
    cmd = [
        sys.executable,
        "-m",
        "ernie_ops.cli.main",
        "gateway",
        "run",
        "--stable",
        stable,
        "--port",
        "0",
        "--state",
        str(workdir / "state.json"),
        "--log-dir",
        str(workdir / "requests"),
    ]
    return Child(cmd, "gateway on", core)


def payload(i: int, tokens: int) -> bytes:
    return orjson.dumps(
        {
            "model": "null-model",
            "messages": [{"role": "user", "content": f"request {i}: say something short"}],
            "max_tokens": tokens,
            "stream": True,
            "user": f"r{i}",
        }
    )


HEADERS = {"Content-Type": "application/json"}


async def one(client: aiohttp.ClientSession, url: str, i: int, tokens: int) -> dict[str, Any]:
    """One streamed request: send, first token, [DONE] times (perf_counter_ns)."""
    sent = time.perf_counter_ns()
    first = done = None
    tail = b""
    async with client.post(url + "/v1/chat/completions", data=payload(i, tokens), headers=HEADERS) as r:
        if r.status != 200:
            return {"i": i, "ok": False}
        async for data in r.content.iter_any():
            now = time.perf_counter_ns()
            if first is None and b'"content":"tok' in data:
                first = now
            tail = (tail + data)[-64:]
            if b"[DONE]" in tail:
                done = now
    return {"i": i, "ok": done is not None and first is not None, "sent": sent, "first": first, "done": done}


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def latency_part(direct: str, via: str, rate: float, n: int, tokens: int) -> dict[str, Any]:
    rng = random.Random(0)
    order = []
    for _ in range(n // 2):
        pair = ["direct", "gateway"]
        rng.shuffle(pair)
        order += pair
    urls = {"direct": direct, "gateway": via}
    connector = aiohttp.TCPConnector(limit=512, keepalive_timeout=30)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as client:
        # warm both paths (connections, the gateway's first requests)
        await asyncio.gather(*(one(client, urls[p], -1 - k, tokens) for k, p in enumerate(order[:20])))
        async with client.get(direct + "/v1/null/timestamps?clear=1") as r:
            await r.read()
        start = time.perf_counter() + 0.05
        tasks = []
        late = []
        for i, path in enumerate(order):
            due = start + i / rate
            wait = due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            late.append(max(0.0, -wait))
            tasks.append(asyncio.ensure_future(one(client, urls[path], i, tokens)))
        replies = await asyncio.gather(*tasks)
        async with client.get(direct + "/v1/null/timestamps?clear=1") as r:
            stamps = {row["user"]: row for row in orjson.loads(await r.read())["requests"]}
    rows: dict[str, dict[str, list[float]]] = {
        p: {"outside": [], "first": [], "last": [], "e2e": []} for p in urls
    }
    failed = 0
    for reply, path in zip(replies, order, strict=True):
        server = stamps.get(f"r{reply['i']}")
        if not reply["ok"] or server is None or server["first_ns"] is None:
            failed += 1
            continue
        inside = server["last_ns"] - server["arrival_ns"]
        e2e = reply["done"] - reply["sent"]
        r = rows[path]
        r["outside"].append((e2e - inside) / 1e6)
        r["first"].append((reply["first"] - server["first_ns"]) / 1e6)
        r["last"].append((reply["done"] - server["last_ns"]) / 1e6)
        r["e2e"].append(e2e / 1e6)
    figures: dict[str, Any] = {"rate": rate, "requests": n, "failed": failed, "tokens": tokens}
    figures["send_late_ms_p99"] = round(pct(late, 99) * 1000, 3)
    for what in ("outside", "first", "last", "e2e"):
        d, g = rows["direct"][what], rows["gateway"][what]
        figures[what] = {
            "direct_p50": pct(d, 50),
            "direct_p99": pct(d, 99),
            "gateway_p50": pct(g, 50),
            "gateway_p99": pct(g, 99),
            "added_p50": pct(g, 50) - pct(d, 50),
            "added_p99": pct(g, 99) - pct(d, 99),
        }
    return figures


async def closed_loop(url: str, concurrency: int, seconds: float, tokens: int) -> tuple[int, int, float]:
    """(requests completed, failed, wall seconds) with CONCURRENCY streams for SECONDS."""
    connector = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=30)
    done = failed = 0
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as client:
        stop = time.perf_counter() + seconds
        start = time.perf_counter()

        async def worker(w: int) -> None:
            nonlocal done, failed
            i = w
            while time.perf_counter() < stop:
                try:
                    reply = await one(client, url, i, tokens)
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    reply = {"ok": False}
                if reply["ok"]:
                    done += 1
                else:
                    failed += 1
                i += concurrency

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        return done, failed, time.perf_counter() - start


def rate_part(
    null: Child, gw: Child, concurrency: int, seconds: float, tokens: int, repeat: int
) -> dict[str, Any]:
    runs: dict[str, list[dict[str, float]]] = {"direct": [], "gateway": []}
    me = Path("/proc/self/stat")
    for _ in range(repeat):
        for path, url in (("direct", null.url), ("gateway", gw.url)):
            gw0, null0 = gw.cpu_seconds(), null.cpu_seconds()
            me0 = _cpu(me)
            done, failed, wall = asyncio.run(closed_loop(url, concurrency, seconds, tokens))
            gw_cpu, null_cpu, me_cpu = gw.cpu_seconds() - gw0, null.cpu_seconds() - null0, _cpu(me) - me0
            runs[path].append(
                {
                    "rps": done / wall,
                    "failed": failed,
                    "gateway_cpu": gw_cpu / wall,
                    "null_cpu": null_cpu / wall,
                    "client_cpu": me_cpu / wall,
                    "per_gateway_cpu_s": done / gw_cpu if path == "gateway" and gw_cpu > 0 else float("nan"),
                }
            )
    return {
        path: {key: statistics.median(r[key] for r in rs) for key in rs[0]} | {"runs": rs}
        for path, rs in runs.items()
    }


def _cpu(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def main() -> int:
    parser = bench_parser(__doc__, "gateway", repeat=3)
    parser.add_argument("--quick", action="store_true", help="fewer requests and shorter runs")
    parser.add_argument("--rate", type=float, default=100.0, help="requests/s in part 1 (default 100)")
    parser.add_argument("--requests", type=int, default=3000, help="part 1 requests (default 3000)")
    parser.add_argument("--tokens", type=int, default=16, help="streamed chunks per request (default 16)")
    parser.add_argument("--delay-ms", type=float, default=1.0, help="part 1: before each chunk (default 1)")
    parser.add_argument("--concurrency", type=int, default=32, help="part 2 streams (default 32)")
    parser.add_argument("--seconds", type=float, default=8.0, help="part 2 run length (default 8)")
    parser.add_argument("--gateway-core", type=int, default=0, help="core the gateway is pinned to")
    parser.add_argument("--client-core", type=int, default=1, help="core of the client and null servers")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run every process of the benchmark (client, null servers, gateway) at this nice value; "
        "a negative one (as root) approximates cores of their own on a shared machine (default 0)",
    )
    args = parser.parse_args()
    global NICE
    NICE = args.nice
    if NICE:
        os.setpriority(os.PRIO_PROCESS, 0, NICE)
    if args.quick:
        args.requests, args.seconds, args.repeat = 1000, 3.0, 1
    cores = sorted(os.sched_getaffinity(0))
    gw_core = args.gateway_core if args.gateway_core in cores else None
    client_core = args.client_core if args.client_core in cores and args.client_core != gw_core else None
    if client_core is not None:
        os.sched_setaffinity(0, {client_core})
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        paced = null_server(args.delay_ms, client_core)
        instant = null_server(0.0, client_core)
        children = [paced, instant]
        try:
            gw_paced = gateway(paced.url, Path(tmp) / "paced", gw_core)
            children.append(gw_paced)
            gw_instant = gateway(instant.url, Path(tmp) / "instant", gw_core)
            children.append(gw_instant)
            print(
                f"load average {load_before[0]:.2f}; gateway on core {gw_core}, client and null servers on "
                f"core {client_core} (of {len(cores)}); nice {NICE}",
                flush=True,
            )
            cpu0 = gw_paced.cpu_seconds()
            latency = asyncio.run(
                latency_part(paced.url, gw_paced.url, args.rate, args.requests, args.tokens)
            )
            # the gateway's own CPU per request: what it adds when the machine gives it a core at once
            latency["gateway_cpu_ms_per_request"] = (
                (gw_paced.cpu_seconds() - cpu0) * 1000 / (args.requests // 2)
            )
            rate = rate_part(instant, gw_instant, args.concurrency, args.seconds, args.tokens, args.repeat)
        finally:
            for child in children:
                child.stop()
    load_after = os.getloadavg()

    def ms(x: float) -> str:
        return f"{x:.3f}"

    head = ["part 1 (ms)", "direct p50", "gateway p50", "added p50", "direct p99", "gateway p99"]
    rows = [[*head, "added p99"]]
    for what, label in (
        ("outside", "per request (outside the server)"),
        ("first", "first chunk delivery"),
        ("last", "last chunk delivery"),
        ("e2e", "end to end"),
    ):
        f = latency[what]
        rows.append(
            [
                label,
                ms(f["direct_p50"]),
                ms(f["gateway_p50"]),
                ms(f["added_p50"]),
                ms(f["direct_p99"]),
                ms(f["gateway_p99"]),
                ms(f["added_p99"]),
            ]
        )
    print(
        f"\npart 1: {args.requests} streamed requests ({args.tokens} chunks, {args.delay_ms:g} ms apart) at "
        f"{args.rate:g}/s, direct and gateway interleaved; failed {latency['failed']}; "
        f"client send lag p99 {latency['send_late_ms_p99']} ms; gateway CPU "
        f"{latency['gateway_cpu_ms_per_request']:.3f} ms per request (its /proc times; 10 ms ticks)"
    )
    print_table(rows)
    rows = [["part 2", "req/s", "failed", "gateway CPU", "client CPU", "null CPU", "req per gateway CPU-s"]]
    for path in ("direct", "gateway"):
        f = rate[path]
        rows.append(
            [
                path,
                f"{f['rps']:.0f}",
                f"{f['failed']:.0f}",
                f"{f['gateway_cpu']:.2f}",
                f"{f['client_cpu']:.2f}",
                f"{f['null_cpu']:.2f}",
                "" if path == "direct" else f"{f['per_gateway_cpu_s']:.0f}",
            ]
        )
    print(
        f"\npart 2: {args.concurrency} closed-loop streams of {args.tokens} chunks, {args.seconds:g} s, "
        f"median of {args.repeat} interleaved runs (CPU in cores)"
    )
    print_table(rows)
    added_p99 = latency["outside"]["added_p99"]
    per_core = rate["gateway"]["per_gateway_cpu_s"]
    verdict = {
        "p99_added_ms": added_p99,
        "p99_added_ok": added_p99 < TARGET_P99_ADDED_MS,
        "streamed_rps_per_core": per_core,
        "streamed_rps_per_core_ok": per_core >= TARGET_RPS_PER_CORE,
    }
    print(
        f"\ntargets: p99 added {added_p99:.3f} ms (< {TARGET_P99_ADDED_MS} ms: "
        f"{'met' if verdict['p99_added_ok'] else 'NOT met'}); {per_core:.0f} streamed req/s per gateway "
        f"core (>= {TARGET_RPS_PER_CORE:.0f}: "
        f"{'met' if verdict['streamed_rps_per_core_ok'] else 'NOT met'}); "
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after"
    )
    write_report(
        args.out,
        settings={k: v for k, v in vars(args).items() if k != "out"},
        cores={"gateway": gw_core, "client_and_null": client_core, "available": cores},
        load_average={"before": load_before, "after": load_after},
        latency=latency,
        rate=rate,
        targets={"p99_added_ms": TARGET_P99_ADDED_MS, "streamed_rps_per_core": TARGET_RPS_PER_CORE},
        verdict=verdict,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
