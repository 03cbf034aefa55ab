#!/usr/bin/env python3
"""Extract the `vllm serve` flag table of one vLLM release from vLLM's own source, for
`serve/data/vllm-flags.json` (read by `serve/backends/vllm.py`, which checks every flag and value it
emits against it).

The source is the release's sdist (a .tar.gz) or an unpacked tree of it / a checkout. The sdist of a
release is fetched with pip itself (it only downloads; the environment variables let pip read the
sdist's metadata without building anything):

    VLLM_VERSION_OVERRIDE=0.34.0 VLLM_TARGET_DEVICE=empty pip download vllm==0.34.0 \\
        --no-deps --no-binary :all: --no-build-isolation -d DIR
    python scripts/extract_vllm_flags.py DIR/vllm-0.34.0.tar.gz

Nothing is imported from vLLM (it needs a GPU build of torch): the files are parsed with `ast`, and
the argparse types are derived the way vLLM's `get_kwargs` derives them from the config dataclasses'
annotations (dataclass -> JSON, bool -> --x / --no-x, Literal -> choices, list -> one or more
values, int, float, dict -> JSON). What is read:

- `vllm/engine/arg_utils.py`: `EngineArgs.add_cli_args` / `AsyncEngineArgs.add_cli_args`, every
  `add_argument` with the config field it takes its kwargs from (`vllm/config/*.py`);
- `vllm/entrypoints/common/cli_args.py` (before ~0.20: `vllm/entrypoints/openai/cli_args.py`): the
  frontend dataclasses (one flag per field) and `make_arg_parser`;
- the reasoning and tool parser registries, the quantization method names, the model registry's
  architectures, and the environment variable the server reads its API key from (`vllm/envs.py`).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import re
import sys
import tarfile
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent.parent / "serve" / "data" / "vllm-flags.json"
BUILTINS = {"str", "int", "float", "bool", "dict", "list", "tuple", "set", "None"}


class Source:
    """The files of one vLLM source tree, from a directory or an sdist, by path under the root."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.files: dict[str, str] = {}
        if path.is_dir():
            for file in path.rglob("*.py"):
                rel = file.relative_to(path).as_posix()
                if rel.startswith("vllm/"):
                    self.files[rel] = file.read_text(encoding="utf-8")
        else:
            with tarfile.open(path) as tar:
                for member in tar.getmembers():
                    rel = member.name.split("/", 1)[1] if "/" in member.name else member.name
                    if member.isfile() and rel.startswith("vllm/") and rel.endswith(".py"):
                        handle = tar.extractfile(member)
                        assert handle is not None
                        self.files[rel] = handle.read().decode("utf-8")
        if "vllm/engine/arg_utils.py" not in self.files:
            raise SystemExit(f"{path}: no vllm/engine/arg_utils.py: not a vLLM source tree")

    def first(self, *paths: str) -> tuple[str, str]:
        for p in paths:
            if p in self.files:
                return p, self.files[p]
        raise SystemExit(f"none of {paths} in {self.path}")

    def tree(self, rel: str) -> ast.Module:
        return ast.parse(self.files[rel], rel)


# --- types, as vLLM's get_kwargs derives them ----------------------------------------------------


