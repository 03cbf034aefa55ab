"""The recipe library: files equal their definition, every recipe checks clean, tiny ones train."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest
import yaml

from ernie_ops.cli.main import main
from ernie_ops.recipe.check import check_recipe
from ernie_ops.recipe.library import LIBRARY, SEQS
from ernie_ops.recipe.render import relative, render

SHIPPED = [e for e in LIBRARY if e.model != "tiny"]
TINY = [e for e in LIBRARY if e.model == "tiny"]
LOSS = re.compile(r"\bloss: ([-+\w.]+), learning_rate")


def test_files_equal_their_definition():
    for entry in LIBRARY:
        assert entry.path.read_text() == render(entry), f"{relative(entry)}: run scripts/gen_recipes.py"


def test_library_covers_models_methods_and_contexts():
    have = {(e.model, e.method, e.seq) for e in SHIPPED}
    for model in ("ERNIE-4.5-0.3B", "ERNIE-4.5-21B-A3B", "ERNIE-4.5-300B-A47B"):
        for method in ("sft", "sft-lora", "sft-wint4-lora", "dpo", "dpo-lora"):
            for seq in SEQS:
                assert (model, method, seq) in have
    for method in ("sft", "sft-lora"):
        for seq in SEQS:
            assert ("ERNIE-4.5-VL-28B-A3B", method, seq) in have
    assert {e.method for e in TINY} == {"sft", "sft-lora", "dpo-lora"}


@pytest.mark.parametrize("entry", SHIPPED, ids=relative)
def test_shipped_recipe_checks_clean_on_its_minimum_gpus(entry, repo, monkeypatch):
    monkeypatch.chdir(repo)
    nodes = max(1, entry.min_gpus // 8)
    report = check_recipe(entry.path, gpus=min(entry.min_gpus, 8), nnodes=nodes)
    assert report.errors == [], [p.render() for p in report.errors]
    # the only warnings: the model is not downloaded here, and VL needs a newer ERNIEKit
    for w in report.warnings:
        assert "not downloaded" in w.message or "will not run with this install" in w.message, w.render()


@pytest.mark.parametrize("entry", SHIPPED, ids=relative)
def test_header_has_the_commands_and_the_minimum(entry):
    text = entry.path.read_text()
    path = relative(entry)
    assert f"erniekit train {path}" in text and f"ernie-ops train {path}" in text
    assert f"# Minimum: {entry.min_gpus} x 80 GB" in text
    values = yaml.safe_load(text)
    assert values["ernie_ops"]["min_gpus"] == entry.min_gpus
    ranks = math.prod(values.get(k, 1) for k in ("tensor_parallel_degree", "pipeline_parallel_degree"))
    assert entry.min_gpus % ranks == 0


@pytest.mark.parametrize("entry", TINY, ids=relative)
def test_tiny_recipe_checks_clean(entry, repo, tiny_dense, monkeypatch):
    monkeypatch.chdir(repo)
    report = check_recipe(entry.path, [f"model_name_or_path={tiny_dense}"], gpus=1)
    assert report.problems == [], [p.render() for p in report.problems]


@pytest.mark.slow
@pytest.mark.parametrize("entry", TINY, ids=relative)
def test_tiny_recipe_trains_on_cpu(entry, repo, tiny_dense, tmp_path):
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "erniekit.launcher",
        "train",
        relative(entry),
        f"model_name_or_path={tiny_dense}",
        f"output_dir={out}",
    ]
    result = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    losses = [float(x) for x in LOSS.findall(log)]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses), log[-2000:]
    weights = (
        "peft_model.safetensors.index.json" if "lora" in entry.method else "model.safetensors.index.json"
    )
    assert (out / weights).is_file()


def test_recipes_lists_the_library(capsys):
    assert main(["recipes", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == len(LIBRARY)
    assert {
        "model": "ERNIE-4.5-300B-A47B",
        "method": "dpo",
        "context": 8192,
        "min_gpus": 112,
        "erniekit": "",
        "path": "recipes/ERNIE-4.5-300B-A47B/dpo_8k.yaml",
    } in rows


def test_recipes_new_fills_in_the_user_paths(tmp_path, repo, monkeypatch, capsys):
    monkeypatch.chdir(repo)
    out = tmp_path / "my.yaml"
    args = [
        "recipes",
        "new",
        "--model",
        "baidu/ERNIE-4.5-21B-A3B-Paddle",
        "--method",
        "sft-lora",
        "--seq",
        "32768",
        "--train",
        "recipes/data/sft-train.jsonl",
        "--eval",
        "recipes/data/sft-eval.jsonl",
        "-o",
        str(out),
    ]
    assert main(args) == 0
    values = yaml.safe_load(out.read_text())
    assert values["max_seq_len"] == 32768 and values["fine_tuning"] == "LoRA"
    assert values["train_dataset_path"] == "recipes/data/sft-train.jsonl"
    assert "0 error(s)" in capsys.readouterr().out
    assert main(args) == 2  # exists: refuses without --force
    assert "already exists" in capsys.readouterr().err


def test_recipes_new_unknown_method_suggests(tmp_path, capsys):
    args = [
        "recipes",
        "new",
        "--model",
        "ERNIE-4.5-0.3B",
        "--method",
        "sft-lroa",
        "-o",
        str(tmp_path / "x.yaml"),
    ]
    assert main(args) == 2
    assert "did you mean 'sft-lora'" in capsys.readouterr().err
