"""ernie_ops.files and ernie_ops.proc: outputs never destroy inputs or special files; locks die
with their owners; children die with their parents."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ernie_ops.errors import UserError
from ernie_ops.files import atomic_output, check_output, delete_older, regular_file
from ernie_ops.proc import Lock


def test_an_output_that_is_an_input_is_refused_also_through_a_symlink(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("keep\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(source)
    hard = tmp_path / "hard.jsonl"
    os.link(source, hard)
    for out in (source, link, hard):
        with pytest.raises(UserError, match="destroy the input"), atomic_output(out, [source]) as f:
            f.write(b"lost\n")
    assert source.read_text() == "keep\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_fifo_or_device_is_never_replaced(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for out in (fifo, Path("/dev/null")):
        with pytest.raises(UserError, match="not a regular file"):
            check_output(out)
    assert fifo.is_fifo() and Path("/dev/null").is_char_device()
    with pytest.raises(UserError, match="FIFO"):
        regular_file(fifo)
    with pytest.raises(UserError, match="character device"):
        regular_file("/dev/zero")
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(UserError, match="symlink loop"):
        regular_file(loop)


def test_gz_names_are_gzip_and_outputs_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        with atomic_output(tmp_path / "out.jsonl.gz") as f:
            f.write(b'{"a": 1}\n')
        with atomic_output(tmp_path / "out.jsonl") as f:
            f.write(b"x\n")
    finally:
        os.umask(old)
    assert gzip.decompress((tmp_path / "out.jsonl.gz").read_bytes()) == b'{"a": 1}\n'
    assert (tmp_path / "out.jsonl").stat().st_mode & 0o777 == 0o640


def test_an_error_mid_write_leaves_neither_output_nor_temporary(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), atomic_output(tmp_path / "o.jsonl") as f:
        f.write(b"partial")
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []


def test_a_lock_is_exclusive_and_dies_with_its_owner(tmp_path: Path) -> None:
    path = tmp_path / "run.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from ernie_ops.proc import Lock\n"
         f"assert Lock({str(path)!r}).acquire('holder'); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        owner = Lock.holder(path)
        assert owner is not None and owner.pid == holder.pid and owner.command == "holder"
        assert not Lock(path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert Lock.holder(path) is None  # released by the kernel, no stale lock
    assert Lock.last_owner(path) is not None  # but who held it is still known
    with Lock(path) as mine:
        assert mine.acquire("me")
    assert Lock.holder(path) is None


def test_a_child_dies_with_its_parent_even_on_sigkill(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time\nfrom ernie_ops.proc import die_with_parent\n"
         "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'],"
         " preexec_fn=die_with_parent())\n"
         f"open({str(pidfile)!r}, 'w').write(str(child.pid)); time.sleep(120)"],
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not pidfile.exists() or not pidfile.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child = int(pidfile.read_text())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 60
    while _alive(child):
        assert time.monotonic() < deadline, "the child outlived its SIGKILLed parent"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_delete_older_removes_only_old_matching_files(tmp_path: Path, monkeypatch) -> None:
    now = time.time()
    for name, age in (("a.json", 100), ("b.json", 10), ("c.txt", 100)):
        (tmp_path / name).write_text("x")
        os.utime(tmp_path / name, (now - age, now - age))
    assert delete_older(tmp_path, "*.json", now - 50) == [tmp_path / "a.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json", "c.txt"]
    real_unlink = Path.unlink

    def raced(path: Path, missing_ok: bool = False) -> None:  # another process deleted it first
        real_unlink(path)
        raise FileNotFoundError(path)

    monkeypatch.setattr(Path, "unlink", raced)
    assert delete_older(tmp_path, "*.json", now) == []
