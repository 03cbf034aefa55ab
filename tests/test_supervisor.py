"""The server supervisor against a fake FastDeploy that behaves like the real one at the process level:
port closed while loading, workers in its process group, FastDeploy's log lines and failures."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from polling import free_port, wait_until

from ernie_ops.serve.supervisor import diagnose, redact_command, run_server, server_status, stop_server

FAKE = Path(__file__).resolve().parent / "fake_fastdeploy.py"
SECRET = "sk-test-5ecret-value-42"
WORKER_PID = re.compile(r"Started worker process \d+ \(pid (\d+)\)")


def fake(port: int, *flags: str) -> list[str]:
    return [sys.executable, str(FAKE), "--port", str(port), "--model", "/models/ernie", *flags]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def worker_pids(log_dir: Path) -> list[int]:
    text = (log_dir / "server.log").read_text()
    return [int(pid) for pid in WORKER_PID.findall(text)]


def run(
    tmp_path: Path,
    command: list[str],
    timeout: float = 20.0,
    detach: bool = False,
    env=None,
    state_file: Path | None = None,
) -> int:
    """`run_server` in this process on the fake server COMMAND (its --port), logs in TMP_PATH."""
    return run_server(
        command,
        env=env or dict(os.environ),
        log_dir=tmp_path / "logs",
        host="127.0.0.1",
        port=int(command[command.index("--port") + 1]),
        startup_timeout=timeout,
        detach=detach,
        state_file=state_file or tmp_path / "server.json",
    )


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read()


# --- foreground, in a subprocess: signals -------------------------------------------------------

DRIVER = """
import json, os, sys
from pathlib import Path
from ernie_ops.serve.supervisor import run_server
a = json.loads(sys.argv[1])
sys.exit(run_server(a["command"], dict(os.environ), Path(a["log_dir"]), "127.0.0.1", a["port"],
                    a["timeout"], a["detach"], Path(a["state_file"])))
