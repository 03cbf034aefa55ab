"""The load generator (`ernie-ops bench`) against the null server on loopback: metrics of a known
workload, goodput, the time bound, failures, dataset prompts, the CLI end to end; and the SSE parser
of client.py on streams cut at awkward places."""

from __future__ import annotations

import asyncio
import heapq
import json
import random
import re
import socket
import threading
import time

import numpy as np
import pytest
from polling import free_port

from ernie_ops.cli.main import main
from ernie_ops.errors import UserError
from ernie_ops.validate import arrivals, loadgen, search, timer, tokens
from ernie_ops.validate.client import Endpoint, Reply, _read_stream, request, session
from ernie_ops.validate.null_server import Behaviour, Capacity, fail_every, serve_in_thread


def run(
    url: str, levels: list[int], n: int, *, inp: int = 20, out: int = 5, **options
) -> loadgen.BenchResult:
    workload = loadgen.Workload.synthetic(loadgen.Length(inp, inp), loadgen.Length(out, out))
    opts = loadgen.Options(levels, n, warmup=0, progress=False, **options)
    return asyncio.run(loadgen.run(Endpoint.parse(url), workload, opts, notice=print))


def test_known_workload_gives_exact_counts_and_the_servers_delays():
    with serve_in_thread(Behaviour(delay_ms=10)) as server:
        result = run(server.url, [1, 4], 8)
    assert result.ok and result.model == "null-model"
    for level in result.levels:
        assert (level.completed, level.failed, level.truncated) == (8, 0, False)
        assert level.output_tokens == 8 * 5 and level.tokens_from_usage
        assert level.input_tokens == 8 * 20  # the null server counts prompt words
        assert 9.5 <= level.ttft_ms.p50 <= 30  # type: ignore[operator]
        assert 9.5 <= level.tpot_ms.p50 <= 30  # type: ignore[operator]
        assert 9.5 <= level.itl_ms.p50 <= 30  # type: ignore[operator]
        assert level.itl_ms.n == 8 * 4
        assert 48 <= level.e2e_ms.p50 <= 120  # type: ignore[operator]
        assert level.request_throughput == pytest.approx(8 / level.duration_s)
        assert level.output_throughput == pytest.approx(40 / level.duration_s)
        assert level.total_token_throughput == pytest.approx(200 / level.duration_s)
        assert level.goodput == level.request_throughput  # no SLO: every success counts
    assert result.levels[1].request_throughput > 2 * result.levels[0].request_throughput
    data = json.loads(json.dumps(result.to_dict()))
    assert data["levels"][0]["ttft_ms"]["p99"] >= data["levels"][0]["ttft_ms"]["p50"]
    assert "replies" not in data["levels"][0]
    assert data["levels"][1]["send_lag_ms"]["n"] == 8


def test_latencies_start_when_the_request_is_written():
    # the client's timestamps against the null server's own (same CLOCK_MONOTONIC): the request is
    # written after it was due and before the server has it; the first chunk is written before it
    # arrives; TTFT and E2E are measured from the write, and the lag before it is reported apart.
    # Each side stamps a write just before making it, so the order holds on a loaded machine too
    # (the server stamped after its write: under load the client read it first, 5 runs in 20)
    with serve_in_thread(Behaviour(delay_ms=5)) as server:
        endpoint = Endpoint.parse(server.url, model="null-model")

        async def go() -> list[Reply]:
            async with session(endpoint, 4) as client:
                body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True}
                return await asyncio.gather(
                    *(request(client, endpoint, body | {"user": str(i)}) for i in range(4))
                )

        replies = asyncio.run(go())
        rows = {r.user: r for r in server.records}
    for i, reply in enumerate(replies):
        row = rows[str(i)]
        assert reply.ok and reply.sent is not None and reply.first is not None
        assert reply.start <= reply.sent <= row.arrival_ns / 1e9
        assert row.first_ns is not None and row.first_ns / 1e9 <= reply.first
        assert reply.ttft == reply.first - reply.sent and reply.latency == reply.end - reply.sent
        assert reply.send_lag == reply.sent - reply.start


def test_a_busy_client_is_reported(monkeypatch, capsys):
    with serve_in_thread() as server:
        monkeypatch.setattr(loadgen, "BUSY_CLIENT", 10.0)  # never
        result = run(server.url, [4], 40)
        assert result.levels[0].client_cpu > 0 and "used" not in capsys.readouterr().out
        monkeypatch.setattr(loadgen, "BUSY_CLIENT", 0.0)  # any use of the CPU counts as busy
        result = run(server.url, [4], 40)
    out = capsys.readouterr().out
    assert f"at c=4 this client used {result.levels[0].client_cpu:.0%} of a core" in out
    assert result.to_dict()["levels"][0]["client_cpu"] == round(result.levels[0].client_cpu, 3)


