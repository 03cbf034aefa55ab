"""The review queue: a real gateway in shadow mode in front of two stand-in servers that disagree (and a
judge suite), the items it writes (masked), and `ernie-ops review list|show|mark` on them."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from standin_openai import create_standin, prompt_key, serving
from test_gateway import gateway as gateway_in_thread

from ernie_ops.cli.main import main
from ernie_ops.rollout.answers import Answer
from ernie_ops.rollout.judge import LiveJudge
from ernie_ops.rollout.review import FORMAT, Case, ReviewQueue, ReviewWriter, Side
from ernie_ops.rollout.routing import Routing

GUARD_S = 30.0
PII = [{"role": "user", "content": "Send the invoice total to alice@example.com please"}]
SAME = [{"role": "user", "content": "Say hello"}]


def chat(messages: list[dict], model: str, stream: bool = False) -> dict:
    return {"model": model, "messages": messages, "stream": stream}


def eventually(check, what: str) -> None:
    deadline = time.monotonic() + GUARD_S
    while not check():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.02)


def metric_lines(url: str, name: str) -> list[str]:
    return [x for x in httpx.get(url + "/metrics", timeout=GUARD_S).text.splitlines() if x.startswith(name)]


def gateway(
    stable: str, candidate: str | None, tmp_path: Path, **options
) -> contextlib.AbstractContextManager[str]:
    """test_gateway's in-thread gateway, with a review queue in TMP_PATH/review."""
    return gateway_in_thread(stable, candidate, tmp_path, review_dir=tmp_path / "review", **options)


