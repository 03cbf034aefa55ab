"""`data mask --jobs N`: an uncompressed JSONL file cut into byte ranges masked by forked workers
(the same output as one process, errors with the file's own line numbers, nothing left behind when
it is stopped), a .gz input through the pool, a JSON array in one process (said so)."""

from __future__ import annotations

import errno
import gzip
import json
import logging
import os
import signal
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import pytest

from ernie_ops.data import read
from ernie_ops.data.mask import mask_file
from ernie_ops.data.read import line_spans, read_chunks
from ernie_ops.errors import UserError
from ernie_ops.privacy import default_masker
from ernie_ops.privacy.base import Finding

PII = Path(__file__).parent / "pii"
sys.path.insert(0, str(PII))
import generate  # noqa: E402  (tests/pii/generate.py)

REPO = Path(__file__).resolve().parent.parent


def _awkward_lines() -> list[bytes]:
    """Records with personal data among plain ones, blank and whitespace lines, CRLF endings and a
    line that is not JSON."""
    plain = json.dumps({"messages": [{"role": "user", "content": "nothing here, 2024-05-17. " * 5}]})
    lines: list[bytes] = [plain.encode()] * 3
    for i, r in enumerate(generate.generate(120, 11)):
        record = json.dumps({"messages": r["messages"]}, ensure_ascii=False).encode()
        lines += [record + b"\r" if i % 4 == 0 else record, *[plain.encode()] * (i % 5)]
        lines += [b"", b"   \t"] if i % 7 == 0 else []
    lines.insert(9, b"not json: anna.schmidt@example.de, +49 30 1234567")
    return lines


def _masked_both_ways(tmp_path: Path, data: bytes, jobs: int, out_name: str = "out.jsonl"):  # type: ignore[no-untyped-def]
    source = tmp_path / "in.jsonl"
    source.write_bytes(data)
    one, many = tmp_path / f"one-{out_name}", tmp_path / f"many-{out_name}"
    first = mask_file(source, one, default_masker(), progress=False, jobs=1)
    second = mask_file(source, many, default_masker(), progress=False, jobs=jobs)
    assert first.to_dict() | {"output": None} == second.to_dict() | {"output": None}
    return one, many, first


@pytest.mark.parametrize("jobs", [2, 3, 8])
@pytest.mark.parametrize("last_newline", [True, False])
def test_byte_ranges_write_the_same_file_as_one_process(
    tmp_path: Path, jobs: int, last_newline: bool
) -> None:
    data = b"\n".join(_awkward_lines()) + (b"\n" if last_newline else b"")
    one, many, result = _masked_both_ways(tmp_path, data, jobs)
    assert one.read_bytes() == many.read_bytes()
    assert result.with_pii > 100 and result.not_json == 1
    assert b"anna.schmidt@example.de" not in many.read_bytes()
    assert len(line_spans(tmp_path / "in.jsonl", jobs)) == jobs  # really cut in JOBS parts
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "many-out.jsonl", "one-out.jsonl"]


def test_a_gz_output_of_byte_ranges_reads_as_the_same_data(tmp_path: Path) -> None:
    one, many, _ = _masked_both_ways(tmp_path, b"\n".join(_awkward_lines()), 3, "out.jsonl.gz")
    assert gzip.decompress(one.read_bytes()) == gzip.decompress(many.read_bytes())


@pytest.mark.parametrize(
    "data", [b"", b"\n", b'{"a": 1}', b'{"a": "anna@example.de"}\n', b"\n\n\r\n", b'{"a": 1}\n{"b": 2}']
)
def test_tiny_files_with_more_jobs_than_lines(tmp_path: Path, data: bytes) -> None:
    one, many, _ = _masked_both_ways(tmp_path, data, 8)
    assert one.read_bytes() == many.read_bytes()


