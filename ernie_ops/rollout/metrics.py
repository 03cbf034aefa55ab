"""The gateway's metrics: Prometheus on /metrics, and exact figures since a moment for the gates.

Every series is labelled with the backend (`stable`, `candidate`) and the traffic (`client`: the
answer a client got; `shadow`: the background copy in shadow mode), so a dashboard compares the two
models on the same requests and the controller gates a shadow stage on the candidate's own figures.

| quantity | name |
|---|---|
| requests by route and status (`error`: no HTTP answer) | `ernie_ops_gateway_requests_total` |
| failures by kind (connect, timeout, http_5xx, disconnected) | `ernie_ops_gateway_errors_total` |
| arrival to the first output event (1) | `ernie_ops_gateway_time_to_first_token_seconds` |
| arrival to last byte | `ernie_ops_gateway_e2e_request_latency_seconds` |
| prompt / generated tokens | `ernie_ops_gateway_prompt_tokens_total`, `..._generation_tokens_total` |
| requests being answered | `ernie_ops_gateway_requests_in_flight` |
| candidate failures retried on stable | `ernie_ops_gateway_retries_total` |
| requests kept off a resting candidate (2) | `ernie_ops_gateway_candidate_rested_total` |
| shadow copies dropped (queue full) | `ernie_ops_gateway_shadow_dropped_total` |
| shadow copies waiting | `ernie_ops_gateway_shadow_queue_depth` |
| shadow comparisons by result | `ernie_ops_gateway_shadow_comparisons_total` |
| clients gone before their answer ended | `ernie_ops_gateway_client_disconnects_total` |
| the routing state | `ernie_ops_gateway_candidate_weight_percent`, `ernie_ops_gateway_mode` |

(1) the first streamed event that carries output (a role-only opening event does not); for a
whole answer, the answer. (2) after 5 client requests in a row failed before their first byte, the
candidate gets no client request for 5 s (a dead candidate would otherwise cost each its timeout).

Prometheus quantiles come from histogram buckets; the controller's gates need exact p99s over a
stage, so the last `WINDOW` outcomes per backend and traffic are also kept as samples and read back
with `Figures.since(t)` (`GET /admin/stats?since=T`).
"""

from __future__ import annotations

import math
import threading
import time
from array import array
from collections import deque
from typing import TYPE_CHECKING, Any

from ernie_ops.extras import optional_imports
from ernie_ops.rollout.routing import CANDIDATE, MODES, STABLE

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

PREFIX = "ernie_ops_gateway_"
# seconds: from the gateway's own sub-millisecond overhead to a long CPU generation
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
WINDOW = 200_000  # outcomes kept per backend and traffic for the gates' exact figures
BACKENDS = (STABLE, CANDIDATE)
TRAFFIC = ("client", "shadow")


class Outcomes:
    """The last WINDOW outcomes (time ended, ok, TTFT, E2E) in flat arrays: no object per request
    for the garbage collector to walk."""

    def __init__(self, size: int = WINDOW):
        self.size = size
        self.at = array("d", bytes(8 * size))
        self.ok = bytearray(size)
        self.ttft = array("d", bytes(8 * size))
        self.e2e = array("d", bytes(8 * size))
        self.count = 0  # ever added

    def add(self, at: float, ok: bool, ttft: float | None, e2e: float) -> None:
        i = self.count % self.size
        self.at[i], self.ok[i], self.e2e[i] = at, ok, e2e
        self.ttft[i] = math.nan if ttft is None else ttft
        self.count += 1

    def since(self, t: float) -> tuple[int, int, list[float], list[float]]:
        """(outcomes, failures, sorted TTFTs of successes, sorted E2Es of successes) ended at or after T."""
        n = min(self.count, self.size)
        rows = [i for i in range(n) if self.at[i] >= t]
        good = [i for i in rows if self.ok[i]]
        ttfts = sorted(self.ttft[i] for i in good if not math.isnan(self.ttft[i]))
        return len(rows), len(rows) - len(good), ttfts, sorted(self.e2e[i] for i in good)


class _Series:
    """The label children of one backend and traffic, bound once (a `labels()` lookup per request
    costs more than the observation)."""

    def __init__(self, m: GatewayMetrics, backend: str, traffic: str):
        self.backend, self.traffic = backend, traffic
        self._requests = m.requests
        self._errors = m.errors
        self.ttft = m.ttft.labels(backend, traffic)
        self.e2e = m.e2e.labels(backend, traffic)
        self.prompt = m.prompt_tokens.labels(backend, traffic)
        self.generated = m.generation_tokens.labels(backend, traffic)
        self.in_flight = m.in_flight.labels(backend, traffic)
        self._by_status: dict[tuple[str, str], Any] = {}
        self._by_error: dict[str, Any] = {}
        self.outcomes = Outcomes()

    def status(self, route: str, status: str) -> None:
        child = self._by_status.get((route, status))
        if child is None:
            child = self._by_status[(route, status)] = self._requests.labels(
                self.backend, self.traffic, route, status
            )
        child.inc()

    def error(self, kind: str) -> None:
        child = self._by_error.get(kind)
        if child is None:
            child = self._by_error[kind] = self._errors.labels(self.backend, self.traffic, kind)
        child.inc()


