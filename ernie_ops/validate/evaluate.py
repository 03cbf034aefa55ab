"""`ernie-ops eval`: run a suite against an endpoint and score every answer.

Requests go out `concurrency` at a time (non-streaming, temperature 0 by default so a rerun scores
the same); a request that fails is scored as an empty answer (0, every expected field missing) and
listed, never dropped, so two reports of the same suite always pair item for item in `compare`.
The report keeps every prediction beside its score: a reader checks the judge, not just the number.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ernie_ops.files import PathLike, atomic_output, write_text_atomic
from ernie_ops.validate.client import Endpoint, Reply, request, resolve_model, session
from ernie_ops.validate.judges import Score, failed, score, summarize
from ernie_ops.validate.suite import Suite, SuiteItem

LISTED = 20  # items below 1.0 the report lists (results.jsonl has them all)
# the fields of an item that can hold personal data (the answer, and what the suite expected of it)
MASKED_FIELDS = ("expected", "prediction", "reasoning", "detail", "error")


@dataclass
class EvalReport:
    suite: str
    suite_name: str
    endpoint: str
    model: str
    default_judge: str
    started: str
    seconds: float = 0.0
    items: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    masked: bool = True  # personal data in MASKED_FIELDS replaced (scored before, written after)

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [i for i in self.items if i["error"]]

    @property
    def score(self) -> float:
        return float(self.summary.get("all", {}).get("score", 0.0))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, out_dir: Path, inputs: Sequence[PathLike] = ()) -> Path:
        """eval.json (everything) and results.jsonl (one line per item), atomically and never over
        one of `inputs` (the suite); returns eval.json."""
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_output(out_dir / "results.jsonl", inputs) as f:
            for item in self.items:
                f.write((json.dumps(item, ensure_ascii=False) + "\n").encode("utf-8"))
        path = out_dir / "eval.json"
        write_text_atomic(path, json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n", inputs)
        return path


def item_result(item: SuiteItem, reply: Reply, result: Score) -> dict[str, Any]:
    return {
        "id": item.id,
        "line": item.line,
        "judge": result.judge,
        "tags": list(item.tags),
        "score": result.value,
        "tp": result.tp,
        "fp": result.fp,
        "fn": result.fn,
        "detail": result.detail,
        "expected": item.expected,
        "prediction": reply.text,
        "reasoning": reply.reasoning or None,
        "finish_reason": reply.finish_reason,
        "completion_tokens": reply.completion_tokens,
        "latency_s": round(reply.latency, 4),
        "error": None
        if reply.ok
        else (f"HTTP {reply.status}: {reply.error}" if reply.status else reply.error),
    }


async def run_eval(
    endpoint: Endpoint,
    suite: Suite,
    concurrency: int = 4,
    max_tokens: int = 512,
    extra: dict[str, Any] | None = None,
    timeout: float = 300.0,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    mask: bool | None = None,
) -> EvalReport:
    """Every item once; `extra` is merged into each request body (temperature, chat_template_kwargs...).

    Each item is scored on the real answer, then its answer and expected values are masked
    (personal data replaced) before anything keeps or shows it, unless `mask` is False or
    ERNIE_OPS_NO_MASK=1; the report records which."""
    from ernie_ops.privacy import mask_fields, masking_on

    masked = masking_on(mask)
    body_extra = {"temperature": 0.0, **(extra or {})}
    started = time.perf_counter()
    async with session(endpoint, concurrency=concurrency, timeout=timeout) as client:
        endpoint = await resolve_model(client, endpoint)
        report = EvalReport(
            str(suite.path),
            suite.name,
            endpoint.base,
            endpoint.model or "",
            suite.default_judge,
            datetime.now(timezone.utc).isoformat(timespec="seconds"),
            masked=masked,
        )
        gate = asyncio.Semaphore(concurrency)

        async def one(item: SuiteItem) -> dict[str, Any]:
            async with gate:
                reply = await request(client, endpoint, item.request_body(max_tokens, **body_extra))
            if reply.ok:
                result = score(reply.text, item, suite.default_judge)
            else:
                result = failed(item, f"request failed: {reply.error}", suite.default_judge)
            row = item_result(item, reply, result)
            if masked:  # the prompt says what a bare value in the answer is (a tax ID, ...)
                row = mask_fields(row, MASKED_FIELDS, context=_texts_of(item))
            if on_result:
                on_result(row)
            return row

        report.items = list(await asyncio.gather(*(one(item) for item in suite.items)))
    scores = [
        Score(r["score"], r["tp"], r["fp"], r["fn"], judge=r["judge"], tags=tuple(r["tags"]))
        for r in report.items
    ]
    report.summary = summarize(scores)
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def _texts_of(item: SuiteItem) -> list[str]:
    """The texts of an item's request (its prompt, system prompt, earlier turns)."""
    texts = []
    for message in item.request_messages():
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts += [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return texts


def summary_rows(report: EvalReport) -> list[list[str]]:
    """The summary as table rows: overall, per judge, per tag."""
    rows = [["group", "n", "score", "precision", "recall", "f1"]]
    groups = [("all", report.summary.get("all", {}))]
    groups += [(f"judge={k}", v) for k, v in report.summary.get("judges", {}).items()]
    groups += [(f"tag={k}", v) for k, v in report.summary.get("tags", {}).items()]
    for name, g in groups:
        micro = [f"{g[k]:.3f}" if k in g else "" for k in ("precision", "recall", "f1")]
        rows.append([name, str(g.get("n", 0)), f"{g.get('score', 0.0):.3f}", *micro])
    return rows


def failures(report: EvalReport) -> list[dict[str, Any]]:
    """Items that scored below 1, worst first (request errors first of all)."""
    bad = [i for i in report.items if i["error"] or i["score"] < 1.0]
    return sorted(bad, key=lambda i: (i["error"] is None, i["score"]))


def and_more(total: int, shown: int) -> str:
    """The line under a listing cut short, so no reader takes it for all of them ("" when it is)."""
    return f"... and {total - shown} more below 1.0 (results.jsonl has every item)" if total > shown else ""


def plot_scores(report: EvalReport, path: Path, baseline: EvalReport | None = None) -> Path:
    """A horizontal bar per group (overall, judges, tags); the baseline's bars beside them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary_rows(report)[1:]
    names, ours = [r[0] for r in rows], [float(r[2]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.2), dpi=100)
    ys = range(len(names))
    height = 0.4 if baseline else 0.6
    if baseline is not None:
        theirs = {r[0]: float(r[2]) for r in summary_rows(baseline)[1:]}
        ax.barh(
            [y + height for y in ys],
            [theirs.get(n, 0.0) for n in names],
            height,
            label=baseline.model + " (baseline)",
        )
    ax.barh(list(ys), ours, height, label=report.model)
    ax.set_yticks([y + (height / 2 if baseline else 0) for y in ys], names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("mean score")
    ax.set_title(f"{report.suite_name}: {report.model}")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    with atomic_output(path) as f:
        fig.savefig(f, format="png", metadata={"Software": None})
    plt.close(fig)
    return path


def markdown(report: EvalReport, plot: str | None = None) -> str:
    from ernie_ops.validate.report import md_table

    errors = f", **{len(report.errors)} request(s) failed**" if report.errors else ""
    lines = [
        f"Suite `{report.suite_name}` ({len(report.items)} items) against `{report.model}` at "
        f"`{report.endpoint}`: score **{report.score:.3f}**{errors}, {report.seconds:.1f} s.\n",
        md_table(summary_rows(report)),
    ]
    if plot:
        lines.append(f"\n![scores]({plot})\n")
    from ernie_ops.privacy import masking_note

    lines.append(masking_note(report.masked) + "\n")
    bad = failures(report)
    if bad:
        rows: list[list[object]] = [["id", "judge", "score", "why", "prediction"]]
        for i in bad[:LISTED]:
            shown = " ".join(str(i["prediction"]).split())
            rows.append([i["id"], i["judge"], f"{i['score']:.2f}", i["error"] or i["detail"], shown[:80]])
        more = and_more(len(bad), LISTED)
        lines += [
            f"\n{len(bad)} items below 1.0, worst first:\n",
            md_table(rows) + (f"\n{more}\n" if more else ""),
        ]
    return "\n".join(lines)
