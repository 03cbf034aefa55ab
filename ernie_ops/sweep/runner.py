"""`ernie-ops sweep`: every variant in turn, one server at a time, then the trade-off report.

Per variant: prepare (the export its engine needs) -> serve -> smoke -> eval -> load -> memory ->
stop. The first step that fails ends that variant with its diagnosis (its server is stopped
whatever happened) and the sweep goes on with the next. `--resume DIR` skips the variants that
passed and runs the failed, interrupted or unfinished ones again from the start (exports already
made are reused). Ctrl-C stops the current server, records the variant as interrupted, writes the
partial report and exits 130.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ernie_ops.errors import UserError
from ernie_ops.sweep.record import (
    FAILED,
    INTERRUPTED,
    PASSED,
    RECORD,
    RUNNING,
    SKIPPED,
    STEPS,
    SweepRecord,
    VariantRecord,
)
from ernie_ops.sweep.spec import SweepSpec

log = logging.getLogger(__name__)


class StepFailed(Exception):
    """The step's diagnosis: what went wrong and what to do."""


class Sweep:
    def __init__(
        self,
        spec: SweepSpec,
        profiles: dict[str, Any],
        record: SweepRecord,
        echo: Callable[[str], None] = print,
    ):
        self.spec = spec
        self.profiles = profiles
        self.record = record
        self.echo = echo

    @classmethod
    def create(
        cls,
        spec: SweepSpec,
        profiles: dict[str, Any],
        sweeps_dir: Path = Path("sweeps"),
        directory: Path | None = None,
        **kwargs: Any,
    ) -> Sweep:
        if directory is None:
            directory = sweeps_dir / f"{spec.name}-{dt.datetime.now():%Y%m%d-%H%M%S}"
        directory = directory.resolve()
        RECORD.refuse_existing(directory)
        directory.mkdir(parents=True, exist_ok=True)
        record = SweepRecord(spec.name, str(directory), spec.to_json())
        record.variants = {name: VariantRecord() for name in spec.variant_names()}
        record.profiles = {name: dataclasses.asdict(p) for name, p in profiles.items()}
        record.save()
        return cls(spec, profiles, record, **kwargs)

    @classmethod
    def resume(cls, directory: Path, **kwargs: Any) -> Sweep:
        """The sweep as it was started: its spec and the variants' profiles come from the record, so
        an edited SWEEP.yaml does not change a sweep half done."""
        from ernie_ops.serve.profile import ServeProfile

        record = SweepRecord.load(directory)
        with RECORD.reading(directory):
            spec = SweepSpec(**record.spec)
            profiles = {name: ServeProfile(**values) for name, values in record.profiles.items()}
        return cls(spec, profiles, record, **kwargs)

    def say(self, text: str) -> None:
        self.echo(f"[sweep] {text}")

    def run(self) -> int:
        """0: the sweep finished and names a variant to use; 1: it finished without one."""
        self.record.status = RUNNING
        self.record.save()
        self.say(f"directory: {self.record.dir}")
        done = [n for n, v in self.record.variants.items() if v.status == PASSED]
        if done:
            self.say(f"already passed, not redone: {', '.join(done)}")
        try:
            for name in self.spec.variant_names():
                if self.record.variants[name].status != PASSED:
                    self._variant(name)
        except KeyboardInterrupt:
            self.record.status = INTERRUPTED
            self.record.save()
            self._report()
            self.say(f"interrupted; continue with: ernie-ops sweep --resume {self.record.dir}")
            raise
        self.record.status = "finished"
        self.record.save()
        report = self._report()
        if report is None:
            return 1
        pick = report["recommendation"]
        self.say(f"recommendation: {pick['text']}")
        self.say(f"report: {Path(self.record.dir) / 'report.html'}")
        return 0 if pick.get("variant") else 1

    # -----------------------------------------------------------------------------------------

    def _variant(self, name: str) -> None:
        record = self.record.variants[name] = VariantRecord(runs=self.record.variants[name].runs + 1)
        record.status = RUNNING
        self.record.save()
        run = VariantRun(self, name, record)
        self.say(f"variant {name} (run {record.runs}): {describe(self.profiles[name])}")
        try:
            for step in STEPS[:-1]:
                if not run.step(step):
                    break
        except KeyboardInterrupt:
            record.status = INTERRUPTED
            raise
        finally:
            run.step("stop")  # always: the next variant needs the machine (and the GPU) to itself
            if record.status == RUNNING:
                record.status = FAILED if record.failed_step else PASSED
            self.record.save()
        self.say(
            f"variant {name}: {record.status}" + (f" at {record.failed_step}" if record.failed_step else "")
        )

    def _report(self) -> dict[str, Any] | None:
        from ernie_ops.sweep.report import write_sweep_report

        try:
            report = write_sweep_report(self.record)
        except Exception as err:  # the report must never hide what the variants recorded
            log.debug("report", exc_info=True)
            self.say(f"could not write the report: {type(err).__name__}: {err}")
            return None
        self.record.recommendation = report["recommendation"]
        self.record.save()
        return report


