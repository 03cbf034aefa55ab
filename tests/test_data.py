"""`ernie-ops data`: every format in and out, the bad-record corpus, ERNIEKit's own reader, split, preview."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from itertools import accumulate
from pathlib import Path

import pytest
import yaml

from ernie_ops.cli.main import main
from ernie_ops.data.convert import convert
from ernie_ops.data.formats import detect, parse
from ernie_ops.data.lint import TokenCounter, lint_file
from ernie_ops.data.split import split

HERE = Path(__file__).parent
GOOD = HERE / "data_good"
BAD = HERE / "data_bad"
BAD_EXPECTED = yaml.safe_load((BAD / "EXPECTED.yaml").read_text())
SFT_SOURCES = ["erniekit-sft", "alpaca", "messages", "sharegpt"]
DPO_SOURCES = ["erniekit-dpo", "preference"]


def lines_of(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.mark.parametrize("name", sorted(BAD_EXPECTED))
def test_bad_record_is_reported_with_its_line_and_reason(name, capsys):
    want = BAD_EXPECTED[name]
    assert main(["data", "lint", str(BAD / name)]) == 1
    out = capsys.readouterr().out
    flagged = re.findall(rf"^{re.escape(str(BAD / name))}:(\d+): bad: (.*)$", out, re.M)
    assert (str(want["line"]),) in [(line,) for line, _ in flagged], out
    assert any(want["contains"] in reason for line, reason in flagged if int(line) == want["line"]), out
    assert len(flagged) == 1, "only the broken record is flagged"


def test_every_bad_file_has_an_expectation():
    assert {p.name for p in BAD.glob("*.jsonl")} == set(BAD_EXPECTED)


@pytest.mark.parametrize("path", sorted(GOOD.iterdir()), ids=lambda p: p.name)
def test_good_files_lint_clean(path):
    result = lint_file(path, progress=False)
    assert (result.records, result.bad, result.duplicates) == (2, 0, 0), result.to_dict()
    assert result.format == path.name.split(".")[0].removesuffix("-array")


def test_max_bad_allows_a_fraction(capsys):
    path = str(BAD / "missing_field.jsonl")  # 1 bad of 2
    assert main(["data", "lint", path, "--max-bad", "0.4"]) == 1
    assert main(["data", "lint", path, "--max-bad", "0.5"]) == 0
    report = json.loads(_json_lint(capsys, path))
    assert report["files"][0]["reasons"] == {"missing field 'tgt'": 1}


def _json_lint(capsys, *args):
    capsys.readouterr()
    main(["data", "lint", *args, "--json", "--max-bad", "1"])
    return capsys.readouterr().out


@pytest.mark.parametrize("source", SFT_SOURCES)
def test_convert_to_erniekit_sft_keeps_the_conversation(source, tmp_path):
    out = tmp_path / "out.jsonl"
    result = convert(GOOD / f"{source}.jsonl", out, "erniekit-sft", progress=False)
    assert (result.records, result.written, dict(result.rejected)) == (2, 2, {})
    records = lines_of(out)
    for original, converted in zip(lines_of(GOOD / f"{source}.jsonl"), records, strict=True):
        before = parse(source, original)
        after = parse("erniekit-sft", converted)
        assert (after.system, after.users, after.assistants) == (
            before.system,
            before.users,
            before.assistants,
        )
        assert after.labels == before.labels
    assert not list(tmp_path.glob(".*")), "no temporary files left behind"
    assert not (tmp_path / "out.rejects.jsonl").exists()


@pytest.mark.parametrize("source", DPO_SOURCES)
def test_convert_to_erniekit_dpo_keeps_the_pair(source, tmp_path):
    out = tmp_path / "out.jsonl"
    result = convert(GOOD / f"{source}.jsonl", out, "erniekit-dpo", progress=False)
    assert result.written == 2
    for original, converted in zip(lines_of(GOOD / f"{source}.jsonl"), lines_of(out), strict=True):
        before, after = parse(source, original), parse("erniekit-dpo", converted)
        assert (after.chosen, after.rejected, after.users) == (before.chosen, before.rejected, before.users)


def test_json_array_and_gzip_inputs(tmp_path):
    assert (
        convert(GOOD / "messages-array.json", tmp_path / "a.jsonl", "erniekit-sft", progress=False).written
        == 2
    )
    assert (
        convert(GOOD / "alpaca.jsonl.gz", tmp_path / "b.jsonl", "erniekit-sft", progress=False).written == 2
    )


def test_what_erniekit_cannot_express_goes_to_the_reject_file_with_its_line(tmp_path):
    source = tmp_path / "in.jsonl"
    records = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
        {
            "messages": [
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "w"}}]},
            ]
        },
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": "x.png"}},
                    ],
                },
                {"role": "assistant", "content": "A cat."},
            ]
        },
        {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "Hello"}]},
    ]
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "out.jsonl"
    result = convert(source, out, "erniekit-sft", progress=False)
    assert (result.records, result.written, sum(result.rejected.values())) == (4, 1, 3)
    rejects = lines_of(tmp_path / "out.rejects.jsonl")
    assert [r["line"] for r in rejects] == [2, 3, 4]
    assert (
        "tool" in rejects[0]["reason"]
        and "image_url" in rejects[1]["reason"]
        and "empty" in rejects[2]["reason"]
    )
    assert rejects[0]["record"] == records[1]  # kept whole, nothing lost


def test_preference_cannot_become_sft_and_says_so(tmp_path):
    result = convert(GOOD / "preference.jsonl", tmp_path / "o.jsonl", "erniekit-sft", progress=False)
    assert result.written == 0 and "erniekit-dpo" in next(iter(result.rejected))


def test_convert_cli_refuses_to_overwrite_its_input(capsys):
    path = str(GOOD / "messages.jsonl")
    assert main(["data", "convert", path, path, "--to", "erniekit-sft"]) == 2
    assert "is the input" in capsys.readouterr().err


def test_detect_names_each_format():
    for path in GOOD.glob("*.jsonl"):
        assert detect(lines_of(path)[0]) == path.stem


@pytest.mark.slow
def test_converted_records_read_back_through_erniekit_s_own_reader(tmp_path, tiny_dense):
    """ERNIEKit's reader (process_example) and tokenizer see the same conversation we converted."""
    from ernie.dataset.finetuning import process_example
    from ernie.tokenizer import Ernie4_5_Tokenizer

    tok = Ernie4_5_Tokenizer.from_pretrained(str(tiny_dense))
    for source in ("messages", "sharegpt", "alpaca"):
        out = tmp_path / f"{source}.jsonl"
        convert(GOOD / f"{source}.jsonl", out, "erniekit-sft", progress=False)
        for original, line in zip(
            lines_of(GOOD / f"{source}.jsonl"), out.read_text().splitlines(), strict=True
        ):
            example = process_example(json.loads(line), str(out))
            expected = parse(source, original)
            want = ([{"role": "system", "content": expected.system}] if expected.system else []) + [
                m
                for u, a in zip(expected.users, expected.assistants, strict=True)
                for m in ({"role": "user", "content": u}, {"role": "assistant", "content": a})
            ]
            assert example.request["messages"] == want
            assert example.label == (expected.labels or [1] * len(expected.users))
            assert len(tok.encode_chat_inputs(example.request)) == len(expected.users)


