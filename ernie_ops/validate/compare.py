"""`ernie-ops compare A.json B.json`: is B (the candidate) worse than A (the baseline) on the same suite?

Items are paired by id, so the comparison is a *paired* bootstrap: each resample draws the same
items for both sides, which cancels item difficulty and gives much tighter intervals than comparing
two independent means. Metrics: the mean item score overall, per judge and per tag, and the
micro-averaged precision / recall / F1 of judges that count matches (f1, iou).

The verdict is deliberately conservative for a rollout gate: a metric regresses when B's *point
estimate* is more than `max_drop` below A's, whatever the interval says (a small suite has wide
intervals, and "not significantly worse" is not "as good"). The interval is reported beside it so a
reader sees how much the figure can be trusted; "improved" needs the whole interval above zero.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ernie_ops.errors import UserError

REGRESSION, IMPROVED, SAME = "regression", "improved", "ok"


@dataclass
class MetricDelta:
    metric: str
    n: int
    a: float
    b: float
    delta: float
    low: float  # confidence interval of the delta
    high: float
    verdict: str


@dataclass
class Comparison:
    a: str
    b: str
    max_drop: float
    confidence: float
    paired: int
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    metrics: list[MetricDelta] = field(default_factory=list)

    @property
    def regressions(self) -> list[MetricDelta]:
        return [m for m in self.metrics if m.verdict == REGRESSION]

    @property
    def passed(self) -> bool:
        return not self.regressions

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Comparison:
        values = {k: v for k, v in data.items() if k != "passed"}
        return cls(**{**values, "metrics": [MetricDelta(**m) for m in data.get("metrics", [])]})


def load_items(path: Path) -> list[dict[str, Any]]:
    """The per-item results of an `ernie-ops eval` report (eval.json)."""
    if path.is_dir():
        path = path / "eval.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such file", hint="give the eval.json `ernie-ops eval` wrote") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a JSON eval report ({err})") from None
    items = report.get("items") if isinstance(report, dict) else None
    if not isinstance(items, list) or not all(
        isinstance(i, dict) and "id" in i and "score" in i for i in items
    ):
        raise UserError(
            f"{path}: not an `ernie-ops eval` report (no items with id and score)",
            hint="compare the eval.json files written by `ernie-ops eval --out DIR`",
        )
    return items


def compare(
    a_items: list[dict[str, Any]],
    b_items: list[dict[str, Any]],
    a_name: str = "A",
    b_name: str = "B",
    max_drop: float = 0.02,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> Comparison:
    a_by_id = {str(i["id"]): i for i in a_items}
    b_by_id = {str(i["id"]): i for i in b_items}
    ids = [i for i in a_by_id if i in b_by_id]
    if not ids:
        raise UserError(
            f"{a_name} and {b_name} share no item ids: they are not the same suite",
            hint="run the same --suite against both endpoints",
        )
    result = Comparison(
        a_name,
        b_name,
        max_drop,
        confidence,
        len(ids),
        only_a=[i for i in a_by_id if i not in b_by_id],
        only_b=[i for i in b_by_id if i not in a_by_id],
    )
    pairs = [(a_by_id[i], b_by_id[i]) for i in ids]
    rng = np.random.default_rng(seed)
    for name, rows in _groups(pairs).items():
        a = _arrays([p[0] for p in rows])
        b = _arrays([p[1] for p in rows])
        idx = rng.integers(0, len(rows), size=(resamples, len(rows)))
        kinds = ["score"] + (["precision", "recall", "f1"] if (a[1:].sum() + b[1:].sum()) > 0 else [])
        for kind in kinds:
            point_a, point_b = _metric(kind, a, None), _metric(kind, b, None)
            deltas = _metric(kind, b, idx) - _metric(kind, a, idx)
            tail = (1 - confidence) / 2 * 100
            low, high = (float(x) for x in np.percentile(deltas, [tail, 100 - tail]))
            delta = float(point_b - point_a)
            verdict = REGRESSION if delta < -max_drop - 1e-12 else IMPROVED if low > 0 else SAME
            label = kind if name == "all" else f"{kind} [{name}]"
            result.metrics.append(
                MetricDelta(label, len(rows), float(point_a), float(point_b), delta, low, high, verdict)
            )
    return result


def _groups(pairs: list[tuple[dict, dict]]) -> dict[str, list[tuple[dict, dict]]]:
    """All items, then per judge and per tag when there is more than one group."""
    groups: dict[str, list[tuple[dict, dict]]] = {"all": pairs}
    judges = sorted({str(a.get("judge")) for a, _ in pairs})
    if len(judges) > 1:
        for judge in judges:
            groups[f"judge={judge}"] = [p for p in pairs if str(p[0].get("judge")) == judge]
    tags = sorted({t for a, _ in pairs for t in a.get("tags") or ()})
    for tag in tags:
        groups[f"tag={tag}"] = [p for p in pairs if tag in (p[0].get("tags") or ())]
    return groups


def _arrays(items: list[dict[str, Any]]) -> np.ndarray:
    """Rows: score, tp, fp, fn; one column per item (a failed request scores 0)."""
    return np.array(
        [[float(i.get("score") or 0.0), i.get("tp", 0), i.get("fp", 0), i.get("fn", 0)] for i in items],
        dtype=float,
    ).T


def _metric(kind: str, arrays: np.ndarray, idx: np.ndarray | None) -> np.ndarray:
    """The metric on every resample (idx: resamples x items) or on the data itself (idx None)."""
    score, tp, fp, fn = arrays if idx is None else arrays[:, idx]
    if kind == "score":
        return score.mean(axis=-1)
    tp, fp, fn = tp.sum(axis=-1), fp.sum(axis=-1), fn.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        if kind == "precision":
            return precision
        if kind == "recall":
            return recall
        return np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)


def markdown(result: Comparison) -> str:
    from ernie_ops.validate.report import md_table

    rows: list[list[object]] = [
        ["metric", "n", result.a, result.b, "delta", f"{result.confidence:.0%} CI", "verdict"]
    ]
    for m in result.metrics:
        rows.append(
            [
                m.metric,
                m.n,
                f"{m.a:.3f}",
                f"{m.b:.3f}",
                f"{m.delta:+.3f}",
                f"[{m.low:+.3f}, {m.high:+.3f}]",
                m.verdict,
            ]
        )
    verdict = (
        f"**PASS**: no metric of {result.b} drops more than {result.max_drop:g} below {result.a}."
        if result.passed
        else f"**FAIL**: {len(result.regressions)} metric(s) of {result.b} drop more than "
        f"{result.max_drop:g} below {result.a}: " + ", ".join(m.metric for m in result.regressions) + "."
    )
    unpaired = ""
    if result.only_a or result.only_b:
        unpaired = (
            f"\n{len(result.only_a)} item(s) only in {result.a}, {len(result.only_b)} only in {result.b}: "
            "left out of the comparison.\n"
        )
    return (
        f"{verdict}\n\n{result.paired} paired items; paired bootstrap, {result.confidence:.0%} intervals of "
        f"{result.b} - {result.a}.\n{unpaired}\n" + md_table(rows)
    )
