"""Personal data in `data convert --mask` (the output and the reject file) and `data preview` (masked
unless --no-mask)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from ernie_ops.cli.main import main

PII = Path(__file__).parent / "pii"
sys.path.insert(0, str(PII))
import generate  # noqa: E402  (tests/pii/generate.py)


def _planted(records: list[dict]) -> list[str]:
    return [r["messages"][i]["content"][a:b] for r in records for i, a, b, _ in r["spans"]]


def _chats(tmp_path: Path, records: list[dict]) -> Path:
    source = tmp_path / "chats.jsonl"
    lines = [json.dumps({"messages": r["messages"]}, ensure_ascii=False) for r in records]
    # a record ERNIEKit's format cannot hold (a tool call): it goes to the reject file, whole
    bad = {"role": "assistant", "content": "mail anna.schmidt@example.de", "tool_calls": [{"id": "1"}]}
    lines.append(json.dumps({"messages": [{"role": "user", "content": "hi"}, bad]}))
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return source


def _sft_records(n: int) -> list[dict]:
    """Generated chats cut to user/assistant pairs (what erniekit-sft holds)."""
    out = []
    for r in generate.generate(n, 77):
        k = len(r["messages"]) // 2 * 2
        out.append({"messages": r["messages"][:k], "spans": [s for s in r["spans"] if s[0] < k]})
    return out


def test_convert_mask_leaves_no_planted_value_in_the_output_or_the_rejects(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    records = _sft_records(60)
    source = _chats(tmp_path, records)
    out = tmp_path / "train.jsonl"
    assert main(["data", "convert", str(source), str(out), "--to", "erniekit-sft", "--mask", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    written = out.read_text(encoding="utf-8")
    rejects = (tmp_path / "train.rejects.jsonl").read_text(encoding="utf-8")
    planted = _planted(records)
    assert planted and not [v for v in planted if v in written]
    assert "anna.schmidt@example.de" not in rejects and "<EMAIL_1>" in rejects
    assert json.loads(rejects)["line"] == len(records) + 1  # the reject record keeps its shape
    assert summary["written"] == len(records) and summary["masked"]["strategy"] == "placeholder"
    assert summary["masked"]["found"]["EMAIL"] >= 1
    first = json.loads(written.splitlines()[0])
    assert len(first["src"]) == len(first["tgt"]) == len(records[0]["messages"]) // 2

    # without --mask the data is converted as it is (convert transforms formats; masking is asked for)
    plain = tmp_path / "plain.jsonl"
    assert main(["data", "convert", str(source), str(plain), "--to", "erniekit-sft", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["masked"] is None
    assert all(v in plain.read_text(encoding="utf-8") for v in planted)


def test_convert_mask_hash_needs_a_salt_and_salt_options_need_mask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    source = _chats(tmp_path, _sft_records(3))
    out = tmp_path / "train.jsonl"
    monkeypatch.delenv("ERNIE_OPS_PII_SALT", raising=False)
    assert main(["data", "convert", str(source), str(out), "--to", "erniekit-sft", "--mask", "hash"]) != 0
    assert "salt" in capsys.readouterr().err and not out.exists()
    salt = tmp_path / "salt"
    salt.write_text("a-long-secret-salt-for-tests\n")
    args = ["data", "convert", str(source), str(out), "--to", "erniekit-sft", "--salt-file", str(salt)]
    assert main(args) != 0
    assert "--mask" in capsys.readouterr().err
    assert main([*args, "--mask", "hash"]) == 0
    assert "<EMAIL_" in out.read_text() and "a-long-secret" not in out.read_text()


def test_the_cli_s_strategies_are_the_masker_s() -> None:
    from ernie_ops.cli.data import STRATEGIES
    from ernie_ops.privacy import STRATEGIES as MASKER_STRATEGIES

    assert STRATEGIES == MASKER_STRATEGIES


def test_preview_masks_personal_data_unless_told_not_to(
    tiny_dense: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    source = tmp_path / "train.jsonl"
    record = {"src": ["Meine E-Mail ist anna.schmidt@example.de"], "tgt": ["Danke, anna.schmidt@example.de!"]}
    source.write_text(json.dumps(record) + "\n")
    args = ["data", "preview", str(source), "--tokenizer", str(tiny_dense), "--color", "never"]
    monkeypatch.delenv("ERNIE_OPS_NO_MASK", raising=False)
    assert main(args) == 0
    masked = capsys.readouterr().out
    assert "anna.schmidt@example.de" not in masked
    assert "Meine E-Mail ist <EMAIL_1>" in masked and "[[Danke, <EMAIL_1>!" in masked
    assert main([*args, "--no-mask"]) == 0
    shown = capsys.readouterr().out
    assert "anna.schmidt@example.de" in shown and "NOT masked" in shown
    # the token counts are the record's own, masked or not
    assert masked.splitlines()[3].split("(")[1] == shown.splitlines()[3].split("(")[1]
    monkeypatch.setenv("ERNIE_OPS_NO_MASK", "1")
    assert main(args) == 0
    assert "anna.schmidt@example.de" in capsys.readouterr().out


def test_mask_with_worker_processes_writes_the_same_file(
    tmp_path: Path, capsys: pytest.CaptureFixture, cli
) -> None:
    from ernie_ops.data.mask import mask_file
    from ernie_ops.data.read import CHUNK
    from ernie_ops.privacy import default_masker

    records = generate.generate(200, 5)
    plain = json.dumps({"messages": [{"role": "user", "content": "nothing to see, 2024-05-17. " * 12}]})
    lines = [plain] * 50
    for i, r in enumerate(records):
        lines += [json.dumps({"messages": r["messages"]}, ensure_ascii=False), *[plain] * (i % 9), ""]
    lines.insert(7, "not json: anna@example.de")
    source = tmp_path / "chats.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert source.stat().st_size > 3 * CHUNK  # several blocks to share out
    one, three = tmp_path / "one.jsonl", tmp_path / "three.jsonl"
    first = mask_file(source, one, default_masker(), progress=False, jobs=1)
    second = mask_file(source, three, default_masker(), progress=False, jobs=3)
    assert one.read_bytes() == three.read_bytes()
    assert first.to_dict() | {"output": None} == second.to_dict() | {"output": None}
    assert first.with_pii == sum(1 for r in records if r["spans"]) + 1 and first.not_json == 1
    assert main(["data", "mask", str(source), str(tmp_path / "x.jsonl"), "--jobs", "0"]) != 0
    assert "--jobs must be 1 or more" in capsys.readouterr().err
    # the command as users run it: the workers end quietly (no traceback from the CLI's handlers)
    done = cli("data", "mask", str(source), str(tmp_path / "cli.jsonl"), "--jobs", "2")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert (tmp_path / "cli.jsonl").read_bytes() == one.read_bytes()


def test_lint_reasons_never_quote_free_text_from_a_record(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    source = tmp_path / "chats.jsonl"
    rows = [
        {"messages": [{"role": "anna.schmidt@example.de", "content": "hi"}]},
        {"messages": [{"role": 4917012345678, "content": "hi"}]},
        {"messages": [{"role": "human2", "content": "hi"}]},
    ]
    source.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    main(["data", "lint", str(source)])
    out = capsys.readouterr().out
    assert "anna.schmidt" not in out and "4917012345678" not in out
    assert "role (a 23-character text) is not user" in out and "role 'human2' is not user" in out
