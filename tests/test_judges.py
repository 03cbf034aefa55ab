"""The eval judges: exact scores for perfect, partly wrong and unparseable answers."""

from __future__ import annotations

import pytest

from ernie_ops.validate.judges import (
    JUDGES,
    NoJSON,
    Score,
    box_iou,
    extract_json,
    failed,
    flatten,
    normalize_text,
    parse_number,
    pick_choice,
    read_boxes,
    same_answer,
    score,
    summarize,
)
from ernie_ops.validate.suite import SuiteItem


def item(judge: str, expected: object = None, **fields: object) -> SuiteItem:
    return SuiteItem(id="t", prompt="p", judge=judge, expected=expected, **fields)  # type: ignore[arg-type]


def test_registry_names_every_judge():
    assert list(JUDGES) == ["exact", "f1", "iou", "json", "regex", "choice"]


# ---------------------------------------------------------------- exact


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ('  "Apples."  ', "apples"),
        ("**Q3**", "q3"),
        ("New   York\n", "new york"),
        ("(B)", "b"),
        ("'42'!", "42"),
        ("-3.", "-3"),
    ],
)
def test_normalize_text(text, normalized):
    assert normalize_text(text) == normalized


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("1,200", 1200.0),
        ("1200.0", 1200.0),
        ("45%", 45.0),
        ("$3.50", 3.5),
        ("-2", -2.0),
        (".5", 0.5),
        ("1e3", 1000.0),
        ("1,2", None),
        ("12,34,567", None),
        ("Q3", None),
        ("nan", None),
        ("", None),
    ],
)
def test_parse_number(text, number):
    assert parse_number(text) == number


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("1,200", 1200),
        ("1200.0", "1,200"),
        ("45%", 45),
        ("45", "45%"),
        ('"Apples."', "apples"),
        ("  Q3 ", "Q3"),
        ("The answer is 42.", 42),
        ("Answer: Dates\nbecause it is the shortest bar", "dates"),
        ("17 + 25 = 42", 42),
        ("It is roughly 1,234.5 units", 1234.5),
    ],
)
def test_exact_matches(prediction, expected):
    result = score(prediction, item("exact", expected))
    assert result.value == 1.0, result.detail


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("41", 42),
        ("42 or maybe 43", 42),  # the last number is the answer
        ("Q3 is the highest", "Q3"),  # long text answers need "answer:"
        ("apple", "apples"),
        ("", 42),
        ("1,2", 12),
    ],
)
def test_exact_mismatches(prediction, expected):
    assert score(prediction, item("exact", expected)).value == 0.0


def test_exact_tolerance_is_relative_and_per_item():
    assert score("100.0001", item("exact", 100)).value == 1.0  # default 1e-6
    assert score("100.01", item("exact", 100)).value == 0.0
    assert score("101.9", item("exact", 100, tolerance=0.02)).value == 1.0
    assert score("102.1", item("exact", 100, tolerance=0.02)).value == 0.0
    assert same_answer(0.0, "0")


def test_exact_accepts_any_of_a_list_and_explains_a_miss():
    assert score("third quarter", item("exact", ["Q3", "third quarter"])).value == 1.0
    miss = score("41", item("exact", 42))
    assert miss.detail == "expected '42', got '41'"
    assert (miss.tp, miss.fp, miss.fn) == (0, 0, 0)


# ---------------------------------------------------------------- JSON extraction and f1


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1}',
        'Here you go:\n```json\n{"a": 1}\n```\nanything else?',
        '```\n{"a": 1}\n```',
        'The fields are {"a": 1} as requested {"b": 2}',
        'note [draft] then {"a": 1}',
    ],
)
def test_extract_json_forms(text):
    assert extract_json(text) == {"a": 1}


@pytest.mark.parametrize("text", ["", "no json here", '{"a": 1', "```json\n{oops}\n```"])
def test_extract_json_none(text):
    with pytest.raises(NoJSON):
        extract_json(text)


def test_flatten_paths():
    assert flatten({"a": {"b": 1}, "c": [{"d": 2}, 3], "e": [], "f": {}}) == {
        "a.b": 1,
        "c[0].d": 2,
        "c[1]": 3,
        "e": [],
        "f": {},
    }


INVOICE = {"invoice_number": "INV-1", "date": "2024-03-05", "total": 1234.5}