class GatewayMetrics:
    def __init__(self) -> None:
        with optional_imports("serve", "the gateway's /metrics"):
            from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry: CollectorRegistry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        both = ["backend", "traffic"]
        self.requests = Counter(
            f"{PREFIX}requests_total",
            "Requests sent to a backend, by route and status code (error: no HTTP answer).",
            [*both, "route", "status"],
            registry=reg,
        )
        self.errors = Counter(
            f"{PREFIX}errors_total",
            "Backend failures by kind: connect, timeout, http_5xx, disconnected.",
            [*both, "kind"],
            registry=reg,
        )
        self.ttft = Histogram(
            f"{PREFIX}time_to_first_token_seconds",
            "Arrival at the gateway to the first streamed event carrying output (whole answers: the answer).",
            both,
            buckets=BUCKETS,
            registry=reg,
        )
        self.e2e = Histogram(
            f"{PREFIX}e2e_request_latency_seconds",
            "Arrival at the gateway to the last byte of the backend's answer.",
            both,
            buckets=BUCKETS,
            registry=reg,
        )
        self.prompt_tokens = Counter(
            f"{PREFIX}prompt_tokens_total", "Prompt tokens the backend reported.", both, registry=reg
        )
        self.generation_tokens = Counter(
            f"{PREFIX}generation_tokens_total",
            "Tokens generated (the backend's usage, else streamed text events).",
            both,
            registry=reg,
        )
        self.in_flight = Gauge(
            f"{PREFIX}requests_in_flight", "Requests being answered by the backend.", both, registry=reg
        )
        self.retries = Counter(
            f"{PREFIX}retries_total",
            "Candidate failures before the first byte in split mode, answered by stable instead.",
            registry=reg,
        )
        self.rested = Counter(
            f"{PREFIX}candidate_rested_total",
            "Client requests sent to stable because the candidate rests after failures in a row.",
            registry=reg,
        )
        self.shadow_dropped = Counter(
            f"{PREFIX}shadow_dropped_total",
            "Shadow copies dropped because the shadow queue was full.",
            registry=reg,
        )
        self.shadow_depth = Gauge(
            f"{PREFIX}shadow_queue_depth", "Shadow copies waiting to be sent.", registry=reg
        )
        self.comparisons = Counter(
            f"{PREFIX}shadow_comparisons_total",
            "Shadow answers compared with the stable answer: agree, disagree, error (one side failed).",
            ["result"],
            registry=reg,
        )
        self.disconnects = Counter(
            f"{PREFIX}client_disconnects_total",
            "Clients gone before their answer ended.",
            registry=reg,
        )
        self.weight = Gauge(
            f"{PREFIX}candidate_weight_percent", "The candidate's weight in split mode.", registry=reg
        )
        self.mode = Gauge(f"{PREFIX}mode", "1 for the gateway's current mode.", ["mode"], registry=reg)
        self.series = {(b, t): _Series(self, b, t) for b in BACKENDS for t in TRAFFIC}
        self._comparison_children = {r: self.comparisons.labels(r) for r in ("agree", "disagree", "error")}
        self.compared: deque[tuple[float, str]] = deque(maxlen=WINDOW)
        self._lock = threading.Lock()
        self.retried = 0  # the two counters as plain numbers, for /admin/stats
        self.dropped = 0

    def of(self, backend: str, traffic: str) -> _Series:
        return self.series[(backend, traffic)]

    def compared_as(self, result: str) -> None:
        self._comparison_children[result].inc()
        self.compared.append((time.time(), result))

    def routing(self, mode: str, weight: float) -> None:
        self.weight.set(weight)
        for m in MODES:
            self.mode.labels(m).set(1 if m == mode else 0)

    def render(self, shadow_depth: int) -> bytes:
        from prometheus_client import generate_latest

        with self._lock:
            self.shadow_depth.set(shadow_depth)
            return bytes(generate_latest(self.registry))

    def figures(self, since: float) -> dict[str, Any]:
        """Per backend and traffic since SINCE (time.time()): requests, errors, error rate, TTFT and
        E2E p50 / p99 in seconds; and the shadow comparisons. Exact over the kept window."""
        out: dict[str, Any] = {"since": since, "now": time.time(), "backends": {}}
        for (backend, traffic), series in self.series.items():
            requests, errors, ttfts, e2es = series.outcomes.since(since)
            if not requests:
                continue
            out["backends"][f"{backend}/{traffic}"] = {
                "requests": requests,
                "errors": errors,
                "error_rate": errors / requests,
                "ttft_p50": quantile(ttfts, 0.5),
                "ttft_p99": quantile(ttfts, 0.99),
                "e2e_p50": quantile(e2es, 0.5),
                "e2e_p99": quantile(e2es, 0.99),
                "window_full": series.outcomes.count > WINDOW,
            }
        results = [r for at, r in list(self.compared) if at >= since]
        out["shadow"] = {r: results.count(r) for r in ("agree", "disagree", "error")}
        return out


def quantile(sorted_values: list[float], q: float) -> float | None:
    """The nearest-rank quantile of sorted values (None for none)."""
    if not sorted_values:
        return None
    rank = max(0, min(len(sorted_values) - 1, int(-(-q * len(sorted_values) // 1)) - 1))
    return sorted_values[rank]
