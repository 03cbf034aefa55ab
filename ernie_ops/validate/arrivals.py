"""When the requests of an open-loop level are due: Poisson / gamma arrivals at a rate, or a
replayed trace; and what the arrivals achieved (rate, coefficient of variation).

Gamma arrivals follow vLLM's `bench serve` definition: the gaps between requests are drawn from a
gamma distribution of shape `burstiness` and scale `1 / (rate * burstiness)`, so their mean is
`1 / rate` whatever the burstiness and their coefficient of variation (stdev / mean) is
`1 / sqrt(burstiness)`: burstiness 1 is a Poisson process (exponential gaps, CV 1), below 1 burstier,
above 1 more regular (infinite: a constant rate). GuideLLM's `poisson` profile is the burstiness-1
case; its `constant` profile the limit.

The gaps are then scaled so that the N - 1 gaps of a level of N requests add up to exactly
(N - 1) / rate, as vLLM does too (it scales its N cumulative delays so the last is N / rate, the
first request going out after one gap; here the first goes at once). For Poisson arrivals this is
the Poisson process conditioned on its count (N points in a fixed interval are uniformly
distributed, and normalised exponential gaps are exactly their spacings); for other burstiness the
analogous normalisation (Dirichlet spacings). The gaps keep their distribution and CV; what goes is
the count's own sampling noise (about 1 / sqrt(N): 3% at 1000 requests), so a level asked for
10 req/s is scheduled at 10 req/s and what differs in the achieved rate is this client's timing.
The CV keeps its sampling noise: about 1 / sqrt(N) relative (3% at 1000 gaps, 1% at 10 000).

A trace is a JSONL file, one request per line: `timestamp` (seconds; or `timestamp_ms`), the prompt
length (`input_length`, `prompt_tokens` or `input_tokens`) and the output length (`output_length`,
`output_tokens` or `max_tokens`). Times are taken relative to the first request and multiplied by
`--trace-scale` (2 = half as fast, 0.5 = twice as fast: GuideLLM's `time_scale`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ernie_ops.errors import UserError

INPUT_KEYS = ("input_length", "prompt_tokens", "input_tokens", "input_len")
OUTPUT_KEYS = ("output_length", "output_tokens", "max_tokens", "output_len")


def gamma_offsets(n: int, rate: float, burstiness: float = 1.0, seed: int = 0) -> np.ndarray:
    """Send times (seconds after the first) of `n` requests at `rate` per second with gamma gaps of
    shape `burstiness` (1: Poisson), the gaps scaled to add up to exactly (n - 1) / rate."""
    if rate <= 0 or not math.isfinite(rate):
        raise UserError(f"request rate {rate!r}: need a positive finite number of requests per second")
    if burstiness <= 0:
        raise UserError(f"--burstiness {burstiness!r}: need > 0 (1 = Poisson)")
    if n <= 1:
        return np.zeros(max(n, 0))
    rng = np.random.default_rng(seed)
    gaps = rng.gamma(burstiness, 1.0 / (rate * burstiness), n - 1)
    gaps *= ((n - 1) / rate) / gaps.sum()
    return np.concatenate([[0.0], np.cumsum(gaps)])


def target_cv(burstiness: float) -> float:
    """The coefficient of variation of the gaps between arrivals: 1 / sqrt(burstiness)."""
    return 1.0 / math.sqrt(burstiness)


@dataclass(frozen=True)
class ArrivalStats:
    """What a list of send times achieved: requests per second between the first and the last, and
    the coefficient of variation of the gaps."""

    n: int
    rate: float | None
    cv: float | None

    @classmethod
    def of(cls, times: list[float] | np.ndarray) -> ArrivalStats:
        t = np.sort(np.asarray(times, dtype=np.float64))
        if t.size < 3 or t[-1] <= t[0]:
            return cls(int(t.size), None, None)
        gaps = np.diff(t)
        return cls(int(t.size), float((t.size - 1) / (t[-1] - t[0])), float(gaps.std() / gaps.mean()))


@dataclass(frozen=True)
class TraceRow:
    offset: float  # seconds after the trace's first request, before scaling
    input_tokens: int
    output_tokens: int


def _length(record: dict[str, object], keys: tuple[str, ...], where: str) -> int:
    for key in keys:
        if key in record:
            value = record[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 1:
                raise UserError(f"{where}: {key} {value!r} is not a positive whole number")
            return int(value)
    raise UserError(f"{where}: no {' / '.join(keys)}", hint="each line needs a prompt and an output length")


def load_trace(path: Path) -> list[TraceRow]:
    """The trace's requests in time order; errors name the file and line."""
    if not path.is_file():
        raise UserError(f"--trace {path}: no such file")
    rows: list[TraceRow] = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{where}: not JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise UserError(f"{where}: expected an object with timestamp and lengths")
            if "timestamp" in record:
                stamp, scale = record["timestamp"], 1.0
            elif "timestamp_ms" in record:
                stamp, scale = record["timestamp_ms"], 1e-3
            else:
                raise UserError(
                    f"{where}: no timestamp", hint="give `timestamp` (seconds) or `timestamp_ms` per line"
                )
            if isinstance(stamp, bool) or not isinstance(stamp, int | float) or not math.isfinite(stamp):
                raise UserError(f"{where}: timestamp {stamp!r} is not a number")
            rows.append(
                TraceRow(
                    float(stamp) * scale,
                    _length(record, INPUT_KEYS, where),
                    _length(record, OUTPUT_KEYS, where),
                )
            )
    if not rows:
        raise UserError(f"--trace {path}: no requests in the file")
    rows.sort(key=lambda r: r.offset)
    first = rows[0].offset
    return [TraceRow(r.offset - first, r.input_tokens, r.output_tokens) for r in rows]


def trace_offsets(rows: list[TraceRow], scale: float = 1.0) -> np.ndarray:
    if scale <= 0:
        raise UserError(f"--trace-scale {scale!r}: need > 0 (2 = half as fast)")
    return np.asarray([r.offset * scale for r in rows], dtype=np.float64)
