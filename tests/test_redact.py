"""`push` publishes no host names, user names or absolute paths: the card's run record is redacted."""

from __future__ import annotations

import getpass
import json
import re
import socket
from pathlib import Path

from ernie_ops import hub
from ernie_ops.privacy.redact import ABSOLUTE, redact_record, redact_text


def test_redaction_keeps_lineage_and_drops_identity(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "sft-1"
    record = {
        "name": "sft-1",
        "run_dir": str(run),
        "host": socket.gethostname(),
        "master": "10.1.2.3:8090",
        "data": [{"path": "/srv/teams/alice/train.jsonl", "sha256": "ab" * 32}],
        "command": ["python", "-m", "erniekit.launcher", "train", str(run / "recipe.yaml")],
        "checkpoint": str(run / "output" / "checkpoint-20"),
        "note": "see http://localhost:8180/v1/models",
    }
    out = redact_record(record, run.parent)
    assert out["host"] == out["master"] == "<host>"
    assert out["run_dir"] == "sft-1" and out["checkpoint"] == "sft-1/output/checkpoint-20"
    assert out["data"][0] == {"path": ".../train.jsonl", "sha256": "ab" * 32}
    assert out["command"][-1] == "sft-1/recipe.yaml"
    assert out["note"] == record["note"]  # a URL's path is not a file path
    assert redact_text(f"model: {Path.home()}/models/x\n") == "model: .../x\n"


def test_the_pushed_card_names_no_host_user_or_absolute_path(tmp_path: Path) -> None:
    from ernie_ops.train.record import DataFile, RunRecord

    run = tmp_path / "runs" / "sft-20250101-120000"
    data = tmp_path / "train.jsonl"
    data.write_text('{"src": ["hi"], "tgt": ["hello"]}\n')
    RunRecord(
        name=run.name,
        run_dir=str(run),
        recipe_source=str(tmp_path / "recipe.yaml"),
        host=socket.gethostname(),
        master=f"{socket.gethostname()}:8090",
        model_name_or_path="baidu/ERNIE-4.5-0.3B-Paddle",
        output_dir=str(run / "output"),
        data=[DataFile(str(data), "0" * 64, data.stat().st_size, 1)],
        command=["python", "-m", "erniekit.launcher", "train", str(run / "recipe.yaml")],
    ).save()
    (run / "recipe.yaml").write_text(
        f"model_name_or_path: baidu/ERNIE-4.5-0.3B-Paddle\noutput_dir: {run}/output\n"
    )
    export = run / "export"
    export.mkdir()
    (export / "config.json").write_text(
        json.dumps({"architectures": ["Ernie4_5_ForCausalLM"], "dtype": "bfloat16"})
    )
    (export / "model.safetensors").write_bytes(b"\0" * 64)
    card = hub.plan_push(export, "my-org/ernie-sft").card
    assert str(tmp_path) not in card and socket.gethostname() not in card
    user = getpass.getuser()
    assert len(user) < 3 or not re.search(rf"(?<![\w-]){re.escape(user)}(?![\w-])", card)
    assert not [m.group() for m in ABSOLUTE.finditer(card) if len(m.group()) > 1]
    assert "| train.jsonl |" in card and "redacted" in card and "sft-20250101-120000/output" in card
