"""The demo task's files: deterministic, valid ERNIEKit data, a suite its reference answers pass."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from ernie_ops.cli.main import main
from ernie_ops.pipeline.demo_task import DEMO_SPEC, DemoTask, answer, write_demo_task
from ernie_ops.recipe.check import check_recipe
from ernie_ops.tiny_model import TinySpec
from ernie_ops.validate.judges import score
from ernie_ops.validate.suite import load_suite

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "tiny" / "sft_lora_cpu.yaml"
FILES = ("train.jsonl", "eval.jsonl", "suite.jsonl")


@pytest.fixture
def task(tmp_path) -> DemoTask:
    return write_demo_task(tmp_path / "demo", seed=0)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _number(prompt: str) -> int:
    return int(prompt.rsplit(" ", 1)[1])


def test_same_seed_same_files_other_seed_other_files(tmp_path, task):
    again = write_demo_task(tmp_path / "again", seed=0)
    other = write_demo_task(tmp_path / "other", seed=1)
    for name in FILES:
        assert (task.train.parent / name).read_bytes() == (again.train.parent / name).read_bytes(), name
        assert (task.train.parent / name).read_bytes() != (other.train.parent / name).read_bytes(), name
    assert task.overrides == again.overrides
    assert other.overrides["seed"] == "1"


def test_paths_and_settings(task):
    assert [task.train.name, task.eval.name, task.suite.name] == list(FILES)
    assert all(p.is_file() for p in (task.train, task.eval, task.suite))
    assert 1 <= task.max_tokens <= 16
    assert isinstance(DEMO_SPEC, TinySpec) and DEMO_SPEC.kind == "dense"  # MoE trains on GPUs only
    args = task.override_args()
    assert f"train_dataset_path={task.train}" in args and f"eval_dataset_path={task.eval}" in args
    # one checkpoint, at the end (the recipe's own save_steps would checkpoint every few steps)
    steps = int(task.overrides["max_steps"])
    assert int(task.overrides["save_steps"]) == steps and steps % int(task.overrides["eval_steps"]) == 0


def test_overrides_are_keys_erniekit_knows(task):
    # ERNIEKit drops unknown keys silently; `ernie-ops check` reports them. The demo passes its own
    # model_name_or_path (built at run time), so the recipe's default, unbuilt here, is not checked.
    report = check_recipe(RECIPE, task.override_args(), cwd=REPO)
    errors = [p.render() for p in report.errors if p.key != "model_name_or_path"]
    assert not errors


def test_data_lint_passes(tmp_path, monkeypatch, task):
    monkeypatch.chdir(tmp_path)
    assert main(["data", "lint", "--format", "erniekit-sft", str(task.train), str(task.eval)]) == 0


def test_train_and_held_out_data(task):
    train, held_out = _rows(task.train), _rows(task.eval)
    assert len(train) == 600 and len(held_out) == 60
    for row in train + held_out:
        assert set(row) == {"src", "tgt"} and len(row["src"]) == len(row["tgt"]) == 1
        n = _number(row["src"][0])
        assert row["src"][0] == f"Even or odd: {n}" and 10 <= n <= 99999
        assert row["tgt"] == [answer(n)] == [("even", "odd")[n % 2]]
    train_numbers = {_number(r["src"][0]) for r in train}
    held_numbers = {_number(r["src"][0]) for r in held_out}
    assert len(train_numbers) == 600 and len(held_numbers) == 60
    assert not train_numbers & held_numbers  # the suite measures unseen numbers
    # every last digit equally often: balanced labels, so chance (a constant answer) is 0.5
    assert Counter(n % 10 for n in train_numbers) == dict.fromkeys(range(10), 60)
    assert Counter(n % 10 for n in held_numbers) == dict.fromkeys(range(10), 6)


def test_suite_loads_and_matches_the_eval_file(task):
    suite = load_suite(task.suite)
    items = list(suite.items)
    assert len(items) == 60
    assert [i.prompt for i in items] == [r["src"][0] for r in _rows(task.eval)]
    assert {i.judge for i in items} == {"exact"}
    assert Counter(i.expected for i in items) == {"even": 30, "odd": 30}


def test_reference_answers_score_1_and_wrong_ones_0(task):
    for item in load_suite(task.suite).items:
        assert score(item.expected, item).value == 1.0
        assert score(f" {item.expected.capitalize()}.", item).value == 1.0  # normalized
        wrong = "odd" if item.expected == "even" else "even"
        for prediction in (wrong, "", "Even or odd", "zulu kilo 7", "evenodd"):
            assert score(prediction, item).value == 0.0, prediction
