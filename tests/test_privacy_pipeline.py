"""The acceptance test of masking: a pipeline whose eval prompts and expected answers carry personal
data leaves none of it in any file under its run directory (searched byte for byte)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ernie_ops.cli.main import main
from ernie_ops.pipeline.record import PipelineRecord

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "tiny" / "sft_lora_cpu.yaml"
DATA = REPO / "recipes" / "data"

PLANTED = {
    "EMAIL": "anna.schmidt@example.de",
    "PHONE": "+49 30 12345678",
    "IBAN": "DE89 3704 0044 0532 0130 00",
    "CARD": "4111 1111 1111 1111",
    "NATIONAL_ID": "86095742719",
    "IP_ADDRESS": "203.0.113.77",
    "API_KEY": "sk-proj-Zx81kQ2mN7vB4cL0pR5tY9wE3",
}


@pytest.mark.slow
def test_a_pipeline_leaves_no_planted_value_in_its_run_directory(tiny_dense, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ERNIE_OPS_NO_MASK", raising=False)
    suite = tmp_path / "inputs" / "suite.jsonl"  # the user's file, outside the run directory
    suite.parent.mkdir()
    items = [
        {
            "id": f"pii-{kind.lower()}",
            "prompt": f"My Steuer-ID and details: {value}. Repeat it exactly.",
            "expected": value,
            "judge": "exact",
        }
        for kind, value in PLANTED.items()
    ]
    suite.write_text("\n".join(json.dumps(i) for i in items) + "\n")
    spec = tmp_path / "p.yaml"
    spec.write_text(
        f"name: pii\nrecipe: {RECIPE}\neval_suite: {suite}\neval_max_tokens: 8\ncompare_base: true\n"
        f"overrides: [model_name_or_path={tiny_dense}, max_steps=2, save_steps=2, eval_steps=2,\n"
        f"  train_dataset_path={DATA}/sft-train.jsonl, eval_dataset_path={DATA}/sft-eval.jsonl]\n"
        "bench_concurrency: [2]\nbench_num_prompts: 4\nbench_output_len: 4\n"
    )
    main(["pipeline", str(spec), "--runs-dir", str(tmp_path / "runs")])
    (directory,) = [p for p in (tmp_path / "runs").iterdir() if p.name.startswith("pii-")]
    record = PipelineRecord.load(directory)
    assert record.stages["eval"].status == "passed", record.stages["eval"]
    results = directory / "eval" / "tuned" / "results.jsonl"
    assert results.is_file()
    leaks = []
    files = [p for p in directory.rglob("*") if p.is_file()]
    for path in files:
        data = path.read_bytes()
        leaks += [
            (str(path.relative_to(directory)), kind) for kind, v in PLANTED.items() if v.encode() in data
        ]
    assert not leaks, leaks
    expected = {json.loads(line)["expected"] for line in results.read_text().splitlines()}
    assert expected == {f"<{kind}_1>" for kind in PLANTED}  # masked where it was written
    assert "is masked" in (directory / "report.md").read_text()
