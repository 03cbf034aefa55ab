"""`ernie-ops top`: live per-backend figures from Prometheus /metrics, scraped and differenced.

Each URL is scraped every interval; the figures of a row are the change between two scrapes:
requests/s, error share, TTFT and E2E p50 / p99 (from the histogram buckets that filled in between,
interpolated inside a bucket as Prometheus' `histogram_quantile` does), generated tokens/s, and the
running / waiting gauges as last read. What a URL is, is read from its metric names:

- gateway (one row per backend and traffic): `ernie_ops_gateway_requests_total`, errors
  `..._errors_total`, `..._time_to_first_token_seconds`, `..._e2e_request_latency_seconds`,
  `..._generation_tokens_total`, in flight `..._requests_in_flight`;
- embedded server: `ernie_ops_requests_total` (errors: its status >= 500), and FastDeploy's names
  `fastdeploy:time_to_first_token_seconds`, `fastdeploy:e2e_request_latency_seconds`,
  `fastdeploy:generation_tokens_total`, `fastdeploy:num_requests_running` / `_waiting`;
- FastDeploy: `fastdeploy:request_success_total` and the same `fastdeploy:` names (1);
- vLLM: `vllm:request_success_total`, errors `http_requests_total` 5xx, `vllm:time_to_first_token_seconds`,
  `vllm:e2e_request_latency_seconds`, `vllm:generation_tokens_total`, `vllm:num_requests_running` /
  `_waiting`.

(1) FastDeploy counts requests received and succeeded, not failed ones: its error share is unknown.
A URL that does not answer, or answers something that is not Prometheus text, is a row saying so.
"""

from __future__ import annotations

import math
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from ernie_ops.extras import optional_imports

Labels = dict[str, str]
Samples = dict[str, list[tuple[Labels, float]]]


@dataclass
class Scrape:
    url: str
    at: float  # time.monotonic() when the answer was read
    samples: Samples = field(default_factory=dict)
    families: set[str] = field(default_factory=set)  # the metric names its TYPE lines declare
    error: str | None = None


def metrics_url(url: str) -> str:
    """The /metrics URL of a server given as host:port, a base URL, a .../v1 URL or the metrics URL."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    if url.endswith("/metrics"):
        return url
    return url.removesuffix("/v1") + "/metrics"


def parse(text: str) -> tuple[Samples, set[str]]:
    with optional_imports("serve", "ernie-ops top (reading Prometheus metrics)"):
        from prometheus_client.parser import text_string_to_metric_families

    samples: Samples = {}
    families = set()
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        for s in family.samples:
            samples.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return samples, families


def scrape(url: str, timeout: float = 5.0) -> Scrape:
    """One scrape of URL's metrics; a failure is recorded in `error`, never raised."""
    target = metrics_url(url)
    try:
        with urllib.request.urlopen(target, timeout=timeout) as r:
            text = r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        return Scrape(url, time.monotonic(), error=f"HTTP {err.code} from {target}")
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        reason = getattr(reason, "strerror", None) or reason
        return Scrape(url, time.monotonic(), error=f"down: {reason}")
    at = time.monotonic()
    try:
        samples, families = parse(text)
    except ValueError as err:
        return Scrape(url, at, error=f"not Prometheus text at {target}: {err}")
    return Scrape(url, at, samples, families)


def scrape_all(urls: list[str], timeout: float = 5.0) -> list[Scrape]:
    with ThreadPoolExecutor(max_workers=min(16, len(urls) or 1)) as pool:
        return list(pool.map(lambda u: scrape(u, timeout), urls))


# -- reading figures ---------------------------------------------------------------------------

Match = Callable[[Labels], bool]


def _all(labels: Labels) -> bool:
    return True


def total(s: Scrape, name: str, match: Match = _all) -> float | None:
    """The sum of NAME's samples whose labels MATCH (None when the scrape has no such sample)."""
    rows = [v for labels, v in s.samples.get(name, ()) if match(labels)]
    return sum(rows) if rows else None


def delta(prev: Scrape | None, cur: Scrape, name: str, match: Match = _all) -> float | None:
    """How much a counter grew between two scrapes (a restart, which resets it, counts from 0)."""
    now = total(cur, name, match)
    if prev is None or now is None:
        return None
    before = total(prev, name, match) or 0.0
    return now - before if now >= before else now


