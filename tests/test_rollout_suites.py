"""The rollout's suite gates (judged agreement with stable, the eval suite re-run), their spec keys
and the rollout report, on scripted stand-in servers."""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
from standin_openai import create_standin, prompt_key, serving
from test_gateway_rollout import rig, roll, spec_for

from ernie_ops.errors import UserError
from ernie_ops.rollout import report, suitegates
from ernie_ops.rollout.controller import ControllerState
from ernie_ops.rollout.spec import AgreementGate, EvalGate, Gates, load_rollout
from ernie_ops.validate.client import Endpoint

ITEMS = [
    ("What is the capital of France?", "Paris"),
    ("What is 17 + 25?", "42"),
    ("Name a primary colour.", "red"),
    ("Opposite of cold?", "hot"),
]


def answers(transform) -> dict[str, str]:
    return {prompt_key([{"role": "user", "content": q}]): transform(a) for q, a in ITEMS}


def suite_file(tmp_path: Path) -> Path:
    path = tmp_path / "suite.jsonl"
    path.write_text("".join(json.dumps({"prompt": q, "expected": a}) + "\n" for q, a in ITEMS))
    return path


@contextlib.contextmanager
def models(candidate_answer, names=("stable-m", "cand-m")):
    """(stable URL, candidate URL): stable answers every item right; the candidate as told."""
    with (
        serving(create_standin(answers(str), model=names[0])) as (stable, _),
        serving(create_standin(answers(candidate_answer), model=names[1], default="hm")) as (cand, _),
    ):
        yield stable, cand


def test_a_judged_agreement_accepts_the_same_answer_worded_otherwise_and_fails_a_different_one(tmp_path):
    gates = Gates(min_agreement=0.9, agreement=AgreementGate(str(suite_file(tmp_path))))
    with models(lambda a: f"Let me think. The answer is {a}.") as (stable, cand):
        figures = suitegates.run(gates, Endpoint.parse(stable), Endpoint.parse(cand))
    assert figures == {"failed": None, "judged_agreement": 1.0, "judged_compared": 4}
    with models(lambda a: "London" if a == "Paris" else a) as (stable, cand):
        figures = suitegates.run(gates, Endpoint.parse(stable), Endpoint.parse(cand))
    assert figures["judged_agreement"] == 0.75
    assert figures["failed"] == "judged agreement with stable 0.750 < 0.9"


def test_an_eval_gate_fails_below_min_score_or_beyond_max_drop_from_stable(tmp_path):
    suite = str(suite_file(tmp_path))
    half_wrong = lambda a: a if a in ("Paris", "42") else "no idea"  # noqa: E731
    with models(half_wrong) as (stable, cand):
        args = (Endpoint.parse(stable), Endpoint.parse(cand))
        dropped = suitegates.run(Gates(eval=EvalGate(suite, max_drop=0.1)), *args)
        low = suitegates.run(Gates(eval=EvalGate(suite, min_score=0.6)), *args)
        fine = suitegates.run(Gates(eval=EvalGate(suite, min_score=0.5, max_drop=0.5)), *args)
    assert dropped["eval_score"] == 0.5 and dropped["eval_stable_score"] == 1.0
    assert dropped["failed"] == "eval score 0.500 is 0.500 below stable's 1.000 (max_drop 0.1)"
    assert low["failed"] == "eval score 0.500 < 0.6" and "eval_stable_score" not in low
    assert fine["failed"] is None


@pytest.mark.parametrize("good", [True, False])
def test_the_controller_waits_for_the_stage_suite_gates_and_rolls_back_on_them(good, tmp_path):
    suite = str(suite_file(tmp_path))
    candidate = str if good else (lambda a: "no idea")
    with models(candidate) as (stable, cand), rig(cand, tmp_path, stable_url=stable) as url:
        spec = spec_for(url, min_agreement=0.0)
        first = replace(spec.stages[1], gates=replace(spec.gates, eval=EvalGate(suite, max_drop=0.1)))
        spec = replace(spec, stages=[spec.stages[0], first, spec.stages[2]])
        status, controller, statuses = roll(url, tmp_path, spec)
    assert [s for s in statuses if s != 200] == []
    if good:
        assert status == "promoted"
        passed = [e for e in controller.state.timeline if e["event"] == "passed"][1]
        assert passed["figures"]["eval_score"] == 1.0 and passed["figures"]["eval_stable_score"] == 1.0
    else:
        assert status == "rolled_back"
        last = controller.state.timeline[-1]
        assert last["stage"] == 1 and "eval score 0.000 is 1.000 below stable's" in last["reason"]


