"""The evaluation suite format (JSONL, one item per line) and its loader.

    {"id": "q3", "prompt": "What is the value of the Q3 bar?", "image": "images/chart.png",
     "expected": 42, "judge": "exact", "tolerance": 0.02, "tags": ["chart"]}

Fields of an item (only `prompt` or `messages`, and usually `expected`, are required):

    id             str, unique in the suite; default "line-N"
    prompt         str, the user message; or
    messages       OpenAI chat messages [{"role": "system"|"user"|"assistant", "content": ...}],
                   the last one from the user
    system         str, a system message put first
    image          path of a PNG/JPEG (or a list of them), relative to the suite file; attached
                   to the last user message as base64 data URLs, before its text
    expected       the reference answer; its shape depends on the judge (see `EXPECTED`)
    judge          exact | f1 | iou | json | regex | choice
    choices        options of a `choice` item; listed after the prompt as "A. ..." lines
    tolerance      relative tolerance for numbers (exact, f1); default 1e-6
    iou_threshold  IoU a box must reach to match (iou); default 0.5
    box_space      the coordinates the answer's boxes are in (iou): pixels, norm1000 (a 0-1000
                   grid over the image) or norm1 (fractions); default the CLI's --box-space
                   (pixels). `expected` is always in pixels of the item's (first) image.
    fullmatch      true: the regex must match the whole (stripped) answer (regex)
    max_tokens     int, the item's own completion budget
    tags           [str], scores are also summarized per tag

Which judge scores an item: its own `judge` field when it has one, else the default judge given
to `load_suite` (the CLI's `--judge`, "exact" when not given); `box_space` likewise. An item's
field always wins: a suite mixing judges cannot be re-judged wholesale, as each judge reads its
own `expected` shape.
After loading, `SuiteItem.judge` holds the judge that will score it.

Every problem of a suite is reported at once, each as `file:line: what is wrong; what was
expected; what to do`, in one UserError.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeGuard

from ernie_ops.data.read import read_items
from ernie_ops.errors import UserError, did_you_mean
from ernie_ops.spec import convert_fields
from ernie_ops.validate.judges import (
    BOX_SPACES,
    JSON_TYPES,
    JUDGES,
    choice_index,
    json_schema,
    schema_validator,
)

MESSAGES = (
    'a list of {"role": "system"|"user"|"assistant", "content": str or parts} ending with a user message'
)


def _typed(expected: str, fix: str = "") -> dict[str, str]:
    """A field's type in words, and a fix, for the messages of ernie_ops.spec."""
    return {"expected": expected, "fix": fix}


@dataclass(kw_only=True)
class Record:
    """The fields of a suite line and their exact types, checked by ernie_ops.spec (what they mean:
    the module docstring; every field is optional on a line). Never built: the rules below read
    the typed values, and a SuiteItem is made of them."""

    id: str = field(metadata=_typed("a non-empty string", 'e.g. "id": "q1"'))
    prompt: str = field(metadata=_typed("a non-empty string"))
    messages: list[dict[str, Any]] = field(
        metadata=_typed(MESSAGES, 'or use "prompt" for a single user message')
    )
    system: str = field(metadata=_typed("a string"))
    image: str | list[str] = field(
        metadata=_typed("a path or a list of paths", 'e.g. "image": "images/chart.png"')
    )
    expected: Any = None  # its shape depends on the judge: EXPECTED
    judge: Any = None  # a name, checked against JUDGES (with did-you-mean)
    choices: list[str] = field(
        metadata=_typed("a list of 2 to 26 non-empty strings", 'e.g. "choices": ["red", "blue"]')
    )
    tolerance: float = field(metadata=_typed("a relative tolerance in [0, 1)", "e.g. 0.02 (2%)"))
    iou_threshold: float = field(metadata=_typed("a number in (0, 1]", "e.g. 0.5"))
    box_space: Any = None  # a name, checked against BOX_SPACES
    fullmatch: bool = field(metadata=_typed("true or false"))
    max_tokens: int = field(metadata=_typed("a positive integer", 'e.g. "max_tokens": 256'))
    tags: list[str] = field(metadata=_typed("a list of strings", 'e.g. "tags": ["chart"]'))


