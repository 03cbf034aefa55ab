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
    a float is a float), and a problem for each of the others."""
    import msgspec

    hints = field_types(cls)
    clean: dict[str, Any] = {}
    problems: list[Problem] = []
    for key, value in values.items():
        hint = hints.get(key) if isinstance(key, str) else None
        if hint is None:
            guess = did_you_mean(str(key), list(hints))
            fix = f"did you mean {guess!r}?" if guess else f"the keys are {', '.join(hints)}"
            problems.append(error(where(key), str(key), f"unknown {what} key", fix))
            continue
        try:
            clean[key] = msgspec.convert(value, hint, strict=True)
        except msgspec.ValidationError as err:
            problems.append(type_problem(cls, key, value, hint, str(err), where))
    return clean, problems


def type_problem(cls: type, key: str, value: Any, hint: Any, detail: str, where: Where) -> Problem:
    """`key: expected list[int], got 3` (with the item at fault for a container), and an example."""
    at = detail.partition(" - at ")[2].strip("`").replace("`", "")
    inner = detail.partition(" - at ")[0].replace("`", "")
    message = f"expected {describe(hint)}, got {_short(value)}"
    if at and at != "$":
        message += f" ({at.replace('$', key)}: {inner[0].lower()}{inner[1:]})"
    if isinstance(value, bool):
        message += " (YAML reads true/false, yes/no and on/off as booleans)"
    example = _example(cls, key)
    return error(where(key), key, message, f"e.g. {key}: {example}" if example else "")


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
def field_types(cls: type) -> dict[str, Any]:
    """The settable fields of the dataclass CLS and their types, in declaration order."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _text_only(hint: Any) -> bool:
    args = set(typing.get_args(hint)) - {type(None)} if typing.get_origin(hint) else {hint}
    return args == {str}


def _example(cls: type, key: str) -> str | None:
    f = next(f for f in dataclasses.fields(cls) if f.name == key)
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if value is dataclasses.MISSING or value is None or value == [] or value == {}:
        return None
    return json.dumps(value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
