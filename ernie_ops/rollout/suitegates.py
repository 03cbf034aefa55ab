"""The suite gates of a rollout stage: judged agreement with stable, and the eval suite re-run.

Both send a suite's prompts to the models themselves (not through the router: no client sees
these answers) with `ernie_ops.validate.evaluate.run_eval`, temperature 0, so a rerun answers the
same:

- **judged agreement**: stable answers every item first; its answer becomes the item's `expected`
  and the candidate's answer is scored against it by the judge (`exact`: normalized text and
  numbers; `f1`: the JSON fields; `iou`: the boxes; `choice`: the same option). The agreement is
  the mean score over the items stable answered. `json` and `regex` judge an answer on its own, not
  against another, so an item with one of those is compared with `exact`.
- **eval**: the candidate's suite score, and stable's when `max_drop` is set.

A request that fails scores 0 (as `ernie-ops eval` does): a candidate that cannot answer fails.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from ernie_ops.rollout.spec import AgreementGate, EvalGate, Gates
from ernie_ops.validate.client import Endpoint
from ernie_ops.validate.evaluate import EvalReport, run_eval
from ernie_ops.validate.judges import NoJSON, extract_json, pick_choice, strip_reasoning
from ernie_ops.validate.suite import Suite, SuiteItem, load_suite

COMPARABLE = ("exact", "f1", "iou", "choice")  # the judges that score one answer against another


def run(gates: Gates, stable: Endpoint, candidate: Endpoint) -> dict[str, Any]:
    """The figures of GATES' suite gates, and `failed` (a reason) or None."""
    return asyncio.run(_run(gates, stable, candidate))


async def _run(gates: Gates, stable: Endpoint, candidate: Endpoint) -> dict[str, Any]:
    figures: dict[str, Any] = {"failed": None}
    if gates.agreement is not None:
        agreement, compared = await judged_agreement(gates.agreement, stable, candidate)
        figures |= {"judged_agreement": agreement, "judged_compared": compared}
        if gates.min_agreement is not None and (agreement is None or agreement < gates.min_agreement):
            shown = "nothing compared (stable answered no item)" if agreement is None else f"{agreement:.3f}"
            figures["failed"] = f"judged agreement with stable {shown} < {gates.min_agreement:g}"
    if gates.eval is not None and figures["failed"] is None:
        figures |= await eval_scores(gates.eval, stable, candidate)
        figures["failed"] = eval_failure(gates.eval, figures)
    return figures


async def judged_agreement(
    gate: AgreementGate, stable: Endpoint, candidate: Endpoint
) -> tuple[float | None, int]:
    """(mean judge score of the candidate's answers against stable's, items compared)."""
    suite = load_suite(gate.suite)
    reference = await run_eval(stable, suite, gate.concurrency, gate.max_tokens, mask=False)
    items = []
    for item, row in zip(suite.items, reference.items, strict=True):
        if row["error"] is None:
            judge = gate.judge or (item.judge if item.judge in COMPARABLE else "exact")
            expected = _as_expected(judge, row["prediction"] or "", item)
            if expected is not None:
                items.append(replace(item, expected=expected, judge=judge))
    if not items:
        return None, 0
    report = await run_eval(
        candidate, Suite(suite.path, items), gate.concurrency, gate.max_tokens, mask=False
    )
    return report.score, len(items)


def _as_expected(judge: str, answer: str, item: SuiteItem) -> Any:
    """Stable's ANSWER in the form JUDGE expects, or None when it has none (no JSON for f1...)."""
    answer = strip_reasoning(answer)
    if judge in ("f1", "iou"):
        try:
            return extract_json(answer)
        except NoJSON:
            return None
    if judge == "choice":
        index, _ = pick_choice(answer, item.choices)
        return None if index is None else item.choices[index]
    return answer


async def eval_scores(gate: EvalGate, stable: Endpoint, candidate: Endpoint) -> dict[str, Any]:
    suite = load_suite(gate.suite, default_judge=gate.judge)
    reports: list[EvalReport] = [await run_eval(candidate, suite, gate.concurrency, gate.max_tokens)]
    if gate.max_drop is not None:
        reports.append(await run_eval(stable, suite, gate.concurrency, gate.max_tokens))
    out: dict[str, Any] = {"eval_score": reports[0].score, "eval_errors": len(reports[0].errors)}
    if len(reports) > 1:
        out["eval_stable_score"] = reports[1].score
    return out


def eval_failure(gate: EvalGate, figures: dict[str, Any]) -> str | None:
    score = figures["eval_score"]
    if gate.min_score is not None and score < gate.min_score:
        return f"eval score {score:.3f} < {gate.min_score:g}"
    stable = figures.get("eval_stable_score")
    if gate.max_drop is not None and stable is not None and stable - score > gate.max_drop:
        drop = stable - score
        return (
            f"eval score {score:.3f} is {drop:.3f} below stable's {stable:.3f} (max_drop {gate.max_drop:g})"
        )
    return None
