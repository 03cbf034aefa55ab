"""ERNIEKit's recipe schema, taken from the installed ERNIEKit's own argument dataclasses.

`erniekit train x.yaml` hands the YAML to `PdArgumentParser(_TRAIN_ARGS).parse_dict`, which keeps
only the fields of those dataclasses and drops everything else without a word. The valid keys,
their types and defaults are therefore exactly the fields of `_TRAIN_ARGS`. Extracting them means
importing ERNIEKit (and so Paddle: seconds), so it runs once per ERNIEKit build in a subprocess
and is cached; snapshots for known versions ship in `ernie_ops/recipe/snapshots/` for machines without
ERNIEKit. Loading a cached schema imports nothing heavy.

    python -m ernie_ops.recipe.schema [OUT.json]   # extract from the installed ERNIEKit
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ernie_ops.errors import UserError

SNAPSHOT_DIR = Path(__file__).resolve().parent / "snapshots"
PINNED_VERSION = "1.0.1"  # constraints.txt: the only erniekit wheel that ships `ernie`
SCHEMA_FORMAT = 1


@dataclass(frozen=True)
class Field:
    name: str
    type: str  # int | float | str | bool | list | dict | any
    optional: bool
    default: Any
    choices: tuple[str, ...] | None
    groups: tuple[str, ...]  # the argument dataclasses that take it
    help: str


@dataclass(frozen=True)
class OtherVersion:
    """What another ERNIEKit version accepts: to say "only valid in 1.3.0" instead of "unknown"."""

    keys: frozenset[str]
    stages: tuple[str, ...]


@dataclass
class Schema:
    erniekit_version: str
    paddleformers_version: str
    fingerprint: str  # hash of the sources the schema was read from
    fields: dict[str, Field]
    stages: tuple[str, ...]  # `stage` values erniekit/train/tuner.py dispatches on
    compute_types: tuple[str, ...]  # `compute_type` values FinetuningArguments accepts
    source: str = "snapshot"  # snapshot | cache | extracted
    others: dict[str, OtherVersion] = field(default_factory=dict)  # other known ERNIEKit versions

    @classmethod
    def from_json(cls, data: dict, source: str) -> Schema:
        if data.get("format") != SCHEMA_FORMAT:
            raise ValueError(f"schema format {data.get('format')} (expected {SCHEMA_FORMAT})")
        fields = {
            name: Field(
                name=name,
                type=f["type"],
                optional=f["optional"],
                default=f["default"],
                choices=tuple(f["choices"]) if f["choices"] else None,
                groups=tuple(f["groups"]),
                help=f["help"],
            )
            for name, f in data["fields"].items()
        }
        return cls(
            erniekit_version=data["erniekit_version"],
            paddleformers_version=data["paddleformers_version"],
            fingerprint=data["fingerprint"],
            fields=fields,
            stages=tuple(data["stages"]),
            compute_types=tuple(data["compute_types"]),
            source=source,
        )

    def describe(self) -> str:
        return f"ERNIEKit {self.erniekit_version} schema ({self.source})"


# ---------------------------------------------------------------------------------------------
# Where the installed ERNIEKit is, without importing it


def _source_files() -> list[Path] | None:
    """The files that define the schema: ERNIEKit's hparams + tuner, PaddleFormers' TrainingArguments."""
    ek = importlib.util.find_spec("erniekit")  # a top-level find_spec imports nothing
    pf = importlib.util.find_spec("paddleformers")
    if ek is None or ek.origin is None or pf is None or pf.origin is None:
        return None
    ek_root, pf_root = Path(ek.origin).parent, Path(pf.origin).parent
    files = sorted((ek_root / "hparams").glob("*.py"))
    files += [ek_root / "train" / "tuner.py", pf_root / "trainer" / "training_args.py"]
    return [f for f in files if f.is_file()]


def installed_fingerprint() -> tuple[str, str] | None:
    """(erniekit version, source fingerprint) of the installed ERNIEKit, or None if absent."""
    import importlib.metadata as md  # ~20 ms: only when ERNIEKit is looked at

    files = _source_files()
    if not files:
        return None
    try:
        version = md.version("erniekit")
    except md.PackageNotFoundError:
        version = "source"
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode())
        digest.update(f.read_bytes())
    return version, digest.hexdigest()[:16]


def cache_dir() -> Path:
    root = os.environ.get("ERNIE_OPS_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "ernie-ops"
    )
    return Path(root) / "schema"


def snapshots() -> dict[str, Path]:
    """Shipped snapshots by ERNIEKit version."""
    found = {}
    for path in sorted(SNAPSHOT_DIR.glob("erniekit-schema-*.json")):
        found[path.stem.removeprefix("erniekit-schema-")] = path
    return found


# ---------------------------------------------------------------------------------------------
# Loading (fast, no paddle)


def load_schema(version: str | None = None) -> Schema:
    """The schema to validate against.

    With `version`: that shipped snapshot. Otherwise the installed ERNIEKit's (cache, shipped
    snapshot with the same fingerprint, or a fresh extraction); without ERNIEKit, the snapshot of
    the pinned version.
    """
    shipped = snapshots()
    if version is not None:
        if version not in shipped:
            raise UserError(
                f"no ERNIEKit {version} schema snapshot",
                hint=f"known: {', '.join(shipped)}; or install that ERNIEKit and omit --erniekit-version",
            )
        schema = _read(shipped[version], "snapshot")
    else:
        schema = _installed_schema(shipped)
    for other, path in shipped.items():
        if other != schema.erniekit_version:
            data = _read_json(path)
            schema.others[other] = OtherVersion(frozenset(data["fields"]), tuple(data["stages"]))
    return schema


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _read(path: Path, source: str) -> Schema:
    return Schema.from_json(_read_json(path), source)


def _installed_schema(shipped: dict[str, Path]) -> Schema:
    installed = installed_fingerprint()
    if installed is None:
        return _read(shipped[PINNED_VERSION], "snapshot; ERNIEKit not installed")
    version, fingerprint = installed
    cached = cache_dir() / f"erniekit-{version}-{fingerprint}.json"
    if cached.is_file():
        try:
            return _read(cached, "cache")
        except (ValueError, KeyError, json.JSONDecodeError):
            cached.unlink(missing_ok=True)  # stale or corrupt: extract again
    if version in shipped:
        snapshot = _read(shipped[version], "snapshot")
        if snapshot.fingerprint == fingerprint:
            return snapshot
    data = extract_in_subprocess()
    cached.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(cached, json.dumps(data, indent=1, sort_keys=True))
    return Schema.from_json(data, "extracted")


def extract_in_subprocess() -> dict:
    """Run the extraction in a child process: it imports Paddle, this process must not."""
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "schema.json"
        result = subprocess.run(
            [sys.executable, "-m", "ernie_ops.recipe.schema", str(out)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if result.returncode != 0 or not out.is_file():
            tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
            raise UserError(
                "could not read the installed ERNIEKit's argument schema",
                hint=f"`python -c 'import erniekit.hparams'` must work; it said:\n{tail}",
            )
        return _read_json(out)


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Extraction (imports ERNIEKit; run as a module)


def _describe_type(tp: Any) -> tuple[str, bool, list[str] | None]:
    """(type name, optional, choices) for a dataclass field annotation."""
    import enum
    import types
    import typing

    optional = False
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        if len(args) != 1:
            return "any", optional, None
        tp = args[0]
        origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return "str", optional, [str(a) for a in typing.get_args(tp)]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "str", optional, [str(m.value) for m in tp]
    if tp in (bool, int, float, str):
        return tp.__name__, optional, None
    if tp in (list, tuple) or origin in (list, tuple):
        return "list", optional, None
    if tp is dict or origin is dict:
        return "dict", optional, None
    return "any", optional, None


def _jsonable(value: Any) -> Any:
    import enum

    if isinstance(value, enum.Enum):
        return value.value
    try:
        json.dumps(value)
        return value
    except TypeError:
        return repr(value)


def extract() -> dict:
    """Read the schema from the installed ERNIEKit's `_TRAIN_ARGS` (the classes `train` parses into)."""
    import dataclasses
    import importlib.metadata as md
    import typing

    from ernie_ops.extras import optional_imports

    with optional_imports("cpu", "reading ERNIEKit's argument schema"):
        from erniekit.hparams import parser

    fields: dict[str, dict] = {}
    for cls in parser._TRAIN_ARGS:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            type_name, optional, choices = _describe_type(hints.get(f.name, f.type))
            choices = f.metadata.get("choices") or choices
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = None
            entry = fields.setdefault(
                f.name,
                {
                    "type": type_name,
                    "optional": optional or default is None,
                    "default": _jsonable(default),
                    "choices": [str(c) for c in choices] if choices else None,
                    "groups": [],
                    "help": " ".join(str(f.metadata.get("help", "")).split()),
                },
            )
            entry["groups"].append(cls.__name__)
    files = _source_files() or []
    tuner = next((f for f in files if f.name == "tuner.py"), None)
    finetuning = next((f for f in files if f.name == "finetuning_args.py"), None)
    stages = re.findall(r'stage\s*==\s*"([^"]+)"', tuner.read_text()) if tuner else []
    compute_types = re.findall(r'compute_type\s*==\s*"([^"]+)"', finetuning.read_text()) if finetuning else []
    installed = installed_fingerprint()
    return {
        "format": SCHEMA_FORMAT,
        "erniekit_version": installed[0] if installed else "unknown",
        "paddleformers_version": md.version("paddleformers"),
        "fingerprint": installed[1] if installed else "",
        "stages": sorted(set(stages)),
        "compute_types": list(dict.fromkeys(compute_types)),
        "fields": fields,
    }


if __name__ == "__main__":
    import contextlib

    with contextlib.redirect_stdout(sys.stderr):  # ERNIEKit / Paddle log to stdout on import
        data = extract()
    text = json.dumps(data, indent=1, sort_keys=True)
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
