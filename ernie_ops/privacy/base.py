"""What every detector shares: a finding (position, type), the detector interface, and helpers.

A detector finds personal data in one text and says where it is and what it is. The built-in ones
(detectors.py) are patterns with a validation (a checksum, libphonenumber's metadata, a parser);
a team adds others, such as a NER model for names of people, through `Detector` without changing
any caller (see `ernie_ops.privacy.masker.load_detectors`).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from operator import attrgetter
from typing import Protocol, runtime_checkable

# The types the built-in detectors report. A plugged-in detector may report others (PERSON, ...).
EMAIL = "EMAIL"
PHONE = "PHONE"
IBAN = "IBAN"
CARD = "CARD"
VAT_ID = "VAT_ID"
NATIONAL_ID = "NATIONAL_ID"
IP_ADDRESS = "IP_ADDRESS"
URL_CREDENTIALS = "URL_CREDENTIALS"
API_KEY = "API_KEY"
POSTAL_ADDRESS = "POSTAL_ADDRESS"

TYPES = (
    EMAIL,
    PHONE,
    IBAN,
    CARD,
    VAT_ID,
    NATIONAL_ID,
    IP_ADDRESS,
    URL_CREDENTIALS,
    API_KEY,
    POSTAL_ADDRESS,
)
# Types whose findings pass a checksum: never reported when it fails.
CHECKSUM_TYPES = (IBAN, CARD, VAT_ID, NATIONAL_ID)

# When two findings overlap, the higher one wins (a URL's credentials contain something that looks
# like an e-mail address; an IBAN's digits may look like a phone number).
PRIORITY = {
    URL_CREDENTIALS: 100,
    API_KEY: 90,
    IBAN: 80,
    CARD: 70,
    VAT_ID: 65,
    NATIONAL_ID: 60,
    EMAIL: 50,
    POSTAL_ADDRESS: 45,
    IP_ADDRESS: 40,
    PHONE: 30,
}


@dataclass(frozen=True, slots=True)
class Finding:
    start: int  # character offsets in the text, end exclusive
    end: int
    type: str  # EMAIL, PHONE, ... (upper case, used in placeholders)
    detail: str = ""  # which rule or identifier scheme matched (de.idnr, eu.vat, ...): never the value


@runtime_checkable
class Detector(Protocol):
    """Finds personal data in a text.

    `trigger` is a bytes pattern that matches somewhere in a record's raw JSON line whenever the
    detector could find anything in it (checked first, in C, so that the records without a hit cost
    nothing more); None means "always look", which is right for a NER model."""

    name: str
    types: tuple[str, ...]
    trigger: re.Pattern[bytes] | None

    def find(self, text: str) -> Iterable[Finding]: ...


# Fullwidth digits, plus sign, hyphen and at sign (common in Chinese text) read as ASCII; the
# mapping is one character to one, so positions in the normalised text are positions in the text.
_FULLWIDTH = {0xFF10 + i: 0x30 + i for i in range(10)} | {0xFF0B: 0x2B, 0xFF0D: 0x2D, 0xFF20: 0x40}
_HAS_FULLWIDTH = re.compile("[\uff10-\uff19\uff0b\uff0d\uff20]")


def normalise(text: str) -> str:
    if text.isascii():  # a flag of the string, no scan: 57% of the bench's PII texts (287 -> 149 ns)
        return text
    return text.translate(_FULLWIDTH) if _HAS_FULLWIDTH.search(text) else text


def top_priority(detector: Detector) -> int:
    """The highest priority among the types DETECTOR reports (unknown types rank 20)."""
    return max((PRIORITY.get(t, 20) for t in detector.types), default=20)


Taken = Sequence[Finding]


def inside(taken: Taken, pos: int) -> bool:
    """Does POS fall inside a value in TAKEN?

    The built-in detectors (`skips_outranked = True`) take, besides the text, the values already
    found by detectors whose types outrank all of theirs. A candidate that starts inside one of them
    would lose to it in `resolve` whatever it is, so its validation (a checksum, libphonenumber)
    is skipped: the digits of an IBAN are not tried as a phone number, a VAT number or a card."""
    # a loop, not any() over a generator (330 -> 120 ns a call): called for most candidates
    for f in taken:  # noqa: SIM110
        if f.start <= pos < f.end:
            return True
    return False


_START = attrgetter("start")


def resolve(findings: Iterable[Finding]) -> list[Finding]:
    """The findings that do not overlap, in text order: on an overlap the higher type wins, then
    the longer span."""
    # the usual case, no two findings overlap: all of them, in text order (what the loop below
    # returns then; a finding of no length, never made by the built-in detectors, takes the loop)
    ordered = sorted(findings, key=_START)
    if all(a.start < a.end <= b.start for a, b in pairwise(ordered)) and (
        not ordered or ordered[-1].start < ordered[-1].end
    ):
        return ordered
    chosen: list[Finding] = []
    for f in sorted(ordered, key=lambda f: (-PRIORITY.get(f.type, 20), f.start - f.end, f.start)):
        if all(f.end <= c.start or f.start >= c.end for c in chosen):
            chosen.append(f)
    chosen.sort(key=lambda f: f.start)
    return chosen


def entropy(value: str) -> float:
    """Shannon entropy in bits per character."""
    counts = Counter(value)
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


# the last sentence mark, number or line break before a value; a line break after a colon is not
# one ("PESEL:\n9110..." is labelled). Matched from the window's start: the greedy .* runs to its
# end and backs off to the last one (a search for one with none after it, a lookahead to the end
# at each candidate, took 1.2 us more a call on the bench's texts).
_TO_CLAUSE_END = re.compile(r"(?s:.*)(?:[0-9.!?;。！？；]|(?<![:：])(?<![:：][ \t])\n)")


def before(text: str, start: int, pattern: re.Pattern[str], window: int = 40) -> bool:
    """Does PATTERN occur in the WINDOW characters before START, in the same clause and with no
    other number in between (a keyword that says what this value is, not what another one is)?"""
    lo = max(0, start - window)
    cut = _TO_CLAUSE_END.match(text, lo, start)
    return pattern.search(text, cut.end() if cut else lo, start) is not None


# Validation results by value, per validator (about 30 of them): the same hotline, support address,
# company VAT ID or customer IBAN recurs across the records of a real dataset, and libphonenumber
# and stdnum cost 5 to 100 us a call. Bounded: 8192 entries each grew the peak RSS from 54 MiB
# (250 MB file) to 65 MiB (1 GB); on data whose values never recur (the bench's default) it
# gains nothing and costs a dictionary lookup.
VALIDATION_CACHE = 2048


def prefixes(value: str, separators: str) -> list[int]:
    """The ends of VALUE's prefixes made of whole groups (split by SEPARATORS), longest first:
    "240-09-5957 737" holds an identifier without its last group."""
    return [len(value)] + [i for i in range(len(value) - 1, 0, -1) if value[i] in separators]