@pytest.mark.slow
def test_erniekit_trains_on_converted_messages(tmp_path, tiny_dense, repo):
    data = tmp_path / "chat.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"Count to {i}"},
                        {"role": "assistant", "content": " ".join(map(str, range(1, i + 2)))},
                    ]
                }
            )
            + "\n"
            for i in range(16)
        )
    )
    train = tmp_path / "train.jsonl"
    assert main(["data", "convert", str(data), str(train), "--to", "erniekit-sft"]) == 0
    cmd = [
        sys.executable,
        "-m",
        "erniekit.launcher",
        "train",
        "recipes/tiny/sft_cpu.yaml",
        f"model_name_or_path={tiny_dense}",
        f"train_dataset_path={train}",
        f"eval_dataset_path={train}",
        f"output_dir={tmp_path / 'out'}",
        "max_steps=2",
    ]
    result = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-2000:]
    assert "SKIP" not in log
    losses = [float(x) for x in re.findall(r"\bloss: ([-+\w.]+), learning_rate", log)]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)


def test_split_is_exact_deterministic_and_complete(tmp_path):
    source = tmp_path / "all.jsonl"
    source.write_text("".join(json.dumps({"src": [f"q{i}"], "tgt": [f"a{i}"]}) + "\n" for i in range(200)))
    r = split(source, 0.05, seed=0)
    train, ev = r.train, r.eval
    assert (r.n_train, r.n_eval, r.left_out) == (190, 10, 0)
    first = (train.read_text(), ev.read_text())
    split(source, 0.05, seed=0)
    assert (train.read_text(), ev.read_text()) == first
    assert sorted(first[0].splitlines() + first[1].splitlines()) == sorted(source.read_text().splitlines())
    split(source, 0.05, seed=1)
    assert ev.read_text() != first[1]


