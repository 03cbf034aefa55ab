"""`ernie-ops pipeline`: the spec, the stage runner, a failure in the middle, and --resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ernie_ops.cli.main import main
from ernie_ops.errors import UserError
from ernie_ops.pipeline.record import STAGES, PipelineRecord
from ernie_ops.pipeline.spec import load_pipeline
from ernie_ops.serve import backends as engines
from ernie_ops.validate.examples import write_example_suites

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "tiny" / "sft_lora_cpu.yaml"
DATA = REPO / "recipes" / "data"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------
# the spec


def test_spec_problems_are_all_reported_with_lines(tmp_path):
    spec = write(
        tmp_path / "p.yaml",
        f"recipe: {RECIPE}\neval_suite: {tmp_path}/missing.jsonl\neval_judg: exact\n"
        "compare_base: maybe\nengine: vlm\nbench_concurrency: [1, 0]\noverrides: [max_steps]\n"
        "eval_box_space: percent\n",
    )
    with pytest.raises(UserError) as err:
        load_pipeline(spec)
    text = str(err.value)
    assert f"{spec}:2: error: eval_suite: {tmp_path}/missing.jsonl: no such file" in text
    assert (
        f"{spec}:3: error: eval_judg: unknown pipeline key" in text and "did you mean 'eval_judge'?" in text
    )
    assert f"{spec}:4: error: compare_base: expected bool, got 'maybe'" in text
    assert f"{spec}:5: error: engine: expected {', '.join(engines.names())} or null, not 'vlm'" in text
    assert f"{spec}:6: error: bench_concurrency: expected positive integers" in text
    assert f"{spec}:7: error: overrides: 'max_steps' is not key=value" in text
    assert f"{spec}:8: error: eval_box_space: expected one of pixels, norm1000, norm1" in text


def test_the_shipped_gpu_pipeline_is_valid(tmp_path, monkeypatch):
    """recipes/pipelines/*.yaml name a recipe and a serve profile that exist; the suite is the user's."""
    monkeypatch.chdir(REPO)
    suite = write_example_suites(tmp_path)[-1]
    for path in (REPO / "recipes" / "pipelines").glob("*.yaml"):
        spec = load_pipeline(path, [f"eval_suite={suite}"])
        assert spec.engine == "fastdeploy" and spec.serve_profile and Path(spec.recipe).is_file()


def test_spec_requires_recipe_and_suite(tmp_path, capsys):
    spec = write(tmp_path / "p.yaml", "name: x\n")
    assert main(["pipeline", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "recipe: not set" in err and "eval_suite: not set" in err
    assert main(["pipeline"]) == 2
    assert "give a PIPELINE.yaml, or at least --recipe and --eval-suite" in capsys.readouterr().err
    assert main(["pipeline", "--resume", str(tmp_path)]) == 2
    assert "is not a pipeline directory" in capsys.readouterr().err


def test_unknown_until_stage(tmp_path, capsys):
    suite = write_example_suites(tmp_path)[-1]
    args = ["pipeline", "--recipe", str(RECIPE), "--eval-suite", str(suite), "--runs-dir", str(tmp_path)]
    assert main([*args, "--until", "deploy"]) == 2
    assert "unknown stage 'deploy'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# a broken middle stage, then --resume


@pytest.mark.slow
def test_failed_export_stops_the_pipeline_and_resume_completes_it(tiny_dense, tmp_path, capsys, monkeypatch):
    """Training passes; the base model then disappears, so the LoRA merge (export) fails with its
    diagnosis; once the model is back, --resume finishes without training again."""
    monkeypatch.chdir(tmp_path)  # the servers' state files go under ./runs/serve
    base = shutil.copytree(tiny_dense, tmp_path / "base-model")
    suite = write_example_suites(tmp_path / "suites")[-1]
    spec = write(
        tmp_path / "p.yaml",
        f"name: broken\nrecipe: {RECIPE}\neval_suite: {suite}\neval_max_tokens: 8\n"
        f"overrides: [model_name_or_path={base}, max_steps=2, save_steps=2, eval_steps=2,\n"
        f"  train_dataset_path={DATA}/sft-train.jsonl, eval_dataset_path={DATA}/sft-eval.jsonl]\n"
        "bench_concurrency: [2]\nbench_num_prompts: 4\nbench_output_len: 4\n",
    )
    assert main(["pipeline", str(spec), "--until", "train", "--runs-dir", str(tmp_path / "runs")]) == 0
    (directory,) = [p for p in (tmp_path / "runs").iterdir() if p.name.startswith("broken-")]
    record = PipelineRecord.load(directory)
    assert [record.stages[s].status for s in STAGES[:4]] == ["passed", "passed", "passed", "pending"]

    hidden = base.rename(tmp_path / "hidden")
    assert main(["pipeline", "--resume", str(directory)]) == 1
    out = capsys.readouterr().out
    assert "already passed, not redone: check, lint, train" in out
    assert "export: FAILED" in out and "stopped at export" in out
    record = PipelineRecord.load(directory)
    assert record.status == "failed" and record.stages["export"].status == "failed"
    assert str(base) in record.stages["export"].diagnosis  # names the missing base model
    assert (directory / "report.md").is_file()  # a partial report: how far it got
    assert "stopped at `export`" in (directory / "report.md").read_text()

    hidden.rename(base)
    code = main(["pipeline", "--resume", str(directory)])
    record = PipelineRecord.load(directory)
    assert all(record.stages[s].status in ("passed", "skipped") for s in STAGES), record.stages
    assert record.stages["train"].runs == 1 and record.stages["check"].runs == 1  # not redone
    assert record.stages["export"].runs == 2
    # a random tiny model trained for 2 steps does not beat its base: the verdict says so, exit 1
    assert record.verdict == "DO NOT SHIP" and code == 1
    report = (directory / "report.md").read_text()
    for section in (
        "## Lineage",
        "## Training",
        "## Serving",
        "## Smoke test",
        "## Load test",
        "## Evaluation",
    ):
        assert section in report
    assert json.loads((directory / "smoke.json").read_text())["passed"]
    assert not list((tmp_path / "runs" / "serve").glob("*.json"))  # every server stopped
    html = (directory / "report.html").read_text()
    assert "data:image/png;base64," in html and "<script" not in html


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, monkeypatch, capsys):
    """`ernie-ops demo` on this CPU: every stage passes and the fine-tune beats the base on held-out
    numbers it never saw (a real effect of training: the base model cannot answer at all)."""
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--runs-dir", str(tmp_path / "runs")]) == 0
    (directory,) = (tmp_path / "runs").glob("demo-*")
    record = PipelineRecord.load(directory)
    assert all(record.stages[s].status == "passed" for s in STAGES), record.stages
    tuned, base = record.out("eval", "tuned")["score"], record.out("eval", "base")["score"]
    assert tuned > base and tuned >= 0.8, (tuned, base)
    assert record.verdict == "SHIP"
    report = (directory / "report.md").read_text()
    assert report.startswith("# Pipeline `demo`: SHIP") and "## Evaluation: tuned vs base" in report
    assert (directory / "report.html").stat().st_size > 10_000  # the plots are inside
    assert "held-out accuracy: tuned" in capsys.readouterr().out
    assert (directory / "pipeline.yaml").is_file()  # `ernie-ops pipeline` can rerun it