class Types:
    """Type aliases and classes of the config modules, to classify field annotations."""

    def __init__(self, src: Source) -> None:
        self.aliases: dict[str, ast.expr] = {}
        self.dataclasses: set[str] = set()
        self.dict_classes: set[str] = set()
        self.fields: dict[str, dict[str, tuple[ast.expr, ast.expr | None]]] = {}
        self.bases: dict[str, list[str]] = {}
        modules = [p for p in src.files if p.startswith("vllm/config/")]
        modules += [
            p
            for p in (
                "vllm/model_executor/layers/quantization/__init__.py",
                "vllm/entrypoints/common/cli_args.py",
                "vllm/entrypoints/openai/cli_args.py",
            )
            if p in src.files
        ]
        for rel in modules:
            for node in src.tree(rel).body:
                if isinstance(node, ast.Assign) and len(node.targets) == 1:
                    target = node.targets[0]
                    if isinstance(target, ast.Name) and _is_type_expr(node.value):
                        self.aliases[target.id] = node.value
                elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                    if "TypeAlias" in ast.unparse(node.annotation) and node.value is not None:
                        self.aliases[node.target.id] = node.value
                elif isinstance(node, ast.ClassDef):
                    self._class(node)

    def _class(self, node: ast.ClassDef) -> None:
        decorators = {ast.unparse(d).split("(")[0].split(".")[-1] for d in node.decorator_list}
        if decorators & {"config", "dataclass"}:
            self.dataclasses.add(node.name)
        bases = [ast.unparse(b) for b in node.bases]
        self.bases[node.name] = bases
        if any(b == "dict" or b.startswith("dict[") for b in bases):
            self.dict_classes.add(node.name)
        fields: dict[str, tuple[ast.expr, ast.expr | None]] = {}
        for item in node.body:
            if (
                isinstance(item, ast.AnnAssign)
                and isinstance(item.target, ast.Name)
                and "ClassVar" not in ast.unparse(item.annotation)
            ):
                fields[item.target.id] = (item.annotation, item.value)
        self.fields[node.name] = fields

    def class_fields(self, name: str) -> dict[str, tuple[ast.expr, ast.expr | None]]:
        """Fields of a class and of its bases (base fields first, as dataclasses order them)."""
        out: dict[str, tuple[ast.expr, ast.expr | None]] = {}
        for base in self.bases.get(name, []):
            out.update(self.class_fields(base))
        out.update(self.fields.get(name, {}))
        return out

    def hints(self, node: ast.expr, seen: frozenset[str] = frozenset()) -> list[ast.expr]:
        """The members of a union (Optional, Union, X | Y, Annotated), type aliases resolved."""
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            return self.hints(node.left, seen) + self.hints(node.right, seen)
        if isinstance(node, ast.Subscript):
            base = _name(node.value)
            args = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            if base == "Optional":
                return [*self.hints(args[0], seen), ast.Constant(None)]
            if base == "Union":
                return [h for a in args for h in self.hints(a, seen)]
            if base == "Annotated":
                return self.hints(args[0], seen)
        if isinstance(node, ast.Constant) and isinstance(node.value, str):  # a forward reference
            return self.hints(ast.parse(node.value, mode="eval").body, seen)
        name = _name(node)
        if isinstance(node, ast.Name) and name in self.aliases and name not in seen:
            return self.hints(self.aliases[name], seen | {name})
        return [node]

    def literal_values(self, elts: list[ast.expr]) -> list[Any] | None:
        """The values of Literal[...] (nested Literal aliases expanded); None if not all are literals."""
        out: list[Any] = []
        for e in elts:
            if isinstance(e, ast.Constant):
                out.append(e.value)
                continue
            inner = self.aliases.get(_name(e)) if isinstance(e, ast.Name) else None
            if isinstance(inner, ast.Subscript) and _name(inner) == "Literal":
                more = inner.slice.elts if isinstance(inner.slice, ast.Tuple) else [inner.slice]
                values = self.literal_values(list(more))
                if values is None:
                    return None
                out += values
            else:
                return None
        return out

    def kind(self, annotation: ast.expr, field: str) -> dict[str, Any]:
        """{"type": ..., "choices": [...]} as argparse will parse the field's flag."""
        hints = self.hints(annotation)
        names = {"dict" if _name(h) in self.dict_classes else _name(h) for h in hints}
        if names & self.dataclasses:
            return {"type": "json"}
        if names == {"bool", "str", "None"}:
            return {"type": "optional_str"}  # a bare flag is True, else a string
        if "bool" in names:
            return {"type": "bool_optional"}
        if "Literal" in names:
            literal = next(h for h in hints if _name(h) == "Literal")
            assert isinstance(literal, ast.Subscript)
            elts = literal.slice.elts if isinstance(literal.slice, ast.Tuple) else [literal.slice]
            options = self.literal_values(elts)
            if options is None or "str" in names:  # free text; the literals are only the suggestions
                return {"type": "str", "suggested": sorted(map(str, options or []))}
            return {"type": "choice", "choices": sorted(map(str, options))}
        for collection in ("tuple", "list", "set"):
            if collection in names:
                return {"type": "list"}
        if "int" in names:
            return {"type": "int"}
        if "float" in names:
            return {"type": "float"}
        if "dict" in names:
            if "str" in names or any(n not in BUILTINS for n in names if n):
                return {"type": "json_or_str"}
            return {"type": "json"}
        return {"type": "str"}