def test_split_refuses_what_it_cannot_split(tmp_path, capsys):
    one = tmp_path / "one.jsonl"
    one.write_text('{"src": ["q"], "tgt": ["a"]}\n')
    assert main(["data", "split", str(one)]) == 2
    assert "cannot be split" in capsys.readouterr().err


def test_lint_with_the_tokenizer_counts_what_erniekit_drops(tiny_dense, tmp_path, capsys):
    path = GOOD / "erniekit-sft.jsonl"
    counter = TokenCounter(tiny_dense, max_seq_len=4096)
    result = lint_file(path, tokens=counter, progress=False)
    stats = result.tokens.summary()
    assert stats["records"] == 2 and stats["dropped"] == 0 and 0 < stats["min"] <= stats["max"]
    small = lint_file(path, tokens=TokenCounter(tiny_dense, max_seq_len=12), progress=False)
    assert small.tokens.dropped == 2 and small.bad == 2
    png = tmp_path / "h.png"
    assert main(["data", "lint", str(path), "--tokenizer", str(tiny_dense), "--histogram", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "median" in capsys.readouterr().out


def test_preview_marks_exactly_the_trained_turns(tiny_dense, capsys):
    assert (
        main(
            [
                "data",
                "preview",
                str(GOOD / "erniekit-sft.jsonl"),
                "--tokenizer",
                str(tiny_dense),
                "--color",
                "never",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "[[Hello!<|end_of_sentence|>]]" in out
    assert "User: 2+2?" in out and "[[4" not in out  # label 0: not trained on
    assert "[[6<|end_of_sentence|>]]" in out


def test_check_lints_the_recipe_datasets(repo, monkeypatch, capsys):
    monkeypatch.chdir(repo)
    recipe = str(HERE / "broken_recipes" / "valid_base.yaml")
    bad = str(BAD / "missing_field.jsonl")
    assert main(["check", recipe, f"train_dataset_path={bad}", "--format", "json"]) == 1
    problems = json.loads(capsys.readouterr().out)["problems"]
    assert any(
        "1 of 2 records are bad" in p["message"] and "missing_field.jsonl:2" in p["message"] for p in problems
    )
    assert main(["check", recipe, f"train_dataset_path={bad}", "--no-data-lint"]) == 0


@pytest.mark.parametrize("fmt", ["messages", "sharegpt", "erniekit-sft", "alpaca"])
def test_fast_path_accepts_exactly_what_the_precise_path_accepts(fmt):
    from ernie_ops.data.fast import FAST, maybe_control
    from ernie_ops.data.formats import Bad, Unsupported, control_character

    raws = [
        raw
        for path in (GOOD / f"{fmt}.jsonl", *sorted(BAD.glob("*.jsonl")))
        for raw in path.read_bytes().splitlines()
    ]
    user, bot = {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}
    edge_cases = [  # what the corpus does not spell out
        {"messages": [user, {**bot, "weight": 2}]},
        {"messages": [user, {**bot, "name": "x"}]},
        {"messages": [{**user, "content": "a\u0007"}, bot]},
        {
            "conversations": [
                {"from": "system", "value": "s"},
                {"from": "human", "value": "a"},
                {"from": "gpt", "value": " "},
            ]
        },
        {"src": "a", "tgt": "b", "system": 3},
        {"instruction": "a", "input": 5, "output": "b"},
    ]
    raws += [json.dumps(r).encode() for r in edge_cases]
    for raw in raws:
        fast = None if maybe_control(raw) else FAST[fmt](raw)  # as parsed_items consults it
        try:
            value = json.loads(raw)
            precise = parse(fmt, value)
            accepted = control_character(raw, value) is None
        except (ValueError, Bad, Unsupported):
            precise, accepted = None, False
        if fast is not None:
            assert accepted and fast == precise, raw


@pytest.mark.parametrize("action", [["lint"], ["convert", "--to", "erniekit-sft"]])
def test_a_missing_input_is_a_clear_error(action, cli, tmp_path):
    args = [
        action[0],
        str(tmp_path / "nope.jsonl"),
        *([str(tmp_path / "out.jsonl")] if action[0] == "convert" else []),
    ]
    result = cli("data", *args, *action[1:])
    assert result.returncode == 2 and "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_a_gz_name_on_plain_text_is_a_clear_error_and_alike_reasons_count_together(cli, tmp_path):
    (tmp_path / "plain.jsonl.gz").write_text('{"src": "a", "tgt": "b"}\n')
    result = cli("data", "lint", str(tmp_path / "plain.jsonl.gz"))
    assert result.returncode == 2 and "named .gz but not gzip-compressed" in result.stderr
    assert "Traceback" not in result.stderr
    (tmp_path / "bad.jsonl").write_bytes(b'{"src": "\xff"}\n{"src": "a\xc3"}\n')
    result = cli("data", "lint", str(tmp_path / "bad.jsonl"))
    assert "2 x not UTF-8 (byte 0x.. at column N)" in result.stdout


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13, 64])
def test_blocks_hold_every_line_whole_and_numbered(size, tmp_path):
    """Lines longer than a block, blank lines, a block ending right at a newline, an unterminated
    last line: the blocks' lines are the file's lines, each numbered by its place in the file."""
    from ernie_ops.data.read import read_chunks

    data = b'{"a": 1}\n\n' + b"x" * 40 + b"\n\n\n" + b"\n".join(b"%d" % i for i in range(30)) + b"\nend"
    (tmp_path / "f.jsonl").write_bytes(data)
    chunks = list(read_chunks(tmp_path / "f.jsonl", size))
    assert [line for c in chunks for line in c.lines] == data.split(b"\n")
    assert [c.first for c in chunks] == list(accumulate([1] + [len(c.lines) for c in chunks[:-1]]))
    assert all(c.lines for c in chunks)


def test_a_control_character_cut_by_a_block_end_is_still_found(tmp_path, monkeypatch):
    import functools

    from ernie_ops.data import lint, read

    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a\u0001b"}]
    record = json.dumps({"messages": turns})  # the control character escaped: \u0001
    cut = record.index("\\u0001") + 3  # the block ends inside the escape
    source = tmp_path / "cut.jsonl"
    source.write_text(record + "\n")
    monkeypatch.setattr(lint, "read_chunks", functools.partial(read.read_chunks, size=cut))
    reported: list[str] = []
    lint_file(source, "messages", report=lambda _p, _line, why: reported.append(why), progress=False)
    assert len(reported) == 1 and "control character U+0001" in reported[0]


def test_block_fast_path_reports_what_record_by_record_reading_does(tmp_path):
    """Thousands of good records (many 64 KB blocks) with bad ones at known lines: every block that
    holds one falls back to record-by-record reading, and lines stay exact across blocks."""

    def chat(i: int, answer: str = "fine") -> str:
        turns = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": f"question {i} " + "x" * 200},
            {"role": "assistant", "content": answer},
        ]
        return json.dumps({"messages": turns})

    bad = {  # line -> (text, part of the reason)
        500: ('{"messages": [', "invalid JSON"),
        900: (chat(900, answer="  \u3000"), "is empty"),
        1500: (chat(1500, answer="a\u001bb"), "control character U+001B"),
        2100: (chat(5), "duplicate of line 5"),
        2500: ('{"messages": [{"role": "assistant", "content": "a"}]}', "roles out of order"),
        2999: (chat(7), "duplicate of line 7"),  # the unterminated last line
    }
    lines = [bad[n][0] if n in bad else chat(n) for n in range(1, 3000)]
    lines[1199] = "  "  # blank lines are skipped, not counted, and do not shift line numbers
    source = tmp_path / "mixed.jsonl"
    source.write_text("\n".join(lines))
    reported: list[tuple[int, str]] = []
    result = lint_file(source, report=lambda _p, line, why: reported.append((line, why)), progress=False)
    # duplicates are a warning, not bad records
    assert (result.records, result.bad, result.duplicates, result.first_duplicate) == (2998, 4, 2, (2100, 5))
    assert [line for line, _ in reported] == [500, 900, 1500, 2500]
    for line, why in reported:
        assert bad[line][1] in why, (line, why)
    converted = convert(source, tmp_path / "out.jsonl", "erniekit-sft", progress=False)
    assert (converted.records, converted.written) == (2998, 2994)
    rejects = lines_of(tmp_path / "out.rejects.jsonl")
    assert [r["line"] for r in rejects] == [500, 900, 1500, 2500]
    assert rejects[0]["record"] == '{"messages": ['


def test_fast_block_check_agrees_with_the_record_by_record_check():
    from ernie_ops.data.fast import FAST_FORMATS

    user, bot = {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}
    good = {"messages": [user, bot]}
    odd = [
        {"messages": []},
        {"messages": [{"role": "system", "content": "s"}]},
        {"messages": [user, bot], "tools": [{"type": "function"}]},
        {"messages": [user, {**bot, "weight": 0}, user, bot]},  # good, with labels
        {"messages": [user, bot] * 70},  # longer than the precomputed shapes
        {"messages": [user, {**bot, "content": " "}]},
        {"messages": [{**user, "weight": 0}, bot]},  # a user's weight is ignored
        {"messages": [{"role": "system", "content": "s"}, user, {**bot, "weight": 0}]},
    ]
    messages = FAST_FORMATS["messages"]
    for record in odd:
        raws = [json.dumps(good).encode(), json.dumps(record).encode()]
        one = [messages.one(raw) for raw in raws]
        block = messages.block(raws, build=True)
        assert block == (one if None not in one else None), record
        if one[1] is not None:
            assert one[1] == parse("messages", record), record


@pytest.mark.parametrize("source", SFT_SOURCES)
def test_a_conversation_encodes_as_its_erniekit_sft_line(source):
    """convert writes blocks of Conversations with one msgspec call: the same records as
    to_erniekit_sft, key order included."""
    import msgspec

    from ernie_ops.data.formats import to_erniekit_sft

    for record in lines_of(GOOD / f"{source}.jsonl"):
        parsed = parse(source, record)
        assert parsed.system is None or parsed.system  # never "": omitted exactly when absent
        encoded = msgspec.json.encode(parsed)
        assert list(json.loads(encoded).items()) == list(to_erniekit_sft(parsed).items())
