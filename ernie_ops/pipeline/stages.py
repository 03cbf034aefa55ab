"""The stages of `ernie-ops pipeline`, in order. Each takes the running pipeline, does one job with
the same code the single commands use (check, data lint, train, export, verify, serve, smoke, bench,
eval, compare), records what later stages need in its `outputs`, and returns a one-line summary. A
stage that fails raises `StageFailed` with the diagnosis a person needs to fix it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ernie_ops.errors import UserError
from ernie_ops.serve.detached import free_port_block

if TYPE_CHECKING:
    from ernie_ops.pipeline.runner import Pipeline


class StageFailed(Exception):
    """The stage's diagnosis: what went wrong and what to do."""


def check(p: Pipeline) -> str:
    from ernie_ops.recipe.check import check_recipe
    from ernie_ops.train.launch import detect_gpus

    report = check_recipe(p.spec.recipe, p.spec.overrides, gpus=len(detect_gpus()) or None, lint_data=False)
    if report.errors:
        raise StageFailed("\n".join(problem.render() for problem in report.errors))
    p.outputs["warnings"] = [problem.render() for problem in report.warnings]
    return report.summary()


def lint(p: Pipeline) -> str:
    from ernie_ops.data.formats import erniekit_format
    from ernie_ops.data.lint import lint_file
    from ernie_ops.recipe.load import load_recipe

    recipe, _ = load_recipe(Path(p.spec.recipe), p.spec.overrides)
    assert recipe is not None  # the check stage read it
    fmt = erniekit_format(str(recipe.values.get("stage", "SFT")))
    files = []
    for key in ("train_dataset_path", "eval_dataset_path"):
        for name in str(recipe.values.get(key) or "").split(","):
            if name.strip() and Path(name.strip()).is_file():
                files.append(lint_file(Path(name.strip()), fmt, progress=False))
    p.outputs["files"] = [f.to_dict() for f in files]
    bad = [f for f in files if f.bad]
    if bad:
        listing = "; ".join(f"{f.path}: {f.bad} of {f.records} bad ({dict(f.reasons)})" for f in bad)
        raise StageFailed(f"{listing}. `ernie-ops data lint FILE` lists every bad record with its line")
    return ", ".join(f"{f.path.name}: {f.records} records" for f in files) or "no local dataset files"


def train(p: Pipeline) -> str:
    from ernie_ops.recipe.length import run_too_short
    from ernie_ops.train.run import CheckFailed, TrainOptions, read_metrics
    from ernie_ops.train.run import train as run_training

    options = TrainOptions(
        recipe=Path(p.spec.recipe),
        overrides=tuple(p.spec.overrides),
        run_name="train",
        runs_dir=p.record.path,
    )
    try:
        record, outcome = run_training(options)
    except CheckFailed as err:
        raise StageFailed(str(err)) from None
    p.outputs.update(
        run_dir=record.run_dir, base_model=record.model_name_or_path, checkpoint=record.checkpoint
    )
    if outcome is None or record.status != "succeeded":
        tail = "\n".join(outcome.tail[-12:]) if outcome else ""
        why = outcome.failure if outcome and outcome.failure else f"ERNIEKit ended {record.status}"
        raise StageFailed(
            f"training {record.status}: {why}\nlast log lines ({record.run_dir}/logs/train.log):\n{tail}"
        )
    losses = [m["loss"] for m in read_metrics(record.path) if isinstance(m.get("loss"), int | float)]
    p.outputs.update(
        steps=record.last_step,
        first_loss=losses[0] if losses else None,
        final_loss=losses[-1] if losses else None,
        too_short=run_too_short(record, losses),
    )
    loss = f", loss {losses[0]:.3f} -> {losses[-1]:.3f}" if losses else ""
    return f"{record.last_step} steps{loss}; run {record.run_dir}"


def export(p: Pipeline) -> str:
    """The run's verified Paddle checkpoint, then the layout the serve profile's engine reads
    (transformers for vLLM, a GGUF file for llama.cpp), made into the run and recorded in run.json
    as `ernie-ops export --format hf | gguf` makes it."""
    from ernie_ops.serve.exports import describe
    from ernie_ops.train.export import ExportFailed, export_and_verify

    run_dir = p.record.out("train", "run_dir")
    try:
        result = export_and_verify(run_dir, forward=False)
    except (ExportFailed, UserError) as err:
        raise StageFailed(f"export failed: {err}") from None
    p.outputs.update(path=str(result.path), merged=result.merged)
    if not result.report.ok:
        raise StageFailed(_failed_checks(result.report))
    summary = f"{'merged LoRA into' if result.merged else 'full checkpoint'} {result.path}"
    prepared, engine = _prepared(p, str(result.path), source=run_dir)
    if prepared.export is None:
        return summary
    p.outputs["served"] = {**prepared.export, "engine": engine}
    return f"{summary}; {describe(prepared.export)} for {engine}: {prepared.export['path']}"


