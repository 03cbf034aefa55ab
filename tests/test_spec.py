"""ernie_ops.spec: one typed reader for serve profiles, pipeline specs and eval suites."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ernie_ops.errors import UserError
from ernie_ops.serve.profile import load_profile
from ernie_ops.spec import check, describe, load_yaml


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def profile_error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(UserError) as err:
        load_profile(path)
    return str(err.value).replace(str(path), "p.yaml")


def test_an_int_given_for_a_list_is_an_error_with_its_line(tmp_path):
    """It was accepted ("int" in "list[int]") and crashed later: object of type 'int' has no len()."""
    text = profile_error(tmp_path, "model: /m\ngpus: 3\n")
    assert "p.yaml:2: error: gpus: expected list[int], got 3" in text
    assert "fix: e.g. gpus: [0]" in text


def test_a_list_of_names_given_for_a_list_of_ints_names_the_item(tmp_path):
    text = profile_error(tmp_path, "model: /m\ngpus: [a, b]\n")
    expected = "p.yaml:2: error: gpus: expected list[int], got ['a', 'b'] (gpus[0]: expected int, got str)"
    assert expected in text


def test_yaml_yes_is_a_bool_not_an_int(tmp_path):
    text = profile_error(tmp_path, "model: /m\nmax_num_seqs: yes\n")
    assert "p.yaml:2: error: max_num_seqs: expected int, got True (YAML reads" in text


def test_an_unknown_key_gets_did_you_mean(tmp_path):
    text = profile_error(tmp_path, "model: /m\ntensor_paralel_size: 2\n")
    assert "p.yaml:2: error: tensor_paralel_size: unknown serve-profile key" in text
    assert "did you mean 'tensor_parallel_size'?" in text


def test_every_problem_is_reported_at_once_each_with_its_line(tmp_path):
    text = profile_error(
        tmp_path,
        "model: /m\ngpus: 3\nport: yes\nmax_num_seq: 4\ngpu_memory_utilization: high\nquantization: wint3\n",
    )
    for line, key in ((2, "gpus"), (3, "port"), (4, "max_num_seq"), (5, "gpu_memory_utilization")):
        assert f"p.yaml:{line}: error: {key}: " in text
    assert "p.yaml:6: error: quantization: 'wint3' is not a FastDeploy quantization" in text


def test_a_missing_required_key_is_named(tmp_path):
    text = profile_error(tmp_path, "port: 8000\n")
    assert "p.yaml: error: model: not set" in text


def test_an_override_of_the_wrong_type_is_named_by_the_override(tmp_path):
    path = write(tmp_path, "model: /m\n")
    with pytest.raises(UserError, match=r"override 'port=http': error: port: expected int, got 'http'"):
        load_profile(path, ["port=http"])


def test_an_int_is_a_float_and_text_is_kept_as_typed(tmp_path):
    profile = load_profile(write(tmp_path, "model: /m\nstartup_timeout: 60\nfastdeploy_version: 2.5\n"))
    assert profile.startup_timeout == 60.0 and isinstance(profile.startup_timeout, float)
    assert profile.fastdeploy_version == "2.5"


def test_a_list_of_text_is_set_by_a_yaml_list_override(tmp_path):
    # `str` fields keep an override's text as typed (`host=::`); a `list[str]` one did too, so
    # `serve_set=[quantization=q4_0]` was refused as "expected list[str], got '[quantization=q4_0]'"
    from ernie_ops.pipeline.spec import PipelineSpec
    from ernie_ops.spec import text_overrides

    loaded, problems = load_yaml(
        write(tmp_path, "name: x\n"), ["serve_set=[quantization=q4_0, port=9000]", "name=::"]
    )
    assert loaded is not None and not problems
    values = text_overrides(PipelineSpec, loaded)
    assert values["serve_set"] == ["quantization=q4_0", "port=9000"] and values["name"] == "::"


@dataclass
class Toy:
    name: str
    sizes: list[int] = field(default_factory=list)
    ratio: float | None = None
    extra: dict | None = None


def test_check_any_dataclass(tmp_path):
    loaded, problems = load_yaml(write(tmp_path, "name: x\nsizes: [1, true]\nratio: 1\nextra: {a: 1}\n"))
    assert loaded is not None and not problems
    toy, problems = check(Toy, loaded.values, loaded.where, "toy")
    assert toy is None and [p.where.rsplit(":", 1)[1] for p in problems] == ["2"]
    assert "expected list[int], got [1, True]" in problems[0].message
    toy, problems = check(Toy, {"name": "x", "ratio": 1}, lambda key=None: "flags", "toy")
    assert toy == Toy("x", ratio=1.0) and not problems
    assert describe(dict | None) == "mapping or null" and describe(list[str]) == "list[str]"


def test_a_pipeline_spec_is_checked_the_same_way(tmp_path):
    from ernie_ops.pipeline.spec import load_pipeline

    path = write(tmp_path, "recipe: r.yaml\neval_suite: s.jsonl\nbench_concurrency: 8\ncompare_base: 1\n")
    with pytest.raises(UserError) as err:
        load_pipeline(path)
    text = str(err.value).replace(str(path), "p.yaml")
    assert "p.yaml:3: error: bench_concurrency: expected list[int], got 8" in text
    assert "fix: e.g. bench_concurrency: [1, 4]" in text
    assert "p.yaml:4: error: compare_base: expected bool, got 1" in text
    assert "p.yaml:1: error: recipe: r.yaml: no such file" in text


def test_suite_lines_are_checked_the_same_way_every_problem_with_its_line(tmp_path):
    import json

    from ernie_ops.validate.suite import load_suite

    lines = [
        {"prompt": "p", "expected": 1, "max_tokens": True},
        {"prompt": "p", "expected": 1},
        {"promt": "p", "expected": 1, "tags": "chart"},
        {"prompt": "p", "expected": 1, "tolerance": "2%"},
    ]
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(UserError) as err:
        load_suite(path)
    text = str(err.value).replace(str(path), "s.jsonl")
    assert "5 problems in the suite" in text and "s.jsonl:3: no prompt or messages" in text
    assert "s.jsonl:1: max_tokens is True; expected a positive integer" in text
    assert (
        "s.jsonl:3: unknown field 'promt'; expected one of id, prompt" in text
        and "did you mean 'prompt'?" in text
    )
    assert "s.jsonl:3: tags is 'chart'; expected a list of strings" in text
    assert "s.jsonl:4: tolerance is '2%'; expected a relative tolerance in [0, 1)" in text
    assert "s.jsonl:2" not in text
