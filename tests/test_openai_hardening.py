"""The embedded OpenAI server against hostile clients (issue #14, items 8-14).

The server runs for real, on loopback, configured exactly as `run` configures it (`uvicorn_settings`).
Most tests put it over a stand-in engine (no Paddle: `fake_engine.FakeEngine`, an `EngineClient`
answering "ok"); the ones about the real tokenizer and the checkpoint's files load the tiny ERNIE 4.5 model.
Raw sockets send what no HTTP client would: nothing, half a request head, half a body. Deadlines
here are hang guards only; no assertion depends on how fast the machine is.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fake_engine import FakeEngine

from ernie_ops.errors import UserError
from ernie_ops.serve import openai_server
from ernie_ops.serve.engine import Engine, StopMatcher
from ernie_ops.serve.openai_server import (
    LISTEN_BACKLOG,
    RepeatFilter,
    create_app,
    guarded_server,
    use_chat_template,
    uvicorn_settings,
)

MODEL = "m"
KEY = "sk-hardening"
AUTH = {"Authorization": f"Bearer {KEY}"}
GUARD_S = 30  # hang guard for a socket read: far beyond any timeout a test sets


# ---------------------------------------------------------------------------------------------
# a stand-in engine and a real server


@contextlib.contextmanager
def served(app, read_timeout: float = 30.0, max_connections: int = 64) -> Iterator[tuple[str, int]]:
    """Serve `app` as `run` does, on a free loopback port in a thread: (base URL, port). The logging
    set-up uvicorn applies is undone afterwards, so other tests' log capture keeps working."""
    names = ["", "ernie_ops", "asyncio", "uvicorn", "uvicorn.error", "uvicorn.access"]
    saved = {n: (lg.handlers[:], lg.level, lg.propagate) for n in names if (lg := logging.getLogger(n))}
    config = uvicorn.Config(app, **uvicorn_settings(read_timeout, max_connections))
    server = guarded_server(config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + GUARD_S
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = sock.getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", port
    finally:
        server.should_exit = True
        thread.join(GUARD_S)
        sock.close()
        for n, (handlers, level, propagate) in saved.items():
            lg = logging.getLogger(n)
            lg.handlers[:], lg.level, lg.propagate = handlers, level, propagate


def wait_healthy(proc: subprocess.Popen, port: int, timeout: float = 120) -> None:
    """Until the server process answers /health with 200 (it must not exit first)."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "the server never became healthy"
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        time.sleep(0.2)


def connect(port: int, data: bytes = b"") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=GUARD_S)
    if data:
        s.sendall(data)
    return s


def read_until_closed(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (socket.timeout: it never did)."""
    out = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := s.recv(65536):
            out += chunk
    return out


def head(path: str, length: int | None = None, method: str = "POST", extra: str = "") -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: t",
        f"Authorization: Bearer {KEY}",
        "Content-Type: application/json",
    ]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture
def fake() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def url(fake) -> Iterator[str]:
    with served(create_app(fake, MODEL, api_key=KEY, max_request_mb=1)) as (base, _):
        yield base


@pytest.fixture
def http(url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, headers=AUTH, timeout=GUARD_S) as c:
        yield c


def refused(r: httpx.Response, param: str | None, status: int = 400) -> str:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    return error["message"]


# ---------------------------------------------------------------------------------------------
# 8. a client may not supply a chat template; only typed, documented switches


def test_a_client_cannot_send_a_chat_template_or_unknown_template_variables(http, fake):
    loop = "{% for i in range(100000) %}{% for j in range(5000) %}{% endfor %}{% endfor %}"
    for kwargs in [{"chat_template": loop}, {"enable_thinking": True, "tools_prompt": "x"}]:
        message = refused(
            http.post("/v1/chat/completions", json={**CHAT, "chat_template_kwargs": kwargs}),
            "chat_template_kwargs",
        )
        assert "enable_thinking" in message  # says what is accepted
    assert fake.tokenizer.template_kwargs == []  # nothing was rendered


