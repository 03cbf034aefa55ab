"""`ernie-ops gc`: what is older than the retention goes, whole and atomically; nothing in use does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ernie_ops.cli.main import main
from ernie_ops.errors import UserError
from ernie_ops.privacy.retention import parse_age
from ernie_ops.proc import Lock

DAY = 86400


def age(path: Path, days: float) -> None:
    """Set the mtime of PATH and everything in it to DAYS ago."""
    t = time.time() - days * DAY
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(p, (t, t), follow_symlinks=False)


def run_dir(root: Path, name: str, days: float) -> Path:
    d = root / name
    (d / "logs").mkdir(parents=True)
    (d / "run.json").write_text("{}")
    (d / "logs" / "train.log").write_text("step 1\n")
    (d / "run.lock").write_text("")
    age(d, days)
    return d


def test_parse_age() -> None:
    assert parse_age("30d") == 30 * DAY and parse_age("12h") == 12 * 3600 and parse_age("2") == 2 * DAY
    with pytest.raises(UserError, match="not a duration"):
        parse_age("soon")


def test_old_units_go_young_and_live_ones_stay(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    runs = tmp_path / "runs"
    old, young, live = run_dir(runs, "old", 40), run_dir(runs, "young", 3), run_dir(runs, "live", 40)
    report = runs / "bench" / "bench-old.json"
    report.parent.mkdir()
    report.write_text("{}")
    age(report, 60)
    outside = tmp_path / "model"
    outside.mkdir()
    (runs / "link").symlink_to(outside)
    age(runs / "link", 50)
    gateway = runs / "gateway" / "requests"
    gateway.mkdir(parents=True)
    (runs / "gateway" / "state.json").write_text("{}")
    (gateway / "requests.jsonl").write_text("{}\n")
    (gateway / "requests-20260101-000000.jsonl").write_text("{}\n")
    age(runs / "gateway", 90)
    lock = Lock(live / "run.lock")
    assert lock.acquire("training")
    age(live, 40)  # a training that has written nothing for 40 days, but is alive
    try:
        assert main(["gc", str(runs), "--older-than", "30d", "--dry-run"]) == 0
        assert old.is_dir() and report.exists()  # a dry run deletes nothing
        capsys.readouterr()
        assert main(["gc", str(runs), "--older-than", "30d", "--json"]) == 0
    finally:
        lock.release()
    result = json.loads(capsys.readouterr().out)
    deleted = {Path(d["path"]).name for d in result["deleted"]}
    assert deleted == {"old", "bench-old.json", "link", "requests-20260101-000000.jsonl"}
    assert [Path(k["path"]).name for k in result["kept"]] == ["live"]
    assert "run.lock" in result["kept"][0]["kept"]
    assert not old.exists() and young.is_dir() and live.is_dir() and outside.is_dir()
    assert (runs / "gateway" / "state.json").exists() and (gateway / "requests.jsonl").exists()
    assert not [p for p in runs.iterdir() if p.name.startswith(".gc-")]


def test_a_file_open_in_a_live_process_keeps_its_unit(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    runs = tmp_path / "runs"
    serve = runs / "serve" / "serve-8000-20260101"
    serve.mkdir(parents=True)
    log = serve / "server.log"
    log.write_text("started\n")
    age(serve, 40)
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import time; f = open({str(log)!r}, 'a'); print('ok', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"ok"
        main(["gc", str(runs), "--older-than", "30d"])
        assert serve.is_dir()
        assert "a file in it is open in a live process" in capsys.readouterr().out
    finally:
        child.kill()
        child.wait()
    main(["gc", str(runs), "--older-than", "30d"])
    assert not serve.exists()


def test_gc_needs_a_retention(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.delenv("ERNIE_OPS_RETENTION", raising=False)
    assert main(["gc", str(tmp_path)]) != 0
    assert "no retention period" in capsys.readouterr().err
    monkeypatch.setenv("ERNIE_OPS_RETENTION", "1d")
    assert main(["gc", str(tmp_path)]) == 0
