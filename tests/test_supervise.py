"""The one process-supervision module (`ernie_ops.supervise`) and what train and export gained from it:
whole trees stopped (workers that left the process group too), pids reused by other processes never
hit, a full disk that never blocks the child, and the log-tail diagnosis helpers."""

from __future__ import annotations

import contextlib
import io
import os
import queue
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
from polling import wait_until

from ernie_ops import supervise
from ernie_ops.supervise import Known, Pump, clean_lines, last_exception, match_known, start, stop_tree
from ernie_ops.train.follow import Follower
from ernie_ops.train.follow import supervise as train_supervise

DEADLINE = 60  # a hang guard only

# A parent that starts two workers and writes their pids: one stays in its process group, one calls
# setsid (as some launchers' workers do) and so is out of reach of killpg. Then it prints a line and
# either sleeps (a stalled run) or exits at once (a leader that leaves its workers behind).
TREE = textwrap.dedent(
    """\
    import os, subprocess, sys, time
    pids, mode = sys.argv[1], sys.argv[2]
    sleeper = [sys.executable, "-c", "import time\\nwhile True: time.sleep(1)"]
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    inside = subprocess.Popen(sleeper, **quiet)
    escaped = subprocess.Popen(sleeper, start_new_session=True, **quiet)
    with open(pids + ".tmp", "w") as f:
        f.write(f"{inside.pid} {escaped.pid}")
    os.rename(pids + ".tmp", pids)
    print("workers started", flush=True)
    if mode == "stall":
        while True:
            time.sleep(1)
    """
)


def workers(path: Path) -> list[int]:
    assert wait_until(path.exists, 20), "the tree never started its workers"
    return [int(p) for p in path.read_text().split()]


def running(pid: int) -> bool:
    return supervise.alive(pid)


@pytest.fixture
def tree_script(tmp_path):
    script = tmp_path / "tree.py"
    script.write_text(TREE)
    return script


def _kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# --- train: the disagreement with serve, resolved -----------------------------------------------


def test_a_stopped_run_takes_workers_that_left_the_process_group_with_it(tmp_path, tree_script):
    # the old train code signalled the process group only: the setsid worker outlived the run
    pids = tmp_path / "pids"
    follower = Follower(tmp_path / "m.jsonl", tmp_path / "train.log", None)
    command = [sys.executable, str(tree_script), str(pids), "stall"]
    outcome = train_supervise(command, dict(os.environ), follower, stall_seconds=2)
    found = workers(pids)
    try:
        assert outcome.status == "stopped" and "stalled" in (outcome.failure or "")
        assert wait_until(lambda: not any(running(p) for p in found), 10), [p for p in found if running(p)]
    finally:
        _kill(found)


def test_workers_left_behind_by_a_trainer_that_exited_are_stopped(tmp_path, tree_script):
    # the old train code did nothing once the trainer itself had exited
    pids = tmp_path / "pids"
    follower = Follower(tmp_path / "m.jsonl", tmp_path / "train.log", None)
    command = [sys.executable, str(tree_script), str(pids), "exit"]
    outcome = train_supervise(command, dict(os.environ), follower, stall_seconds=60)
    inside, escaped = workers(pids)
    try:
        assert outcome.status == "succeeded"
        # the worker in the group is stopped; the escaped one was orphaned before anyone looked (its
        # parent is gone), so no tree walk can find it: only the group reaches it
        assert wait_until(lambda: not running(inside), 10)
    finally:
        _kill([inside, escaped])


# --- export: the merge's worker processes -------------------------------------------------------


def test_an_export_that_times_out_stops_its_workers_too(tmp_path, tree_script, monkeypatch):
    # the old export code terminated the launcher only; ERNIEKit's merge runs in worker processes
    from ernie_ops.train import export

    pids = tmp_path / "pids"
    command = [sys.executable, str(tree_script), str(pids), "stall"]
    with pytest.raises(export.ExportFailed, match="did not finish in 3 s"):
        export._run_logged(command, tmp_path / "export.log", cwd=tmp_path, timeout=3)
    found = workers(pids)
    try:
        assert wait_until(lambda: not any(running(p) for p in found), 10), [p for p in found if running(p)]
        assert "workers started" in (tmp_path / "export.log").read_text()
    finally:
        _kill(found)


# --- stop_tree ----------------------------------------------------------------------------------


def test_stop_tree_escalates_to_sigkill_and_reaps_the_child(tmp_path):
    code = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('up', flush=True)\n"
    code += "while True: time.sleep(1)"
    child = start([sys.executable, "-c", code], text=True)
    assert child.process.stdout is not None
    assert child.process.stdout.readline() == "up\n"  # the handler is in place
    assert child.stop(grace=0.5) is True
    assert child.process.returncode == -signal.SIGKILL
    assert stop_tree(child.pid, created=child.created, reap=child.process.poll) is False


def test_a_reused_pid_is_never_signalled():
    # a bystander in its own session stands for a process that got a dead server's pid (and group id)
    bystander = subprocess.Popen(
        [sys.executable, "-c", "import time\ntime.sleep(60)"], start_new_session=True
    )
    try:
        created = psutil.Process(bystander.pid).create_time()
        assert stop_tree(bystander.pid, bystander.pid, 0.5, created=created - 100) is False
        assert bystander.poll() is None, "stop_tree signalled a process that was not the recorded one"
        assert not supervise.alive(bystander.pid, created - 100)
        assert supervise.alive(bystander.pid, created)
        assert supervise.from_ticks(1) < created
    finally:
        bystander.kill()
        bystander.wait()


