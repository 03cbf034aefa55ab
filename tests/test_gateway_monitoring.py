"""The shipped monitoring (recipes/monitoring/): every metric the Grafana dashboard queries exists on
the gateway or on the model servers (the embedded server's names, which are FastDeploy's), and the
Prometheus config scrapes them."""

from __future__ import annotations

import json
import re

import yaml

from ernie_ops.rollout.metrics import GatewayMetrics

NAME = re.compile(r"\b(ernie_ops_gateway_\w+|fastdeploy:\w+)")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exposed(text: str) -> set[str]:
    """The sample names a /metrics text can hold, from its TYPE lines (present without samples too)."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names |= {name + s for s in SUFFIXES.get(kind, ("",))} | {name}
    return names


def test_every_metric_the_dashboard_queries_exists(repo):
    from ernie_ops.serve.metrics import Metrics

    dashboard = json.loads((repo / "recipes" / "monitoring" / "grafana-dashboard.json").read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in NAME.findall(target["expr"])
    }
    assert any(n.startswith("ernie_ops_gateway_") for n in queried)
    assert any(n.startswith("fastdeploy:") for n in queried)
    available = exposed(GatewayMetrics().render(0).decode()) | exposed(Metrics().render(0, 0))
    assert sorted(queried - available) == []


def test_the_prometheus_config_scrapes_the_gateway_and_the_servers(repo):
    config = yaml.safe_load((repo / "recipes" / "monitoring" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["ernie-ops-gateway"]["static_configs"][0]["targets"] == ["127.0.0.1:8200"]
    roles = [c["labels"]["role"] for c in jobs["ernie-ops-backends"]["static_configs"]]
    assert roles == ["stable", "candidate"]
