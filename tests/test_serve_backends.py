"""serve/backends/: the registry, the backend choice, one library entry point (`ernie_ops.serve.start`)
for the CLI and the pipeline, and a third backend added as one module with no CLI change."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from polling import free_port

import ernie_ops.serve
from ernie_ops.cli.main import main
from ernie_ops.errors import UserError
from ernie_ops.serve import backends

REPO = Path(__file__).resolve().parent.parent


def test_the_registry_finds_every_backend_module_preferred_first():
    assert backends.names() == ("fastdeploy", "vllm", "paddle", "llamacpp")
    fastdeploy, _, paddle, _ = backends.all_backends()
    assert (fastdeploy.port_block, paddle.port_block) == (4, 1)
    assert (fastdeploy.default_host, paddle.default_host) == ("0.0.0.0", "127.0.0.1")
    assert fastdeploy.health_path == paddle.health_path == "/health"
    with pytest.raises(UserError, match="did you mean 'paddle'"):
        backends.get("padle")


def test_without_a_gpu_the_choice_falls_back_to_the_embedded_backend_and_says_why(monkeypatch):
    from ernie_ops.train import launch

    monkeypatch.setattr(launch, "detect_gpus", lambda: [])
    backend, reason = backends.choose(None)
    assert backend.name == "paddle"
    assert reason == "no GPU here: serving with the embedded CPU backend (engine: paddle)"
    assert backends.choose("fastdeploy") == (backends.get("fastdeploy"), None)  # asked for: no reason


def test_library_code_never_imports_the_cli():
    pattern = re.compile(
        r"^\s*(from ernie_ops\.cli\b|import ernie_ops\.cli\b|from ernie_ops import cli\b)", re.M
    )
    pending = {REPO / "ernie_ops" / "__main__.py"}  # `python -m ernie_ops` is the CLI
    offenders = [
        str(path.relative_to(REPO))
        for top in ("ernie_ops", "serve", "train")
        for path in (REPO / top).rglob("*.py")
        if "cli" not in path.relative_to(REPO).parts and path not in pending
        if pattern.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []
    code = (
        "import sys, ernie_ops.serve, ernie_ops.pipeline.stages, ernie_ops.pipeline.runner\n"
        "from ernie_ops.serve.backends import all_backends; all_backends()\n"
        "print(sorted(m for m in sys.modules if m.startswith('ernie_ops.cli')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_cli_serves_through_the_library_entry_point(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(ernie_ops.serve, "start", lambda profile, **k: calls.append((profile, k)) or 0)
    assert main(["serve", str(tmp_path), "--backend", "paddle", "--port", "8195", "--detach"]) == 0
    ((profile, kwargs),) = calls
    assert (profile.backend, profile.host, profile.port, kwargs) == (
        "paddle",
        "127.0.0.1",
        8195,
        {"detach": True},
    )


ECHO = '''
"""A test backend: a tiny HTTP server that is ready on /ready (not /health)."""
from pathlib import Path

from ernie_ops.serve.backends.base import Backend, Command
from ernie_ops.serve.preflight import Target

SERVER = """
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/ready" else 404)
        self.end_headers()
    def log_message(self, *a):
        pass
HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


class Echo(Backend):
    name = "echo"
    title = "the echo server"
    described = "the echo backend"
    serves = "nothing: a test double"
    health_path = "/ready"

    def resolve(self, profile):
        return Target(Path(profile.model), None, False, False)

    def preflight(self, profile, target):
        return ["echo: nothing to check"]

    def command(self, profile, target=None, python=None):
        return Command([python or "python", "-c", SERVER, str(profile.port)])


BACKEND = Echo()
'''


@pytest.fixture
def echo_backend(tmp_path, monkeypatch):
    """A third backend as exactly one new module in the backends package (here: on its path)."""
    extra = tmp_path / "extra_backends"
    extra.mkdir()
    (extra / "echo.py").write_text(ECHO, encoding="utf-8")
    monkeypatch.setattr(backends, "__path__", [*backends.__path__, str(extra)])
    backends.all_backends.cache_clear()
    yield
    backends.all_backends.cache_clear()
    sys.modules.pop("ernie_ops.serve.backends.echo", None)


def test_a_third_backend_is_one_module_the_cli_serves_status_and_stops_unchanged(
    echo_backend, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    assert backends.names() == ("fastdeploy", "vllm", "paddle", "llamacpp", "echo")
    port = free_port()
    assert main(["serve", str(tmp_path), "--backend", "echo", "--port", str(port), "--print-command"]) == 0
    assert capsys.readouterr().out.strip().endswith(f" {port}")
    profile = tmp_path / "echo.yaml"  # a serve profile names it too
    profile.write_text(f"backend: echo\nmodel: {tmp_path}\nport: {port}\n", encoding="utf-8")
    assert main(["serve", str(profile), "--print-command"]) == 0
    assert capsys.readouterr().out.strip().endswith(f" {port}")
    assert main(["serve", str(tmp_path), "--backend", "echo", "--port", str(port), "--detach"]) == 0
    out = capsys.readouterr().out
    assert "echo: nothing to check" in out and "/ready" in out and f"ready: http://127.0.0.1:{port}" in out
    assert main(["serve", "status", "--port", str(port), "--json"]) == 0
    (status,) = json.loads(capsys.readouterr().out)
    # ready by its own health path (its /health answers 404: probed there, it would be "unhealthy")
    assert (status["backend"], status["health_path"], status["state"]) == ("echo", "/ready", "ready")
    assert main(["serve", "stop", "--port", str(port)]) == 0
    assert f"port {port}: stopped the server" in capsys.readouterr().out
    assert ernie_ops.serve.servers(port) == []
