"""The pipeline's report: should this fine-tune ship? `report.md` and a self-contained `report.html`.

Sections: the verdict and why, every stage (status, time, summary or diagnosis), lineage (recipe,
data fingerprints, versions, checkpoint), training (curve), serving (endpoints and their engine, the
GGUF / transformers-layout exports made for it, command, memory plan as the server printed them),
the smoke checklist, the load benchmark, and the evaluation of the tuned model against the base
with paired-bootstrap intervals; after `ernie-ops demo`, the trade-off table of its quantization
sweep (and what it left out). A stage that did not run leaves its section saying so: a partial
report after a failure shows exactly how far the pipeline got.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ernie_ops.pipeline.record import STAGES, PipelineRecord
from ernie_ops.validate.report import md_table, write_report


def write_pipeline_report(record: PipelineRecord) -> tuple[Path, Path]:
    sections = [
        _verdict(record),
        "## Stages\n\n" + _stages(record),
        "## Lineage\n\n" + _lineage(record),
        "## Training\n\n" + _training(record),
        "## Serving\n\n" + _serving(record),
        "## Smoke test\n\n" + _smoke(record),
        _bench(record),
        "## Evaluation: tuned vs base\n\n" + _evaluation(record),
    ]
    if (record.path / QUANTIZATION / "report.json").is_file():  # `ernie-ops demo`'s quantization step
        sections.append(_quantization(record))
    return write_report(record.path, "report", "\n\n".join(sections) + "\n", f"pipeline {record.name}")


def _rel(record: PipelineRecord, path: str | Path) -> str:
    return os.path.relpath(path, record.path)


def _load(path: str | Path | None) -> Any:
    if not path or not Path(path).is_file():
        return None
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _verdict(record: PipelineRecord) -> str:
    head = f"# Pipeline `{record.name}`: {record.verdict or 'no verdict'}\n\n"
    failed = [s for s in STAGES if record.stages[s].status == "failed"]
    if failed:
        stage = record.stages[failed[0]]
        return head + f"**The pipeline stopped at `{failed[0]}`.**\n\n```\n{stage.diagnosis}\n```"
    compare = record.stages["compare"]
    if compare.status != "passed":
        return head + "The pipeline has not reached the comparison yet."
    reasons = compare.outputs.get("reasons") or []
    if record.verdict == "SHIP":
        return head + (
            "**SHIP**: the smoke test passed, no metric fell more than the allowed drop below the base, "
            "and the tuned model scores above it."
            + (f" ({compare.outputs['reason']})" if "reason" in compare.outputs else "")
        )
    return head + "**DO NOT SHIP**: " + "; ".join(reasons or [compare.summary]) + "."


def _stages(record: PipelineRecord) -> str:
    rows: list[list[object]] = [["stage", "status", "seconds", "runs", "summary"]]
    for name in STAGES:
        s = record.stages[name]
        status, summary = s.status, s.summary if s.status != "failed" else (s.diagnosis or "").splitlines()[0]
        if name == "report" and status == "running":
            status, summary = "passed", "this document"
        rows.append([name, status, f"{s.seconds:.1f}" if s.seconds is not None else "", s.runs, summary])
    return md_table(rows)


def _lineage(record: PipelineRecord) -> str:
    spec = record.spec
    lines = [f"- pipeline spec: recipe `{spec['recipe']}`, eval suite `{spec['eval_suite']}`"]
    run = _load(Path(record.out("train", "run_dir") or "/nonexistent") / "run.json")
    if run is None:
        return "\n".join(lines) + "\n- training has not run yet\n"
    lines += [
        f"- training run: `{run['run_dir']}` (recipe sha256 `{(run.get('recipe_sha256') or '')[:16]}`, "
        f"overrides {run.get('overrides') or 'none'})",
        f"- base model: `{run.get('model_name_or_path')}`; {run.get('stage')} / {run.get('fine_tuning')}; "
        f"seed {run.get('seed')}; device {run.get('device')}",
        f"- checkpoint: `{run.get('checkpoint')}`; servable export: `{run.get('exported')}` "
        f"(verified: {run.get('verified')})",
        f"- code: git {run.get('git_commit') or 'unknown'}; host {run.get('host')}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in (run.get("versions") or {}).items()),
    ]
    rows: list[list[object]] = [["split", "file", "records", "bytes", "sha256"]]
    for d in run.get("data") or []:
        rows.append(
            [d.get("split"), f"`{d['path']}`", d.get("records"), d.get("bytes"), f"`{d['sha256'][:16]}`"]
        )
    return "\n".join(lines) + "\n\nData:\n\n" + md_table(rows)


def _training(record: PipelineRecord) -> str:
    train = record.stages["train"]
    if train.status != "passed":
        return f"Training {train.status}."
    out = train.outputs
    first, final = out.get("first_loss"), out.get("final_loss")
    loss = (
        f"; loss {first:.4f} (first step) -> {final:.4f} (last)"
        if first is not None and final is not None
        else ""
    )
    text = f"{out.get('steps')} steps{loss}.\n"
    if out.get("too_short"):
        text += f"\n**{out['too_short']}**\n"
    plot = Path(out["run_dir"]) / "loss.png"
    if plot.is_file():
        text += f"\n![loss]({_rel(record, plot)})\n"
    return text


def _serving(record: PipelineRecord) -> str:
    endpoints = record.endpoints
    if not endpoints:
        return "No server was started."
    spec = record.spec
    profile = spec.get("serve_profile") or "the defaults for a checkpoint"
    settings = spec.get("serve_set") or "none"
    engine = spec.get("engine") or spec.get("backend")  # records before engine: say backend
    text = f"Engine: {engine or 'auto'}; profile: {profile}; settings: {settings}.\n\n"
    rows: list[list[object]] = [["role", "engine", "endpoint", "served name", "checkpoint"]]
    rows += [
        [role, e.get("engine", ""), e["url"], e["model"], f"`{e['checkpoint']}`"]
        for role, e in endpoints.items()
    ]
    text += md_table(rows) + "\nOne server at a time: the base model is served after the tuned one stops.\n"
    text += _exports(record)
    log = Path(endpoints.get("tuned", {}).get("log", "/nonexistent"))
    if log.is_file():
        head = [
            line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()
        ][:20]
        text += (
            "\nThe tuned server's start-up (command, memory plan, readiness):\n\n```\n"
            + "\n".join(head)
            + "\n```\n"
        )
    return text


def _exports(record: PipelineRecord) -> str:
    """The layouts made for the engine (GGUF for llama.cpp, transformers for vLLM), if any."""
    from ernie_ops.serve.exports import describe

    if not record.exports:
        return ""
    lines = [
        f"- {describe(e)} of `{e['from']}`: `{e['path']}` ({e['how']}, {e['seconds']:.1f} s)"
        for e in record.exports.values()
    ]
    return "\nMade for the engine, which does not read the Paddle checkpoint:\n\n" + "\n".join(lines) + "\n"


def _smoke(record: PipelineRecord) -> str:
    from ernie_ops.validate.smoke import SmokeReport, markdown

    data = _load(record.out("smoke", "report"))
    return markdown(SmokeReport.from_json(data)) if data else f"Smoke test {record.stages['smoke'].status}."


def _bench(record: PipelineRecord) -> str:
    bench = record.stages["bench"]
    md = Path(record.out("bench", "dir") or "/nonexistent") / "bench.md"
    if not md.is_file():
        return f"## Load test\n\nLoad test {bench.status}."
    return md.read_text(encoding="utf-8").replace(
        "](bench.png)", f"]({_rel(record, md.parent / 'bench.png')})"
    )


def _evaluation(record: PipelineRecord) -> str:
    from ernie_ops.validate.compare import Comparison, markdown

    tuned = _load((record.out("eval", "tuned") or {}).get("report"))
    if tuned is None:
        return f"Evaluation {record.stages['eval'].status}."
    base = _load((record.out("eval", "base") or {}).get("report"))
    rows: list[list[object]] = [["group", "n", "base", "tuned", "delta"]]
    base_groups = _groups(base) if base else {}
    for name, group in _groups(tuned).items():
        b = base_groups.get(name, {}).get("score")
        t = group["score"]
        rows.append(
            [
                name,
                group["n"],
                f"{b:.3f}" if b is not None else "",
                f"{t:.3f}",
                f"{t - b:+.3f}" if b is not None else "",
            ]
        )
    text = f"Suite `{tuned['suite_name']}` ({len(tuned['items'])} items).\n\n" + md_table(rows)
    plot = record.path / "eval" / "scores.png"
    if plot.is_file():
        text += f"\n![scores]({_rel(record, plot)})\n"
    comparison = _load(record.out("compare", "report"))
    if comparison:
        text += "\n" + markdown(Comparison.from_json(comparison))
    text += "\n" + _examples(tuned, base)
    return text


QUANTIZATION = "quantization"  # the sweep of the tuned model's weight formats, when one ran


def _quantization(record: PipelineRecord) -> str:
    """The sweep's trade-off table under this report's headings, its chart linked from here."""
    from ernie_ops.sweep.report import markdown

    report = _load(record.path / QUANTIZATION / "report.json")
    chart = record.path / QUANTIZATION / "pareto.png"
    text = markdown(report, f"{QUANTIZATION}/pareto.png" if chart.is_file() else None)
    lines = [("#" + line if line.startswith("## ") else line) for line in text.splitlines()[1:]]
    from ernie_ops.pipeline.demo import LLAMACPP_INSTALL, LLAMACPP_QUANTIZATIONS, listed

    rows = report["variants"]
    gguf = [r["variant"] for r in rows if r.get("engine") == "llamacpp"]
    head = (
        f"## Quantization: the tuned model as {listed([r['variant'] for r in rows])}\n\n"
        f"Served one at a time by `ernie-ops sweep` ({QUANTIZATION}/report.html); wint8 / wint4 are "
        "FastDeploy's weight-only schemes, emulated at load by the embedded engine, so they show the "
        "quality a quantized deployment keeps, not its speed or memory on a GPU."
    )
    if gguf:
        head += (
            f" {listed(gguf)} are GGUF files served by llama.cpp (engine: llamacpp): real CPU "
            "quantization, so their quality, speed and memory are what a CPU deployment gets."
        )
    left_out = record.demo.get("llamacpp_left_out")
    if left_out:
        head += (
            f"\n\nllama.cpp's {listed(LLAMACPP_QUANTIZATIONS)} variants were left out: {left_out}. "
            f"To add them, install it with `{LLAMACPP_INSTALL}` (it compiles llama.cpp: about 10-12 "
            "minutes on 2 cores) and run `ernie-ops demo` again."
        )
    return head + "\n" + "\n".join(lines)


def _groups(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    summary = report.get("summary", {})
    groups = {"all": summary.get("all", {})}
    groups |= {f"judge={k}": v for k, v in summary.get("judges", {}).items()}
    groups |= {f"tag={k}": v for k, v in summary.get("tags", {}).items()}
    return groups


def _examples(tuned: dict[str, Any], base: dict[str, Any] | None, n: int = 5) -> str:
    """A few items side by side, so a reader sees what the scores mean. Masked as the eval reports
    were (an older report without the flag is masked here); the report says which."""
    from ernie_ops.privacy import default_masker, masking_note

    masked = tuned.get("masked") is not False and (base or {}).get("masked") is not False
    mask = default_masker().mask_text if masked else str
    by_id = {i["id"]: i for i in (base or {}).get("items", [])}
    rows: list[list[object]] = [["id", "expected", "base answer", "tuned answer", "tuned score"]]
    for item in tuned["items"][:n]:
        other = by_id.get(item["id"], {})
        rows.append(
            [
                item["id"],
                mask(_short(item.get("expected"))),
                mask(_short(other.get("prediction"))),
                mask(_short(item["prediction"])),
                f"{item['score']:.2f}",
            ]
        )
    return f"\nThe first {len(rows) - 1} items:\n\n" + md_table(rows) + "\n" + masking_note(masked) + "\n"


def _short(value: Any, n: int = 60) -> str:
    text = " ".join(str(value if value is not None else "").split())
    return text if len(text) <= n else text[: n - 1] + "…"