def quantile_between(
    prev: Scrape | None, cur: Scrape, histogram: str, q: float, match: Match = _all
) -> float | None:
    """The Q quantile of the observations made between two scrapes, from the bucket deltas."""
    if prev is None:
        return None
    buckets: dict[float, float] = {}
    for scrape, sign in ((cur, 1.0), (prev, -1.0)):
        for labels, value in scrape.samples.get(histogram + "_bucket", ()):
            if match(labels) and "le" in labels:
                le = float(labels["le"])
                buckets[le] = buckets.get(le, 0.0) + sign * value
    return bucket_quantile(sorted(buckets.items()), q)


def bucket_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Prometheus' histogram_quantile over cumulative (upper bound, count) buckets: linear inside the
    bucket the rank falls in; in the +Inf bucket, the highest finite bound."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for le, count in buckets:
        if count >= rank and count > below:
            if math.isinf(le):
                return lower
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower


# -- what a URL serves -------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    name: str
    marker: str  # a metric (family) name only this kind has
    requests: str
    ttft: str
    e2e: str
    tokens: str
    errors: str | None = None
    is_error: Match = _all
    requests_match: Match = _all
    running: str | None = None
    waiting: str | None = None
    split: tuple[str, ...] = ()  # labels whose values make separate rows


def _server_error(labels: Labels) -> bool:
    return labels.get("status", "").startswith("5")


GATEWAY = "ernie_ops_gateway_"
KINDS = (
    Kind(
        "gateway",
        f"{GATEWAY}requests",
        f"{GATEWAY}requests_total",
        f"{GATEWAY}time_to_first_token_seconds",
        f"{GATEWAY}e2e_request_latency_seconds",
        f"{GATEWAY}generation_tokens_total",
        errors=f"{GATEWAY}errors_total",
        running=f"{GATEWAY}requests_in_flight",
        split=("backend", "traffic"),
    ),
    Kind(
        "embedded",
        "ernie_ops_requests",
        "ernie_ops_requests_total",
        "fastdeploy:time_to_first_token_seconds",
        "fastdeploy:e2e_request_latency_seconds",
        "fastdeploy:generation_tokens_total",
        errors="ernie_ops_requests_total",
        is_error=_server_error,
        running="fastdeploy:num_requests_running",
        waiting="fastdeploy:num_requests_waiting",
    ),
    Kind(
        "fastdeploy",
        "fastdeploy:request_success",
        "fastdeploy:request_success_total",
        "fastdeploy:time_to_first_token_seconds",
        "fastdeploy:e2e_request_latency_seconds",
        "fastdeploy:generation_tokens_total",
        running="fastdeploy:num_requests_running",
        waiting="fastdeploy:num_requests_waiting",
    ),
    Kind(
        "vllm",
        "vllm:request_success",
        "vllm:request_success_total",
        "vllm:time_to_first_token_seconds",
        "vllm:e2e_request_latency_seconds",
        "vllm:generation_tokens_total",
        errors="http_requests_total",
        is_error=_server_error,
        running="vllm:num_requests_running",
        waiting="vllm:num_requests_waiting",
    ),
)


def kind_of(s: Scrape) -> Kind | None:
    return next((k for k in KINDS if k.marker in s.families), None)


