"""Every data file the code reads is installed with it (a non-editable install lacked serve/data)."""

import ast
import fnmatch
import importlib.machinery
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIRS = {
    "ernie_ops": ROOT / "ernie_ops",
    "ernie_ops.serve": ROOT / "serve",
    "ernie_ops.train": ROOT / "train",
}


def _package_data() -> dict[str, list[str]]:
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "package_data":
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no package_data")


def _extension_files() -> set[Path]:
    """The C sources and headers of setup.py's extensions (compiled into the extension, not data)."""
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    return {
        ROOT / name
        for node in ast.walk(tree)
        if isinstance(node, ast.keyword) and node.arg in ("sources", "depends")
        for name in ast.literal_eval(node.value)
    }


def _source_dir(package: str) -> Path:
    """Where PACKAGE's files are in the repository (train/ and serve/ install under ernie_ops)."""
    top = max((p for p in SOURCE_DIRS if package == p or package.startswith(p + ".")), key=len)
    return SOURCE_DIRS[top].joinpath(*package.split(".")[len(top.split(".")) :])


def _installed(path: Path, package_data: dict[str, list[str]]) -> bool:
    return any(
        path.is_relative_to(_source_dir(package))
        and any(fnmatch.fnmatch(str(path.relative_to(_source_dir(package))), g) for g in patterns)
        for package, patterns in package_data.items()
    )


def test_every_data_file_is_package_data():
    package_data = _package_data()
    built = tuple(importlib.machinery.EXTENSION_SUFFIXES)  # an editable install builds extensions in place
    data = [
        path
        for top in SOURCE_DIRS.values()
        for path in top.rglob("*")
        if path.is_file()
        and path.suffix not in (".py", ".pyc")
        and "__pycache__" not in path.parts
        and path not in _extension_files()
        and not path.name.endswith(built)
    ]
    assert data, "no data files found: the test looks in the wrong place"
    missing = [str(p.relative_to(ROOT)) for p in data if not _installed(p, package_data)]
    assert not missing, f"not in setup.py's package_data (a wheel would lack them): {missing}"


def test_the_extension_sources_exist():
    """setup.py's Extension names its C files; a renamed one would leave the build optional-failing."""
    files = _extension_files()
    assert files and all(f.is_file() for f in files), sorted(map(str, files))