FIELDS = tuple(f.name for f in fields(Record))
JUDGE_FIELDS = {  # fields only some judges read: anywhere else they would be silently ignored
    "choices": ("choice",),
    "tolerance": ("exact", "f1"),
    "iou_threshold": ("iou",),
    "box_space": ("iou",),
    "fullmatch": ("regex",),
}
EXPECTED = {  # what `expected` must be, per judge (shown in errors)
    "exact": 'a string or number, or a list of acceptable ones, e.g. 42 or ["Q3", "third quarter"]',
    "f1": 'a non-empty JSON object of the fields, e.g. {"total": 12.5, "date": "2024-03-01"}',
    "iou": 'a list of {"label": str, "bbox": [x1, y1, x2, y2]} with x1 <= x2, y1 <= y2',
    "json": "omitted (any JSON), or a JSON Schema, e.g. "
    '{"required": ["n"], "properties": {"n": {"type": "integer"}}}',
    "regex": 'a regular expression (Python syntax), e.g. "\\\\d{4}-\\\\d{2}-\\\\d{2}"',
    "choice": 'the right option\'s letter ("B") or its text',
}
ROLES = ("system", "user", "assistant")
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
MAX_SHOWN = 50  # problems listed in the error; the rest are counted


@dataclass
class SuiteItem:
    """One prompt of a suite and what its answer is scored against (fields: module docstring)."""

    id: str
    line: int = 0
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    system: str | None = None
    images: tuple[Path, ...] = ()
    expected: Any = None
    judge: str | None = None
    choices: tuple[str, ...] = ()
    tolerance: float | None = None
    iou_threshold: float | None = None
    box_space: str = "pixels"
    image_size: tuple[int, int] | None = None  # (width, height) of the first image, for box_space
    fullmatch: bool = False
    max_tokens: int | None = None
    tags: tuple[str, ...] = ()

    def request_messages(self) -> list[dict[str, Any]]:
        """The OpenAI chat `messages` to send. Text-only items keep string contents (text-only
        servers may reject content lists); with images the last user message becomes a list of
        image_url parts (base64 data URLs, read on first use and cached) then its text."""
        messages = [dict(m) for m in self.messages] if self.messages else [{"role": "user", "content": ""}]
        if self.prompt is not None:
            messages[-1]["content"] = self.prompt
        if self.system is not None:
            messages.insert(0, {"role": "system", "content": self.system})
        last = max(i for i, m in enumerate(messages) if m["role"] == "user")
        content = messages[last]["content"]
        if self.choices:
            options = "\n".join(f"{chr(ord('A') + i)}. {c}" for i, c in enumerate(self.choices))
            if isinstance(content, str):
                content = f"{content}\n\n{options}"
            else:
                content = [*content, {"type": "text", "text": options}]
        if self.images:
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else list(content)
            images = [{"type": "image_url", "image_url": {"url": image_data_url(p)}} for p in self.images]
            content = images + parts
        messages[last]["content"] = content
        return messages

    def request_body(self, max_tokens: int, **extra: Any) -> dict[str, Any]:
        """A chat/completions body: the messages, the item's max_tokens (else `max_tokens`), and
        `extra` (model, temperature, ...)."""
        return {"messages": self.request_messages(), "max_tokens": self.max_tokens or max_tokens, **extra}


@lru_cache(maxsize=32)  # items sharing an image are usually neighbours; big images stay bounded
def image_data_url(path: Path) -> str:
    """A data URL of an image file (several items often share one image: read it once)."""
    mime = IMAGE_TYPES.get(path.suffix.lower(), "image/png")
    try:
        data = path.read_bytes()
    except OSError as err:  # it was there when the suite was loaded
        raise UserError(f"cannot read the image {path} ({err.strerror or err})") from None
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


@dataclass
class Suite:
    """A loaded suite: its items in file order, and the judge for items that name none."""

    path: Path
    items: list[SuiteItem] = field(default_factory=list)
    default_judge: str = "exact"

    @property
    def name(self) -> str:
        """The file name without .jsonl/.json(.gz): "chart_qa" for chart_qa.jsonl."""
        name = self.path.name.removesuffix(".gz")
        return name.removesuffix(".jsonl").removesuffix(".json")


def check_judge(name: str, what: str = "judge") -> str:
    """`name` when it is a judge, else a UserError naming the closest one."""
    return _check_name(name, list(JUDGES), what)


def _check_name(name: str, names: list[str], what: str) -> str:
    if name not in names:
        expected = f"expected one of {', '.join(names)}"
        raise UserError(f"unknown {what} {name!r}; {expected}", hint=_guess(name, names))
    return name


