"""Small text helpers the CLI, the log followers and the benchmarks share."""

from __future__ import annotations

import re

# colour and cursor escapes (ERNIEKit's and FastDeploy's loggers colour their lines)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


def format_table(rows: list[list[str]], right: set[int] | None = None) -> str:
    """Columns padded to their widest cell, first row the header; `right` columns right-aligned."""
    right = right or set()
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = (
        "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    )
    return "\n".join(line.rstrip() for line in lines)
