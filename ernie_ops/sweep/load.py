"""A variant's load step: the sweep's LoadSpec run by the load generator (`ernie-ops bench`'s), and
the figures the trade-off report compares.

- The level reported: with `find_max_rate`, the probe at the rate found; otherwise the level of
  highest output throughput among those whose SLO percentile met every bound (every level when no
  SLO is given), else the highest level.
- The sustainable request rate: the rate find_max_rate found; with fixed levels and an SLO, the
  request throughput of the busiest level that met it; None when nothing met it. Without an SLO
  there is no "sustainable" and the report says so.
- `met_slo`: find_max_rate found a rate; fixed levels: every level met the SLO (no SLO: every
  request of every level succeeded).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ernie_ops.sweep.spec import LoadSpec


def options(spec: LoadSpec) -> Any:
    from ernie_ops.validate import loadgen

    slo = loadgen.SLO(spec.slo_ttft_ms, spec.slo_tpot_ms, spec.slo_e2e_ms)
    return loadgen.Options(
        list(spec.concurrency) if spec.mode == "concurrency" else [],
        spec.num_prompts,
        timeout=spec.timeout,
        slo=slo,
        progress=False,
        rates=list(spec.rates) if spec.mode == "rate" else None,
        duration=spec.duration,
        max_concurrency=spec.max_concurrency,
        find_max_rate=spec.mode == "find_max_rate",
        slo_percentile=spec.slo_percentile,
        precision=spec.precision,
        rate_min=spec.rate_min,
        rate_max=spec.rate_max,
    )


def run_load(endpoint: Any, spec: LoadSpec, out: Path) -> dict[str, Any]:
    """Run the load against `endpoint`, write bench.json / bench.md / bench.html / bench.png in
    `out`, and return the figures the report compares (`ok` False with `problems` when requests
    failed in a fixed load)."""
    from ernie_ops.validate import loadgen

    workload = loadgen.Workload.synthetic(
        loadgen.Length.parse(str(spec.input_len), "input_len"),
        loadgen.Length.parse(str(spec.output_len), "output_len"),
        ignore_eos=spec.ignore_eos,
    )
    opts = options(spec)
    result = loadgen.bench(endpoint, workload, opts)
    loadgen.write(result, out)
    return summarize(result, opts) | {"report": str(out / "bench.json")}


def summarize(result: Any, opts: Any) -> dict[str, Any]:
    from ernie_ops.validate.search import judge

    runner: Any = SimpleNamespace(options=opts)  # all `judge` reads of a Runner
    levels = [lv for lv in result.levels if lv.completed]
    met = [judge(lv, runner)[0] if opts.slo.given else (lv.failed == 0 and not lv.truncated) for lv in levels]
    sustainable = None
    if result.mode == "find-max-rate":
        found = (result.search or {}).get("max_rate")
        sustainable = found
        at = [
            lv for lv in levels if lv.rate is not None and found is not None and abs(lv.rate - found) < 1e-6
        ]
        chosen = at[-1] if at else None
        met_slo = found is not None
    else:
        good = [lv for lv, ok in zip(levels, met, strict=True) if ok]
        chosen = max(good or levels, key=lambda lv: lv.output_throughput, default=None)
        if opts.slo.given and good:
            sustainable = max(lv.request_throughput for lv in good)
        met_slo = bool(levels) and all(met) and len(levels) == len(result.levels)
    figures: dict[str, Any] = {
        "ok": result.ok,
        "problems": result.problems(),
        "mode": result.mode,
        "slo": str(opts.slo) if opts.slo.given else None,
        "slo_percentile": opts.slo_percentile,
        "met_slo": met_slo,
        "sustainable_rate": None if sustainable is None else round(float(sustainable), 4),
        "level": None,
    }
    if chosen is not None:
        figures.update(
            level=chosen.label,
            ttft_p50_ms=chosen.ttft_ms.p50,
            ttft_p99_ms=chosen.ttft_ms.p99,
            tpot_p50_ms=chosen.tpot_ms.p50,
            tpot_p99_ms=chosen.tpot_ms.p99,
            output_tokens_per_s=round(chosen.output_throughput, 3),
            request_rate=round(chosen.request_throughput, 4),
        )
    return figures
