"""Rate searches on top of the load generator: `--rate-sweep` and `--find-max-rate`.

Sweep (GuideLLM's `sweep` profile): one request at a time (closed loop, concurrency 1: the
synchronous rate), then as many at once as allowed (closed loop at `--max-concurrency`, default 256:
the throughput rate, where the server saturates), then K - 2 open-loop levels at rates evenly
spaced from the synchronous rate to the throughput rate (the last one is the throughput rate itself).

Find-max-rate (EvalScope's SLA auto-tune, GuideLLM's highest rate meeting the SLO): the highest
open-loop rate at which the `--slo-percentile` (default p99) of every SLO given (TTFT and E2E
counted from the scheduled send time, TPOT) is within its bound; a failed, cancelled or unsent
request counts as missing every bound, and so does a level whose requests went out at less than
90% of its rate (this client could not send them). First one request at a time (the synchronous rate). Then
from `--rate-min` (default the synchronous rate) the rate doubles until a level misses (or
reaches `--rate-max`), and the bracket [met, missed] is halved until (missed - met) / met <=
`--precision` (default 2%); when the first rate misses, it halves (up to 6 times; 2 when one at a
time missed too) looking for one that meets. The answer is the highest rate that met, within that
precision of the boundary (if the boundary is sharp; near a server's capacity the p99 of a
finite level is itself noisy, and a longer `--duration` per probe steadies it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ernie_ops.validate.loadgen import Level, Runner

MAX_PROBES = 24
MAX_HALVINGS = 6  # below rate-min / 64: give up
FAILED_MS = 1e300  # a failed, cancelled or unsent request's latency when judging a percentile
# a percentile interpolated between a real latency and a failed request lands anywhere up to FAILED_MS:
# beyond this (30,000 years) it is the failed requests that decide it
FAILED_FROM_MS = 1e15
SHORT_RATE = 0.9  # a level whose requests went out slower than this share of its rate missed
SWEEP_CONCURRENCY = 256  # the throughput level's concurrency when --max-concurrency is not given


def percentile_values(level: Level) -> dict[str, np.ndarray]:
    """Per counted request its TTFT, TPOT and E2E in ms (from the scheduled send time in an open
    loop); inf for a request that failed, was cancelled or was not sent."""
    values: dict[str, list[float]] = {"ttft_ms": [], "tpot_ms": [], "e2e_ms": []}
    inf = float("inf")
    for i, reply in enumerate(level.replies):
        if i in level.skipped:
            continue
        if reply is None or not reply.ok:
            for bucket in values.values():
                bucket.append(inf)
            continue
        origin = level.due[i] if level.due else reply.origin
        values["ttft_ms"].append(inf if reply.first is None else (reply.first - origin) * 1000)
        values["e2e_ms"].append((reply.end - origin) * 1000)
        tpot = reply.tpot
        if tpot is not None:
            values["tpot_ms"].append(tpot * 1000)
    return {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}


def judge(level: Level, runner: Runner) -> tuple[bool, dict[str, float | None], str]:
    """(met, the percentile of each bounded metric, why not) for one level."""
    options = runner.options
    slo, q = options.slo, options.slo_percentile
    values = percentile_values(level)
    seen: dict[str, float | None] = {}
    missed = []
    for name, bound in (("ttft_ms", slo.ttft_ms), ("tpot_ms", slo.tpot_ms), ("e2e_ms", slo.e2e_ms)):
        if bound is None:
            continue
        # a failed request stands for a latency longer than any: a huge finite number, as numpy's
        # interpolation between two infinities is NaN (and NaN > bound is False)
        x = np.minimum(values[name], FAILED_MS)
        value = float(np.percentile(x, q)) if x.size else None
        seen[name] = None if value is None or value >= FAILED_FROM_MS else round(value, 3)
        if value is not None and value > bound:
            shown = "failed requests" if value >= FAILED_FROM_MS else f"{value:.1f} ms"
            missed.append(f"p{q:g} {name.removesuffix('_ms').upper()} {shown} > {bound:g} ms")
    if level.completed == 0:
        missed.append("no request completed")
    if level.rate and level.achieved_rate is not None and level.achieved_rate < SHORT_RATE * level.rate:
        missed.append(
            f"requests went out at {level.achieved_rate:.4g} req/s, short of {level.rate:.4g}: this client "
            "could not send that fast"
        )
    return not missed, seen, "; ".join(missed)


async def sweep(runner: Runner, levels: list[Level], say: Callable[[str], None]) -> None:
    options = runner.options
    k = options.rate_sweep or 10
    synchronous = await runner.closed(1)
    levels.append(synchronous)
    throughput = await runner.closed(options.max_concurrency or SWEEP_CONCURRENCY)
    levels.append(throughput)
    low, high = synchronous.request_throughput, throughput.request_throughput
    if high <= 0 or low <= 0:
        say("bench: rate sweep: no request completed at the synchronous or throughput level; stopping")
        return
    if high < low:
        say(
            f"bench: rate sweep: the throughput level ({high:.3g} req/s) was slower than one at a time "
            f"({low:.3g} req/s); sweeping up to the faster"
        )
        low, high = high, low
    say(f"bench: rate sweep from {low:.3g} to {high:.3g} req/s in {k - 2} open-loop levels")
    for rate in np.linspace(low, high, k - 1)[1:]:
        levels.append(await runner.open(float(rate)))


async def find_max_rate(runner: Runner, levels: list[Level], say: Callable[[str], None]) -> dict[str, Any]:
    options = runner.options
    probes: list[dict[str, Any]] = []
    outcome: dict[str, Any] = {
        "percentile": options.slo_percentile,
        "precision": options.precision,
        "max_rate": None,
        "failed_rate": None,
        "gap": None,
        "probes": probes,
    }

    async def probe(rate: float | None) -> bool:
        level = await (runner.closed(1) if rate is None else runner.open(rate))
        levels.append(level)
        met, seen, why = judge(level, runner)
        probes.append(
            {
                "rate": None if rate is None else round(rate, 6),
                "load": level.label,
                "met": met,
                "achieved_rate": None if level.achieved_rate is None else round(level.achieved_rate, 4),
                f"p{options.slo_percentile:g}": seen,
                "why_not": why or None,
            }
        )
        say(f"bench: find-max-rate: {level.label}: {'met the SLO' if met else 'missed: ' + why}")
        return met

    one_at_a_time = await probe(None)
    synchronous = levels[-1].request_throughput
    outcome["synchronous_rate"] = round(synchronous, 4)
    if synchronous <= 0:
        outcome["reason"] = "no request completed one at a time: " + probes[-1]["why_not"]
        return outcome
    # one at a time missing the SLO is telling, but a single stall of this machine can do it (p99 of
    # a few requests is their maximum): a few lower open-loop rates are tried before giving up
    halvings = MAX_HALVINGS if one_at_a_time else 2
    rate = options.rate_min or synchronous
    if options.rate_max is not None:
        rate = min(rate, options.rate_max)
    low: float | None = None
    high: float | None = None
    if await probe(rate):
        low = rate
        while high is None and len(probes) < MAX_PROBES:
            if options.rate_max is not None and low >= options.rate_max:
                break
            rate = min(low * 2, options.rate_max) if options.rate_max else low * 2
            if await probe(rate):
                low = rate
            else:
                high = rate
    else:
        high = rate
        for _ in range(halvings):
            rate = rate / 2
            if await probe(rate):
                low = rate
                break
            high = rate
    if low is None:
        first = "" if one_at_a_time else f"even one request at a time missed ({probes[0]['why_not']}), and "
        outcome["reason"] = first + f"every rate down to {rate:.3g} req/s missed: " + probes[-1]["why_not"]
        return outcome
    while high is not None and (high - low) / low > options.precision and len(probes) < MAX_PROBES:
        mid = (low + high) / 2
        if await probe(mid):
            low = mid
        else:
            high = mid
    outcome["max_rate"] = round(low, 6)
    outcome["failed_rate"] = None if high is None else round(high, 6)
    outcome["gap"] = None if high is None else round((high - low) / low, 6)
    if high is not None and (high - low) / low > options.precision:
        outcome["reason"] = f"stopped after {MAX_PROBES} probes before reaching the precision"
    return outcome