def test_enable_thinking_is_a_boolean(http, fake):
    body = {**CHAT, "chat_template_kwargs": {"enable_thinking": "false"}}  # a string: was taken as true
    refused(http.post("/v1/chat/completions", json=body), "chat_template_kwargs.enable_thinking")
    body = {**CHAT, "chat_template_kwargs": {"enable_thinking": False}}
    assert http.post("/v1/chat/completions", json=body).status_code == 200
    assert fake.tokenizer.template_kwargs[-1]["enable_thinking"] is False


@pytest.fixture(scope="module")
def tiny_engine(tiny_dense) -> Iterator[Engine]:
    engine = Engine.load(tiny_dense, max_batch_size=2)
    yield engine
    engine.stop()


def test_the_operator_sets_the_chat_template_at_start_up(tiny_dense, tmp_path):
    engine = Engine.load(tiny_dense, max_batch_size=1)
    template = tmp_path / "chat.jinja"
    template.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}ANSWER:")
    use_chat_template(engine, template)
    assert engine.chat_prompt([{"role": "user", "content": "Hi"}]) == engine.encode("[user] Hi\nANSWER:")
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for m in messages %}")
    with pytest.raises(UserError, match="does not render"):
        use_chat_template(engine, broken)
    with pytest.raises(UserError, match="is a directory"):
        use_chat_template(engine, tmp_path)


# ---------------------------------------------------------------------------------------------
# 9. request size limit; templating and tokenizing off the event loop


def test_a_body_over_the_limit_is_refused_before_it_is_read(url):
    port = int(url.rsplit(":", 1)[1])
    s = connect(port, head("/v1/chat/completions", 50_000_000) + b"{" * 1000)  # 50 MB announced
    reply = read_until_closed(s)  # answered and closed while 49.99 MB are still to come
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_too_large"
    # no Content-Length (chunked): counted as it arrives
    s = connect(port, head("/v1/chat/completions", extra="Transfer-Encoding: chunked\r\n"))
    with contextlib.suppress(OSError):  # the server may close while this is still sending
        for _ in range(40):
            s.sendall(b"10000\r\n" + b" " * 0x10000 + b"\r\n")  # 64 KiB chunks, 2.5 MB in all
    assert read_until_closed(s).startswith(b"HTTP/1.1 413")


def test_a_body_under_the_limit_is_served(http):
    body = {**CHAT, "messages": [{"role": "user", "content": "x" * 900_000}]}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"  # read whole


def test_health_answers_while_a_large_prompt_is_tokenized(tiny_engine):
    """The real tokenizer on a 3 MB prompt takes seconds; /health must answer meanwhile (it blocked
    for the whole tokenization when that ran on the event loop)."""
    rng = random.Random(0)
    prompt = "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(1_000_000))  # 3 MB of UTF-8
    app = create_app(tiny_engine, MODEL, max_request_mb=8)
    with served(app) as (base, _), httpx.Client(base_url=base, timeout=120) as client:
        big: dict = {}

        def send() -> None:
            big["response"] = client.post("/v1/completions", json={"model": MODEL, "prompt": prompt})
            big["done"] = time.monotonic()

        sender = threading.Thread(target=send)
        sender.start()
        answered: list[tuple[float, float]] = []  # (when, how long) of each /health
        while sender.is_alive():
            started = time.monotonic()
            assert client.get("/health").status_code == 200
            answered.append((time.monotonic(), time.monotonic() - started))
            time.sleep(0.05)
        sender.join()
    assert big["response"].json()["error"]["code"] == "context_length_exceeded"
    during = [took for when, took in answered if when < big["done"]]
    print(f"/health during tokenization: {len(during)} answers, longest {max(during, default=0):.3f} s")
    assert len(during) >= 3, answered


# ---------------------------------------------------------------------------------------------
# 10. bounded stop lists; a stop check whose cost does not grow with them


def test_stop_lists_are_bounded(http):
    refused(http.post("/v1/chat/completions", json={**CHAT, "stop": [f"s{i}" for i in range(17)]}), "stop")
    refused(http.post("/v1/chat/completions", json={**CHAT, "stop": ["x" * 257]}), "stop")
    refused(
        http.post("/v1/chat/completions", json={**CHAT, "stop_token_ids": list(range(1025))}),
        "stop_token_ids",
    )
    refused(http.post("/v1/chat/completions", json={**CHAT, "stop_token_ids": [5000]}), "stop_token_ids")
    ok = {**CHAT, "stop": [f"s{i}" for i in range(16)], "stop_token_ids": list(range(1000))}
    assert http.post("/v1/chat/completions", json=ok).status_code == 200


