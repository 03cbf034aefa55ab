"""Small measuring helpers: percentiles, ports, RSS and CPU seconds of processes, copy bandwidth."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path
from typing import Any


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


# metrics for which less is better (times, memory); the rest are rates
LOWER_IS_BETTER = frozenset({"b1_ttft_s", "peak_rss_mb", "rss_mb", "load_peak_rss_mb"})


def best_per_metric(rounds: list[dict[str, Any]], metrics: tuple[str, ...]) -> dict[str, float]:
    """Each metric's best value over interleaved ROUNDS: a shared machine's noise only ever slows a
    run, so the best is the closest to what the code can do, and both sides of a ratio get theirs.
    Memory is taken at its least too (a round's RSS shifts with the allocator, not with load)."""
    return {
        m: (min if m in LOWER_IS_BETTER else max)(r[m] for r in rounds) for m in metrics if m in rounds[0]
    }


def print_targets(targets: dict[str, dict[str, Any]]) -> None:
    """A line per target of a part's report: what it asks, the value, met or NOT met."""
    for key, t in targets.items():
        value = f"{t['value']:.2f}" if isinstance(t["value"], float) else t["value"]
        print(f"target {key}: {t['target']}, value {value}, {'met' if t['met'] else 'NOT met'}")


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


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


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
