"""One way to read a config file into a typed object: serve profiles, pipeline specs, eval suites.

A spec is a dataclass whose annotations are the exact types its keys take (`int` is not `bool`,
`list[int]` is not `int`, `float` takes an int). `check` compares a mapping of values with it and
returns the object with every problem of the mapping at once, each with where it is (`file:line`),
the key, what was expected and a fix: an unknown key gets a did-you-mean, a value of the wrong type
gets an example of a right one. The specs' own rules (values that depend on each other) run on the
object afterwards.

Files are read by `load_yaml`, the recipe loader (ernie_ops.recipe.load): only a regular file, aliases
and nesting bounded, the line of every top-level key, `--set key=value` overrides merged as ERNIEKit
merges them. JSONL records (eval suites) come with their line from ernie_ops.data.read. ERNIEKit
recipes are checked against ERNIEKit's own schema instead (ernie_ops.recipe.rules).

Types are checked with msgspec (`convert(..., strict=True)`), a light import.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from ernie_ops.errors import UserError, did_you_mean
from ernie_ops.recipe.load import LoadedRecipe, load_recipe
from ernie_ops.recipe.problems import Problem, error

T = TypeVar("T")
Where = Callable[..., str]  # where(key=None) -> "file:line" of the key (the file when None)


def load_yaml(
    path: Path, sets: list[str] | tuple[str, ...] = ()
) -> tuple[LoadedRecipe | None, list[Problem]]:
    """The values of a YAML file with `key=value` overrides merged, the line of each key, and the
    problems met reading it; None when it cannot be read at all."""
    return load_recipe(Path(path), sets)


def text_overrides(cls: type, loaded: LoadedRecipe) -> dict[str, Any]:
    """LOADED's values, where a text-only field of CLS set by an override that YAML read as
    something else (`host=::` is `{':': None}`) holds the override's text as typed."""
    values = dict(loaded.values)
    hints = field_types(cls)
    for key, item in loaded.overridden.items():
        if key in hints and _text_only(hints[key]) and not isinstance(values.get(key), str | None):
            values[key] = item.split("=", 1)[1].strip()
    return values


def check(
    cls: type[T],
    values: Mapping[Any, Any],
    where: Where,
    what: str,
    required_fix: Mapping[str, str] | None = None,
) -> tuple[T | None, list[Problem]]:
    """An instance of the dataclass CLS from VALUES, and every problem found: unknown keys (with
    did-you-mean), values of the wrong type, required keys missing (REQUIRED_FIX: key -> a fix).
    None when there is any problem. WHAT names the spec in messages ("unknown WHAT key")."""
    clean, problems = check_fields(cls, values, where, what)
    problems += missing(cls, values, where, required_fix)
    if problems:
        return None, problems
    return cls(**clean), problems


def missing(
    cls: type, values: Mapping[Any, Any], where: Where, required_fix: Mapping[str, str] | None = None
) -> list[Problem]:
    """`key: not set` for each field of CLS without a default that VALUES lacks."""
    return [
        error(where(), f.name, "not set", (required_fix or {}).get(f.name, ""))
        for f in dataclasses.fields(cls)
        if f.init
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
        and f.name not in values
    ]


def check_fields(
    cls: type, values: Mapping[Any, Any], where: Where, what: str
) -> tuple[dict[str, Any], list[Problem]]:
    """The values of VALUES that are fields of CLS with the right type (converted: an int given for
    a float is a float), and a problem for each of the others, in the order of their lines."""
    clean, wrong, unknown = convert_fields(cls, values)
    hints = field_types(cls)
    problems = [
        error(
            where(key),
            key,
            f"unknown {what} key",
            f"did you mean {guess!r}?" if guess else f"the keys are {', '.join(hints)}",
        )
        for key, guess in unknown
    ]
    for m in wrong:
        message = f"expected {m.expected}, got {_short(m.value)}"
        problems.append(error(where(m.key), m.key, message + (f" ({m.detail})" if m.detail else ""), m.fix))
    return clean, sorted(problems, key=lambda p: _line(p.where))