def verify(p: Pipeline) -> str:
    from ernie_ops.train.verify import verify_checkpoint

    report = verify_checkpoint(p.record.out("export", "path"), forward=True)
    p.outputs["checks"] = report.to_dict()
    if not report.ok:
        raise StageFailed(_failed_checks(report))
    return f"{len(report.checks)} checks passed, forward pass included"


def _failed_checks(report: Any) -> str:
    return "verify found problems: " + "; ".join(f"{c.name}: {c.detail}" for c in report.failed)


# ---------------------------------------------------------------------------------------------
# the endpoints


def serve(p: Pipeline) -> str:
    """The tuned checkpoint served detached on a free port, through the same library call as
    `ernie-ops serve --detach`, in the layout the export stage made for the engine. The base model
    is served later, by `eval`, after this server stops: two servers of a large model rarely fit one
    GPU, and the comparison needs the same serving settings for both, not both at once."""
    endpoint = start_server(
        p, "tuned", p.record.out("export", "path"), source=p.record.out("train", "run_dir")
    )
    p.outputs.update(engine=endpoint["engine"], checkpoint=endpoint["checkpoint"])
    return f"tuned on {endpoint['engine']} at {endpoint['url']}"


def start_server(p: Pipeline, role: str, model: str, source: str | None = None) -> dict[str, Any]:
    """Serve `model` detached (in this process), its output in logs/serve-ROLE.log; the export its
    engine needs is made first from `source` (default: `model`), or reused. The endpoint is recorded
    before the start, so a failed start is stoppable."""
    from ernie_ops.serve.backends import get
    from ernie_ops.serve.detached import NotStarted, start_detached

    prepared, engine = _prepared(p, model, source)
    port = free_port_block(get(engine).port_block)  # FastDeploy's side ports follow it
    name = f"{p.spec.name}-{role}"
    changes: dict[str, Any] = {"port": port, "served_model_name": name}
    if p.spec.startup_timeout:
        changes["startup_timeout"] = p.spec.startup_timeout
    profile = dataclasses.replace(prepared.profile, **changes)
    log = p.record.path / "logs" / f"serve-{role}.log"
    p.say(f"starting the {role} server ({engine}) on port {port} (log: {log})")
    endpoint = {
        "url": f"http://127.0.0.1:{port}",
        "port": port,
        "model": name,
        "engine": engine,
        "checkpoint": str(profile.model),
        "log": str(log),
    }
    p.record.endpoints[role] = endpoint
    p.record.save()
    try:
        start_detached(profile, log, backend=p.spec.engine)
    except NotStarted as err:
        raise StageFailed(f"{role}: {err}") from None
    return endpoint


def _prepared(p: Pipeline, model: str, source: str | None = None) -> tuple[Any, str]:
    """The serve profile for `model` (the pipeline's profile and settings) with the export its
    engine reads made from `source` (`ernie_ops.serve.exports`), and that engine's name."""
    import ernie_ops.serve as serving
    from ernie_ops.serve.backends import choose
    from ernie_ops.serve.exports import prepare
    from ernie_ops.train.export import ExportFailed

    sets = [f"model={model}"] if p.spec.serve_profile else []
    profile = serving.load(p.spec.serve_profile or str(model), [*sets, *p.spec.serve_set])
    engine = choose(p.spec.engine or profile.engine)[0].name  # what `start` will pick
    try:
        return prepare(profile, p.record, p.say, engine=engine, source=source), engine
    except ExportFailed as err:
        raise StageFailed(f"the export {engine} serves could not be made: {err}") from None


def stop_servers(p: Pipeline) -> list[str]:
    """Stop every server the serve stage recorded (through `ernie_ops.serve.stop`); returns what was
    stopped."""
    import ernie_ops.serve as serving

    stopped = []
    for role, endpoint in p.record.endpoints.items():
        if any(s.stopped for s in serving.stop(port=endpoint["port"])):
            stopped.append(f"{role} (port {endpoint['port']})")
    return stopped


def stop(p: Pipeline) -> str:
    stopped = stop_servers(p)
    return "stopped " + ", ".join(stopped) if stopped else "no server was running"


def _endpoint(p: Pipeline, role: str) -> Any:
    from ernie_ops.validate.client import Endpoint

    e = p.record.endpoints[role]
    return Endpoint.parse(e["url"], model=e["model"])


# ---------------------------------------------------------------------------------------------
# validation


def smoke(p: Pipeline) -> str:
    from ernie_ops.validate.smoke import default_expectations, run_smoke

    expect = set(p.spec.smoke_expect) if p.spec.smoke_expect is not None else None
    if expect is None:
        expect = default_expectations(str(p.record.out("train", "base_model") or ""))
    report = asyncio.run(run_smoke(_endpoint(p, "tuned"), expect))
    path = p.record.path / "smoke.json"
    path.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    p.outputs.update(report=str(path), passed=report.passed, counts=report.counts())
    if not report.passed:
        failed = "\n".join(f"{c.name}: {c.evidence}" for c in report.checks if c.status == "FAIL")
        raise StageFailed(f"smoke checks failed against {report.endpoint}:\n{failed}")
    return ", ".join(f"{n} {s}" for s, n in report.counts().items() if n)