def _guess(value: Any, names: list[str] | None = None) -> str | None:
    """ "did you mean 'x'?" for a string close to one of `names` (VALUE itself when no names are
    given), else None."""
    guess = value if names is None else did_you_mean(value, names) if isinstance(value, str) else None
    return f"did you mean {guess!r}?" if guess else None


def load_suite(path: str | Path, default_judge: str = "exact", box_space: str = "pixels") -> Suite:
    """Read and check a suite; `default_judge` scores the items without their own `judge`, and
    `box_space` is the coordinate space of iou answers for items without their own.

    Raises one UserError listing every problem, each `file:line: ...`."""
    path = Path(path)
    check_judge(default_judge, "default judge")
    _check_name(box_space, list(BOX_SPACES), "box space")
    suite = Suite(path, default_judge=default_judge)
    problems: list[str] = []
    seen: dict[str, int] = {}
    for record in read_items(path):
        report = _Reporter(path, record.line, problems)
        value = record.load()
        if record.error:
            report(record.error, "one JSON object per line", "fix or remove the line")
            continue
        item = _check_item(value, record.line, path.parent, (default_judge, box_space), report)
        if item is None:
            continue
        if item.id in seen:
            report(
                f"id {item.id!r} is already used on line {seen[item.id]}",
                "unique ids",
                "rename one (or drop `id`: the default is line-N)",
            )
        seen.setdefault(item.id, item.line)
        suite.items.append(item)
    hint = (
        "the format is described in `python -m pydoc ernie_ops.validate.suite`; "
        "`ernie-ops eval --write-examples DIR` writes working suites"
    )
    if not problems and not suite.items:
        raise UserError(
            "the suite is empty; expected one JSON object per line, "
            'e.g. {"prompt": "What is 2 + 2?", "expected": 4}',
            where=str(path),
            hint=hint,
        )
    if problems:
        shown = problems[:MAX_SHOWN] + (
            [f"... and {len(problems) - MAX_SHOWN} more"] if len(problems) > MAX_SHOWN else []
        )
        count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
        raise UserError(f"{count} in the suite {path}:\n  " + "\n  ".join(shown), hint=hint)
    return suite


@dataclass
class _Reporter:
    """Records `file:line: what is wrong; expected ...; what to do`."""

    path: Path
    line: int
    problems: list[str]

    def __call__(self, what: str, expected: str, fix: str | None = None) -> None:
        self.problems.append(
            f"{self.path}:{self.line}: {what}; expected {expected}" + (f"; {fix}" if fix else "")
        )


def _check_item(
    value: Any, line: int, base: Path, defaults: tuple[str, str], report: _Reporter
) -> SuiteItem | None:
    """The item of one record (reporting its problems), or None when it is not an object.
    `defaults`: (judge, box space) of items without their own."""
    if not isinstance(value, dict):
        report(f"a JSON {type(value).__name__}", "a JSON object", 'e.g. {"prompt": "...", "expected": "..."}')
        return None
    typed, wrong, unknown = convert_fields(Record, value)
    for key, guess in unknown:
        report(f"unknown field {key!r}", f"one of {', '.join(FIELDS)}", _guess(guess) or "remove it")
    for m in wrong:
        report(f"{m.key} is {m.value!r:.80}", m.expected, m.fix)
    item = SuiteItem(id=f"line-{line}", line=line)
    _check_identity(typed, item, report)
    _check_request(value, typed, item, base, report)
    _check_scoring(value, typed, item, defaults[0], report)
    _check_box_space(value, item, defaults[1], report)
    return item


def _check_box_space(value: dict, item: SuiteItem, default: str, report: _Reporter) -> None:
    """box_space of an iou item, and the size of the image its answer is scaled to."""
    space = value.get("box_space", default)
    if not isinstance(space, str) or space not in BOX_SPACES:
        report(f"box_space is {space!r}", f"one of {', '.join(BOX_SPACES)}", _guess(space, list(BOX_SPACES)))
        return
    if item.judge != "iou" or BOX_SPACES[space] is None:
        return
    own = "box_space" in value
    if not item.images:
        report(
            f"box_space {space}{'' if own else ' (--box-space)'} scales the answer to the item's image, "
            "and it has none",
            "an image",
            'add "image", or give the item "box_space": "pixels"',
        )
        return
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(item.images[0]) as image:
            item.image_size = image.size
    except (OSError, UnidentifiedImageError) as err:
        report(f"cannot read the size of {item.images[0].name}: {err}", "a readable PNG or JPEG")
        return
    item.box_space = space