def test_goodput_counts_the_requests_meeting_the_slo():
    # one at a time, odd arrivals wait 80 ms for their first token: exactly half miss a 40 ms TTFT
    def plan(index: int, body: dict) -> Behaviour:
        return Behaviour(delay_ms=1, ttft_ms=80 if index % 2 else 0)

    with serve_in_thread(plan) as server:
        result = run(server.url, [1], 10, slo=loadgen.SLO(ttft_ms=40))
    level = result.levels[0]
    assert (level.completed, level.good) == (10, 5)
    assert level.goodput == pytest.approx(5 / level.duration_s)
    assert level.goodput == pytest.approx(level.request_throughput / 2)
    assert "TTFT <= 40 ms" in str(result.slo)


def test_slo_checks_every_bound_given():
    reply = Reply(status=200, start=0.0, first=0.1, end=0.5, completion_tokens=5)  # tpot 0.1 s
    assert loadgen.SLO(ttft_ms=100, tpot_ms=100, e2e_ms=500).met(reply)
    assert not loadgen.SLO(tpot_ms=99).met(reply)
    assert not loadgen.SLO(e2e_ms=499).met(reply)
    assert not loadgen.SLO().met(Reply(status=500, error="boom"))


def test_the_time_limit_truncates_a_level_and_cancels_what_is_in_flight():
    with serve_in_thread(Behaviour(delay_ms=100)) as server:
        started = time.monotonic()
        result = run(server.url, [2], 6, out=10, max_duration=0.3)
        elapsed = time.monotonic() - started
    level = result.levels[0]
    assert elapsed < 1.5
    assert level.truncated and (level.completed, level.cancelled, level.not_sent) == (0, 2, 4)
    assert not result.ok and "truncated" in result.problems()[0]


def test_server_errors_are_counted_with_their_message():
    with serve_in_thread(fail_every(2, Behaviour())) as server:
        result = run(server.url, [1, 4], 8)
    for level in result.levels:
        assert (level.completed, level.failed) == (4, 4)
        assert list(level.errors) == ["null server: planned HTTP 500"]
    assert not result.ok and "4/8 requests failed" in result.problems()[0]


def test_nothing_listening_fails_with_a_clear_message(tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}"
    code = main(
        ["bench", url, "--model", "m", "--num-prompts", "2", "--concurrency", "1", "--out", str(tmp_path)]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert f"nothing answers at {url}" in err and "no request was sent" in err
    assert json.loads((tmp_path / "bench.json").read_text())["ok"] is False


def test_prompts_from_a_messages_file(tmp_path):
    records = [
        {"messages": [{"role": "user", "content": "one two three"}, {"role": "assistant", "content": "a"}]},
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "q1"},
                {"role": "assistant", "content": "a1"},
                {"role": "user", "content": "q2 q2"},
                {"role": "assistant", "content": "a2"},
            ]
        },
        {"messages": [{"role": "user", "content": "only a question here"}]},  # prompt-only: fine
        {"messages": []},  # bad: skipped and counted
    ]
    path = tmp_path / "chats.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\nnot json\n")
    prompts, skipped = loadgen.read_prompts(path)
    assert prompts == [
        [{"role": "user", "content": "one two three"}],
        [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "q2 q2"},
        ],
        [{"role": "user", "content": "only a question here"}],
    ]
    assert sum(skipped.values()) == 2 and skipped["not JSON"] == 1

    workload = loadgen.Workload.from_file(path, loadgen.Length(3, 3), seed=1)
    planned = workload.requests(6)  # cycles through the prompts, each used twice
    assert sorted(p.input_tokens for p in planned) == [3, 3, 4, 4, 6, 6]
    with serve_in_thread() as server:
        opts = loadgen.Options([2], 6, warmup=0, progress=False)
        result = asyncio.run(loadgen.run(Endpoint.parse(server.url), workload, opts))
    assert result.levels[0].completed == 6
    assert result.workload["skipped_records"] == 2


def test_prompts_from_a_sharegpt_file(tmp_path):
    path = tmp_path / "share.jsonl"
    record = {
        "conversations": [
            {"from": "system", "value": "sys"},
            {"from": "human", "value": "hi"},
            {"from": "gpt", "value": "hello"},
            {"from": "human", "value": "bye"},
        ]
    }
    path.write_text(json.dumps(record) + "\n")
    prompts, _ = loadgen.read_prompts(path)
    assert prompts == [
        [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "bye"},
        ]
    ]


def test_a_file_without_usable_prompts_is_a_user_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"foo": 1}\n{"bar": 2}\n')
    with pytest.raises(UserError, match="no usable prompt") as err:
        loadgen.Workload.from_file(path, loadgen.Length(4, 4))
    assert err.value.hint and "synthetic" in err.value.hint


@pytest.mark.parametrize("text", ["5:2", "x", "0", "3:", ":4"])
def test_bad_lengths_are_user_errors(text):
    with pytest.raises(UserError):
        loadgen.Length.parse(text)


def test_lengths_and_levels_parse():
    assert loadgen.Length.parse("128:512") == loadgen.Length(128, 512)
    assert str(loadgen.Length.parse(" 64 ")) == "64"
    assert loadgen.parse_levels("1,8,32") == [1, 8, 32]
    with pytest.raises(UserError):
        loadgen.parse_levels("1,0")