def test_the_report_is_markdown_and_one_html_page_with_the_timeline_chart(tmp_path):
    spec = spec_for("http://127.0.0.1:1")
    state = ControllerState(status="rolled_back", stage=1)
    state.timeline = [
        {"time": 100.0, "event": "stage", "stage": 0, "mode": "shadow", "weight": 0.0},
        {
            "time": 101.0,
            "event": "passed",
            "stage": 0,
            "figures": {"agreement": 1.0, "candidate_requests": 12},
        },
        {"time": 101.0, "event": "stage", "stage": 1, "mode": "split", "weight": 20.0},
        {
            "time": 102.5,
            "event": "rollback",
            "stage": 1,
            "reason": "stage 2 (split 20%): error rate 0.500 > 0.05",
            "figures": {"error_rate": 0.5, "candidate_requests": 8},
            "rollback_s": 0.012,
        },
    ]
    md, page = report.write(spec, state, tmp_path / "out")
    text = md.read_text()
    assert text.startswith("# Rollout: rolled_back")
    assert "**Rolled back** to all-stable: stage 2 (split 20%): error rate 0.500 > 0.05." in text
    assert "took effect 0.012 s after" in text
    assert "| 2.5 | rollback | split 20% | stage 2 (split 20%): error rate 0.500 > 0.05 |" in text
    assert "![candidate weight over time](timeline.svg)" in text
    html = page.read_text()
    assert 'src="data:image/svg+xml;base64,' in html and "<table>" in html
    svg = (tmp_path / "out" / "timeline.svg").read_text()
    assert "<title>shadow</title>" in svg and 'fill="#d62728"' in svg  # the shadow band, the rollback


def write_spec(tmp_path: Path, text: str) -> Path:
    (tmp_path / "s.jsonl").write_text('{"prompt": "hi", "expected": "hello"}\n')
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_suite_gate_keys_are_checked_with_file_and_line(tmp_path):
    path = write_spec(
        tmp_path,
        "gateway: http://127.0.0.1:8200\n"
        "gates:\n"
        "  min_agreement: 0.9\n"
        "  agreement: {suite: s.jsonl, judg: f1}\n"
        "stages:\n"
        "  - {mode: split, weight: 5, gates: {eval: {suite: nowhere.jsonl}}}\n"
        "  - {mode: split, weight: 9, gates: {eval: {suite: s.jsonl, min_score: 0.5, judge: exakt}}}\n",
    )
    with pytest.raises(UserError) as err:
        load_rollout(path)
    text = str(err.value)
    assert "r.yaml:2: error: gates.agreement.judg: unknown key" in text and "did you mean 'judge'" in text
    assert "r.yaml:5: error: stages[0].gates.eval: an eval gate needs min_score or max_drop" in text
    assert "stages[0].gates.eval.suite: no suite file nowhere.jsonl" in text
    assert "stages[1].gates.eval.judge: unknown judge 'exakt'" in text and "did you mean 'exact'" in text


def test_a_stage_gates_replace_only_the_keys_they_name_and_suites_are_found_beside_the_spec(tmp_path):
    path = write_spec(
        tmp_path,
        "gateway: http://127.0.0.1:8200\n"
        "gates: {max_error_rate: 0.02, e2e_p99_s: 9}\n"
        "stages:\n"
        "  - {mode: split, weight: 5, gates: {eval: {suite: s.jsonl, max_drop: 0.01}, e2e_p99_s: 3}}\n"
        "  - {mode: split, weight: 50}\n",
    )
    spec = load_rollout(path)
    first = spec.stages[0].gates
    assert first is not None and first.max_error_rate == 0.02 and first.e2e_p99_s == 3.0
    assert first.eval is not None and first.eval.suite == str(tmp_path / "s.jsonl")
    assert spec.stages[1].gates is None and spec.gates.eval is None


def test_haproxy_rollouts_refuse_a_shadow_stage_and_latency_gates_without_its_log(tmp_path):
    path = write_spec(
        tmp_path,
        "haproxy: {socket: /nowhere.sock, backend: llm}\n"
        "gates: {e2e_p99_s: 2, min_agreement: 0.9, agreement: {suite: s.jsonl}}\n"
        "stages:\n"
        "  - {mode: shadow}\n",
    )
    with pytest.raises(UserError) as err:
        load_rollout(path)
    text = str(err.value)
    assert "r.yaml:3: error: stages[0]: HAProxy cannot shadow" in text
    assert "r.yaml:2: error: gates: latency gates behind HAProxy need its log" in text
    assert "gates.agreement: a suite gate behind HAProxy needs the models' own URLs" in text
    path.write_text(
        "gateway: http://x:1\nhaproxy: {socket: /s, backend: b}\nstages: [{mode: split, weight: 5}]\n"
    )
    with pytest.raises(UserError, match="name one router"):
        load_rollout(path)


def test_the_rollout_command_refuses_router_options_that_do_not_fit(cli, tmp_path):
    path = write_spec(tmp_path, "gateway: http://127.0.0.1:1\nstages: [{mode: split, weight: 5}]\n")
    result = cli("rollout", str(path), "--backend", "llm")
    assert (
        result.returncode == 2
        and "--backend and --haproxy-log go with --router haproxy:SOCKET" in result.stderr
    )
    result = cli("rollout", str(path), "--router", "envoy:x")
    assert result.returncode == 2 and "expected gateway:URL or haproxy:SOCKET" in result.stderr
    result = cli("rollout", str(path), "--router", "haproxy:/nowhere.sock")
    assert result.returncode == 2 and "needs --backend NAME" in result.stderr
    assert "--router haproxy:/run/haproxy/admin.sock" in cli("rollout", "--help").stdout
