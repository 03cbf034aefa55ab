#!/usr/bin/env python3
"""Extract the flag table of one FastDeploy release from FastDeploy's own source, for
`serve/data/fastdeploy-flags-<major.minor>.json` (read by `serve/fastdeploy.py`, which checks every
flag and value it emits against the table of the release a profile targets).

The source is a tree of the release (a directory, or a tar archive as `git archive` writes it: its
header carries the commit, which the table then records). FastDeploy's GPU wheels are not on PyPI, so
the release branch is read from a clone:

    git -C FastDeploy archive -o fd-2.5.tar <release/2.5 commit> fastdeploy setup.py
    python scripts/extract_fastdeploy_flags.py fd-2.5.tar

Nothing is imported from FastDeploy (it needs a CUDA build of Paddle): the files are parsed with
`ast`. What is read:

- `fastdeploy/engine/args_utils.py`: `EngineArgs.add_cli_args`, every `add_argument` (its type or
  action, choices, and the default, resolved from the `EngineArgs` dataclass where it names a field);
- `fastdeploy/entrypoints/openai/utils.py` (older releases: `.../openai/api_server.py`):
  `make_arg_parser`, the server's own flags (--port, --host, --api-key, ...);
- the reasoning and tool-call parser names (`register_module("name")` in `fastdeploy/reasoning/` and
  `fastdeploy/entrypoints/openai/tool_parsers/`), `QUANTIZATION_METHODS`, and the names
  `parse_quant_config` rewrites into an online mix_quant (wint4 on ERNIE, w4afp8 on MoE);
- `setup.py`: the release (`FASTDEPLOY_VERSION`'s default).
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
import tarfile
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent.parent / "serve" / "data"
ARGS = "fastdeploy/engine/args_utils.py"
SERVER = ("fastdeploy/entrypoints/openai/utils.py", "fastdeploy/entrypoints/openai/api_server.py")
QUANT = "fastdeploy/model_executor/layers/quantization/__init__.py"
PARSER_DIRS = {
    "reasoning_parsers": "fastdeploy/reasoning/",
    "tool_parsers": "fastdeploy/entrypoints/openai/tool_parsers/",
}
# argparse `type=` callables of FastDeploy -> the table's kind
TYPES = {
    "int": "int",
    "float": "float",
    "str": "str",
    "nullable_str": "str",
    "json.loads": "json",
    "parse_quantization": "quantization",  # a method name, or a JSON quantization_config
}


class Source:
    """The files of one FastDeploy tree by path under its root, from a directory or a tar archive."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.files: dict[str, str] = {}
        self.commit: str | None = None
        wanted = re.compile(r"^(fastdeploy/.*\.py|setup\.py)$")
        if path.is_dir():
            for file in path.rglob("*.py"):
                rel = file.relative_to(path).as_posix()
                if wanted.match(rel):
                    self.files[rel] = file.read_text(encoding="utf-8")
        elif tarfile.is_tarfile(path):
            with tarfile.open(path) as tar:
                comment = tar.pax_headers.get("comment", "")  # git archive: the commit id
                self.commit = comment if re.fullmatch(r"[0-9a-f]{40}", comment) else None
                for member in tar.getmembers():
                    rel = member.name[2:] if member.name.startswith("./") else member.name
                    if member.isfile() and wanted.match(rel):
                        handle = tar.extractfile(member)
                        assert handle is not None
                        self.files[rel] = handle.read().decode("utf-8")
        else:
            raise SystemExit(f"{path}: neither a directory nor a tar archive")
        if ARGS not in self.files:
            raise SystemExit(f"{path}: no {ARGS}: not a FastDeploy 2.x source tree")

    def tree(self, rel: str) -> ast.Module:
        return ast.parse(self.files[rel], rel)


def _name(node: ast.expr) -> str:
    return ast.unparse(node)


def _literal(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError):
        return None


def field_defaults(src: Source) -> dict[str, str]:
    """EngineArgs' field defaults as text (`EngineArgs.x` defaults name them)."""
    for node in src.tree(ARGS).body:
        if isinstance(node, ast.ClassDef) and node.name == "EngineArgs":
            return {
                item.target.id: _default_text(item.value)
                for item in node.body
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and item.value
            }
    raise SystemExit(f"{ARGS}: no EngineArgs class")


def _default_text(node: ast.expr) -> str:
    value = _literal(node)
    return _name(node) if value is None and _name(node) != "None" else json.dumps(value)


def _kind(call: ast.Call) -> dict[str, Any]:
    kws = {kw.arg: kw.value for kw in call.keywords if kw.arg}
    action = _name(kws["action"]).strip("'\"") if "action" in kws else ""
    if action.endswith("BooleanOptionalAction"):
        return {"type": "bool_optional"}  # --x and --no-x
    if action in ("store_true", "store_false"):
        return {"type": "switch"}
    if action == "DeprecatedOptionWarning":  # nargs=0: a switch that logs a deprecation warning
        return {"type": "switch", "deprecated": True}
    spec: dict[str, Any] = {"type": "str"}
    if "type" in kws:
        t = kws["type"]
        if isinstance(t, ast.Lambda):  # `lambda s: s.split(",")`, or the same cast to int
            spec["type"] = "csv_int" if "int(" in _name(t) else "csv"
        else:
            spec["type"] = TYPES.get(_name(t), "str")
    if "choices" in kws and isinstance(_literal(kws["choices"]), list | tuple):
        spec["choices"] = [str(c) for c in _literal(kws["choices"])]
    if action == "append":
        spec["repeatable"] = True
    return spec