def test_synthetic_prompts_are_seeded_and_distinct():
    def bodies(seed: int) -> list[dict]:
        workload = loadgen.Workload.synthetic(loadgen.Length(5, 9), loadgen.Length(1, 3), seed=seed)
        return [p.body for p in workload.requests(20)]

    first = bodies(0)
    assert first == bodies(0) and first != bodies(1)
    assert len({b["messages"][0]["content"] for b in first}) == 20
    assert all(5 <= len(b["messages"][0]["content"].split()) <= 9 for b in first)
    assert all(1 <= b["max_tokens"] <= 3 and "ignore_eos" not in b for b in first)


def test_cli_usage_error_exits_2(capsys):
    assert main(["bench", "http://127.0.0.1:9", "--input-len", "5:2"]) == 2
    assert "--input-len '5:2'" in capsys.readouterr().err


def test_cli_end_to_end_writes_json_plot_and_markdown(tmp_path, capsys):
    out = tmp_path / "bench"
    with serve_in_thread(Behaviour(delay_ms=2)) as server:
        code = main(
            [
                "bench",
                server.url,
                "--concurrency",
                "1,2",
                "--num-prompts",
                "4",
                "--input-len",
                "8:16",
                "--output-len",
                "4",
                "--ignore-eos",
                "--slo-ttft-ms",
                "1000",
                "--out",
                str(out),
            ]
        )
    printed = capsys.readouterr().out
    assert code == 0
    assert "TTFT p50" in printed and "goodput/s" in printed
    data = json.loads((out / "bench.json").read_text())
    assert data["ok"] and [lv["concurrency"] for lv in data["levels"]] == [1, 2]
    assert data["workload"]["ignore_eos"] and data["slo"]["ttft_ms"] == 1000
    assert all(lv["output_tokens"] == 16 for lv in data["levels"])
    assert (out / "bench.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "bench.md").read_text()
    assert "| load |" in md and "![latency against throughput](bench.png)" in md


class _Pieces:
    """A stand-in for aiohttp's StreamReader that hands over the body in given pieces."""

    def __init__(self, body: bytes, size: int):
        self.pieces = [body[i : i + size] for i in range(0, len(body), size)]

    async def readany(self) -> bytes:
        return self.pieces.pop(0) if self.pieces else b""


class _Response:
    def __init__(self, body: bytes, size: int):
        self.content = _Pieces(body, size)


STREAM = (
    b": keep-alive\r\n\r\n"
    b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\r\n\r\n'
    b'data: {"choices":[{"delta":{"reasoning_content":"hm"}}]}\n\n'
    b'data:{"choices":[{"delta":{"content":"Hel"}}]}\n\n'
    b'event: message\ndata: {"choices":[{"delta":{"content":"lo"},"finish_reason":"stop"}]}\n\n'
    b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
    b"data: [DONE]"  # no final newline
)


@pytest.mark.parametrize("size", [1, 2, 7, 64, len(STREAM)])
def test_sse_parser_handles_any_cut(size):
    reply = Reply(status=200)
    asyncio.run(_read_stream(reply, _Response(STREAM, size)))  # type: ignore[arg-type]
    assert reply.error is None
    assert (reply.text, reply.reasoning, reply.finish_reason) == ("Hello", "hm", "stop")
    assert (reply.prompt_tokens, reply.completion_tokens, len(reply.chunk_times)) == (3, 2, 3)


def test_sse_parser_reports_a_stream_cut_short_or_broken():
    reply = Reply(status=200)
    asyncio.run(_read_stream(reply, _Response(STREAM[:-14], 10)))  # type: ignore[arg-type]
    assert reply.error == "the stream ended without data: [DONE]" and reply.text == "Hello"
    reply = Reply(status=200)
    asyncio.run(_read_stream(reply, _Response(b'data: {"error": {"message": "oom"}}\n\n', 5)))  # type: ignore[arg-type]
    assert reply.error == "oom"


@pytest.mark.slow
def test_against_the_embedded_server(tiny_dense):
    uvicorn = pytest.importorskip("uvicorn")
    from ernie_ops.serve.engine import Engine
    from ernie_ops.serve.openai_server import create_app

    engine = Engine.load(tiny_dense, max_batch_size=4)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(engine, "tiny-ernie"), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline
            time.sleep(0.02)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        result = run(url, [1, 4], 4, inp=8, out=6)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
    assert result.ok and result.model == "tiny-ernie"
    for level in result.levels:
        assert level.completed == 4 and level.tokens_from_usage
        assert level.ttft_ms.p50 is not None and level.e2e_ms.p50 is not None
        assert level.output_tokens <= 4 * 6


# ---------------------------------------------------------------------------------------------
# open loop: arrivals, traces, lengths, tokenizers, stop conditions, windows, searches


@pytest.mark.parametrize("burstiness", [1.0, 0.5, 4.0])
def test_gamma_arrivals_span_exactly_and_keep_the_gamma_cv(burstiness):
    # seeded schedules (no clock): the span is exact by construction, the CV within sampling noise
    # (about 1/sqrt(n) relative: 0.7% at 20000; the tolerance is 5 standard errors)
    n, rate = 20_000, 100.0
    offsets = arrivals.gamma_offsets(n, rate, burstiness, seed=3)
    assert offsets[0] == 0 and np.all(np.diff(offsets) >= 0)
    assert offsets[-1] == pytest.approx((n - 1) / rate, rel=1e-9)
    stats = arrivals.ArrivalStats.of(offsets)
    assert stats.rate == pytest.approx(rate, rel=1e-9)
    assert stats.cv == pytest.approx(arrivals.target_cv(burstiness), rel=0.05)
    assert np.array_equal(offsets, arrivals.gamma_offsets(n, rate, burstiness, seed=3))
    with pytest.raises(UserError):
        arrivals.gamma_offsets(10, 0.0)
    with pytest.raises(UserError):
        arrivals.gamma_offsets(10, 1.0, burstiness=0)


def test_a_trace_loads_in_time_order_relative_to_its_first_request(tmp_path):
    path = tmp_path / "trace.jsonl"
    lines = [
        {"timestamp": 12.5, "input_length": 30, "output_length": 4},
        {"timestamp": 10.0, "prompt_tokens": 10, "output_tokens": 2},
        {"timestamp": 11.0, "input_tokens": 20, "max_tokens": 3},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    rows = arrivals.load_trace(path)
    assert [(r.offset, r.input_tokens, r.output_tokens) for r in rows] == [
        (0.0, 10, 2),
        (1.0, 20, 3),
        (2.5, 30, 4),
    ]
    assert list(arrivals.trace_offsets(rows, 2.0)) == [0.0, 2.0, 5.0]
    ms = tmp_path / "ms.jsonl"
    ms.write_text(
        '{"timestamp_ms": 1000, "input_length": 1, "output_length": 1}\n'
        '{"timestamp_ms": 1500, "input_length": 1, "output_length": 1}\n'
    )
    assert [r.offset for r in arrivals.load_trace(ms)] == [0.0, 0.5]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", ":1: not JSON"),
        ('{"input_length": 3, "output_length": 2}', ":1: no timestamp"),
        ('{"timestamp": "x", "input_length": 3, "output_length": 2}', "timestamp 'x' is not a number"),
        ('{"timestamp": 0, "output_length": 2}', ":1: no input_length"),
        ('{"timestamp": 0, "input_length": 0, "output_length": 2}', "input_length 0 is not a positive"),
    ],
)
def test_a_bad_trace_line_is_named(tmp_path, line, message):
    path = tmp_path / "t.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(UserError, match=re.escape(message)):
        arrivals.load_trace(path)


