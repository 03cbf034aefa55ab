"""The embedded OpenAI-compatible server, run for real (uvicorn on loopback) on the tiny ERNIE 4.5 model.

The clients are the official `openai` package and raw httpx (for what the openai client would never
send). The reference for every generation is `Engine.generate` on the same prompt ids: the server
must not change what the engine produces.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from standin_openai import serving
from test_openai_hardening import wait_healthy

from ernie_ops.serve.engine import Engine, SamplingParams
from ernie_ops.serve.openai_server import ReasoningStream, create_app, split_reasoning

MODEL = "tiny-ernie"
KEY = "sk-test-0123456789"
THINK_END_ID = 26  # "</think>" is one piece of the tiny tokenizer (checked in the test that uses it)


def wait_idle(engine: Engine, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while engine.has_work():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def greedy(max_tokens: int, **kwargs) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, **kwargs)


@pytest.fixture(scope="module")
def engine(tiny_dense) -> Iterator[Engine]:
    eng = Engine.load(tiny_dense, max_batch_size=4, reference=True)
    yield eng
    eng.stop()


@pytest.fixture(scope="module")
def server(engine) -> Iterator[tuple[str, object]]:
    app = create_app(engine, MODEL, api_key=KEY, max_waiting=8)
    with serving(app) as (url, _):
        yield url, app


@pytest.fixture(scope="module")
def url(server) -> str:
    return server[0]


@pytest.fixture(scope="module")
def client(url) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def http(url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
        yield c


def chat_ids(engine: Engine, text: str) -> list[int]:
    return engine.chat_prompt([{"role": "user", "content": text}])


# ---------------------------------------------------------------------------------------------
# generation


def test_chat_equals_engine_greedy_with_usage(client, engine):
    ref = engine.generate([chat_ids(engine, "Hello there")], greedy(12))[0]
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hello there"}],
        max_tokens=12,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    choice = r.choices[0]
    assert choice.message.content == ref.text and ref.text
    assert getattr(choice.message, "reasoning_content", None) is None  # no </think>: content only
    assert choice.finish_reason == "length"
    assert r.model == MODEL and r.id.startswith("chatcmpl-")
    assert r.usage.prompt_tokens == len(ref.prompt_token_ids)
    assert r.usage.completion_tokens == len(ref.token_ids) == 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12


def test_chat_stream_deltas_concatenate_to_the_non_streamed_text(client):
    kwargs = dict(
        model=MODEL,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell a story"}],
        max_completion_tokens=20,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    whole = client.chat.completions.create(**kwargs)
    chunks = list(
        client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs)
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert reasons == ["length"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 20
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # really streamed


def test_completions_equal_engine_greedy_streamed_or_not(client, engine):
    prompt = "The quick brown fox jumps over"
    ref = engine.generate([prompt], greedy(10))[0]
    r = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=10, temperature=0, extra_body={"ignore_eos": True}
    )
    assert r.choices[0].text == ref.text
    assert r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ref.prompt_token_ids), 10)
    stream = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=10, temperature=0, stream=True, extra_body={"ignore_eos": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks) == ref.text
    assert chunks[-1].choices[0].finish_reason == "length"
    # token ids as the prompt give the same result
    by_ids = client.completions.create(
        model=MODEL,
        prompt=ref.prompt_token_ids,
        max_tokens=10,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert by_ids.choices[0].text == ref.text


def test_stop_string_ends_the_text_before_it(client, engine):
    ref = engine.generate([chat_ids(engine, "Count to ten")], greedy(24))[0]
    text = ref.text
    start = next(
        i for i in range(4, len(text) - 3) if "\ufffd" not in text[i : i + 3] and text[i : i + 3].strip()
    )
    stop = text[start : start + 3]
    messages = [{"role": "user", "content": "Count to ten"}]
    extra = {"extra_body": {"ignore_eos": True}}
    r = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=24, temperature=0, stop=stop, **extra
    )
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == text[: text.find(stop)]
    streamed = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=24,
        temperature=0,
        stop=[stop, "zzzz"],
        stream=True,
        **extra,
    )
    chunks = list(streamed)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text[: text.find(stop)]
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_seeded_sampling_matches_the_engine(client, engine):
    params = dict(max_tokens=16, temperature=1.0, top_p=0.9, top_k=40, repetition_penalty=1.1, seed=7)
    ref = engine.generate([chat_ids(engine, "Pick words")], SamplingParams(ignore_eos=True, **params))[0]
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Pick words"}],
        max_tokens=16,
        temperature=1.0,
        top_p=0.9,
        seed=7,
        extra_body={"top_k": 40, "repetition_penalty": 1.1, "ignore_eos": True},
    )
    assert r.choices[0].message.content == ref.text


def test_thinking_output_is_split_at_the_end_marker(client, engine):
    assert engine.tokenizer.convert_tokens_to_ids("</think>") == THINK_END_ID
    ids = chat_ids(engine, "think about it")
    # a random model emits </think> only by chance: find a seed whose sample contains it
    candidates = engine.generate(
        [ids] * 40,
        [SamplingParams(max_tokens=48, temperature=2.0, seed=s, ignore_eos=True) for s in range(40)],
    )
    seed = next(s for s, r in enumerate(candidates) if THINK_END_ID in r.token_ids)
    ref = engine.generate([ids], SamplingParams(max_tokens=48, temperature=2.0, seed=seed, ignore_eos=True))[
        0
    ]
    before, _, after = ref.text.partition("</think>")
    assert _ == "</think>"
    kwargs = dict(
        model=MODEL,
        messages=[{"role": "user", "content": "think about it"}],
        max_tokens=48,
        temperature=2.0,
        top_p=1.0,  # the engine's default; the server's comes from generation_config.json
        seed=seed,
    )
    r = client.chat.completions.create(**kwargs, extra_body={"ignore_eos": True})
    assert r.choices[0].message.reasoning_content == before
    assert r.choices[0].message.content == after
    thinking = {"ignore_eos": True, "chat_template_kwargs": {"enable_thinking": True}}
    chunks = list(client.chat.completions.create(**kwargs, stream=True, extra_body=thinking))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == before
    assert "".join(d.content or "" for d in deltas) == after


def test_reasoning_stream_holds_back_a_split_marker():
    s = ReasoningStream(thinking=True)
    assert s.feed("abc</th") == ("abc", "")
    assert s.feed("ink>def") == ("", "def")
    assert s.feed("</think>x") == ("", "</think>x")  # only the first marker splits
    plain = ReasoningStream(thinking=False)
    assert plain.feed("a<") == ("", "a")
    assert plain.feed("b", final=True) == ("", "<b")
    assert split_reasoning("no marker", thinking=False) == (None, "no marker")
    assert split_reasoning("x</think>y", thinking=False) == ("x", "y")


# ---------------------------------------------------------------------------------------------
# endpoints and errors


def test_health_models_and_metrics(client, http, url):
    assert httpx.get(f"{url}/health").status_code == 200
    assert [m.id for m in client.models.list()] == [MODEL]
    client.completions.create(model=MODEL, prompt="hi", max_tokens=3, temperature=0)
    http.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "n": 2})
    assert httpx.get(f"{url}/metrics").status_code == 401  # the key, as everywhere but /health
    text = http.get("/metrics").text
    assert 'ernie_ops_requests_total{endpoint="completions",status="200"}' in text
    assert 'ernie_ops_requests_total{endpoint="completions",status="400"}' in text
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line[0] != "#"}
    # FastDeploy's names where it measures the same quantity (serve/metrics.py), so one dashboard reads both
    assert values["fastdeploy:prompt_tokens_total"] > 0
    assert values["fastdeploy:generation_tokens_total"] >= 3
    assert values["fastdeploy:request_success_total"] >= 1
    assert values["fastdeploy:time_to_first_token_seconds_count"] >= 1
    assert values["fastdeploy:e2e_request_latency_seconds_count"] >= 1
    assert values['fastdeploy:e2e_request_latency_seconds_bucket{le="+Inf"}'] >= 1
    assert "fastdeploy:num_requests_running" in values and "fastdeploy:num_requests_waiting" in values
    ours = {name.split("{")[0] for name in values if not name.startswith("fastdeploy:")}
    assert ours == {"ernie_ops_requests_total", "ernie_ops_requests_created"}  # only what FastDeploy lacks


def test_health_is_503_until_the_engine_runs(engine):
    idle = Engine(engine.model, engine.tokenizer)  # same weights, engine thread never started
    app = create_app(idle, MODEL)

    async def probe() -> int:
        # ASGITransport runs no lifespan, so the engine thread stays off
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return (await c.get("/health")).status_code

    assert asyncio.run(probe()) == 503


CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({**CHAT, "max_tokens": "ten"}, "max_tokens"),
        ({**CHAT, "temperature": "hot"}, "temperature"),
        ({**CHAT, "messages": "hi"}, "messages"),
        ({**CHAT, "messages": []}, "messages"),
        ({**CHAT, "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({**CHAT, "messages": [{"role": "user"}]}, "messages[0].content"),
        ({**CHAT, "n": 2}, "n"),
        ({**CHAT, "stop": ""}, "stop"),
        ({**CHAT, "top_p": 0}, "top_p"),
        ({**CHAT, "max_tokens": 0}, "max_tokens"),
        ({"messages": CHAT["messages"]}, "model"),
        ([1, 2, 3], None),
    ],
)
def test_bad_chat_requests_are_400_with_the_openai_error_shape(http, body, param):
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"]
    if param:
        assert error["param"] == param


def test_malformed_json_and_bad_completion_prompts_are_400(http):
    r = http.post(
        "/v1/chat/completions",
        content=b'{"model": "x", "messages": [',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    for prompt in ["", ["a", "b"], [99999]]:
        r = http.post("/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 2})
        assert r.status_code == 400, (prompt, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"


def test_api_key_is_required(url):
    for headers in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}]:
        r = httpx.post(f"{url}/v1/chat/completions", json=CHAT, headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["type"] == "authentication_error"
    bad = openai.OpenAI(base_url=f"{url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_unknown_model_and_route_are_404(client, http):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    assert err.value.body["code"] == "model_not_found"  # type: ignore[index]
    r = http.get("/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()


def test_prompt_over_the_context_is_refused(http, engine):
    long_prompt = "hello " * (engine.max_length + 10)
    r = http.post("/v1/completions", json={"model": MODEL, "prompt": long_prompt, "max_tokens": 4})
    assert r.status_code in (400, 413)
    assert r.json()["error"]["code"] == "context_length_exceeded"
    # a prompt that fits, with max_tokens that do not
    r = http.post("/v1/chat/completions", json={**CHAT, "max_tokens": engine.max_length})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert not engine.has_work()  # refused before reaching the engine


# ---------------------------------------------------------------------------------------------
# disconnects, back-pressure, shutdown

LONG = {
    "model": MODEL,
    "prompt": "Once upon a time",
    "max_tokens": 3000,
    "temperature": 0,
    "ignore_eos": True,
}


def test_client_disconnect_mid_stream_cancels_the_request(client, engine, server):
    app = server[1]
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "go on forever"}],
        max_tokens=3000,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    for seen, _ in enumerate(stream, start=1):
        if seen == 4:
            break
    assert engine.has_work()
    stream.close()
    assert wait_idle(engine), "the engine kept generating for a client that left"
    assert app.state.server.in_flight == {}


def test_client_disconnect_while_waiting_non_streamed_cancels(url, engine, server):
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{url}/v1/completions", json=LONG, headers={"Authorization": f"Bearer {KEY}"}, timeout=1.0
        )
    assert wait_idle(engine), "a non-streamed request outlived its client"
    assert server[1].state.server.in_flight == {}


def test_full_queue_gives_429_and_frees_up(tiny_dense):
    busy = Engine.load(tiny_dense, max_batch_size=1)
    app = create_app(busy, MODEL, max_waiting=0)  # one running request and no queue at all
    with serving(app) as (url, _), httpx.Client(base_url=url, timeout=30) as http:
        with http.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as first:
            assert first.status_code == 200
            lines = first.iter_lines()
            assert next(lines).startswith("data: ")
            r = http.post("/v1/completions", json={**LONG, "max_tokens": 2})
            assert r.status_code == 429
            assert r.json()["error"]["type"] == "rate_limit_error"
        assert wait_idle(busy)
        deadline = time.monotonic() + 5
        while app.state.server.in_flight and time.monotonic() < deadline:
            time.sleep(0.02)
        r = http.post("/v1/completions", json={**LONG, "max_tokens": 2})
        assert r.status_code == 200, r.text
    assert not busy.running  # the server's shutdown stopped the engine thread


def test_shutdown_cancels_in_flight_streams_and_stops_the_engine(tiny_dense, monkeypatch):
    eng = Engine.load(tiny_dense, max_batch_size=2)
    step = eng.step

    def slow_step() -> int:  # 3000 tokens then take 15 s or more: still running however late we look
        time.sleep(0.005)
        return step()

    monkeypatch.setattr(eng, "step", slow_step)
    app = create_app(eng, MODEL)
    with serving(app, graceful_s=0.5) as (url, server):
        http = httpx.Client(base_url=url, timeout=30)
        response = http.send(
            http.build_request("POST", "/v1/completions", json={**LONG, "stream": True}), stream=True
        )
        lines = (json.loads(line.removeprefix("data: ")) for line in response.iter_lines() if line)
        # the first chunk is sent on admission; wait for generated text so the request surely runs
        assert next(c for c in lines if c["choices"][0]["text"])["object"] == "text_completion"
        with eng._step_lock:  # between two steps: mid-step the request may sit in neither list
            assert eng.has_work()
        server.should_exit = True  # what SIGINT / SIGTERM does
        deadline = time.monotonic() + 15
        while eng.running and time.monotonic() < deadline:
            time.sleep(0.05)
        response.close()
        http.close()
    assert not eng.running
    # nothing left in the engine, and nothing keeps stepping it (sampled for a while, not once)
    for _ in range(10):
        assert not eng.has_work()
        time.sleep(0.05)


def test_run_serves_on_loopback_and_exits_cleanly_on_sigint(tiny_dense):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = (
        "import sys; from ernie_ops.serve.openai_server import run; run(sys.argv[1], port=int(sys.argv[2]))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tiny_dense), str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_healthy(proc, port)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        # the served name defaults to the checkpoint directory's name
        r = client.completions.create(model=tiny_dense.name, prompt="Hello", max_tokens=3, temperature=0)
        assert r.choices[0].finish_reason in ("stop", "length")
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=30)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert f"http://127.0.0.1:{port}" in out  # uvicorn's "running on" line: loopback, not 0.0.0.0