def _flags_of(tree: ast.AST, defaults: dict[str, str]) -> dict[str, dict[str, Any]]:
    flags: dict[str, dict[str, Any]] = {}
    for call in ast.walk(tree):
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)):
            continue
        if call.func.attr != "add_argument":
            continue
        names = [a.value for a in call.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        longs = [n for n in names if n.startswith("--")]
        if not longs:
            continue
        spec = _kind(call)
        for kw in call.keywords:
            if kw.arg == "default":
                text = _name(kw.value)
                field = text.removeprefix("EngineArgs.")
                spec["default"] = defaults.get(field, text) if text != field else _default_text(kw.value)
        spec.setdefault("default", "null")
        aliases = [n for n in names if n != longs[0]]
        if aliases:
            spec["aliases"] = aliases
        flags[longs[0]] = spec
    return flags


def all_flags(src: Source) -> tuple[dict[str, dict[str, Any]], list[str]]:
    defaults = field_defaults(src)
    adder = next(
        (n for n in ast.walk(src.tree(ARGS)) if isinstance(n, ast.FunctionDef) and n.name == "add_cli_args"),
        None,
    )
    if adder is None:
        raise SystemExit(f"{ARGS}: no EngineArgs.add_cli_args")
    flags = _flags_of(adder, defaults)
    read = [ARGS]
    for rel in SERVER:
        if rel in src.files:
            server = [
                n
                for n in ast.walk(src.tree(rel))
                if isinstance(n, ast.FunctionDef) and n.name == "make_arg_parser"
            ]
            if server:
                flags.update(_flags_of(server[0], defaults))
                read.append(rel)
                break
    else:
        raise SystemExit(f"no make_arg_parser in {' or '.join(SERVER)}")
    return dict(sorted(flags.items())), read


def parser_names(src: Source, folder: str) -> list[str]:
    pattern = re.compile(r'@\w+\.register_module\(\s*(?:name\s*=\s*)?\[?\s*"([^"]+)"')
    return sorted(
        {name for rel, text in src.files.items() if rel.startswith(folder) for name in pattern.findall(text)}
    )


def quantization(src: Source) -> tuple[list[str], list[str]]:
    """QUANTIZATION_METHODS, and the names parse_quant_config turns into an online mix_quant."""
    methods: list[str] = []
    online: list[str] = []
    for node in src.tree(QUANT).body:
        target: ast.expr | None = node.target if isinstance(node, ast.AnnAssign) else None
        if isinstance(node, ast.Assign):
            target = node.targets[0]
        if (
            isinstance(node, ast.Assign | ast.AnnAssign)
            and target is not None
            and _name(target) == "QUANTIZATION_METHODS"
            and node.value is not None
        ):
            methods = [str(v) for v in _literal(node.value)]
        if isinstance(node, ast.FunctionDef) and node.name == "parse_quant_config":
            body = ast.unparse(node)
            online = sorted(set(re.findall(r"quant_config_name == '(\w+)'", body)))
    if not methods:
        raise SystemExit(f"{QUANT}: no QUANTIZATION_METHODS")
    return methods, online


def release_of(src: Source) -> str:
    match = re.search(r'FASTDEPLOY_VERSION", "([^"]+)"', src.files.get("setup.py", ""))
    return match.group(1) if match else "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", type=Path, help="a FastDeploy source directory or `git archive` tar")
    parser.add_argument("--release", help="the release (default: FASTDEPLOY_VERSION in setup.py)")
    parser.add_argument("--commit", help="the commit (default: from the git archive header)")
    parser.add_argument("--ref", help="the branch or tag the commit was taken from, for the record")
    parser.add_argument("--out", type=Path, help="default: serve/data/fastdeploy-flags-<major.minor>.json")
    args = parser.parse_args(argv)
    src = Source(args.source)
    release = args.release or release_of(src)
    commit = args.commit or src.commit
    if not commit:
        raise SystemExit("the commit is unknown: pass --commit (a directory does not record it)")
    flags, read = all_flags(src)
    methods, online = quantization(src)
    origin: dict[str, Any] = {"release": release, "commit": commit}
    if args.ref:
        origin["ref"] = args.ref
    origin["files"] = [*read, QUANT, "fastdeploy/reasoning/", "fastdeploy/entrypoints/openai/tool_parsers/"]
    table = {
        "source": origin,
        **{key: parser_names(src, folder) for key, folder in PARSER_DIRS.items()},
        "quantization_methods": methods,
        "online_mix_quant": online,
        "flags": flags,
    }
    series = ".".join(re.findall(r"\d+", release)[:2])
    out = args.out or DATA / f"fastdeploy-flags-{series}.json"
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
    tmp.replace(out)  # atomic: a reader never sees half a table
    print(f"FastDeploy {release} ({commit[:12]}): {len(flags)} flags, {len(methods)} quantizations -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
