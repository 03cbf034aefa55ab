"""ERNIEKit's own example configs against the snapshots (#16).

The corpus (tests/erniekit_examples/, origin in its README) is checked against the snapshot read
from the same ERNIEKit sources: every error left is either a path that does not exist here
(upstream's example data and hub ids) or one listed below with the reason. Against 1.0.1 every
key and value 1.0.1 does not know is named with the version that knows it.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from ernie_ops.recipe.check import check_recipe
from ernie_ops.recipe.problems import Problem
from ernie_ops.recipe.schema import LATEST, accepts_list, latest_version, load_schema, snapshots

CORPUS = Path(__file__).parent / "erniekit_examples"
FILES = sorted(p.relative_to(CORPUS).as_posix() for p in CORPUS.rglob("*.yaml"))
PATH_KEYS = {"train_dataset_path", "eval_dataset_path", "text_dataset_path", "model_name_or_path"}
NOT_HERE = re.compile(r"does not exist|is not downloaded here")

# (file, key) -> why the error stays: each is an error ERNIEKit itself raises at start-up.
EXCEPTIONS = {
    ("ERNIE-4.5-0.3B/pt/run_pt_8k_offline_data.yaml", "train_dataset_path"): (
        "the stored version (dataset_type: pretrain, input_dir) gives no train_dataset_path; "
        "01d61814's tuner calls check_path(train_dataset_path) for every non-VL stage and raises "
        "'Dataset Path is None'"
    ),
    ("ERNIE-4.5-0.3B/sft/run_ocr_sft_8k.yaml", "stage"): (
        "stage OCR-SFT: 01d61814's tuner dispatches SFT, PT, VL-SFT, OCR-VL-SFT and DPO and raises "
        "'Unknown task: OCR-SFT.'; this stored version predates the rename (PaddleOCR-VL's 16k "
        "config uses OCR-VL-SFT)"
    ),
    ("PaddleOCR-VL/sft/run_ocr_sft_8k.yaml", "stage"): "stage OCR-SFT, as above",
}
# Keys ERNIEKit's own examples set that no argument class of the snapshot has: warnings (the
# parser drops them), recorded by the extraction script from the examples/configs tree.
EXAMPLE_ONLY = {
    "split_multi_turn": 2,  # 21B-A3B-Thinking SFT; PaddleFormers' own CLI data arguments have it
    "pad_to_max_seqlen": 5,  # every VL config: a leftover of the VL trainer's collator arguments
    "dataset_name": 1,  # VL-Thinking function call: a DataArguments key of 1.3.0, not of 01d61814
}


def _check(name: str, version: str):
    return check_recipe(CORPUS / name, erniekit_version=version, cwd=CORPUS, lint_data=False)


def _not_here(p: Problem) -> bool:
    return p.key in PATH_KEYS and bool(NOT_HERE.search(p.message))


def test_corpus_is_there():
    assert len(FILES) >= 20
    readme = (CORPUS / "README.md").read_text()
    assert "01d61814c760f95524a7478613b17917377ddf10" in readme
    for name in FILES:
        assert name in readme, f"{name} has no origin line in the corpus README"


def test_latest_names_the_newest_snapshot():
    newest = latest_version()
    assert newest == list(snapshots())[-1]
    schema = load_schema(LATEST)
    assert schema.erniekit_version == newest
    assert schema.commit == "01d61814c760f95524a7478613b17917377ddf10"
    assert {"PT", "VL-SFT", "OCR-VL-SFT"} <= set(schema.stages)
    assert {"chatml", "messages"} <= set(schema.dataset_types)
    assert {"mix_strategy", "packing", "text_dataset_path", "offline_dataset_path"} <= set(schema.fields)


@pytest.mark.parametrize("name", FILES)
def test_no_false_errors_against_the_sources_they_ship_with(name):
    report = _check(name, LATEST)
    left = {(name, p.key): p for p in report.errors if not _not_here(p)}
    listed = {k for k in EXCEPTIONS if k[0] == name}
    unexplained = [p.render() for k, p in left.items() if k not in listed]
    assert not unexplained, "\n".join(unexplained)
    assert set(left) == listed, f"listed exceptions no longer reported: {listed - set(left)}"


def test_keys_only_erniekit_s_examples_set_are_warnings_that_say_so():
    seen: dict[str, int] = {}
    for name in FILES:
        for p in _check(name, LATEST).warnings:
            if p.key in EXAMPLE_ONLY:
                assert "drops it silently" in p.message and "its own example configs set it" in p.message
                seen[p.key] = seen.get(p.key, 0) + 1
    assert seen == EXAMPLE_ONLY
    schema = load_schema(LATEST)
    assert set(schema.example_only_keys) == set(EXAMPLE_ONLY)


def test_the_false_errors_of_issue_16_are_gone():
    """The errors named in the issue, each on a config that has the construct."""
    errors = {name: [p for p in _check(name, LATEST).errors if not _not_here(p)] for name in FILES}
    flat = [p for ps in errors.values() for p in ps]
    assert not [p for p in flat if p.key.endswith("_dataset_type")]  # messages, chatml
    assert not [p for p in flat if p.key in ("pp_seg_method", "mix_strategy", "packing")]
    assert not [p for p in flat if p.key in ("train_dataset_type", "train_dataset_prob")]  # VL
    assert "pp_seg_method: [0,29,57]" in (CORPUS / "ERNIE-4.5-300B-A47B/sft/run_sft_fp8_8k.yaml").read_text()


def _newer_than(version: str) -> dict[str, list[str]]:
    """key -> the shipped versions newer than `version` that know it."""
    from packaging.version import Version

    known: dict[str, list[str]] = {}
    for v, path in snapshots().items():
        if Version(v) > Version(version):
            for key in json.loads(path.read_text())["fields"]:
                known.setdefault(key, []).append(v)
    return known


@pytest.mark.parametrize("name", FILES)
def test_against_1_0_1_every_newer_key_and_value_is_named_with_its_version(name):
    old = load_schema("1.0.1")
    newer = _newer_than("1.0.1")
    report = _check(name, "1.0.1")
    by_key: dict[str, list[Problem]] = {}
    for p in report.errors:
        by_key.setdefault(p.key or "", []).append(p)
    import yaml

    values = yaml.safe_load((CORPUS / name).read_text())
    for key in values:
        if key in old.fields or key not in newer:
            continue
        (p,) = by_key[key]
        assert f"only ERNIEKit {', '.join(newer[key])} knows this key" in p.message, p.render()
    stage = values.get("stage", "SFT")
    if stage not in old.stages and stage in load_schema(LATEST).stages:
        (p,) = by_key["stage"]
        assert "needs ERNIEKit" in p.fix and "or newer" in p.fix, p.render()
    for key in ("train_dataset_type", "eval_dataset_type"):
        kind = values.get(key)
        if "VL" not in stage and kind and kind not in old.dataset_types:
            (p,) = by_key[key]
            assert f"dataset type {kind} needs ERNIEKit {latest_version()} or newer" in p.fix, p.render()


def test_a_yaml_list_is_accepted_where_erniekit_documents_one():
    assert accepts_list("Possible values include `uniform`, `[0, 30, 59]`.")
    assert not accepts_list("Multi-source dataset is supported, e.g., ./sft-1.jsonl,./sft-2.jsonl.")
    for version in snapshots():
        assert "pp_seg_method" in load_schema(version).list_values


def test_a_list_for_a_comma_string_key_is_still_an_error(tmp_path):
    recipe = tmp_path / "r.yaml"
    text = (CORPUS / "ERNIE-4.5-0.3B/sft/run_sft_8k.yaml").read_text()
    recipe.write_text(text.replace('train_dataset_prob: "1.0"', "train_dataset_prob: [1.0]"))
    report = check_recipe(recipe, erniekit_version=LATEST, cwd=tmp_path, lint_data=False)
    assert [p for p in report.errors if p.key == "train_dataset_prob" and "comma-separated" in p.message]


def test_an_unknown_mix_strategy_and_dataset_type_are_errors_with_the_valid_ones(tmp_path):
    recipe = tmp_path / "r.yaml"
    text = (CORPUS / "ERNIE-4.5-0.3B/dpo/run_dpo_lora_8k.yaml").read_text()
    text = text.replace("mix_strategy: random", "mix_strategy: interleave")
    recipe.write_text(text.replace('train_dataset_type: "erniekit"', 'train_dataset_type: "jsonl"'))
    report = check_recipe(recipe, erniekit_version=LATEST, cwd=tmp_path, lint_data=False)
    (mix,) = [p for p in report.errors if p.key == "mix_strategy"]
    assert "interleave_under" in mix.message
    (kind,) = [p for p in report.errors if p.key == "train_dataset_type"]
    assert "chatml" in kind.message and "messages" in kind.message


@pytest.mark.cpu_stack
def test_the_source_reader_gives_what_importing_erniekit_1_0_1_gives():
    """scripts/extract_erniekit_schema.py reads dataclasses with `ast`; on the installed 1.0.1 it
    must agree with the shipped 1.0.1 snapshot, which was read by importing ERNIEKit."""
    import importlib.util

    script = Path(__file__).parent.parent / "scripts" / "extract_erniekit_schema.py"
    spec = importlib.util.spec_from_file_location("extract_erniekit_schema", script)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    erniekit = importlib.util.find_spec("erniekit")
    assert erniekit and erniekit.origin
    root = Path(erniekit.origin).parent.parent
    paddleformers = module._installed_paddleformers()
    data = module.extract(root, "1.0.1", "", paddleformers, "0.3.1")
    shipped = json.loads(snapshots()["1.0.1"].read_text())
    assert module.compare(data, shipped) == []
    assert data["dataset_types"] == shipped["dataset_types"]
    assert data["list_values"] == shipped["list_values"]