def _first_stop(text: str, stops: list[str]) -> int | None:
    """Brute force: where the stop string that completes first begins (the longest of those ending
    there), or None."""
    for end in range(1, len(text) + 1):
        hits = [end - len(s) for s in stops if text[:end].endswith(s)]
        if hits:
            return min(hits)
    return None


def _held(text: str, stops: list[str]) -> int:
    return max((n for s in stops for n in range(1, len(s)) if text.endswith(s[:n])), default=0)


def test_stop_matcher_agrees_with_brute_force_fed_in_any_pieces():
    rng = random.Random(1)
    for _ in range(400):
        stops = [
            "".join(rng.choice("abc") for _ in range(rng.randint(1, 5))) for _ in range(rng.randint(1, 6))
        ]
        text = "".join(rng.choice("abcd") for _ in range(rng.randint(0, 30)))
        matcher, fed, found = StopMatcher(stops), 0, None
        while fed < len(text) and found is None:
            piece = text[fed : fed + rng.randint(1, 4)]
            start = matcher.feed(piece)
            if start is not None:
                found = fed + start
            else:
                assert matcher.held == _held(text[: fed + len(piece)], stops), (stops, text)
            fed += len(piece)
        assert found == _first_stop(text, stops), (stops, text)


class _Counted(list):
    lookups = 0

    def __getitem__(self, i):
        _Counted.lookups += 1
        return super().__getitem__(i)


@pytest.mark.parametrize("n_stops", [1, 16])
def test_stop_matcher_work_per_character_does_not_grow_with_the_stops(n_stops):
    """Fallback moves are counted, not timed: at most one per character fed, amortized, however many
    stop strings there are (the old check scanned every stop string at every step)."""
    stops = ["a" * 255 + chr(ord("b") + i) for i in range(n_stops)]  # the worst case: long shared prefixes
    matcher = StopMatcher(stops)
    matcher._fail = _Counted(matcher._fail)
    _Counted.lookups = 0
    text = ("a" * 300 + "z") * 30
    for i in range(0, len(text), 3):
        assert matcher.feed(text[i : i + 3]) is None
    assert _Counted.lookups <= len(text)


# ---------------------------------------------------------------------------------------------
# 11. connections: timeouts, a bound, quiet logs


@pytest.fixture
def guarded(fake) -> Iterator[tuple[str, int]]:
    with served(
        create_app(fake, MODEL, api_key=KEY, read_timeout=1.0), read_timeout=1.0, max_connections=3
    ) as s:
        yield s


def test_silent_and_half_sent_connections_are_closed(guarded):
    _, port = guarded
    assert read_until_closed(connect(port)) == b""  # nothing sent
    assert read_until_closed(connect(port, b"GET /health HTTP/1.1\r\nHost: t\r\n")) == b""  # half a head
    # after a whole request on a kept-alive connection, half of the next one
    s = connect(port, b"GET /health HTTP/1.1\r\nHost: t\r\n\r\nGET /health HTTP/1.1\r\n")
    assert read_until_closed(s).count(b"HTTP/1.1 200") == 1
    # half a body: 408 once the body's deadline passes
    reply = read_until_closed(connect(port, head("/v1/chat/completions", 100) + b'{"model"'))
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]


HEALTH = b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs `ss` (iproute2) to read the listen queue")
def test_the_listen_queue_is_deeper_than_the_accept_batch(fake):
    # a flood that fills a listen queue as short as the accept batch drops a health probe's SYN,
    # which the kernel retries only after a second; `ss` shows a listener's queue size as Send-Q
    with served(create_app(fake, MODEL), max_connections=64) as (_, port):
        out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout
    queue = int(out.split()[2])
    assert queue == min(LISTEN_BACKLOG, int(Path("/proc/sys/net/core/somaxconn").read_text())), out
    assert queue > uvicorn_settings(max_connections=64)["backlog"]