def _is_type_expr(node: ast.expr) -> bool:
    text = ast.unparse(node)
    return bool(re.match(r"^(Literal\[|Union\[|Optional\[|dict\[|list\[|tuple\[)", text)) or (
        isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr)
    )


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Constant) and node.value is None:
        return "None"
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Subscript):
        return _name(node.value)
    return ""


def _default(value: ast.expr | None) -> str | None:
    """The default as source text (a literal where it is one)."""
    if value is None:
        return None
    if isinstance(value, ast.Call) and _name(value.func) in ("field", "Field"):
        for kw in value.keywords:
            if kw.arg == "default":
                return _default(kw.value)
            if kw.arg == "default_factory":
                return ast.unparse(kw.value) + "()"
        return None
    try:
        return json.dumps(ast.literal_eval(value))
    except (ValueError, TypeError, SyntaxError):
        return ast.unparse(value)


# --- the engine's flags (arg_utils.py) ------------------------------------------------------------


def _strings(call: ast.Call) -> list[str]:
    return [a.value for a in call.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]


def _explicit_kind(call: ast.Call) -> dict[str, Any] | None:
    """The kind of an add_argument that says its action / type itself."""
    kws = {kw.arg: kw.value for kw in call.keywords if kw.arg}
    action = ast.unparse(kws["action"]) if "action" in kws else ""
    if "BooleanOptionalAction" in action:
        return {"type": "bool_optional"}
    if action in ("'store_true'", '"store_true"'):
        return {"type": "switch"}
    out: dict[str, Any] | None = None
    if "type" in kws:
        t = ast.unparse(kws["type"])
        out = {"type": {"int": "int", "float": "float", "json.loads": "json"}.get(t, "str")}
    if "choices" in kws:
        try:
            out = {"type": "choice", "choices": sorted(map(str, ast.literal_eval(kws["choices"])))}
        except ValueError:
            out = out or {"type": "str"}
    if "nargs" in kws and out is not None and ast.unparse(kws["nargs"]) in ("'+'", '"+"', "'*'", '"*"'):
        out = {"type": "list"}
    return out


def engine_flags(src: Source, types: Types) -> dict[str, dict[str, Any]]:
    tree = src.tree("vllm/engine/arg_utils.py")
    flags: dict[str, dict[str, Any]] = {}
    for fn in ast.walk(tree):
        if not (isinstance(fn, ast.FunctionDef) and fn.name == "add_cli_args"):
            continue
        kwargs_of: dict[str, str] = {}  # local name -> config class (x_kwargs = get_kwargs(Cls))
        for node in ast.walk(fn):
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
                value = node.value
                if isinstance(value, ast.Call) and _name(value.func) == "get_kwargs" and value.args:
                    kwargs_of[node.targets[0].id] = _name(value.args[0])
        for node in ast.walk(fn):
            if not (isinstance(node, ast.Call) and _name(node.func) == "add_argument"):
                continue
            names = [s for s in _strings(node) if s.startswith("-")]
            longs = [s for s in names if s.startswith("--")]
            if not longs:
                continue
            spec = _from_config(node, kwargs_of, types)
            explicit = _explicit_kind(node)
            if explicit is not None:
                spec.update(explicit)
                spec.pop("choices", None) if explicit["type"] != "choice" else None
            spec.setdefault("type", "str")
            for kw in node.keywords:
                if kw.arg == "default":
                    spec["default"] = _default(kw.value)
            aliases = [s for s in names if s != longs[0]]
            if aliases:
                spec["aliases"] = aliases
            flags[longs[0]] = spec
    return flags