def review(*args: str, capsys) -> tuple[int, str, str]:
    code = main(["review", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_shadow_disagreement_is_queued_masked_and_marked(tmp_path, capsys):
    stable_answers = {prompt_key(PII): "Sent 42 EUR to alice@example.com", prompt_key(SAME): "hello"}
    candidate_answers = {prompt_key(PII): "I cannot send mail", prompt_key(SAME): "hello"}
    with (
        serving(create_standin(stable_answers, model="stable-m")) as (stable, _),
        serving(create_standin(candidate_answers, model="cand-m")) as (candidate, _),
        gateway(stable, candidate, tmp_path, routing=Routing("shadow")) as url,
    ):
        for messages, stream in ((SAME, False), (PII, True), (SAME, True)):
            r = httpx.post(
                url + "/v1/chat/completions", json=chat(messages, "stable-m", stream), timeout=GUARD_S
            )
            assert r.status_code == 200
        queue = tmp_path / "review"
        eventually(lambda: queue.is_dir() and any(queue.glob("*.json")), "the disagreement queued")
        eventually(
            lambda: (
                'reason="shadow-disagreement"} 1.0'
                in "".join(metric_lines(url, "ernie_ops_gateway_review_items"))
            ),
            "the item counted on /metrics",
        )
        compared = "".join(metric_lines(url, "ernie_ops_gateway_shadow_comparisons_total"))
        assert 'result="agree"} 2.0' in compared  # the agreeing answers are not queued

    files = list(queue.glob("*.json"))
    assert len(files) == 1
    text = files[0].read_text()
    assert "alice@example.com" not in text and "<EMAIL_1>" in text
    item = json.loads(text)
    assert item["format"] == FORMAT and item["reason"] == "shadow-disagreement" and item["masked"] is True
    assert item["request"] == [{"role": "user", "content": "Send the invoice total to <EMAIL_1> please"}]
    assert item["answers"]["stable"]["text"] == "Sent 42 EUR to <EMAIL_1>"
    assert item["answers"]["candidate"]["text"] == "I cannot send mail"
    assert {r: a["model"] for r, a in item["answers"].items()} == {
        "stable": "stable-m",
        "candidate": "cand-m",
    }
    assert item["status"] == "open" and item["detail"].startswith("the texts differ")

    d = str(queue)
    code, out, _ = review("list", "--dir", d, "--json", capsys=capsys)
    listed = json.loads(out)
    assert code == 0 and [i["id"] for i in listed["items"]] == [item["id"]] and listed["problems"] == []
    assert listed["items"][0]["models"] == {"stable": "stable-m", "candidate": "cand-m"}
    code, out, _ = review("show", item["id"], "--dir", d, capsys=capsys)
    assert code == 0 and "<EMAIL_1>" in out and "alice" not in out and "PII-masked" in out

    code, out, _ = review(
        "mark",
        item["id"],
        "wrong",
        "--note",
        "refuses a plain task",
        "--by",
        "ana",
        "--dir",
        d,
        capsys=capsys,
    )
    assert code == 0 and "wrong" in out
    marked = json.loads(files[0].read_text())
    assert marked["status"] == "wrong" and marked["marks"][0]["note"] == "refuses a plain task"
    assert marked["marks"][0]["by"] == "ana" and marked["request"] == item["request"]
    assert (
        json.loads(review("list", "--dir", d, "--status", "open", "--json", capsys=capsys)[1])["items"] == []
    )
    assert (
        len(json.loads(review("list", "--dir", d, "--status", "wrong", "--json", capsys=capsys)[1])["items"])
        == 1
    )
    code, _, err = review("mark", "no-such-item", "wrong", "--dir", d, capsys=capsys)
    assert code == 2 and "no review item no-such-item" in err


def write_suite(path: Path) -> Path:
    items = [
        {"id": "sum", "prompt": "What is 2 + 2?", "expected": 4},
        {"id": "capital", "prompt": "Capital of France?", "expected": "Paris"},
    ]
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return path


def test_a_judge_flags_the_wrong_answer_to_a_suite_prompt_and_no_mask_says_so(tmp_path, capsys):
    ask = {q: [{"role": "user", "content": q}] for q in ("What is 2 + 2?", "Capital of France?", "Other")}
    answers = {
        prompt_key(m): a for m, a in zip(ask.values(), ("4", "Lyon, mail bob@example.org", "x"), strict=True)
    }
    judge = LiveJudge.load(write_suite(tmp_path / "probes.jsonl"))
    with (
        serving(create_standin(answers, model="stable-m")) as (stable, _),
        gateway(stable, None, tmp_path, judge=judge, mask=False) as url,
    ):
        for messages in ask.values():
            r = httpx.post(url + "/v1/chat/completions", json=chat(messages, "stable-m"), timeout=GUARD_S)
            assert r.status_code == 200

        def judged() -> bool:
            found = "".join(metric_lines(url, "ernie_ops_gateway_judged_total"))
            return 'verdict="pass"} 1.0' in found and 'verdict="flagged"} 1.0' in found

        eventually(judged, "both suite answers judged (the third prompt is not in the suite)")
    items, problems = ReviewQueue(tmp_path / "review").read()
    assert problems == [] and len(items) == 1
    item = items[0].data
    assert item["reason"] == "judge" and item["id"].endswith("-judge-stable")
    assert (
        item["judge"]["item"] == "capital"
        and item["judge"]["score"] == 0.0
        and item["judge"]["name"] == "exact"
    )
    assert item["masked"] is False and "bob@example.org" in item["answers"]["stable"]["text"]
    code, out, _ = review("show", item["id"], "--dir", str(tmp_path / "review"), capsys=capsys)
    assert code == 0 and "NOT MASKED" in out and "capital" in out


def test_in_shadow_mode_the_judge_scores_the_candidate_too(tmp_path):
    messages = [{"role": "user", "content": "Capital of France?"}]
    judge = LiveJudge.load(write_suite(tmp_path / "probes.jsonl"))
    with (
        serving(create_standin({prompt_key(messages): "Paris"}, model="stable-m")) as (stable, _),
        serving(create_standin({prompt_key(messages): "Lyon"}, model="cand-m")) as (candidate, _),
        gateway(stable, candidate, tmp_path, routing=Routing("shadow"), judge=judge) as url,
    ):
        r = httpx.post(url + "/v1/chat/completions", json=chat(messages, "stable-m", True), timeout=GUARD_S)
        assert r.status_code == 200 and "Paris" in r.text
        eventually(lambda: len(list((tmp_path / "review").glob("*.json"))) == 2, "two items")
    items, _ = ReviewQueue(tmp_path / "review").read()
    by_reason = {i.reason: i.data for i in items}
    assert by_reason["judge"]["judge"]["backend"] == "candidate"
    assert by_reason["judge"]["answers"]["candidate"]["text"] == "Lyon"
    assert by_reason["shadow-disagreement"]["answers"]["stable"]["text"] == "Paris"


def case(rid: str, reason: str = "shadow-disagreement", at: float | None = None) -> Case:
    side = Side("stable", "http://s/v1", Answer(model="m", text="a"))
    other = Side("candidate", "http://c/v1", Answer(model="n", text="b"))
    c = Case(rid, "/v1/chat/completions", {"messages": SAME}, [side, other], reason, "differ")
    if at is not None:
        c.time = at
    return c


def test_list_filters_and_a_truncated_item_is_reported_not_fatal(tmp_path, capsys):
    writer = ReviewWriter(tmp_path, CollectorRegistry(), mask=True)
    day = 86400.0
    old, new = time.time() - 3 * day, time.time()
    writer.submit(case("a-1", at=old))
    writer.submit(case("a-2", at=new))
    writer.close()
    assert writer.written == 2
    good = (tmp_path / "a-2-shadow.json").read_text()
    (tmp_path / "a-3-shadow.json").write_text(good[: len(good) // 2])  # a partial copy
    (tmp_path / ".a-4-shadow.json.x1.tmp").write_text("{")  # a write cut short: never an item

    code, out, err = review("list", "--dir", str(tmp_path), "--since", "1d", capsys=capsys)
    assert code == 1 and "a-2-shadow" in out and "a-1-shadow" not in out
    assert "a-3-shadow.json" in err and "truncated" in err and ".a-4" not in err
    code, out, _ = review("list", "--dir", str(tmp_path), "--reason", "judge", "--json", capsys=capsys)
    assert code == 1 and json.loads(out)["items"] == []
    code, _, err = review("show", "a-3-shadow", "--dir", str(tmp_path), capsys=capsys)
    assert code == 2 and "truncated" in err
    code, _, err = review("list", "--dir", str(tmp_path), "--since", "yesterday", capsys=capsys)
    assert code == 2 and "neither an age nor a date" in err


def test_a_full_queue_drops_and_counts_and_the_stable_path_never_waits(tmp_path, monkeypatch):
    registry = CollectorRegistry()
    writer = ReviewWriter(tmp_path, registry, capacity=1)
    release = threading.Event()
    real = writer._write
    monkeypatch.setattr(writer, "_write", lambda c: (release.wait(GUARD_S), real(c)))
    assert writer.submit(case("b-1"))
    eventually(lambda: writer._cases.qsize() == 0, "the writer took the first case")
    assert writer.submit(case("b-2"))  # waits in the queue
    started = time.perf_counter()
    assert not writer.submit(case("b-3"))  # full: dropped at once
    assert time.perf_counter() - started < 1.0
    assert registry.get_sample_value("ernie_ops_gateway_review_dropped_total", {"why": "full"}) == 1.0
    release.set()
    writer.close()
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["b-1-shadow.json", "b-2-shadow.json"]


def test_an_id_taken_already_gets_a_suffix_and_the_marked_item_stays(tmp_path):
    queue = ReviewQueue(tmp_path)
    for _ in range(2):  # a gateway restarted within the second: its request ids start over
        writer = ReviewWriter(tmp_path, CollectorRegistry())
        writer.submit(case("d-1"))
        writer.close()
        if not queue.get("d-1-shadow").data["marks"]:
            queue.mark("d-1-shadow", "correct", "fine")
    assert queue.get("d-1-shadow").status == "correct"
    assert queue.get("d-1-shadow.2").status == "open" and queue.get("d-1-shadow.2").id == "d-1-shadow.2"


def test_retention_deletes_old_items_whole_by_the_queue_and_by_gc(tmp_path, capsys):
    queue = ReviewQueue(tmp_path / "review")
    writer = ReviewWriter(queue.directory, CollectorRegistry())
    for rid in ("c-1", "c-2", "c-3"):
        writer.submit(case(rid))
    writer.close()
    old = time.time() - 40 * 86400

    def age(name: str) -> None:
        os.utime(queue.directory / name, (old, old))

    age("c-1-shadow.json")
    assert [p.name for p in queue.prune(30 * 86400)] == ["c-1-shadow.json"]
    age("c-2-shadow.json")  # gc over the queue directory: each item is a unit
    assert main(["gc", str(queue.directory), "--older-than", "30d", "--json"]) == 0
    deleted = json.loads(capsys.readouterr().out)["deleted"]
    assert [Path(d["path"]).name for d in deleted] == ["c-2-shadow.json"]
    assert sorted(p.name for p in queue.directory.glob("*.json")) == ["c-3-shadow.json"]


def test_gc_of_runs_collects_old_review_items_and_keeps_the_gateway_state(tmp_path, capsys):
    runs = tmp_path / "runs"
    writer = ReviewWriter(runs / "gateway" / "review", CollectorRegistry())
    writer.submit(case("e-1"))
    writer.submit(case("e-2"))
    writer.close()
    (runs / "gateway" / "state.json").write_text("{}")
    old = time.time() - 40 * 86400
    for path in (runs / "gateway" / "state.json", runs / "gateway" / "review" / "e-1-shadow.json"):
        os.utime(path, (old, old))
    assert main(["gc", str(runs), "--older-than", "30d", "--json"]) == 0
    deleted = [Path(d["path"]).name for d in json.loads(capsys.readouterr().out)["deleted"]]
    assert deleted == ["e-1-shadow.json"]
    assert (runs / "gateway" / "state.json").exists()
    assert (runs / "gateway" / "review" / "e-2-shadow.json").exists()


@pytest.mark.parametrize(
    "args", [["--judge-suite", "missing.jsonl"], ["--judge-suite", "s.jsonl", "--no-review"]]
)
def test_gateway_judge_options_are_checked(tmp_path, capsys, args, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_suite(tmp_path / "s.jsonl")
    code = main(["gateway", "run", "--stable", "127.0.0.1:1", "--port", "0", *args])
    err = capsys.readouterr().err
    assert code == 2 and ("does not exist" in err or "--no-review" in err)
