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
LATEST = "latest"  # --erniekit-version latest: the newest shipped snapshot
# What 1.0.1's multi-source reader accepts (ernie/dataset/base.py): for a snapshot that does not
# record its own list (one read before the list was part of the snapshot).
DEFAULT_DATASET_TYPES = ("erniekit", "alpaca", "filelist", "glob")
# a bracketed list of numbers in a help text, e.g. pp_seg_method's "`[0, 30, 59]`"
_LIST_EXAMPLE = re.compile(r"\[\s*\d+(\s*,\s*\d+)+\s*\]")


def accepts_list(help_text: str) -> bool:
    """A `str` field whose help gives a list as a possible value takes a YAML list as it is.

    PdArgumentParser.parse_dict hands YAML values to the dataclass unconverted, so a list stays a
    list; whether that works depends on the code that reads the field. Where ERNIEKit documents a
    list form (pp_seg_method: `[0, 30, 59]`, handed on to Paddle's PipelineLayer), it does.
    """
    return bool(_LIST_EXAMPLE.search(help_text))


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
    dataset_types: tuple[str, ...] = DEFAULT_DATASET_TYPES
    compute_types: tuple[str, ...] = ()
    mix_strategies: tuple[str, ...] = ()


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
    # `*_dataset_type` values the multi-source reader dispatches on
    dataset_types: tuple[str, ...] = DEFAULT_DATASET_TYPES
    mix_strategies: tuple[str, ...] = ()  # `mix_strategy` values (empty: not a key of this version)
    list_values: frozenset[str] = frozenset()  # `str` keys that take a YAML list as it is
    # keys ERNIEKit's own example configs set that no argument class has -> those example files
    example_only_keys: dict[str, tuple[str, ...]] = field(default_factory=dict)
    commit: str = ""  # the source commit, for a snapshot read from a source checkout

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
            dataset_types=tuple(data.get("dataset_types") or DEFAULT_DATASET_TYPES),
            mix_strategies=tuple(data.get("mix_strategies") or ()),
            list_values=frozenset(
                data["list_values"]
                if "list_values" in data
                else (k for k, f in fields.items() if f.type == "str" and accepts_list(f.help))
            ),
            commit=data.get("commit", ""),
            example_only_keys={k: tuple(v) for k, v in (data.get("example_only_keys") or {}).items()},
        )

    def describe(self) -> str:
        at = f" at {self.commit[:12]}" if self.commit else ""
        return f"ERNIEKit {self.erniekit_version}{at} schema ({self.source})"

    def as_other(self) -> OtherVersion:
        return OtherVersion(
            frozenset(self.fields),
            self.stages,
            self.dataset_types,
            self.compute_types,
            self.mix_strategies,
        )


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
    """Shipped snapshots by ERNIEKit version, oldest first."""
    from packaging.version import Version

    found = {}
    for path in SNAPSHOT_DIR.glob("erniekit-schema-*.json"):
        found[path.stem.removeprefix("erniekit-schema-")] = path
    return dict(sorted(found.items(), key=lambda item: Version(item[0])))


def latest_version() -> str:
    """The newest shipped snapshot's version (what `--erniekit-version latest` names)."""
    return list(snapshots())[-1]


# ---------------------------------------------------------------------------------------------
# Loading (fast, no paddle)


def load_schema(version: str | None = None) -> Schema:
    """The schema to validate against.

    With `version`: that shipped snapshot. Otherwise the installed ERNIEKit's (cache, shipped
    snapshot with the same fingerprint, or a fresh extraction); without ERNIEKit, the snapshot of
    the pinned version.
    """
    shipped = snapshots()
    if version == LATEST:
        version = latest_version()
    if version is not None:
        if version not in shipped:
            raise UserError(
                f"no ERNIEKit {version} schema snapshot",
                hint=f"known: {', '.join(shipped)} ({LATEST} = {latest_version()}); "
                "or install that ERNIEKit and omit --erniekit-version",
            )
        schema = _read(shipped[version], "snapshot")
    else:
        schema = _installed_schema(shipped)
    for other, path in shipped.items():
        if other != schema.erniekit_version:
            schema.others[other] = _read(path, "snapshot").as_other()
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
# Values read from ERNIEKit's data readers (source text; shared with scripts/extract_erniekit_schema.py)


def reader_dataset_types(dataset_dir: Path) -> list[str]:
    """Values `sub_dataset_type` is compared with in ERNIEKit's multi-source reader."""
    found: list[str] = []
    for path in sorted(dataset_dir.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        found += re.findall(r'sub_dataset_type\s*==\s*"([^"]+)"', text)
        for listed in re.findall(r"sub_dataset_type\s+in\s+[\[(]([^\])]*)[\])]", text):
            found += re.findall(r'"([^"]+)"', listed)
    return list(dict.fromkeys(found))


def reader_mix_strategies(dataset_dir: Path) -> list[str]:
    """`mix_strategy` values: the keys of ernie/dataset/mix_datasets.py's CLASS_MAPPING."""
    path = dataset_dir / "mix_datasets.py"
    if not path.is_file():
        return []
    match = re.search(r"CLASS_MAPPING\s*=\s*\{([^}]*)\}", path.read_text(encoding="utf-8"))
    return re.findall(r'"([^"]+)"\s*:', match.group(1)) if match else []


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
    ernie = importlib.util.find_spec("ernie")
    dataset_dir = Path(ernie.origin).parent / "dataset" if ernie and ernie.origin else None
    types = reader_dataset_types(dataset_dir) if dataset_dir and dataset_dir.is_dir() else []
    mixes = reader_mix_strategies(dataset_dir) if dataset_dir and dataset_dir.is_dir() else []
    return {
        "format": SCHEMA_FORMAT,
        "erniekit_version": installed[0] if installed else "unknown",
        "paddleformers_version": md.version("paddleformers"),
        "fingerprint": installed[1] if installed else "",
        "stages": sorted(set(stages)),
        "compute_types": list(dict.fromkeys(compute_types)),
        "dataset_types": types or list(DEFAULT_DATASET_TYPES),
        "mix_strategies": mixes,
        "list_values": sorted(k for k, f in fields.items() if f["type"] == "str" and accepts_list(f["help"])),
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
