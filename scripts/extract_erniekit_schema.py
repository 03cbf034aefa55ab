#!/usr/bin/env python
"""Write an ERNIEKit schema snapshot from ERNIEKit's source files, without importing anything.

`ernie_ops.recipe.schema` reads the schema of an *installed* ERNIEKit by importing it (Paddle and
all). A GPU node runs ERNIEKit from a source checkout of PaddlePaddle/ERNIE that this machine
cannot import (no `ernie` wheel past 1.0.1, GPU-only dependencies), so the snapshot of a newer
ERNIEKit is read from its sources with `ast`: the dataclasses `erniekit train` parses into
(`_TRAIN_ARGS` of `erniekit/hparams/parser.py`, their fields through inheritance, with
PaddleFormers' `TrainingArguments` from the PaddleFormers it runs with), the stages the tuner
dispatches on, the `compute_type` values, the dataset types the multi-source reader accepts and
the dataset mixing strategies. The next release is one command:

    .venv/bin/python scripts/extract_erniekit_schema.py ERNIE_CHECKOUT --version 1.5.0 \\
        --commit <sha> [--paddleformers PADDLEFORMERS_PACKAGE_DIR]

ERNIE_CHECKOUT is a source checkout of PaddlePaddle/ERNIE (or a site-packages directory holding
`erniekit/` and `ernie/`); the snapshot goes to ernie_ops/recipe/snapshots/ unless --out says
otherwise. `--check-against SNAPSHOT` compares the result with a snapshot read by importing (the
1.0.1 one, from its wheel) and prints the differences: the static reading is tested that way.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ernie_ops.recipe.schema import (  # noqa: E402
    SCHEMA_FORMAT,
    SNAPSHOT_DIR,
    accepts_list,
    reader_dataset_types,
    reader_mix_strategies,
)


@dataclass
class ClassDef:
    name: str
    bases: list[str]
    fields: dict[str, dict] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# reading dataclass fields from source


_ARITHMETIC = re.compile(r"^[\d\s.+\-*/()e]+$|^pow\(\s*\d+\s*,\s*\d+\s*\)$")


def _literal(node: ast.AST | None) -> Any:
    if node is None:
        return None
    try:
        return ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError):
        text = ast.unparse(node)
        if _ARITHMETIC.match(text):  # `2 ** 15`, `pow(2, 32)`: numbers only, nothing to call
            return eval(text, {"__builtins__": {}}, {"pow": pow})
        return text  # an expression (a constant of another module, a call): its text


def read_enums(path: Path) -> dict[str, list[str]]:
    """Enum classes of a file and their string values (an enum-typed field takes those strings)."""
    enums: dict[str, list[str]] = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ClassDef) and any(ast.unparse(b).endswith("Enum") for b in node.bases):
            enums[node.name] = [
                str(item.value.value)
                for item in node.body
                if isinstance(item, ast.Assign) and isinstance(item.value, ast.Constant)
            ]
    return enums


def _describe(annotation: ast.AST | None, enums: dict[str, list[str]]) -> tuple[str, bool]:
    """(type name, optional) from an annotation, the same names schema.extract() gives."""
    if annotation is None:
        return "any", False
    text = ast.unparse(annotation).replace("typing.", "")
    optional = False
    match = re.fullmatch(r"Optional\[(.*)\]", text)
    if match:
        text, optional = match.group(1), True
    parts = [p.strip() for p in text.split("|")]
    if "None" in parts:
        optional = True
        parts = [p for p in parts if p != "None"]
    if len(parts) != 1:
        return "any", optional
    text = parts[0]
    if text in ("bool", "int", "float", "str") or text in enums:
        return ("str" if text in enums else text), optional
    if re.match(r"^(list|List|tuple|Tuple)\b", text):
        return "list", optional
    if re.match(r"^(dict|Dict)\b", text):
        return "dict", optional
    if re.match(r"^Literal\[", text):
        return "str", optional
    return "any", optional


def _field_call(value: ast.AST | None) -> ast.Call | None:
    if isinstance(value, ast.Call):
        func = value.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name == "field":
            return value
    return None


def read_classes(path: Path, enums: dict[str, list[str]]) -> dict[str, ClassDef]:
    """Every class in a file with its annotated fields (a dataclass field per annotated name)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: dict[str, ClassDef] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        cls = ClassDef(node.name, [ast.unparse(b).split(".")[-1] for b in node.bases])
        for item in node.body:
            if not isinstance(item, ast.AnnAssign) or not isinstance(item.target, ast.Name):
                continue
            name = item.target.id
            if name.startswith("_") or ast.unparse(item.annotation).startswith("ClassVar"):
                continue
            type_name, optional = _describe(item.annotation, enums)
            call = _field_call(item.value)
            default: Any = None
            help_text, choices, init = "", None, True
            if call is not None:
                kwargs = {k.arg: k.value for k in call.keywords if k.arg}
                if "default" in kwargs:
                    default = _literal(kwargs["default"])
                if "init" in kwargs and _literal(kwargs["init"]) is False:
                    init = False
                metadata = _literal(kwargs.get("metadata"))
                if isinstance(metadata, dict):
                    help_text = " ".join(str(metadata.get("help", "")).split())
                    if isinstance(metadata.get("choices"), list | tuple):
                        choices = [str(c) for c in metadata["choices"]]
            elif item.value is not None:
                default = _literal(item.value)
            enum = ast.unparse(item.annotation).replace("Optional[", "").rstrip("]")
            if choices is None and enum in enums:
                choices = enums[enum]
            if not init:
                continue
            cls.fields[name] = {
                "type": type_name,
                "optional": optional or default is None,
                "default": default,
                "choices": choices,
                "help": help_text,
            }
        found[node.name] = cls
    return found


