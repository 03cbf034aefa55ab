"""Masking on by default where the toolkit writes user content: eval results and reports, smoke
evidence, the pipeline report's examples; ERNIE_OPS_NO_MASK=1 turns it off and the report says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from standin_openai import create_standin, prompt_key, serving

from ernie_ops.cli.main import main

PLANTED = {
    "mail": ("Write the support address.", "anna.schmidt@example.de"),
    "phone": ("Which number do I call?", "Call +49 30 12345678 today"),
    "iban": ("Where do I pay?", "DE89 3704 0044 0532 0130 00"),
}
VALUES = ["anna.schmidt@example.de", "+49 30 12345678", "DE89 3704 0044 0532 0130 00"]


def _suite(tmp_path: Path) -> Path:
    suite = tmp_path / "suite.jsonl"
    lines = [
        json.dumps({"id": k, "prompt": p, "expected": a, "judge": "exact", "max_tokens": 32})
        for k, (p, a) in PLANTED.items()
    ]
    suite.write_text("\n".join(lines) + "\n")
    return suite


def _answers() -> dict[str, str]:
    return {prompt_key([{"role": "user", "content": p}]): a for p, a in PLANTED.values()}


def _leaks(directory: Path) -> list[tuple[str, str]]:
    """(file, value) for every planted value found byte for byte in any file under DIRECTORY."""
    found = []
    for path in directory.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [(path.name, v) for v in VALUES if v.encode() in data]
    return found


def test_eval_scores_the_real_answer_and_writes_it_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    suite, out = _suite(tmp_path), tmp_path / "eval"
    with serving(create_standin(_answers())) as (url, _):
        assert main(["eval", url, "--suite", str(suite), "--out", str(out), "--json"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "eval.json").read_text())
    assert report["summary"]["all"]["score"] == 1.0  # scored before masking
    assert report["masked"] is True
    assert not _leaks(out) and not [v for v in VALUES if v in printed]
    item = next(i for i in report["items"] if i["id"] == "mail")
    assert item["expected"] == item["prediction"] == "<EMAIL_1>"  # one numbering per item
    assert "is masked" in (out / "eval.md").read_text()


@pytest.mark.parametrize("how", ["--no-mask", "ERNIE_OPS_NO_MASK=1"])
def test_eval_with_masking_turned_off_keeps_the_values_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    flags = [how] if how.startswith("--") else []
    if not flags:
        monkeypatch.setenv(*how.split("="))
    suite, out = _suite(tmp_path), tmp_path / "eval"
    with serving(create_standin(_answers())) as (url, _):
        assert main(["eval", url, "--suite", str(suite), "--out", str(out), *flags]) == 0
    assert json.loads((out / "eval.json").read_text())["masked"] is False
    assert {v for _, v in _leaks(out)} == set(VALUES)
    assert "NOT masked" in (out / "eval.md").read_text()


def test_smoke_evidence_quoting_answers_is_masked(tmp_path: Path) -> None:
    out = tmp_path / "smoke"
    with serving(create_standin({}, default="Mail anna.schmidt@example.de or call +49 30 12345678.")) as (
        url,
        _,
    ):
        main(["smoke", url, "--out", str(out), "--expect", "none"])
    data = json.loads((out / "smoke.json").read_text())
    assert data["masked"] is True
    assert any("<EMAIL_1>" in c["evidence"] for c in data["checks"])
    assert not _leaks(out)
    with serving(create_standin({}, default="Mail anna.schmidt@example.de.")) as (url, _):
        main(["smoke", url, "--out", str(out), "--expect", "none", "--no-mask"])
    assert json.loads((out / "smoke.json").read_text())["masked"] is False
    assert "anna.schmidt@example.de" in (out / "smoke.json").read_text()


def test_the_pipeline_reports_examples_are_masked_even_from_an_older_report() -> None:
    from ernie_ops.pipeline.report import _examples

    old = {
        "items": [{"id": "a", "expected": "x", "prediction": "mail anna.schmidt@example.de", "score": 0.0}]
    }
    text = _examples(old, None)
    assert "anna.schmidt@example.de" not in text and "<EMAIL_1>" in text and "is masked" in text
    off = {**old, "masked": False}
    assert "anna.schmidt@example.de" in _examples(off, None) and "NOT masked" in _examples(off, None)


def test_pipeline_no_mask_is_for_that_run_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # main() called as a library: a --no-mask pipeline must not leave masking off for what follows
    monkeypatch.delenv("ERNIE_OPS_NO_MASK", raising=False)
    assert main(["pipeline", "--no-mask", str(tmp_path / "missing.yaml")]) == 2  # refused, then restored
    import os

    assert "ERNIE_OPS_NO_MASK" not in os.environ