@dataclass
class Row:
    url: str
    backend: str  # "stable/client" on a gateway, else the kind
    status: str = "up"  # up, or why not
    requests_s: float | None = None
    error_share: float | None = None
    ttft_p50: float | None = None
    ttft_p99: float | None = None
    e2e_p50: float | None = None
    e2e_p99: float | None = None
    tokens_s: float | None = None
    running: float | None = None
    waiting: float | None = None
    requests: float | None = None  # since the server started

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def rows(prev: Scrape | None, cur: Scrape) -> list[Row]:
    """The rows of one URL from its last two scrapes (PREV None: the first; no rates yet)."""
    if cur.error is not None:
        return [Row(cur.url, "-", cur.error)]
    kind = kind_of(cur)
    if kind is None:
        return [Row(cur.url, "-", "no gateway, FastDeploy, vLLM or embedded-server metrics here")]
    groups: list[Labels] = [{}]
    if kind.split:
        # the backends that have had requests (every one has an in-flight gauge from the start)
        seen = {
            tuple(labels.get(k, "") for k in kind.split) for labels, _ in cur.samples.get(kind.requests, ())
        }
        groups = [dict(zip(kind.split, values, strict=True)) for values in sorted(seen)] or [{}]
    prev = prev if prev is not None and prev.error is None else None
    seconds = cur.at - prev.at if prev is not None else 0.0
    out = []
    for group in groups:

        def match(labels: Labels, group: Labels = group) -> bool:
            return all(labels.get(k) == v for k, v in group.items())

        name = "/".join(group.values()) or kind.name
        row = Row(cur.url, name)
        row.requests = total(cur, kind.requests, match)
        requests = delta(prev, cur, kind.requests, match)
        if requests is not None and seconds > 0:
            row.requests_s = requests / seconds
            if kind.errors is not None and requests > 0:
                errors = delta(prev, cur, kind.errors, _both(match, kind.is_error))
                row.error_share = (errors or 0.0) / requests
            tokens = delta(prev, cur, kind.tokens, match)
            row.tokens_s = tokens / seconds if tokens is not None else None
        row.ttft_p50 = quantile_between(prev, cur, kind.ttft, 0.5, match)
        row.ttft_p99 = quantile_between(prev, cur, kind.ttft, 0.99, match)
        row.e2e_p50 = quantile_between(prev, cur, kind.e2e, 0.5, match)
        row.e2e_p99 = quantile_between(prev, cur, kind.e2e, 0.99, match)
        row.running = total(cur, kind.running, match) if kind.running else None
        row.waiting = total(cur, kind.waiting, match) if kind.waiting else None
        out.append(row)
    return out


def _both(a: Match, b: Match) -> Match:
    return lambda labels: a(labels) and b(labels)


class Top:
    """Scrapes URLS and keeps the previous scrape of each, for the differences."""

    def __init__(self, urls: list[str], timeout: float = 5.0):
        self.urls = urls
        self.timeout = timeout
        self._last: dict[str, Scrape] = {}

    def poll(self) -> list[Row]:
        out = []
        for cur in scrape_all(self.urls, self.timeout):
            out += rows(self._last.get(cur.url), cur)
            self._last[cur.url] = cur
        return out


def table(rows_: list[Row], title: str = "") -> Any:
    """A rich Table of the rows."""
    from rich.table import Table

    down = [r for r in rows_ if r.status != "up"]
    caption = "\n".join(f"{_host(r.url)}: {r.status}" for r in down) or None
    t = Table(title=title or None, title_justify="left", caption=caption, caption_justify="left")
    for header in ("URL", "backend", "req/s", "errors", "TTFT p50", "p99", "E2E p50", "p99"):
        t.add_column(header, justify="left" if header in ("URL", "backend") else "right")
    for header in ("tok/s", "running", "waiting", "requests"):
        t.add_column(header, justify="right")
    for r in rows_:
        if r.status != "up":
            what = "down" if r.status.startswith("down") else "no metrics"
            t.add_row(_host(r.url), f"[red]{what}[/red]", *["-"] * 10)
            continue
        t.add_row(
            _host(r.url),
            r.backend,
            _num(r.requests_s, "{:.1f}"),
            _num(r.error_share, "{:.1%}", red=lambda v: v > 0),
            _ms(r.ttft_p50),
            _ms(r.ttft_p99),
            _ms(r.e2e_p50),
            _ms(r.e2e_p99),
            _num(r.tokens_s, "{:.1f}"),
            _num(r.running, "{:g}"),
            _num(r.waiting, "{:g}"),
            _num(r.requests, "{:g}"),
        )
    return t


def _host(url: str) -> str:
    return url.split("://", 1)[-1].removesuffix("/metrics")


def _num(value: float | None, fmt: str, red: Callable[[float], bool] | None = None) -> str:
    if value is None:
        return "-"
    text = fmt.format(value)
    return f"[red]{text}[/red]" if red is not None and red(value) else text


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"