def test_line_spans_cut_at_line_starts_and_cover_the_file(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    for data in (b"ab\ncd\n", b"a\nbb\nccc\n\n\ndddd", b"x" * 50 + b"\ny\n", b"\n" * 7, b"no newline"):
        path.write_bytes(data)
        whole = [line for chunk in read_chunks(path) for line in chunk.lines]
        for parts in range(1, len(data) + 3):
            spans = line_spans(path, parts)
            assert spans[0][0] == 0 and spans[-1][1] == len(data) and len(spans) <= parts
            assert all(a < b for a, b in spans)
            assert all(stop == start for (_, stop), (start, _) in pairwise(spans))
            assert all(data[start - 1 : start] == b"\n" for start, _ in spans[1:])
            small = [line for span in spans for chunk in read_chunks(path, 4, span) for line in chunk.lines]
            assert small == whole, (data, parts)
    path.write_bytes(b"ab\ncd\nef\n")  # 9 bytes in 3: cuts at 3 and 6 are line starts already
    assert line_spans(path, 3) == [(0, 3), (3, 6), (6, 9)]


def test_a_read_error_in_a_range_names_the_file_s_own_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"".join(b'{"n": %d}\n' % i for i in range(3000)))
    second_start = line_spans(source, 2)[1][0]
    failing_at = second_start + 1000  # in the second worker's range, past its first 512-byte block
    real_read = read._Span.read

    def read_or_fail(self, size: int) -> bytes:  # type: ignore[no-untyped-def]
        if self._file.tell() + size > failing_at:  # the workers inherit this patch at fork
            raise OSError(errno.EIO, "Input/output error")
        return real_read(self, size)

    monkeypatch.setattr(read._Span, "read", read_or_fail)
    import ernie_ops.data.mask as mask

    real_chunks = mask.read_chunks
    monkeypatch.setattr(mask, "read_chunks", lambda path, span=None: real_chunks(path, 512, span))
    with pytest.raises(UserError) as err:
        mask_file(source, tmp_path / "out.jsonl", default_masker(), progress=False, jobs=2)
    lines_read = source.read_bytes()[: second_start + 512].count(b"\n")  # the second range's first block
    assert err.value.where == f"{source}:{lines_read + 1}"
    assert "Input/output error" in err.value.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_a_gz_input_goes_through_the_pool_and_a_json_array_through_one_process(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lines = _awkward_lines()
    packed = tmp_path / "in.jsonl.gz"
    packed.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    m = default_masker()
    mask_file(packed, tmp_path / "one.jsonl", m, progress=False, jobs=1)
    mask_file(packed, tmp_path / "pool.jsonl", m, progress=False, jobs=2)
    assert (tmp_path / "one.jsonl").read_bytes() == (tmp_path / "pool.jsonl").read_bytes()

    array = tmp_path / "in.json"
    array.write_text(json.dumps([{"messages": [{"role": "user", "content": "mail anna@example.de"}]}] * 3))
    with caplog.at_level(logging.WARNING, logger="ernie_ops"):
        result = mask_file(array, tmp_path / "array.jsonl", m, progress=False, jobs=4)
    assert result.with_pii == 3 and "JSON array" in caplog.text and "not 4" in caplog.text


# -- stopping: the command as users run it, with a detector slow enough to stop it midway ---------


class SlowDetector:
    """Looks at every record for a while and leaves its process id in $SLOW_DETECTOR_DIR."""

    name, types, trigger = "slow", ("SLOW",), None

    def find(self, text: str) -> list[Finding]:
        Path(os.environ["SLOW_DETECTOR_DIR"], str(os.getpid())).touch()
        time.sleep(0.02)
        return []


def make_slow_detector() -> SlowDetector:
    return SlowDetector()


def _start_slow_mask(tmp_path: Path) -> tuple[subprocess.Popen, Path, Path]:
    data = tmp_path / "data"
    data.mkdir()
    source = data / "in.jsonl"
    source.write_text("".join(json.dumps({"text": f"record {i}"}) + "\n" for i in range(2000)))
    seen = tmp_path / "pids"
    seen.mkdir()
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(REPO), str(Path(__file__).parent)]),
        ERNIE_OPS_PII_DETECTORS=f"{__name__}:make_slow_detector",
        SLOW_DETECTOR_DIR=str(seen),
    )
    args = [
        sys.executable,
        "-m",
        "ernie_ops",
        "data",
        "mask",
        str(source),
        str(data / "out.jsonl"),
        "--jobs",
        "2",
    ]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(list(seen.iterdir())) < 2:  # both workers are masking
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    return proc, data, seen


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # ended, not yet reaped by whoever adopted it


