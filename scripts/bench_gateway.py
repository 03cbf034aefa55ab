#!/usr/bin/env python
"""The gateway's overhead: a null server behind `ernie-ops gateway` against the same server direct.

Child processes: a null OpenAI server (ernie_ops/validate/null_server.py), one gateway in front of
it per `--variants` entry (`ernie-ops gateway run`, all-stable, request log on as by default; its
event loop: auto = uvloop when installed, as the CLI runs, or asyncio; `+pin`: pinned to
`--gateway-core`), and this process as the client (unpinned unless `--pin-client`: a pinned process
cannot move to the idle core while another process holds its own). Two parts, each interleaving
direct and every gateway's requests in one run:

1. **Latency at `--rate` requests/s** (open loop: a request is sent on schedule whether or not the
   earlier ones are done; each slot of the schedule sends one request direct and one through each
   gateway, in random order). Streamed chat of `--tokens` chunks, the server waiting `--delay-ms` before each
   chunk. The null server stamps each request's arrival, first token written and last byte written
   (perf_counter_ns: CLOCK_MONOTONIC, the same clock as this process), so for every request:
   - outside the server = client's end-to-end - (last byte written - arrival): what the path
     between client and server cost the request (loopback and client for direct; + the gateway);
   - first chunk / last chunk delivery = client receives - server wrote.
   Added latency = the gateway's figure - the direct one, at p50 and p99 (target p99 < 2 ms); and
   paired: per slot, the gateway's request minus the direct one sent at the same moment, whose p99
   leaves out the stalls of the client or the machine that delay both alike.
2. **Highest streamed rate**: `--concurrency` closed-loop streams of `--tokens` chunks (the server
   answering at once) for `--seconds`, direct and through the gateway, `--repeat` times
   interleaved. Requests/s achieved, the gateway's CPU seconds (from /proc), and requests per
   gateway CPU-second: the rate the gateway sustains on one core of its own (on a shared machine it
   does not get the whole core, which this figure does not depend on). Target >= 1,000 streamed
   requests/s per core.

    .venv/bin/python scripts/bench_gateway.py            # ~2 minutes
    .venv/bin/python scripts/bench_gateway.py --variants auto,asyncio+pin   # the loop and pinning compared
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

from ernie_ops import eventloop
from ernie_ops.benchmark import bench_parser, print_table, write_report

TARGET_P99_ADDED_MS = 2.0
TARGET_RPS_PER_CORE = 1000.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


NICE = 0  # --nice: the priority of every process of the benchmark (children inherit this one's)


class Child:
    """A child process that prints its URL on its first line of output; pinned to CORE if given."""

    def __init__(self, cmd: list[str], marker: str, core: int | None, env: dict[str, str] | None = None):
        environ = {**os.environ, **(env or {})}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=environ)
        if core is not None:
            os.sched_setaffinity(self.proc.pid, {core})
        if NICE:
            os.setpriority(os.PRIO_PROCESS, self.proc.pid, NICE)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if marker not in line:
            self.proc.kill()
            raise RuntimeError(f"{cmd[2][:40]} did not start: {line!r}")
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


# `ernie-ops gateway run` with the event loop of ERNIE_OPS_EVENT_LOOP (eventloop.py) whether or not the
# CLI itself chooses it yet: asyncio.run() takes its loop from the policy set here
GATEWAY_MAIN = (
    "import asyncio, sys\n"
    "from ernie_ops import eventloop\n"
    "if eventloop.chosen() == 'uvloop':\n"
    "    import uvloop\n"
    "    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())\n"
    "from ernie_ops.cli.main import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def gateway(stable: str, workdir: Path, core: int | None, loop: str = "auto") -> Child:
    cmd = [
        sys.executable,
        "-c",
        GATEWAY_MAIN,
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
    return Child(cmd, "gateway on", core, {eventloop.ENV: loop})


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


async def latency_part(paths: dict[str, str], rate: float, n: int, tokens: int) -> dict[str, Any]:
    """`paths`: name -> URL, the first the direct one. Each slot of the schedule sends one request
    down every path, in a random order, so the machine's load falls on all alike."""
    rng = random.Random(0)
    names = list(paths)
    order = []
    for _ in range(n // len(names)):
        slot = names[:]
        rng.shuffle(slot)
        order += slot
    direct = paths[names[0]]
    connector = aiohttp.TCPConnector(limit=512, keepalive_timeout=30)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as client:
        # warm every path (connections, the gateway's first requests)
        warm = order[: 10 * len(names)]
        await asyncio.gather(*(one(client, paths[p], -1 - k, tokens) for k, p in enumerate(warm)))
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
            tasks.append(asyncio.ensure_future(one(client, paths[path], i, tokens)))
        replies = await asyncio.gather(*tasks)
        async with client.get(direct + "/v1/null/timestamps?clear=1") as r:
            stamps = {row["user"]: row for row in orjson.loads(await r.read())["requests"]}
    rows: dict[str, dict[str, list[float]]] = {
        p: {"outside": [], "first": [], "last": [], "e2e": []} for p in paths
    }
    slots: dict[str, dict[int, float]] = {p: {} for p in paths}  # outside time per schedule slot
    failed = 0
    for k, (reply, path) in enumerate(zip(replies, order, strict=True)):
        server = stamps.get(f"r{reply['i']}")
        if not reply["ok"] or server is None or server["first_ns"] is None:
            failed += 1
            continue
        inside = server["last_ns"] - server["arrival_ns"]
        e2e = reply["done"] - reply["sent"]
        row = rows[path]
        row["outside"].append((e2e - inside) / 1e6)
        slots[path][k // len(names)] = (e2e - inside) / 1e6
        row["first"].append((reply["first"] - server["first_ns"]) / 1e6)
        row["last"].append((reply["done"] - server["last_ns"]) / 1e6)
        row["e2e"].append(e2e / 1e6)
    figures: dict[str, Any] = {"rate": rate, "requests": len(order), "failed": failed, "tokens": tokens}
    figures["send_late_ms_p99"] = round(pct(late, 99) * 1000, 3)
    figures["paths"] = {}
    for name in names[1:]:
        per: dict[str, Any] = {}
        for what in ("outside", "first", "last", "e2e"):
            d, g = rows[names[0]][what], rows[name][what]
            per[what] = {
                "direct_p50": pct(d, 50),
                "direct_p99": pct(d, 99),
                "gateway_p50": pct(g, 50),
                "gateway_p99": pct(g, 99),
                "added_p50": pct(g, 50) - pct(d, 50),
                "added_p99": pct(g, 99) - pct(d, 99),
            }
        # paired: the gateway's request minus the direct one sent in the same slot (same moment), so a
        # stall of the client or of the machine that delays both is not counted as the gateway's
        pairs = [v - slots[names[0]][k] for k, v in slots[name].items() if k in slots[names[0]]]
        per["paired_added"] = {"p50": pct(pairs, 50), "p99": pct(pairs, 99), "pairs": len(pairs)}
        figures["paths"][name] = per
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
    null: Child, gateways: dict[str, Child], concurrency: int, seconds: float, tokens: int, repeat: int
) -> dict[str, Any]:
    """Direct, then each gateway, `repeat` times in turn (the order reversed every other time)."""
    paths = {"direct": (null.url, None)} | {name: (gw.url, gw) for name, gw in gateways.items()}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in paths}
    me = Path("/proc/self/stat")
    for k in range(repeat):
        for name in list(paths) if k % 2 == 0 else list(paths)[::-1]:
            url, gw = paths[name]
            gw0, null0 = (gw.cpu_seconds() if gw else 0.0), null.cpu_seconds()
            me0 = _cpu(me)
            done, failed, wall = asyncio.run(closed_loop(url, concurrency, seconds, tokens))
            gw_cpu = (gw.cpu_seconds() - gw0) if gw else 0.0
            null_cpu, me_cpu = null.cpu_seconds() - null0, _cpu(me) - me0
            runs[name].append(
                {
                    "rps": done / wall,
                    "failed": failed,
                    "gateway_cpu": gw_cpu / wall,
                    "null_cpu": null_cpu / wall,
                    "client_cpu": me_cpu / wall,
                    "per_gateway_cpu_s": done / gw_cpu if gw and gw_cpu > 0 else float("nan"),
                }
            )
    return {
        name: {key: statistics.median(r[key] for r in rs) for key in rs[0]} | {"runs": rs}
        for name, rs in runs.items()
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
    parser.add_argument(
        "--variants",
        type=eventloop.variants_arg,
        default="auto",
        help="the gateways measured, comma-separated LOOP[+pin]: LOOP auto (uvloop when installed), uvloop "
        "or asyncio; +pin pins it to --gateway-core; all are measured interleaved in one run, the targets "
        "judged on the first (default auto: as `ernie-ops gateway run` runs); e.g. auto,asyncio+pin",
    )
    parser.add_argument("--gateway-core", type=int, default=0, help="core a +pin gateway is pinned to")
    parser.add_argument(
        "--pin-client",
        action="store_true",
        help="pin the client and the null servers to --client-core (default: unpinned, the kernel places "
        "them; pinned, a process cannot move to the idle core while another holds its own)",
    )
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
    variants = eventloop.variants(args.variants)
    cores = sorted(os.sched_getaffinity(0))
    gw_core = args.gateway_core if args.gateway_core in cores else None
    client_core = args.client_core if args.client_core in cores and args.client_core != gw_core else None
    if not args.pin_client:
        client_core = None
    if client_core is not None:
        os.sched_setaffinity(0, {client_core})
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        paced = null_server(args.delay_ms, client_core)
        instant = null_server(0.0, client_core)
        children = [paced, instant]
        try:
            in_front: dict[str, Child] = {}  # of the paced server, per variant
            behind: dict[str, Child] = {}  # of the instant one
            for k, v in enumerate(variants):
                core = gw_core if v.pinned else None
                in_front[str(v)] = gateway(paced.url, Path(tmp) / f"paced{k}", core, v.loop)
                behind[str(v)] = gateway(instant.url, Path(tmp) / f"instant{k}", core, v.loop)
                children += [in_front[str(v)], behind[str(v)]]
            print(
                f"load average {load_before[0]:.2f}; {', '.join(map(str, variants))} (pinned: core "
                f"{gw_core}); client and null servers on core {client_core} (of {len(cores)}); nice {NICE}",
                flush=True,
            )
            cpu0 = {name: gw.cpu_seconds() for name, gw in in_front.items()}
            paths = {"direct": paced.url} | {name: gw.url for name, gw in in_front.items()}
            latency = asyncio.run(latency_part(paths, args.rate, args.requests, args.tokens))
            # the gateway's own CPU per request: what it adds when the machine gives it a core at once
            per_path = latency["requests"] // len(paths)
            for name, gw in in_front.items():
                latency["paths"][name]["gateway_cpu_ms_per_request"] = (
                    (gw.cpu_seconds() - cpu0[name]) * 1000 / per_path
                )
            rate = rate_part(instant, behind, args.concurrency, args.seconds, args.tokens, args.repeat)
        finally:
            for child in children:
                child.stop()
    load_after = os.getloadavg()

    def ms(x: float) -> str:
        return f"{x:.3f}"

    print(
        f"\npart 1: {latency['requests']} streamed requests ({args.tokens} chunks, {args.delay_ms:g} ms "
        f"apart) at {args.rate:g}/s, direct and every gateway interleaved; failed {latency['failed']}; "
        f"client send lag p99 {latency['send_late_ms_p99']} ms"
    )
    head = ["part 1 (ms)", "direct p50", "gateway p50", "added p50", "direct p99", "gateway p99"]
    rows = [[*head, "added p99", "gateway CPU ms/req"]]
    for name, figures in latency["paths"].items():
        for what, label in (
            ("outside", "per request (outside the server)"),
            ("first", "first chunk delivery"),
            ("last", "last chunk delivery"),
            ("e2e", "end to end"),
        ):
            f = figures[what]
            rows.append(
                [
                    f"{name}: {label}",
                    ms(f["direct_p50"]),
                    ms(f["gateway_p50"]),
                    ms(f["added_p50"]),
                    ms(f["direct_p99"]),
                    ms(f["gateway_p99"]),
                    ms(f["added_p99"]),
                    f"{figures['gateway_cpu_ms_per_request']:.3f}" if what == "outside" else "",
                ]
            )
    print_table(rows)
    print("(gateway CPU from its /proc times: 10 ms ticks)")
    print(
        "paired (per slot: the gateway's request minus the direct one sent at the same moment), added "
        "outside the server, p50 / p99 ms: "
        + "; ".join(
            f"{name} {f['paired_added']['p50']:.3f} / {f['paired_added']['p99']:.3f}"
            for name, f in latency["paths"].items()
        )
    )
    rows = [["part 2", "req/s", "failed", "gateway CPU", "client CPU", "null CPU", "req per gateway CPU-s"]]
    for path, f in rate.items():
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
    first = str(variants[0])
    added_p99 = latency["paths"][first]["outside"]["added_p99"]
    paired_p99 = latency["paths"][first]["paired_added"]["p99"]
    per_core = rate[first]["per_gateway_cpu_s"]
    verdict = {
        "p99_added_ms": added_p99,
        "p99_added_ok": added_p99 < TARGET_P99_ADDED_MS,
        "paired_p99_added_ms": paired_p99,
        "paired_p99_added_ok": paired_p99 < TARGET_P99_ADDED_MS,
        "streamed_rps_per_core": per_core,
        "streamed_rps_per_core_ok": per_core >= TARGET_RPS_PER_CORE,
    }
    print(
        f"\ntargets ({first}): p99 added {added_p99:.3f} ms (p99 gateway - p99 direct; < "
        f"{TARGET_P99_ADDED_MS} ms: {'met' if verdict['p99_added_ok'] else 'NOT met'}; paired p99 "
        f"{paired_p99:.3f} ms: {'met' if verdict['paired_p99_added_ok'] else 'NOT met'}); "
        f"{per_core:.0f} streamed req/s per gateway core (>= {TARGET_RPS_PER_CORE:.0f}: "
        f"{'met' if verdict['streamed_rps_per_core_ok'] else 'NOT met'}); "
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after"
    )
    write_report(
        args.out,
        settings={k: v for k, v in vars(args).items() if k != "out"},
        cores={"gateway": gw_core, "client_and_null": client_core, "available": cores},
        variants=[str(v) for v in variants],
        load_average={"before": load_before, "after": load_after},
        latency=latency,
        rate=rate,
        targets={"p99_added_ms": TARGET_P99_ADDED_MS, "streamed_rps_per_core": TARGET_RPS_PER_CORE},
        verdict=verdict,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
