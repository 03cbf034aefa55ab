"""The sweep record: `sweep.json` in the sweep's directory, one entry per variant and step.

Layout of a sweep directory (`sweeps/<name>-<time>/` or `--out`):
    sweep.json          this record: the spec, every variant's steps (status, times, summary,
                        diagnosis, outputs) and the exports prepared
    exports/            GGUF / transformers-layout conversions of checkpoint directories (a run's go
                        into the run, recorded in its run.json, as `ernie-ops export` puts them)
    variants/<name>/    serve.log, smoke.json, eval/, load/ (bench.json, bench.md, ...)
    report.md, report.html, report.json, pareto.png

Written atomically after every step, so an interrupted sweep resumes from this file alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ernie_ops.pipeline.record import FAILED, PASSED, PENDING, RUNNING, SKIPPED, StageRecord
from ernie_ops.records import DirRecord, RecordFile

__all__ = ["FAILED", "PASSED", "PENDING", "RUNNING", "SKIPPED", "STEPS", "SweepRecord", "VariantRecord"]

RECORD = RecordFile("sweep.json", "sweep", "ernie-ops sweep", "sweeps/<name>-<time>")
STEPS = ("prepare", "serve", "smoke", "eval", "load", "memory", "stop")
INTERRUPTED = "interrupted"


@dataclass
class VariantRecord:
    status: str = PENDING  # pending | running | passed | failed | interrupted
    runs: int = 0  # how many times it was run (a resumed sweep retries failed ones)
    failed_step: str | None = None
    endpoint: dict[str, Any] = field(default_factory=dict)  # the server started for it (always stopped)
    steps: dict[str, StageRecord] = field(default_factory=lambda: {s: StageRecord() for s in STEPS})

    def out(self, step: str, key: str, default: Any = None) -> Any:
        return self.steps[step].outputs.get(key, default)

    @property
    def diagnosis(self) -> str | None:
        return self.steps[self.failed_step].diagnosis if self.failed_step else None


@dataclass
class SweepRecord(DirRecord):
    STORE = RECORD
    # status: running | finished | interrupted
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)  # variant -> its validated profile
    exports: dict[str, dict[str, Any]] = field(default_factory=dict)  # "gguf:q4_0:<source>" -> what was made
    variants: dict[str, VariantRecord] = field(default_factory=dict)
    recommendation: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SweepRecord:
        variants = {
            name: VariantRecord(
                **{**v, "steps": {s: StageRecord(**v.get("steps", {}).get(s, {})) for s in STEPS}}
            )
            for name, v in data.get("variants", {}).items()
        }
        return cls(**{**data, "variants": variants})
