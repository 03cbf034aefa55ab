"""One masker for everything the toolkit reads or writes: find personal data, replace it.

Strategies:
- `placeholder` (default): `<EMAIL_1>`, `<PHONE_2>`; the same value gets the same placeholder
  throughout one record (a `Scope`), so a conversation stays coherent.
- `hash`: `<EMAIL_9f86d081884c>`, a keyed hash (HMAC-SHA256) of the value with a secret salt from
  `ERNIE_OPS_PII_SALT` or a salt file. The same value gets the same token across records and files
  (joins still work) while nobody without the salt can test a guess. The salt is never written.
- `remove`: the value is cut out.

Detectors are pluggable: besides the built-in ones, `ERNIE_OPS_PII_DETECTORS=module:factory,...` or
the `ernie_ops.pii_detectors` entry-point group add objects that follow `base.Detector` (a NER
model for names of people, which this toolkit does not ship, is one). Callers never change.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ernie_ops.errors import UserError
from ernie_ops.privacy.base import Detector, Finding, normalise, resolve

STRATEGIES = ("placeholder", "hash", "remove")
SALT_ENV = "ERNIE_OPS_PII_SALT"
DETECTORS_ENV = "ERNIE_OPS_PII_DETECTORS"
ENTRY_POINTS = "ernie_ops.pii_detectors"
# Keys whose values are structure, not text: never masked (nor is any key).
STRUCTURAL_KEYS = frozenset(
    {"role", "from", "speaker", "tag", "type", "weight", "label", "sort", "is_system"}
)
PLACEHOLDER = re.compile(r"<[A-Z][A-Z_]*_(?:[0-9]+|[0-9a-f]{12})>")

NER_NOTE = (
    "Names of people are not found: that needs a NER model, which is not shipped here; plug one in "
    f"(for example Presidio with a spaCy model) through {DETECTORS_ENV}=module:factory."
)


@dataclass
class Scope:
    """Placeholder numbers of one record: the same value keeps its number in every field."""

    numbers: dict[tuple[str, str], int] = field(default_factory=dict)
    per_type: Counter = field(default_factory=Counter)

    def number(self, type_: str, value: str) -> int:
        key = (type_, value)
        if key not in self.numbers:
            self.per_type[type_] += 1
            self.numbers[key] = self.per_type[type_]
        return self.numbers[key]


class Masker:
    def __init__(
        self,
        detectors: Iterable[Detector],
        strategy: str = "placeholder",
        salt: bytes | None = None,
    ):
        if strategy not in STRATEGIES:
            raise UserError(f"unknown masking strategy {strategy!r}", hint=f"one of {', '.join(STRATEGIES)}")
        if strategy == "hash" and not salt:
            raise UserError(
                "hashing needs a secret salt",
                hint=f"set {SALT_ENV} or give --salt-file (keep the salt out of the data you share)",
            )
        self.detectors = list(detectors)
        self.strategy = strategy
        self._salt = salt or b""
        triggers = [d.trigger for d in self.detectors]
        if any(t is None for t in triggers):
            self.trigger = None
        else:
            # an escaped character (\u0040, non-ASCII written as \uXXXX) could hide any of them
            parts = [rb"\\u"] + [b"(?:" + t.pattern + b")" for t in triggers if t is not None]
            self.trigger = re.compile(b"|".join(parts))

    # -- finding ---------------------------------------------------------------------------------

    def may_hold(self, raw: bytes) -> bool:
        """False only when no detector could find anything in these bytes (a raw JSON line)."""
        return self.trigger is None or self.trigger.search(raw) is not None

    def find(self, text: str) -> list[Finding]:
        if not text:
            return []
        if self.trigger is not None and not self.trigger.search(text.encode("utf-8", "surrogatepass")):
            return []
        norm = normalise(text)
        return resolve(f for d in self.detectors for f in d.find(norm))

    # -- replacing -------------------------------------------------------------------------------

    def replacement(self, type_: str, value: str, scope: Scope) -> str:
        if self.strategy == "remove":
            return ""
        if self.strategy == "hash":
            digest = hmac.new(self._salt, f"{type_}\0{value}".encode(), hashlib.sha256).hexdigest()
            return f"<{type_}_{digest[:12]}>"
        return f"<{type_}_{scope.number(type_, value)}>"

    def mask_text(self, text: str, scope: Scope | None = None, counts: Counter | None = None) -> str:
        findings = self.find(text)
        if not findings:
            return text
        scope = scope if scope is not None else Scope()
        out, pos = [], 0
        for f in findings:
            out.append(text[pos : f.start])
            out.append(self.replacement(f.type, text[f.start : f.end], scope))
            pos = f.end
            if counts is not None:
                counts[f.type] += 1
        out.append(text[pos:])
        return "".join(out)

    def mask_value(self, value: Any, scope: Scope | None = None, counts: Counter | None = None) -> Any:
        """A JSON-like value with every text masked: strings in lists and dict values, except the
        values of structural keys (role, from, ...); keys are kept as they are."""
        scope = scope if scope is not None else Scope()
        if isinstance(value, str):
            return self.mask_text(value, scope, counts)
        if isinstance(value, list):
            return [self.mask_value(v, scope, counts) for v in value]
        if isinstance(value, tuple):
            return tuple(self.mask_value(v, scope, counts) for v in value)
        if isinstance(value, dict):
            return {
                k: v if k in STRUCTURAL_KEYS and isinstance(v, str) else self.mask_value(v, scope, counts)
                for k, v in value.items()
            }
        return value

    def findings_in(self, value: Any, where: str = "") -> Iterable[tuple[str, Finding]]:
        """(field path, finding) for every text in a JSON-like value (lint --pii)."""
        if isinstance(value, str):
            for f in self.find(value):
                yield where, f
        elif isinstance(value, list):
            for i, v in enumerate(value):
                yield from self.findings_in(v, f"{where}[{i}]")
        elif isinstance(value, dict):
            for k, v in value.items():
                if not (k in STRUCTURAL_KEYS and isinstance(v, str)):
                    yield from self.findings_in(v, f"{where}.{k}" if where else str(k))


# -- construction ---------------------------------------------------------------------------------


def load_detectors(specs: Iterable[str] = ()) -> list[Detector]:
    """The built-in detectors, then those named by SPECS (module:factory), the environment and the
    entry-point group; a factory returns one detector or a list of them."""
    from importlib.metadata import entry_points

    from ernie_ops.privacy.detectors import builtin_detectors

    detectors: list[Detector] = builtin_detectors()
    named = [*specs, *filter(None, os.environ.get(DETECTORS_ENV, "").split(","))]
    factories = [_factory(spec.strip()) for spec in named]
    factories += [ep.load() for ep in entry_points(group=ENTRY_POINTS)]
    for factory in factories:
        made = factory()
        for d in made if isinstance(made, list | tuple) else [made]:
            if not isinstance(d, Detector):
                raise UserError(
                    f"{factory!r} made {d!r}, which is not a detector (name, types, trigger, find)"
                )
            detectors.append(d)
    return detectors


def _factory(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise UserError(f"detector {spec!r} is not module:factory", where=DETECTORS_ENV)
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise UserError(f"cannot load the detector {spec}: {err}") from None


def read_salt(salt_file: Path | None = None) -> bytes | None:
    if salt_file is not None:
        try:
            salt = Path(salt_file).read_bytes().strip()
        except OSError as err:
            raise UserError(f"cannot read the salt file {salt_file}: {err.strerror}") from None
        if len(salt) < 16:
            raise UserError(f"the salt in {salt_file} is shorter than 16 bytes", hint="use a long random one")
        return salt
    env = os.environ.get(SALT_ENV, "").encode()
    return env or None


_DEFAULT: Masker | None = None


def default_masker() -> Masker:
    """The masker every writer of user content uses: placeholders, all detectors (built once)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Masker(load_detectors())
    return _DEFAULT


def masker(
    strategy: str = "placeholder", salt_file: Path | None = None, detectors: Iterable[str] = ()
) -> Masker:
    salt = read_salt(salt_file) if strategy == "hash" else None
    return Masker(load_detectors(detectors), strategy, salt)
