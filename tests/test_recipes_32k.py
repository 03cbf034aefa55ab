"""The Thinking models' 32K recipes: the variants ERNIEKit ships (SFT and LoRA at 32K; function-call
SFT at 8K only), with ERNIEKit's 32K settings, clean under every ERNIEKit version they name (#16)."""

from __future__ import annotations

import pytest
import yaml

from ernie_ops.recipe.check import check_recipe
from ernie_ops.recipe.library import LIBRARY
from ernie_ops.recipe.render import relative
from ernie_ops.recipe.schema import latest_version

THINKING = ("ERNIE-4.5-21B-A3B-Thinking", "ERNIE-4.5-VL-28B-A3B-Thinking")
LONG = [e for e in LIBRARY if e.model in THINKING and e.seq == 32768]


def settings(model: str, method: str, seq: int) -> dict:
    (entry,) = [e for e in LIBRARY if (e.model, e.method, e.seq) == (model, method, seq)]
    return yaml.safe_load(entry.path.read_text())


def test_the_thinking_models_have_the_32k_variants_erniekit_ships_and_no_others():
    have = {(e.model, e.method) for e in LONG}
    assert have == {(m, method) for m in THINKING for method in ("sft", "sft-lora")}
    # ERNIEKit's function-call examples for 21B-A3B-Thinking are run_fc_8k / run_fc_lora_8k only
    assert {e.seq for e in LIBRARY if e.model == THINKING[0] and e.method.startswith("fc")} == {8192}


def test_the_32k_settings_are_erniekit_s_32k_examples():
    a3b = settings(THINKING[0], "sft-lora", 32768)
    assert (a3b["tensor_parallel_degree"], a3b["pipeline_parallel_degree"]) == (2, 2)  # 8K: 1 x 1
    assert settings(THINKING[0], "sft-lora", 8192)["tensor_parallel_degree"] == 1
    full = settings(THINKING[0], "sft", 32768)
    assert {k: v for k, v in full.items() if k not in ("max_seq_len", "ernie_ops")} == {
        k: v for k, v in settings(THINKING[0], "sft", 8192).items() if k not in ("max_seq_len", "ernie_ops")
    }  # the 32K full SFT example differs from the 8K one in max_seq_len alone
    for method in ("sft", "sft-lora"):
        vl = settings(THINKING[1], method, 32768)
        assert vl["max_seq_len"] == 32768 and vl["chat_template"] == "ernie_vl_thinking"
        assert vl["use_sparse_head_and_loss_fn"] is True and vl["use_recompute_loss_fn"] is True


@pytest.mark.parametrize("entry", LONG, ids=relative)
@pytest.mark.parametrize("version", ["1.3.0", "latest"])
def test_each_32k_recipe_checks_clean_under_the_erniekit_versions_it_names(entry, version, repo, monkeypatch):
    monkeypatch.chdir(repo)
    text = entry.path.read_text()
    assert entry.erniekit == ">=1.3" and "# Needs ERNIEKit >=1.3" in text
    nodes = max(1, entry.min_gpus // 8)
    report = check_recipe(entry.path, gpus=min(entry.min_gpus, 8), nnodes=nodes, erniekit_version=version)
    assert report.errors == [], [p.render() for p in report.errors]
    assert all("not downloaded" in w.message for w in report.warnings), [w.render() for w in report.warnings]
    assert ("1.3.0" if version == "1.3.0" else latest_version()) in report.schema


def test_the_vl_32k_recipes_are_refused_by_erniekit_1_0_1(repo, monkeypatch):
    """The minimum the header names is real: 1.0.1 has no VL-SFT stage and no text_dataset_path."""
    monkeypatch.chdir(repo)
    (entry,) = [e for e in LONG if (e.model, e.method) == (THINKING[1], "sft")]
    report = check_recipe(entry.path, gpus=8, erniekit_version="1.0.1")
    keys = {p.key for p in report.errors}
    assert {"stage", "text_dataset_path"} <= keys, [p.render() for p in report.errors]