def _mro(name: str, classes: dict[str, ClassDef]) -> list[str]:
    """C3 linearisation over the classes read (unknown bases end the chain)."""
    cls = classes.get(name)
    if cls is None:
        return [name]
    sequences = [_mro(b, classes) for b in cls.bases] + [list(cls.bases)]
    result = [name]
    while any(sequences):
        for seq in sequences:
            if not seq:
                continue
            head = seq[0]
            if not any(head in s[1:] for s in sequences):
                break
        else:
            raise ValueError(f"inconsistent class hierarchy for {name}")
        result.append(head)
        sequences = [s[1:] if s and s[0] == head else s for s in sequences]
    return result


def dataclass_fields(name: str, classes: dict[str, ClassDef]) -> dict[str, dict]:
    """A dataclass's fields as `dataclasses.fields` lists them: bases first, the subclass wins."""
    merged: dict[str, dict] = {}
    for base in reversed(_mro(name, classes)):
        cls = classes.get(base)
        if cls:
            for key, value in cls.fields.items():
                merged[key] = dict(value)
    return merged


# ---------------------------------------------------------------------------------------------
# the values ERNIEKit compares against


def _train_args(parser_py: Path) -> list[str]:
    tree = ast.parse(parser_py.read_text(encoding="utf-8"))
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "_TRAIN_ARGS" for t in node.targets)
            and isinstance(node.value, ast.List | ast.Tuple)
        ):
            return [ast.unparse(e).split(".")[-1] for e in node.value.elts]
    raise SystemExit(f"{parser_py}: no _TRAIN_ARGS list")


def example_only_keys(root: Path, fields: dict[str, dict]) -> dict[str, list[str]]:
    """Keys ERNIEKit's own training examples (examples/configs) set that no argument class has:
    key -> the example files. The parser drops them; the check says so as a warning, not an error."""
    import yaml

    found: dict[str, list[str]] = {}
    configs = root / "examples" / "configs"
    for path in sorted(configs.rglob("*.yaml")) if configs.is_dir() else []:
        if path.stem in ("run_chat", "run_eval", "run_export"):  # not `erniekit train` configs
            continue
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
        for key in values if isinstance(values, dict) else ():
            if key not in fields:
                found.setdefault(key, []).append(path.relative_to(configs).as_posix())
    return found