"""


def start_driver(
    tmp_path: Path,
    port: int,
    *flags: str,
    timeout: float = 20.0,
    detach: bool = False,
    log_dir: Path | None = None,
    state_file: Path | None = None,
) -> subprocess.Popen:
    """`run_server` on the fake server in a process of its own, so tests can signal or kill it."""
    spec = {
        "command": fake(port, *flags),
        "log_dir": str(log_dir or tmp_path / "logs"),
        "port": port,
        "timeout": timeout,
        "detach": detach,
        "state_file": str(state_file or tmp_path / "server.json"),
    }
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, json.dumps(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def read_until(process: subprocess.Popen, marker: str, timeout: float = 15.0) -> str:
    """Output up to the line containing marker (a reader thread would be overkill: lines arrive)."""
    import selectors

    seen = ""
    selector = selectors.DefaultSelector()
    assert process.stdout is not None
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while marker not in seen:
        assert time.monotonic() < deadline, f"no {marker!r} within {timeout} s; output:\n{seen}"
        if selector.select(timeout=0.2):
            line = process.stdout.readline()
            assert line, f"driver exited before {marker!r}; output:\n{seen}"
            seen += line
    return seen


@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["ctrl-c", "sigterm", "sighup"]
)
def test_foreground_ready_then_signal_stops_the_whole_tree(tmp_path, sig):
    port = free_port()
    driver = start_driver(tmp_path, port, "--load-seconds", "0.5", "--workers", "2")
    try:
        out = read_until(driver, "ready:")
        assert f"http://127.0.0.1:{port}" in out
        assert get(f"http://127.0.0.1:{port}/health")[0] == 200
        status, body = get(f"http://127.0.0.1:{port}/v1/models")
        assert status == 200 and json.loads(body)["data"][0]["id"] == "/models/ernie"
        workers = worker_pids(tmp_path / "logs")
        assert len(workers) == 2 and all(alive(p) for p in workers)
        driver.send_signal(sig)
        rest, _ = driver.communicate(timeout=60)  # generous: a loaded CI machine is slow to reap
    finally:
        driver.kill()
    assert driver.returncode == (130 if sig == signal.SIGINT else 128 + sig), out + rest
    assert "interrupted" in rest and "stopped" in rest
    assert wait_until(lambda: not any(alive(p) for p in workers), 5), "a worker outlived the stop"
    with pytest.raises(OSError):
        get(f"http://127.0.0.1:{port}/health")
    # FastDeploy's own logs went to the log directory, not ./log
    assert (tmp_path / "logs" / "workerlog.0").is_file()


# --- start-up -----------------------------------------------------------------------------------


def test_slow_start_within_the_timeout_waits_and_shows_progress(tmp_path, capsys):
    port = free_port()
    started = time.monotonic()
    assert run(tmp_path, fake(port, "--load-seconds", "2.5"), timeout=15, detach=True) == 0
    took = time.monotonic() - started
    try:
        out = capsys.readouterr().out
        assert took >= 2.5, "ready before the fake opened its port"
        assert "loading" in out and "ready:" in out
        assert get(f"http://127.0.0.1:{port}/health")[0] == 200
    finally:
        assert stop_server(tmp_path / "server.json", timeout=5)


def test_startup_timeout_stops_the_server_and_reports(tmp_path, capsys):
    port = free_port()
    started = time.monotonic()
    code = run(tmp_path, fake(port, "--load-seconds", "0.2", "--never-ready"), timeout=2)
    took = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 1
    assert 2 <= took < 8
    assert "not ready after 2 s" in err and "workerlog.0" in err and "Loading Weights: 100%" in err
    assert worker_pids(tmp_path / "logs") and not any(alive(p) for p in worker_pids(tmp_path / "logs"))
    assert not (tmp_path / "server.json").exists()


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        ("--oom", "--gpu-memory-utilization"),
        ("--port-in-use-error", "--engine-worker-queue-port"),
        ("--crash-during-load", "paddlepaddle-gpu / fastdeploy-gpu"),
    ],
)
def test_crash_during_load_is_reported_at_once_with_the_cause(tmp_path, capsys, flag, expected):
    port = free_port()
    started = time.monotonic()
    code = run(tmp_path, fake(port, "--load-seconds", "0.5", flag), timeout=60)
    took = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 1
    assert took < 10, f"waited {took:.0f} s: the death was not noticed"
    assert "before it was ready" in err and "exited with status 1" in err
    assert "likely cause:" in err and expected in err
    assert "server.log" in err
    assert not any(alive(p) for p in worker_pids(tmp_path / "logs"))


def test_crash_after_ready_is_reported(tmp_path, capsys):
    port = free_port()
    code = run(tmp_path, fake(port, "--load-seconds", "0.3", "--crash-after-ready", "1"))
    captured = capsys.readouterr()
    assert code == 1
    assert "ready:" in captured.out
    assert "exited with status 1" in captured.err and "before it was ready" not in captured.err
    assert "illegal memory access" in captured.err  # the last error, when no known failure matches
    assert not any(alive(p) for p in worker_pids(tmp_path / "logs"))


def test_a_port_already_taken_is_refused_before_starting(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = run(tmp_path, fake(port))
    assert code == 1
    assert "already in use" in capsys.readouterr().err
    assert not (tmp_path / "logs" / "server.log").exists(), "nothing may start on someone else's port"


# --- detach, status, stop -----------------------------------------------------------------------


def test_detach_status_and_stop(tmp_path):
    port = free_port()
    state_file = tmp_path / "server.json"
    assert run(tmp_path, fake(port, "--load-seconds", "0.3"), detach=True) == 0
    state = json.loads(state_file.read_text())
    assert {"pid", "pgid", "host", "port", "log_dir", "command", "started_at"} <= set(state)
    status = server_status(state_file)
    assert status["running"] is True and status["healthy"] is True
    assert status["pid"] == state["pid"] and status["url"] == f"http://127.0.0.1:{port}"
    workers = worker_pids(tmp_path / "logs")
    assert workers and all(alive(p) for p in workers)

    assert stop_server(state_file, timeout=5) is True
    assert not state_file.exists()
    assert not alive(state["pid"]) and not any(alive(p) for p in workers)
    assert server_status(state_file)["running"] is False
    assert stop_server(state_file) is False


def test_stop_escalates_to_sigkill_and_reaches_workers_outside_the_group(tmp_path):
    port = free_port()
    state_file = tmp_path / "server.json"
    command = fake(port, "--load-seconds", "0.3", "--ignore-sigterm", "--worker-own-session")
    assert run(tmp_path, command, detach=True) == 0
    pid = json.loads(state_file.read_text())["pid"]
    workers = worker_pids(tmp_path / "logs")
    assert workers and all(alive(p) for p in workers)
    started = time.monotonic()
    assert stop_server(state_file, timeout=1) is True
    assert time.monotonic() - started < 8
    assert not alive(pid) and not any(alive(p) for p in workers)


def test_status_of_a_server_that_died_says_not_running(tmp_path):
    port = free_port()
    state_file = tmp_path / "server.json"
    assert run(tmp_path, fake(port, "--load-seconds", "0.2"), detach=True) == 0
    pid = json.loads(state_file.read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not alive(pid), 5)  # a zombie counts as gone
    status = server_status(state_file)
    assert status["running"] is False and status["healthy"] is None
    stop_server(state_file, timeout=2)  # the workers it orphaned in its group
    assert not any(alive(p) for p in worker_pids(tmp_path / "logs"))


# --- secrets ------------------------------------------------------------------------------------


def test_the_api_key_is_never_shown_or_stored(tmp_path, capsys):
    port = free_port()
    state_file = tmp_path / "server.json"
    assert run(tmp_path, fake(port, "--load-seconds", "0.2", "--api-key", SECRET), detach=True) == 0
    try:
        stored = state_file.read_text()
        assert SECRET not in stored and "***" in json.loads(stored)["command"]
        assert SECRET not in json.dumps(server_status(state_file))
    finally:
        stop_server(state_file, timeout=5)
    # a failure prints log tails; FastDeploy logs its arguments, the key among them
    port = free_port()
    assert run(tmp_path / "b", fake(port, f"--api-key={SECRET}", "--oom", "--load-seconds", "0.2")) == 1
    assert SECRET in (tmp_path / "b" / "logs" / "server.log").read_text(), "the fake must log the key"
    captured = capsys.readouterr()
    output = captured.out + captured.err
    assert SECRET not in output
    assert "--api-key ***" in output and "--api-key=***" in output and "api_key: ***" in output


def test_redact_command():
    command = ["x", "--api-key", "k1", "--api-key=k2", "--port", "1"]
    assert redact_command(command) == ["x", "--api-key", "***", "--api-key=***", "--port", "1"]


# --- diagnose -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("log", "expected"),
    [
        ("MemoryError: (ResourceExhausted) Out of memory error on GPU 0. Cannot allocate 2.1GB", "wint4"),
        ("RuntimeError: CUDA out of memory. Tried to allocate 20.00 MiB", "--max-num-seqs"),
        (
            "ERROR    2025-10-21 11:07:45,227 63998 engine.py[line:142] Failed to launch worker processes, "
            "check log/workerlog.* for more details.",
            "busy",
        ),
        (
            "ERROR:    [Errno 98] error while attempting to bind on address ('0.0.0.0', 8188): "
            "address already in use",
            "port 8188",
        ),
        ("OSError: [Errno 98] Address already in use", "--cache-queue-port"),
        ("Failed to initialize FastDeploy LLM engine, service exit now!", "workerlog"),
        ("CUDA error(209), no kernel image is available for execution on the device.", "SM80/86/89/90"),
        ("KeyError: \"reasoning helper: 'ernie_x1' not found in reasoning_parser\"", "ernie-x1"),
        ("KeyError: \"tool helper: 'ernie-x1' not found in tool_parsers\"", "--tool-call-parser"),
        ("ValueError: Too many image items in prompt: 3 > 1", "--limit-mm-per-prompt"),
        ("huggingface_hub.errors.RepositoryNotFoundError: Repository Not Found for url", "absolute path"),
        ("Downloading model baidu/ERNIE-4.5-0.3B-Paddle from aistudio", "ernie-ops pull"),
        ("TypeError: cannot unpack non-iterable bool object", "-Paddle checkpoint"),
        ("ImportError: fastdeploy_ops.so: undefined symbol: _ZN5phi", "scripts/setup_gpu.sh"),
        ('{"detail": "Worker Service Not Healthy"}', "heartbeat"),
    ],
)
def test_diagnose_known_failures(log, expected):
    found = diagnose("INFO some earlier line\n" + log + "\nINFO a later line")
    assert found is not None and expected in found and "Fix:" in found


def test_diagnose_prefers_the_root_cause_and_knows_when_it_does_not_know():
    both = "CUDA out of memory\nFailed to launch worker processes\nFailed to initialize FastDeploy LLM engine"
    assert "ran out of memory" in (diagnose(both) or "")
    assert diagnose("INFO Uvicorn running on http://0.0.0.0:8180\nINFO Application startup complete.") is None


# --- scripts/serve.sh ---------------------------------------------------------------------------


def test_serve_script_explains_itself(repo):
    script = repo / "scripts" / "serve.sh"
    assert os.access(script, os.X_OK)
    result = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "ernie-ops serve" in result.stdout
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "usage" in result.stderr.lower()


def test_serve_script_refuses_a_node_without_a_gpu(repo, tmp_path):
    # a PATH without nvidia-smi: the check must stop it before anything runs
    env = {**os.environ, "PATH": "/usr/bin:/bin", "VENV": str(tmp_path / "no-venv")}
    if any(Path(d, "nvidia-smi").exists() for d in ("/usr/bin", "/bin")):
        pytest.skip("this machine has nvidia-smi")
    result = subprocess.run(
        ["bash", str(repo / "scripts" / "serve.sh"), "--model", "x"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 2 and "nvidia-smi" in result.stderr


def test_stop_returns_once_the_port_locks_are_free(tmp_path):
    """A server whose other threads still hold its port lock after the main one exited: stop waits
    for the lock, so the port can be taken again as soon as stop returns."""
    from ernie_ops.proc import Lock
    from ernie_ops.serve.supervisor import _await_ports_released, lock_path

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom pathlib import Path\nfrom ernie_ops.proc import Lock\n"
            "assert Lock(Path(sys.argv[1])).acquire('server')\nprint('held', flush=True)\ntime.sleep(1.0)\n",
            str(lock_path(tmp_path, 4321)),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        _await_ports_released(tmp_path, [4321], timeout=60)
        assert Lock.holder(lock_path(tmp_path, 4321)) is None
    finally:
        holder.kill()
        holder.wait()
    # a lock nobody releases: stop gives up after its timeout instead of hanging
    lock = Lock(lock_path(tmp_path, 4322))
    assert lock.acquire("someone else")
    started = time.monotonic()
    _await_ports_released(tmp_path, [4322], timeout=0.2)
    assert time.monotonic() - started < 30
    lock.release()
