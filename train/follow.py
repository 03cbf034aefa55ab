"""Follow ERNIEKit while it runs: parse its log into metrics, show progress, and never hang.

The watchdog stops a run that stops making progress (no new log line for `stall_seconds`) or whose
data-loader thread died (ERNIEKit's main process then waits forever, see shared reference), and
says what it saw. Ctrl-C (or SIGTERM, SIGHUP) stops the whole process tree, and the trainer dies
with `ernie-ops` even when that is killed outright. A disk too full for the log stops the run.

ERNIEKit's log can hold dataset text: the examples it skips are logged whole ("[SKIP] wrong
example: ...", "[SKIP] all labels set to 0: ...", "[SKIP] Example is too long: ..." in
ernie/dataset/finetuning.py and dpo.py; "bad line: ..." in its HF parser). So personal data is
masked in every line written to the train log, kept in the tail of a failure and echoed, unless
masking is off for the run (ERNIE_OPS_NO_MASK=1, pipeline --no-mask): the log then says so. Metrics
are read from the lines as ERNIEKit wrote them. On GPUs, paddle.distributed.launch's workers write
logs/workerlog.N themselves: those are masked in place once the workers are stopped.
"""

from __future__ import annotations

import contextlib
import json
import queue
import re
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ernie_ops.files import atomic_output
from ernie_ops.supervise import STOP_GRACE_S, Pump, close_log, last_exception, start
from ernie_ops.text import strip_ansi

STEP = re.compile(r"\bloss: (?P<loss>[-+\w.]+), learning_rate: (?P<lr>[-+\w.]+), global_step: (?P<step>\d+)")
EVAL = re.compile(r"\beval_loss: (?P<loss>[-+\w.]+),")
PAIR = re.compile(r"(\w+): ([-+]?[\d.]+(?:[eE][-+]?\d+)?|nan|inf)")
# ERNIEKit's data loader thread dies with this when every example was skipped; the main process
# then waits forever for a batch.
LOADER_DIED = (
    re.compile(r"Exception in thread .*DataLoader|Exception in thread"),
    re.compile(r"int\(\) argument must be .*NoneType"),
)
SKIPPED = re.compile(r"\[SKIP\]|even one turn|Skip (loading|parsing) error data")
LOADER_GRACE_S = 10.0  # after the loader dies: time for ERNIEKit to fail on its own


@dataclass
class Outcome:
    exit_code: int | None
    status: str  # succeeded | failed | stopped | interrupted
    failure: str | None = None
    last_step: int | None = None
    tail: list[str] = field(default_factory=list)
    signum: int | None = None  # the signal that interrupted it (SIGINT for Ctrl-C)


@dataclass
class Follower:
    """Reads ERNIEKit's output line by line and turns it into metrics, progress and verdicts."""

    metrics_path: Path
    log_path: Path
    max_steps: int | None
    on_step: Callable[[dict[str, Any]], None] | None = None
    echo: bool = False
    records: int | None = None  # training records: a run that skips each of them twice is hopeless
    tail: deque = field(default_factory=lambda: deque(maxlen=40))
    last_step: int | None = None
    skipped: int = 0
    skipped_since_step: int = 0
    loader_died_at: float | None = None
    last_progress: float = field(default_factory=time.monotonic)  # a step, or any line but a skip
    mask: Callable[[str], str] | None = field(default_factory=lambda: log_masker())  # None: not masked

    @property
    def skipping_everything(self) -> bool:
        """ERNIEKit's iterable dataset loops forever when every example is skipped, logging [SKIP]."""
        return self.records is not None and self.skipped_since_step > 2 * self.records + 10

    def feed(self, line: str) -> None:
        line = strip_ansi(line.rstrip("\n"))
        shown = self.mask(line) if self.mask else line
        self.tail.append(shown)
        if self.echo:
            print(shown, flush=True)
        if SKIPPED.search(line):
            self.skipped += 1
            self.skipped_since_step += 1
        else:
            self.last_progress = time.monotonic()
        if self.loader_died_at is None and any(p.search(line) for p in LOADER_DIED):
            self.loader_died_at = time.monotonic()
        step = STEP.search(line)
        if step:
            record = _numbers(line[step.start() :])
            record["step"] = int(step.group("step"))
            record["time"] = round(time.time(), 3)
            self._write(record)  # first: an interrupt between the two never claims an unwritten step
            self.last_step = record["step"]
            self.skipped_since_step = 0
            if self.on_step:
                self.on_step(record)
            return
        evaluation = EVAL.search(line)
        if evaluation:
            numbers = _numbers(line[evaluation.start() :])
            record = {k: v for k, v in numbers.items() if k.startswith("eval_")}
            record["step"] = self.last_step
            record["time"] = round(time.time(), 3)
            self._write(record)

    def _write(self, record: dict[str, Any]) -> None:
        try:
            with self.metrics_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as err:
            err.filename = err.filename or str(self.metrics_path)  # a failed write names no file
            raise


def log_masker() -> Callable[[str], str] | None:
    """What masks a log line (its values numbered per line), or None when masking is off."""
    from ernie_ops.privacy import default_masker, masking_on

    if not masking_on():
        return None
    mask_text = default_masker().mask_text
    return lambda line: mask_text(line)


