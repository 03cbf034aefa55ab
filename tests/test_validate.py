"""Deployment validation: `smoke`, `eval`, `compare` and their reports.

Two kinds of server: the embedded backend on the tiny ERNIE 4.5 model (the real thing, in-process),
and a scripted stand-in that answers each prompt with a text the test chose, so scores are asserted
exactly (a perfect server scores 1.0, a half-wrong one exactly its known fraction).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from standin_openai import create_standin, prompt_key, serving

from ernie_ops.cli.main import main
from ernie_ops.errors import UserError
from ernie_ops.serve.engine import Engine
from ernie_ops.serve.openai_server import create_app
from ernie_ops.validate.client import Endpoint
from ernie_ops.validate.compare import compare, load_items
from ernie_ops.validate.examples import reference_answers, write_example_suites
from ernie_ops.validate.report import md_table, to_html
from ernie_ops.validate.suite import load_suite

KEY_ENV = "ERNIE_OPS_TEST_KEY"
KEY = "sk-validate-0123456789"


@pytest.fixture(scope="module")
def embedded(tiny_dense) -> Iterator[str]:
    """The embedded backend on the tiny model, with an API key."""
    engine = Engine.load(tiny_dense, max_batch_size=4)
    with serving(create_app(engine, "tiny-ernie", api_key=KEY, max_waiting=16)) as (url, _):
        yield url
    engine.stop()


@pytest.fixture(scope="module")
def suites(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("suites")
    write_example_suites(out)
    return out


def answers_for(suites: Path, wrong: set[str] = frozenset()) -> dict[str, str]:
    """Prompt key -> the reference answer of every example item (ids in `wrong` get a wrong one)."""
    answers = {}
    for name, by_id in reference_answers().items():
        for item in load_suite(suites / name).items:
            answer = "certainly not this" if item.id in wrong else by_id[item.id]
            answers[prompt_key(item.request_messages())] = answer
    return answers


# ---------------------------------------------------------------------------------------------
# the endpoint


@pytest.mark.parametrize(
    "url, base",
    [
        ("127.0.0.1:8180", "http://127.0.0.1:8180/v1"),
        ("http://h:1/v1/", "http://h:1/v1"),
        ("https://h/v1/chat/completions", "https://h/v1"),
        ("http://h:1/prefix", "http://h:1/prefix/v1"),
    ],
)
def test_endpoint_forms(url, base):
    assert Endpoint.parse(url).base == base


def test_endpoint_key_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-1")
    assert Endpoint.parse("h:1", KEY_ENV).headers()["Authorization"] == "Bearer sk-1"
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(UserError, match=f"{KEY_ENV} is not set"):
        Endpoint.parse("h:1", KEY_ENV)
    with pytest.raises(UserError, match="not an HTTP endpoint"):
        Endpoint.parse("ftp://h/")


# ---------------------------------------------------------------------------------------------
# smoke


def test_smoke_passes_on_the_embedded_backend(embedded, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(KEY_ENV, KEY)
    code = main(["smoke", embedded, "--api-key-env", KEY_ENV, "--out", str(tmp_path), "--concurrency", "4"])
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "smoke.json").read_text())
    assert "| stop | PASS |" in (tmp_path / "smoke.md").read_text() and (tmp_path / "smoke.html").is_file()
    status = {c["name"]: c["status"] for c in report["checks"]}
    assert code == 0, printed
    assert report["passed"] and report["model"] == "tiny-ernie"
    for name in ("health", "models", "chat", "streaming", "stop", "max_tokens", "thinking"):
        assert status[name] == "PASS", (name, printed)
    assert status["overlong_prompt"] == "PASS" and status["concurrent"] == "PASS" and status["auth"] == "PASS"
    # a random model writes no JSON and calls no tool: reported, not fatal, since not expected of it
    assert status["json_output"] in ("WARN", "PASS") and status["tool_call"] in ("WARN", "PASS")
    assert status["image"] == "SKIP"
    assert re.search(r"PASS\s+stop .*finish_reason stop", printed)


def test_smoke_expecting_json_makes_it_fatal(embedded, monkeypatch, capsys):
    monkeypatch.setenv(KEY_ENV, KEY)
    code = main(["smoke", embedded, "--api-key-env", KEY_ENV, "--expect", "json", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1 and not report["passed"]
    assert {c["name"]: c["status"] for c in report["checks"]}["json_output"] == "FAIL"


def test_smoke_fails_a_server_that_ignores_stop_and_limits(capsys):
    """The stand-in ignores stop, max_tokens and the context length: those checks must FAIL."""
    with serving(create_standin({}, default="one two three four five six")) as (url, _):
        code = main(["smoke", url, "--json"])
    report = json.loads(capsys.readouterr().out)
    status = {c["name"]: c["status"] for c in report["checks"]}
    assert code == 1
    assert status["stop"] == "FAIL" and status["max_tokens"] == "FAIL" and status["overlong_prompt"] == "FAIL"
    assert status["chat"] == "PASS" and status["streaming"] == "PASS" and status["concurrent"] == "PASS"


def test_smoke_wrong_key_and_no_server_are_clear_errors(embedded, monkeypatch, capsys):
    monkeypatch.setenv(KEY_ENV, "sk-wrong-key")
    assert main(["smoke", embedded, "--api-key-env", KEY_ENV]) == 2
    assert "refused the API key" in capsys.readouterr().err
    assert main(["smoke", "127.0.0.1:9", "--timeout", "5"]) == 2
    assert "nothing answers at http://127.0.0.1:9" in capsys.readouterr().err
    assert main(["smoke", embedded, "--expect", "telepathy"]) == 2
    assert "unknown capability telepathy" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# eval


def test_eval_perfect_server_scores_one_on_every_example_suite(suites, tmp_path):
    with serving(create_standin(answers_for(suites))) as (url, _):
        for name in reference_answers():
            out = tmp_path / name
            assert main(["eval", url, "--suite", str(suites / name), "--out", str(out)]) == 0
            report = json.loads((out / "eval.json").read_text())
            assert report["summary"]["all"]["score"] == 1.0, name
            assert all(i["score"] == 1.0 and i["error"] is None for i in report["items"])
            lines = (out / "results.jsonl").read_text().splitlines()
            assert len(lines) == len(report["items"]) == len(load_suite(suites / name).items)


def test_eval_box_space_scales_a_models_grid_answers(suites, tmp_path):
    # a model answering on a 0-1000 grid (as many VL models do) scores 1.0 once told so, and is
    # wrongly scored as pixels without --box-space
    suite = suites / "boxes.jsonl"
    reference = reference_answers()["boxes.jsonl"]
    answers = {}
    for it in load_suite(suite, box_space="norm1000").items:
        assert it.image_size is not None
        size = it.image_size * 2  # (w, h, w, h): x1, y1, x2, y2
        grid = [
            {"label": b["label"], "bbox": [v * 1000 / n for v, n in zip(b["bbox"], size, strict=True)]}
            for b in json.loads(reference[it.id])
        ]
        answers[prompt_key(it.request_messages())] = json.dumps(grid)
    with serving(create_standin(answers)) as (url, _):
        scores = {}
        for space in ("norm1000", "pixels"):
            out = tmp_path / space
            assert main(["eval", url, "--suite", str(suite), "--box-space", space, "--out", str(out)]) == 0
            scores[space] = json.loads((out / "eval.json").read_text())["summary"]["all"]["score"]
    assert scores["norm1000"] == 1.0 and scores["pixels"] < 0.5


def test_eval_half_wrong_server_scores_its_known_fraction(suites, tmp_path, capsys):
    items = load_suite(suites / "text.jsonl").items
    wrong = {i.id for i in items[::2]}
    with serving(create_standin(answers_for(suites, wrong))) as (url, _):
        code = main(["eval", url, "--suite", str(suites / "text.jsonl"), "--out", str(tmp_path), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0  # scores are not failures; --min-score makes them one
    assert summary["candidate"]["all"]["score"] == pytest.approx((len(items) - len(wrong)) / len(items))
    report = json.loads((tmp_path / "eval.json").read_text())
    assert {i["id"] for i in report["items"] if i["score"] == 0.0} == wrong
    md = (tmp_path / "eval.md").read_text()
    assert all(f"| {w} |" in md for w in wrong)  # every failure listed


def test_eval_document_fields_partial_credit_is_exact(suites, tmp_path):
    """One invoice answered with one field wrong: field-level precision/recall are exact."""
    suite = load_suite(suites / "documents.jsonl")
    item = suite.items[0]
    good = json.loads(reference_answers()["documents.jsonl"][item.id])
    key = sorted(good)[0]
    bad = {**good, key: "WRONG"}
    answers = answers_for(suites)
    answers[prompt_key(item.request_messages())] = json.dumps(bad)
    with serving(create_standin(answers)) as (url, _):
        assert main(["eval", url, "--suite", str(suites / "documents.jsonl"), "--out", str(tmp_path)]) == 0
    row = next(i for i in load_items(tmp_path / "eval.json") if i["id"] == item.id)
    n = len(good)
    assert (row["tp"], row["fp"], row["fn"]) == (n - 1, 1, 1)
    assert row["score"] == pytest.approx((n - 1) / n)


def test_eval_with_baseline_gates_a_regression(suites, tmp_path):
    items = load_suite(suites / "text.jsonl").items
    wrong = {i.id for i in items[:4]}
    with (
        serving(create_standin(answers_for(suites))) as (good, _),
        serving(create_standin(answers_for(suites, wrong))) as (worse, _),
    ):
        args = [
            "eval",
            worse,
            "--suite",
            str(suites / "text.jsonl"),
            "--baseline",
            good,
            "--out",
            str(tmp_path),
        ]
        assert main(args) == 1
        assert main([*args[:-1], str(tmp_path / "same"), "--max-drop", "1.0"]) == 0
    result = json.loads((tmp_path / "compare.json").read_text())
    overall = result["metrics"][0]
    assert overall["metric"] == "score" and overall["delta"] == pytest.approx(-4 / len(items))
    assert overall["verdict"] == "regression" and not result["passed"]
    html = (tmp_path / "eval.html").read_text()
    assert "data:image/png;base64," in html and 'src="http' not in html and "<script" not in html
    assert (tmp_path / "baseline" / "eval.json").exists() and (tmp_path / "candidate" / "eval.json").exists()


def test_eval_counts_failed_requests_and_exits_one(suites, tmp_path, capsys):
    """A request that fails is scored 0, listed with its error, and makes the exit status 1."""
    item = load_suite(suites / "text.jsonl").items[1]
    fail = frozenset({prompt_key(item.request_messages())})
    with serving(create_standin(answers_for(suites), fail=fail)) as (url, _):
        assert main(["eval", url, "--suite", str(suites / "text.jsonl"), "--out", str(tmp_path)]) == 1
        assert main(["eval", url, "--model", "nope", "--suite", str(suites / "text.jsonl")]) == 2
    assert "does not serve model 'nope'" in capsys.readouterr().err
    row = next(i for i in load_items(tmp_path) if i["id"] == item.id)
    assert row["score"] == 0.0 and row["error"] == "HTTP 500: scripted failure"
    assert "HTTP 500: scripted failure" in (tmp_path / "eval.md").read_text()


def test_eval_on_the_embedded_backend(embedded, suites, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    args = ["eval", embedded, "--api-key-env", KEY_ENV, "--suite", str(suites / "text.jsonl")]
    assert main([*args, "--max-tokens", "8", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["model"] == "tiny-ernie" and len(report["items"]) == len(
        load_suite(suites / "text.jsonl").items
    )
    limits = {i.id: i.max_tokens or 8 for i in load_suite(suites / "text.jsonl").items}
    assert all(i["error"] is None and 0 < i["completion_tokens"] <= limits[i["id"]] for i in report["items"])
    assert (tmp_path / "scores.png").stat().st_size > 1000


def test_eval_usage_errors(tmp_path, capsys):
    assert main(["eval", "127.0.0.1:9"]) == 2
    assert "needs a URL and --suite" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "expected": 1, "judge": "exakt"}\n')
    assert main(["eval", "127.0.0.1:9", "--suite", str(bad)]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# compare


def items(
    scores: list[float], judge: str = "exact", counts: list[tuple[int, int, int]] | None = None
) -> list[dict]:
    rows = [{"id": f"q{i}", "judge": judge, "tags": [], "score": s} for i, s in enumerate(scores)]
    for row, (tp, fp, fn) in zip(rows, counts or [], strict=False):
        row |= {"tp": tp, "fp": fp, "fn": fn}
    return rows


def test_compare_identical_reports_have_a_zero_interval():
    result = compare(items([1, 0, 1, 1]), items([1, 0, 1, 1]))
    (m,) = result.metrics
    assert (m.a, m.b, m.delta, m.low, m.high, m.verdict) == (0.75, 0.75, 0.0, 0.0, 0.0, "ok")
    assert result.passed


def test_compare_flags_a_drop_beyond_the_allowance():
    a, b = items([1.0] * 10), items([1.0] * 9 + [0.0])
    assert not compare(a, b, max_drop=0.05).passed  # -0.10 < -0.05
    assert compare(a, b, max_drop=0.10).passed  # exactly the allowance is allowed
    m = compare(a, b, max_drop=0.05).metrics[0]
    assert m.delta == pytest.approx(-0.1) and m.low <= m.delta <= m.high <= 0.0


def test_compare_improvement_needs_the_whole_interval_above_zero():
    m = compare(items([0.0] * 20), items([1.0] * 20)).metrics[0]
    assert m.verdict == "improved" and m.low == 1.0


def test_compare_micro_f1_and_pairing():
    a = items([1.0, 0.5], "f1", [(2, 0, 0), (1, 1, 1)])
    b = items([0.5, 0.5, 1.0], "f1", [(1, 1, 1), (1, 1, 1), (2, 0, 0)])
    result = compare(a, b, max_drop=0.0)
    by_name = {m.metric: m for m in result.metrics}
    assert by_name["precision"].a == pytest.approx(3 / 4) and by_name["precision"].b == pytest.approx(2 / 4)
    assert by_name["f1"].verdict == "regression"
    assert result.only_b == ["q2"] and result.paired == 2
    with pytest.raises(UserError, match="share no item ids"):
        compare(items([1.0]), [{"id": "other", "score": 1.0}])


def test_compare_cli(tmp_path, capsys):
    for name, scores in (("a", [1, 1, 1, 1]), ("b", [1, 1, 0, 1])):
        (tmp_path / f"{name}.json").write_text(json.dumps({"items": items(scores)}))
    assert (
        main(["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(tmp_path / "c")])
        == 1
    )
    assert "FAIL: score" in capsys.readouterr().out
    assert (tmp_path / "c" / "compare.html").exists() and (tmp_path / "c" / "compare.json").exists()
    assert main(["compare", str(tmp_path / "a.json"), str(tmp_path / "a.json")]) == 0
    (tmp_path / "junk.json").write_text("[1, 2]")
    assert main(["compare", str(tmp_path / "a.json"), str(tmp_path / "junk.json")]) == 2
    assert "not an `ernie-ops eval` report" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# reports


def test_markdown_table_escapes_pipes():
    assert md_table([["a", "b"], ["x|y", 1]]) == "| a | b |\n|---|---|\n| x\\|y | 1 |\n"


def test_html_is_self_contained(tmp_path):
    (tmp_path / "p.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    page = to_html("# T\n\n| a |\n|---|\n| 1 |\n\n![plot](p.png)\n\n<script>x</script>\n", "T", tmp_path)
    assert "<table>" in page and "data:image/png;base64," in page
    assert "<script>" not in page  # raw HTML in the Markdown is escaped, not run
