"""The eval suite loader (every problem, with its line) and the example suites."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from ernie_ops.errors import UserError
from ernie_ops.validate.examples import example_suites, reference_answers, write_example_suites
from ernie_ops.validate.judges import flatten, parse_number, score, summarize
from ernie_ops.validate.suite import Suite, SuiteItem, load_suite

PNG = b"\x89PNG\r\n\x1a\n fake but enough"
GOOD = {"prompt": "What is 2 + 2?", "expected": 4}


def write(tmp_path: Path, *lines: object, name: str = "suite.jsonl") -> Path:
    path = tmp_path / name
    text = (line if isinstance(line, str) else json.dumps(line) for line in lines)
    path.write_text("".join(f"{t}\n" for t in text), encoding="utf-8")
    return path


def problems(path: Path, default_judge: str = "exact") -> str:
    with pytest.raises(UserError) as err:
        load_suite(path, default_judge)
    return str(err.value)


def test_load_a_good_suite(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(PNG)
    path = write(
        tmp_path,
        GOOD,
        {"id": "pick", "prompt": "Sky?", "judge": "choice", "choices": ["red", "blue"], "expected": "B"},
        {
            "id": "vl",
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Read the chart."},
            ],
            "system": "Be brief.",
            "image": ["img/a.png", "img/a.png"],
            "expected": "42",
            "tolerance": 0.02,
            "max_tokens": 16,
            "tags": ["chart"],
        },
        "",  # blank lines are skipped
        {
            "prompt": "p",
            "judge": "iou",
            "expected": [{"label": "x", "bbox": [0, 0, 1, 1]}],
            "iou_threshold": 0.3,
        },
        {"prompt": "p", "judge": "json"},
        {"prompt": "p", "judge": "regex", "expected": "a+", "fullmatch": True},
        {"prompt": "p", "judge": "f1", "expected": {"a": 1}},
        name="mine.v1.jsonl",
    )
    suite = load_suite(path)
    assert isinstance(suite, Suite) and suite.name == "mine.v1" and suite.path == path
    assert [i.id for i in suite.items] == ["line-1", "pick", "vl", "line-5", "line-6", "line-7", "line-8"]
    assert [i.line for i in suite.items] == [1, 2, 3, 5, 6, 7, 8]
    vl = suite.items[2]
    assert (vl.tolerance, vl.max_tokens, vl.tags, vl.images) == (
        0.02,
        16,
        ("chart",),
        (tmp_path / "img/a.png",) * 2,
    )
    assert suite.items[3].iou_threshold == 0.3 and suite.items[5].fullmatch


def test_judge_precedence_item_field_wins_over_the_default(tmp_path):
    path = write(
        tmp_path, {"prompt": "p", "expected": "4"}, {"prompt": "p", "expected": "x+", "judge": "regex"}
    )
    assert [i.judge for i in load_suite(path).items] == ["exact", "regex"]
    assert [i.judge for i in load_suite(path, "regex").items] == ["regex", "regex"]
    # the default also decides which `expected` shape is checked
    report = problems(path, "f1")
    assert (
        f"{path}:1: `expected` is '4'; expected a non-empty JSON object" in report
        and f"{path}:2" not in report
    )
    with pytest.raises(UserError, match="unknown default judge 'exat'") as err:
        load_suite(path, "exat")
    assert "did you mean 'exact'?" in str(err.value)


def test_box_space_item_field_wins_over_the_default_and_reads_the_image_size(tmp_path):
    from PIL import Image

    Image.new("RGB", (320, 240)).save(tmp_path / "shapes.png")
    box = {"prompt": "Where?", "image": "shapes.png", "judge": "iou", "expected": []}
    path = write(tmp_path, box, box | {"box_space": "pixels"}, box | {"box_space": "norm1"}, GOOD)
    items = load_suite(path, box_space="norm1000").items
    assert [(i.box_space, i.image_size) for i in items] == [
        ("norm1000", (320, 240)),
        ("pixels", None),
        ("norm1", (320, 240)),
        ("pixels", None),  # not an iou item: the default does not apply
    ]
    assert [i.box_space for i in load_suite(path).items] == ["pixels", "pixels", "norm1", "pixels"]
    # the default applied to an iou item without an image is a problem of that item's line
    path = write(tmp_path, box | {"image": None} | {"expected": []}, name="noimage.jsonl")
    path.write_text(json.dumps({"prompt": "Where?", "judge": "iou", "expected": []}) + "\n")
    with pytest.raises(UserError, match=r":1: box_space norm1000 \(--box-space\) scales the answer"):
        load_suite(path, box_space="norm1000")


def test_request_messages_text_only_keeps_string_content():
    item = SuiteItem(id="a", prompt="What is 2 + 2?", system="Be brief.")
    assert item.request_messages() == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 2?"},
    ]
    assert item.request_body(64, temperature=0) == {
        "messages": item.request_messages(),
        "max_tokens": 64,
        "temperature": 0,
    }
    assert SuiteItem(id="b", prompt="p", max_tokens=8).request_body(64)["max_tokens"] == 8


def test_request_messages_choices_and_images(tmp_path):
    (tmp_path / "a.png").write_bytes(PNG)
    (tmp_path / "b.jpg").write_bytes(b"jpeg bytes")
    path = write(
        tmp_path,
        {
            "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Which?"}],
            "image": ["a.png", "b.jpg"],
            "choices": ["red", "blue"],
            "judge": "choice",
            "expected": "blue",
        },
    )
    item = load_suite(path).items[0]
    messages = item.request_messages()
    assert messages[0] == {"role": "system", "content": "S"}
    parts = messages[1]["content"]
    assert [p["type"] for p in parts] == ["image_url", "image_url", "text"]
    assert parts[2]["text"] == "Which?\n\nA. red\nB. blue"
    png_url, jpg_url = (p["image_url"]["url"] for p in parts[:2])
    assert png_url == "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert jpg_url.startswith("data:image/jpeg;base64,")
    assert item.messages is not None and item.messages[1]["content"] == "Which?"  # not mutated
    assert item.request_messages() == messages


BAD_LINES = [
    ('{"prompt": "x", "expected": 1', "invalid JSON"),
    ("[1, 2]", "a JSON list; expected a JSON object"),
    ({"expected": 1}, "no prompt or messages"),
    (
        {"prompt": "p", "messages": [{"role": "user", "content": "p"}], "expected": 1},
        "both prompt and messages",
    ),
    ({"prompt": "", "expected": 1}, "prompt is ''; expected a non-empty string"),
    ({"messages": [], "expected": 1}, "messages is []"),
    ({"messages": [{"role": "bot", "content": "x"}], "expected": 1}, "messages[0] has no valid role"),
    ({"messages": [{"role": "user", "content": 3}], "expected": 1}, "messages[0].content is 3"),
    (
        {
            "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
            "expected": 1,
        },
        "the last message is from the assistant",
    ),
    (
        {
            "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
            "system": "t",
            "expected": 1,
        },
        "system given twice",
    ),
    ({"prompt": "p", "system": 1, "expected": 1}, "system is 1; expected a string"),
    ({"prompt": "p", "expected": 1, "judge": "exat"}, "unknown judge 'exat'; expected one of exact, f1, iou"),
    ({"prompt": "p", "expected": 1, "judge": ["exact"]}, "unknown judge ['exact']"),
    ({"prompt": "p", "expected": 1, "promt": "x"}, "unknown field 'promt'; expected one of id, prompt"),
    ({"prompt": "p", "expected": 1, "zzz": 1}, "unknown field 'zzz'"),
    ({"prompt": "p", "expected": 1, "id": 7}, "id is 7; expected a non-empty string"),
    ({"prompt": "p", "expected": 1, "tags": "chart"}, "tags is 'chart'; expected a list of strings"),
    ({"prompt": "p", "expected": 1, "max_tokens": 0}, "max_tokens is 0; expected a positive integer"),
    ({"prompt": "p", "expected": 1, "max_tokens": True}, "max_tokens is True"),
    ({"prompt": "p", "expected": 1, "tolerance": 2}, "tolerance is 2; expected a relative tolerance"),
    ({"prompt": "p", "expected": 1, "iou_threshold": 0.5}, "iou_threshold is read only by the iou judge"),
    ({"prompt": "p", "expected": "a", "judge": "regex", "fullmatch": "yes"}, "fullmatch is 'yes'"),
    ({"prompt": "p"}, "no expected answer for the exact judge"),
    ({"prompt": "p", "expected": None}, "`expected` is None; expected a string or number"),
    ({"prompt": "p", "expected": True}, "`expected` is True"),
    ({"prompt": "p", "expected": {"a": 1}, "judge": "f1"} | {"expected": {}}, "`expected` is {}"),
    ({"prompt": "p", "expected": [{"label": "a", "bbox": [0, 0, 1]}], "judge": "iou"}, "`expected`[0] is"),
    (
        {"prompt": "p", "expected": [{"label": "a", "bbox": [5, 0, 1, 1]}], "judge": "iou"},
        'expected a list of {"label": str, "bbox": [x1, y1, x2, y2]}',
    ),
    ({"prompt": "p", "expected": {"label": "a", "bbox": [0, 0, 1, 1]}, "judge": "iou"}, "`expected` is {"),
    (
        {"prompt": "p", "expected": {"required": "a"}, "judge": "json"},
        "`expected`.required is not a valid JSON Schema: 'a' is not of type",
    ),
    ({"prompt": "p", "expected": {"type": "str"}, "judge": "json"}, "(a type is one of string, number"),
    (
        {"prompt": "p", "expected": {"properties": {"a": "int"}}, "judge": "json"},
        "`expected`.properties.a.type is not a valid JSON Schema",
    ),
    (
        {"prompt": "p", "expected": {"requires": []}, "judge": "json"},
        "`expected` has 'requires', not a JSON Schema keyword; did you mean 'required'",
    ),
    ({"prompt": "p", "expected": "(", "judge": "regex"}, "`expected` is not a valid regex"),
    ({"prompt": "p", "expected": "A", "judge": "choice"}, "no choices; expected a list of 2 to 26"),
    ({"prompt": "p", "expected": "A", "judge": "choice", "choices": ["x"]}, "choices is ['x']"),
    ({"prompt": "p", "expected": "E", "judge": "choice", "choices": ["x", "y"]}, "which names no option"),
    ({"prompt": "p", "expected": 1, "choices": ["x", "y"]}, "choices is read only by the choice judge"),
    ({"prompt": "p", "expected": 1, "image": "nope.png"}, "image file 'nope.png' not found"),
    ({"prompt": "p", "expected": 1, "image": "a.gif"}, "image 'a.gif' is not a PNG or JPEG"),
    ({"prompt": "p", "expected": 1, "image": []}, "image is []; expected a path or a list of paths"),
    ({"id": "line-1", "prompt": "p", "expected": 1}, "id 'line-1' is already used on line 1"),
    (
        {"prompt": "p", "expected": [], "judge": "iou", "box_space": "norm100"},
        "box_space is 'norm100'; expected one of pixels, norm1000, norm1; did you mean 'norm1000'?",
    ),
    ({"prompt": "p", "expected": 1, "box_space": "norm1"}, "box_space is read only by the iou judge"),
    ({"prompt": "p", "expected": [], "judge": "iou", "box_space": [1]}, "box_space is [1]; expected one"),
    (
        {"prompt": "p", "expected": [], "judge": "iou", "box_space": "norm1000"},
        "box_space norm1000 scales the answer to the item's image, and it has none",
    ),
    (
        {"prompt": "p", "expected": [], "judge": "iou", "box_space": "norm1", "image": "fake.png"},
        "cannot read the size of fake.png",
    ),
]


@pytest.mark.parametrize(("line", "message"), BAD_LINES, ids=[m for _, m in BAD_LINES])
def test_each_problem_is_reported_with_its_line(tmp_path, line, message):
    (tmp_path / "fake.png").write_bytes(PNG)
    path = write(tmp_path, GOOD, "", line)
    report = problems(path)
    assert f"{path}:3: " in report and message in report, report
    assert f"{path}:1:" not in report
    assert report.startswith(f"1 problem in the suite {path}:")


def test_every_problem_at_once_with_suggestions(tmp_path):
    (tmp_path / "chart.png").write_bytes(PNG)
    path = write(
        tmp_path,
        {"prompt": "p", "expected": 1, "judge": "exat"},
        "{oops",
        {"prompt": "p", "expected": 1, "imgae": "chart.png"},
        {"prompt": "p", "expected": 1, "image": "chrt.png"},
        GOOD | {"id": "a"},
        GOOD | {"id": "a", "tags": 3},
    )
    lines = problems(path).splitlines()
    assert lines[0] == f"6 problems in the suite {path}:"
    assert lines[1:7] == [
        f"  {path}:1: unknown judge 'exat'; expected one of exact, f1, iou, json, regex, choice; "
        "did you mean 'exact'?",
        f"  {path}:2: invalid JSON: unexpected character, expected a string key; "
        "expected one JSON object per line; fix or remove the line",
        f"  {path}:3: unknown field 'imgae'; expected one of id, prompt, messages, system, image, expected, "
        "judge, choices, tolerance, iou_threshold, box_space, fullmatch, max_tokens, tags; "
        "did you mean 'image'?",
        f"  {path}:4: image file 'chrt.png' not found (looked for {tmp_path / 'chrt.png'}); "
        "expected a path relative to the suite file's folder; did you mean 'chart.png'?",
        f'  {path}:6: tags is 3; expected a list of strings; e.g. "tags": ["chart"]',
        f"  {path}:6: id 'a' is already used on line 5; expected unique ids; "
        "rename one (or drop `id`: the default is line-N)",
    ]
    assert lines[7].startswith("  hint: ")


def test_many_problems_are_capped(tmp_path):
    path = write(tmp_path, *([{"expected": 1}] * 60))
    report = problems(path)
    assert report.startswith("60 problems") and "... and 10 more" in report and f"{path}:50:" in report
    assert f"{path}:51:" not in report


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_an_empty_suite_is_an_error(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    assert problems(path).startswith(f"{path}: the suite is empty; expected one JSON object per line")


def test_a_missing_suite_is_an_error(tmp_path):
    assert "nope.jsonl does not exist" in problems(tmp_path / "nope.jsonl")


# ---------------------------------------------------------------- the example suites


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> list[Path]:
    return write_example_suites(tmp_path_factory.mktemp("examples"), seed=0)


def test_examples_are_listed_and_small(examples):
    assert [p.name for p in examples] == list(example_suites())
    root = examples[0].parent
    files = [p for p in root.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 1_000_000
    for path in examples:
        assert 8 <= len(load_suite(path).items) <= 12


def test_examples_are_deterministic(examples, tmp_path):
    again = write_example_suites(tmp_path / "again", seed=0)
    root = examples[0].parent
    for path in sorted(root.rglob("*")):
        if path.is_file():
            twin = tmp_path / "again" / path.relative_to(root)
            assert twin.read_bytes() == path.read_bytes(), path.name
    assert [p.name for p in again] == [p.name for p in examples]
    assert reference_answers(1) != reference_answers(0)


def test_a_perfect_server_scores_one_everywhere(examples):
    answers = reference_answers(0)
    for path in examples:
        suite = load_suite(path)
        for item in suite.items:
            assert item.request_messages()[-1]["role"] == "user"
            result = score(answers[path.name][item.id], item)
            assert result.value == 1.0, (path.name, item.id, result.detail)
            assert result.fp == result.fn == 0


def test_images_are_attached_to_vision_items(examples):
    for path in examples:
        for item in load_suite(path).items:
            content = item.request_messages()[-1]["content"]
            if path.name == "text.jsonl":
                assert isinstance(content, str)
            else:
                assert content[0]["image_url"]["url"].startswith("data:image/png;base64,iVBORw0KGgo")


def test_known_wrong_answers_score_what_they_should(examples):
    suites = {p.name: load_suite(p) for p in examples}

    # documents: one top-level field wrong per answer -> per item tp = n - 1, fp = fn = 1
    scores = []
    for item in suites["documents.jsonl"].items:
        wrong = dict(item.expected, date="1999-01-01")
        scores.append(score(json.dumps(wrong), item))
    fields = [len(flatten(i.expected)) for i in suites["documents.jsonl"].items]
    for result, n in zip(scores, fields, strict=True):
        assert (result.tp, result.fp, result.fn) == (n - 1, 1, 1)
        assert result.value == pytest.approx((n - 1) / n)
    total = sum(fields)
    summary = summarize(scores)["all"]
    assert summary["precision"] == summary["recall"] == pytest.approx((total - 8) / total)

    # boxes: every box shifted by half its width -> IoU 1/3, nothing matches
    scores = []
    for item in suites["boxes.jsonl"].items:
        shifted = [
            {
                "label": b["label"],
                "bbox": [
                    b["bbox"][0] + (b["bbox"][2] - b["bbox"][0]) / 2,
                    b["bbox"][1],
                    b["bbox"][2] + (b["bbox"][2] - b["bbox"][0]) / 2,
                    b["bbox"][3],
                ],
            }
            for b in item.expected
        ]
        scores.append(score(json.dumps(shifted), item))
    summary = summarize(scores)["all"]
    n_boxes = sum(len(i.expected) for i in suites["boxes.jsonl"].items)
    assert (summary["score"], summary["tp"], summary["fp"], summary["fn"]) == (0.0, 0, n_boxes, n_boxes)

    # charts: values read 1% off pass the 2% tolerance, 5% off fail
    numeric = [i for i in suites["chart_qa.jsonl"].items if i.tolerance is not None]
    assert len(numeric) == 5
    for item in numeric:
        value = parse_number(str(item.expected))
        assert value is not None
        assert score(f"{value * 1.01:g}", item).value == 1.0, item.id
        assert score(f"{value * 1.05:g}", item).value == 0.0, item.id

    # text: a server that always says "I don't know" gets nothing
    text = [score("I don't know.", i) for i in suites["text.jsonl"].items]
    assert summarize(text)["all"] == {"n": 11, "score": 0.0}