@dataclasses.dataclass(frozen=True)
class Mismatch:
    """A value of the wrong type: KEY's VALUE, the type EXPECTED (in words), which item of a
    container is at fault (DETAIL, e.g. `gpus[0]: expected int, got str`) and a FIX."""

    key: str
    value: Any
    expected: str
    detail: str = ""
    fix: str = ""


def convert_fields(
    cls: type, values: Mapping[Any, Any]
) -> tuple[dict[str, Any], list[Mismatch], list[tuple[str, str | None]]]:
    """(the values of the right type, converted; the values of the wrong type; the unknown keys
    with the closest known one or None). The types are CLS's annotations; a field's metadata may
    word them for people: `field(metadata={"expected": "a positive integer", "fix": "e.g. 4"})`."""
    import msgspec

    hints = field_types(cls)
    clean: dict[str, Any] = {}
    wrong: list[Mismatch] = []
    unknown: list[tuple[str, str | None]] = []
    for key, value in values.items():
        hint = hints.get(key) if isinstance(key, str) else None
        if hint is None:
            unknown.append((str(key), did_you_mean(str(key), list(hints))))
            continue
        try:
            clean[key] = msgspec.convert(value, hint, strict=True)
        except msgspec.ValidationError as err:
            wrong.append(_mismatch(cls, key, value, hint, str(err)))
    return clean, wrong, unknown


def _mismatch(cls: type, key: str, value: Any, hint: Any, detail: str) -> Mismatch:
    """`expected list[int]`, the item at fault in a container, and an example of a right value."""
    meta = field_metadata(cls)[key]
    inner, _, at = detail.partition(" - at ")
    inner, at = inner.replace("`", ""), at.replace("`", "")
    notes = []
    if at and at != "$":
        notes.append(f"{at.replace('$', key)}: {inner[0].lower()}{inner[1:]}")
    if isinstance(value, bool):
        notes.append("YAML reads true/false, yes/no and on/off as booleans")
    example = _example(cls, key)
    fix = meta.get("fix") or (f"e.g. {key}: {example}" if example else "")
    return Mismatch(key, value, meta.get("expected") or describe(hint), "; ".join(notes), fix)


def describe(hint: Any) -> str:
    """A type as written in a spec, read by a person: `list[int] or null`, `bool`, `mapping`."""
    if hint is Any:
        return "any value"
    if hint is type(None):
        return "null"
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if hint is dict or origin is dict:
        return "mapping" if not args or args[1] is Any else f"mapping of {describe(args[1])}"
    if hint is list or origin in (list, tuple):
        item = args[0] if args else Any
        return "list" if item is Any else f"list[{describe(item)}]"
    return getattr(hint, "__name__", str(hint))


def raise_problems(title: str, problems: list[Problem], hint: str | None = None) -> None:
    """A UserError listing the errors among PROBLEMS (each `file:line: error: key: what` and its fix),
    when there is any."""
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise UserError(f"{title}:\n" + "\n".join(p.render() for p in errors), hint=hint)


@cache
def field_metadata(cls: type) -> dict[str, Mapping[str, Any]]:
    """The metadata of each field of the dataclass CLS (`expected`, `fix`: see convert_fields)."""
    return {f.name: f.metadata for f in dataclasses.fields(cls)}


@cache
def field_types(cls: type) -> dict[str, Any]:
    """The settable fields of the dataclass CLS and their types, in declaration order."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _text_only(hint: Any) -> bool:
    """`str` or `str | None` (not `list[str]`: a list override is YAML, `[a=1, b=2]`)."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    args = set(typing.get_args(hint)) - {type(None)} if union else {hint}
    return args == {str}


def _example(cls: type, key: str) -> str | None:
    f = next(f for f in dataclasses.fields(cls) if f.name == key)
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if value is dataclasses.MISSING or value is None or value == [] or value == {}:
        return None
    return json.dumps(value)


def _line(where: str) -> int:
    line = where.rpartition(":")[2]
    return int(line) if line.isdigit() else 0


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
