"""Load a recipe exactly as ERNIEKit does, remembering where each key came from.

ERNIEKit: `yaml.safe_load(file)` merged with `OmegaConf.from_cli(overrides)`, then
`OmegaConf.to_container`. We do the same to get the values it will see, and compose the YAML
node tree alongside to know each key's line (and catch duplicate keys, which PyYAML resolves
silently by keeping the last).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ernie_ops.recipe.problems import Problem, error, warning

RESERVED_BLOCK = "ernie_ops"  # our metadata; ERNIEKit's parser drops unknown top-level keys


@dataclass
class LoadedRecipe:
    path: Path
    values: dict[str, Any]  # what ERNIEKit's parser receives
    lines: dict[str, int] = field(default_factory=dict)  # top-level key -> 1-based line in the file
    overridden: dict[str, str] = field(default_factory=dict)  # key -> the override that set it
    in_file: set[str] = field(default_factory=set)  # keys written in the file itself

    def where(self, key: str | None = None) -> str:
        if key in self.overridden:
            return f"override '{self.overridden[key]}'"
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


def load_recipe(
    path: Path, overrides: list[str] | tuple[str, ...] = ()
) -> tuple[LoadedRecipe | None, list[Problem]]:
    """The recipe and the problems found while reading it; None when it cannot be read at all."""
    path = Path(path)
    text, problem = _read_text(path)
    if problem:
        return None, [problem]
    assert text is not None
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        values = yaml.safe_load(text)
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
    recipe.in_file = {k for k in values if isinstance(k, str)}
    merged, override_problems = _merge_overrides(values, overrides, recipe)
    problems += override_problems
    recipe.values = merged
    return recipe, problems


def _yaml_error(path: Path, err: Exception) -> Problem:
    problem = " ".join(str(getattr(err, "problem", "") or err).split())
    mark = getattr(err, "problem_mark", None)
    opened = getattr(err, "context_mark", None)
    if "end of stream" in problem and opened is not None:
        # an unclosed quote or bracket: the useful line is where it was opened
        mark, problem = opened, f"{getattr(err, 'context', '')} that is never closed".strip()
    line = f":{mark.line + 1}" if mark is not None else ""
    return error(
        f"{path}{line}",
        None,
        f"not valid YAML: {problem}",
        "check the indentation and quoting on that line (YAML uses spaces, not tabs)",
    )


def _read_text(path: Path) -> tuple[str | None, Problem | None]:
    if not path.exists():
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
    data = path.read_bytes()
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
        key = item.split("=", 1)[0].strip()
        if "=" not in item or not key:
            problems.append(
                error(
                    f"override '{item}'",
                    None,
                    "an override is `key=value`",
                    f"e.g. `{item}=...`" if item and "=" not in item else "",
                )
            )
            continue
        try:
            OmegaConf.from_dotlist([item])
        except OmegaConfBaseException as err:
            problems.append(error(f"override '{item}'", key, f"cannot be parsed: {err}".splitlines()[0]))
            continue
        good.append(item)
        recipe.overridden[key.split(".")[0]] = item
    try:
        merged = OmegaConf.to_container(OmegaConf.merge(values, OmegaConf.from_cli(good)))
    except OmegaConfBaseException as err:
        problems.append(
            error(str(recipe.path), None, f"ERNIEKit's OmegaConf merge fails: {err}".splitlines()[0])
        )
        merged = dict(values)
    assert isinstance(merged, dict)
    return merged, problems
