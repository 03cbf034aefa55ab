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

import contextlib
import hashlib
import hmac
import importlib
import os
import re
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any

from ernie_ops.errors import UserError
from ernie_ops.privacy.base import PRIORITY, Detector, Finding, normalise, resolve, top_priority

STRATEGIES = ("placeholder", "hash", "remove")
SALT_ENV = "ERNIE_OPS_PII_SALT"
DETECTORS_ENV = "ERNIE_OPS_PII_DETECTORS"
ENTRY_POINTS = "ernie_ops.pii_detectors"
# Keys whose values are structure, not text: never masked (nor is any key).
STRUCTURAL_KEYS = frozenset(
    {"role", "from", "speaker", "tag", "type", "weight", "label", "sort", "is_system"}
)

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
        # the order find() runs them in: plugged-in detectors, then the built-in ones, those whose
        # types outrank the others' first (each skips what an outranking one found: base.inside)
        self.detectors = sorted(detectors, key=lambda d: (_skips(d), -top_priority(d)))
        self._outranked = {d: top_priority(d) for d in self.detectors if _skips(d)}
        self.strategy = strategy
        self._salt = salt or b""
        self._gate = Gate(self.detectors)

    # -- finding ---------------------------------------------------------------------------------

    def may_hold(self, raw: bytes) -> bool:
        """False only when no detector could find anything in these bytes (a raw JSON line)."""
        return bool(self._gate.triggered(raw, escapes=True))

    def triggered(self, raw: bytes) -> list[Detector]:
        """The detectors whose trigger matches these bytes (a raw JSON line: escapes count)."""
        return self._gate.triggered(raw, escapes=True)

    def hit_lines(self, lines: list[bytes]) -> list[int]:
        """Which of these raw JSON lines may hold something (one scan for the whole block)."""
        return self._gate.hit_lines(lines)

    def find(self, text: str, detectors: list[Detector] | None = None) -> list[Finding]:
        """Every finding in TEXT, without overlaps, in order. A detector runs only when its trigger
        matches the text (or, given DETECTORS, only those), so most texts cost one scan and nothing
        more."""
        if not text:
            return []
        norm = normalise(text)
        if detectors is None:
            detectors = self._gate.text(norm)  # in self.detectors' order
        else:
            detectors = [d for d in self.detectors if d in detectors]
        found: list[Finding] = []
        resolved, resolved_at = found, 0  # resolve(found[:resolved_at]): redone when found grew
        for d in detectors:
            top = self._outranked.get(d)
            if top is None or not found:
                found.extend(d.find(norm))
                continue
            if resolved_at != len(found):
                resolved, resolved_at = resolve(found), len(found)
            taken = [f for f in resolved if PRIORITY.get(f.type, 20) > top]
            found.extend(d.find(norm, taken))  # type: ignore[call-arg]
        if resolved_at == len(found):
            return resolved
        return resolve(found) if len(found) > 1 else found

    # -- replacing -------------------------------------------------------------------------------

    def replacement(self, type_: str, value: str, scope: Scope) -> str:
        if self.strategy == "remove":
            return ""
        if self.strategy == "hash":
            digest = hmac.new(self._salt, f"{type_}\0{value}".encode(), hashlib.sha256).hexdigest()
            return f"<{type_}_{digest[:12]}>"
        return f"<{type_}_{scope.number(type_, value)}>"

    def mask_text(self, text: str, scope: Scope | None = None, counts: Counter | None = None) -> str:
        return self._replace(text, self.find(text), scope if scope is not None else Scope(), counts)

    def _replace(self, text: str, findings: list[Finding], scope: Scope, counts: Counter | None) -> str:
        if not findings:
            return text
        out, pos = [], 0
        for f in findings:
            out.append(text[pos : f.start])
            out.append(self.replacement(f.type, text[f.start : f.end], scope))
            pos = f.end
            if counts is not None:
                counts[f.type] += 1
        out.append(text[pos:])
        return "".join(out)

    def mask_value(
        self,
        value: Any,
        scope: Scope | None = None,
        counts: Counter | None = None,
        context: Iterable[str] = (),
    ) -> Any:
        """A JSON-like value with every text masked: strings in lists and dict values, except the
        values of structural keys (role, from, ...); keys are kept as they are.

        Each text is searched by the detectors its own trigger selects (a record's address is in one
        message, its phone number in another: neither detector reads the rest). A value found
        anywhere in the record is masked wherever else it occurs in it, also where nothing around
        it says what it is (an assistant repeating the user's tax ID bare); CONTEXT texts (an eval
        item's prompt) are searched for such values but not returned."""
        texts: list[str] = []
        _texts(value, texts)
        if not texts:
            return value
        every = texts + [c for c in context if c]
        found = [self.find(t) for t in every]
        if not any(found):
            return value
        scope = scope if scope is not None else Scope()
        if not _recurs(every, found):  # the usual case: each value only where it was found
            if not any(found[: len(texts)]):  # found in the context only
                return value
            masked = [self._replace(t, fs, scope, counts) for t, fs in zip(texts, found, strict=False)]
            return _rebuild(value, iter(masked))
        # one text for the whole record (separators no value crosses) to look for recurrences
        joined = _SEPARATOR.join(every)
        starts = list(accumulate((len(t) + len(_SEPARATOR) for t in every[:-1]), initial=0))
        findings = [
            Finding(f.start + base, f.end + base, f.type, f.detail)
            for base, fs in zip(starts, found, strict=True)
            for f in fs
        ]
        findings = _everywhere(joined, findings)
        per_text: list[list[Finding]] = [[] for _ in texts]
        for f in findings:
            i = bisect_right(starts, f.start) - 1
            base = starts[i]
            if i < len(texts) and f.end <= base + len(texts[i]):  # not across texts, not in the context
                per_text[i].append(Finding(f.start - base, f.end - base, f.type, f.detail))
        if not any(per_text):
            return value
        masked = [self._replace(t, fs, scope, counts) for t, fs in zip(texts, per_text, strict=True)]
        return _rebuild(value, iter(masked))

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


