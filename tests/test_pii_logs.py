"""Personal data in the train log: ERNIEKit logs the examples it skips whole ("[SKIP] wrong example:
..."), so every line written to logs/train.log, kept in the failure tail or echoed is masked unless
masking is off for the run; metrics are read from the lines as written."""

from __future__ import annotations

import json
import queue
import sys
from pathlib import Path

import pytest

from ernie_ops.supervise import Pump
from ernie_ops.train.follow import Follower, supervise

SKIP_LINE = "[SKIP] wrong example: Example(src=['Meine Mail: anna.schmidt@example.de'], tgt=['ok'])"
SCRIPT = f"""
import sys
print({SKIP_LINE!r})
print("loss: 2.5, learning_rate: 1e-05, global_step: 1, interval_samples_per_second: 12.3456789")
print("Ruf mich an: +49 30 1234567")
sys.exit(3)
"""


def _run(tmp_path: Path) -> tuple[Follower, str, str]:
    follower = Follower(tmp_path / "metrics.jsonl", tmp_path / "train.log", max_steps=1)
    outcome = supervise([sys.executable, "-c", SCRIPT], {}, follower, stall_seconds=60)
    assert outcome.status == "failed" and outcome.last_step == 1
    return follower, (tmp_path / "train.log").read_text(), "\n".join(outcome.tail)


def test_the_train_log_and_the_tail_are_masked_and_the_metrics_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ERNIE_OPS_NO_MASK", raising=False)
    _, log, tail = _run(tmp_path)
    for text in (log, tail):
        assert "anna.schmidt@example.de" not in text and "+49 30 1234567" not in text
        assert "[SKIP] wrong example: Example(src=['Meine Mail: <EMAIL_1>']" in text
        assert "Ruf mich an: <PHONE_1>" in text
    assert log.startswith("# ernie-ops: personal data in ERNIEKit's output is masked")
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["loss"] == 2.5 and metrics[0]["interval_samples_per_second"] == 12.3456789
    assert "interval_samples_per_second: 12.3456789" in log  # numbers that are not personal data stay


def test_with_masking_off_the_log_keeps_the_lines_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ERNIE_OPS_NO_MASK", "1")
    follower, log, tail = _run(tmp_path)
    assert follower.mask is None
    assert "anna.schmidt@example.de" in log and "anna.schmidt@example.de" in tail
    assert log.startswith("# ernie-ops: personal data in this log is NOT masked")


def test_a_line_the_transform_fails_on_is_withheld_and_the_pump_keeps_draining(tmp_path: Path) -> None:
    def transform(line: str) -> str:
        if "secret" in line:
            raise RuntimeError("boom")
        return line.upper()

    source = tmp_path / "out.txt"
    source.write_text("one\nsecret anna@example.de\ntwo\n")
    lines: queue.Queue = queue.Queue()
    with source.open() as stream, (tmp_path / "log").open("w") as log:
        pump = Pump(stream, log, lines, transform).start()
        pump.join(timeout=10)
    written = (tmp_path / "log").read_text().splitlines()
    assert written == ["ONE", "[ernie-ops: line withheld, masking it failed: RuntimeError]", "TWO"]
    handed_on = [lines.get_nowait() for _ in range(4)]
    assert handed_on == ["one\n", "secret anna@example.de\n", "two\n", None]  # the child's own lines


def test_the_logs_gpu_workers_write_themselves_are_masked_once_they_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ERNIE_OPS_NO_MASK", raising=False)
    logs = tmp_path / "logs"
    logs.mkdir()
    worker = f"open({str(logs / 'workerlog.0')!r}, 'w').write({SKIP_LINE!r} + '\\nstep 1\\n')"
    follower = Follower(tmp_path / "metrics.jsonl", logs / "train.log", max_steps=1)
    supervise([sys.executable, "-c", worker], {}, follower, stall_seconds=60)
    assert (logs / "workerlog.0").read_text().splitlines() == [
        "[SKIP] wrong example: Example(src=['Meine Mail: <EMAIL_1>'], tgt=['ok'])",
        "step 1",
    ]
    assert not [p.name for p in logs.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_train_no_mask_turns_masking_off_for_that_run_only(monkeypatch, repo) -> None:
    import ernie_ops.train.run as train_run
    from ernie_ops.cli.main import main
    from ernie_ops.privacy import masking_on

    monkeypatch.delenv("ERNIE_OPS_NO_MASK", raising=False)
    seen = []
    monkeypatch.setattr(train_run, "train", lambda options: (seen.append(masking_on()), (None, None))[1])
    recipe = str(repo / "recipes" / "tiny" / "sft_cpu.yaml")
    assert main(["train", recipe, "--no-mask"]) == 0
    assert main(["train", recipe]) == 0
    assert seen == [False, True] and masking_on()  # off while that run trained, on again after
