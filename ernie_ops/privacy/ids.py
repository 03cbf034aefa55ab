"""VAT numbers and national identifiers, validated by python-stdnum.

Covered: Germany, France, China, the United States, the United Kingdom and the other EU member
states (the identifiers of people that stdnum validates, plus every EU VAT number through
`stdnum.eu.vat`). Each scheme names its stdnum module, its length in digits and whether it can
stand alone: a scheme whose number is long and structured (an 18-character Chinese ID with its
birth date and check character, a 15-digit French NIR) or written in its official grouping
(123-45-6789, 12 345 678 901, 850730-1234) is reported on its checksum alone; a bare 9 to 13 digit
number, whose single check digit passes by chance one time in ten or eleven, only after a word
that names an identifier (Steuer-ID, SSN, NIR, PESEL, 身份证, ...).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache, lru_cache
from types import ModuleType

from ernie_ops.privacy.base import NATIONAL_ID, VALIDATION_CACHE, VAT_ID, Finding, Taken, before, inside

ID_WORDS = re.compile(
    r"(?i)(?<![a-z])(?:id|ident|identifikation|steuer|tax|tin|fiscal|fiscale|sozial|versicherung|social|"
    r"security|ssn|itin|ein|insurance|ausweis|personal|national|passport|nir|nif|insee|sécu|sécurité|"
    r"pesel|bsn|dni|nie|pps|cpr|hetu|personnummer|codice|oib|egn|emso|cnp|amka|nhs|utr|rodné|"
    r"henkilötunnus|asmens|isikukood|burgerservice|sofi|rijksregister|registre)|身份证|证件|税号|社保|纳税"
)


@dataclass(frozen=True)
class Scheme:
    name: str  # e.g. de.idnr: the stdnum module under stdnum.
    length: int  # characters once separators are removed
    standalone: bool = False  # reported without a keyword before it
    grouped: str | None = None  # the official written grouping, which stands alone too
    type: str = NATIONAL_ID

    @property
    def grouping(self) -> re.Pattern[str] | None:
        return _compiled(self.grouped) if self.grouped else None


@cache
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


@cache
def validator(name: str) -> Callable[[str], bool]:
    """stdnum's `is_valid` of the module NAME, behind the module's own first checks where they are
    much cheaper than the rest of its validation (_FIRST_CHECKS)."""
    module = importlib.import_module(f"stdnum.{name}")
    first = _FIRST_CHECKS.get(name)
    decide = _DECIDES.get(name, _is_valid)

    @lru_cache(maxsize=VALIDATION_CACHE)
    def is_valid(value: str) -> bool:
        if first is not None:
            try:
                if not first(module, value):
                    return False
            except Exception:  # a form the first check does not know: the module decides
                pass
        try:
            return decide(module, value)
        except Exception:
            # is_valid catches only stdnum's ValidationError; cn.ric raises KeyError for a number
            # whose province is known and its county not (1 random 18-digit run in 800): such a
            # number did not validate, and a dataset must not stop the masking
            return False

    return is_valid


def _is_valid(module: ModuleType, value: str) -> bool:
    return bool(module.is_valid(value))


def _eu_vat(vat: ModuleType, value: str) -> bool:
    """`stdnum.eu.vat.is_valid` of a VAT_PATTERN match: its cleaning leaves such a value as it is
    (ASCII letters, digits, spaces, + and *), so the module of the country it starts with decides
    (3 of its 8 to 12 us a call were the cleaning)."""
    country = vat._get_cc_module(value[:2])
    return country is not None and bool(country.is_valid(value))


# module -> what decides in place of the module's is_valid (the same answers on our candidates)
_DECIDES: dict[str, Callable[[ModuleType, str], bool]] = {"eu.vat": _eu_vat}


def _ric_first(ric: ModuleType, value: str) -> bool:
    """What `stdnum.cn.ric.validate` checks before it looks the birth place up in its numdb file
    (most of its cost): the length, the digits and the check character, with its calc_check_digit.
    False only where validate fails."""
    number = value.upper()
    return len(number) == 18 and number[:-1].isdigit() and number[-1] == ric.calc_check_digit(number)


def _digits_check(length: int, check: Callable[[ModuleType, str], bool]) -> Callable[[ModuleType, str], bool]:
    """A first check of a number of LENGTH ASCII digits: CHECK, the module's own check digit (or
    checksum) test, which its validate applies to such a number after compact() (a no-op on
    it); any other form goes to the module as it is."""

    def first(module: ModuleType, value: str) -> bool:
        if len(value) != length or not (value.isascii() and value.isdigit()):
            return True
        return check(module, value)

    return first


# module -> a test that fails only where the module's validate fails (a necessary condition). Most
# keyword-led 10- and 11-digit candidates fail every scheme of their length: a check digit costs
# 1 to 2 us, the module's validate 5 to 8 (its compact() and exceptions), per scheme tried.
_FIRST_CHECKS: dict[str, Callable[[ModuleType, str], bool]] = {
    "cn.ric": _ric_first,
    "de.idnr": _digits_check(11, lambda m, v: m.mod_11_10.is_valid(v)),
    "hr.oib": _digits_check(11, lambda m, v: m.mod_11_10.is_valid(v)),
    "pl.pesel": _digits_check(11, lambda m, v: v[-1] == m.calc_check_digit(v[:-1])),
    "ee.ik": _digits_check(11, lambda m, v: v[-1] == m.calc_check_digit(v)),
    "lt.asmens": _digits_check(11, lambda m, v: v[-1] == m.calc_check_digit(v)),
    "gr.amka": _digits_check(11, lambda m, v: m.luhn.checksum(v) == 0),
    "fr.nir": _digits_check(15, lambda m, v: m.calc_check_digits(v) == v[13:]),
}


# numbers of digits only (the last character of a Chinese ID may be X)
DIGIT_SCHEMES = (
    Scheme("cn.ric", 18, standalone=True),
    Scheme("fr.nir", 15, standalone=True),
    Scheme("fr.nif", 13, grouped=r"[0-3][0-9] [0-9]{2} [0-9]{3} [0-9]{3} [0-9]{3}"),
    Scheme("de.idnr", 11, grouped=r"[0-9]{2} [0-9]{3} [0-9]{3} [0-9]{3}"),
    Scheme("us.ssn", 9, grouped=r"[0-9]{3}-[0-9]{2}-[0-9]{4}"),
    Scheme("us.itin", 9, grouped=r"9[0-9]{2}-[0-9]{2}-[0-9]{4}"),
    Scheme("us.ein", 9, grouped=None),
    Scheme("gb.nhs", 10),
    Scheme("gb.utr", 10),
    Scheme("pl.pesel", 11),
    Scheme("be.nn", 11, grouped=r"[0-9]{2}\.[0-9]{2}\.[0-9]{2}-[0-9]{3}\.[0-9]{2}"),
    Scheme("ee.ik", 11),
    Scheme("lt.asmens", 11),
    Scheme("hr.oib", 11),
    Scheme("gr.amka", 11),
    Scheme("nl.bsn", 9),
    Scheme("pt.nif", 9),
    Scheme("at.vnr", 10),
    Scheme("bg.egn", 10),
    Scheme("ro.cnp", 13),
    Scheme("si.emso", 13),
    Scheme("se.personnummer", 10, grouped=r"[0-9]{6}[-+][0-9]{4}"),
    Scheme("se.personnummer", 12, grouped=r"[0-9]{8}-[0-9]{4}"),
    Scheme("cz.rc", 10, grouped=r"[0-9]{6}/[0-9]{4}"),
    Scheme("sk.rc", 10, grouped=r"[0-9]{6}/[0-9]{4}"),
    Scheme("lv.pvn", 11, grouped=r"[0-9]{6}-[0-9]{5}"),  # personal codes too
    Scheme("dk.cpr", 10),
)
_BY_LENGTH: dict[int, list[Scheme]] = {}
for _s in DIGIT_SCHEMES:
    _BY_LENGTH.setdefault(_s.length, []).append(_s)

_SHORTEST = min(_BY_LENGTH)
_NO_SEPARATORS = str.maketrans("", "", " ./-")

# Patterns below start with the characters a match can start with and look behind only after
# them ("[0-9](?<![...][0-9])" for "(?<![...])[0-9]"): a pattern that begins with a lookbehind is
# tried at every position of the text, one that begins with a character class is skipped to its
# next candidate by the regex engine's scan (the VAT pattern scans 2.4x faster, tests/pii's texts).
DIGITS_PATTERN = re.compile(
    r"[0-9](?<![0-9A-Za-z.,/+-][0-9])(?:[0-9]|[ ./-](?=[0-9]))*[0-9Xx](?![0-9A-Za-z]|[.,/-][0-9])"
)

# identifiers with letters in them, each one pattern and standalone
LETTER_SCHEMES = (
    (
        "it.codicefiscale",
        r"[A-Z]{6}[0-9LMNPQRSTUV]{2}[A-EHLMPR-T][0-9LMNPQRSTUV]{2}[A-Z][0-9LMNPQRSTUV]{3}[A-Z]",
    ),
    ("es.dni", r"[0-9]{8}-?[A-Z]"),
    ("es.nie", r"[XYZ]-?[0-9]{7}-?[A-Z]"),
    ("fi.hetu", r"[0-9]{6}[-+A-FU-Y][0-9]{3}[0-9A-Y]"),
    ("ie.pps", r"[0-9]{7}[A-W][A-IW]?"),
    ("gb.nino", r"[A-CEGHJ-PR-TW-Z]{2} ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?[A-D]"),
)
LETTERS_PATTERN = re.compile(
    "|".join(f"(?P<{name.replace('.', '_')}>{p})" for name, p in LETTER_SCHEMES),
)
LETTERS_PATTERN = re.compile(
    r"(?=[0-9A-Z])(?<![0-9A-Za-z])(?:" + LETTERS_PATTERN.pattern + r")(?![0-9A-Za-z])"
)

_NINO_BAD_PREFIX = {"BG", "GB", "NK", "KN", "TN", "NT", "ZZ"}


def _nino_ok(value: str) -> bool:
    """The UK National Insurance number's published rules (stdnum has no module for it): two
    prefix letters from the allowed set, not an unused pair, six digits, a suffix A-D."""
    value = value.replace(" ", "")
    return value[:2] not in _NINO_BAD_PREFIX and value[1] != "O"


# VAT numbers: an EU or UK country prefix, then 8 to 12 characters (groups may be spaced)
VAT_PREFIXES = "ATU|BE|BG|CY|CZ|DE|DK|EE|EL|ES|FI|FR|GB|HR|HU|IE|IT|LT|LU|LV|MT|NL|PL|PT|RO|SE|SI|SK|XI"

_by_letter: dict[str, list[str]] = {}
for _p in VAT_PREFIXES.split("|"):
    _by_letter.setdefault(_p[0], []).append(_p[1:])
# "(?<![0-9A-Za-z])(?:ATU|BE|BG|...)" as "A(?<![0-9A-Za-z]A)(?:TU)|B(?<![0-9A-Za-z]B)(?:E|G)|...":
# the same matches in the same order of preference, each branch starting with its letter
_VAT_PREFIX = "|".join(f"{c}(?<![0-9A-Za-z]{c})(?:{'|'.join(rest)})" for c, rest in _by_letter.items())
VAT_PATTERN = re.compile(
    rf"(?:{_VAT_PREFIX}) ?[0-9A-Z](?:[0-9A-Z+*]| (?=[0-9A-Z]))" + r"{6,14}(?![0-9A-Za-z])"
)

# What a match of VAT_PATTERN and of LETTERS_PATTERN holds (each without its lookarounds, which RE2
# has not): where one of these is nowhere in a text, that scan is skipped. One pass of RE2's set
# (0.8 us a text) in place of the two scans (1.4 and 2.8 us) in most texts the trigger picks: on
# the bench's fresh PII records a VAT prefix is in 41% of them, an identifier with letters in 17%.
_SCAN_HINTS = (
    rf"(?:{VAT_PREFIXES}) ?[0-9A-Z][0-9A-Z+* ]{{6}}",
    "|".join(pattern for _, pattern in LETTER_SCHEMES),
)


@cache
def _hints() -> Callable[[bytes], list[int] | None] | None:
    """The C++ match of an RE2 set of _SCAN_HINTS (None without google-re2: both scans run)."""
    try:
        import re2
    except ImportError:
        return None
    hints = re2.Set.SearchSet(re2.Options())
    for pattern in _SCAN_HINTS:
        hints.Add(pattern)
    hints.Compile()
    return getattr(hints, "_set", hints).Match  # past the wrapper's str check, as masker.Gate


class IdentifierDetector:
    name = "stdnum"
    types = (VAT_ID, NATIONAL_ID)
    # bare runs of 9+ digits, the official groupings, a country prefix, identifiers with letters
    trigger: re.Pattern[bytes] | None = re.compile(
        rb"[0-9]{9}|[0-9]{3}-[0-9]{2}-[0-9]{4}|[0-9]{2}-[0-9]{7}|[0-9]{1,3} [0-9]{2,3} [0-9]{2,4}"
        rb"|[0-9]{2}\.[0-9]{2}\.[0-9]{2}-|[0-9]{6}[-+/A-FU-Y][0-9]{3}|[0-9]{8}-[0-9]{4}"
        rb"|[A-Z]{2,3} ?[0-9A-Z][0-9 ]{5}|[A-Z]{6}[0-9]{2}|[0-9]{7}-?[A-Z]|[XYZ]-?[0-9]{7}"
    )

    skips_outranked = True  # see base.inside

    def find(self, text: str, taken: Taken = ()) -> Iterator[Finding]:
        vat = letters = True
        hints = _hints()
        if hints is not None:
            found = hints(text.encode("utf-8", "surrogatepass")) or ()
            vat, letters = 0 in found, 1 in found
        if vat:
            yield from self._vat(text, taken)
        yield from self._digits(text, taken)
        if letters:
            yield from self._letters(text, taken)

    def _vat(self, text: str, taken: Taken) -> Iterator[Finding]:
        for m in VAT_PATTERN.finditer(text):
            if taken and inside(taken, m.start()):
                continue
            value = m.group()
            end = len(value)
            while end > 0:  # the longest space-separated prefix that is a valid VAT number
                part = value[:end]
                module = "gb.vat" if part.startswith("GB") else "eu.vat"
                if validator(module)(part):
                    yield Finding(m.start(), m.start() + end, VAT_ID, module)
                    break
                end = value.rfind(" ", 0, end)

    def _digits(self, text: str, taken: Taken) -> Iterator[Finding]:
        for m in DIGITS_PATTERN.finditer(text):
            if m.end() - m.start() < _SHORTEST:  # a year, a count, a price: most candidates
                continue
            if taken and inside(taken, m.start()):
                continue
            whole = m.group()
            # a number may run into the next one ("240-09-5957 737"): a prefix cut at a space
            # counts when it has no space of its own (else the grouping is ambiguous): the one
            # before the first space
            space = whole.find(" ")
            ends = (len(whole), space) if space > 0 else (len(whole),)
            for end in ends:
                found = self._digit_scheme(text, m.start(), whole[:end])
                if found:
                    yield found
                    break

    def _digit_scheme(self, text: str, start: int, value: str) -> Finding | None:
        compact = value.translate(_NO_SEPARATORS)
        schemes = _BY_LENGTH.get(len(compact))
        if not schemes:
            return None
        keyword: bool | None = None  # looked up once, when a scheme needs it
        for scheme in schemes:
            grouping = scheme.grouping
            if not (scheme.standalone or (grouping and grouping.fullmatch(value))):
                if "." in value or "/" in value:  # dotted or slashed: only in its official grouping
                    continue
                if keyword is None:
                    keyword = before(text, start, ID_WORDS, 48)
                if not keyword:
                    continue
            if validator(scheme.name)(value if scheme.name == "fr.nir" else compact):
                return Finding(start, start + len(value), scheme.type, scheme.name)
        return None

    def _letters(self, text: str, taken: Taken) -> Iterator[Finding]:
        for m in LETTERS_PATTERN.finditer(text):
            if taken and inside(taken, m.start()):
                continue
            group = m.lastgroup or ""
            name = group.replace("_", ".")
            value = m.group()
            ok = _nino_ok(value) if name == "gb.nino" else validator(name)(value)
            if ok and (name != "ie.pps" or before(text, m.start(), ID_WORDS, 48)):
                yield Finding(m.start(), m.end(), NATIONAL_ID, name)