def test_f1_perfect_with_normalized_values():
    answer = '```json\n{"Invoice_Number": "inv-1", "date": "2024-03-05", "total": "$1,234.50"}\n```'
    result = score(answer, item("f1", INVOICE))
    assert (result.value, result.tp, result.fp, result.fn) == (1.0, 3, 0, 0)


def test_f1_two_of_three_fields_right():
    result = score('{"invoice_number": "INV-1", "date": "2024-03-06", "total": 1234.5}', item("f1", INVOICE))
    assert (result.tp, result.fp, result.fn) == (2, 1, 1)
    assert result.value == pytest.approx(2 / 3)
    assert "2/3 fields right" in result.detail
    assert "wrong date (expected '2024-03-05', got '2024-03-06')" in result.detail
    summary = summarize([result])["all"]
    assert summary["precision"] == pytest.approx(2 / 3)
    assert summary["recall"] == pytest.approx(2 / 3)
    assert summary["f1"] == pytest.approx(2 / 3)


def test_f1_missing_and_extra_fields():
    result = score('{"invoice_number": "INV-1", "vendor": "Acme", "note": "x"}', item("f1", INVOICE))
    # tp 1; fn: date, total missing; fp: vendor, note extra
    assert (result.tp, result.fp, result.fn) == (1, 2, 2)
    assert result.value == pytest.approx(2 * 1 / (2 * 1 + 2 + 2))
    assert "missing date, total" in result.detail and "extra note, vendor" in result.detail


def test_f1_nested_lists_are_scored_per_field():
    expected = {"items": [{"name": "Tea", "price": 2.5}, {"name": "Bun", "price": 1}], "total": 3.5}
    answer = '{"items": [{"name": "tea", "price": 2.5}, {"name": "Bun", "price": 1.5}], "total": 3.5}'
    result = score(answer, item("f1", expected))
    assert (result.tp, result.fp, result.fn) == (4, 1, 1)
    assert "items[1].price" in result.detail


@pytest.mark.parametrize("answer", ["I could not read the invoice.", "[1, 2, 3]", ""])
def test_f1_unparseable_counts_every_field_missing(answer):
    result = score(answer, item("f1", INVOICE))
    assert (result.value, result.tp, result.fp, result.fn) == (0.0, 0, 0, 3)
    assert "3 fields missing" in result.detail


# ---------------------------------------------------------------- iou


def boxes(*entries: tuple[str, list[float]]) -> list[dict]:
    return [{"label": label, "bbox": bbox} for label, bbox in entries]