def test_lengths_from_a_normal_distribution_are_clipped_and_seeded():
    length = loadgen.Length.parse("mean=100,stdev=30,min=50,max=150")
    assert (length.low, length.high, length.mean, length.stdev) == (50, 150, 100.0, 30.0)
    rng = random.Random(0)
    drawn = np.array([length.sample(rng) for _ in range(20_000)])
    assert drawn.min() == 50 and drawn.max() == 150  # clipped at both ends
    # symmetric clipping keeps the mean; the stdev shrinks a little (5% of draws clipped)
    assert abs(drawn.mean() - 100) < 1 and 26 < drawn.std() < 30
    assert str(length) == "mean 100 stdev 30 in [50, 150]"
    assert loadgen.Length.parse("mean=8,stdev=2").high == 16  # mean + 4 stdev
    for bad in ("mean=5,stdev=-1", "stdev=3", "mean=5,foo=1", "mean=5,min=6", "mean=x"):
        with pytest.raises(UserError):
            loadgen.Length.parse(bad)


def _word_tokenizer(directory, words):
    """A tokenizer.json where every word is one token (tokenizers' WordLevel): exact counts."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["[UNK]", *sorted(set(words))])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    directory.mkdir(exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    return directory


def _sentencepiece(directory):
    """A small SentencePiece BPE model (ERNIE 4.5 checkpoints ship tokenizer.model)."""
    import sentencepiece

    directory.mkdir(exist_ok=True)
    rng = random.Random(0)
    text = [" ".join(rng.choices(loadgen.WORDS, k=30)) for _ in range(400)]
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(text),
        model_prefix=str(directory / "tokenizer"),
        vocab_size=300,
        model_type="bpe",
        minloglevel=2,
    )
    return directory


def test_prompts_have_exactly_the_tokens_asked_for(tmp_path):
    for tok in (
        tokens.load(_word_tokenizer(tmp_path / "hf", loadgen.WORDS)),
        tokens.load(_sentencepiece(tmp_path / "sp")),
    ):
        rng = random.Random(1)
        for n in (1, 7, 64, 300):
            text, count = tokens.prompt_of(tok, n, loadgen.WORDS, rng)
            assert count == n == len(tok.encode(text))


def test_the_report_says_words_without_a_tokenizer_and_tokens_with_one(tmp_path):
    directory = _sentencepiece(tmp_path / "ckpt")
    sp = tokens.load(directory)
    with serve_in_thread() as server:
        words = run(server.url, [1], 4, inp=40)
        workload = loadgen.Workload.synthetic(loadgen.Length(40, 40), loadgen.Length(2, 2))
        opts = loadgen.Options([1], 4, warmup=0, progress=False, tokenizer=directory)
        counted = asyncio.run(loadgen.run(Endpoint.parse(server.url), workload, opts))
        # the served model found by its path (vLLM and FastDeploy serve a checkpoint under its path)
        found = tokens.find(tokens.candidates(str(directory), None, None, False))
    assert found == directory
    assert words.workload["input_unit"] == "words" and "input 40 words" in loadgen.text_report(words)
    assert "tokenizer was not found" in loadgen.text_report(words)
    assert counted.workload["input_unit"] == "tokens" and "input 40 tokens" in loadgen.text_report(counted)
    assert counted.workload["input_built"]["min"] == counted.workload["input_built"]["max"] == 40
    for body in (r.body for r in workload.requests(3)):
        assert len(sp.encode(body["messages"][0]["content"])) == 40
    models = {"data": [{"id": "served", "root": str(directory)}]}
    assert tokens.find(tokens.candidates("served", models, None, False)) == directory
    with pytest.raises(UserError, match=r"no tokenizer\.json or tokenizer\.model"):
        tokens.load(tmp_path)


def test_open_loop_measures_from_the_due_time_and_reports_the_wait():
    # one slot in the client (max_concurrency 1) and a server that takes >= 15 ms per request: at
    # 200 req/s the requests queue in the client, and that wait is latency, not a lower rate
    with serve_in_thread(Behaviour(delay_ms=5)) as server:
        workload = loadgen.Workload.synthetic(loadgen.Length(5, 5), loadgen.Length(3, 3))
        opts = loadgen.Options(
            [1], rates=[200.0], num_prompts=12, max_concurrency=1, warmup=0, progress=False
        )
        result = asyncio.run(loadgen.run(Endpoint.parse(server.url), workload, opts))
    level = result.levels[0]
    assert result.ok and level.mode == "rate" and level.completed == 12 and level.label == "200 req/s c<=1"
    due = np.asarray(level.due)
    assert due[-1] - due[0] == pytest.approx(11 / 200, rel=1e-6)
    written = [r.sent for r in level.replies]
    assert all(s >= d for s, d in zip(written, due, strict=True))
    # the 12th request could not be written before 11 others had each taken >= 15 ms
    assert level.e2e_ms.p99 >= 11 * 15 * 0.99 - 55  # type: ignore[operator]
    last = level.replies[-1]
    assert last is not None and (last.end - due[-1]) > last.latency  # from due > from written
    assert level.send_lag_ms.p99 >= 100  # type: ignore[operator]
    assert level.achieved_rate is not None and level.achieved_rate < 200  # the cap held it back
    assert level.target_cv == 1.0


def test_open_loop_rate_level_against_the_null_server():
    with serve_in_thread() as server:
        workload = loadgen.Workload.synthetic(loadgen.Length(5, 5), loadgen.Length(2, 2))
        opts = loadgen.Options([1], rates=[100.0, 50.0], num_prompts=30, warmup=0, progress=False)
        result = asyncio.run(loadgen.run(Endpoint.parse(server.url), workload, opts))
        assert server.arrivals == 60
    assert result.ok and result.mode == "rate"
    assert [lv.rate for lv in result.levels] == [100.0, 50.0]
    for level in result.levels:
        assert level.completed == 30 and level.achieved_rate and level.arrival_cv is not None
    data = result.to_dict()
    assert data["levels"][0]["label"] == "100 req/s" and data["levels"][0]["target_cv"] == 1.0
    text = loadgen.text_report(result)
    assert "sent/s" in text and "when it was due" in text


def test_trace_replay_sends_the_traces_lengths(tmp_path):
    path = tmp_path / "trace.jsonl"
    rows = [{"timestamp": i * 0.01, "input_length": 3 + i, "output_length": 1 + i % 3} for i in range(6)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with serve_in_thread() as server:
        workload = loadgen.Workload.synthetic(loadgen.Length(1, 1), loadgen.Length(1, 1))
        opts = loadgen.Options(
            [1], trace=arrivals.load_trace(path), trace_scale=0.5, warmup=0, progress=False
        )
        result = asyncio.run(loadgen.run(Endpoint.parse(server.url), workload, opts))
    level = result.levels[0]
    assert result.ok and level.mode == "trace" and level.label == "trace x0.5"
    assert level.output_tokens == sum(1 + i % 3 for i in range(6))
    assert level.input_tokens == sum(3 + i for i in range(6))  # the null server counts words
    assert level.due[-1] - level.due[0] == pytest.approx(0.025)


@pytest.mark.parametrize("loop", ["closed", "open"])
def test_max_errors_stops_a_level(loop):
    with serve_in_thread(fail_every(2, Behaviour(delay_ms=2))) as server:
        workload = loadgen.Workload.synthetic(loadgen.Length(3, 3), loadgen.Length(2, 2))
        extra = {"rates": [200.0]} if loop == "open" else {}
        opts = loadgen.Options([2], 200, warmup=0, progress=False, max_errors=3, **extra)
        result = asyncio.run(loadgen.run(Endpoint.parse(server.url), workload, opts))
    level = result.levels[0]
    assert level.stopped == "4 errors > --max-errors 3"
    assert level.not_sent > 0 and level.failed >= 4 and level.completed < 100
    assert not result.ok and "stopped (4 errors > --max-errors 3)" in " ".join(result.problems())


def test_max_error_rate_waits_for_enough_requests():
    stop = loadgen.Stop(loadgen.Options([1], max_error_rate=0.1))
    bad, good = Reply(status=500, error="x"), Reply(status=200)
    for _ in range(5):
        stop.record(bad)
    assert stop.reason is None  # 5 of 5 failed, but too few have ended to judge
    for _ in range(15):
        stop.record(good)
    assert stop.reason == "error rate 5/20 = 25% > --max-error-rate 0.1" and stop.event.is_set()


def test_warmup_and_cooldown_windows_are_left_out():
    with serve_in_thread(Behaviour(delay_ms=5)) as server:
        workload = loadgen.Workload.synthetic(loadgen.Length(3, 3), loadgen.Length(2, 2))
        opts = loadgen.Options([1], 20, warmup=0, progress=False, warmup_s=0.03, cooldown_s=0.03)
        result = asyncio.run(loadgen.run(Endpoint.parse(server.url), workload, opts))
    level = result.levels[0]
    # the first request starts at once (inside the warm-up window), the last in the cool-down one
    assert level.excluded >= 2 and level.completed + level.excluded == 20
    assert level.window_s == pytest.approx(level.duration_s - 0.06)
    assert level.request_throughput == pytest.approx(level.completed / level.window_s)
    assert level.e2e_ms.n == level.completed
    assert "left out" in loadgen.text_report(result)


def test_the_null_servers_capacity_holds():
    # 2 slots of 40 ms: six requests at once end in three waves, 40 ms apart (lower bounds only)
    with serve_in_thread(capacity=Capacity(2, 40)) as server:
        result = run(server.url, [6], 6, out=4)
        records = list(server.records)
    assert result.ok and Capacity(2, 40).rate == 50
    ends = sorted(r.last_ns / 1e9 for r in records)  # type: ignore[operator]
    starts = min(r.arrival_ns for r in records) / 1e9
    assert ends[1] - starts >= 0.039 and ends[3] - starts >= 0.079 and ends[5] - starts >= 0.119
    assert result.levels[0].e2e_ms.p99 >= 0.119 * 1000 - 1  # type: ignore[operator]


# ---- the searches on a simulated server: M/D/K queue, seeded arrivals, no clock


class _Simulated:
    """A Runner stand-in: a server of `slots` slots of `service` seconds (FIFO), fed the same seeded
    gamma arrivals as a real open-loop level; each request's latency from its due time."""

    def __init__(self, slots: int, service: float, slo: loadgen.SLO, **options):
        self.slots, self.service = slots, service
        self.options = loadgen.Options([1], warmup=0, progress=False, slo=slo, **options)
        self.seed = 0
        self.calls: list[float | int] = []

    def _level(self, due: np.ndarray, label_rate: float | None, concurrency: int) -> loadgen.Level:
        free = [0.0] * self.slots
        replies: list[Reply | None] = []
        for t in due:
            begin = max(t, heapq.heappop(free))
            heapq.heappush(free, begin + self.service)
            end = begin + self.service
            replies.append(
                Reply(status=200, start=t, sent=t, first=end - self.service / 2, end=end, completion_tokens=2)
            )
        level = loadgen.summarize(
            concurrency,
            [loadgen.Planned({}, 1)] * len(due),
            replies,
            float(due[-1] - due[0]) + self.service,
            self.options.slo,
            due=list(due) if label_rate else None,
        )
        if label_rate:
            level.mode, level.rate = "rate", label_rate
        return level

    async def open(self, rate: float, n: int | None = None) -> loadgen.Level:
        self.calls.append(rate)
        self.seed += 1
        n = n or loadgen.requests_at_rate(self.options, rate)
        return self._level(arrivals.gamma_offsets(n, rate, self.options.burstiness, self.seed), rate, 0)

    async def closed(self, concurrency: int, n: int | None = None) -> loadgen.Level:
        self.calls.append(concurrency)
        n = n or 200
        # c requests in flight, each taking `service` (the server never queues them if c <= slots)
        waves = np.arange(n) // concurrency * self.service * max(1, concurrency / self.slots)
        level = self._level(waves, None, concurrency)
        level.request_throughput = n / (waves[-1] + self.service)
        return level


