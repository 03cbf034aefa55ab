"""The gateway (#19): routing, answers read back, the request log, and the server against null and
stand-in backends in this process (each server on its own event loop thread)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from standin_openai import create_standin, serving

from ernie_ops.errors import UserError
from ernie_ops.rollout.answers import agree, read_stream, read_whole
from ernie_ops.rollout.gateway import GatewayConfig, run_in_thread, url_of
from ernie_ops.rollout.requestlog import RequestLog
from ernie_ops.rollout.routing import CANDIDATE, STABLE, Routing, StateFile, bucket, pick
from ernie_ops.validate.client import Endpoint
from ernie_ops.validate.null_server import Behaviour, serve_in_thread

GUARD_S = 60.0  # a bound that only a hang reaches, never a timing assertion
ADMIN = {"Authorization": "Bearer sesame"}


def chat(stream: bool = True, user: str | None = None, tokens: int = 4, text: str = "hi") -> dict:
    body = {"model": "any", "messages": [{"role": "user", "content": text}], "max_tokens": tokens}
    if stream:
        body["stream"] = True
    if user is not None:
        body["user"] = user
    return body


def eventually(check, what: str) -> None:
    deadline = time.monotonic() + GUARD_S
    while not check():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.02)


def metric(url: str, name: str, **labels: str) -> float:
    """The value of one series on /metrics (0 when absent)."""
    text = httpx.get(url + "/metrics", timeout=GUARD_S).text
    for line in text.splitlines():
        if not line.startswith(name + ("{" if labels else " ")):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@contextlib.contextmanager
def gateway(stable: str, candidate: str | None, tmp_path: Path, **options) -> Iterator[str]:
    """A gateway in this process over STABLE and CANDIDATE, its files in TMP_PATH (OPTIONS: any
    other GatewayConfig field, or these replaced); its URL."""
    settings = {"state_path": tmp_path / "state.json", "log_dir": tmp_path / "log", "admin_key": "sesame"}
    config = GatewayConfig(
        stable=Endpoint.parse(stable),
        candidate=Endpoint.parse(candidate) if candidate else None,
        **{**settings, **options},
    )
    with run_in_thread(config) as g:
        yield url_of(g)


@pytest.fixture
def backends() -> Iterator[tuple[str, str]]:
    with serve_in_thread(model="stable-m") as s, serve_in_thread(model="cand-m") as c:
        yield s.url, c.url


# -- routing -----------------------------------------------------------------------------------


def test_split_is_sticky_per_key_and_a_ramp_up_moves_no_key_back():
    keys = [f"user-{i}" for i in range(2000)]
    at = {w: {k for k in keys if pick(Routing("split", w), k) == CANDIDATE} for w in (5, 25, 50, 100)}
    assert at[5] <= at[25] <= at[50] <= at[100] == set(keys)
    assert 0.15 < len(at[25]) / len(keys) < 0.35
    assert all(pick(Routing("split", 25), k) == pick(Routing("split", 25), k) for k in keys[:50])
    assert bucket("user-1") == bucket("user-1") and 0 <= bucket("x") < 10_000


def test_unkeyed_split_follows_the_weight_and_other_modes_are_fixed():
    rng = random.Random(0)
    share = sum(pick(Routing("split", 25), None, rng) == CANDIDATE for _ in range(10_000)) / 10_000
    assert 0.22 < share < 0.28
    assert pick(Routing("shadow"), "k") == STABLE
    assert pick(Routing("all-candidate"), None) == CANDIDATE
    assert pick(Routing("split", 0), "k") == STABLE


def test_routing_refuses_unknown_modes_and_weights_outside_0_100():
    with pytest.raises(UserError, match="unknown gateway mode"):
        Routing("canary")
    with pytest.raises(UserError, match="percentage"):
        Routing("split", 120)


def test_state_file_round_trip_and_an_unreadable_file_is_an_error_not_a_reset(tmp_path):
    state = StateFile(tmp_path / "s.json")
    assert state.load() is None
    saved = Routing().changed("split", 25, "stage 2")
    state.save(saved)
    assert state.load() == saved and saved.revision == 1
    (tmp_path / "s.json").write_text("{not json")
    with pytest.raises(UserError, match="not JSON"):
        state.load()


# -- answers -----------------------------------------------------------------------------------


def sse(*events: dict) -> bytes:
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def test_a_streamed_answer_is_read_back_with_text_tool_calls_and_usage():
    call = {"index": 0, "id": "c1", "function": {"name": "get_weather", "arguments": '{"city": '}}
    raw = sse(
        {"model": "m1", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {"model": "m1", "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]},
        {"model": "m1", "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": None}]},
        {"model": "m1", "choices": [{"index": 0, "delta": {"tool_calls": [call]}}]},
        {
            "choices": [
                {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}}
            ]
        },
        {"model": "m1", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {"model": "m1", "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 9}},
    )
    answer = read_stream(raw, want_text=True)
    assert (answer.model, answer.text, answer.finish_reason) == ("m1", "Hello", "tool_calls")
    assert [(t.name, t.arguments) for t in answer.tool_calls] == [("get_weather", '{"city": "Paris"}')]
    assert (answer.prompt_tokens, answer.completion_tokens) == (7, 9)
    assert read_stream(raw).text is None  # the text only when asked for
    assert answer.summary()["tool_calls"] == ["get_weather"]


def test_a_stream_without_usage_counts_its_text_events_as_tokens():
    raw = sse(*({"model": "m", "choices": [{"index": 0, "delta": {"content": "x"}}]} for _ in range(5)))
    assert read_stream(raw).completion_tokens == 5


def test_a_whole_answer_and_agreement():
    body = {
        "model": "m2",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hello  there"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2},
    }
    whole = read_whole(json.dumps(body).encode(), want_text=True)
    assert (whole.model, whole.text, whole.finish_reason, whole.completion_tokens) == (
        "m2",
        "Hello  there",
        "stop",
        2,
    )
    streamed = read_stream(sse({"choices": [{"index": 0, "delta": {"content": "Hello there "}}]}), True)
    assert agree(whole, streamed)  # whitespace aside
    other = read_stream(sse({"choices": [{"index": 0, "delta": {"content": "Goodbye"}}]}), True)
    assert not agree(whole, other)


# -- request log -------------------------------------------------------------------------------


def test_request_log_rotates_by_size_and_by_day_and_deletes_past_retention(tmp_path):
    now = [time.time()]  # a clock the test moves (file times are real: prune compares them)
    log = RequestLog(tmp_path, max_bytes=200, retention_days=2, clock=lambda: now[0])
    for i in range(3):
        log.add({"i": i, "pad": "x" * 60})
    log.flush()
    assert [p.name for p in log.files()] == ["requests.jsonl"]
    log.add({"i": 3})
    log.flush()  # past 200 bytes: the full file is rotated first
    assert len(log.files()) == 2
    assert [json.loads(x)["i"] for x in log.files()[-1].read_text().splitlines()] == [3]
    now[0] += 86400  # the next day: rotated although small
    log.add({"i": 4})
    log.flush()
    assert len(log.files()) == 3
    old = log.files()[0]
    past = now[0] - 3 * 86400
    import os

    os.utime(old, (past, past))
    assert log.prune() == [old]
    log.close()
    assert log.written == 5


# -- the gateway -------------------------------------------------------------------------------


def test_a_stream_passes_through_byte_for_byte(backends, tmp_path):
    stable, candidate = backends
    with gateway(stable, candidate, tmp_path) as url:
        direct = httpx.post(
            stable + "/v1/chat/completions", json=chat() | {"model": "stable-m"}, timeout=GUARD_S
        )
        via = httpx.post(url + "/v1/chat/completions", json=chat(), timeout=GUARD_S)
        whole = httpx.post(url + "/v1/completions", json={"prompt": "a b", "max_tokens": 3}, timeout=GUARD_S)
        models = httpx.get(url + "/v1/models", timeout=GUARD_S).json()
    assert via.status_code == 200 and via.headers["x-ernie-ops-backend"] == STABLE
    assert via.headers["content-type"].startswith("text/event-stream")
    assert via.content == direct.content  # the model name rewritten to the backend's, nothing else
    assert whole.json()["choices"][0]["text"] == "tok tok tok "
    assert models["data"][0]["id"] == "stable-m"


@contextlib.contextmanager
def held_backend() -> Iterator[tuple[str, threading.Event]]:
    """A backend that streams one event, then holds the rest until the test releases it."""
    release = threading.Event()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    port: list[int] = []

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "held"}]})

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        event = {"model": "held", "choices": [{"index": 0, "delta": {"content": "first"}}]}
        await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        deadline = time.monotonic() + GUARD_S
        while not release.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        with contextlib.suppress(ConnectionResetError):
            last = {
                "model": "held",
                "choices": [{"index": 0, "delta": {"content": " last"}, "finish_reason": "stop"}],
            }
            await response.write(b"data: " + json.dumps(last).encode() + b"\n\ndata: [DONE]\n\n")
            await response.write_eof()
        return response

    async def start() -> web.AppRunner:
        app = web.Application()
        app.router.add_get("/v1/models", models)
        app.router.add_post("/v1/chat/completions", stream)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        return runner

    def run() -> None:
        asyncio.set_event_loop(loop)
        runner = loop.run_until_complete(start())
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(GUARD_S)
    try:
        yield f"http://127.0.0.1:{port[0]}", release
    finally:
        release.set()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(GUARD_S)


def test_a_stream_reaches_the_client_while_the_backend_is_still_generating(tmp_path):
    with held_backend() as (backend, release), gateway(backend, None, tmp_path) as url:
        with httpx.stream("POST", url + "/v1/chat/completions", json=chat(), timeout=GUARD_S) as r:
            lines = r.iter_lines()
            first = next(line for line in lines if line)
            assert '"first"' in first and not release.is_set()  # no buffering: the backend still holds
            release.set()
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"


def test_a_client_gone_mid_stream_is_counted(tmp_path):
    with held_backend() as (backend, release), gateway(backend, None, tmp_path) as url:
        with httpx.stream("POST", url + "/v1/chat/completions", json=chat(), timeout=GUARD_S) as r:
            next(line for line in r.iter_lines() if line)
        release.set()  # the backend writes on: the gateway finds the client gone
        eventually(
            lambda: metric(url, "ernie_ops_gateway_client_disconnects_total") == 1, "disconnect counted"
        )


def test_split_is_sticky_by_header_and_by_user_field(backends, tmp_path):
    stable, candidate = backends
    with gateway(stable, candidate, tmp_path, routing=Routing("split", 50)) as url, httpx.Client() as client:
        seen: dict[str, set[str]] = {}
        for i in range(40):
            for _ in range(3):
                r = client.post(
                    url + "/v1/chat/completions",
                    json=chat(),
                    headers={"X-Session-Id": f"s{i}"},
                    timeout=GUARD_S,
                )
                seen.setdefault(f"s{i}", set()).add(r.headers["x-ernie-ops-backend"])
                assert r.status_code == 200
            r = client.post(url + "/v1/chat/completions", json=chat(user=f"u{i}"), timeout=GUARD_S)
            expected = pick(Routing("split", 50), f"u{i}")
            assert r.headers["x-ernie-ops-backend"] == expected
            assert ('"model":"cand-m"' in r.text) == (expected == CANDIDATE)
    assert all(len(backends_) == 1 for backends_ in seen.values())
    assert {b for s in seen.values() for b in s} == {STABLE, CANDIDATE}


@pytest.mark.parametrize("failure", ["http_500", "refused"])
def test_a_failing_candidate_in_split_mode_is_retried_on_stable(failure, tmp_path):
    with contextlib.ExitStack() as stack:
        stable = stack.enter_context(serve_in_thread(model="stable-m")).url
        if failure == "http_500":
            candidate = stack.enter_context(serve_in_thread(Behaviour(status=500), model="cand-m")).url
        else:
            candidate = "http://127.0.0.1:9"  # the discard port: nothing listens
        url = stack.enter_context(gateway(stable, candidate, tmp_path, routing=Routing("split", 100)))
        replies = [
            httpx.post(url + "/v1/chat/completions", json=chat(stream=i % 2 == 0), timeout=GUARD_S)
            for i in range(8)
        ]
        assert [r.status_code for r in replies] == [200] * 8
        assert {r.headers["x-ernie-ops-backend"] for r in replies} == {STABLE}
        # 5 failures in a row: the candidate rests, the next requests go to stable directly
        assert metric(url, "ernie_ops_gateway_retries_total") == 5
        assert metric(url, "ernie_ops_gateway_candidate_rested_total") == 3
        stats = httpx.get(url + "/admin/stats", headers=ADMIN, timeout=GUARD_S).json()
        assert stats["backends"]["candidate/client"]["errors"] == 8  # rested ones count for the gates
        kind = "http_5xx" if failure == "http_500" else "connect"
        assert metric(url, "ernie_ops_gateway_errors_total", backend="candidate", kind=kind) == 5
        eventually(lambda: (tmp_path / "log" / "requests.jsonl").exists(), "the log flushed")
        eventually(
            lambda: len((tmp_path / "log" / "requests.jsonl").read_text().splitlines()) == 8, "8 lines"
        )
        entry = json.loads((tmp_path / "log" / "requests.jsonl").read_text().splitlines()[0])
        assert entry["retried"] and entry["answered_by"] == STABLE
        assert [a["backend"] for a in entry["attempts"]] == [CANDIDATE, STABLE]


def test_a_failing_stable_is_relayed_to_the_client(tmp_path):
    with serve_in_thread(Behaviour(status=503)) as stable, gateway(stable.url, None, tmp_path) as url:
        r = httpx.post(url + "/v1/chat/completions", json=chat(), timeout=GUARD_S)
        assert r.status_code == 503 and "planned HTTP 503" in r.text
    with gateway("http://127.0.0.1:9", None, tmp_path / "down") as url:
        r = httpx.post(url + "/v1/chat/completions", json=chat(), timeout=GUARD_S)
        assert r.status_code == 502 and "could not be reached" in r.json()["error"]["message"]
        assert httpx.post(url + "/v1/chat/completions", content=b"[1", timeout=GUARD_S).status_code == 400


def test_shadow_answers_from_stable_and_compares_with_the_candidate(backends, tmp_path):
    stable, candidate = backends
    with gateway(stable, candidate, tmp_path, routing=Routing("shadow")) as url:
        for i in range(5):
            r = httpx.post(url + "/v1/chat/completions", json=chat(stream=i % 2 == 0), timeout=GUARD_S)
            assert r.headers["x-ernie-ops-backend"] == STABLE and '"model":"stable-m"' in r.text
        eventually(
            lambda: metric(url, "ernie_ops_gateway_shadow_comparisons_total", result="agree") == 5,
            "5 shadow answers compared",
        )
        stats = httpx.get(url + "/admin/stats", headers=ADMIN, timeout=GUARD_S).json()
        assert stats["backends"]["candidate/shadow"]["requests"] == 5
        assert stats["backends"]["stable/client"]["requests"] == 5
        log_file = tmp_path / "log" / "requests.jsonl"
        eventually(lambda: log_file.exists() and "shadow" in log_file.read_text(), "shadow logged")
        lines = [json.loads(x) for x in (tmp_path / "log" / "requests.jsonl").read_text().splitlines()]
        shadow = [x for x in lines if x.get("kind") == "shadow"]
        assert shadow and shadow[0]["agreement"] == "agree" and shadow[0]["candidate"]["model"] == "cand-m"
        assert not any("answer" in x or "request" in x for x in lines)  # no content without a masker


def test_shadow_disagreement_is_counted(tmp_path):
    with (
        serve_in_thread(model="stable-m") as stable,
        serving(create_standin({}, model="standin", default="something else")) as (candidate, _),
        gateway(stable.url, candidate, tmp_path, routing=Routing("shadow")) as url,
    ):
        assert httpx.post(url + "/v1/chat/completions", json=chat(), timeout=GUARD_S).status_code == 200
        eventually(
            lambda: metric(url, "ernie_ops_gateway_shadow_comparisons_total", result="disagree") == 1,
            "the disagreement counted",
        )


def test_a_full_shadow_queue_drops_the_copy_and_never_delays_the_client(tmp_path):
    slow = Behaviour(ttft_ms=GUARD_S * 1000)  # the candidate never answers within the test
    with (
        serve_in_thread(model="stable-m") as stable,
        serve_in_thread(slow, model="cand-m") as candidate,
        gateway(
            stable.url, candidate.url, tmp_path, routing=Routing("shadow"), shadow_queue=2, shadow_workers=1
        ) as url,
    ):
        replies = [httpx.post(url + "/v1/chat/completions", json=chat(), timeout=GUARD_S) for _ in range(10)]
        assert [r.status_code for r in replies] == [200] * 10
        # one copy in the worker's hands, two waiting; the rest dropped
        eventually(lambda: metric(url, "ernie_ops_gateway_shadow_dropped_total") == 7, "7 copies dropped")
        assert metric(url, "ernie_ops_gateway_shadow_queue_depth") == 2


def test_the_admin_api_needs_its_key_and_changes_survive_a_restart(backends, tmp_path):
    stable, candidate = backends
    with gateway(stable, candidate, tmp_path) as url:
        assert httpx.get(url + "/admin/state", timeout=GUARD_S).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert (
            httpx.post(
                url + "/admin/state", json={"mode": "split"}, headers=wrong, timeout=GUARD_S
            ).status_code
            == 401
        )
        r = httpx.post(
            url + "/admin/state", json={"mode": "split", "weight": 30, "reason": "stage 2"}, headers=ADMIN
        )
        assert r.status_code == 200 and r.json()["routing"]["revision"] == 1
        stale = httpx.post(
            url + "/admin/state", json={"weight": 50, "revision": 0}, headers=ADMIN, timeout=GUARD_S
        )
        assert stale.status_code == 409
        bad = httpx.post(url + "/admin/state", json={"mode": "canary"}, headers=ADMIN, timeout=GUARD_S)
        assert bad.status_code == 400
        assert metric(url, "ernie_ops_gateway_candidate_weight_percent") == 30
    recorded = json.loads((tmp_path / "state.json").read_text())
    assert (recorded["mode"], recorded["weight"], recorded["reason"]) == ("split", 30.0, "stage 2")
    # a restart with another mode on the command line continues with the recorded one
    with gateway(stable, candidate, tmp_path, routing=Routing("all-stable")) as url:
        state = httpx.get(url + "/admin/state", headers=ADMIN, timeout=GUARD_S).json()
        assert state["restored"] and state["routing"]["mode"] == "split" and state["routing"]["weight"] == 30
        assert state["backends"]["candidate"]["model"] == "cand-m"


def test_without_an_admin_key_the_admin_api_is_off(backends, tmp_path):
    stable, candidate = backends
    config = GatewayConfig(stable=Endpoint.parse(stable), candidate=Endpoint.parse(candidate))
    with run_in_thread(config) as g:
        r = httpx.get(url_of(g) + "/admin/state", headers=ADMIN, timeout=GUARD_S)
        assert r.status_code == 403 and "admin API is off" in r.text
        assert httpx.get(url_of(g) + "/health", timeout=GUARD_S).json()["mode"] == "all-stable"


def test_per_backend_metrics_and_the_request_log(backends, tmp_path):
    stable, candidate = backends
    with gateway(stable, candidate, tmp_path, routing=Routing("all-candidate")) as url:
        for stream in (True, False):
            body = (
                chat(stream=stream) | {"stream_options": {"include_usage": True}}
                if stream
                else chat(stream=False)
            )
            assert httpx.post(url + "/v1/chat/completions", json=body, timeout=GUARD_S).status_code == 200
        series = {"backend": "candidate", "traffic": "client"}
        assert metric(url, "ernie_ops_gateway_requests_total", status="200", **series) == 2
        assert metric(url, "ernie_ops_gateway_time_to_first_token_seconds_count", **series) == 2
        assert metric(url, "ernie_ops_gateway_e2e_request_latency_seconds_count", **series) == 2
        assert metric(url, "ernie_ops_gateway_generation_tokens_total", **series) == 8
        assert metric(url, "ernie_ops_gateway_mode", mode="all-candidate") == 1
        log_file = tmp_path / "log" / "requests.jsonl"
        eventually(lambda: log_file.exists() and len(log_file.read_text().splitlines()) == 2, "2 lines")
    entries = [json.loads(x) for x in log_file.read_text().splitlines()]
    assert {e["stream"] for e in entries} == {True, False}
    for e in entries:
        assert e["route"] == "/v1/chat/completions" and e["answered_by"] == CANDIDATE and e["status"] == 200
        (attempt,) = e["attempts"]
        assert attempt["model"] == "cand-m" and attempt["finish_reason"] == "length"
        assert attempt["completion_tokens"] == 4 and attempt["e2e_ms"] >= attempt["ttft_ms"] > 0


def test_the_quick_scan_of_a_stream_agrees_with_the_full_parse():
    from ernie_ops.rollout.answers import _parse_stream

    opening = {"model": 'm"1', "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    tokens = [
        {"model": 'm"1', "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}]}
    ] * 4
    last = {"model": 'm"1', "choices": [{"index": 0, "delta": {"content": "y"}, "finish_reason": "stop"}]}
    usage = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 7}}
    for raw in (sse(opening, *tokens, last), sse(opening, *tokens, last, usage)):
        assert read_stream(raw) == _parse_stream(raw, False)


def test_content_is_logged_only_when_asked_and_then_masked(tmp_path):
    from standin_openai import prompt_key

    messages = [{"role": "user", "content": "mail jane.doe@example.com please"}]
    answers = {prompt_key(messages): "I wrote to jane.doe@example.com"}
    with (
        serving(create_standin(answers, model="standin")) as (stable, _),
        gateway(stable, None, tmp_path, log_content=True) as url,
    ):
        body = {"model": "standin", "messages": messages, "stream": True}
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=GUARD_S)
        assert "jane.doe@example.com" in r.text  # the client gets the real answer
        log_file = tmp_path / "log" / "requests.jsonl"
        eventually(lambda: log_file.exists() and log_file.read_text(), "the line written")
    entry = json.loads(log_file.read_text())
    assert "jane.doe" not in log_file.read_text()
    assert entry["request"][0]["content"] == "mail <EMAIL_1> please"
    assert entry["answer"] == "I wrote to <EMAIL_1>"  # one numbering for the whole line


def test_content_logged_with_no_mask_says_so(tmp_path):
    log = RequestLog(tmp_path, content=True, mask=False)
    log.add({"id": "1", "request": "mail a@example.com", "answer": "done"})
    log.close()
    entry = json.loads((tmp_path / "requests.jsonl").read_text())
    assert entry["request"] == "mail a@example.com" and entry["masked"] is False
