"""--part server-overhead: the server before the async engine client and now, interleaved."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import gc
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ernie_ops.benchmark import print_table, write_report
from servebench import REPO
from servebench.checkpoint import NEW_TOKENS, PROMPT_LEN, SEED, SERVED_NAME, prompts
from servebench.measure import pct, print_targets
from servebench.server import Server

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
    repo = REPO
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
        # cwd: not the checkout, whose ernie_ops/ would shadow PYTHONPATH's ('' leads sys.path)
        program = ("-c", STAMPING_SERVER, str(self.stamps_path))
        super().__init__(model_dir, env, work / f"server-{label}.log", program, OVERHEAD_BATCH, cwd=work)

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
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # also after Ctrl-C or a failure
    before_rev = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", OVERHEAD_REV],
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
    print_targets(targets)
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