def test_past_the_connection_limit_idle_ones_make_room_and_busy_ones_do_not(fake, capfd):
    # the server starts here, not in a fixture: its log handler writes to this test's stderr
    with served(create_app(fake, MODEL, api_key=KEY), max_connections=3) as (base, port):
        silent = [connect(port) for _ in range(3)]
        for _ in range(20):  # each new connection closes the one idle longest, and is served
            assert read_until_closed(connect(port, HEALTH)).startswith(b"HTTP/1.1 200")
        assert [read_until_closed(s) for s in silent] == [b""] * 3
        # three requests in progress (their bodies still coming): nothing to close, so 503 at once
        busy = [connect(port, head("/v1/completions", 1000) + b"{") for _ in range(3)]
        time.sleep(0.5)  # their heads are read
        for _ in range(5):
            assert read_until_closed(connect(port, HEALTH)).startswith(b"HTTP/1.1 503")
        for s in busy:
            s.close()
        deadline = time.monotonic() + GUARD_S
        while httpx.get(f"{base}/health").status_code != 200:  # their slots free up
            assert time.monotonic() < deadline
            time.sleep(0.05)
    err = capfd.readouterr().err
    assert err.count("closed the longest idle connection") == 1  # twenty times, one line
    assert err.count("refused a connection") == 1  # five times, one line


