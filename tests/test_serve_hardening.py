"""Serve lifecycle hardening (#14): a port serves one server, records name the process that really
serves it and are found from any directory, nothing outlives a killed `serve`, --port/--host do
what they say, port probes see ports as servers bind them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from polling import free_port, wait_until
from test_serve import serve_fastdeploy_on_a_fake_gpu
from test_supervisor import alive, fake, run, start_driver

from ernie_ops.cli.main import main
from ernie_ops.serve.detached import free_port_block
from ernie_ops.serve.preflight import port_free, state_dir
from ernie_ops.serve.profile import load_profile, profile_for_checkpoint
from ernie_ops.serve.supervisor import server_status, stop_server

PROFILES = sorted((Path(__file__).parent.parent / "recipes" / "serve").glob("*.yaml"))


def driver(tmp_path: Path, name: str, port: int, *flags: str, detach: bool) -> subprocess.Popen:
    log_dir, state_file = tmp_path / name, state_dir() / f"{port}.json"
    return start_driver(
        tmp_path, port, *flags, timeout=60, detach=detach, log_dir=log_dir, state_file=state_file
    )


def listeners(port: int) -> set[int]:
    """Pids (of this user) listening on the port."""
    found = set()
    for process in psutil.process_iter():
        try:
            if any(
                c.status == psutil.CONN_LISTEN and c.laddr.port == port
                for c in process.net_connections(kind="inet")
            ):
                found.add(process.pid)
        except psutil.Error:
            continue
    return found


def tree_of(pid: int) -> set[int]:
    try:
        process = psutil.Process(pid)
        return {pid} | {c.pid for c in process.children(recursive=True)}
    except psutil.Error:
        return set()


# --- item 5: nothing outlives a killed `serve` ------------------------------------------------------


def test_a_foreground_server_dies_with_a_sigkilled_supervisor(tmp_path):
    port = free_port()
    sup = driver(tmp_path, "logs", port, "--load-seconds", "0.2", "--workers", "2", detach=False)
    try:
        assert wait_until(lambda: listeners(port), 30), "the server never listened"
        server = tree_of(sup.pid) - {sup.pid}
        assert len(server) == 3  # the API server and two workers
        sup.kill()
        sup.wait(timeout=30)
        assert wait_until(lambda: not any(alive(p) for p in server), 30), (
            "the server outlived ernie-ops serve"
        )
    finally:
        sup.kill()
        for pid in tree_of(sup.pid):
            os.kill(pid, signal.SIGKILL)


def test_a_detached_server_whose_supervisor_dies_while_loading_stays_recorded_and_stoppable(tmp_path):
    port = free_port()
    sup = driver(tmp_path, "logs", port, "--load-seconds", "3", detach=True)
    state_file = state_dir() / f"{port}.json"
    try:
        assert wait_until(state_file.exists, 30), "no record while it starts"
        sup.kill()
        sup.wait(timeout=30)
        status = server_status(state_file)
        assert status["running"] and status["state"] == "starting"
    finally:
        sup.kill()
    assert stop_server(state_file, timeout=5)
    assert not alive(status["pid"]) and not state_file.exists()


# --- item 7: one server per port, records that name the real server, found from anywhere ----------


def test_a_second_server_on_a_port_is_refused_while_the_first_loads(tmp_path):
    port = free_port()
    first = driver(tmp_path, "a", port, "--load-seconds", "3", detach=True)
    state_file = state_dir() / f"{port}.json"
    try:
        assert wait_until((tmp_path / "a" / "server.log").exists, 30), "the first never started"
        # the second loads faster: before the lock it took the port, and the first then called that
        # ready and recorded its own pid, which died on "address already in use"
        second = driver(tmp_path, "b", port, "--load-seconds", "0.2", detach=True)
        out_b, _ = second.communicate(timeout=60)
        out_a, _ = first.communicate(timeout=60)
        assert second.returncode == 1 and "already taken by a server ernie-ops started" in out_b, out_b
        assert first.returncode == 0, out_a
        state = json.loads(state_file.read_text())
        assert state["phase"] == "ready" and listeners(port) <= tree_of(state["pid"])
        assert listeners(port) == {state["listener_pid"]}
    finally:
        first.kill()
        stop_server(state_file, timeout=5)
    assert not listeners(port)


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_a_foreign_process_answering_on_the_port_is_not_taken_for_our_server(tmp_path, capsys):
    port = free_port()
    foreign: list[ThreadingHTTPServer] = []

    def take_the_port() -> None:
        time.sleep(0.5)  # our server is loading (3 s) with its port still closed
        httpd = ThreadingHTTPServer(("127.0.0.1", port), _Health)
        foreign.append(httpd)
        httpd.serve_forever()

    threading.Thread(target=take_the_port, daemon=True).start()
    state_file = state_dir() / f"{port}.json"
    try:
        code = run(tmp_path, fake(port, "--load-seconds", "3"), 30, detach=True, state_file=state_file)
    finally:
        if foreign:
            foreign[0].shutdown()
            foreign[0].server_close()
    assert code == 1
    assert f"another process answers on port {port}" in capsys.readouterr().err
    assert not state_file.exists()


def test_status_and_stop_find_a_server_from_any_directory_and_say_what_they_did(
    tmp_path, monkeypatch, capsys
):
    port = free_port()
    state_file = state_dir() / f"{port}.json"
    assert run(tmp_path, fake(port, "--load-seconds", "0.2"), 30, detach=True, state_file=state_file) == 0
    pid = json.loads(state_file.read_text())["pid"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    try:
        assert main(["serve", "status"]) == 0
        out = capsys.readouterr().out
        assert out.splitlines()[0].split()[:3] == ["PORT", "STATE", "PID"]
        assert out.splitlines()[1].split()[:3] == [str(port), "ready", str(pid)]
        assert main(["serve", "status", "--json"]) == 0
        assert [(s["port"], s["state"]) for s in json.loads(capsys.readouterr().out)] == [(port, "ready")]
    finally:
        code = main(["serve", "stop", "--port", str(port)])
    assert code == 0 and f"port {port}: stopped the server (pid {pid}" in capsys.readouterr().out
    assert not alive(pid) and not state_file.exists()


def test_a_stale_record_is_reported_as_stale(tmp_path, capsys):
    gone = subprocess.Popen(["true"])
    gone.wait()
    port = free_port()
    record = {"pid": gone.pid, "pgid": gone.pid, "host": "127.0.0.1", "port": port, "phase": "ready"}
    state_file = state_dir() / f"{port}.json"
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps(record))
    assert main(["serve", "status"]) == 0
    assert f"{port}  stale" in capsys.readouterr().out
    assert main(["serve", "stop", "--port", str(port)]) == 0
    assert "stale record" in capsys.readouterr().out and not state_file.exists()
    assert main(["serve", "stop", "--port", str(port)]) == 1
    assert f"no server on port {port} to stop" in capsys.readouterr().err


def test_stopping_a_stale_record_leaves_a_later_group_with_the_same_number_alone(tmp_path, capsys):
    # a record of a server long gone whose pid and group number now belong to an unrelated process
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        port = free_port()
        record = {"pid": other.pid, "pgid": other.pid, "start_ticks": 1, "host": "127.0.0.1", "port": port}
        state_file = state_dir() / f"{port}.json"
        state_file.parent.mkdir(parents=True, exist_ok=True)
        state_file.write_text(json.dumps(record))
        assert main(["serve", "stop", "--port", str(port)]) == 0
        assert "stale record" in capsys.readouterr().out and not state_file.exists()
        assert other.poll() is None, "serve stop killed a process that was not the server's"
    finally:
        other.kill()
        other.wait()


def test_options_that_do_not_apply_to_status_or_stop_are_refused(capsys):
    assert main(["serve", "stop", "--detach"]) == 2
    assert "--detach does not apply to `serve stop`" in capsys.readouterr().err


# --- item 19: --port / --host, IPv6, 0.0.0.0 honoured, the network exposure said ------------------


def test_port_and_host_flags_set_where_the_server_listens(tiny_dense, capsys):
    assert main(["serve", str(tiny_dense), "--backend", "paddle", "--port", "8190", "--print-command"]) == 0
    out = capsys.readouterr().out
    assert "--port 8190" in out and "--host 127.0.0.1" in out
    args = ["serve", str(PROFILES[0]), "--print-command", "--port", "8390", "--host", "127.0.0.1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "--port 8390" in out and "--host 127.0.0.1" in out and "--metrics-port 8391" in out


def test_an_ipv6_host_and_0_0_0_0_are_honoured(tiny_dense, capsys):
    assert profile_for_checkpoint("/m", ["host=::"]).host == "::"
    assert profile_for_checkpoint("/m", ["host=::1"]).host == "::1"
    args = ["serve", str(tiny_dense), "--backend", "paddle", "--set", "host=0.0.0.0", "--print-command"]
    assert main(args) == 0
    assert "--host 0.0.0.0" in capsys.readouterr().out


def test_serving_open_to_the_network_without_a_key_warns(tiny_dense, monkeypatch, capsys, tmp_path):
    assert serve_fastdeploy_on_a_fake_gpu(tiny_dense, monkeypatch, tmp_path) == 1  # after the warning
    err = capsys.readouterr().err
    assert "open to the network with no API key" in err and "api_key_env" in err


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_a_shipped_profile_open_to_the_network_says_so(path):
    profile = load_profile(path)
    header = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
    assert profile.host == "0.0.0.0" and not (profile.api_key_env or profile.api_key_file)
    assert "Open to the network" in header and "api_key_env" in header


# --- item 20: ports probed as servers bind them -----------------------------------------------------


def test_a_port_an_earlier_server_left_in_time_wait_is_free_for_the_next():
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = listener.accept()
        conn.close()  # the server side closes first: its end sits in TIME_WAIT
        time.sleep(0.1)
        client.close()
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))  # how the pipeline used to probe: "taken"
    assert port_free("127.0.0.1", port) and port_free("0.0.0.0", port)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert not port_free("127.0.0.1", busy.getsockname()[1])


def test_the_pipeline_picks_a_block_below_the_ephemeral_range_where_clients_leave_time_wait():
    from ernie_ops.serve.detached import ephemeral_low

    port = free_port_block(4)
    assert port >= 10000 and port + 4 <= ephemeral_low()
    assert all(port_free("0.0.0.0", port + i) for i in range(4))


def test_the_pipeline_asks_one_port_for_the_embedded_backend_and_four_for_fastdeploy(monkeypatch, tmp_path):
    import ernie_ops.serve
    from ernie_ops.pipeline import stages

    sizes, started = [], []
    monkeypatch.setattr(stages, "free_port_block", lambda size=4: sizes.append(size) or 18000)
    # the pipeline serves in-process through the library call the CLI uses (no `ernie-ops` subprocess)
    monkeypatch.setattr(ernie_ops.serve, "start", lambda profile, **k: started.append((profile, k)) or 0)
    for backend in ("paddle", "fastdeploy"):
        spec = SimpleNamespace(
            name="t", serve_profile=None, serve_set=[], startup_timeout=None, engine=backend
        )
        record = SimpleNamespace(path=tmp_path, endpoints={}, save=lambda: None)
        stages.start_server(SimpleNamespace(spec=spec, record=record, say=lambda m: None), "tuned", "/m")
    assert sizes == [1, 4]
    assert [(p.port, p.served_model_name, k) for p, k in started] == [
        (18000, "t-tuned", {"detach": True, "backend": b}) for b in ("paddle", "fastdeploy")
    ]


# --- stale messages -----------------------------------------------------------------------------------


def test_fastdeploy_on_cpu_points_at_the_embedded_backend(tiny_dense, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert main(["serve", str(tiny_dense), "--backend", "fastdeploy", "--port", str(free_port_block(4))]) == 2
    err = capsys.readouterr().err
    assert "no GPU visible" in err and "--engine paddle" in err and "once it lands" not in err


def test_a_lora_run_on_the_embedded_backend_is_told_what_applies_there(tmp_path, capsys):
    from ernie_ops.train.record import RunRecord

    RunRecord(
        name="r", run_dir=str(tmp_path), recipe_source="x", status="succeeded", fine_tuning="LoRA"
    ).save()
    assert main(["serve", str(tmp_path), "--backend", "paddle"]) == 2
    err = capsys.readouterr().err
    assert "FastDeploy" not in err and "embedded CPU server" in err and f"ernie-ops export {tmp_path}" in err


def test_serving_a_run_whose_trainer_was_killed_says_its_owner_is_gone(tmp_path, capsys):
    from ernie_ops.train.record import RunRecord

    RunRecord(name="r", run_dir=str(tmp_path), recipe_source="x", status="running", fine_tuning="Full").save()
    assert main(["serve", str(tmp_path), "--backend", "paddle"]) == 2
    err = capsys.readouterr().err
    assert "no finished checkpoint (status owner gone" in err and f"train --resume {tmp_path}" in err
