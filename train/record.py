"""The run record: one directory per training run, and `run.json` saying everything about it.

Layout of a run directory (`runs/<name>-<timestamp>/` by default):
    recipe.yaml     the resolved recipe exactly as passed to ERNIEKit (overrides merged in)
    run.json        this record (versions, data fingerprints, command, status, checkpoint, export)
    logs/           ERNIEKit's console log (train.log) and, on GPUs, its worker logs
    metrics.jsonl   one JSON object per logged step (step, loss, learning_rate, ...)
    loss.png        the loss curve, written at the end
    output/         ERNIEKit's output_dir (unless the recipe names another one; run.json says which)
    export/         the servable checkpoint `ernie-ops export` writes (merged LoRA, or the full one)

Serve and eval read `run.json` back, so the lineage from data to endpoint is one file away.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ernie_ops.errors import UserError

RUN_FILE = "run.json"
RECIPE_FILE = "recipe.yaml"
LOG_DIR = "logs"
TRAIN_LOG = "train.log"
METRICS_FILE = "metrics.jsonl"
LOSS_PLOT = "loss.png"
EXPORT_DIR = "export"

# running: launched; succeeded / failed: ERNIEKit's exit; stopped: the watchdog ended it;
# interrupted: Ctrl-C or a signal.
STATUSES = ("created", "running", "succeeded", "failed", "stopped", "interrupted")


CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")  # ERNIEKit's periodic checkpoints in output_dir


def checkpoints(output_dir: Path) -> list[Path]:
    """ERNIEKit's checkpoint-N directories, oldest first."""
    if not output_dir.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in output_dir.iterdir() if (m := CHECKPOINT.match(p.name)) and p.is_dir()
    ]
    return [p for _, p in sorted(found)]


@dataclass
class DataFile:
    path: str  # absolute
    sha256: str
    bytes: int
    records: int | None = None
    split: str = "train"  # train | eval


@dataclass
class RunRecord:
    name: str
    run_dir: str  # absolute
    recipe_source: str  # the recipe file the user gave
    overrides: list[str] = field(default_factory=list)
    recipe_sha256: str | None = None  # of recipe.yaml: a resume refuses a changed recipe
    status: str = "created"
    stage: str = "SFT"
    fine_tuning: str = "LoRA"  # as ERNIEKit resolves it: Full or LoRA
    model_name_or_path: str = ""
    output_dir: str = ""  # absolute: where ERNIEKit writes checkpoints
    seed: int | None = None
    max_steps: int | None = None
    versions: dict[str, str] = field(
        default_factory=dict
    )  # ernie_ops, erniekit, paddleformers, paddle, python
    git_commit: str | None = None
    host: str = ""
    device: str = "cpu"  # cpu | gpu
    gpus: list[int] = field(default_factory=list)
    nnodes: int = 1
    master: str | None = None
    data: list[DataFile] = field(default_factory=list)
    command: list[str] = field(default_factory=list)
    started_at: str | None = None  # ISO 8601, UTC
    ended_at: str | None = None
    exit_code: int | None = None
    failure: str | None = None  # the diagnosis when it did not succeed
    last_step: int | None = None
    checkpoint: str | None = None  # the final checkpoint directory (absolute)
    exported: str | None = None  # the servable checkpoint `ernie-ops export` wrote (absolute)
    verified: bool | None = None
    resumed_from: list[str] = field(default_factory=list)  # checkpoints this run resumed from

    @property
    def path(self) -> Path:
        return Path(self.run_dir)

    @property
    def is_lora(self) -> bool:
        return self.fine_tuning.lower() == "lora"

    def save(self) -> Path:
        """Write run.json atomically (a crash never leaves half a record)."""
        target = self.path / RUN_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".run.", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(asdict(self), f, indent=2)
            f.write("\n")
        os.replace(tmp, target)
        return target

    @classmethod
    def load(cls, run_dir: Path | str) -> RunRecord:
        path = Path(run_dir) / RUN_FILE
        if not path.is_file():
            raise UserError(
                f"{run_dir} is not a run directory (no {RUN_FILE})",
                hint="give the directory `ernie-ops train` created, e.g. runs/<name>-<timestamp>",
            )
        try:
            data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as err:
            raise UserError(f"{path} is not valid JSON ({err})") from err
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}  # records from newer versions still load
        data["data"] = [DataFile(**d) for d in data.get("data", [])]
        return cls(**data)