def test_box_iou_known_values():
    assert box_iou([0, 0, 10, 10], [0, 0, 10, 5]) == 0.5
    assert box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert box_iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0
    assert box_iou([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0


def test_iou_threshold_is_inclusive_and_per_item():
    expected = boxes(("cat", [0, 0, 10, 10]))
    half = '[{"label": "Cat", "bbox": [0, 0, 10, 5]}]'
    result = score(half, item("iou", expected))
    assert (result.value, result.tp, result.fp, result.fn) == (1.0, 1, 0, 0)
    assert "mean IoU 0.50" in result.detail
    strict = score(half, item("iou", expected, iou_threshold=0.75))
    assert (strict.value, strict.tp, strict.fp, strict.fn) == (0.0, 0, 1, 1)


def test_iou_labels_must_agree():
    result = score('[{"label": "dog", "bbox": [0, 0, 10, 10]}]', item("iou", boxes(("cat", [0, 0, 10, 10]))))
    assert (result.tp, result.fp, result.fn) == (0, 1, 1)
    assert "missing 'cat'" in result.detail and "unmatched 'dog'" in result.detail


def test_iou_matching_is_optimal_not_greedy():
    # greedy takes P1-E1 (IoU 0.90) and leaves P2-E2 at 0.33; the optimum is P1-E2 (0.74), P2-E1 (0.54)
    expected = boxes(("box", [0, 0, 10, 10]), ("box", [2, 0, 12, 10]))
    predicted = '[{"label": "box", "bbox": [0.5, 0, 10.5, 10]}, {"label": "box", "bbox": [-3, 0, 7, 10]}]'
    result = score(predicted, item("iou", expected))
    assert (result.value, result.tp, result.fp, result.fn) == (1.0, 2, 0, 0)


def test_iou_partial_with_unusable_entries():
    expected = boxes(
        ("red circle", [0, 0, 10, 10]), ("blue square", [20, 20, 30, 30]), ("dot", [50, 50, 52, 52])
    )
    answer = (
        '{"boxes": [{"label": "red circle", "bbox_2d": [10, 10, 0, 0]},'
        ' {"name": "blue square", "box": [21, 21, 31, 31]},'
        ' {"bbox": [1, 2, 3, 4]}, {"label": "x", "bbox": [1]}]}'
    )
    result = score(answer, item("iou", expected))
    # matched 2 (red circle IoU 1, blue square IoU 81/119); 2 unusable entries; the dot missed
    assert (result.tp, result.fp, result.fn) == (2, 2, 1)
    assert result.value == pytest.approx(4 / 7)
    assert f"mean IoU {(1 + 81 / 119) / 2:.2f}" in result.detail
    assert "2 unusable" in result.detail


def test_iou_unparseable_and_empty():
    expected = boxes(("cat", [0, 0, 10, 10]), ("dog", [20, 20, 30, 30]))
    result = score("There is a cat and a dog.", item("iou", expected))
    assert (result.value, result.tp, result.fp, result.fn) == (0.0, 0, 0, 2)
    assert score("[]", item("iou", [])).value == 1.0
    assert score("[]", item("iou", expected)).fn == 2


def test_iou_scales_answers_in_a_grid_to_the_images_pixels():
    # a 320x240 image: pixel box (32, 24, 160, 120) is (100, 100, 500, 500) on a 0-1000 grid
    expected = boxes(("red circle", [32, 24, 160, 120]))
    grid = '[{"label": "red circle", "bbox": [100, 100, 500, 500]}]'
    fractions = '[{"label": "red circle", "bbox": [0.1, 0.1, 0.5, 0.5]}]'
    norm1000 = item("iou", expected, box_space="norm1000", image_size=(320, 240))
    result = score(grid, norm1000)
    assert (result.value, result.tp) == (1.0, 1)
    assert "answer in norm1000, scaled to 320x240 pixels" in result.detail
    assert score(fractions, item("iou", expected, box_space="norm1", image_size=(320, 240))).value == 1.0
    assert score(grid, item("iou", expected)).value == 0.0  # the same numbers read as pixels miss


def test_read_boxes_one_object():
    assert read_boxes({"label": "A", "bbox": [3, 4, 1, 2]}) == ([("a", (1.0, 2.0, 3.0, 4.0))], 0)
    assert read_boxes("nope") == ([], 1)


# ---------------------------------------------------------------- json, regex


SCHEMA = {"required": ["name", "age"], "properties": {"name": "string", "age": {"type": "integer"}}}


@pytest.mark.parametrize(
    ("answer", "value", "detail"),
    [
        ('{"name": "Ada", "age": 36}', 1.0, "valid JSON matching the schema"),
        ('Sure! ```json\n{"name": "Ada", "age": 36, "x": 1}\n```', 1.0, "valid JSON matching the schema"),
        ('{"name": "Ada"}', 0.0, "$: 'age' is a required property"),
        ('{"name": "Ada", "age": 36.5}', 0.0, "$.age: 36.5 is not of type 'integer'"),
        ('{"name": "Ada", "age": true}', 0.0, "$.age: True is not of type 'integer'"),
        (
            '{"name": 1, "age": "x"}',
            0.0,
            "$.age: 'x' is not of type 'integer'; $.name: 1 is not of type 'string'",
        ),
        ("Ada, 36", 0.0, "no JSON in the answer"),
    ],
)
def test_json_judge(answer, value, detail):
    result = score(answer, item("json", SCHEMA))
    assert (result.value, result.detail) == (value, detail)


def test_json_judge_without_schema_and_with_type():
    assert score("[1, 2]", item("json")).value == 1.0
    assert score("[1, 2]", item("json", {"type": "array"})).value == 1.0
    assert score('{"a": 1}', item("json", {"type": "array"})).detail == "$: {'a': 1} is not of type 'array'"
    nested = {"type": "array", "items": {"type": "object", "required": ["x"]}, "minItems": 2}
    assert score('[{"x": 1}, {"y": 2}]', item("json", nested)).detail == "$[1]: 'x' is a required property"
    assert score('[{"x": 1}, {"x": 2}]', item("json", nested)).value == 1.0


def test_regex_search_and_fullmatch():
    assert score("Hello there", item("regex", r"(?i)\bhello\b")).value == 1.0
    assert score("Othello", item("regex", r"(?i)\bhello\b")).value == 0.0
    assert score(" 2024-05-01\n", item("regex", r"\d{4}-\d{2}-\d{2}", fullmatch=True)).value == 1.0
    result = score("on 2024-05-01", item("regex", r"\d{4}-\d{2}-\d{2}", fullmatch=True))
    assert result.value == 0.0 and "does not fully match" in result.detail


# ---------------------------------------------------------------- choice

CHOICES = ("red", "dark red", "blue", "green")


@pytest.mark.parametrize(
    ("answer", "index"),
    [
        ("C", 2),
        ("(c)", 2),
        ("C.", 2),
        ("**C**", 2),
        ("blue", 2),
        ("Blue.", 2),
        ("The answer is C because the sky...", 2),
        ("Answer: (C)", 2),
        ("Answer: blue", 2),
        ("C. blue", 2),
        ("(C) blue", 2),
        ("C) blue", 2),
        ("I would pick (C) here", 2),
        ("It is a dark red colour", 1),  # "red" is inside "dark red": the longer option wins
        ("A dog is green", 3),  # "A " is an article, not a letter pick
        ("red or blue", None),  # two options named
        ("E", None),  # out of range
        ("purple", None),
        ("", None),
    ],
)
def test_pick_choice(answer, index):
    assert pick_choice(answer, CHOICES)[0] == index


def test_choice_scores_letter_or_text_expected():
    assert score("C", item("choice", "blue", choices=CHOICES)).value == 1.0
    assert score("blue", item("choice", "C", choices=CHOICES)).value == 1.0
    wrong = score("A", item("choice", "C", choices=CHOICES))
    assert wrong.value == 0.0
    assert wrong.detail == "picked A ('red'), from the whole answer; expected C ('blue')"
    none = score("no idea", item("choice", "C", choices=CHOICES))
    assert none.value == 0.0 and none.detail.startswith("no option found")


# ---------------------------------------------------------------- dispatch and summary


def test_score_uses_the_default_judge_only_without_the_items_own():
    own = SuiteItem(id="a", prompt="p", judge="regex", expected="4", tags=("math",))
    bare = SuiteItem(id="b", prompt="p", expected="^4$")
    assert score("14", own, default_judge="exact").judge == "regex"
    result = score("14", bare, default_judge="regex")
    assert (result.judge, result.value) == ("regex", 0.0)
    assert score("4", bare).judge == "exact"
    stamped = score("4", own)
    assert (stamped.item_id, stamped.tags) == ("a", ("math",))


def test_score_drops_reasoning():
    assert score("<think>maybe 41</think>\n42", item("exact", 42)).value == 1.0
    assert score("maybe 41 ... </think> 42", item("exact", 42)).value == 1.0


def test_failed_counts_expected_units_missing():
    result = failed(item("f1", INVOICE), "HTTP 500: boom")
    assert (result.value, result.tp, result.fp, result.fn, result.detail) == (0.0, 0, 0, 3, "HTTP 500: boom")
    assert failed(item("exact", 1), "timeout").value == 0.0


def test_summarize_per_judge_and_tag():
    scores = [
        Score(1.0, judge="exact", tags=("chart",)),
        Score(0.0, judge="exact", tags=("chart", "hard")),
        Score(0.5, 1, 1, 1, judge="f1", tags=("doc",)),
        Score(0.8, 2, 0, 1, judge="f1", tags=("doc",)),
    ]
    summary = summarize(scores)
    assert summary["all"] == {
        "n": 4,
        "score": pytest.approx(2.3 / 4),
        "tp": 3,
        "fp": 1,
        "fn": 2,
        "precision": 0.75,
        "recall": 0.6,
        "f1": pytest.approx(6 / 9),
    }
    assert summary["judges"]["exact"] == {"n": 2, "score": 0.5}
    assert summary["judges"]["f1"]["precision"] == 0.75
    assert summary["tags"] == {
        "chart": {"n": 2, "score": 0.5},
        "hard": {"n": 1, "score": 0.0},
        "doc": summary["judges"]["f1"],
    }
    assert summarize([]) == {"all": {"n": 0, "score": 0.0}, "judges": {}, "tags": {}}
    assert Score(1.0, tags=("a",)).to_dict()["tags"] == ["a"]