def test_the_server_process_folds_repeated_warnings(tiny_dense):
    """As `ernie-ops serve` runs it (`python -m`, Paddle's handler on the root logger): a flood of
    connections leaves one log line, not one per connection."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "ernie_ops.serve.openai_server", "--model", str(tiny_dense)]
    command += ["--port", str(port), "--max-connections", "2"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_healthy(proc, port)
        flood = [connect(port) for _ in range(50)]
        assert read_until_closed(connect(port, HEALTH)).startswith(b"HTTP/1.1 200")
        for s in flood:
            s.close()
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=GUARD_S)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert out.count("closed the longest idle connection") == 1, out[-3000:]
    assert "requests without them get temperature=0.8 top_p=0.8" in out  # the start-up line shows


def test_a_client_leaving_mid_body_is_no_error(guarded, http):
    base, port = guarded
    records: list[logging.LogRecord] = []
    catcher = logging.Handler(logging.WARNING)
    catcher.emit = records.append  # type: ignore[method-assign]
    watched = [logging.getLogger(n) for n in ("ernie_ops", "uvicorn.error", "uvicorn")]
    for lg in watched:
        lg.addHandler(catcher)
    try:
        s = connect(port, head("/v1/completions", 1000) + b'{"model": "m", "prompt": "')
        time.sleep(0.2)
        s.close()
        metrics = ""
        deadline = time.monotonic() + 10
        while 'endpoint="completions"' not in metrics and time.monotonic() < deadline:
            time.sleep(0.05)
            metrics = httpx.get(f"{base}/metrics", headers=AUTH).text
    finally:
        for lg in watched:
            lg.removeHandler(catcher)
    assert 'ernie_ops_requests_total{endpoint="completions",status="499"} 1' in metrics
    assert [r.getMessage() for r in records] == []


def test_repeated_warnings_are_logged_once_then_counted(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(openai_server.time, "monotonic", lambda: clock[0])
    repeats = RepeatFilter(interval=60)

    def record(msg: str, level: int = logging.WARNING) -> logging.LogRecord:
        return logging.LogRecord("uvicorn.error", level, __file__, 1, msg, None, None)

    passed = [r for r in (record("Invalid HTTP request received.") for _ in range(1000)) if repeats.filter(r)]
    assert len(passed) == 1
    assert repeats.filter(record("something else"))
    assert all(repeats.filter(record("GET /x 200", logging.INFO)) for _ in range(3))  # not warnings
    clock[0] += 61
    later = record("Invalid HTTP request received.")
    assert repeats.filter(later) and "999 more like this" in later.getMessage()


# ---------------------------------------------------------------------------------------------
# 12. the API key everywhere but /health; no docs unless asked for


def test_every_path_but_health_needs_the_key(url):
    for path in ["/metrics", "/v1/models", "/docs", "/openapi.json", "/redoc", "/nothing"]:
        r = httpx.get(f"{url}{path}")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", path
    assert httpx.get(f"{url}/health").status_code == 200
    assert httpx.get(f"{url}/metrics", headers=AUTH).status_code == 200
    assert httpx.get(f"{url}/docs", headers=AUTH).status_code == 404  # off unless asked for
    assert httpx.get(f"{url}/openapi.json", headers=AUTH).status_code == 404


def test_docs_when_asked_for_still_need_the_key(fake):
    with served(create_app(fake, MODEL, api_key=KEY, docs=True)) as (base, _):
        assert httpx.get(f"{base}/docs").status_code == 401
        assert httpx.get(f"{base}/docs", headers=AUTH).status_code == 200
        assert httpx.get(f"{base}/openapi.json", headers=AUTH).json()["info"]["title"]


# ---------------------------------------------------------------------------------------------
# 13. clear 400s naming the field as OpenAI does


def test_bad_fields_get_400s_that_name_them(http):
    chat, completions = "/v1/chat/completions", "/v1/completions"
    refused(http.post(chat, json={**CHAT, "seed": -1}), "seed")
    refused(http.post(chat, json={**CHAT, "logprobs": True}), "logprobs")
    refused(http.post(chat, json={**CHAT, "top_logprobs": 3}), "top_logprobs")
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    message = refused(
        http.post(
            chat,
            json={**CHAT, "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, image]}]},
        ),
        "messages[0].content[1].type",
    )
    assert "text only" in message
    refused(
        http.post(chat, json={**CHAT, "messages": [{"role": "user", "content": [{"type": "audio"}]}]}),
        "messages[0].content[0]",
    )
    long = {"model": MODEL, "prompt": "x" * 100}  # the stand-in's context is 64
    assert refused(http.post(completions, json=long), "prompt") and True
    refused(http.post(completions, json={"model": MODEL, "prompt": "hi", "logprobs": 1}), "logprobs")
    refused(http.post(completions, json={"model": MODEL, "prompt": "hi", "echo": True}), "echo")
    # what this server does not implement is refused, never ignored
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    assert "tool calls" in refused(http.post(chat, json={**CHAT, "tools": [tool]}), "tools")
    refused(http.post(chat, json={**CHAT, "tool_choice": "required"}), "tool_choice")
    json_mode = {**CHAT, "response_format": {"type": "json_object"}}
    assert "not supported" in refused(http.post(chat, json=json_mode), "response_format")
    refused(http.post(chat, json={**CHAT, "response_format": {"type": "nope"}}), "response_format")
    assert http.post(chat, json={**CHAT, "tools": [], "response_format": {"type": "text"}}).status_code == 200
    metrics = http.get("/metrics").text
    assert 'endpoint="chat",status="400"} 9' in metrics


def test_an_engine_failure_is_a_500_and_counted_as_one():
    with served(create_app(FakeEngine(fail=True), MODEL)) as (base, _):
        r = httpx.post(f"{base}/v1/chat/completions", json=CHAT)
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
        metrics = httpx.get(f"{base}/metrics").text
    assert 'endpoint="chat",status="500"} 1' in metrics and 'status="200"' not in metrics


def test_each_app_has_its_own_metrics_registry():
    """Two apps in one process: neither sees the other's counts (no process-global registry)."""
    with served(create_app(FakeEngine(), MODEL)) as (a, _), served(create_app(FakeEngine(), MODEL)) as (b, _):
        assert httpx.post(f"{a}/v1/chat/completions", json=CHAT).status_code == 200
        assert 'ernie_ops_requests_total{endpoint="chat",status="200"} 1' in httpx.get(f"{a}/metrics").text
        other = httpx.get(f"{b}/metrics").text
    assert 'endpoint="chat"' not in other and "fastdeploy:request_success_total 0" in other


# ---------------------------------------------------------------------------------------------
# 14. sampling defaults from the checkpoint's generation_config.json


