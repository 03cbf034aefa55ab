"""What a served variant holds in memory, read from outside the server after its load.

- CPU: the resident set of the server's whole process tree (the supervisor's record: pid, process
  group, start time, so a reused pid is never counted), now and at its peak (each process's VmHWM,
  summed: an upper bound when the processes peaked at different times).
- GPU: what NVML says each of those processes has allocated on each GPU (the engine's own pool:
  FastDeploy and vLLM take `gpu_memory_utilization` of the card for weights and KV cache at start,
  so this is the footprint another tenant of the GPU sees, not the bytes the weights need).
- The engines' own reports, from the server's logs (FD_LOG_DIR, which the supervisor points at the
  server's log directory): FastDeploy's worker logs, after its profile run, "Paddle allocated
  memory" and "Available KV Cache meomory" (sic; GiB, bytes in its oldest workers); vLLM logs "Model
  loading took X GiB" and "Available KV cache memory: X GiB". Kept beside the NVML figure.
The figure the sweep ranks on (`memory_gib`) is NVML's when there is one, else the engine's own
(weights + KV cache), else the peak RSS.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

MB = 2**20


def server_memory(port: int) -> dict[str, Any]:
    """The memory of the detached server on `port`: rss_mb, peak_rss_mb, gpu_mb (None without
    NVML or GPU processes), processes, memory_gib and its source."""
    import ernie_ops.serve as serving
    from ernie_ops.supervise import tree

    found = serving.servers(port=port)
    if not found or not found[0].get("running"):
        raise RuntimeError(f"no running server on port {port} to measure")
    state = found[0]
    procs = tree(state["pid"], state.get("pgid"), state.get("created"))
    rss = peak = 0
    for proc in procs.values():
        with contextlib.suppress(Exception):
            now = proc.memory_info().rss
            rss += now
            peak += _peak_rss(proc.pid) or now
    gpu = gpu_memory(set(procs))
    engine = engine_report(Path(state["log_dir"])) if state.get("log_dir") else {}
    out: dict[str, Any] = {
        "processes": len(procs),
        "rss_mb": round(rss / MB, 1),
        "peak_rss_mb": round(peak / MB, 1),
        "gpu_mb": None if gpu is None else round(gpu / MB, 1),
        "engine_report": engine or None,
    }
    if gpu:
        out.update(memory_gib=round(gpu / 2**30, 3), source="GPU memory of the server's processes (NVML)")
    elif engine.get("weights_gib") is not None and engine.get("kv_cache_gib") is not None:
        total = engine["weights_gib"] + engine["kv_cache_gib"]
        out.update(memory_gib=round(total, 3), source=f"{engine['source']}: weights + KV cache")
    else:
        out.update(memory_gib=round(peak / 2**30, 3), source="peak RSS of the server's process tree")
    return out


# what each engine logs (see the module's docstring); the last match wins (a restarted worker)
ENGINE_LINES = {
    "FastDeploy's log": (
        re.compile(r"Paddle allocated memory: ([0-9.eE+]+)"),
        re.compile(r"Available KV Cache meomory: ([0-9.eE+-]+)"),
    ),
    "vLLM's log": (
        re.compile(r"Model loading took ([0-9.]+) GiB"),
        re.compile(r"Available KV cache memory: ([0-9.-]+) GiB"),
    ),
}


def engine_report(log_dir: Path) -> dict[str, Any]:
    """weights_gib and kv_cache_gib as FastDeploy's or vLLM's own logs under LOG_DIR state them
    (empty when neither logged them: the embedded engine, llama.cpp, a server still starting)."""
    found: dict[str, Any] = {}
    files = sorted(p for p in log_dir.rglob("*") if p.is_file()) if log_dir.is_dir() else []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for source, (weights, kv) in ENGINE_LINES.items():
            for key, pattern in (("weights_gib", weights), ("kv_cache_gib", kv)):
                values = pattern.findall(text)
                if values:
                    value = float(values[-1])
                    found[key] = round(value / 2**30 if value > 1e6 else value, 3)  # bytes in old workers
                    found["source"] = source
    return found


def _peak_rss(pid: int) -> int | None:
    """VmHWM of /proc/PID/status in bytes (Linux); None elsewhere."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def gpu_memory(pids: set[int], nvml: Any = None) -> int | None:
    """Bytes NVML reports allocated by PIDS on every GPU (compute processes); None
    when NVML cannot be read (no driver, no pynvml) or none of them holds GPU memory."""
    if nvml is None:
        try:
            import pynvml
        except ImportError:
            return None
        nvml = pynvml
    try:
        nvml.nvmlInit()
    except Exception:  # no driver: NVML raises its own error classes, all meaning "no GPU here"
        return None
    total, seen = 0, False
    try:
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                used = getattr(proc, "usedGpuMemory", None)  # None where the driver does not say
                if proc.pid in pids and isinstance(used, int):
                    total, seen = total + used, True
    except Exception:  # a GPU that went away mid-read: report what was read, if anything
        pass
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()
    return total if seen else None
