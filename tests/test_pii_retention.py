"""Retention by kind: retention.yaml gives a period per kind of unit (training runs, pipelines, eval,
bench, server logs, the gateway's request log and review queue), read with file:line errors;
`policy_for` decides between --older-than, the file and ERNIE_OPS_RETENTION; `collect` applies it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from ernie_ops.errors import UserError
from ernie_ops.privacy.retention import collect, kind_of, load_policy, period_for, policy_for

DAY = 86400


def _unit(path: Path, days: float, marker: str | None = None) -> Path:
    """A unit (a directory, with MARKER in it, or a file) last written DAYS ago."""
    if marker:
        path.mkdir(parents=True)
        (path / marker).write_text("{}")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}\n")
    t = time.time() - days * DAY
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(p, (t, t))
    return path


def _runs(tmp_path: Path) -> dict[str, Path]:
    runs = tmp_path / "runs"
    return {
        "run": _unit(runs / "sft-old", 40, "run.json"),
        "pipeline": _unit(runs / "pipe-old", 40, "pipeline.json"),
        "other": _unit(runs / "notes.html", 40),
        "bench": _unit(runs / "bench" / "bench-1.json", 40),
        "review": _unit(runs / "gateway" / "review" / "r1-shadow.json", 10),
        "requests": _unit(runs / "gateway" / "requests" / "requests-20260101-000000.jsonl", 10),
        "eval": _unit(runs / "compare" / "cmp-1", 20, "report.html"),
    }


def test_each_kind_keeps_its_own_period(tmp_path: Path) -> None:
    units = _runs(tmp_path)
    runs = tmp_path / "runs"
    assert {name: kind_of(p, runs) for name, p in units.items()} == {
        "run": "runs",
        "pipeline": "pipelines",
        "other": "default",
        "bench": "bench",
        "review": "review_queue",
        "requests": "gateway_log",
        "eval": "eval",
    }
    config = tmp_path / "retention.yaml"
    config.write_text("default: 30d\nruns: 90d\npipelines: 60\nreview_queue: 7d\neval: 2w\ndirs: [runs]\n")
    policy = load_policy(config)
    assert policy.period("runs") == 90 * DAY and policy.period("pipelines") == 60 * DAY
    assert policy.period("lint") == 30 * DAY and policy.dirs == (Path("runs"),)
    result = collect([runs], policy)
    deleted = {p.path.name for p in result.deleted}
    assert deleted == {"notes.html", "bench-1.json", "r1-shadow.json", "cmp-1"}
    assert units["run"].is_dir() and units["pipeline"].is_dir() and units["requests"].is_file()
    assert result.to_dict()["periods_days"]["review_queue"] == 7


def test_a_kind_with_no_period_and_no_default_is_kept(tmp_path: Path) -> None:
    units = _runs(tmp_path)
    config = tmp_path / "retention.yaml"
    config.write_text("bench: 1d\n")
    result = collect([tmp_path / "runs"], load_policy(config))
    assert [u.path for u in result.deleted] == [units["bench"]]


def test_every_problem_of_the_file_with_its_line(tmp_path: Path) -> None:
    config = tmp_path / "retention.yaml"
    config.write_text("default: 30d\nrun: 90d\nbench: soon\ndirs: runs\n")
    with pytest.raises(UserError) as err:
        load_policy(config)
    text = str(err.value)
    assert f"{config}:2" in text and "did you mean 'runs'" in text
    assert f"{config}:3" in text and "not a duration: 'soon'" in text
    assert f"{config}:4" in text and "dirs" in text
    config.write_text("dirs: [runs]\n")
    with pytest.raises(UserError, match="no retention period"):
        load_policy(config)


def test_older_than_beats_the_file_which_beats_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ERNIE_OPS_RETENTION_CONFIG", raising=False)
    monkeypatch.delenv("ERNIE_OPS_RETENTION", raising=False)
    with pytest.raises(UserError, match="no retention period"):
        policy_for()
    monkeypatch.setenv("ERNIE_OPS_RETENTION", "10d")
    assert policy_for().period("runs") == 10 * DAY
    Path("retention.yaml").write_text("runs: 90d\nreview_queue: 3d\n")
    assert policy_for().period("runs") == 90 * DAY and policy_for().period("bench") is None
    assert policy_for("5d").period("runs") == 5 * DAY  # one period for every kind
    other = tmp_path / "other.yaml"
    other.write_text("default: 1w\n")
    assert policy_for(config=other).period("runs") == 7 * DAY
    monkeypatch.setenv("ERNIE_OPS_RETENTION_CONFIG", str(other))
    assert policy_for().period("runs") == 7 * DAY
    with pytest.raises(UserError, match="not both"):
        policy_for("5d", other)
    assert period_for("review_queue") == 7 * DAY
    monkeypatch.delenv("ERNIE_OPS_RETENTION_CONFIG")
    assert period_for("review_queue") == 3 * DAY


def test_gc_honours_the_retention_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from ernie_ops.cli.main import main

    units = _runs(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ERNIE_OPS_RETENTION_CONFIG", raising=False)
    Path("retention.yaml").write_text("default: 30d\nruns: 90d\nreview_queue: 7d\ndirs: [runs]\n")
    assert main(["gc", "--dry-run", "--json"]) == 0  # the file's dirs, from the current directory
    import json

    result = json.loads(capsys.readouterr().out)
    assert {Path(d["path"]).name for d in result["deleted"]} == {
        "pipe-old",
        "notes.html",
        "bench-1.json",
        "r1-shadow.json",
    }
    assert result["periods_days"]["runs"] == 90
    assert main(["gc", "--older-than", "1d", "--config", "retention.yaml"]) != 0
    assert "not both" in capsys.readouterr().err
    assert main(["gc", "runs", "--older-than", "15d"]) == 0  # one period for every kind
    assert not units["eval"].exists() and not units["run"].exists() and units["requests"].exists()
