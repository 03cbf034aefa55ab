"""The rollout report: the decision, the candidate's share over time, and every gate's figures.

Written beside the controller's state as rollout.md and rollout.html (one self-contained page,
`ernie_ops.validate.report`), with the chart as timeline.svg (inlined in the HTML): the candidate's
weight as a step line, shadow stages shaded, each gate event marked (passed, rollback, promoted).
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any

from ernie_ops.files import write_text_atomic
from ernie_ops.rollout.controller import ControllerState, _brief
from ernie_ops.rollout.spec import RolloutSpec
from ernie_ops.validate.report import md_table, write_report

EVENT_COLOURS = {"passed": "#2a9d3a", "rollback": "#d62728", "promoted": "#1f77b4", "finished": "#1f77b4"}
W, H, PAD = 720, 220, 40


def write(spec: RolloutSpec, state: ControllerState, out_dir: Path) -> tuple[Path, Path]:
    """rollout.md, rollout.html and timeline.svg in OUT_DIR, each written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "timeline.svg", timeline_svg(spec, state))
    return write_report(out_dir, "rollout", markdown(spec, state, "timeline.svg"), f"Rollout: {state.status}")


def markdown(spec: RolloutSpec, state: ControllerState, chart: str | None = None) -> str:
    """The decision, the stages, the chart (when given) and the timeline with each gate's figures."""
    lines = [f"# Rollout: {state.status}", "", _decision(state), ""]
    lines += [f"Router: {spec.router_name}; {len(spec.stages)} stages.", ""]
    rows: list[list[object]] = [["stage", "mode", "weight %", "min duration s", "min requests"]]
    rows += [[s.label, s.mode, f"{s.weight:g}", f"{s.min_duration_s:g}", s.min_requests] for s in spec.stages]
    lines += [md_table(rows, right={2, 3, 4})]
    if chart:
        lines += [f"![candidate weight over time]({chart})", ""]
    start = state.timeline[0]["time"] if state.timeline else 0.0
    rows = [["time (UTC)", "+s", "event", "stage", "details"]]
    for entry in state.timeline:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(entry["time"]))
        stage = entry.get("stage")
        label = spec.stages[stage].label if isinstance(stage, int) and stage < len(spec.stages) else ""
        details = entry.get("reason") or _brief(entry.get("figures") or {})
        if entry["event"] == "stage":
            details = f"{entry.get('mode')} {entry.get('weight', 0):g}%"
        rows.append([when, f"{entry['time'] - start:.1f}", entry["event"], label, details])
    lines += ["## Timeline", "", md_table(rows, right={1})]
    gated = [e for e in state.timeline if e.get("figures")]
    if gated:
        keys = list(dict.fromkeys(k for e in gated for k in e["figures"]))
        rows = [["stage", "event", *keys]]
        for e in gated:
            rows.append(
                [spec.stages[e["stage"]].label, e["event"], *(_cell(e["figures"].get(k)) for k in keys)]
            )
        lines += ["## Gate figures", "", md_table(rows, right=set(range(2, 2 + len(keys))))]
    return "\n".join(lines)


def _decision(state: ControllerState) -> str:
    last = state.timeline[-1] if state.timeline else {}
    if state.status == "rolled_back":
        took = (
            f" All-stable took effect {last['rollback_s']:.3f} s after the failing figures were read."
            if "rollback_s" in last
            else ""
        )
        return f"**Rolled back** to all-stable: {last.get('reason', '?')}.{took}"
    if state.status == "promoted":
        return "**Promoted**: every stage passed its gates."
    return f"**Running**: stage {state.stage + 1}."


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _weight_of(entry: dict[str, Any], current: float) -> float:
    event = entry["event"]
    if event == "stage":
        mode = entry.get("mode")
        return (
            100.0
            if mode == "all-candidate"
            else float(entry.get("weight") or 0.0)
            if mode == "split"
            else 0.0
        )
    if event == "rollback":
        return 0.0
    if event == "promoted":
        return 100.0
    return current


def timeline_svg(spec: RolloutSpec, state: ControllerState) -> str:
    """The candidate's weight (%) over the rollout as a step line; shadow stages shaded."""
    events = state.timeline
    if not events:
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}"></svg>\n'
    t0 = events[0]["time"]
    span = max(events[-1]["time"] - t0, 1e-3)

    def x(t: float) -> float:
        return PAD + (t - t0) / span * (W - 2 * PAD)

    def y(w: float) -> float:
        return H - PAD - w / 100 * (H - 2 * PAD)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
        'font-family="sans-serif" font-size="11">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
        f'<line x1="{PAD}" y1="{y(0)}" x2="{W - PAD}" y2="{y(0)}" stroke="#999"/>',
        f'<line x1="{PAD}" y1="{y(0)}" x2="{PAD}" y2="{y(100)}" stroke="#999"/>',
    ]
    for w in (0, 50, 100):
        parts.append(f'<text x="{PAD - 4}" y="{y(w) + 4}" text-anchor="end">{w}%</text>')
    parts.append(f'<text x="{W - PAD}" y="{H - 10}" text-anchor="end">{span:.1f} s</text>')
    weight, points = 0.0, []
    for i, e in enumerate(events):
        if e["event"] == "stage" and e.get("mode") == "shadow":
            end = next(
                (n["time"] for n in events[i + 1 :] if n["event"] in ("stage", "rollback", "promoted")),
                events[-1]["time"],
            )
            parts.append(
                f'<rect x="{x(e["time"]):.1f}" y="{y(100)}" width="{max(x(end) - x(e["time"]), 1):.1f}" '
                f'height="{y(0) - y(100)}" fill="#eee"><title>shadow</title></rect>'
            )
        new = _weight_of(e, weight)
        points += [(x(e["time"]), y(weight)), (x(e["time"]), y(new))]
        weight = new
    path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
    parts.append(f'<polyline points="{path}" fill="none" stroke="#333" stroke-width="2"/>')
    for e in events:
        colour = EVENT_COLOURS.get(e["event"])
        if colour:
            tip = html.escape(e.get("reason") or e["event"])
            parts.append(
                f'<circle cx="{x(e["time"]):.1f}" cy="{y(0) - 6:.1f}" '
                f'r="5" fill="{colour}"><title>{tip}</title></circle>'
            )
    legend = ", ".join(
        f"{k}: {c}" for k, c in (("green", "passed"), ("red", "rollback"), ("blue", "promoted"))
    )
    parts.append(f'<text x="{PAD}" y="14">candidate weight (%); shaded: shadow; dots: {legend}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