# between the texts of one record: no detector's pattern matches across a NUL between newlines
_SEPARATOR = "\n\x00\n"


def _recurs(texts: list[str], found: list[list[Finding]]) -> bool:
    """Does a value found in TEXTS (as `_everywhere` takes them: 4 characters or more) occur in
    them more than once?"""
    values = {
        t[f.start : f.end] for t, fs in zip(texts, found, strict=True) for f in fs if f.end - f.start >= 4
    }
    if not values:
        return False
    # one count in the joined texts: no value holds the separator (nor crosses it), so the same count
    joined = _SEPARATOR.join(texts)
    return any(joined.count(v) > 1 for v in values)


def _everywhere(text: str, findings: list[Finding]) -> list[Finding]:
    """FINDINGS plus every other occurrence in TEXT of a value they found (whole, not inside a
    longer word or number)."""
    more = []
    for value, f in {text[f.start : f.end]: f for f in findings if f.end - f.start >= 4}.items():
        if text.count(value) < 2:  # the usual case: only where it was found
            continue
        at = text.find(value)
        while at >= 0:
            end = at + len(value)
            if not (_alnum(text, at - 1) or _alnum(text, end)):
                more.append(Finding(at, end, f.type, f.detail))
            at = text.find(value, at + 1)
    return resolve([*findings, *more]) if more else findings


def _alnum(text: str, i: int) -> bool:
    return 0 <= i < len(text) and text[i].isascii() and text[i].isalnum()


def _texts(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, list | tuple):
        for v in value:
            _texts(v, out)
    elif isinstance(value, dict):
        for k, v in value.items():
            if not (k in STRUCTURAL_KEYS and isinstance(v, str)):
                _texts(v, out)


def _rebuild(value: Any, masked: Iterator[str]) -> Any:
    """VALUE with its texts (in `_texts` order) replaced by MASKED."""
    if isinstance(value, str):
        return next(masked)
    if isinstance(value, list):
        return [_rebuild(v, masked) for v in value]
    if isinstance(value, tuple):
        return tuple(_rebuild(v, masked) for v in value)
    if isinstance(value, dict):
        return {
            k: v if k in STRUCTURAL_KEYS and isinstance(v, str) else _rebuild(v, masked)
            for k, v in value.items()
        }
    return value


# In a raw JSON line an escape (\u0040, non-ASCII written as \uXXXX, \/) could hide any value, and
# fullwidth digits and signs read as ASCII (base.normalise): such a line is looked at by every detector.
_ESCAPES = b"\\\\[u/]|" + "|".join("０１２３４５６７８９＋－＠").encode()


_CONTROLS_AS_SPACES = bytes.maketrans(bytes(range(32)), b" " * 32)


# Triggers with long counted runs ([0-9]{9}, (?: ?[A-Z0-9]){10}, [0-9]{10} after a phone word):
# in one RE2 set their counters multiply into more DFA states than new texts ever stop adding
# (8.8 us a text on fresh chats, the DFA still growing after 30000 texts). Three sets, these two
# groups and the rest, keep each DFA small enough to warm up: 3.5 us a text (scripts/bench_pii.py's
# fresh messages, 32000 texts, measured per grouping).
_GATE_GROUPS = (("iban", "card", "stdnum"), ("phonenumbers",))


