"""What a served variant holds in memory, read from outside the server after its load.

- CPU: the resident set of the server's whole process tree (the supervisor's record: pid, process
  group, start time, so a reused pid is never counted), now and at its peak (each process's VmHWM,
  summed: an upper bound when the processes peaked at different times).
- GPU: what NVML says each of those processes has allocated on each GPU (the engine's own pool:
  FastDeploy and vLLM take `gpu_memory_utilization` of the card for weights and KV cache at start,
  so this is the footprint another tenant of the GPU sees, not the bytes the weights need).
The figure the sweep ranks on (`memory_gb`) is the GPU one when there is one, else the peak RSS.
"""

from __future__ import annotations

import contextlib
from typing import Any

MB = 2**20


def server_memory(port: int) -> dict[str, Any]:
    """The memory of the detached server on `port`: rss_mb, peak_rss_mb, gpu_mb (None without
    NVML or GPU processes), processes, memory_gb and its source."""
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
    out: dict[str, Any] = {
        "processes": len(procs),
        "rss_mb": round(rss / MB, 1),
        "peak_rss_mb": round(peak / MB, 1),
        "gpu_mb": None if gpu is None else round(gpu / MB, 1),
    }
    if gpu:
        out.update(memory_gb=round(gpu / 2**30, 3), source="GPU memory of the server's processes (NVML)")
    else:
        out.update(memory_gb=round(peak / 2**30, 3), source="peak RSS of the server's process tree")
    return out


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
