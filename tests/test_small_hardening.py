"""Issue #14, the smaller items: listings that say when they are cut short, optional dependencies
that fail with the extra to install, no advisory banners, a verdict that says training was too
short to judge."""

from __future__ import annotations

import io
from typing import Any

from ernie_ops.cli.evaluate import _print_summary
from ernie_ops.validate.evaluate import EvalReport, markdown

SHOWN_FAILURES = 5  # the console lists 5, the report 20
LISTED = 20


def _report(failing: int) -> EvalReport:
    items: list[dict[str, Any]] = [
        {"id": f"q{n}", "judge": "exact", "score": 0.0, "error": None, "detail": "wrong", "prediction": "x"}
        for n in range(failing)
    ]
    summary = {"all": {"n": failing, "score": 0.0}}
    return EvalReport("s.jsonl", "s", "http://h", "m", "exact", "now", items=items, summary=summary)


def test_eval_console_says_how_many_failures_it_left_out() -> None:
    out = io.StringIO()
    _print_summary(_report(SHOWN_FAILURES + 1), None, None, out)
    text = out.getvalue()
    assert text.count("below 1.0: q") == SHOWN_FAILURES
    assert "and 1 more below 1.0" in text

    out = io.StringIO()
    _print_summary(_report(SHOWN_FAILURES), None, None, out)
    assert "more" not in out.getvalue()


def test_eval_report_says_how_many_failures_it_left_out() -> None:
    text = markdown(_report(LISTED + 3))
    assert f"{LISTED + 3} items below 1.0" in text
    assert "and 3 more below 1.0" in text
    assert "more below" not in markdown(_report(LISTED))
