"""A problem found in a recipe: where, which key, what is wrong, what to do."""

from __future__ import annotations

from dataclasses import asdict, dataclass

ERROR, WARNING = "error", "warning"


@dataclass(frozen=True)
class Problem:
    severity: str  # error | warning
    where: str  # "recipes/x.yaml:12" or "override 'key=value'"
    key: str | None
    message: str  # what is wrong and what was expected
    fix: str = ""

    def render(self) -> str:
        head = f"{self.where}: {self.severity}: " + (f"{self.key}: " if self.key else "") + self.message
        return head + (f"\n    fix: {self.fix}" if self.fix else "")

    def to_dict(self) -> dict:
        return asdict(self)


def error(where: str, key: str | None, message: str, fix: str = "") -> Problem:
    return Problem(ERROR, where, key, message, fix)


def warning(where: str, key: str | None, message: str, fix: str = "") -> Problem:
    return Problem(WARNING, where, key, message, fix)
