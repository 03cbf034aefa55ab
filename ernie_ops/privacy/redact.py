"""Redaction of what a published artifact must not carry: host names, user names, absolute paths.

`push` puts the run record in the public model card; the record holds the training host, the
master address of a multi-node run, and absolute paths (the run directory, the checkpoint, the data
files, the command line) that name users and directory layouts. `redact_record` keeps the lineage
(relative paths inside the run, file names, versions, hashes) and drops the rest; `redact_text`
does the same for free text (a recipe, a command line).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import socket
from pathlib import Path
from typing import Any

HOST = "<host>"
USER = "<user>"
# fields that name a machine: replaced whole
HOST_FIELDS = {"host", "hostname", "master", "node", "nodes", "hosts", "master_addr", "ip"}
# an absolute POSIX path in text (not the path part of a URL: no ':' or '/' or a word character before)
ABSOLUTE = re.compile(r"(?<![\w.:/~<>@-])/(?:[^\s/\"'`|,;()\[\]{}<>]+/)*[^\s/\"'`|,;()\[\]{}<>]*")


def identities() -> list[tuple[str, str]]:
    """(this machine's and user's identifying strings, their replacement), longest first."""
    found: list[tuple[str, str]] = []
    for name in {socket.gethostname(), socket.getfqdn()}:
        if name and name not in ("localhost", "localhost.localdomain"):
            found.append((name, HOST))
    users = {os.environ.get("USER"), os.environ.get("LOGNAME")}
    with contextlib.suppress(Exception):
        users.add(getpass.getuser())
    found += [(u, USER) for u in users if u and len(u) >= 3]
    return sorted(found, key=lambda x: -len(x[0]))


class Redactor:
    def __init__(self, base: Path | None = None):
        """BASE: the run directory; paths inside it become relative to it."""
        self.base = Path(base).resolve() if base else None
        self.cwd = Path.cwd().resolve()
        self.home = Path.home()
        self.words = [(re.compile(rf"(?<![\w-]){re.escape(w)}(?![\w-])"), r) for w, r in identities()]

    def path(self, text: str) -> str:
        """An absolute path, as it may be published: relative to the run or the working directory,
        else only its last component."""
        p = Path(text)
        for root, prefix in ((self.base, ""), (self.cwd, "")):
            if root is not None:
                with contextlib.suppress(ValueError):
                    rel = p.resolve().relative_to(root) if p.is_absolute() else p
                    return prefix + (str(rel) if str(rel) != "." else ".")
        return f".../{p.name}" if p.name else "..."

    def text(self, text: str) -> str:
        text = ABSOLUTE.sub(lambda m: self.path(m.group()) if len(m.group()) > 1 else m.group(), text)
        for pattern, replacement in self.words:
            text = pattern.sub(replacement, text)
        return text

    def value(self, value: Any, key: str = "") -> Any:
        if key.lower() in HOST_FIELDS and value:
            return (
                HOST if isinstance(value, str) else [HOST for _ in value] if isinstance(value, list) else HOST
            )
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.value(v, key) for v in value]
        if isinstance(value, dict):
            return {k: self.value(v, str(k)) for k, v in value.items()}
        return value


def redact_record(record: Any, base: Path | None = None) -> Any:
    return Redactor(base).value(record)


def redact_text(text: str, base: Path | None = None) -> str:
    return Redactor(base).text(text)
