"""`ernie-ops pipeline` on the engines that do not read the Paddle checkpoint: the export stage makes
the layout the serve profile's engine reads (a GGUF file for llama.cpp, the transformers layout for
vLLM), recorded in the run, the pipeline record and the report. Training is not what is tested here:
the pipeline starts after a finished run (`finished_run`), as `--resume` would."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from finished_run import finished_run

from ernie_ops.pipeline.record import PASSED, STAGES
from ernie_ops.pipeline.runner import Pipeline
from ernie_ops.pipeline.spec import PipelineSpec
from ernie_ops.train.record import RunRecord

needs_llama_cpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python (the `llamacpp` extra) is not installed",
)


def _trained(tmp_path: Path, tiny: Path, **spec: object) -> Pipeline:
    """A pipeline whose check, lint and train have passed, on a finished run of the tiny model."""
    suite = tmp_path / "suite.jsonl"
    suite.write_text(
        "".join(
            json.dumps({"id": f"q{i}", "prompt": f"Say {i}.", "expected": str(i)}) + "\n" for i in range(3)
        )
    )
    run = finished_run(tmp_path / "p", tiny, name="train")
    values: dict = {
        "name": "eng",
        "recipe": "unused.yaml",
        "eval_suite": str(suite),
        "eval_max_tokens": 8,
        "smoke_expect": [],
        "bench_concurrency": [2],
        "bench_num_prompts": 4,
        "bench_output_len": 4,
        "startup_timeout": 120.0,
        **spec,
    }
    said: list[str] = []
    pipeline = Pipeline.create(PipelineSpec(**values), directory=tmp_path / "p", echo=said.append)
    for stage in ("check", "lint", "train"):
        pipeline.record.stages[stage].status = PASSED
    pipeline.record.stages["train"].outputs = {
        "run_dir": str(run),
        "base_model": str(tiny),
        "checkpoint": str(run / "output"),
    }
    pipeline.record.save()
    pipeline.said = said  # type: ignore[attr-defined]
    return pipeline


@needs_llama_cpp
def test_a_llamacpp_pipeline_serves_gguf_exports_end_to_end(tiny_dense, tmp_path, monkeypatch):
    """engine: llamacpp with quantization q8_0: the export stage writes the tuned run's q8_0 GGUF into
    the run (run.json), the base model's into the pipeline's exports/, both served by llama.cpp,
    and every stage passes."""
    import ernie_ops.serve as serving

    monkeypatch.chdir(tmp_path)  # the servers' state files go under ./runs/serve
    pipeline = _trained(tmp_path, tiny_dense, engine="llamacpp", serve_set=["quantization=q8_0"])
    code = pipeline.run()
    record = pipeline.record
    assert all(record.stages[s].status in (PASSED, "skipped") for s in STAGES), {
        s: (record.stages[s].status, record.stages[s].diagnosis) for s in STAGES
    }
    # the tuned "fine-tune" is a copy of its base: the same scores, so not shipped
    assert (code, record.verdict) == (1, "DO NOT SHIP")

    run = Path(record.out("train", "run_dir"))
    made = RunRecord.load(run).exports["gguf"]["q8_0"]["path"]
    assert record.out("export", "served")["path"] == made and made.endswith("-q8_0.gguf")
    assert "GGUF q8_0 for llamacpp" in record.stages["export"].summary
    tuned, base = record.endpoints["tuned"], record.endpoints["base"]
    assert (tuned["engine"], tuned["checkpoint"]) == ("llamacpp", made)
    assert base["engine"] == "llamacpp" and Path(base["checkpoint"]).parent == tmp_path / "p" / "exports"
    # served by llama.cpp: its own llama-server when installed, else llama-cpp-python in process
    log = Path(tuned["log"]).read_text()
    assert any(mark in log for mark in ("llama-server", "llama_cpp.server", "_llamacpp_server")), log
    assert [e["how"] for e in record.exports.values()] == ["exported into the run", "converted"]
    report = (tmp_path / "p" / "report.md").read_text()
    assert "| tuned | llamacpp |" in report and f"- GGUF q8_0 of `{run}`: `{made}`" in report
    assert serving.servers() == []  # every server stopped


def test_a_vllm_pipeline_on_cpu_fails_at_serve_for_want_of_a_gpu(tiny_dense, tmp_path, monkeypatch):
    """A serve profile with engine: vllm: the transformers layout is exported into the run (so the
    refusal is not "vLLM cannot read a Paddle checkpoint"), then serve fails with the reason it
    cannot run here."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("ernie_ops.train.launch.detect_gpus", lambda: [])  # a CPU machine, as CI's
    profile = tmp_path / "vllm.yaml"  # the engine comes from the serve profile, the model from the run
    profile.write_text("model: baidu/ERNIE-4.5-0.3B-PT\nengine: vllm\nmax_model_len: 1024\n")
    pipeline = _trained(tmp_path, tiny_dense, serve_profile=str(profile))
    assert pipeline.run() == 1
    record = pipeline.record
    assert record.stages["export"].status == PASSED and record.stages["serve"].status == "failed"
    hf = RunRecord.load(Path(record.out("train", "run_dir"))).exports["hf"]["path"]
    assert record.out("export", "served") | {"engine": "vllm", "format": "hf"} == record.out(
        "export", "served"
    )
    assert record.endpoints["tuned"]["checkpoint"] == hf
    diagnosis = record.stages["serve"].diagnosis
    assert "vLLM cannot run here: no GPU" in diagnosis and "--engine paddle" in diagnosis, diagnosis
    assert "transformers layout" not in diagnosis and "export" not in diagnosis
    assert "stopped at `serve`" in (tmp_path / "p" / "report.md").read_text()


def test_an_engine_that_reads_the_checkpoint_gets_no_other_export(tiny_dense, tmp_path, monkeypatch):
    """The embedded engine serves the Paddle export itself: nothing else is made, nothing recorded."""
    monkeypatch.chdir(tmp_path)
    pipeline = _trained(tmp_path, tiny_dense, engine="paddle")
    assert pipeline.run(until="export") == 0
    assert pipeline.record.out("export", "served") is None and pipeline.record.exports == {}
    assert RunRecord.load(Path(pipeline.record.out("train", "run_dir"))).exports == {}


def test_resuming_from_a_damaged_record_is_a_clear_error(tmp_path, capsys):
    from ernie_ops.cli.main import main

    for text in ('{"name": "x", "dir"', '{"name": "x", "stages": {"check": {"bogus": 1}}}', "[]"):
        (tmp_path / "pipeline.json").write_text(text)
        assert main(["pipeline", "--resume", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert "not a pipeline record this version reads" in err and "Traceback" not in err