def _is_str_list(value: Any) -> TypeGuard[list[str]]:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_identity(typed: dict, item: SuiteItem, report: _Reporter) -> None:
    """id, tags, max_tokens: their values (their types are checked already)."""
    if "id" in typed:
        if typed["id"].strip():
            item.id = typed["id"]
        else:
            report(f"id is {typed['id']!r}", "a non-empty string", 'e.g. "id": "q1"')
    item.tags = tuple(typed.get("tags", ()))
    if "max_tokens" in typed:
        if typed["max_tokens"] > 0:
            item.max_tokens = typed["max_tokens"]
        else:
            report(f"max_tokens is {typed['max_tokens']!r}", "a positive integer", 'e.g. "max_tokens": 256')


def _check_request(value: dict, typed: dict, item: SuiteItem, base: Path, report: _Reporter) -> None:
    """prompt or messages, system, images (VALUE: the line as written, TYPED: its values of the
    right type)."""
    has_prompt, has_messages = "prompt" in value, "messages" in value
    if has_prompt == has_messages:
        report(
            "both prompt and messages" if has_prompt else "no prompt or messages",
            'one of "prompt" (a string) or "messages" (OpenAI chat messages)',
            'e.g. "prompt": "What is 2 + 2?"',
        )
    elif "prompt" in typed:
        if typed["prompt"].strip():
            item.prompt = typed["prompt"]
        else:
            report(f"prompt is {typed['prompt']!r}", "a non-empty string")
    elif "messages" in typed:
        problem = _messages_problem(typed["messages"])
        if problem:
            report(problem, MESSAGES, 'or use "prompt" for a single user message')
        else:
            item.messages = typed["messages"]
    if "system" in typed:
        if item.messages and any(m["role"] == "system" for m in item.messages):
            report("system given twice (the field and a system message)", "one of them", "remove one")
        else:
            item.system = typed["system"]
    if "image" in typed:
        item.images = _check_images(typed["image"], base, report)


def _messages_problem(messages: list[dict[str, Any]]) -> str | None:
    if not messages:
        return f"messages is {messages!r}"
    for i, m in enumerate(messages):
        if m.get("role") not in ROLES:
            return f"messages[{i}] has no valid role (got {m!r:.60})"
        content = m.get("content")
        parts_ok = isinstance(content, list) and all(isinstance(p, dict) and "type" in p for p in content)
        if not isinstance(content, str) and not parts_ok:
            return f"messages[{i}].content is {content!r:.60}"
    if messages[-1]["role"] != "user":
        return f"the last message is from the {messages[-1]['role']}"
    return None


def _check_images(value: str | list[str], base: Path, report: _Reporter) -> tuple[Path, ...]:
    names = [value] if isinstance(value, str) else value
    if not names:
        report(f"image is {value!r}", "a path or a list of paths", 'e.g. "image": "images/chart.png"')
        return ()
    paths = []
    for name in names:
        path = base / name
        if path.suffix.lower() not in IMAGE_TYPES:
            report(f"image {name!r} is not a PNG or JPEG", "a .png, .jpg or .jpeg file", "convert it to PNG")
        elif not path.is_file():
            nearby = [p.name for p in path.parent.iterdir()] if path.parent.is_dir() else []
            guess = did_you_mean(path.name, nearby)
            report(
                f"image file {name!r} not found (looked for {path})",
                "a path relative to the suite file's folder",
                f"did you mean {str(Path(name).parent / guess)!r}?" if guess else "check the path",
            )
        else:
            paths.append(path)
    return tuple(paths)


