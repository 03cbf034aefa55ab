"""The load generator (`ernie-ops bench`) against the null server on loopback: metrics of a known
workload, goodput, the time bound, failures, dataset prompts, the CLI end to end; and the SSE parser
of client.py on streams cut at awkward places."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest

from ernie_ops.cli.main import main
from ernie_ops.errors import UserError
from ernie_ops.validate import loadgen
from ernie_ops.validate.client import Endpoint, Reply, _read_stream, request, session
from ernie_ops.validate.null_server import Behaviour, fail_every, serve_in_thread


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
    assert f"at concurrency 4 this client used {result.levels[0].client_cpu:.0%} of a core" in out
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


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_nothing_listening_fails_with_a_clear_message(tmp_path, capsys):
    url = f"http://127.0.0.1:{_closed_port()}"
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
    assert "| concurrency |" in md and "![latency against throughput](bench.png)" in md


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
