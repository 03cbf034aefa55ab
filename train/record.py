"""The run record: one directory per training run, and `run.json` saying everything about it.

Layout of a run directory (`runs/<name>-<timestamp>/` by default):
    recipe.yaml     the resolved recipe exactly as passed to ERNIEKit (overrides merged in)
    run.json        this record (versions, data fingerprints, command, status, checkpoint, export)
    logs/           ERNIEKit's console log (train.log) and, on GPUs, its worker logs
    metrics.jsonl   one JSON object per logged step (step, loss, learning_rate, ...)
    loss.png        the loss curve, written at the end
    run.lock        held (flock) by `ernie-ops train` and its trainer while the run is live
    .space-reserve  1 MiB set aside while the run is live, freed to record its end on a full disk
    output/         ERNIEKit's output_dir (unless the recipe names another one; run.json says which)
    export/         the servable checkpoint `ernie-ops export` writes (merged LoRA, or the full one)
    export-hf/      its transformers layout (`ernie-ops export --format hf`: vLLM, SGLang, transformers)

Serve and eval read `run.json` back, so the lineage from data to endpoint is one file away.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ernie_ops.proc import Lock, Owner
from ernie_ops.records import RecordFile

RUN_FILE = "run.json"
RUN_RECORD = RecordFile(RUN_FILE, "run", "ernie-ops train", "runs/<name>-<timestamp>")
RUN_LOCK = "run.lock"
OWNER_GONE = "owner gone"  # recorded running, but nobody holds its lock: killed before recording an end
RECIPE_FILE = "recipe.yaml"
LOG_DIR = "logs"
TRAIN_LOG = "train.log"
METRICS_FILE = "metrics.jsonl"
LOSS_PLOT = "loss.png"
EXPORT_DIR = "export"
HF_EXPORT_DIR = "export-hf"

# running: launched; succeeded / failed: ERNIEKit's exit; stopped: the watchdog ended it;
# interrupted: Ctrl-C or a signal.
STATUSES = ("created", "running", "succeeded", "failed", "stopped", "interrupted")


CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")  # ERNIEKit's periodic checkpoints in output_dir


def output_lock(output_dir: Path) -> Path:
    """The lock of an output_dir outside its run directory, beside it (not in it: the directory may be
    pushed to a hub as the checkpoint itself)."""
    output_dir = output_dir.resolve()  # one lock whatever path names it
    return output_dir.parent / f".{output_dir.name}.ernie-ops.lock"


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
    # other layouts `ernie-ops export --format` wrote, by format (hf: the transformers layout):
    # {"path", "from" (the Paddle checkpoint converted), "verified", "tensors", "files", "bytes"}
    exports: dict[str, dict[str, Any]] = field(default_factory=dict)
    resumed_from: list[str] = field(default_factory=list)  # checkpoints this run resumed from

    @property
    def path(self) -> Path:
        return Path(self.run_dir)

    @property
    def is_lora(self) -> bool:
        return self.fine_tuning.lower() == "lora"

    @property
    def lock(self) -> Path:
        return self.path / RUN_LOCK

    def owner(self) -> Owner | None:
        """The live process that holds this run (ernie-ops train or its trainer), if any."""
        return Lock.holder(self.lock)

    def live_status(self) -> str:
        """The status as it is now: a run recorded `running` whose lock nobody holds lost its owner
        (killed by SIGKILL, a lost node) before it could record how it ended."""
        if self.status == "running" and self.owner() is None:
            return OWNER_GONE
        return self.status

    def describe_status(self) -> str:
        status = self.live_status()
        if status != OWNER_GONE:
            return status
        last = Lock.last_owner(self.lock)
        return f"{OWNER_GONE} (was {last.describe()})" if last else OWNER_GONE

    def save(self) -> Path:
        return RUN_RECORD.save(self, self.path)

    @classmethod
    def load(cls, run_dir: Path | str) -> RunRecord:
        return RUN_RECORD.load(run_dir, cls._from_json)

    @classmethod
    def _from_json(cls, data: dict[str, Any]) -> RunRecord:
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}  # records from newer versions still load
        data["data"] = [DataFile(**d) for d in data.get("data", [])]
        return cls(**data)
