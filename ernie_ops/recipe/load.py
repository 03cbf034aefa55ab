"""Load a recipe exactly as ERNIEKit does, remembering where each key came from.

ERNIEKit: `yaml.safe_load(file)` merged with `OmegaConf.from_cli(overrides)`, then
`OmegaConf.to_container`. We do the same to get the values it will see, and compose the YAML
node tree alongside to know each key's line (and catch duplicate keys, which PyYAML resolves
silently by keeping the last).

Whatever the file holds, loading it is bounded: only a regular file is read (a FIFO would block,
`/dev/zero` never ends), aliases may not expand into more than ALIAS_BUDGET values (a "billion
laughs" document is a few lines; ERNIEKit's OmegaConf merge copies every expanded value), and
values may not nest deeper than MAX_DEPTH (Python's YAML parser, which ERNIEKit uses, recurses).
libyaml parses when present (the same YAML 1.1 grammar, several times faster); when it finds an
error, the pure-Python parser ERNIEKit uses gives the verdict and the message.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ernie_ops.recipe.problems import Problem, error, warning

RESERVED_BLOCK = "ernie_ops"  # our metadata; ERNIEKit's parser drops unknown top-level keys
ALIAS_BUDGET = 100_000  # values aliases may add to a document; real recipes add a handful
MAX_DEPTH = 64  # ERNIEKit's arguments are plain values, lists and small mappings
MAX_BYTES = 100 << 20  # a recipe is a few KB; this is a dataset or a log given by mistake


@dataclass
class LoadedRecipe:
    path: Path
    values: dict[str, Any]  # what ERNIEKit's parser receives
    lines: dict[str, int] = field(default_factory=dict)  # top-level key -> 1-based line in the file
    overridden: dict[str, str] = field(default_factory=dict)  # key -> the override that set it
    in_file: set[str] = field(default_factory=set)  # keys written in the file itself

    def where(self, key: str | None = None) -> str:
        if key in self.overridden:
            return override_where(self.overridden[key])
        if key in self.lines:
            return f"{self.path}:{self.lines[key]}"
        return str(self.path)

    def given(self, key: str) -> bool:
        """Set by the user (file or override), not left to ERNIEKit's default."""
        return key in self.values

    @property
    def metadata(self) -> dict[str, Any]:
        block = self.values.get(RESERVED_BLOCK)
        return block if isinstance(block, dict) else {}


def override_where(item: str) -> str:
    """Where an override's problem is: the override itself, shortened when it is long."""
    return f"override '{item if len(item) <= 80 else item[:77] + '...'}'"


def load_recipe(
    path: Path, overrides: list[str] | tuple[str, ...] = ()
) -> tuple[LoadedRecipe | None, list[Problem]]:
    """The recipe and the problems found while reading it; None when it cannot be read at all."""
    path = Path(path)
    text, problem = _read_text(path)
    if problem:
        return None, [problem]
    assert text is not None
    problem = _alias_problem(text, str(path))
    if problem:
        return None, [problem]
    import yaml

    try:
        root, values = _parse(text)
    except yaml.YAMLError as err:
        return None, [_yaml_error(path, err)]
    if root is None:
        return None, [error(str(path), None, "the recipe is empty", "a recipe is `key: value` lines")]
    if not isinstance(values, dict):
        kind = "a list" if isinstance(values, list) else f"a single value ({values!r})"
        return None, [
            error(
                f"{path}:{root.start_mark.line + 1}",
                None,
                f"expected `key: value` pairs at the top level, found {kind}",
                "write one ERNIEKit argument per line, e.g. `learning_rate: 1.0e-5`",
            )
        ]
    problems: list[Problem] = []
    recipe = LoadedRecipe(path=path, values={})
    for key_node, _ in root.value:
        key, line = key_node.value, key_node.start_mark.line + 1
        if not isinstance(key, str) or key_node.tag != "tag:yaml.org,2002:str":
            problems.append(
                error(f"{path}:{line}", str(key), "a key must be a name", "quote it or rename it")
            )
            continue
        if key in recipe.lines:
            problems.append(
                warning(
                    f"{path}:{line}",
                    key,
                    f"set twice (lines {recipe.lines[key]} and {line}); ERNIEKit uses the last one",
                    "delete one of them",
                )
            )
        recipe.lines[key] = line
    deep = next((k for k, v in values.items() if _too_deep(v)), None)
    if deep is not None:
        return None, [_deep_error(recipe.where(deep) if isinstance(deep, str) else str(path), str(deep))]
    recipe.in_file = {k for k in values if isinstance(k, str)}
    merged, override_problems = _merge_overrides(values, overrides, recipe)
    problems += override_problems
    recipe.values = merged
    return recipe, problems