def test_sampling_defaults_come_from_the_generation_config(capfd):
    fake = FakeEngine(generation_config={"temperature": 0.8, "top_p": 0.8, "do_sample": True})
    with served(create_app(fake, MODEL)) as (base, _):
        assert httpx.post(f"{base}/v1/chat/completions", json=CHAT).status_code == 200
        explicit = {**CHAT, "temperature": 0, "top_p": None, "top_k": 5}
        assert httpx.post(f"{base}/v1/chat/completions", json=explicit).status_code == 200
    default, chosen = fake.submitted
    assert (default.temperature, default.top_p, default.top_k, default.repetition_penalty) == (
        0.8,
        0.8,
        0,
        1.0,
    )
    assert (chosen.temperature, chosen.top_p, chosen.top_k) == (0.0, 0.8, 5)
    assert (
        "get temperature=0.8 top_p=0.8 top_k=0 repetition_penalty=1 (from the checkpoint's generation_config"
        in capfd.readouterr().err
    )


def test_a_bad_generation_config_fails_the_start():
    with pytest.raises(UserError, match=r"generation_config\.json: temperature"):
        create_app(FakeEngine(generation_config={"temperature": -1}), MODEL)


def test_the_engine_reads_the_checkpoints_generation_config(tiny_engine, tiny_dense):
    assert tiny_engine.generation_config == json.loads(Path(tiny_dense, "generation_config.json").read_text())
    assert tiny_engine.generation_config["temperature"] == 0.8


# ---------------------------------------------------------------------------------------------
# the operator's options reach the embedded server from a serve profile


def test_a_serve_profile_sets_the_chat_template_and_the_request_limit(tmp_path, capsys):
    from ernie_ops.cli.main import main
    from ernie_ops.serve.fastdeploy import build_launch
    from ernie_ops.serve.profile import load_profile

    profile = tmp_path / "p.yaml"
    profile.write_text("model: /m\nchat_template: /t/chat.jinja\nmax_request_mb: 16\n")
    assert main(["serve", str(profile), "--backend", "paddle", "--print-command"]) == 0
    command = capsys.readouterr().out
    assert "--chat-template /t/chat.jinja" in command and "--max-request-mb 16" in command
    with pytest.raises(UserError, match="max_request_mb is an option of the embedded backend"):
        build_launch(load_profile(profile), Path("/m"))  # FastDeploy has no such limit: refused
    profile.write_text("model: /m\nchat_template: /t/chat.jinja\n")
    assert "--chat-template /t/chat.jinja" in build_launch(load_profile(profile), Path("/m")).shown()
    profile.write_text("model: /m\nmax_request_mb: 0\n")
    with pytest.raises(UserError, match="max_request_mb"):
        load_profile(profile)


def test_the_server_command_line_takes_the_hardening_options(tmp_path, capsys):
    with pytest.raises(SystemExit):
        openai_server.main(["--help"])
    usage = capsys.readouterr().out
    for option in ["--max-request-mb", "--read-timeout", "--max-connections", "--chat-template", "--docs"]:
        assert option in usage
    # a start-up mistake is a message and status 2, not a traceback
    assert openai_server.main(["--model", str(tmp_path)]) == 2
    assert "has no config.json" in capsys.readouterr().err


def test_a_malformed_body_the_app_answered_early_is_no_traceback(fake):
    # no key: the app answers 401 at once, while h11 finds the chunked body malformed and uvicorn
    # answers 400 and closes; the app's late answer used to raise LocalProtocolError in the log
    bad = b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
    records: list[logging.LogRecord] = []
    catcher = logging.Handler()
    catcher.emit = records.append  # type: ignore[method-assign]
    with served(create_app(fake, MODEL, api_key=KEY)) as (base, port):
        for name in ("uvicorn.error", "asyncio"):
            logging.getLogger(name).addHandler(catcher)
        try:
            replies = [read_until_closed(connect(port, bad)) for _ in range(3)]
            time.sleep(0.2)  # the app's task runs after the protocol answered
            assert httpx.get(f"{base}/health").status_code == 200
        finally:
            for name in ("uvicorn.error", "asyncio"):
                logging.getLogger(name).removeHandler(catcher)
    assert all(r.startswith(b"HTTP/1.1 4") for r in replies), replies
    assert not [r.getMessage() for r in records if r.exc_info], [r.getMessage() for r in records]