def _installed_paddleformers() -> Path | None:
    spec = importlib.util.find_spec("paddleformers")  # finds, imports nothing
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def extract(root: Path, version: str, commit: str, paddleformers: Path, paddleformers_version: str) -> dict:
    hparams = root / "erniekit" / "hparams"
    enums: dict[str, list[str]] = {}
    for path in [paddleformers / "trainer" / "trainer_utils.py", *sorted(hparams.glob("*.py"))]:
        if path.is_file():
            enums.update(read_enums(path))
    classes: dict[str, ClassDef] = {}
    for path in sorted(hparams.glob("*.py")):
        classes.update(read_classes(path, enums))
    training_args = paddleformers / "trainer" / "training_args.py"
    pf_classes = read_classes(training_args, enums)
    for name, cls in pf_classes.items():
        classes.setdefault(name, cls)
    fields: dict[str, dict] = {}
    for group in _train_args(hparams / "parser.py"):
        for key, value in dataclass_fields(group, classes).items():
            entry = fields.setdefault(key, {**value, "groups": []})
            entry["groups"].append(group)
    tuner = (root / "erniekit" / "train" / "tuner.py").read_text(encoding="utf-8")
    finetuning = (hparams / "finetuning_args.py").read_text(encoding="utf-8")
    list_values = sorted(k for k, f in fields.items() if f["type"] == "str" and accepts_list(f["help"]))
    return {
        "format": SCHEMA_FORMAT,
        "erniekit_version": version,
        "commit": commit,
        "read_from": "source (scripts/extract_erniekit_schema.py)",
        "paddleformers_version": paddleformers_version,
        "fingerprint": commit[:16],
        "stages": sorted(set(re.findall(r'stage\s*==\s*"([^"]+)"', tuner))),
        "compute_types": list(dict.fromkeys(re.findall(r'compute_type\s*==\s*"([^"]+)"', finetuning))),
        "dataset_types": reader_dataset_types(root / "ernie" / "dataset"),
        "mix_strategies": reader_mix_strategies(root / "ernie" / "dataset"),
        "list_values": list_values,
        "example_only_keys": example_only_keys(root, fields),
        "fields": fields,
    }


def compare(data: dict, other: dict) -> list[str]:
    """Differences in keys, types and defaults between two snapshots."""
    out = []
    mine, theirs = data["fields"], other["fields"]
    for key in sorted(set(mine) ^ set(theirs)):
        out.append(f"{key}: only in {'the source reading' if key in mine else 'the imported one'}")
    for key in sorted(set(mine) & set(theirs)):
        for attr in ("type", "default", "choices"):
            if mine[key][attr] != theirs[key][attr]:
                out.append(f"{key}.{attr}: {mine[key][attr]!r} read, {theirs[key][attr]!r} imported")
    for attr in ("stages", "compute_types"):
        if sorted(data[attr]) != sorted(other[attr]):
            out.append(f"{attr}: {data[attr]} read, {other[attr]} imported")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("root", type=Path, help="PaddlePaddle/ERNIE checkout (holds erniekit/ and ernie/)")
    parser.add_argument("--version", required=True, help="the ERNIEKit version this snapshot is named by")
    parser.add_argument("--commit", default="", help="the commit the sources are from")
    parser.add_argument("--paddleformers", type=Path, help="PaddleFormers package dir (default: installed)")
    parser.add_argument("--paddleformers-version", default="", help="recorded in the snapshot")
    parser.add_argument(
        "--dataset-type",
        action="append",
        default=[],
        metavar="NAME",
        help="a dataset type to add to those found in the reader (say why in the commit)",
    )
    parser.add_argument("--note", default="", help="stored in the snapshot: where the files came from")
    parser.add_argument("--out", type=Path, help="default: the snapshots dir, erniekit-schema-VERSION.json")
    parser.add_argument("--check-against", type=Path, help="a snapshot to compare with; prints differences")
    args = parser.parse_args()

    pf = args.paddleformers or _installed_paddleformers()
    if pf is None or not (pf / "trainer" / "training_args.py").is_file():
        parser.error("PaddleFormers' trainer/training_args.py not found: give --paddleformers")
    pf_version = args.paddleformers_version
    if not pf_version:
        import importlib.metadata as md

        try:
            pf_version = md.version("paddleformers") if args.paddleformers is None else "unknown"
        except md.PackageNotFoundError:
            pf_version = "unknown"
    data = extract(args.root, args.version, args.commit, pf, pf_version)
    for name in args.dataset_type:
        if name not in data["dataset_types"]:
            data["dataset_types"].append(name)
    if args.note:
        data["note"] = args.note
    if args.check_against:
        diffs = compare(data, json.loads(args.check_against.read_text(encoding="utf-8")))
        print("\n".join(diffs) or "no differences")
        return 1 if diffs else 0
    out = args.out or SNAPSHOT_DIR / f"erniekit-schema-{args.version}.json"
    out.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(
        f"{out.name}: {len(data['fields'])} keys, stages {', '.join(data['stages'])}, "
        f"dataset types {', '.join(data['dataset_types'])}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
