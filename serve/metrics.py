"""The embedded server's Prometheus metrics (/metrics), on prometheus-client.

Names are FastDeploy's wherever FastDeploy measures the same quantity, so one dashboard reads both
backends (FastDeploy's `fastdeploy/metrics/metrics.py`, `MetricsManager` and its `SERVER_METRICS`):

| quantity | name | FastDeploy's too |
|---|---|---|
| prompt tokens of admitted requests | `fastdeploy:prompt_tokens_total` | yes |
| tokens generated | `fastdeploy:generation_tokens_total` | yes |
| requests answered 200 | `fastdeploy:request_success_total` | yes |
| requests in the running batch | `fastdeploy:num_requests_running` | yes |
| requests waiting for a batch slot | `fastdeploy:num_requests_waiting` | yes |
| arrival to first token | `fastdeploy:time_to_first_token_seconds` | yes |
| arrival to last token | `fastdeploy:e2e_request_latency_seconds` | yes |
| API requests by endpoint and status | `ernie_ops_requests_total` | no (1) |

(1) FastDeploy's `http_requests_total` middleware leaves out the completion endpoints.

Histogram buckets are ours (a CPU's first token is often past FastDeploy's 1 s top bucket);
`histogram_quantile` reads either layout. Each server has its own `CollectorRegistry`, never the
process-global one, so several apps in one process (the tests) do not collide.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from ernie_ops.extras import optional_imports

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# seconds; from a fast GPU-class first token to a long CPU generation
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
FASTDEPLOY = "fastdeploy:"  # FastDeploy's prefix, for the quantities it measures too
OWN = "ernie_ops_"  # ours, for what FastDeploy lacks


class Metrics:
    """What the server updates from the event loop and reads for /metrics (lock: the running and
    waiting gauges are set and written out as one step)."""

    def __init__(self) -> None:
        with optional_imports("serve", "the embedded server's /metrics"):
            from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self._lock = threading.Lock()
        self.registry: CollectorRegistry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.requests: Counter = Counter(
            f"{OWN}requests_total",
            "HTTP API requests by endpoint and status code.",
            ["endpoint", "status"],
            registry=reg,
        )
        self.success: Counter = Counter(
            f"{FASTDEPLOY}request_success_total", "Requests answered successfully (status 200).", registry=reg
        )
        self.prompt_tokens: Counter = Counter(
            f"{FASTDEPLOY}prompt_tokens_total", "Prompt tokens of admitted requests.", registry=reg
        )
        self.generation_tokens: Counter = Counter(
            f"{FASTDEPLOY}generation_tokens_total", "Tokens generated.", registry=reg
        )
        self.running: Gauge = Gauge(
            f"{FASTDEPLOY}num_requests_running", "Requests in the engine's running batch.", registry=reg
        )
        self.waiting: Gauge = Gauge(
            f"{FASTDEPLOY}num_requests_waiting", "Requests queued for a batch slot.", registry=reg
        )
        self.ttft: Histogram = Histogram(
            f"{FASTDEPLOY}time_to_first_token_seconds",
            "Time from arrival to the first token.",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.e2e: Histogram = Histogram(
            f"{FASTDEPLOY}e2e_request_latency_seconds",
            "Time from arrival to the last token.",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )

    def request_done(self, endpoint: str, status: int) -> None:
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()
        if status == 200:
            self.success.inc()

    def tokens(self, prompt: int, completion: int) -> None:
        if prompt:
            self.prompt_tokens.inc(prompt)
        if completion:
            self.generation_tokens.inc(completion)

    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def finished(self, seconds: float) -> None:
        self.e2e.observe(seconds)

    def render(self, running: int, waiting: int) -> str:
        """The Prometheus text exposition, the gauges set to the engine's load at this moment."""
        from prometheus_client import generate_latest

        with self._lock:
            self.running.set(running)
            self.waiting.set(waiting)
            return generate_latest(self.registry).decode()

    @property
    def content_type(self) -> str:
        from prometheus_client import CONTENT_TYPE_LATEST

        return str(CONTENT_TYPE_LATEST)
