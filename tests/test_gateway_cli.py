"""`ernie-ops gateway run|set|status` as a user runs them: a process that is killed and restarted
keeps the recorded mode and weight."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import httpx
import pytest
from polling import free_port

from ernie_ops.validate.null_server import serve_in_thread

GUARD_S = 60.0


def start(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, str, str]:
    """The process, its URL and what it printed up to its start line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ernie_ops", "gateway", "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:  # ends when the process does: a failed start is no hang
        lines.append(line)
        found = re.search(r"gateway on (http://\S+):", line)
        if found:
            return proc, found.group(1), "".join(lines)
    proc.wait(GUARD_S)
    pytest.fail(f"the gateway did not start: {''.join(lines)}")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> str:
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=GUARD_S)
    return out


def admin(*args: str, key: str | None) -> subprocess.CompletedProcess:
    """`ernie-ops gateway status|set ...` with KEY as the admin key (None: not set)."""
    env = {k: v for k, v in os.environ.items() if k != "ERNIE_OPS_GATEWAY_ADMIN_KEY"}
    if key is not None:
        env["ERNIE_OPS_GATEWAY_ADMIN_KEY"] = key
    command = [sys.executable, "-m", "ernie_ops", "gateway", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=GUARD_S)


def test_set_status_and_a_killed_gateway_restarts_with_the_recorded_weights(tmp_path, cli):
    env = {**os.environ, "ERNIE_OPS_GATEWAY_ADMIN_KEY": "sesame", "PYTHONUNBUFFERED": "1"}
    with serve_in_thread(model="stable-m") as stable, serve_in_thread(model="cand-m") as candidate:
        args = ["--stable", stable.url, "--candidate", candidate.url, "--port", "0"]
        args += ["--state", str(tmp_path / "state.json"), "--log-dir", str(tmp_path / "log")]
        args += ["--review-dir", str(tmp_path / "review")]
        proc, url, _ = start([*args, "--mode", "shadow"], env)
        try:
            r = httpx.post(
                url + "/v1/chat/completions", json={"messages": [], "max_tokens": 2}, timeout=GUARD_S
            )
            assert r.status_code == 200 and r.headers["x-ernie-ops-backend"] == "stable"
            set_ = admin("set", url, "--mode", "split", "--weight", "40", key="sesame")
            assert set_.returncode == 0, set_.stderr
            assert '"weight": 40.0' in set_.stdout
        finally:
            out = stop(proc, signal.SIGKILL)  # no clean shutdown: the state file alone must carry it
        proc, url, head = start([*args, "--mode", "all-stable"], env)
        try:
            status = admin("status", url, key="sesame")
            assert status.returncode == 0, status.stderr
            assert '"mode": "split"' in status.stdout and '"weight": 40.0' in status.stdout
            assert httpx.get(url + "/health", timeout=GUARD_S).json()["weight"] == 40
            wrong = admin("status", url, key="wrong")
            assert wrong.returncode == 2, wrong.stderr
            assert "refused /admin/state: HTTP 401: missing or wrong admin key" in wrong.stderr
        finally:
            out = stop(proc)
        assert proc.returncode == 0, out
        assert "continuing from" in head and "split weight 40" in head
        assert "finishing the requests in flight" in out


def test_set_without_the_key_and_content_without_a_log_are_refused_clearly(cli, tmp_path):
    result = admin("set", "127.0.0.1:9", "--weight", "5", key=None)
    assert result.returncode == 2 and "ERNIE_OPS_GATEWAY_ADMIN_KEY is not set" in result.stderr
    nobody = f"127.0.0.1:{free_port()}"
    unreachable = admin("status", nobody, key="sesame")
    assert unreachable.returncode == 2 and f"the gateway at http://{nobody} cannot be reached" in (
        unreachable.stderr
    )
    assert "Traceback" not in unreachable.stderr
    args = ["--stable", "127.0.0.1:9", "--log-content", "--no-log", "--state", str(tmp_path / "s")]
    refused = cli("gateway", "run", *args, timeout=GUARD_S)
    assert refused.returncode == 2 and "no log to put content in" in refused.stderr


def test_a_judge_suite_retention_and_no_mask_are_announced_and_bad_values_refused(cli, tmp_path):
    suite = tmp_path / "probes.jsonl"
    suite.write_text(
        '{"prompt": "What is 2 + 2?", "expected": 4}\n{"prompt": "Capital of France?", "expected": "Paris"}\n'
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with serve_in_thread(model="stable-m") as stable:
        args = ["--stable", stable.url, "--port", "0", "--state", str(tmp_path / "state.json")]
        args += ["--log-dir", str(tmp_path / "log"), "--review-dir", str(tmp_path / "review")]
        proc, _, out = start([*args, "--judge-suite", str(suite), "--retention", "14d", "--no-mask"], env)
        stop(proc)
    assert f"review queue {tmp_path / 'review'} (personal data NOT masked: --no-mask)" in out
    assert f", judge: 2 prompts of {suite}" in out
    for bad, message in (
        (["--retention", "0d"], "longer than 0"),
        (["--retention", "soon"], "not a duration"),
    ):
        refused = cli("gateway", "run", "--stable", "127.0.0.1:9", *bad, timeout=GUARD_S)
        assert refused.returncode == 2 and message in refused.stderr
    suite.write_text('{"prompt": "x", "judge": "exactly"}\n')
    refused = cli("gateway", "run", "--stable", "127.0.0.1:9", "--judge-suite", str(suite), timeout=GUARD_S)
    assert refused.returncode == 2 and "probes.jsonl:1" in refused.stderr


def test_the_request_log_is_kept_as_long_as_the_retention_config_says(tmp_path, monkeypatch):
    from ernie_ops.cli.gateway import _retention

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ERNIE_OPS_RETENTION", raising=False)
    monkeypatch.delenv("ERNIE_OPS_RETENTION_CONFIG", raising=False)
    assert _retention(None) == 30 * 86400  # no config anywhere: 30 days
    (tmp_path / "retention.yaml").write_text("default: 90d\ngateway_log: 14d\n")
    assert _retention(None) == 14 * 86400  # what `ernie-ops gc` would keep
    assert _retention(3600.0) == 3600.0  # --retention wins