@pytest.mark.parametrize(("slots", "service"), [(32, 0.1), (64, 0.05)])
def test_find_max_rate_lands_within_5_percent_of_a_known_capacity(slots, service):
    capacity = slots / service
    sim = _Simulated(slots, service, loadgen.SLO(e2e_ms=2.5 * service * 1000), duration=20, precision=0.02)
    outcome = asyncio.run(search.find_max_rate(sim, [], lambda _line: None))  # type: ignore[arg-type]
    assert outcome["max_rate"] is not None
    assert 0.95 * capacity <= outcome["max_rate"] <= capacity
    assert outcome["gap"] <= 0.02 and outcome["failed_rate"] > outcome["max_rate"]
    assert sim.calls[0] == 1  # one at a time first
    met = [p for p in outcome["probes"] if p["met"]]
    assert max(p["rate"] or 0 for p in met) == outcome["max_rate"]


def test_find_max_rate_says_when_even_one_request_misses():
    sim = _Simulated(4, 0.1, loadgen.SLO(e2e_ms=50))
    outcome = asyncio.run(search.find_max_rate(sim, [], lambda _line: None))  # type: ignore[arg-type]
    assert outcome["max_rate"] is None and "even one request at a time" in outcome["reason"]
    assert "p99 E2E 100.0 ms > 50 ms" in outcome["reason"]