class Gate:
    """Which detectors could find something in some bytes: a pass of RE2's multi-pattern DFA
    (google-re2) per group of triggers (_GATE_GROUPS) when it is installed, else one `re` search
    per trigger."""

    def __init__(self, detectors: list[Detector]):
        self.always = [d for d in detectors if d.trigger is None]
        self.gated = [d for d in detectors if d.trigger is not None]
        self.all = list(detectors)
        self.escapes = re.compile(_ESCAPES)
        # (an RE2 set, the index in self.gated of each of its patterns)
        self.sets: list[tuple[Any, list[int]]] = []
        self.slow: list[Detector] = []  # triggers RE2 cannot take (lookbehind): searched with re
        union = b"|".join([_ESCAPES] + [b"(?:" + d.trigger.pattern + b")" for d in self.gated])  # type: ignore[union-attr]
        self.union: Any = re.compile(union)
        try:
            import re2
        except ImportError:
            return
        # The union with a 24 MiB budget: with RE2's default (8 MiB) finding where a match in a record
        # with personal data starts fell back from the DFA to the NFA, 12.6 us a hit line against
        # 2.3 (the same matches). The DFA's states take memory as they are added: on the bench's
        # 1 GB file hit_lines' peak RSS grew 4 MiB over the default's, 16 MiB with 64 (1.8 us).
        options = re2.Options()
        options.max_mem = 24 << 20
        with contextlib.suppress(re2.error):
            self.union = re2.compile(union, options)
        options = re2.Options()
        options.max_mem = 64 << 20
        group = {name: g for g, names in enumerate(_GATE_GROUPS, 1) for name in names}
        by_group: dict[int, list[int]] = {}
        for i, d in enumerate(self.gated):
            try:
                re2.compile(d.trigger.pattern)  # type: ignore[union-attr]
            except re2.error:
                self.slow.append(d)
                continue
            by_group.setdefault(group.get(d.name, 0), []).append(i)
        for members in by_group.values():
            rs = re2.Set.SearchSet(options)
            for i in members:
                rs.Add(self.gated[i].trigger.pattern)  # type: ignore[union-attr]
            rs.Compile()
            # the set's C++ Match on bytes, past the wrapper's str check (1 us a text of 3)
            self.sets.append((getattr(rs, "_set", rs).Match, members))

    def hit_lines(self, lines: list[bytes]) -> list[int]:
        """The indexes of the LINES some detector could find something in: one scan of the whole
        block, resumed past each line found (a match never spans lines but for one leading
        character: its end tells the line)."""
        if self.always:
            return [i for i, line in enumerate(lines) if line and not line.isspace()]
        ends = list(accumulate(map(len, lines)))
        ends = [end + i for i, end in enumerate(ends)]  # each line's newline, in the joined block
        block, search, last = b"\n".join(lines), self.union.search, len(lines) - 1
        hits: list[int] = []
        pos = 0
        while (m := search(block, pos)) is not None:
            i = bisect_left(ends, m.end() - 1)
            hits.append(i)
            if i >= last:
                break
            # from this line's newline on: a trigger may take it as its leading character
            pos = ends[i] if m.end() <= ends[i] else ends[i] + 1
        return hits

    def text(self, norm: str) -> list[Detector]:
        """The detectors whose trigger matches a decoded (normalised) text. Control characters,
        newlines and tabs included, read as spaces: the triggers are written for raw JSON, where
        they are escapes, and the patterns behind them take any whitespace where a space is."""
        return self.triggered(norm.encode("utf-8", "surrogatepass").translate(_CONTROLS_AS_SPACES))

    def triggered(self, raw: bytes, escapes: bool = False) -> list[Detector]:
        if escapes and (b"\\" in raw or b"\xef\xbc" in raw) and self.escapes.search(raw):
            return self.all
        if not self.sets:
            hit = [d for d in self.gated if d.trigger.search(raw)]  # type: ignore[union-attr]
        else:
            found = [members[i] for match, members in self.sets for i in match(raw) or ()]
            if len(found) > 1:
                found.sort()
            hit = [self.gated[i] for i in found]
            if self.slow:
                hit += [d for d in self.slow if d.trigger.search(raw)]  # type: ignore[union-attr]
                hit.sort(key=self.gated.index)
        return self.always + hit if self.always else hit  # in the order the detectors were given


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


def _skips(detector: Detector) -> bool:
    return bool(getattr(detector, "skips_outranked", False))


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


NO_MASK_ENV = "ERNIE_OPS_NO_MASK"


def masking_on(flag: bool | None = None) -> bool:
    """Whether what the toolkit writes (eval results and reports, smoke evidence, pipeline reports)
    is masked: on unless FLAG is False or ERNIE_OPS_NO_MASK=1 turns it off for the run."""
    if flag is not None:
        return flag
    return os.environ.get(NO_MASK_ENV, "").strip().lower() not in ("1", "true", "yes", "on")


def mask_fields(
    row: dict[str, Any], fields: Iterable[str], m: Masker | None = None, context: Iterable[str] = ()
) -> dict[str, Any]:
    """ROW with the values of FIELDS masked, with one placeholder numbering for the whole row (an
    e-mail address in the expected answer and in the prediction gets the same placeholder); values
    found in CONTEXT (the prompt) are masked in the fields too."""
    m = m or default_masker()
    names = [f for f in fields if row.get(f) is not None]
    masked = m.mask_value([row[f] for f in names], Scope(), context=context)
    return {**row, **dict(zip(names, masked, strict=True))}


def masking_note(masked: bool) -> str:
    """The sentence a report carries about masking."""
    if masked:
        return (
            "Personal data in answers and expected values is masked (`<EMAIL_1>`, `<PHONE_1>`, ...); "
            "names of people are not detected."
        )
    return (
        "**Personal data is NOT masked in this report**: masking was turned off for this run "
        f"({NO_MASK_ENV}=1 or --no-mask)."
    )