def describe(profile: Any) -> str:
    q = profile.quantization if isinstance(profile.quantization, str) else "mix_quant"
    engine = profile.engine or "default"
    return f"engine {engine}, {q}, max_num_seqs {profile.max_num_seqs}, model {profile.model}"


class VariantRun:
    """One variant's steps; `profile` becomes what is served once `prepare` has run."""

    def __init__(self, sweep: Sweep, name: str, record: VariantRecord):
        self.sweep = sweep
        self.name = name
        self.record = record
        self.profile = sweep.profiles[name]
        self.dir = sweep.record.path / "variants" / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.outputs: dict[str, Any] = {}

    def step(self, name: str) -> bool:
        step = self.record.steps[name]
        step.status, step.started, step.runs = RUNNING, _now(), step.runs + 1
        self.outputs = step.outputs = {}
        self.sweep.record.save()
        started = time.perf_counter()
        try:
            summary = getattr(self, f"_{name}")()
            step.status, step.summary = (SKIPPED, "skipped") if summary is None else (PASSED, summary)
        except KeyboardInterrupt:
            step.status, step.diagnosis = INTERRUPTED, "interrupted (Ctrl-C or a signal)"
            raise
        except (StepFailed, UserError) as err:
            step.status, step.diagnosis = FAILED, str(err)
        except Exception as err:  # a bug or the environment: the traceback goes in the record
            log.debug("step %s", name, exc_info=True)
            step.status = FAILED
            step.diagnosis = f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=6)}"
        finally:
            step.ended, step.seconds = _now(), round(time.perf_counter() - started, 2)
            self.sweep.record.save()
        if step.status == FAILED:
            self.record.failed_step = self.record.failed_step or name
            self.sweep.say(f"  {self.name} {name}: FAILED after {step.seconds:.1f} s: {step.diagnosis}")
            return False
        self.sweep.say(f"  {self.name} {name}: {step.status} in {step.seconds:.1f} s: {step.summary}")
        return True

    def _endpoint(self) -> Any:
        from ernie_ops.validate.client import Endpoint

        e = self.record.endpoint
        return Endpoint.parse(e["url"], model=e["model"])

    # the steps ---------------------------------------------------------------------------------

    def _prepare(self) -> str:
        from ernie_ops.serve.exports import prepare
        from ernie_ops.train.export import ExportFailed

        try:
            prepared = prepare(self.profile, self.sweep.record, self.sweep.say)
        except ExportFailed as err:
            raise StepFailed(f"export failed: {err}") from None
        self.profile = prepared.profile
        self.outputs["model"] = self.profile.model
        return prepared.summary

    def _serve(self) -> str:
        """Detached on a free port, as the pipeline serves (`ernie_ops.serve.detached`); the endpoint
        is recorded before the start so a failed start is stopped too."""
        from ernie_ops.serve.backends import choose
        from ernie_ops.serve.detached import NotStarted, free_port_block, start_detached

        backend, _ = choose(self.profile.engine)
        port = free_port_block(backend.port_block)
        served = f"{self.sweep.spec.name}-{self.name}"
        changes: dict[str, Any] = {"port": port, "served_model_name": served}
        if self.sweep.spec.startup_timeout:
            changes["startup_timeout"] = self.sweep.spec.startup_timeout
        profile = dataclasses.replace(self.profile, **changes)
        log_path = self.dir / "serve.log"
        self.record.endpoint = {
            "url": f"http://127.0.0.1:{port}",
            "port": port,
            "model": served,
            "log": str(log_path),
        }
        self.sweep.record.save()
        self.sweep.say(f"  {self.name}: starting the server on port {port} (log: {log_path})")
        try:
            start_detached(profile, log_path)
        except NotStarted as err:
            raise StepFailed(str(err)) from None
        self.outputs.update(self.record.endpoint, engine=profile.engine)
        return f"{profile.engine} at {self.record.endpoint['url']}"

    def _smoke(self) -> str:
        from ernie_ops.validate.smoke import default_expectations, run_smoke

        given = self.sweep.spec.smoke_expect
        # the catalog knows the model by its name, not by the name the sweep serves it under
        expect = (
            set(given)
            if given is not None
            else default_expectations(str(self.sweep.profiles[self.name].model))
        )
        report = asyncio.run(run_smoke(self._endpoint(), expect))
        path = self.dir / "smoke.json"
        _write_json(path, report.to_json())
        self.outputs.update(report=str(path), passed=report.passed, counts=report.counts())
        if not report.passed:
            failed = "; ".join(f"{c.name}: {c.evidence}" for c in report.checks if c.status == "FAIL")
            raise StepFailed(f"smoke checks failed: {failed}")
        return ", ".join(f"{n} {s}" for s, n in report.counts().items() if n)

    def _eval(self) -> str:
        from ernie_ops.validate.evaluate import run_eval
        from ernie_ops.validate.suite import load_suite

        spec = self.sweep.spec
        suite = load_suite(spec.eval_suite, spec.eval_judge, spec.eval_box_space)
        report = asyncio.run(
            run_eval(self._endpoint(), suite, spec.eval_concurrency, spec.eval_max_tokens, spec.eval_body)
        )
        out = self.dir / "eval"
        report.write(out)
        self.outputs.update(report=str(out / "eval.json"), score=report.score, items=len(report.items))
        if report.errors:
            raise StepFailed(
                f"{len(report.errors)} request(s) failed during the evaluation; see {out}/results.jsonl"
            )
        return f"score {report.score:.3f} on {len(report.items)} items"

    def _load(self) -> str:
        from ernie_ops.sweep.load import run_load

        figures = run_load(self._endpoint(), self.sweep.spec.load_spec, self.dir / "load")
        self.outputs.update(figures)
        if not figures["ok"] and figures["mode"] != "find-max-rate":
            raise StepFailed("the load had failed requests: " + "; ".join(figures["problems"]))
        rate = figures.get("sustainable_rate")
        tps = figures.get("output_tokens_per_s")
        return (
            f"{figures.get('level')}: {tps} output tok/s"
            + (f", sustainable {rate} req/s" if rate is not None else "")
            + ("" if figures["met_slo"] else " (SLO not met)")
        )

    def _memory(self) -> str:
        from ernie_ops.sweep.memory import server_memory

        figures = server_memory(self.record.endpoint["port"])
        self.outputs.update(figures)
        return f"{figures['memory_gib']:.3f} GiB ({figures['source']})"

    def _stop(self) -> str | None:
        import ernie_ops.serve as serving

        port = self.record.endpoint.get("port")
        if port is None:
            return None
        stopped = [s for s in serving.stop(port=port) if s.stopped]
        return f"stopped the server on port {port}" if stopped else "no server was running"


def _now() -> str:
    from ernie_ops.records import utc_now

    return utc_now()


def _write_json(path: Path, value: Any) -> None:
    from ernie_ops.files import write_text_atomic

    write_text_atomic(path, json.dumps(value, indent=2) + "\n")