def test_rate_sweep_runs_synchronous_throughput_then_rates_between():
    sim = _Simulated(8, 0.1, loadgen.SLO(), rate_sweep=5, max_concurrency=16)
    levels: list[loadgen.Level] = []
    asyncio.run(search.sweep(sim, levels, lambda _line: None))  # type: ignore[arg-type]
    assert sim.calls[:2] == [1, 16]
    low, high = levels[0].request_throughput, levels[1].request_throughput
    assert [lv.rate for lv in levels[2:]] == pytest.approx(list(np.linspace(low, high, 4)[1:]))
    assert len(levels) == 5


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--request-rate", "5", "--concurrency", "4"],
            "--concurrency (closed-loop levels) does not go with",
        ),
        (["--request-rate", "5", "--find-max-rate"], "are different loads: give one"),
        (["--burstiness", "2"], "--burstiness: only for generated arrivals"),
        (["--max-concurrency", "8"], "--max-concurrency: caps an open loop"),
        (["--trace-scale", "2"], "--trace-scale: only with --trace"),
        (["--precision", "0.1"], "--precision: only with --find-max-rate"),
        (["--find-max-rate"], "--find-max-rate needs an SLO"),
        (["--request-rate", "0"], "expected positive finite requests per second"),
        (["--request-rate", "inf"], "expected positive finite requests per second"),
        (["--request-rate", "5", "--duration", "10", "--num-prompts", "9"], "give one"),
        (["--rate-sweep", "2"], "need at least 3 levels"),
        (["--max-error-rate", "1.5"], "0 <= F < 1"),
        (
            ["--find-max-rate", "--slo-e2e-ms", "9", "--rate-min", "9", "--rate-max", "3"],
            "--rate-min 9 > --rate-max 3",
        ),
        (["--input-len", "mean=4,stdev=-1"], "need stdev >= 0"),
        (["--tokenizer", "."], "no tokenizer.json or tokenizer.model"),
    ],
)
def test_cli_refuses_combinations_that_make_no_sense(capsys, argv, message):
    assert main(["bench", "http://127.0.0.1:9", *argv]) == 2
    assert message in capsys.readouterr().err


