"""The shipped monitoring (recipes/monitoring/): every metric the Grafana dashboard queries exists on
a running gateway (with its review queue) or on the running embedded server (whose names are
FastDeploy's), or is one of vLLM's own; and the Prometheus config scrapes the gateway and the servers."""

from __future__ import annotations

import json
import re

import httpx
import yaml
from standin_openai import serving

from ernie_ops.rollout.gateway import GatewayConfig, run_in_thread, url_of
from ernie_ops.validate.client import Endpoint

NAME = re.compile(r"\b(ernie_ops_\w+|fastdeploy:\w+|vllm:\w+)")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
# vLLM's names for what the dashboard reads (vllm/v1/metrics/loggers.py, PrometheusStatLogger); no
# vLLM runs here, so they are checked against this list, which `ernie_ops.rollout.top` reads too
VLLM = {
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:generation_tokens_total",
    "vllm:request_success_total",
    "vllm:time_to_first_token_seconds_bucket",
    "vllm:e2e_request_latency_seconds_bucket",
}


def exposed(text: str) -> set[str]:
    """The sample names a /metrics text can hold, from its TYPE lines (present without samples too)."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names |= {name + s for s in SUFFIXES.get(kind, ("",))} | {name}
    return names


def test_every_metric_the_dashboard_queries_exists_on_the_gateway_and_the_embedded_server(
    repo, tiny_dense, tmp_path
):
    from ernie_ops.serve.engine import Engine
    from ernie_ops.serve.openai_server import create_app

    dashboard = json.loads((repo / "recipes" / "monitoring" / "grafana-dashboard.json").read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in NAME.findall(target["expr"])
    }
    for prefix in (
        "ernie_ops_gateway_",
        "ernie_ops_gateway_review",
        "fastdeploy:",
        "vllm:",
        "ernie_ops_requests",
    ):
        assert any(n.startswith(prefix) for n in queried), prefix
    engine = Engine.load(tiny_dense, max_batch_size=1)
    try:
        with serving(create_app(engine, "tiny")) as (server, _):
            config = GatewayConfig(
                stable=Endpoint.parse(server, model="tiny"), review_dir=tmp_path / "review"
            )
            with run_in_thread(config) as gateway:
                available = exposed(httpx.get(url_of(gateway) + "/metrics", timeout=30).text)
            embedded = exposed(httpx.get(server + "/metrics", timeout=30).text)
    finally:
        engine.stop()
    assert sorted(queried - available - embedded - VLLM) == []
    assert {n for n in queried if n.startswith("fastdeploy:")} <= embedded  # the embedded backend, live


def test_top_reads_the_vllm_names_the_dashboard_does():
    from ernie_ops.rollout.top import KINDS

    vllm = next(k for k in KINDS if k.name == "vllm")
    read = {
        vllm.requests,
        vllm.tokens,
        vllm.running,
        vllm.waiting,
        vllm.ttft + "_bucket",
        vllm.e2e + "_bucket",
    }
    assert read == VLLM


def test_the_prometheus_config_scrapes_the_gateway_and_the_servers(repo):
    config = yaml.safe_load((repo / "recipes" / "monitoring" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["ernie-ops-gateway"]["static_configs"][0]["targets"] == ["127.0.0.1:8200"]
    roles = [c["labels"]["role"] for c in jobs["ernie-ops-backends"]["static_configs"]]
    assert roles == ["stable", "candidate"]
