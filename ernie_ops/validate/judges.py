"""Scoring one answer against a suite item's `expected`: one function per judge.

Every judge has the same signature, `judge(prediction: str, item: SuiteItem) -> Score`, and reads
what it needs from the item (`expected`, `choices`, `tolerance`, `iou_threshold`, `fullmatch`).
`score()` picks the judge (the item's own, else the default) and stamps the result with the
judge's name, the item's id and tags, which is all `summarize()` needs to aggregate.

The judges, and what `Score.value` means for each:

- exact  1/0. Normalized match (see `normalize_text`); numbers compare numerically within a
         relative tolerance ("1,200" == "1200.0", "45%" == "45"). A longer answer is accepted when
         its final answer matches: the text after the last "answer:"/"answer is", or, when the
         expected answer is a number, the last number in the answer.
- f1     field-level F1 of a JSON object, nested keys flattened to dotted paths ("items[0].price").
         tp = right fields; fp = predicted fields wrong or extra; fn = expected fields missing or
         wrong (a wrong field counts once on each side).
- iou    F1 of boxes matched one-to-one (same label, IoU >= threshold, optimal assignment).
         Expected boxes are in pixels; the answer's are in the item's `box_space` (pixels, or a
         0-1000 or 0-1 grid over the image, scaled to its pixels before matching).
- json   1/0: the answer holds JSON and, when `expected` is a JSON Schema, satisfies it (jsonschema).
- regex  1/0: `re.search` (or `re.fullmatch` of the stripped answer with `"fullmatch": true`).
- choice 1/0: the option the answer picks (see `pick_choice`) is the expected one.

f1, iou and json find the JSON in an answer the same way (`extract_json`): the whole answer, else
a ```json fenced block, else the first balanced {...} or [...] span that parses.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ernie_ops.validate.suite import SuiteItem

DEFAULT_TOLERANCE = 1e-6  # relative, for numbers (exact, f1); an item's `tolerance` replaces it
DEFAULT_IOU_THRESHOLD = 0.5
# the coordinate spaces an answer's boxes may use: the extent of the grid laid over the image
# (None: the image's own pixels). Models differ: Qwen2-VL answers on a 0-1000 grid, Qwen2.5-VL in
# pixels; ERNIE-4.5-VL's tokenizer has 1001 location tokens <|LOC_0|> ... <|LOC_1000|>.
BOX_SPACES: dict[str, float | None] = {"pixels": None, "norm1000": 1000.0, "norm1": 1.0}


@dataclass(frozen=True)
class Score:
    """One item's score. `value` (0..1) is the primary score; tp/fp/fn feed micro-averaged
    precision/recall across items (0 for the 1/0 judges); `detail` says why, for people."""

    value: float
    tp: int = 0
    fp: int = 0
    fn: int = 0
    detail: str = ""
    judge: str = ""  # set by score()
    item_id: str = ""
    tags: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tags": list(self.tags)}


Judge = Callable[[str, "SuiteItem"], Score]


# ---------------------------------------------------------------- normalization


_OPENERS = " \"'`“”‘’«»([{*_"
_CLOSERS = " \"'`“”‘’«»)]}*_.,;:!?"
_NUMBER = re.compile(r"[+-]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?")
_NUMBER_IN_TEXT = re.compile(r"(?:(?<!\w)-)?(?<![\w.])\d[\d,]*(?:\.\d+)?%?")
_ANSWER_MARKER = re.compile(r"\banswer\s*(?:is\b|:)\s*", re.IGNORECASE)


def normalize_text(text: str) -> str:
    """Case-folded, whitespace collapsed, surrounding quotes/brackets/markdown emphasis and
    trailing punctuation (so a final period) stripped: '  "Apples." ' -> 'apples'."""
    text = " ".join(text.split()).casefold()
    return text.lstrip(_OPENERS).rstrip(_CLOSERS)


def parse_number(text: str) -> float | None:
    """The number a short answer states, or None: '1,200' -> 1200.0, '$3.50' -> 3.5, '45%' -> 45.0.
    Thousands separators must group by three ('1,2' is not a number)."""
    s = normalize_text(text).lstrip("$€£¥").rstrip("%").strip()
    if not _NUMBER.fullmatch(s):
        return None
    return float(s.replace(",", ""))


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    return parse_number(value) if isinstance(value, str) else None


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)


def same_answer(predicted: Any, expected: Any, tolerance: float = DEFAULT_TOLERANCE) -> bool:
    """Two values (strings or JSON scalars) say the same thing: numerically within `tolerance`
    (relative) when both are numbers, else equal after `normalize_text`."""
    p, e = _as_number(predicted), _as_number(expected)
    if p is not None and e is not None:
        return math.isclose(p, e, rel_tol=tolerance, abs_tol=1e-12)
    return normalize_text(_as_text(predicted)) == normalize_text(_as_text(expected))


def _show(value: Any, limit: int = 60) -> str:
    text = " ".join(_as_text(value).split())
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def _tolerance(item: SuiteItem) -> float:
    return DEFAULT_TOLERANCE if item.tolerance is None else item.tolerance


def _f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0


def strip_reasoning(prediction: str) -> str:
    """The answer without a reasoning model's <think>...</think> preamble (also when the server
    already dropped the opening tag)."""
    if "</think>" in prediction:
        return prediction.rsplit("</think>", 1)[1].strip()
    return prediction


# ---------------------------------------------------------------- JSON in an answer


class NoJSON(ValueError):
    """The answer holds no JSON value."""


_FENCE = re.compile(r"```[ \t]*(?:json)?[ \t]*\n?(.*?)```", re.DOTALL | re.IGNORECASE)
_OPENING = re.compile(r"[{\[]")


def extract_json(text: str) -> Any:
    """The JSON value an answer holds: the whole answer, else the first ```json (or bare ```)
    fenced block that parses, else the first balanced {...} or [...] span that parses. Raises
    NoJSON when there is none (shared by the f1, iou and json judges)."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    for block in _FENCE.findall(text):
        try:
            return json.loads(block)
        except ValueError:
            continue
    decoder = json.JSONDecoder()
    for opening in _OPENING.finditer(text):
        try:
            return decoder.raw_decode(text, opening.start())[0]
        except ValueError:
            continue
    raise NoJSON("no JSON in the answer")


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Leaf values by dotted path: {"a": {"b": 1}, "c": [{"d": 2}]} -> {"a.b": 1, "c[0].d": 2}.
    Empty objects and lists are leaves themselves."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, child in value.items():
            out.update(flatten(child, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and value:
        out = {}
        for i, child in enumerate(value):
            out.update(flatten(child, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


# ---------------------------------------------------------------- judges


def exact(prediction: str, item: SuiteItem) -> Score:
    """1 when the answer (or its final answer, see the module docstring) matches `expected`, or
    any of them when `expected` is a list of acceptable answers."""
    accepted = item.expected if isinstance(item.expected, list) else [item.expected]
    tolerance = _tolerance(item)
    for how, candidate in _final_answers(prediction, any(_as_number(e) is not None for e in accepted)):
        if any(same_answer(candidate, e, tolerance) for e in accepted):
            return Score(1.0, detail=how)
    expected = " or ".join(_show(e) for e in accepted)
    return Score(0.0, detail=f"expected {expected}, got {_show(prediction)}")


def _final_answers(prediction: str, numeric: bool) -> list[tuple[str, str]]:
    """(how it was found, text) for each reading of an answer, the strictest first."""
    found = [("matched", prediction)]
    markers = list(_ANSWER_MARKER.finditer(prediction))
    if markers:
        tail = prediction[markers[-1].end() :].strip().split("\n", 1)[0]
        found.append(("matched the text after 'answer'", tail))
    if numeric:
        numbers = _NUMBER_IN_TEXT.findall(prediction)
        if numbers:
            found.append((f"matched the last number, {numbers[-1]}", numbers[-1]))
    return found


def f1(prediction: str, item: SuiteItem) -> Score:
    """Field-level F1 of the answer's JSON object against `expected` (keys compared
    case-insensitively, values with `same_answer`)."""
    expected = flatten(item.expected)
    try:
        parsed = extract_json(prediction)
    except NoJSON:
        parsed = None
    if not isinstance(parsed, dict):
        what = "no JSON object in the answer" if parsed is None else f"the answer's JSON is a {_kind(parsed)}"
        return Score(0.0, fn=len(expected), detail=f"{what}; {len(expected)} fields missing")
    predicted = {key.casefold(): value for key, value in flatten(parsed).items()}
    tolerance = _tolerance(item)
    tp = fp = fn = 0
    wrong, missing = [], []
    for key, value in expected.items():
        if key.casefold() not in predicted:
            fn += 1
            missing.append(key)
        elif same_answer(predicted[key.casefold()], value, tolerance):
            tp += 1
        else:
            fp += 1
            fn += 1
            wrong.append(f"{key} (expected {_show(value, 30)}, got {_show(predicted[key.casefold()], 30)})")
    extra = sorted(set(predicted) - {key.casefold() for key in expected})
    fp += len(extra)
    parts = [f"{tp}/{len(expected)} fields right"]
    parts += [f"wrong {', '.join(wrong)}"] if wrong else []
    parts += [f"missing {', '.join(missing)}"] if missing else []
    parts += [f"extra {', '.join(extra)}"] if extra else []
    return Score(_f1(tp, fp, fn), tp, fp, fn, "; ".join(parts))


def _kind(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean"}.get(type(value), "number")


Box = tuple[str, tuple[float, float, float, float]]  # (normalized label, (x1, y1, x2, y2))
_BOX_LISTS = ("boxes", "objects", "detections", "bboxes", "results")
_BOX_KEYS = ("bbox", "box", "bbox_2d", "bounding_box")
_LABEL_KEYS = ("label", "name", "category", "class")


def read_boxes(value: Any) -> tuple[list[Box], int]:
    """(usable boxes, number of unusable entries) from a parsed answer: a list of
    {"label", "bbox"} objects (also "box"/"bbox_2d"; "name"/"category"), or an object holding
    such a list under "boxes"/"objects"/"detections", or one such object alone. Coordinates are
    reordered so x1 <= x2 and y1 <= y2."""
    if isinstance(value, dict):
        inner = next((value[k] for k in _BOX_LISTS if isinstance(value.get(k), list)), None)
        value = inner if inner is not None else [value]
    if not isinstance(value, list):
        return [], 1
    boxes, unusable = [], 0
    for entry in value:
        box = _read_box(entry)
        if box is None:
            unusable += 1
        else:
            boxes.append(box)
    return boxes, unusable


def _read_box(entry: Any) -> Box | None:
    if not isinstance(entry, dict):
        return None
    label = next((entry[k] for k in _LABEL_KEYS if isinstance(entry.get(k), str)), None)
    coords = next((entry[k] for k in _BOX_KEYS if k in entry), None)
    if label is None or not isinstance(coords, list) or len(coords) != 4:
        return None
    numbers = [_as_number(c) for c in coords]
    if any(n is None or not math.isfinite(n) for n in numbers):
        return None
    x1, y1, x2, y2 = (float(n) for n in numbers)  # type: ignore[arg-type]
    return normalize_text(label), (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes; 0 for degenerate boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_boxes(predicted: list[Box], expected: list[Box], threshold: float) -> list[tuple[int, int, float]]:
    """(predicted index, expected index, IoU) of the one-to-one matching with the most pairs of
    the same label and IoU >= threshold, ties broken by the largest total IoU."""
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    if not predicted or not expected:
        return []
    iou = np.array(
        [[box_iou(p, e) if pl == el else 0.0 for el, e in expected] for pl, p in predicted], dtype=float
    )
    valid = iou >= threshold
    # every valid pair outweighs any sum of IoUs, so the count of matches comes first
    weight = np.where(valid, min(len(predicted), len(expected)) + 1 + iou, 0.0)
    rows, cols = linear_sum_assignment(weight, maximize=True)
    return [(int(i), int(j), float(iou[i, j])) for i, j in zip(rows, cols, strict=True) if valid[i, j]]


def iou(prediction: str, item: SuiteItem) -> Score:
    """F1 of the predicted boxes against `expected` (a list of {"label", "bbox"}); the detail
    gives the mean IoU of the matched pairs."""
    expected, _ = read_boxes(item.expected)
    threshold = DEFAULT_IOU_THRESHOLD if item.iou_threshold is None else item.iou_threshold
    try:
        predicted, unusable = read_boxes(extract_json(prediction))
    except NoJSON:
        return Score(0.0, fn=len(expected), detail=f"no JSON boxes in the answer; {len(expected)} missing")
    predicted = to_pixels(predicted, item)
    matches = match_boxes(predicted, expected, threshold)
    tp = len(matches)
    fp, fn = len(predicted) - tp + unusable, len(expected) - tp
    parts = [f"{tp}/{len(expected)} boxes matched at IoU >= {threshold:g}"]
    if matches:
        parts[0] += f" (mean IoU {sum(m[2] for m in matches) / tp:.2f})"
    missing = sorted(set(range(len(expected))) - {j for _, j, _ in matches})
    extra = sorted(set(range(len(predicted))) - {i for i, _, _ in matches})
    parts += [f"missing {', '.join(repr(expected[j][0]) for j in missing)}"] if missing else []
    parts += [f"unmatched {', '.join(repr(predicted[i][0]) for i in extra)}"] if extra else []
    parts += [f"{unusable} unusable (no label or not 4 coordinates)"] if unusable else []
    if item.image_size and BOX_SPACES[item.box_space]:
        parts.append(
            f"answer in {item.box_space}, scaled to {item.image_size[0]}x{item.image_size[1]} pixels"
        )
    return Score(_f1(tp, fp, fn), tp, fp, fn, "; ".join(parts))


def to_pixels(boxes: list[Box], item: SuiteItem) -> list[Box]:
    """The answer's boxes in the image's pixels (`load_suite` records the image size of every
    item whose space is not pixels)."""
    extent = BOX_SPACES[item.box_space]
    if extent is None:
        return boxes
    assert item.image_size is not None, "load_suite reads the image size for a scaled box space"
    sx, sy = item.image_size[0] / extent, item.image_size[1] / extent
    return [(label, (x1 * sx, y1 * sy, x2 * sx, y2 * sy)) for label, (x1, y1, x2, y2) in boxes]


JSON_TYPES = ("string", "number", "integer", "boolean", "array", "object", "null")


def json_schema(expected: Any) -> dict:
    """`expected` as a JSON Schema: any schema (validated by `jsonschema`, Draft 2020-12 unless it
    names its own `$schema`), with one shorthand kept from earlier suites: a property given as a
    bare type name (`"properties": {"age": "integer"}`) means `{"type": "integer"}`."""
    if not isinstance(expected, dict):
        return {}
    properties = expected.get("properties")
    if isinstance(properties, dict) and any(isinstance(v, str) for v in properties.values()):
        short = {k: {"type": v} if isinstance(v, str) else v for k, v in properties.items()}
        return {**expected, "properties": short}
    return expected


def schema_validator(schema: dict) -> Any:
    """The jsonschema validator for `schema` (its `$schema` draft, else 2020-12); raises
    jsonschema.SchemaError when the schema itself is invalid (the suite loader reports it)."""
    import jsonschema

    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    cls.check_schema(schema)
    return cls(schema)


def json_valid(prediction: str, item: SuiteItem) -> Score:
    """1 when the answer holds JSON that satisfies `expected`, a JSON Schema (see `json_schema`).
    Without `expected`, any JSON passes. The detail names up to three violations with their paths."""
    try:
        value = extract_json(prediction)
    except NoJSON:
        return Score(0.0, detail="no JSON in the answer")
    schema = json_schema(item.expected)
    if not schema:
        return Score(1.0, detail="valid JSON")
    errors = sorted(schema_validator(schema).iter_errors(value), key=lambda e: list(e.absolute_path))
    if errors:
        shown = [_violation(e) for e in errors[:3]]
        more = f"; and {len(errors) - 3} more" if len(errors) > 3 else ""
        return Score(0.0, detail="; ".join(shown) + more)
    return Score(1.0, detail="valid JSON matching the schema")


def _violation(error: Any) -> str:
    """One jsonschema error as `path: message` (`$` is the whole answer), the value cut short."""
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    message = error.message if len(error.message) <= 120 else error.message[:117] + "..."
    return f"${path}: {message}"


def regex(prediction: str, item: SuiteItem) -> Score:
    """1 when `expected` (a Python regex) is found in the answer, or matches the whole stripped
    answer when the item sets `"fullmatch": true`."""
    pattern = re.compile(item.expected)
    found = pattern.fullmatch(prediction.strip()) if item.fullmatch else pattern.search(prediction)
    if found:
        return Score(1.0, detail=f"matched {_show(found.group(0))}")
    how = "does not fully match" if item.fullmatch else "not found in"
    return Score(0.0, detail=f"/{item.expected}/ {how} {_show(prediction)}")


def _letter(index: int) -> str:
    return chr(ord("A") + index)


def choice_index(answer: str, choices: Sequence[str]) -> int | None:
    """The option a short answer names, by letter ("B", "(b)", "B." -> 1) or by its own text
    (normalized); letters are tried first. None when it names none."""
    text = normalize_text(answer)
    if len(text) == 1 and "a" <= text <= "z" and ord(text) - ord("a") < len(choices):
        return ord(text) - ord("a")
    return next((i for i, c in enumerate(choices) if normalize_text(c) == text), None)


_LEADING_LETTER = re.compile(r"[\s*]*(?:\(([A-Za-z])\)|([A-Z])(?:[.):]|$))")
_ANSWER_LETTER = re.compile(r"[\s*]*(?:\(([A-Za-z])\)|([A-Z])(?:[.):*\s]|$))")  # after "answer is"
_BRACKETED_LETTER = re.compile(r"\(([A-Z])\)")


def pick_choice(prediction: str, choices: Sequence[str]) -> tuple[int | None, str]:
    """(option index or None, how it was found). Tried in this order, the first that names an
    option in range wins:
    1. the whole answer names one ("B", "(B)", "b.", or an option's text);
    2. the text after the last "answer:"/"answer is" names one, or starts with its letter
       ("The answer is C because ...");
    3. the answer starts with a letter and ")", "." or ":" ("B. Paris", "(B) Paris");
    4. exactly one distinct "(X)" letter appears in the answer;
    5. exactly one option's text appears in the answer as whole words (an option contained in
       a longer one found alongside it does not count).
    """
    index = choice_index(prediction, choices)
    if index is not None:
        return index, "the whole answer"
    markers = list(_ANSWER_MARKER.finditer(prediction))
    if markers:
        tail = prediction[markers[-1].end() :].strip().split("\n", 1)[0]
        index = choice_index(tail, choices)
        if index is None:
            index = _leading_letter(tail, choices, _ANSWER_LETTER)
        if index is not None:
            return index, "the text after 'answer'"
    index = _leading_letter(prediction, choices, _LEADING_LETTER)
    if index is not None:
        return index, "the letter at the start"
    bracketed = {ord(m) - ord("A") for m in _BRACKETED_LETTER.findall(prediction)}
    bracketed = {i for i in bracketed if i < len(choices)}
    if len(bracketed) == 1:
        return bracketed.pop(), "the bracketed letter"
    text = f" {_words(prediction)} "
    words = {i: _words(c) for i, c in enumerate(choices)}
    found = {i for i, w in words.items() if w and f" {w} " in text}
    found = {i for i in found if not any(i != j and f" {words[i]} " in f" {words[j]} " for j in found)}
    if len(found) == 1:
        return found.pop(), "the option's text in the answer"
    return None, "no option found" if not found else "several options named"


def _words(text: str) -> str:
    """Lower-case words joined by single spaces (punctuation dropped), for whole-word search."""
    return " ".join(re.findall(r"[^\W_]+", text.casefold()))


def _leading_letter(text: str, choices: Sequence[str], pattern: re.Pattern[str]) -> int | None:
    found = pattern.match(text)
    if not found:
        return None
    index = ord((found.group(1) or found.group(2)).upper()) - ord("A")
    return index if index < len(choices) else None


def choice(prediction: str, item: SuiteItem) -> Score:
    """1 when the option the answer picks (`pick_choice`) is `expected` (a letter or the
    option's text)."""
    want = choice_index(str(item.expected), item.choices)
    assert want is not None, "load_suite checks that `expected` names an option"
    got, how = pick_choice(prediction, item.choices)
    expected = f"{_letter(want)} ({_show(item.choices[want], 30)})"
    if got is None:
        return Score(0.0, detail=f"{how} in {_show(prediction)}; expected {expected}")
    picked = f"{_letter(got)} ({_show(item.choices[got], 30)})"
    if got == want:
        return Score(1.0, detail=f"picked {picked}, from {how}")
    return Score(0.0, detail=f"picked {picked}, from {how}; expected {expected}")


JUDGES: dict[str, Judge] = {
    "exact": exact,
    "f1": f1,
    "iou": iou,
    "json": json_valid,
    "regex": regex,
    "choice": choice,
}


# ---------------------------------------------------------------- dispatch and summary


def score(prediction: str, item: SuiteItem, default_judge: str = "exact") -> Score:
    """Score one answer with the item's judge (`item.judge`, which `load_suite` always sets),
    else `default_judge`. A reasoning preamble (<think>...</think>) is dropped first."""
    name = item.judge or default_judge
    result = JUDGES[name](strip_reasoning(prediction), item)
    return replace(result, judge=name, item_id=item.id, tags=tuple(item.tags))


def failed(item: SuiteItem, reason: str, default_judge: str = "exact") -> Score:
    """The score of an item whose request failed: what an empty answer scores (0, with every
    expected field or box counted as missing), `reason` as the detail."""
    return replace(score("", item, default_judge), value=0.0, detail=reason)


def summarize(scores: Iterable[Score]) -> dict[str, Any]:
    """{"all": group, "judges": {judge: group}, "tags": {tag: group}}, where a group is
    {"n", "score" (mean value)} plus, when any tp/fp/fn is nonzero, micro-averaged
    {"tp", "fp", "fn", "precision", "recall", "f1"} (precision 0 when nothing was predicted)."""
    groups: dict[tuple[str, str], list[Score]] = {}
    for s in scores:
        groups.setdefault(("all", ""), []).append(s)
        groups.setdefault(("judges", s.judge), []).append(s)
        for tag in s.tags:
            groups.setdefault(("tags", tag), []).append(s)
    out: dict[str, Any] = {"all": _group(groups.pop(("all", ""), [])), "judges": {}, "tags": {}}
    for (kind, name), members in sorted(groups.items()):
        out[kind][name] = _group(members)
    return out


def _group(scores: list[Score]) -> dict[str, Any]:
    n = len(scores)
    out: dict[str, Any] = {"n": n, "score": sum(s.value for s in scores) / n if n else 0.0}
    tp, fp, fn = (sum(getattr(s, k) for s in scores) for k in ("tp", "fp", "fn"))
    if tp or fp or fn:
        out |= {
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "precision": tp / (tp + fp) if tp + fp else 0.0,
            "recall": tp / (tp + fn) if tp + fn else 0.0,
            "f1": _f1(tp, fp, fn),
        }
    return out