MASK_NOTE = (
    "# ernie-ops: personal data in ERNIEKit's output is masked in this log (<EMAIL_1>, ...; names of "
    "people are not found)\n"
)
NO_MASK_NOTE = "# ernie-ops: personal data in this log is NOT masked (ERNIE_OPS_NO_MASK=1 or --no-mask)\n"


def mask_worker_logs(log_dir: Path, mask: Callable[[str], str]) -> None:
    """Mask the logs paddle.distributed.launch's workers wrote themselves (workerlog.N), each
    replaced atomically; one that cannot be rewritten is left as it is (the run's outcome stands)."""
    for path in sorted(log_dir.glob("workerlog.*")):
        if path.is_symlink() or not path.is_file():
            continue
        with (
            contextlib.suppress(OSError),
            path.open(encoding="utf-8", errors="replace") as src,
            atomic_output(path) as out,
        ):
            for line in src:
                out.write(mask(line).encode("utf-8"))


def _numbers(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in PAIR.findall(text):
        try:
            out[key] = float(value)
        except ValueError:
            continue
    if "global_step" in out:
        out.pop("global_step")
    return out


def supervise(
    command: list[str],
    env: dict[str, str],
    follower: Follower,
    stall_seconds: float,
    cwd: Path | None = None,
    *,
    death_signal: int = signal.SIGKILL,
    pass_fds: tuple[int, ...] = (),
) -> Outcome:
    """Run the command to its end, the watchdog's verdict, or Ctrl-C / SIGTERM / SIGHUP; never hang.

    The child gets DEATH_SIGNAL when this process dies, even by SIGKILL (SIGTERM for a launcher
    that must take its workers down itself); PASS_FDS (lock descriptors) are inherited by it."""
    log = follower.log_path.open("a", encoding="utf-8")
    try:
        log.write(MASK_NOTE if follower.mask else NO_MASK_NOTE)
        child = start(command, env=env, cwd=cwd, text=True, death_signal=death_signal, pass_fds=pass_fds)
    except BaseException:
        close_log(log)
        raise
    process = child.process
    lines: queue.Queue = queue.Queue()
    assert process.stdout is not None
    pump = Pump(process.stdout, log, lines, follower.mask).start()

    def stop() -> None:
        child.stop(STOP_GRACE_S)

    try:
        return _watch(process, lines, follower, stall_seconds, stop)
    except KeyboardInterrupt as interrupt:  # Ctrl-C, or Terminated (SIGTERM, SIGHUP)
        stop()
        signum = getattr(interrupt, "signum", signal.SIGINT)
        why = (
            "interrupted (Ctrl-C)"
            if signum == signal.SIGINT
            else f"terminated by {signal.Signals(signum).name}"
        )
        tail = list(follower.tail)
        return Outcome(process.returncode, "interrupted", why, follower.last_step, tail, signum)
    finally:
        stop()  # also when it ended on its own: workers it left behind
        pump.join(timeout=10)  # the pipe ends with the process tree; then nothing writes the log
        close_log(log)
        if follower.mask:
            mask_worker_logs(follower.log_path.parent, follower.mask)


def _watch(
    process: subprocess.Popen,
    lines: queue.Queue,
    follower: Follower,
    stall_seconds: float,
    kill: Callable[[], None],
) -> Outcome:
    finished = False
    while not finished:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            line = ""
        try:
            if isinstance(line, Exception):
                raise line
            if line is None:
                finished = True
            elif line:
                follower.feed(line)
        except OSError as err:  # the log or metrics file cannot be written: the record would be lost
            kill()
            where = f" {err.filename}" if err.filename else ""
            why = f"cannot write{where}: {err.strerror or err}; stopped the run (free space, then resume it)"
            return Outcome(process.returncode, "failed", why, follower.last_step, list(follower.tail))
        now = time.monotonic()
        if follower.skipping_everything:
            kill()
            why = (
                f"ERNIEKit skipped {follower.skipped_since_step} examples in a row without a training step "
                f"({follower.records} records): none fits (max_seq_len? chat template?), it would loop "
                "forever. "
                "See which: ernie-ops data lint TRAIN.jsonl --tokenizer MODEL_DIR --max-seq-len N"
            )
            return Outcome(process.returncode, "stopped", why, follower.last_step, list(follower.tail))
        if follower.loader_died_at is not None and now - follower.loader_died_at > LOADER_GRACE_S:
            kill()
            why = "ERNIEKit's data loader died and its main process would wait forever"
            if follower.skipped:
                why += f"; it skipped {follower.skipped} example(s) first: no usable record left"
            return Outcome(process.returncode, "stopped", why, follower.last_step, list(follower.tail))
        if not finished and now - follower.last_progress > stall_seconds:
            kill()
            why = f"no progress for {stall_seconds:.0f} s (no training step, no log line but skips): stalled"
            if follower.skipped:
                why += f" after skipping {follower.skipped} example(s) (likely every record was unusable)"
            return Outcome(process.returncode, "stopped", why, follower.last_step, list(follower.tail))
    code = process.wait()
    if code == 0:
        return Outcome(0, "succeeded", None, follower.last_step, list(follower.tail))
    return Outcome(code, "failed", _diagnose(follower.tail, code), follower.last_step, list(follower.tail))


def _diagnose(tail: deque, code: int) -> str:
    """The most telling line of a failure: the last exception message, if there is one."""
    last = last_exception(tail)
    return f"ERNIEKit exited with {code}: {last}" if last else f"ERNIEKit exited with {code}"