def test_cli_refuses_lengths_beside_a_trace(tmp_path, capsys):
    path = tmp_path / "t.jsonl"
    path.write_text('{"timestamp": 0, "input_length": 1, "output_length": 1}\n')
    assert main(["bench", "http://127.0.0.1:9", "--trace", str(path), "--input-len", "5"]) == 2
    assert "a trace gives every request's lengths" in capsys.readouterr().err


def test_cli_open_loop_end_to_end(tmp_path, capsys):
    out = tmp_path / "bench"
    with serve_in_thread() as server:
        code = main(
            [
                "bench",
                server.url,
                "--request-rate",
                "80,160",
                "--burstiness",
                "2",
                "--num-prompts",
                "20",
                "--output-len",
                "mean=3,stdev=1,min=1,max=5",
                "--max-errors",
                "0",
                "--out",
                str(out),
                "--json",
            ]
        )
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["ok"] and data["mode"] == "rate"
    assert [lv["label"] for lv in data["levels"]] == ["80 req/s b=2", "160 req/s b=2"]
    assert data["levels"][0]["target_cv"] == pytest.approx(2**-0.5, abs=1e-3)
    assert all(lv["completed"] == 20 for lv in data["levels"])
    assert (out / "bench.png").is_file()


def test_help_has_open_loop_examples_and_the_definitions(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = capsys.readouterr().out
    for needle in (
        "--request-rate 2,4,8",
        "--find-max-rate --slo-ttft-ms",
        "--trace traffic.jsonl",
        "TPOT",
        "GuideLLM",
        "vLLM",
    ):
        assert needle in text


@pytest.mark.parametrize("precise", [True, False])
def test_the_dispatchers_timer_never_wakes_early(monkeypatch, precise):
    if not precise:
        monkeypatch.setattr(timer, "_libc", lambda: None)  # the portable fallback

    async def go() -> list[float]:
        waker = timer.Waker()
        assert waker.precise == (precise and timer._libc() is not None)
        early = []
        try:
            for gap in (0.0003, 0.002, 0.0, -0.001, 0.004):
                due = time.perf_counter() + gap
                await waker.until(due)
                early.append(due - time.perf_counter())
        finally:
            waker.close()
        return early

    assert max(asyncio.run(go())) <= 0


def test_cli_rate_sweep_and_find_max_rate_end_to_end(tmp_path, capsys):
    sweep_argv = ["--rate-sweep", "3", "--num-prompts", "12", "--max-concurrency", "4", "--output-len", "2"]
    find_argv = ["--find-max-rate", "--slo-e2e-ms", "60000", "--rate-min", "10", "--rate-max", "40"]
    find_argv += ["--num-prompts", "16", "--output-len", "2"]
    with serve_in_thread() as server:
        sweep = main(["bench", server.url, *sweep_argv, "--out", str(tmp_path / "sweep"), "--json"])
        swept = json.loads(capsys.readouterr().out)
        found = main(["bench", server.url, *find_argv, "--out", str(tmp_path / "find")])
        printed = capsys.readouterr().out
    assert sweep == 0 and swept["mode"] == "sweep"
    levels = swept["levels"]
    assert [lv["label"] for lv in levels[:2]] == ["c=1", "c=4"] and levels[2]["mode"] == "rate"
    fastest = max(levels[0]["request_throughput"], levels[1]["request_throughput"])
    assert levels[2]["rate"] == pytest.approx(fastest, rel=1e-3)  # the sweep ends at saturation
    assert found == 0 and "every rate up to 40 req/s met the SLO" in printed
    data = json.loads((tmp_path / "find" / "bench.json").read_text())
    assert data["search"]["max_rate"] == 40
    assert [p["rate"] for p in data["search"]["probes"]] == [None, 10, 20, 40]


def test_the_tokenizer_of_a_server_started_here_is_found_from_its_record(tmp_path, monkeypatch):
    from ernie_ops.serve import lifecycle

    directory = _word_tokenizer(tmp_path / "ckpt", ["a", "b"])
    records = {
        8180: [{"port": 8180, "command": ["python", "-m", "x", "--model", str(directory), "--port", "8180"]}],
        8181: [{"port": 8181, "command": f"python -m x --model {directory} --port 8181"}],  # foreground
    }
    monkeypatch.setattr(lifecycle, "servers", lambda port=None, host=None: records.get(port, []))
    for port in (8180, 8181):
        assert tokens.find(tokens.candidates("served-name", None, port, loopback=True)) == directory
    assert tokens.find(tokens.candidates("served-name", None, 8180, loopback=False)) is None  # not ours
    assert tokens.find(tokens.candidates("served-name", None, 9999, loopback=True)) is None


def test_failed_requests_miss_the_slo_of_a_rate_search():
    # numpy interpolating between two infinities gives NaN, and NaN > bound is False: a level whose
    # p99 fell on failed requests once "met" every SLO. They count as longer than any bound.
    good = [
        Reply(status=200, start=i, sent=i, first=i + 0.01, end=i + 0.02, completion_tokens=2)
        for i in range(90)
    ]
    bad = [Reply(status=500, error="boom", start=i, end=i) for i in range(90, 100)]
    replies: list[Reply | None] = [*good, *bad]
    due = [float(i) for i in range(100)]
    slo = loadgen.SLO(ttft_ms=50, e2e_ms=50)
    level = loadgen.summarize(0, [loadgen.Planned({}, 1)] * 100, replies, 100.0, slo, due=due)
    level.rate = 1.0
    runner = _Simulated(1, 0.01, slo)
    met, seen, why = search.judge(level, runner)  # type: ignore[arg-type]
    assert not met and seen == {"ttft_ms": None, "e2e_ms": None}
    assert why == "p99 TTFT failed requests > 50 ms; p99 E2E failed requests > 50 ms"
    level.replies = [*good, *[None] * 10]  # not sent (a stop condition) counts the same
    assert not search.judge(level, runner)[0]  # type: ignore[arg-type]
    # p99 between the last real latency and the first failed one: an astronomically large number,
    # which the reason names as the failed requests it is (it printed a 300-digit TTFT)
    level = loadgen.summarize(
        0, [loadgen.Planned({}, 1)] * 100, [*good, *good[:9], *bad[:1]], 100.0, slo, due=due
    )
    level.rate = 1.0
    met, seen, why = search.judge(level, runner)  # type: ignore[arg-type]
    assert not met and seen == {"ttft_ms": None, "e2e_ms": None}
    assert why == "p99 TTFT failed requests > 50 ms; p99 E2E failed requests > 50 ms"
    slow = loadgen.summarize(0, [loadgen.Planned({}, 1)] * 90, list(good), 100.0, slo, due=due[:90])
    slow.rate = 1.5  # asked for 1.5 req/s, sent at 1.0
    met, _, why = search.judge(slow, runner)  # type: ignore[arg-type]
    assert not met and "this client could not send that fast" in why
