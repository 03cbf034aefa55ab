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

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ernie_ops.errors import UserError
from ernie_ops.files import write_text_atomic
from ernie_ops.pipeline.record import FAILED, PASSED, PENDING, RUNNING, SKIPPED, StageRecord, utc_now

__all__ = ["FAILED", "PASSED", "PENDING", "RUNNING", "SKIPPED", "STEPS", "SweepRecord", "VariantRecord"]

RECORD_FILE = "sweep.json"
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
class SweepRecord:
    name: str
    dir: str
    spec: dict[str, Any]
    created: str = field(default_factory=utc_now)
    status: str = RUNNING  # running | finished | interrupted
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)  # variant -> its validated profile
    exports: dict[str, dict[str, Any]] = field(default_factory=dict)  # "gguf:q4_0:<source>" -> what was made
    variants: dict[str, VariantRecord] = field(default_factory=dict)
    recommendation: dict[str, Any] | None = None

    @property
    def path(self) -> Path:
        return Path(self.dir)

    def save(self) -> Path:
        target = self.path / RECORD_FILE
        write_text_atomic(target, json.dumps(asdict(self), indent=2, default=str) + "\n")
        return target

    @classmethod
    def load(cls, directory: Path) -> SweepRecord:
        path = Path(directory) / RECORD_FILE
        if not path.is_file():
            raise UserError(
                f"{directory} is not a sweep directory (no {RECORD_FILE})",
                hint="give the directory `ernie-ops sweep` printed, e.g. sweeps/<name>-<time>",
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            variants = {
                name: VariantRecord(
                    **{
                        **v,
                        "steps": {s: StageRecord(**v.get("steps", {}).get(s, {})) for s in STEPS},
                    }
                )
                for name, v in data.get("variants", {}).items()
            }
            return cls(**{**data, "variants": variants})
        except (ValueError, TypeError) as err:
            raise UserError(f"{path}: not a sweep record this version reads ({err})") from None