def _parse(text: str) -> tuple[Any, Any]:
    """(the node tree, the values) of one YAML document, parsed once."""
    import yaml

    fast = getattr(yaml, "CSafeLoader", None)
    if fast is not None:
        try:
            return _parse_with(fast, text)
        except yaml.YAMLError as err:
            if "nesting depth" in _yaml_message(err):
                raise  # libyaml's limit (1,000 levels): Python's parser would only recurse out
            fast_error = err  # ERNIEKit's parser decides, and its message is the one to show
    try:
        return _parse_with(yaml.SafeLoader, text)
    except RecursionError:
        # libyaml stops at 1,000 levels (with a line); Python's parser, as in ERNIEKit, recurses
        raise fast_error if fast is not None else yaml.YAMLError("nested too deeply") from None


def _parse_with(loader_class: Any, text: str) -> tuple[Any, Any]:
    import gc

    loader = loader_class(text)
    collecting = gc.isenabled()
    gc.disable()  # a node tree holds no cycles (aliases into themselves are refused before)
    try:
        root = loader.get_single_node()
        return root, loader.construct_document(root) if root is not None else None
    finally:
        loader.dispose()
        if collecting:
            gc.enable()


def _alias_problem(text: str, where: str, in_file: bool = True) -> Problem | None:
    """An error when the aliases in TEXT (the file WHERE, or an override) expand into more than
    ALIAS_BUDGET values, or into themselves. Counted on the parser's events: nothing is expanded."""
    if "*" not in text:
        return None  # no alias without a '*': the common case costs one scan of the text
    import yaml
    from yaml.events import AliasEvent, CollectionEndEvent, CollectionStartEvent, ScalarEvent

    sizes: dict[str, int] = {}  # anchor -> the number of values it stands for
    open_: list[list[Any]] = []  # [values so far, anchor] for each collection being read
    added = 0
    try:
        for event in yaml.parse(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
            if isinstance(event, CollectionStartEvent):
                open_.append([1, event.anchor])
                continue
            if isinstance(event, AliasEvent):
                line = f"{where}:{event.start_mark.line + 1}" if in_file else where
                if any(anchor == event.anchor for _, anchor in open_):
                    return error(
                        line,
                        None,
                        f"the alias *{event.anchor} is inside its own anchor: a value that contains "
                        "itself, which ERNIEKit cannot read",
                        f"write the value out instead of *{event.anchor}",
                    )
                size = sizes.get(event.anchor, 1)
                added += size - 1
                if added > ALIAS_BUDGET:
                    return error(
                        line,
                        None,
                        f"the alias *{event.anchor} takes the aliases in this document past "
                        f"{ALIAS_BUDGET:,} values (an alias bomb?); ERNIEKit would copy every one",
                        "write the values out; a recipe needs no nested aliases",
                    )
            elif isinstance(event, ScalarEvent):
                size = 1
                if event.anchor:
                    sizes[event.anchor] = 1
            elif isinstance(event, CollectionEndEvent):
                size, anchor = open_.pop()
                if anchor:
                    sizes[anchor] = size
            else:
                continue
            if open_:
                open_[-1][0] += size
    except yaml.YAMLError:
        return None  # the parse reports it, with ERNIEKit's parser's message
    return None


def _too_deep(value: Any, depth: int = 0) -> bool:
    if depth > MAX_DEPTH:
        return True
    if isinstance(value, dict):
        return any(_too_deep(v, depth + 1) for v in value.values())
    if isinstance(value, list):
        return any(_too_deep(v, depth + 1) for v in value)
    return False


def _deep_error(where: str, key: str | None) -> Problem:
    return error(
        where,
        key,
        f"nested more than {MAX_DEPTH} levels deep; ERNIEKit's arguments are plain values, lists "
        "and small mappings (and its YAML parser fails on deep nesting)",
        "flatten the value",
    )


def _yaml_error(path: Path, err: Exception) -> Problem:
    problem = _yaml_message(err)
    mark = getattr(err, "problem_mark", None)
    opened = getattr(err, "context_mark", None)
    if "end of stream" in problem and opened is not None:
        # an unclosed quote or bracket: the useful line is where it was opened
        mark, problem = opened, f"{getattr(err, 'context', '')} that is never closed".strip()
    where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
    if "nesting depth" in problem:
        return _deep_error(where, None)
    return error(
        where,
        None,
        f"not valid YAML: {problem}",
        "check the indentation and quoting on that line (YAML uses spaces, not tabs)",
    )


def _yaml_message(err: Exception) -> str:
    return " ".join(str(getattr(err, "problem", "") or err).split())


def _read_text(path: Path) -> tuple[str | None, Problem | None]:
    if not path.exists() and not path.is_symlink():
        siblings = sorted(p.name for p in path.parent.glob("*.y*ml")) if path.parent.is_dir() else []
        from ernie_ops.errors import did_you_mean

        guess = did_you_mean(path.name, siblings)
        return None, error(
            str(path), None, "no such file", f"did you mean {path.parent / guess}?" if guess else ""
        )
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.y*ml"))[:5]
        hint = f"recipes in it: {', '.join(inside)}" if inside else "give the path of a .yaml file"
        return None, error(str(path), None, "is a directory, expected a recipe YAML file", hint)
    if path.suffix not in (".yaml", ".yml"):
        return None, error(
            str(path),
            None,
            f"ERNIEKit reads only .yaml/.yml files as recipes (got '{path.suffix or 'no suffix'}'); "
            "anything else is parsed as command-line arguments",
            f"rename it to {path.with_suffix('.yaml').name}",
        )
    from ernie_ops.errors import UserError
    from ernie_ops.files import regular_file

    try:
        size = regular_file(path, "recipe").stat().st_size  # a FIFO or a device is never opened
        if size > MAX_BYTES:
            raise UserError(
                f"{size / (1 << 20):.0f} MB is not a recipe (a recipe is a few KB)",
                hint="give the recipe's YAML file",
            )
        data = path.read_bytes()
    except UserError as err:
        return None, error(str(path), None, err.message, err.hint or "")
    except OSError as err:
        return None, error(str(path), None, f"cannot read it: {err.strerror or err}")
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        return None, error(
            f"{path}:{line}",
            None,
            f"not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start})",
            "save the file as UTF-8",
        )


def _merge_overrides(
    values: dict, overrides: list[str] | tuple[str, ...], recipe: LoadedRecipe
) -> tuple[dict, list[Problem]]:
    dates = [k for k, v in values.items() if isinstance(v, datetime.date)]
    if dates:  # the one YAML type OmegaConf cannot hold
        return values, [
            error(
                recipe.where(k),
                k,
                f"YAML reads {values[k]} as a date, which ERNIEKit's OmegaConf merge rejects",
                f'quote it: {k}: "{values[k]}"',
            )
            for k in dates
        ]
    if not overrides:
        return values, []  # merging nothing is the identity; skip OmegaConf's slow import
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    problems: list[Problem] = []
    good = []
    for item in overrides:
        key, _, value = item.partition("=")
        key = key.strip()
        where = override_where(item)
        if "=" not in item or not key:
            problems.append(
                error(
                    where,
                    None,
                    "an override is `key=value`",
                    f"e.g. `{item}=...`" if item and "=" not in item else "",
                )
            )
            continue
        problem = _alias_problem(value, where, in_file=False)
        if problem is None:
            problem = _override_problem(where, key, item)
        if problem:
            problems.append(problem)
            continue
        good.append(item)
        recipe.overridden[key.split(".")[0]] = item
    try:
        merged = OmegaConf.to_container(OmegaConf.merge(values, OmegaConf.from_cli(good)))
    except (OmegaConfBaseException, ValueError, TypeError) as err:
        problems.append(
            error(str(recipe.path), None, f"ERNIEKit's OmegaConf merge fails: {err}".splitlines()[0])
        )
        merged = dict(values)
    assert isinstance(merged, dict)
    return merged, problems


def _override_problem(where: str, key: str, item: str) -> Problem | None:
    """An error when OmegaConf (as ERNIEKit calls it) cannot read the override ITEM."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        parsed = OmegaConf.to_container(OmegaConf.from_dotlist([item]))
    except yaml.YAMLError as err:
        problem = _yaml_message(err)
        if "nesting depth" in problem:
            return _deep_error(where, key)
        return error(
            where,
            key,
            f"the value is not valid YAML: {problem}",
            "the text after `=` is read as YAML: close its brackets and quotes, or quote it as text "
            f"({key}='\"...\"')",
        )
    except RecursionError:
        return _deep_error(where, key)
    except (OmegaConfBaseException, ValueError, TypeError) as err:
        return error(where, key, f"cannot be parsed: {err}".splitlines()[0])
    return _deep_error(where, key) if _too_deep(parsed) else None
