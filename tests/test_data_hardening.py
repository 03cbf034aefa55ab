"""Issue #14, data: no input, output name or signal makes `ernie-ops data` hang, crash or lose data."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ernie_ops.data.convert import convert
from ernie_ops.data.lint import lint_file
from ernie_ops.data.split import split

HERE = Path(__file__).parent
GOOD = HERE / "data_good"
HANG_GUARD = 60  # seconds: only there so that a regression fails instead of hanging the suite


def chat(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def no_traceback(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert "Traceback" not in result.stderr, result.stderr
    return result


# --- 1. an output never replaces an input or something that is not a regular file ---------------


def test_a_reject_file_named_like_the_input_is_refused_and_the_input_kept(cli, tmp_path):
    """`convert train.rejects.jsonl train.jsonl`: the reject file of train.jsonl is the input."""
    source = write_jsonl(tmp_path / "train.rejects.jsonl", [chat(1), chat(2), {"x": 1}])
    before = source.read_bytes()
    result = no_traceback(
        cli("data", "convert", str(source), str(tmp_path / "train.jsonl"), "--to", "erniekit-sft")
    )
    assert result.returncode == 2 and "is the input" in result.stderr and "rejected" in result.stderr
    assert source.read_bytes() == before
    assert not (tmp_path / "train.jsonl").exists()


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_an_output_that_is_the_input_through_a_link_is_refused(cli, tmp_path, link):
    source = write_jsonl(tmp_path / "all.jsonl", [chat(i) for i in range(20)])
    before = source.read_bytes()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    alias = out_dir / "all-train.jsonl"  # what split writes, and convert's OUT below
    os.symlink(source, alias) if link == "symlink" else os.link(source, alias)
    for args in (
        ["split", str(source), "--out-dir", str(out_dir)],
        ["convert", str(source), str(alias), "--to", "erniekit-sft"],
    ):
        result = no_traceback(cli("data", *args))
        assert result.returncode == 2 and "is the input" in result.stderr, (args, result.stderr)
    assert source.read_bytes() == before and os.path.samefile(alias, source)
    assert [p.name for p in out_dir.iterdir()] == ["all-train.jsonl"]  # no temp file left either


def test_a_fifo_is_never_replaced_by_an_output(cli, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [chat(1), chat(2)])
    fifo = tmp_path / "out.jsonl"
    os.mkfifo(fifo)
    result = no_traceback(
        cli("data", "convert", str(source), str(fifo), "--to", "erniekit-sft", timeout=HANG_GUARD)
    )
    assert result.returncode == 2 and "not a regular file (a FIFO)" in result.stderr
    assert fifo.is_fifo()


def test_the_lint_histogram_never_replaces_the_dataset(tiny_dense, tmp_path, capsys):
    from ernie_ops.cli.main import main

    source = write_jsonl(tmp_path / "in.jsonl", [chat(1), chat(2)])
    before = source.read_bytes()
    args = ["data", "lint", str(source), "--tokenizer", str(tiny_dense), "--histogram", str(source)]
    assert main(args) == 2
    assert "is the input" in capsys.readouterr().err and source.read_bytes() == before


# --- 2. every signal that ends a command cleans its temporary files -----------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_mid_convert_leaves_no_temporary_file(tmp_path, signum):
    block = b"".join(json.dumps(chat(i)).encode() + b"\n" for i in range(20_000))  # ~1.4 MB
    source = tmp_path / "big.jsonl"
    with source.open("wb") as f:
        for _ in range(30):  # ~42 MB: a second or more of work, far more than it takes to see it start
            f.write(block)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    cmd = [sys.executable, "-m", "ernie_ops", "data", "convert", str(source), str(out_dir / "o.jsonl")]
    child = subprocess.Popen([*cmd, "--to", "erniekit-sft"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + HANG_GUARD
        while not any(out_dir.iterdir()):  # the temp files exist: convert is writing
            assert child.poll() is None and time.monotonic() < deadline, "convert never started writing"
            time.sleep(0.01)
        child.send_signal(signum)
        _, err = child.communicate(timeout=HANG_GUARD)
    finally:
        child.kill()
    assert child.returncode == 128 + signum, err
    assert b"Traceback" not in err
    assert list(out_dir.iterdir()) == []


# --- 3. a .gz name gets gzip; outputs follow the umask ------------------------------------------


def test_a_gz_output_is_gzip_and_follows_the_umask(tmp_path):
    out = tmp_path / "out.jsonl.gz"
    old = os.umask(0o027)
    try:
        convert(GOOD / "messages.jsonl", out, "erniekit-sft", progress=False)
        train = split(write_jsonl(tmp_path / "all.jsonl", [chat(i) for i in range(10)]), 0.2).train
    finally:
        os.umask(old)
    assert gzip.decompress(out.read_bytes()).count(b"\n") == 2
    assert lint_file(out, progress=False).records == 2  # and lint reads it back
    assert (out.stat().st_mode & 0o777, train.stat().st_mode & 0o777) == (0o640, 0o640)


# --- 15. a dataset that is not a regular file is refused, never read -------------------------------


@pytest.mark.parametrize(
    "action",
    [
        ["lint"],
        ["convert", "OUT", "--to", "erniekit-sft"],
        ["split"],
        ["preview", "--tokenizer", "MODEL"],
    ],
)
@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "symlink loop"])
def test_a_dataset_that_is_not_a_regular_file_is_refused(cli, tmp_path, action, kind):
    if kind == "fifo":
        path = tmp_path / "data.jsonl"
        os.mkfifo(path)
        want = "is not a regular file (a FIFO)"
    elif kind == "symlink loop":
        path = tmp_path / "data.jsonl"
        os.symlink(tmp_path / "other.jsonl", path)
        os.symlink(path, tmp_path / "other.jsonl")
        want = "is a symlink loop"
    else:
        path, want = Path(kind), "is not a regular file (a character device)"
    verb, *rest = action
    rest = [{"OUT": str(tmp_path / "o.jsonl"), "MODEL": str(tmp_path)}.get(a, a) for a in rest]
    result = no_traceback(cli("data", verb, str(path), *rest, timeout=HANG_GUARD))
    assert result.returncode == 2 and want in result.stderr, result.stderr
    assert not (tmp_path / "o.jsonl").exists()


# --- 16. messages with file:line instead of tracebacks ----------------------------------------------


def test_a_truncated_gz_is_an_error_at_file_and_line(cli, tmp_path):
    data = gzip.compress(b"".join(json.dumps(chat(i)).encode() + b"\n" for i in range(50_000)))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    for args in (
        ["lint", str(path)],
        ["convert", str(path), str(tmp_path / "o.jsonl"), "--to", "erniekit-sft"],
    ):
        result = no_traceback(cli("data", *args))
        assert result.returncode == 2 and "the gzip data ends early: the file is truncated" in result.stderr
        line = int(result.stderr.split(f"{path}:")[1].split(":")[0])
        assert 1 < line <= 50_000  # where it stopped, not line 1
    assert list(tmp_path.iterdir()) == [path]  # no output, no temp file


def test_a_record_nested_too_deeply_is_a_bad_record_not_a_crash(cli, tmp_path):
    deep = "[" * 5000 + "]" * 5000
    array = tmp_path / "deep.json"
    array.write_text(f'[{json.dumps(chat(1))},\n {{"messages": {deep}}},\n {json.dumps(chat(2))}]')
    jsonl = tmp_path / "deep.jsonl"
    jsonl.write_text(f'{json.dumps(chat(1))}\n{{"messages": {deep}}}\n')
    result = no_traceback(cli("data", "lint", str(array)))
    assert result.returncode == 1 and f"{array}:2: bad: nested too deeply" in result.stdout, result.stdout
    result = no_traceback(cli("data", "lint", str(jsonl)))
    assert result.returncode == 1 and f"{jsonl}:2: bad: invalid JSON" in result.stdout, result.stdout


def test_a_rejected_record_deeper_than_orjson_writes_is_kept_whole(tmp_path):
    """orjson reads 1024 levels but writes 255: re-encoding a rejected deep record crashed convert."""
    deep = {"messages": json.loads("[" * 600 + "]" * 600)}
    source = write_jsonl(tmp_path / "in.jsonl", [chat(1), deep])
    result = convert(source, tmp_path / "out.jsonl", "erniekit-sft", progress=False)
    assert (result.written, sum(result.rejected.values())) == (1, 1)
    (reject,) = (json.loads(line) for line in (tmp_path / "out.rejects.jsonl").read_text().splitlines())
    assert reject["line"] == 2 and reject["record"] == deep


# --- exact duplicates: one policy -------------------------------------------------------------------


def dupes_file(tmp_path: Path) -> Path:
    records = [chat(i) for i in range(40)]
    return write_jsonl(tmp_path / "all.jsonl", [*records, records[3], records[3], records[7]])


def test_lint_warns_about_duplicates_with_a_count(cli, tmp_path):
    path = dupes_file(tmp_path)
    result = no_traceback(cli("data", "lint", str(path)))
    assert result.returncode == 0, result.stdout
    assert "warning: 3 exact duplicate record(s) (the first: line 41 repeats line 4)" in result.stdout
    assert "--dedupe" in result.stdout and "43 record(s), 0 bad: ok" in result.stdout


def test_convert_counts_duplicates_and_dedupe_rejects_every_later_copy(cli, tmp_path):
    path = dupes_file(tmp_path)
    result = no_traceback(
        cli("data", "convert", str(path), str(tmp_path / "kept.jsonl"), "--to", "erniekit-sft")
    )
    assert "warning: 3 exact duplicate record(s)" in result.stdout and "43 of 43 written" in result.stdout
    deduped = convert(path, tmp_path / "once.jsonl", "erniekit-sft", progress=False, dedupe=True)
    assert (deduped.written, deduped.duplicates) == (40, 3)
    rejects = [json.loads(x) for x in (tmp_path / "once.rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in rejects] == [
        (41, "exact duplicate of line 4"),
        (42, "exact duplicate of line 4"),
        (43, "exact duplicate of line 8"),
    ]
    assert rejects[0]["record"] == chat(3)


@pytest.mark.parametrize("seed", range(8))
def test_split_never_puts_a_copy_of_an_eval_record_in_train(tmp_path, seed):
    path = dupes_file(tmp_path)
    copies = {json.dumps(chat(3)), json.dumps(chat(7))}
    r = split(path, 0.25, seed=seed)
    train, ev = r.train.read_text().splitlines(), r.eval.read_text().splitlines()
    assert not set(train) & set(ev)
    assert r.n_eval == len(ev) == 10  # a quarter of the 40 distinct records
    assert r.left_out == sum(2 if line == json.dumps(chat(3)) else 1 for line in ev if line in copies)
    assert len(train) + len(ev) + r.left_out == 43


# --- every other command that writes a file a user names ----------------------------------------------


def _checkpoint(directory: Path) -> Path:
    directory.mkdir()
    (directory / "config.json").write_text('{"architectures": ["Ernie4_5_ForCausalLM"], "hidden_size": 64}')
    (directory / "model.safetensors").write_bytes(b"\0weights")
    return directory


@pytest.mark.parametrize(
    "command", ["recipes new -o", "eval --write-examples", "push --dry-run CARD", "tiny-model"]
)
def test_no_command_writes_into_a_fifo(cli, tmp_path, command):
    """A plain open() of a FIFO blocks until a reader comes (a hang); a rename replaces it."""
    fifo = tmp_path / {"eval --write-examples": "text.jsonl"}.get(command, "out.yaml")
    os.mkfifo(fifo)
    args = {
        "recipes new -o": [
            "recipes",
            "new",
            "--model",
            "tiny",
            "--method",
            "sft",
            "-o",
            str(fifo),
            "--force",
        ],
        "eval --write-examples": ["eval", "--write-examples", str(tmp_path)],
        "push --dry-run CARD": ["push", str(_checkpoint(tmp_path / "ckpt")), "org/x", "--dry-run", str(fifo)],
        "tiny-model": ["tiny-model", str(fifo)],
    }[command]
    result = no_traceback(cli(*args, timeout=HANG_GUARD))
    want = "exists and is not a directory" if command == "tiny-model" else "not a regular file (a FIFO)"
    assert result.returncode == 2 and want in result.stderr, result.stderr
    assert fifo.is_fifo()


def test_a_card_or_report_never_replaces_an_input(cli, tmp_path):
    from ernie_ops.errors import UserError
    from ernie_ops.validate.report import write_report

    ckpt = _checkpoint(tmp_path / "ckpt")
    weights = (ckpt / "model.safetensors").read_bytes()
    result = no_traceback(cli("push", str(ckpt), "org/x", "--dry-run", str(ckpt / "model.safetensors")))
    assert result.returncode == 2 and "is the input" in result.stderr
    assert (ckpt / "model.safetensors").read_bytes() == weights
    suite = write_jsonl(tmp_path / "eval.md", [{"id": "1", "prompt": "q", "answer": "a"}])
    with pytest.raises(UserError, match="is the input"):
        write_report(tmp_path, "eval", "# report\n", "eval", inputs=[suite])
    assert json.loads(suite.read_text())["id"] == "1"
