"""Reports as Markdown and as one self-contained HTML page.

The Markdown is written once and is the source of truth; the HTML is rendered from it with
markdown-it (tables on) and every local image inlined as a data URL, so the page opens anywhere,
offline, as a single file to attach to a rollout ticket.
"""

from __future__ import annotations

import base64
import html
import mimetypes
import re
from collections.abc import Sequence
from pathlib import Path

from ernie_ops.files import PathLike, write_text_atomic

STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 70em; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td { font-variant-numeric: tabular-nums; }
th { background: #f3f3f3; }
code { background: #f5f5f5; padding: 0 0.2em; }
pre { background: #f5f5f5; padding: 0.6em; overflow-x: auto; }
img { max-width: 100%; }
"""


def md_table(rows: Sequence[Sequence[object]], right: set[int] | None = None) -> str:
    """A Markdown table; the first row is the header, `right` columns right-aligned (figures).
    Pipes in cells are escaped."""
    cells = [[str(c).replace("|", "\\|").replace("\n", " ") for c in row] for row in rows]
    header, *body = cells
    rule = "".join("---:|" if i in (right or ()) else "---|" for i in range(len(header)))
    lines = ["| " + " | ".join(header) + " |", "|" + rule]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def to_html(markdown: str, title: str, base: Path) -> str:
    """A standalone page; images given as paths relative to `base` are embedded."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    body = re.sub(r'<img src="([^"]+)"', lambda m: f'<img src="{_inline(m.group(1), base)}"', body)
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n"
        f"<style>{STYLE}</style></head>\n<body>\n{body}</body></html>\n"
    )


def _inline(src: str, base: Path) -> str:
    if re.match(r"^[a-z]+:", src):
        return src  # already a data URL (or remote, which a report never references)
    path = base / html.unescape(src)
    if not path.is_file():
        return src
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def write_report(
    out_dir: Path, name: str, markdown: str, title: str, inputs: Sequence[PathLike] = ()
) -> tuple[Path, Path]:
    """`out_dir/name.md` and `out_dir/name.html`; images in the Markdown are relative to `out_dir`.
    Written atomically; neither may be one of the command's `inputs`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path, html_path = out_dir / f"{name}.md", out_dir / f"{name}.html"
    write_text_atomic(md_path, markdown, inputs)
    write_text_atomic(html_path, to_html(markdown, title, out_dir), inputs)
    return md_path, html_path
