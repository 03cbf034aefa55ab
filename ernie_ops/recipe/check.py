"""`ernie-ops check`: every problem of a recipe at once, before anything heavy starts."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ernie_ops.recipe.load import load_recipe
from ernie_ops.recipe.problems import ERROR, WARNING, Problem, warning
from ernie_ops.recipe.rules import RULES, Context
from ernie_ops.recipe.schema import Schema, load_schema, snapshots

SHOWN = 100  # problems shown by default; a recipe with thousands needs the first ones fixed first


@dataclass
class CheckReport:
    recipe: Path
    schema: str
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == WARNING]

    def exit_code(self, strict: bool = False) -> int:
        return 1 if self.errors or (strict and self.warnings) else 0

    def summary(self) -> str:
        e, w = len(self.errors), len(self.warnings)
        verdict = "ok" if not e else "not ready to launch"
        return f"{self.recipe}: {e} error(s), {w} warning(s), {verdict} [{self.schema}]"

    def to_dict(self, limit: int | None = None) -> dict:
        shown = self.problems[:limit]
        return {
            "recipe": str(self.recipe),
            "schema": self.schema,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "problems": [p.to_dict() for p in shown],
            "not_shown": len(self.problems) - len(shown),
        }

    def render(self, limit: int | None = SHOWN) -> list[str]:
        """The problems (the first LIMIT, then a count of the rest) and the summary, as lines."""
        lines = [p.render() for p in self.problems[:limit]]
        rest = len(self.problems) - len(lines)
        if rest:
            lines.append(f"... and {rest:,} more problem(s) (--max-problems 0 shows them all)")
        return [*lines, self.summary()]


def check_recipe(
    path: Path | str,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    gpus: int | None = None,
    nnodes: int = 1,
    erniekit_version: str | None = None,
    cwd: Path | None = None,
    lint_data: bool = True,
) -> CheckReport:
    path = Path(path)
    recipe, problems = load_recipe(path, overrides)
    if recipe is None:
        return CheckReport(path, "not read", problems)
    schema, schema_problems = _pick_schema(
        erniekit_version, recipe.metadata.get("erniekit"), recipe.where("ernie_ops")
    )
    ctx = Context(recipe, schema, gpus, nnodes, cwd or Path.cwd(), lint_data)
    problems += schema_problems
    for rule in RULES:
        problems.extend(rule(ctx))
    problems.sort(key=_order)
    return CheckReport(path, schema.describe(), problems)


def _pick_schema(version: str | None, wanted: object, where: str) -> tuple[Schema, list[Problem]]:
    """The installed ERNIEKit's schema, unless the recipe declares (ernie_ops.erniekit) a version
    range the installed one is outside of: then the newest shipped snapshot inside it."""
    schema = load_schema(version)
    if version is not None or not isinstance(wanted, str):
        return schema, []
    from packaging.specifiers import InvalidSpecifier, SpecifierSet
    from packaging.version import InvalidVersion, Version

    try:
        spec = SpecifierSet(wanted)
        installed_ok = Version(schema.erniekit_version) in spec
    except (InvalidSpecifier, InvalidVersion):
        return schema, []
    if installed_ok:
        return schema, []
    inside = sorted((v for v in snapshots() if Version(v) in spec), key=Version)
    if not inside:
        return schema, [
            warning(
                where, "ernie_ops.erniekit", f"needs ERNIEKit {wanted}; this is {schema.erniekit_version}"
            )
        ]
    return load_schema(inside[-1]), [
        warning(
            where,
            "ernie_ops.erniekit",
            f"this recipe needs ERNIEKit {wanted} and {schema.erniekit_version} is installed here: "
            f"checked against the ERNIEKit {inside[-1]} schema, and it will not run with this install",
            "GPU nodes install ERNIEKit from source (scripts/setup_gpu.sh)",
        )
    ]


def _order(p: Problem) -> tuple[int, int, str]:
    """File-level problems first, then by line, then overrides; errors before warnings on a line."""
    match = re.search(r":(\d+)$", p.where)
    line = int(match.group(1)) if match else 0
    rank = 10**9 if p.where.startswith("override") else line
    return rank, 0 if p.severity == ERROR else 1, p.key or ""