def _wait_gone(pids: list[int]) -> None:
    deadline = time.monotonic() + 10
    while not all(map(_gone, pids)):
        assert time.monotonic() < deadline, f"workers still running: {pids}"
        time.sleep(0.05)


def test_sigterm_ends_the_workers_and_leaves_no_file_behind(tmp_path: Path) -> None:
    proc, data, seen = _start_slow_mask(tmp_path)
    workers = [int(p.name) for p in seen.iterdir()]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err
    _wait_gone(workers)
    assert [p.name for p in data.iterdir()] == ["in.jsonl"]


def test_a_killed_worker_is_an_error_and_leaves_no_file_behind(tmp_path: Path) -> None:
    proc, data, seen = _start_slow_mask(tmp_path)
    workers = [int(p.name) for p in seen.iterdir()]
    os.kill(workers[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "ended unexpectedly" in err and "Traceback" not in err, err
    _wait_gone(workers)
    assert [p.name for p in data.iterdir()] == ["in.jsonl"]


def test_workers_die_with_a_killed_parent_and_leave_no_part_file(tmp_path: Path) -> None:
    proc, data, seen = _start_slow_mask(tmp_path)
    workers = [int(p.name) for p in seen.iterdir()]
    proc.kill()
    proc.communicate(timeout=30)
    _wait_gone(workers)
    # only the output's own temporary file can stay after SIGKILL (atomic_output's): no parts
    assert [p.name for p in data.iterdir() if ".part." in p.name] == []


@pytest.mark.parametrize(
    ("name", "cpus", "expected"),
    [
        ("in.jsonl", 2, 2),
        ("in.jsonl", 16, 8),
        ("in.jsonl", 1, 1),
        ("in.jsonl.gz", 2, 1),
        ("in.jsonl.gz", 4, 3),
    ],
)
def test_the_default_jobs_by_file_kind_and_cpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, cpus: int, expected: int
) -> None:
    from ernie_ops.cli import data

    monkeypatch.setattr(data, "AUTO_JOBS_MB", 0)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(cpus)))
    path = tmp_path / name
    record = b'{"text": "hello"}\n'
    path.write_bytes(gzip.compress(record) if name.endswith(".gz") else record)
    assert data._auto_jobs(path) == expected
    array = tmp_path / "in.json"
    array.write_text('[{"text": "hello"}]')
    assert data._auto_jobs(array) == 1  # read whole: one process
    assert data._auto_jobs(tmp_path / "missing.jsonl") == 1  # mask_file says what is wrong
    monkeypatch.setattr(data, "AUTO_JOBS_MB", 1)
    assert data._auto_jobs(path) == 1  # small: done before workers would start


def test_the_progress_bar_counts_the_bytes_of_every_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tqdm

    bars: list[Bar] = []

    class Bar:
        def __init__(self, total: int, **_: object) -> None:
            self.total, self.n = total, 0
            bars.append(self)

        def update(self, n: int) -> None:
            self.n += n

        def __enter__(self) -> Bar:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

    monkeypatch.setattr(tqdm, "tqdm", Bar)
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n".join(_awkward_lines()) * 20)
    mask_file(source, tmp_path / "out.jsonl", default_masker(), progress=True, jobs=3)
    assert [(bar.total, bar.n) for bar in bars] == [(source.stat().st_size, source.stat().st_size)]


def test_a_bug_in_a_worker_is_raised_with_its_traceback_and_leaves_nothing(
    tmp_path: Path, monkeypatch
) -> None:
    """Not a user mistake: the parent raises it with the worker's traceback (no hang, no output file,
    no part file), on every Python the toolkit supports (no 3.11-only exception notes)."""
    from ernie_ops.data import mask

    def broken(lines, masker, result):  # type: ignore[no-untyped-def]
        raise ZeroDivisionError("the masker broke")

    monkeypatch.setattr(mask, "mask_lines", broken)  # the forked workers inherit it
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n".join(_awkward_lines()) + b"\n")
    with pytest.raises(RuntimeError, match=r"mask worker [12] failed: ZeroDivisionError") as raised:
        mask_file(source, tmp_path / "out.jsonl", default_masker(), progress=False, jobs=2)
    assert "the masker broke" in str(raised.value) and "Traceback" in str(raised.value)
    assert isinstance(raised.value.__cause__, ZeroDivisionError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]