def bench(p: Pipeline) -> str | None:
    """A short load test of the tuned endpoint; None (skipped) when no concurrency level is set."""
    if not p.spec.bench_concurrency:
        return None
    from ernie_ops.validate import loadgen

    out = p.record.path / "bench"
    output_len = loadgen.Length.parse(str(p.spec.bench_output_len), "bench_output_len")
    workload = loadgen.Workload.synthetic(
        loadgen.Length.parse("64"), output_len, ignore_eos=p.spec.bench_ignore_eos
    )
    options = loadgen.Options(list(p.spec.bench_concurrency), p.spec.bench_num_prompts, progress=False)
    result = loadgen.bench(_endpoint(p, "tuned"), workload, options)
    loadgen.write(result, out)
    p.outputs.update(dir=str(out), levels=[level.to_dict() for level in result.levels])
    if not result.ok:
        raise StageFailed("the load benchmark had failed requests: " + "; ".join(result.problems()))
    best = max(result.levels, key=lambda level: level.output_throughput)
    rate = f"{best.output_throughput:.1f} output tok/s"
    return f"{len(result.levels)} levels; best {rate} at concurrency {best.concurrency}"


def evaluate(p: Pipeline) -> str:
    from ernie_ops.validate.evaluate import plot_scores, run_eval
    from ernie_ops.validate.suite import load_suite

    suite = load_suite(p.spec.eval_suite, p.spec.eval_judge, p.spec.eval_box_space)
    roles = ["tuned", "base"] if p.spec.compare_base else ["tuned"]
    reports = {}
    for role in roles:
        if role == "base":  # one server at a time (see `serve`)
            for server in stop_servers(p):
                p.say(f"stopped the {server} server")
            start_server(p, "base", p.record.out("train", "base_model"))  # its export made if needed
        p.say(f"evaluating the {role} model on {suite.name} ({len(suite.items)} items)")
        report = asyncio.run(
            run_eval(
                _endpoint(p, role), suite, p.spec.eval_concurrency, p.spec.eval_max_tokens, p.spec.eval_body
            )
        )
        report.write(p.record.path / "eval" / role)
        reports[role] = report
        p.outputs[role] = {"report": str(p.record.path / "eval" / role / "eval.json"), "score": report.score}
    plot_scores(reports["tuned"], p.record.path / "eval" / "scores.png", reports.get("base"))
    errors = {role: len(r.errors) for role, r in reports.items() if r.errors}
    if errors:
        raise StageFailed(f"requests failed during the evaluation: {errors}; see eval/*/results.jsonl")
    return ", ".join(f"{role} {r.score:.3f}" for role, r in reports.items())


def compare(p: Pipeline) -> str:
    from ernie_ops.validate.compare import compare as compare_reports
    from ernie_ops.validate.compare import load_items

    smoke_ok = bool(p.record.out("smoke", "passed"))
    tuned = p.record.out("eval", "tuned")
    base = p.record.out("eval", "base")
    if base is None:
        p.record.verdict = "SHIP" if smoke_ok else "DO NOT SHIP"
        p.outputs["reason"] = "no base model compared (compare_base: false): smoke test and evaluation only"
        return f"{p.record.verdict}: {p.outputs['reason']}"
    result = compare_reports(
        load_items(Path(base["report"])),
        load_items(Path(tuned["report"])),
        "base",
        "tuned",
        max_drop=p.spec.max_drop,
    )
    (p.record.path / "compare.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    gain = tuned["score"] - base["score"]
    reasons = []
    if not smoke_ok:
        reasons.append("the smoke test failed")
    if not result.passed:
        reasons.append("regression on " + ", ".join(m.metric for m in result.regressions))
    if gain <= 0:
        reasons.append(f"the tuned model does not score above the base ({gain:+.3f})")
    too_short = p.record.out("train", "too_short")
    if too_short and (gain <= 0 or not result.passed):
        reasons.insert(0, too_short)  # the scores cannot tell: say so first
    p.record.verdict = "DO NOT SHIP" if reasons else "SHIP"
    p.outputs.update(report=str(p.record.path / "compare.json"), gain=gain, reasons=reasons)
    return f"{p.record.verdict}: tuned {tuned['score']:.3f} vs base {base['score']:.3f} ({gain:+.3f})" + (
        "; " + "; ".join(reasons) if reasons else ""
    )


def report(p: Pipeline) -> str:
    from ernie_ops.pipeline.report import write_pipeline_report

    md, html = write_pipeline_report(p.record)
    p.outputs.update(markdown=str(md), html=str(html))
    return f"{md} and {html.name}"
