"""The record store the pipeline and the sweep share: atomic save, load back, and a clear error for
a missing, damaged or foreign record (file, line for broken JSON, a hint), never a traceback."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from ernie_ops.cli.main import main
from ernie_ops.errors import UserError
from ernie_ops.pipeline.record import PipelineRecord
from ernie_ops.records import RecordFile
from ernie_ops.sweep.record import SweepRecord, VariantRecord

STORE = RecordFile("thing.json", "thing", "ernie-ops thing", "things/<name>")


@dataclass
class Thing:
    name: str
    items: dict[str, int] = field(default_factory=dict)


def test_save_and_load_round_trip(tmp_path):
    path = STORE.save(Thing("a", {"x": 1}), tmp_path)
    assert path == tmp_path / "thing.json"
    assert json.loads(path.read_text()) == {"name": "a", "items": {"x": 1}}
    assert STORE.load(tmp_path, lambda d: Thing(**d)) == Thing("a", {"x": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["thing.json"]  # no temporary file left


def test_missing_record_names_the_directory_and_the_command(tmp_path):
    with pytest.raises(UserError) as err:
        STORE.load(tmp_path, dict)
    assert str(err.value) == (
        f"{tmp_path} is not a thing directory (no thing.json)\n"
        "  hint: give the directory `ernie-ops thing` printed, e.g. things/<name>"
    )


@pytest.mark.parametrize(
    ("text", "where", "says"),
    [
        ('{"name": "a",\n "items"', "thing.json:2", "broken JSON"),
        ("[1, 2]", "thing.json", "a JSON list where an object was expected"),
        ('{"name": "a", "bogus": 1}', "thing.json", "unexpected keyword argument 'bogus'"),
        ('{"name": "a", "items": 3}', "thing.json", "'int' object has no attribute 'items'"),
    ],
)
def test_damaged_record_is_an_error_with_file_and_hint(tmp_path, text, where, says):
    (tmp_path / "thing.json").write_text(text)

    def build(data):
        thing = Thing(**data)
        dict(thing.items.items())  # reading a field of the wrong type fails like real records do
        return thing

    with pytest.raises(UserError) as err:
        STORE.load(tmp_path, build)
    assert err.value.where == str(tmp_path / where)
    assert says in err.value.message and "not a thing record this version reads" in err.value.message
    assert err.value.hint and "start a new thing with `ernie-ops thing`" in err.value.hint


def test_refuse_existing_points_at_resume(tmp_path):
    STORE.refuse_existing(tmp_path)  # nothing there: fine
    STORE.save(Thing("a"), tmp_path)
    with pytest.raises(UserError) as err:
        STORE.refuse_existing(tmp_path)
    assert err.value.hint == f"ernie-ops thing --resume {tmp_path}"


def test_pipeline_and_sweep_records_round_trip(tmp_path):
    pipeline = PipelineRecord("p", str(tmp_path), {"name": "p"})
    pipeline.stages["train"].outputs["run_dir"] = "runs/x"
    pipeline.save()
    assert PipelineRecord.load(tmp_path) == pipeline
    sweep = SweepRecord("s", str(tmp_path), {"name": "s"}, variants={"a": VariantRecord(runs=2)})
    sweep.variants["a"].steps["serve"].summary = "up"
    sweep.save()
    assert SweepRecord.load(tmp_path) == sweep


@pytest.mark.parametrize("command", ["pipeline", "sweep"])
def test_resuming_a_record_whose_spec_this_version_does_not_take(tmp_path, capsys, command):
    record = {"name": "x", "dir": str(tmp_path), "spec": {"bogus": 1}}
    (tmp_path / f"{command}.json").write_text(json.dumps(record))
    assert main([command, "--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{command}.json: not a {command} record this version reads" in err
    assert "unexpected keyword argument 'bogus'" in err and "Traceback" not in err


def test_run_record_and_the_hub_read_run_json_through_the_store(tmp_path):
    from ernie_ops.hub import find_run
    from ernie_ops.train.record import RunRecord

    (tmp_path / "run.json").write_text('{"name": "r", "data": [{"bogus": 1}]}')  # was a traceback
    with pytest.raises(UserError, match="not a run record this version reads"):
        RunRecord.load(tmp_path)
    (tmp_path / "run.json").write_text('{"name": "r",')
    for read in (RunRecord.load, lambda d: find_run(d / "export", d)):
        with pytest.raises(UserError, match="not a run record this version reads") as err:
            read(tmp_path)
        assert err.value.where == f"{tmp_path / 'run.json'}:1"


def test_the_rollout_state_goes_through_the_store_too(tmp_path):
    from ernie_ops.rollout.controller import ControllerState

    path = tmp_path / "my-state.json"  # --state takes any name
    assert ControllerState.load(path) is None  # a new rollout
    state = ControllerState(stage=2, timeline=[{"event": "stage", "at": 1.5}])
    state.save(path)
    assert ControllerState.load(path) == state
    for text, says in (('{"stage": 2,', "broken JSON"), ('{"stage": 2, "phase": 1}', "'phase'")):
        path.write_text(text)
        with pytest.raises(UserError, match="not a rollout record this version reads") as err:
            ControllerState.load(path)
        assert says in err.value.message and str(path) in str(err.value)