def _check_scoring(value: dict, typed: dict, item: SuiteItem, default_judge: str, report: _Reporter) -> None:
    """judge, the judge-specific fields and expected (VALUE: the line as written, TYPED: its
    values of the right type)."""
    judge = value.get("judge", default_judge)
    if not isinstance(judge, str) or judge not in JUDGES:
        report(f"unknown judge {judge!r}", f"one of {', '.join(JUDGES)}", _guess(judge, list(JUDGES)))
        return  # the rest depends on the judge
    item.judge = judge
    for key, judges in JUDGE_FIELDS.items():
        if key in value and judge not in judges:
            report(
                f"{key} is read only by the {' and '.join(judges)} judge{'s' if len(judges) > 1 else ''}, "
                f"and this item is judged by {judge}",
                f'"judge": "{judges[0]}"',
                f"remove {key} or set the judge",
            )
    if "tolerance" in typed:
        if 0 <= typed["tolerance"] < 1:
            item.tolerance = typed["tolerance"]
        else:
            report(f"tolerance is {value['tolerance']!r}", "a relative tolerance in [0, 1)", "e.g. 0.02 (2%)")
    if "iou_threshold" in typed:
        if 0 < typed["iou_threshold"] <= 1:
            item.iou_threshold = typed["iou_threshold"]
        else:
            report(f"iou_threshold is {value['iou_threshold']!r}", "a number in (0, 1]", "e.g. 0.5")
    item.fullmatch = typed.get("fullmatch", False)
    if (judge == "choice" and "choices" not in value) or "choices" in typed:
        choices = typed.get("choices")
        if choices is not None and 2 <= len(choices) <= 26 and all(c.strip() for c in choices):
            item.choices = tuple(choices)
        else:
            report(
                "no choices" if choices is None else f"choices is {choices!r:.80}",
                "a list of 2 to 26 non-empty strings",
                'e.g. "choices": ["red", "blue", "green"]',
            )
    if "expected" not in value and judge != "json":
        report(f"no expected answer for the {judge} judge", EXPECTED[judge], 'add "expected"')
        return
    item.expected = value.get("expected")
    problem = _expected_problem(judge, item)
    if problem:
        report(problem, EXPECTED[judge])


def _expected_problem(judge: str, item: SuiteItem) -> str | None:
    """What is wrong with `expected` for its judge, or None."""
    expected = item.expected
    got = f"`expected` is {expected!r:.80}"
    if judge == "exact":
        answers = expected if isinstance(expected, list) and expected else [expected]
        ok = all((isinstance(a, str) and a.strip()) or _is_number(a) for a in answers)
        return None if ok else got
    if judge == "f1":
        return None if isinstance(expected, dict) and expected else got
    if judge == "iou":
        if not isinstance(expected, list):
            return got
        bad = next((i for i, e in enumerate(expected) if not _is_box(e)), None)
        return None if bad is None else f"`expected`[{bad}] is {expected[bad]!r:.80}"
    if judge == "json":
        return _schema_problem(expected)
    if judge == "regex":
        if not isinstance(expected, str):
            return got
        try:
            re.compile(expected)
        except re.error as err:
            return f"`expected` is not a valid regex ({err})"
        return None
    if judge == "choice":
        if not isinstance(expected, str) or not item.choices:
            return got if not isinstance(expected, str) else None  # missing choices reported already
        return None if choice_index(expected, item.choices) is not None else f"{got}, which names no option"
    raise AssertionError(judge)


def _is_box(entry: Any) -> bool:
    if not isinstance(entry, dict) or not isinstance(entry.get("label"), str) or "bbox" not in entry:
        return False
    b = entry["bbox"]
    return isinstance(b, list) and len(b) == 4 and all(map(_is_number, b)) and b[0] <= b[2] and b[1] <= b[3]


def _schema_problem(schema: Any) -> str | None:
    if schema is None:
        return None
    if not isinstance(schema, dict):
        return f"`expected` is {schema!r:.80}, not a JSON Schema object"
    import jsonschema

    schema = json_schema(schema)
    try:
        validator = schema_validator(schema)
    except jsonschema.SchemaError as err:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.path)
        hint = f" (a type is one of {', '.join(JSON_TYPES)})" if err.validator in ("type", "anyOf") else ""
        return f"`expected`{where} is not a valid JSON Schema: {err.message:.120}{hint}"
    # JSON Schema ignores keywords it does not know, so a typo ("requires") would accept anything
    known = set(validator.VALIDATORS) | ANNOTATIONS
    nested = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    for where, sub in [("", schema)] + [(f".properties.{k}", v) for k, v in nested.items()]:
        unknown = [k for k in sub if k not in known] if isinstance(sub, dict) else []
        if unknown:
            close = did_you_mean(unknown[0], known)
            hint = f"; did you mean {close!r}?" if close else ""
            return f"`expected`{where} has {unknown[0]!r}, not a JSON Schema keyword{hint}"
    return None


# keywords that annotate rather than validate (jsonschema has no validator function for them)
ANNOTATIONS = {
    *("$schema", "$id", "$defs", "definitions", "$comment", "$anchor", "$dynamicAnchor", "$vocabulary"),
    *("title", "description", "default", "examples", "deprecated", "readOnly", "writeOnly", "format"),
    *("contentMediaType", "contentEncoding", "contentSchema"),
}