def _from_config(call: ast.Call, kwargs_of: dict[str, str], types: Types) -> dict[str, Any]:
    """The kind and default of `**x_kwargs["field"]` (also inside `**{**x_kwargs["field"], ...}`)."""
    for kw in call.keywords:
        if kw.arg is not None:
            continue
        value = kw.value
        if isinstance(value, ast.Dict):  # {**x_kwargs["field"], "default": ...}
            inner = [v for k, v in zip(value.keys, value.values, strict=True) if k is None]
            value = inner[0] if inner else value
        if isinstance(value, ast.Subscript) and isinstance(value.value, ast.Name):
            cls = kwargs_of.get(value.value.id)
            field = ast.literal_eval(value.slice) if isinstance(value.slice, ast.Constant) else None
            if cls and field:
                annotation, default = types.class_fields(cls).get(field, (None, None))
                if annotation is None:
                    return {"type": "str", "field": f"{cls}.{field}"}
                spec = types.kind(annotation, field)
                spec["field"] = f"{cls}.{field}"
                spec["default"] = _default(default)
                return spec
        if isinstance(value, ast.Subscript) and isinstance(value.value, ast.Subscript):
            # get_kwargs(VllmConfig)["logging_config"]-style one-off look-ups
            return {"type": "json"}
    return {}


# --- the frontend's flags (cli_args.py) -----------------------------------------------------------


def frontend_flags(src: Source, types: Types) -> tuple[str, dict[str, dict[str, Any]]]:
    rel, _ = src.first("vllm/entrypoints/common/cli_args.py", "vllm/entrypoints/openai/cli_args.py")
    tree = src.tree(rel)
    flags: dict[str, dict[str, Any]] = {}
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name.endswith("FrontendArgs")]
    overrides: dict[str, dict[str, Any]] = {}
    for cls in classes:
        for node in ast.walk(cls):  # frontend_kwargs["x"]["type"] = json.loads / ["action"] = ...
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Subscript):
                target = node.targets[0]
                outer = target.value
                if isinstance(outer, ast.Subscript) and isinstance(outer.slice, ast.Constant):
                    field, key = str(outer.slice.value), getattr(target.slice, "value", None)
                    if key == "type":
                        t = ast.unparse(node.value)
                        kind = "json" if t == "json.loads" else "str"
                        overrides.setdefault(field, {})["type"] = kind
                    elif key == "action" and "append" in ast.unparse(node.value):
                        overrides.setdefault(field, {})["type"] = "str"
    for cls in classes:
        for field, (annotation, default) in types.class_fields(cls.name).items():
            if field.startswith("_"):
                continue
            spec = types.kind(annotation, field)
            spec.update(overrides.get(field, {}))
            if spec["type"] != "choice":
                spec.pop("choices", None)
            spec["field"] = f"{cls.name}.{field}"
            spec["default"] = _default(default)
            flags[f"--{field.replace('_', '-')}"] = spec
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "make_arg_parser":
            for call in ast.walk(node):
                if isinstance(call, ast.Call) and _name(call.func) == "add_argument":
                    names = [s for s in _strings(call) if s.startswith("-")]
                    longs = [s for s in names if s.startswith("--")]
                    if longs:
                        spec = _explicit_kind(call) or {"type": "str"}
                        aliases = [s for s in names if s != longs[0]]
                        if aliases:
                            spec["aliases"] = aliases
                        flags[longs[0]] = spec
    return rel, flags


# --- registries -----------------------------------------------------------------------------------


