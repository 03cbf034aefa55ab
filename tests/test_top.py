"""`ernie-ops top`: the quantile arithmetic on bucket deltas, and snapshots of a real gateway, the
embedded server on the tiny model, and a URL nobody answers."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import httpx
import pytest
from polling import free_port
from standin_openai import serving

from ernie_ops.cli.main import main
from ernie_ops.rollout.gateway import GatewayConfig, run_in_thread, url_of
from ernie_ops.rollout.top import Scrape, Top, bucket_quantile, metrics_url, quantile_between, rows
from ernie_ops.validate.client import Endpoint
from ernie_ops.validate.null_server import serve_in_thread

GUARD_S = 60.0
INF = float("inf")


def test_bucket_quantile_interpolates_as_prometheus_does():
    buckets = [(0.1, 0.0), (0.5, 10.0), (1.0, 20.0), (INF, 20.0)]
    assert bucket_quantile(buckets, 0.5) == pytest.approx(0.5)
    assert bucket_quantile(buckets, 0.75) == pytest.approx(0.75)
    assert bucket_quantile(buckets, 0.25) == pytest.approx(0.3)
    assert bucket_quantile([(1.0, 0.0), (INF, 5.0)], 0.5) == 1.0  # only +Inf: the highest finite bound
    assert bucket_quantile([(1.0, 0.0), (INF, 0.0)], 0.5) is None  # nothing observed


def scrape(at: float, counts: dict[float, float], requests: float) -> Scrape:
    buckets = [({"le": str(le)}, c) for le, c in counts.items()]
    samples = {
        "vllm:e2e_request_latency_seconds_bucket": buckets,
        "vllm:request_success_total": [({}, requests)],
    }
    return Scrape("http://v", at, samples, {"vllm:request_success"})


def test_figures_are_the_change_between_two_scrapes_and_a_restart_counts_from_zero():
    before = scrape(0.0, {0.5: 100.0, 1.0: 100.0, INF: 100.0}, 100.0)
    after = scrape(2.0, {0.5: 100.0, 1.0: 110.0, INF: 110.0}, 110.0)
    # the 100 old fast requests are not in the window: all 10 new ones took 0.5-1 s
    assert quantile_between(before, after, "vllm:e2e_request_latency_seconds", 0.5) == pytest.approx(0.75)
    (row,) = rows(before, after)
    assert row.backend == "vllm" and row.requests_s == pytest.approx(5.0) and row.requests == 110
    restarted = scrape(4.0, {0.5: 4.0, 1.0: 4.0, INF: 4.0}, 4.0)
    assert rows(after, restarted)[0].requests_s == pytest.approx(2.0)


def test_urls_are_read_as_their_metrics_endpoint():
    assert metrics_url("127.0.0.1:8200") == "http://127.0.0.1:8200/metrics"
    assert metrics_url("http://h:8180/v1/") == "http://h:8180/metrics"
    assert metrics_url("https://h/metrics") == "https://h/metrics"


def send(url: str, n: int, model: str, stream: bool = True) -> None:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "stream": stream,
    }
    for _ in range(n):
        assert httpx.post(url + "/v1/chat/completions", json=body, timeout=GUARD_S).status_code == 200


@pytest.fixture
def gateway(tmp_path) -> Iterator[str]:
    with serve_in_thread(model="stable-m") as stable:
        config = GatewayConfig(stable=Endpoint.parse(stable.url), state_path=tmp_path / "state.json")
        with run_in_thread(config) as g:
            yield url_of(g)


def test_a_gateway_row_per_backend_with_rates_errors_and_latencies(gateway):
    top = Top([gateway])
    send(gateway, 1, "stable-m")
    first = top.poll()
    assert [r.backend for r in first] == ["stable/client"] and first[0].requests_s is None  # no window yet
    send(gateway, 6, "stable-m")
    (row,) = top.poll()
    assert row.status == "up" and row.requests == 7 and row.requests_s > 0 and row.error_share == 0.0
    assert row.ttft_p50 is not None and row.e2e_p99 is not None and row.ttft_p50 <= row.e2e_p99
    assert row.tokens_s > 0 and row.running == 0


def test_once_snapshot_of_a_gateway_and_a_dead_url(gateway, capsys):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            send(gateway, 1, "stable-m")

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    try:
        code = main(["top", gateway, dead, "--once", "--interval", "0.5", "--json"])
    finally:
        stop.set()
        sender.join(GUARD_S)
    snapshot = json.loads(capsys.readouterr().out)
    by_url = {(r["url"], r["backend"]): r for r in snapshot["rows"]}
    assert code == 1  # one URL did not answer
    assert by_url[(dead, "-")]["status"].startswith("down")
    assert by_url[(gateway, "stable/client")]["requests_s"] > 0
    assert main(["top", gateway, "--once", "--interval", "0.2"]) == 0
    assert "stable/client" in capsys.readouterr().out
    assert main(["top", gateway, "--json"]) == 2  # --json only with --once


def test_the_embedded_server_row(tiny_dense):
    from ernie_ops.serve.engine import Engine
    from ernie_ops.serve.openai_server import create_app

    engine = Engine.load(tiny_dense, max_batch_size=2)
    try:
        with serving(create_app(engine, "tiny")) as (url, _):
            top = Top([url])
            top.poll()
            send(url, 2, "tiny")
            send(url, 1, "tiny", stream=False)
            (row,) = top.poll()
    finally:
        engine.stop()
    assert row.backend == "embedded" and row.status == "up"
    assert row.requests == 3 and row.requests_s > 0 and row.error_share == 0.0
    assert row.ttft_p50 is not None and row.e2e_p50 is not None and row.tokens_s > 0
    assert row.running == 0 and row.waiting == 0