def test_our_own_process_and_group_are_never_targets():
    me = os.getpid()
    assert me not in supervise.tree(me, os.getpgrp())
    assert not supervise.group_is_ours(me, os.getpgrp(), None)
    assert not supervise.alive(0) and not supervise.alive(-1)


def test_a_new_session_is_its_own_group_and_gets_no_terminal_input():
    child = start(
        [sys.executable, "-c", "import os, sys\nprint(os.getsid(0), sys.stdin.read() == '')"], text=True
    )
    out, _ = child.process.communicate(timeout=DEADLINE)
    session, empty = out.split()
    assert int(session) == child.pid and empty == "True"


# --- the pump -----------------------------------------------------------------------------------


def test_the_pump_keeps_draining_after_the_log_fails_and_reports_once(tmp_path):
    # 2 MB through a pipe (far more than its 64 KiB buffer) into a log on a "full disk": the child
    # must not block, every line must still reach the caller, the failure be reported once
    count = 20000
    code = f"import sys\nfor i in range({count}): sys.stdout.write('line %d %s\\n' % (i, 'x' * 90))"
    child = start([sys.executable, "-c", code], text=True)
    assert child.process.stdout is not None
    lines: queue.Queue = queue.Queue()
    log = open("/dev/full", "w", encoding="utf-8")  # noqa: SIM115 (its last flush fails: close_log)
    try:
        pump = Pump(child.process.stdout, log, lines).start()
        assert child.process.wait(timeout=DEADLINE) == 0
        pump.join(timeout=DEADLINE)
    finally:
        supervise.close_log(log)
    items = []
    while not lines.empty():
        items.append(lines.get())
    errors = [i for i in items if isinstance(i, OSError)]
    assert len(errors) == 1 and errors[0] is pump.failure
    assert "No space left on device" in str(errors[0]) and errors[0].filename == "/dev/full"
    assert items[-1] is None and sum(isinstance(i, str) for i in items) == count


def test_the_pump_writes_the_log_and_ends_with_none(tmp_path):
    child = start([sys.executable, "-c", "print('a'); print('b')"], text=True)
    assert child.process.stdout is not None
    lines: queue.Queue = queue.Queue()
    with (tmp_path / "x.log").open("w", encoding="utf-8") as log:
        Pump(child.process.stdout, log, lines).start().join(timeout=DEADLINE)
    assert [lines.get() for _ in range(3)] == ["a\n", "b\n", None]
    assert (tmp_path / "x.log").read_text() == "a\nb\n"
    child.process.wait(timeout=DEADLINE)


# --- diagnosis ----------------------------------------------------------------------------------


def test_clean_lines_keeps_the_last_state_of_a_progress_bar_and_drops_colours():
    text = "\x1b[32mINFO\x1b[0m loading\n 10%|#  \r 50%|#####  \r100%|##########\n\n"
    assert clean_lines(text) == ["INFO loading", "100%|##########"]


def test_read_tail_reads_from_an_offset_and_from_the_start_when_truncated(tmp_path):
    log = tmp_path / "a.log"
    log.write_text("old\n")
    mark = log.stat().st_size
    with log.open("a") as f:
        f.write("new 1\nnew 2\n")
    assert supervise.read_tail(log, mark) == ["new 1", "new 2"]
    assert supervise.read_tail(log, mark, limit=1) == ["new 2"]
    log.write_text("x\n")  # truncated (rotated) since the mark
    assert supervise.read_tail(log, mark) == ["x"]
    assert supervise.read_tail(tmp_path / "missing.log") == []


def test_last_exception_and_known_failures():
    lines = [
        "Traceback (most recent call last):",
        "ValueError: first",
        "  raise",
        "paddle.base.core.PreconditionNotMet: (PreconditionNotMet) the second",
        "NotFound: the third",
        "an ordinary line",
    ]
    assert last_exception(lines) == "NotFound: the third"
    assert last_exception(lines[:4]) == "paddle.base.core.PreconditionNotMet: (PreconditionNotMet) the second"
    assert last_exception(["nothing here"]) is None
    table = (
        Known(re.compile("out of memory"), "oom", "less"),
        Known(re.compile("Failed"), "generic", "read"),
    )
    found = match_known("\x1b[31mFailed\x1b[0m: CUDA out of memory", table)
    assert found is not None and found[0].cause == "oom"
    assert match_known("all fine", table) is None


def test_exit_text():
    assert supervise.exit_text(3) == "exited with status 3"
    assert supervise.exit_text(-9) == "was killed by SIGKILL"
    assert supervise.signal_name(200) == "200"


# --- serve's console: the status line on a terminal ---------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_serve_progress_line_is_rewritten_in_place_on_a_terminal_and_plain_lines_elsewhere():
    from ernie_ops.serve.supervisor import Console, Redactor

    terminal = _Terminal()
    console = Console(Redactor(["sk-secret"]), out=terminal, err=terminal)
    console.progress("  1 s  loading  | a long first line")
    console.progress("  2 s  loading  | key sk-secret")
    console.say("ready")
    shown = terminal.getvalue()
    assert "sk-secret" not in shown and "key ***" in shown
    # one line rewritten with \r, ended by a newline before the next message
    assert shown.count("\n") == 2 and shown.endswith("key ***\nready\n")
    assert "\r  2 s  loading  | key ***" in shown

    plain = io.StringIO()
    console = Console(Redactor(), out=plain, err=plain)
    console.progress("  1 s  loading")
    console.progress("  2 s  loading")
    assert plain.getvalue() == "  1 s  loading\n  2 s  loading\n"