def registry_keys(src: Source, *paths: str) -> list[str]:
    """Keys of the module-level dict literal(s) that map parser names to (module, class)."""
    rel, _ = src.first(*paths)
    keys: list[str] = []
    for node in src.tree(rel).body:
        value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
        if (
            isinstance(value, ast.Dict)
            and value.keys
            and all(isinstance(k, ast.Constant) and isinstance(k.value, str) for k in value.keys)
        ) and all(isinstance(v, ast.Tuple) for v in value.values):
            keys += [str(k.value) for k in value.keys if isinstance(k, ast.Constant)]
    return sorted(set(keys))


def architectures(src: Source, prefix: str) -> list[str]:
    text = src.files["vllm/model_executor/models/registry.py"]
    return sorted(set(re.findall(rf'^\s*"({prefix}\w*)":\s*\(', text, re.M)))


def quantization_methods(src: Source) -> list[str]:
    tree = src.tree("vllm/model_executor/layers/quantization/__init__.py")
    for node in tree.body:
        if isinstance(node, ast.Assign) and _name(node.targets[0]) == "QuantizationMethods":
            literal = node.value
            assert isinstance(literal, ast.Subscript)
            elts = literal.slice.elts if isinstance(literal.slice, ast.Tuple) else [literal.slice]
            return [ast.literal_eval(e) for e in elts]
    raise SystemExit("QuantizationMethods not found")


def online_quantization(src: Source) -> list[str]:
    """`--quantization` shorthands that quantize an unquantized checkpoint at load (0.2x+)."""
    rel = "vllm/config/quantization.py"
    if rel not in src.files:
        return []
    for node in src.tree(rel).body:
        if (
            isinstance(node, ast.AnnAssign)
            and _name(node.target) == "_ONLINE_SHORTHANDS"
            and isinstance(node.value, ast.Dict)
        ):
            return sorted(str(k.value) for k in node.value.keys if isinstance(k, ast.Constant))
    return []


def release_of(src: Source) -> tuple[str, str]:
    text = src.files.get("vllm/_version.py", "")
    version = re.search(r"__version__ = version = '([^']+)'", text)
    commit = re.search(r"commit_id = '(?:g)?([0-9a-f]+)'", text)
    return (version.group(1) if version else "unknown", commit.group(1) if commit else "unknown")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", type=Path, help="a vLLM sdist (.tar.gz) or source directory")
    parser.add_argument("--release", help="the release name (default: from vllm/_version.py)")
    parser.add_argument("--commit", help="the commit (default: from vllm/_version.py)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    src = Source(args.source)
    release, commit = release_of(src)
    release, commit = args.release or release, args.commit or commit
    types = Types(src)
    flags = engine_flags(src, types)
    frontend_file, frontend = frontend_flags(src, types)
    flags.update(frontend)
    envs = src.files.get("vllm/envs.py", "")
    origin: dict[str, Any] = {"release": release, "commit": commit}
    if args.source.is_file():
        origin["sdist"] = args.source.name
        origin["sha256"] = hashlib.sha256(args.source.read_bytes()).hexdigest()
    origin["files"] = ["vllm/engine/arg_utils.py", frontend_file, "vllm/config/*.py"]
    reasoning = registry_keys(src, "vllm/reasoning/__init__.py")
    tools = registry_keys(
        src, "vllm/tool_parsers/__init__.py", "vllm/entrypoints/openai/tool_parsers/__init__.py"
    )
    table = {
        "source": origin,
        "command": ["vllm", "serve"],  # `vllm serve [model_tag] [options]` (entrypoints/cli/serve.py)
        "api_key_env": "VLLM_API_KEY" if '"VLLM_API_KEY"' in envs else None,
        "reasoning_parsers": reasoning,
        "tool_parsers": tools,
        "quantization_methods": quantization_methods(src),
        "online_quantization": online_quantization(src),
        "ernie_architectures": architectures(src, "Ernie4_5"),
        "flags": dict(sorted(flags.items())),
    }
    args.out.write_text(json.dumps(table, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    print(
        f"vLLM {release} ({commit}): {len(flags)} flags, {len(reasoning)} reasoning "
        f"parsers, {len(tools)} tool parsers -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
