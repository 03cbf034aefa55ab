"""`ernie-ops pipeline`: recipe to validated endpoint, one stage after another, recorded.

check -> lint -> train -> export -> verify -> serve -> smoke -> bench -> eval -> compare -> stop -> report

A failed stage stops the pipeline with its diagnosis (the report is still written, so what ran is
visible); the servers it started are always stopped, whatever happened. `--resume DIR` continues from
the first stage that has not passed, never redoing a finished one, except `serve`: servers do not
outlive a pipeline invocation, so a resumed pipeline that still needs endpoints serves again.
`--until STAGE` stops after that stage; when it is one that needs the servers, they are left running
for the user to poke at (stop them with `ernie-ops serve stop --port P`).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ernie_ops.errors import UserError
from ernie_ops.pipeline import stages
from ernie_ops.pipeline.record import (
    FAILED,
    PASSED,
    PENDING,
    RECORD,
    RUNNING,
    SKIPPED,
    STAGES,
    PipelineRecord,
)
from ernie_ops.pipeline.spec import PipelineSpec
from ernie_ops.records import utc_now

log = logging.getLogger(__name__)

RUNNERS: dict[str, Callable[[Pipeline], str | None]] = {
    "check": stages.check,
    "lint": stages.lint,
    "train": stages.train,
    "export": stages.export,
    "verify": stages.verify,
    "serve": stages.serve,
    "smoke": stages.smoke,
    "bench": stages.bench,
    "eval": stages.evaluate,
    "compare": stages.compare,
    "stop": stages.stop,
    "report": stages.report,
}
NEEDS_SERVERS = ("smoke", "bench", "eval")


class Pipeline:
    def __init__(self, spec: PipelineSpec, record: PipelineRecord, echo: Callable[[str], None] = print):
        self.spec = spec
        self.record = record
        self.echo = echo
        self.outputs: dict[str, Any] = {}  # the running stage's outputs

    @classmethod
    def create(
        cls, spec: PipelineSpec, runs_dir: Path = Path("runs"), directory: Path | None = None, **kwargs: Any
    ) -> Pipeline:
        """A new pipeline in `directory` (default: a new `runs_dir/<name>-<time>/`)."""
        if directory is None:
            directory = (runs_dir / f"{spec.name}-{dt.datetime.now():%Y%m%d-%H%M%S}").resolve()
            directory.mkdir(parents=True, exist_ok=False)
        record = PipelineRecord(spec.name, str(directory), spec.to_json())
        record.save()
        return cls(spec, record, **kwargs)

    @classmethod
    def resume(cls, directory: Path, **kwargs: Any) -> Pipeline:
        record = PipelineRecord.load(directory)
        with RECORD.reading(directory):  # a spec this version does not take is a damaged record too
            spec = PipelineSpec(**record.spec)
        return cls(spec, record, **kwargs)

    def say(self, text: str) -> None:
        self.echo(f"[pipeline] {text}")

    def run(self, until: str | None = None) -> int:
        """0: every stage passed and the verdict is SHIP; 1: a stage failed or the verdict is not SHIP."""
        if until is not None and until not in STAGES:
            raise UserError(f"--until: unknown stage {until!r}", hint="stages: " + ", ".join(STAGES))
        todo = self._todo(until)
        self.record.status = RUNNING
        self.record.save()
        self.say(f"directory: {self.record.dir}")
        failed = None
        try:
            for name in todo:
                if not self._run_stage(name):
                    failed = name
                    break
        except KeyboardInterrupt:
            self.record.status = "interrupted"
            self.say(f"interrupted; continue with: ernie-ops pipeline --resume {self.record.dir}")
            raise
        finally:
            leave_running = failed is None and until in ("serve", *NEEDS_SERVERS)
            if not leave_running:
                for server in stages.stop_servers(self):
                    self.say(f"stopped the {server} server")
            if failed is not None or self.record.status == "interrupted":
                self._partial_report()
            self.record.status = (
                "interrupted" if self.record.status == "interrupted" else FAILED if failed else PASSED
            )
            self.record.save()
        return self._conclude(failed, until)

    def _todo(self, until: str | None) -> list[str]:
        """The stages to run now: from the first not passed (or skipped) up to `until`."""
        status = {name: self.record.stages[name].status for name in STAGES}
        first = next(
            (i for i, name in enumerate(STAGES) if status[name] not in (PASSED, SKIPPED)), len(STAGES)
        )
        last = STAGES.index(until) + 1 if until else len(STAGES)
        todo = list(STAGES[first:last])
        if todo and todo[0] in NEEDS_SERVERS and status["serve"] == PASSED:
            stages.stop_servers(self)  # an earlier invocation's servers (left by --until), if still up
            self.say("serving again: servers do not outlive a pipeline invocation")
            todo.insert(0, "serve")
        done = [name for name in STAGES[:first] if status[name] == PASSED]
        if done:
            self.say(f"already passed, not redone: {', '.join(done)}")
        return todo

    def _run_stage(self, name: str) -> bool:
        stage = self.record.stages[name]
        stage.status, stage.started, stage.ended, stage.diagnosis, stage.summary = (
            RUNNING,
            utc_now(),
            None,
            None,
            "",
        )
        stage.runs += 1
        self.outputs = stage.outputs = {}
        self.record.save()
        self.say(f"{name}: running")
        started = time.perf_counter()
        try:
            summary = RUNNERS[name](self)
            stage.status = SKIPPED if summary is None else PASSED
            stage.summary = summary or "skipped"
        except stages.StageFailed as err:
            stage.status, stage.diagnosis = FAILED, str(err)
        except UserError as err:
            stage.status, stage.diagnosis = FAILED, str(err)
        except Exception as err:  # a bug or an environment problem: keep the traceback in the record
            log.debug("stage %s", name, exc_info=True)
            stage.status = FAILED
            stage.diagnosis = f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=6)}"
        stage.ended, stage.seconds = utc_now(), round(time.perf_counter() - started, 2)
        self.record.save()
        if stage.status == FAILED:
            self.say(f"{name}: FAILED after {stage.seconds:.1f} s\n{stage.diagnosis}")
            return False
        self.say(f"{name}: {stage.status} in {stage.seconds:.1f} s: {stage.summary}")
        return True

    def _partial_report(self) -> None:
        """What ran so far, in the report, even when a stage failed."""
        if self.record.stages["report"].status == PASSED:
            return
        from ernie_ops.pipeline.report import write_pipeline_report

        try:
            md, _ = write_pipeline_report(self.record)
            self.say(f"partial report: {md}")
        except Exception as err:  # the report must never hide the stage's own failure
            self.say(f"could not write the partial report: {err}")

    def _conclude(self, failed: str | None, until: str | None) -> int:
        if failed is not None:
            self.say(f"stopped at {failed}; after fixing it: ernie-ops pipeline --resume {self.record.dir}")
            return 1
        if until is not None and until != STAGES[-1]:
            pending = [s for s in STAGES if self.record.stages[s].status == PENDING]
            self.say(f"stopped after {until} as asked; the rest ({', '.join(pending)}) runs with --resume")
            for role, e in self.record.endpoints.items():
                if until in ("serve", *NEEDS_SERVERS):
                    self.say(
                        f"{role} server left running at {e['url']}: ernie-ops serve stop --port {e['port']}"
                    )
            return 0
        verdict = self.record.verdict or "no verdict"
        reasons = self.record.out("compare", "reasons") or []
        why = f" ({'; '.join(reasons)})" if verdict != "SHIP" and reasons else ""
        self.say(f"verdict: {verdict}{why}; report: {self.record.out('report', 'html')}")
        return 0 if verdict == "SHIP" else 1
