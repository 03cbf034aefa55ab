"""The pipeline record: `pipeline.json` in the pipeline's directory, one entry per stage.

Layout of a pipeline directory (`runs/<name>-<time>/`):
    pipeline.json   this record: the spec, every stage's status, times, summary, diagnosis, outputs
    <train run>/    the training run `ernie-ops train` made (run.json, logs, loss.png, export/)
    logs/           the servers' start-up output
    exports/        the layout the engine reads (GGUF, transformers) of a checkpoint directory, e.g. the
                    base model (the tuned run's go into the run, recorded in its run.json)
    smoke.json, bench/, eval/ (tuned/, base/), compare.json
    report.md, report.html

A stage's `outputs` are what later stages read (the run directory, the export, the scores), and
`endpoints` the servers started (so they are always stopped), so `--resume` needs nothing but this file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ernie_ops.records import DirRecord, RecordFile

RECORD = RecordFile("pipeline.json", "pipeline", "ernie-ops pipeline", "runs/<name>-<time>")
STAGES = (
    "check",
    "lint",
    "train",
    "export",
    "verify",
    "serve",
    "smoke",
    "bench",
    "eval",
    "compare",
    "stop",
    "report",
)
PENDING, RUNNING, PASSED, FAILED, SKIPPED = "pending", "running", "passed", "failed", "skipped"


@dataclass
class StageRecord:
    status: str = PENDING
    started: str | None = None
    ended: str | None = None
    seconds: float | None = None
    summary: str = ""
    diagnosis: str | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    runs: int = 0  # how many times it ran (a resumed pipeline shows what was not redone)


@dataclass
class PipelineRecord(DirRecord):
    STORE = RECORD
    # status: running | passed | failed | interrupted
    verdict: str | None = None  # SHIP | DO NOT SHIP, once compare ran
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)  # role -> the server started for it
    # "gguf:q4_0:<source>" -> the export made for the serving engine (ernie_ops.serve.exports)
    exports: dict[str, dict[str, Any]] = field(default_factory=dict)
    demo: dict[str, Any] = field(default_factory=dict)  # `ernie-ops demo`'s notes: what it left out, why
    stages: dict[str, StageRecord] = field(default_factory=lambda: {s: StageRecord() for s in STAGES})

    def out(self, stage: str, key: str, default: Any = None) -> Any:
        return self.stages[stage].outputs.get(key, default)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PipelineRecord:
        stages = {name: StageRecord(**data.get("stages", {}).get(name, {})) for name in STAGES}
        return cls(**{**data, "stages": stages})
