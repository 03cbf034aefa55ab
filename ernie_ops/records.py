"""Records kept as one JSON file in their directory (`pipeline.json`, `sweep.json`, `run.json`).

A command writes its record atomically after every step, so an interrupted one resumes from the
file alone; reading it back turns a missing, cut short, hand-edited or other-version file into an
error that names the file (and the line, for broken JSON) and says what to do, never a traceback.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from ernie_ops.errors import UserError
from ernie_ops.files import write_text_atomic

T = TypeVar("T")
R = TypeVar("R", bound="DirRecord")


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class RecordFile:
    """Where one kind of record lives and how its errors speak of it."""

    name: str  # the file in the directory: "sweep.json"
    kind: str  # what the directory holds, in messages: "sweep"
    command: str  # the command that makes one: "ernie-ops sweep"
    example: str  # a directory it makes: "sweeps/<name>-<time>"

    def path(self, directory: str | Path) -> Path:
        return Path(directory) / self.name

    def save(self, record: Any, directory: str | Path) -> Path:
        """Write the dataclass RECORD into DIRECTORY atomically (a crash never leaves half a record)."""
        return write_text_atomic(
            self.path(directory), json.dumps(asdict(record), indent=2, default=str) + "\n"
        )

    def load(self, directory: str | Path, build: Callable[[dict[str, Any]], T]) -> T:
        """BUILD applied to the JSON object in DIRECTORY's record; a UserError when there is none or
        it is not one this version reads."""
        path = self.path(directory)
        if not path.is_file():
            raise UserError(
                f"{directory} is not a {self.kind} directory (no {self.name})",
                hint=f"give the directory `{self.command}` printed, e.g. {self.example}",
            )
        with self.reading(directory):
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise TypeError(f"a JSON {type(data).__name__} where an object was expected")
            return build(data)

    @contextlib.contextmanager
    def reading(self, directory: str | Path) -> Iterator[None]:
        """Turns what a damaged or foreign record raises while it is read (also by the caller, e.g.
        rebuilding the spec it holds) into a UserError naming the file."""
        path = self.path(directory)
        hint = (
            f"it was cut short, edited, or written by another ernie-ops version: restore it, "
            f"or start a new {self.kind} with `{self.command}`"
        )
        try:
            yield
        except json.JSONDecodeError as err:
            raise UserError(
                f"not a {self.kind} record this version reads (broken JSON: {err.msg}, column {err.colno})",
                where=f"{path}:{err.lineno}",
                hint=hint,
            ) from None
        except OSError as err:
            raise UserError(f"cannot read {path}: {err.strerror}") from None
        except (ValueError, TypeError, AttributeError, KeyError) as err:
            raise UserError(
                f"not a {self.kind} record this version reads ({err})", where=str(path), hint=hint
            ) from None

    def refuse_existing(self, directory: str | Path) -> None:
        """A new record never replaces one: that run is continued with --resume."""
        if self.path(directory).exists():
            raise UserError(
                f"{directory} already holds a {self.kind}", hint=f"{self.command} --resume {directory}"
            )


@dataclass
class DirRecord:
    """A command's record in its directory (the pipeline's, a sweep's): what it was started with and
    where it stands. A subclass names its STORE and rebuilds its nested parts in `from_json`."""

    STORE: ClassVar[RecordFile]

    name: str
    dir: str
    spec: dict[str, Any]  # the spec as started: --resume runs it, not an edited file
    created: str = field(default_factory=utc_now)
    status: str = "running"  # then how it ended (the subclass's words)

    @property
    def path(self) -> Path:
        return Path(self.dir)

    def save(self) -> Path:
        return self.STORE.save(self, self.path)

    @classmethod
    def load(cls: type[R], directory: str | Path) -> R:
        return cls.STORE.load(directory, cls.from_json)

    @classmethod
    def from_json(cls: type[R], data: dict[str, Any]) -> R:
        return cls(**data)
