"""The trade-off report of a sweep: report.md, a self-contained report.html, report.json and
pareto.png in the sweep's directory.

Per variant: quality (the eval score, and against the reference, the first variant, the paired
bootstrap interval of the difference from `ernie_ops.validate.compare`), TTFT / TPOT p50 / p99 and
output tokens/s at the reported load level, the sustainable request rate under the SLO, memory and
output tokens/s per GiB of it.

The recommendation names the cheapest variant, that is the one holding the least memory (GPU
memory on a GPU, peak RSS on CPU; within TIE of the least, the faster one), among those that
finished, whose quality is not worse than the reference beyond `max_drop` (compare's conservative
rule: no metric's point estimate more than max_drop below) and which met the SLO; or says that none
does, and why.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ernie_ops.files import atomic_output, write_text_atomic
from ernie_ops.sweep.record import PASSED, SweepRecord

# figures this close count as equal (RSS and rates move by a few percent from one run to the next):
# among variants whose memory is that close to the least, the faster wins; when their speed (the
# sustainable rate, else output tokens/s) is that close too, the one listed first (nearest the
# reference) wins
TIE = 0.05


def rows(record: SweepRecord) -> tuple[list[dict[str, Any]], str | None]:
    """One row per variant, in the spec's order, and the reference's name (the first variant)."""
    from ernie_ops.validate.compare import compare, load_items

    names = list(record.variants)
    reference = names[0] if names else None
    ref_eval = record.variants[reference].out("eval", "report") if reference else None
    ref_items = load_items(Path(ref_eval)) if ref_eval and Path(ref_eval).is_file() else None
    max_drop = float(record.spec.get("max_drop", 0.02))
    out = []
    for name, v in record.variants.items():
        profile = record.profiles.get(name, {})
        load = v.steps["load"].outputs
        memory = v.steps["memory"].outputs
        row: dict[str, Any] = {
            "variant": name,
            "status": v.status,
            "failed_step": v.failed_step,
            "diagnosis": v.diagnosis,
            "engine": profile.get("engine"),
            "quantization": profile.get("quantization"),
            "max_num_seqs": profile.get("max_num_seqs"),
            "score": v.out("eval", "score"),
            **{k: load.get(k) for k in ("ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms", "level")},
            "sustainable_rate": load.get("sustainable_rate"),
            "output_tokens_per_s": load.get("output_tokens_per_s"),
            "met_slo": load.get("met_slo"),
            "memory_gib": memory.get("memory_gib"),
            "memory_source": memory.get("source"),
        }
        tps, gb = row["output_tokens_per_s"], row["memory_gib"]
        row["tokens_per_s_per_gib"] = round(tps / gb, 3) if tps is not None and gb else None
        report = v.out("eval", "report")
        if name == reference and row["score"] is not None:
            row["quality_ok"] = True
            row["vs_reference"] = None
        elif ref_items is not None and report and Path(report).is_file():
            result = compare(ref_items, load_items(Path(report)), reference or "", name, max_drop=max_drop)
            overall = result.metrics[0]
            row["vs_reference"] = {
                "delta": round(overall.delta, 4),
                "low": round(overall.low, 4),
                "high": round(overall.high, 4),
                "confidence": result.confidence,
                "paired": result.paired,
                "regressions": [m.metric for m in result.regressions],
            }
            row["quality_ok"] = result.passed
        else:
            row["vs_reference"], row["quality_ok"] = None, None
        out.append(row)
    return out, reference


def recommend(table: list[dict[str, Any]], reference: str | None, max_drop: float) -> dict[str, Any]:
    """The cheapest qualifying variant (least memory; then the higher throughput), or none and why."""
    if not table or reference is None:
        return {"variant": None, "text": "no variants"}
    ref = table[0]
    if ref["score"] is None:
        why = f"failed at {ref['failed_step']}" if ref["failed_step"] else f"is {ref['status']}"
        return {
            "variant": None,
            "text": f"none: the reference variant {reference} {why}, so no quality can be compared",
        }
    for row in table:
        reasons = []
        if row["status"] != PASSED:
            reasons.append(f"failed at {row['failed_step']}" if row["failed_step"] else row["status"])
        else:
            if not row["quality_ok"]:
                reasons.append(f"quality more than {max_drop:g} below {reference}")
            if not row["met_slo"]:
                reasons.append(
                    "missed the SLO" if row["sustainable_rate"] is None else "missed the SLO at some level"
                )
            if row["memory_gib"] is None:
                reasons.append("memory not measured")
        row["qualifies"], row["why_not"] = not reasons, "; ".join(reasons) or None
    qualified = [r for r in table if r["qualifies"]]
    if not qualified:
        listing = "; ".join(f"{r['variant']}: {r['why_not']}" for r in table)
        return {"variant": None, "text": f"none qualifies ({listing})"}
    least = min(r["memory_gib"] for r in qualified)
    cheapest = [r for r in qualified if r["memory_gib"] <= least * (1 + TIE)]
    speed = {r["variant"]: r["sustainable_rate"] or r["output_tokens_per_s"] or 0 for r in cheapest}
    fastest = max(speed.values())
    best = next(r for r in cheapest if speed[r["variant"]] >= fastest * (1 - TIE))  # in the spec's order
    others = len(qualified) - 1
    return {
        "variant": best["variant"],
        "memory_gib": best["memory_gib"],
        "text": (
            f"{best['variant']}: {best['memory_gib']:.3f} GiB ({best['memory_source']}), the least memory"
            + (f" (within {TIE:.0%}; then the fastest, then the first listed)" if len(cheapest) > 1 else "")
            + f" of the {len(qualified)} variant(s) within {max_drop:g} of {reference}'s quality"
            + " that met the SLO"
            + (f" ({others} other(s) qualified)" if others else "")
        ),
    }


def pareto(table: list[dict[str, Any]], x: str) -> list[str]:
    """The variants no other beats on both quality and `x` (higher is better for both)."""
    points = [r for r in table if r["score"] is not None and r.get(x) is not None]
    return [
        r["variant"]
        for r in points
        if not any(
            o is not r
            and o["score"] >= r["score"]
            and o[x] >= r[x]
            and (o["score"] > r["score"] or o[x] > r[x])
            for o in points
        )
    ]


def write_sweep_report(record: SweepRecord) -> dict[str, Any]:
    """report.json, pareto.png, report.md and report.html; returns the JSON written."""
    from ernie_ops.validate.report import write_report

    table, reference = rows(record)
    max_drop = float(record.spec.get("max_drop", 0.02))
    pick = recommend(table, reference, max_drop)
    x = "sustainable_rate" if any(r["sustainable_rate"] is not None for r in table) else "output_tokens_per_s"
    frontier = pareto(table, x)
    out = record.path
    image = plot(table, frontier, x, pick.get("variant"), out / "pareto.png")
    report = {
        "name": record.name,
        "status": record.status,
        "reference": reference,
        "max_drop": max_drop,
        "load": record.spec.get("load"),
        "pareto_axis": x,
        "pareto": frontier,
        "variants": table,
        "exports": record.exports,
        "recommendation": pick,
    }
    write_text_atomic(out / "report.json", json.dumps(report, indent=2, default=str) + "\n")
    write_report(out, "report", markdown(report, image.name if image else None), f"sweep {record.name}")
    return report


def quant_label(row: dict[str, Any]) -> str:
    """The weights' format: the embedded engine's "bf16" (the profile default) computes in float32."""
    q = row["quantization"]
    if not isinstance(q, str):
        return "mix_quant"
    return "fp32" if q == "bf16" and row["engine"] == "paddle" else q


def _f(value: Any, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


def markdown(report: dict[str, Any], image: str | None) -> str:
    from ernie_ops.validate.report import md_table

    table = report["variants"]
    ref = report["reference"]
    load = report.get("load") or {}
    header: list[object] = [
        "variant",
        "engine",
        "quant",
        "status",
        "quality",
        f"vs {ref} (95% CI)",
        "level",
        "TTFT p50 / p99 ms",
        "TPOT p50 / p99 ms",
        "sustainable req/s",
        "output tok/s",
        "memory GiB",
        "tok/s per GiB",
    ]
    body: list[list[object]] = [header]
    for r in table:
        vs = r.get("vs_reference")
        delta = "reference" if r["variant"] == ref else "-"
        if vs:
            delta = f"{vs['delta']:+.3f} [{vs['low']:+.3f}, {vs['high']:+.3f}]" + (
                "" if r["quality_ok"] else " worse"
            )
        body.append(
            [
                r["variant"],
                r["engine"] or "default",
                quant_label(r),
                r["status"] + (f" ({r['failed_step']})" if r["failed_step"] else ""),
                _f(r["score"], "{:.3f}"),
                delta,
                r.get("level") or "-",
                f"{_f(r['ttft_p50_ms'])} / {_f(r['ttft_p99_ms'])}",
                f"{_f(r['tpot_p50_ms'])} / {_f(r['tpot_p99_ms'])}",
                _f(r["sustainable_rate"], "{:.3g}"),
                _f(r["output_tokens_per_s"]),
                _f(r["memory_gib"], "{:.3f}"),
                _f(r["tokens_per_s_per_gib"]),
            ]
        )
    pick = report["recommendation"]
    slo = next((r for r in table if r.get("level")), None)
    parts = [
        f"# Sweep {report['name']}: trade-offs\n",
        f"**Recommendation**: {pick['text']}.\n",
        f"Quality: the eval score; against {ref} (the reference), the paired bootstrap 95% interval of the "
        f"difference; a variant is worse when its point estimate falls more than max_drop = "
        f"{report['max_drop']:g} below. Latencies and output tok/s at the level shown (load: "
        f"{load.get('mode', 'concurrency')}"
        + (
            f", SLO p{load.get('slo_percentile', 99):g}"
            if any(k.startswith("slo_") and v for k, v in load.items())
            else ", no SLO"
        )
        + "). Memory: "
        + (slo["memory_source"] if slo and slo.get("memory_source") else "the server's")
        + "; cheapest = least memory.\n",
        md_table(body, right={4, *range(7, 13)}),
    ]
    failed = [r for r in table if r["diagnosis"]]
    if failed:
        parts.append("## Variants that failed")
        for r in failed:
            text = str(r["diagnosis"]).strip().replace("`" * 3, "'" * 3).replace("\n", "\n  ")
            parts.append(f"- **{r['variant']}** at {r['failed_step']}:\n\n  ```\n  {text}\n  ```")
    why_not = [r for r in table if r.get("why_not") and not r["diagnosis"]]
    if why_not:
        parts.append(
            "## Not recommended\n\n" + "\n".join(f"- {r['variant']}: {r['why_not']}" for r in why_not)
        )
    axis = "sustainable request rate" if report["pareto_axis"] == "sustainable_rate" else "output tokens/s"
    front = ", ".join(report["pareto"]) or "no variant measured"
    parts.append(f"## Pareto front (quality vs {axis})\n\n{front}")
    if image:
        parts.append(f"![quality against {axis}]({image})")
    if report["exports"]:
        listing = [
            f"- {e['format']} {e.get('quantization') or ''}: {e['path']} ({e['how']}, {e['seconds']} s)"
            for e in report["exports"].values()
        ]
        parts.append("## Exports prepared\n\n" + "\n".join(listing))
    return "\n".join(part.rstrip("\n") + "\n" for part in parts)


def plot(
    table: list[dict[str, Any]], frontier: list[str], x: str, chosen: str | None, out: Path
) -> Path | None:
    """pareto.png: quality against throughput, one point per variant measured, the front joined."""
    points = [r for r in table if r["score"] is not None and r.get(x) is not None]
    if not points:
        return None
    import logging

    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in points:
        on_front = r["variant"] in frontier
        ax.scatter(
            r[x],
            r["score"],
            s=140 if r["variant"] == chosen else 60,
            marker="*" if r["variant"] == chosen else "o",
            color="#c0392b" if r["variant"] == chosen else "#3b6fb6" if on_front else "#999999",
            zorder=3,
        )
        label = r["variant"] + (f" ({r['memory_gib']:.2g} GiB)" if r.get("memory_gib") else "")
        ax.annotate(label, (r[x], r["score"]), textcoords="offset points", xytext=(6, 4), fontsize=9)
    front = sorted((r for r in points if r["variant"] in frontier), key=lambda r: r[x])
    if len(front) > 1:
        ax.plot([r[x] for r in front], [r["score"] for r in front], "-", color="#3b6fb6", alpha=0.6)
    ax.set_xlabel(
        "sustainable requests / s under the SLO" if x == "sustainable_rate" else "output tokens / s"
    )
    ax.set_ylabel("quality (eval score)")
    ax.set_ylim(-0.05, 1.05)  # scores are 0..1: the whole scale, so small differences look small
    ax.set_title(
        "quality against throughput (red star: recommended)" if chosen else "quality against throughput"
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_output(out) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return out
