"""The masker finds exactly what it found before the changes made for speed: tests/pii/findings.json
holds the findings (and a digest of the masked records) of the commit before them, on the labelled
corpus and on a held-out generated set. A change that means to alter detections rewrites it
(`python tests/pii/findings.py tests/pii/findings.json`) and says why in its commit."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

PII = Path(__file__).parent / "pii"
sys.path.insert(0, str(PII))
import findings  # noqa: E402  (tests/pii/findings.py)

EXPECTED = json.loads((PII / "findings.json").read_text(encoding="utf-8"))
NOW = findings.snapshot()


@pytest.mark.parametrize("name", ["corpus", "held-out"])
def test_findings_are_those_of_the_pinned_commit(name: str) -> None:
    records = findings.sets()[name]
    expected, now = EXPECTED[name]["findings"], NOW[name]["findings"]
    assert len(now) == len(expected) == len(records)
    for i, (a, b) in enumerate(zip(expected, now, strict=True)):
        assert b == a, (name, i, records[i]["messages"])
    assert NOW[name]["masked"] == EXPECTED[name]["masked"]


def test_the_comparison_can_fail() -> None:
    """The snapshot is not trivially equal to anything: dropping one finding changes it."""
    assert any(any(msg) for rec in NOW["corpus"]["findings"] for msg in rec)
    changed = [[list(msg) for msg in rec] for rec in NOW["corpus"]["findings"]]
    first = next(msg for rec in changed for msg in rec if msg)
    first.pop()
    assert changed != EXPECTED["corpus"]["findings"]
