"""The built-in detectors: a pattern finds candidates, a validation keeps the real ones.

Checksum-validated types (IBAN, payment cards, VAT numbers, national identifiers) are reported only
when the checksum holds, so random digit runs are not; phone numbers must be valid for their
region in libphonenumber's metadata; identifiers whose checksum is weak (a 9- or 11-digit number
with one check digit passes by chance one time in ten) need a keyword before them or their
official grouping. Boundaries are ASCII classes, so a value written against CJK text is found.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator
from functools import cache, lru_cache
from typing import TYPE_CHECKING

from ernie_ops.privacy.base import (
    API_KEY,
    CARD,
    EMAIL,
    IBAN,
    IP_ADDRESS,
    PHONE,
    POSTAL_ADDRESS,
    URL_CREDENTIALS,
    VALIDATION_CACHE,
    Finding,
    Taken,
    before,
    entropy,
    inside,
    prefixes,
)
from ernie_ops.privacy.ids import IdentifierDetector

if TYPE_CHECKING:
    from stdnum.util import NumberValidationModule


class PatternDetector:
    """A detector from one pattern and a check on each match (the check may narrow the span)."""

    def __init__(
        self,
        name: str,
        type_: str,
        pattern: str,
        trigger: bytes,
        check: Callable[[str, re.Match[str]], tuple[int, int, str] | None] | None = None,
        flags: int = 0,
    ):
        self.name, self.types = name, (type_,)
        self.type = type_
        self.pattern = re.compile(pattern, flags)
        self.trigger: re.Pattern[bytes] | None = re.compile(trigger)
        self.check = check

    skips_outranked = True  # find() takes what outranking detectors found (base.inside)

    def find(self, text: str, taken: Taken = ()) -> Iterator[Finding]:
        return self._find(self.pattern, text, taken)

    def _find(self, pattern: re.Pattern[str], text: str, taken: Taken) -> Iterator[Finding]:
        for m in pattern.finditer(text):
            if taken and inside(taken, m.start()):
                continue
            if self.check is None:
                yield Finding(m.start(), m.end(), self.type, self.name)
                continue
            span = self.check(text, m)
            if span:
                yield Finding(span[0], span[1], self.type, span[2])


# ------------------------------------------------------------------------------------------------
# e-mail, URL credentials, IP addresses

EMAIL_PATTERN = (
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![A-Za-z0-9-])"
)
URL_PATTERN = (
    r"(?<![A-Za-z0-9])[A-Za-z][A-Za-z0-9+.-]{1,15}://[^\s/:@\"'<>]+:[^\s/@\"'<>]+@[^\s/?#\"'<>]+"
    r"[^\s\"'<>]*"
)


def _url(text: str, m: re.Match[str]) -> tuple[int, int, str] | None:
    value = m.group().rstrip(".,;:!?)]}")
    return m.start(), m.start() + len(value), "userinfo"


IPV4_PATTERN = (
    r"(?<![0-9A-Za-z.])(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
    r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?![0-9]|\.[0-9])"
)
IPV6_PATTERN = r"(?<![0-9A-Za-z:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![0-9A-Za-z:])"
_VERSION_WORD = re.compile(r"(?i)(?:\bv|version|versión|ver\.|release|build|版本|kernel|firmware)\s*$")


# Loopback (127.0.0.0/8, ::1) and unspecified (0.0.0.0, ::) addresses name "this machine" on every
# machine: they identify nobody, and the toolkit's own diagnostics are full of them
# (http://127.0.0.1:8180/v1/...). Private ranges (10/8, 172.16/12, 192.168/16) and link-local ones
# are still reported: they locate a device in one household's or company's network (an fe80::
# address may embed the device's MAC address), which is personal data once combined with the rest
# of a log or chat.
def _ipv4(text: str, m: re.Match[str]) -> tuple[int, int, str] | None:
    value = m.group()
    if value.startswith("127.") or value == "0.0.0.0":
        return None
    # a version string looks like an address: "version 10.0.19041.1" is not one
    if _VERSION_WORD.search(text, max(0, m.start() - 12), m.start()):
        return None
    return m.start(), m.end(), "ipv4"


def _ipv6(text: str, m: re.Match[str]) -> tuple[int, int, str] | None:
    value = m.group()
    if value.count(":") < 2 or len(value) < 6:  # "::", "a::b" are too short to be taken as addresses
        return None
    try:
        address = ipaddress.IPv6Address(value)
    except ValueError:
        return None
    if address.is_loopback or address.is_unspecified:  # ::1, 0:0:0:0:0:0:0:0 (see _ipv4)
        return None
    return m.start(), m.end(), "ipv6"


# ------------------------------------------------------------------------------------------------
# payment cards and IBANs


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# issuer prefixes and lengths (ISO/IEC 7812 ranges of the common networks)
_CARD_RANGES = re.compile(
    r"4[0-9]{12}(?:[0-9]{3}){0,2}"  # Visa 13, 16, 19
    r"|(?:5[1-5][0-9]{2}|222[1-9]|22[3-9][0-9]|2[3-6][0-9]{2}|27[01][0-9]|2720)[0-9]{12}"  # Mastercard
    r"|3[47][0-9]{13}"  # American Express
    r"|3(?:0[0-5]|[689][0-9])[0-9]{11,16}"  # Diners
    r"|(?:6011|65[0-9]{2}|64[4-9][0-9])[0-9]{12,15}"  # Discover
    r"|35(?:2[89]|[3-8][0-9])[0-9]{12,15}"  # JCB
    r"|62[0-9]{14,17}"  # UnionPay
    r"|(?:5018|5020|5038|5893|6304|6759|676[1-3])[0-9]{8,15}"  # Maestro
)
CARD_PATTERN = r"(?<![0-9A-Za-z.,+-])[0-9](?:[ -]?[0-9]){12,18}(?![0-9A-Za-z]|[.,-][0-9])"


def _card(text: str, m: re.Match[str]) -> tuple[int, int, str] | None:
    value = m.group()
    # a number may run into the next one: "6011 4242 1977 3617 87 x 96"; a shorter prefix counts
    # when it is bare digits or groups of four
    for end in prefixes(value, " -"):
        part = value[:end]
        digits = part.replace(" ", "").replace("-", "")
        if len(digits) < 13:
            break
        if end < len(value) and not (part.isdigit() or _FOURS.fullmatch(part)):
            continue
        one_separator = not (" " in part and "-" in part)
        if len(digits) <= 19 and one_separator and _CARD_RANGES.fullmatch(digits) and luhn_ok(digits):
            return m.start(), m.start() + end, "luhn"
    return None


_FOURS = re.compile(r"[0-9]{4}(?:([ -])[0-9]{4})(?:\1[0-9]{4}){1,2}")


# the first letter, then the lookbehind: scanned faster than with the lookbehind first (ids.py)
IBAN_PATTERN = r"[A-Z](?<![A-Za-z0-9][A-Z])[A-Z][0-9]{2}(?: ?[A-Z0-9]){10,30}(?![A-Za-z0-9])"


_LETTER_DIGITS = {ord(c): str(ord(c) - 55) for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"}


def _mod97(compact: str) -> bool:
    """ISO 7064 mod 97-10 of an IBAN without spaces (stdnum's first check, without its cleaning)."""
    return int((compact[4:] + compact[:4]).translate(_LETTER_DIGITS)) % 97 == 1


@cache  # keyed by two capital letters: at most 676 entries
def _iban_country(code: str) -> tuple[re.Pattern[str] | None, NumberValidationModule | None]:
    """stdnum's data on the IBANs of country CODE: its BBAN format (None: not an IBAN country) and
    the module of its own check (stdnum.be.iban, ...), as stdnum.iban.validate looks them up."""
    from stdnum import iban, numdb
    from stdnum.util import get_cc_module

    country = numdb.get("iban").info(code)[0][1]
    if not country:
        return None, None
    return iban._struct_to_re(country.get("bban", "")), get_cc_module(code, "iban")


@cache
def _stdnum_helper() -> bool:
    """Whether stdnum still has the private helper `_iban_country` builds formats with; a release
    without it gets stdnum's own (slower) iban.is_valid instead of an AttributeError."""
    from stdnum import iban

    return hasattr(iban, "_struct_to_re")


@lru_cache(maxsize=VALIDATION_CACHE)
def _iban_valid(compact: str) -> bool:
    """stdnum.iban.is_valid of an IBAN without spaces whose mod 97 holds (_mod97): the rest of its
    validate, with the country's data looked up once: its numdb look-up, cleaning and regex compile
    per call were 2/3 of its cost; the IBAN detector fell from 21.8 to 11.8 us a fresh PII record."""
    if not _stdnum_helper():
        from stdnum import iban

        return bool(iban.is_valid(compact))
    bban, country_check = _iban_country(compact[:2])
    if bban is None or not bban.match(compact[4:]):
        return False
    return country_check is None or bool(country_check.is_valid(compact))


def _iban(text: str, m: re.Match[str]) -> tuple[int, int, str] | None:
    value = m.group()
    end = len(value)
    while end >= 15:  # the longest prefix that is a valid IBAN (a word may follow it)
        compact = value[:end].replace(" ", "")
        if _mod97(compact) and _iban_valid(compact):
            return m.start(), m.start() + end, "iban"
        cut = value.rfind(" ", 0, end)
        end = cut if cut > 0 else end - 1
    return None


# ------------------------------------------------------------------------------------------------
# phone numbers

# a run of digits and the separators phone numbers are written with, optionally after + or 00
PHONE_PATTERN = (
    r"(?<![0-9A-Za-z+_./:-])(?:\+|00)?\(?[0-9](?:[0-9]|[ ./-](?=[0-9(])|\(|\)[ -]?){5,22}[0-9]"
    r"(?![0-9A-Za-z]|[.:/-][0-9])"
)
_PHONE_WORDS = re.compile(
    r"(?i)tel|phone|call|mobil|handy|fax|ruf|appel|portable|joindre|whatsapp|"
    r"sms|contact|kontakt|erreich|电话|手机|联系|致电|拨打|热线|微信"
)
# a number written the way phone numbers are (the trigger but for bare runs of digits, which are
# phone numbers only after a phone word: _region)
_SHAPED = re.compile(
    r"\+ ?[1-9][0-9]|00[1-9][0-9]|(?:^|[^0-9./:-])\(?0[0-9]{1,4}\)?[ ./-]{0,2}[0-9]{2}"
    r"|\(?[2-9][0-9]{2}\)?[ .-]?[0-9]{3}[ .-][0-9]{4}|1[3-9][0-9][ -][0-9]{4}"
)
# a number after these words is an order, invoice or ticket number even when it looks like a phone's
_NOT_PHONE_WORDS = re.compile(
    r"(?i)order|bestell|auftrag|commande|rechnung|invoice|facture|ticket|referen|tracking|kunden|"
    r"client|customer|订单|单号|发票|工单"
)
_DATE = re.compile(
    r"[0-9]{1,2}[./-][0-9]{1,2}[./-](?:[0-9]{4}|[0-9]{2})|[0-9]{4}[./-][0-9]{1,2}[./-][0-9]{1,2}.*"
)
_NANP = re.compile(r"\(?[2-9][0-9]{2}\)?[ .-]?[2-9][0-9]{2}[ .-][0-9]{4}|\([2-9][0-9]{2}\) ?[2-9][0-9]{6}")
_NOT_DIGIT = re.compile(r"[^0-9]")
_CN_MOBILE = re.compile(r"1[3-9][0-9](?:[ -]?[0-9]{4}){2}")
# national forms with a trunk prefix 0, tried in this order (the rest of the EU after ours)
NATIONAL_REGIONS = (
    "DE", "FR", "GB", "CN", "AT", "BE", "NL", "IT", "ES", "PT", "IE", "FI", "SE", "DK", "PL",
    "CZ", "SK", "HU", "SI", "HR", "RO", "BG", "GR", "LT", "LV", "EE", "LU", "MT", "CY", "CH",
)  # fmt: skip


class PhoneDetector:
    """Phone numbers in international form (+49 ..., 0049 ...) anywhere, and in national form
    (030 1234567, (415) 555-2671, 138 1234 5678) when valid for one of the regions; a bare run of
    digits without + or separators only after a word such as Tel, phone, Handy, 电话."""

    name = "phonenumbers"
    types = (PHONE,)
    # international, national with a trunk 0 (not a date's "-05"), NANP, Chinese mobile, and a bare
    # run of digits after a phone word (_region: 10 or 11 digits, the US and Chinese mobiles)
    trigger: re.Pattern[bytes] | None = re.compile(
        _SHAPED.pattern.encode() + b"|(?i:" + _PHONE_WORDS.pattern[4:].encode() + rb")[^\n]*[0-9]{10}"
    )

    def __init__(self, regions: tuple[str, ...] = NATIONAL_REGIONS):
        self.regions = regions
        self.pattern = re.compile(PHONE_PATTERN)

    skips_outranked = True

    def find(self, text: str, taken: Taken = ()) -> Iterator[Finding]:
        return self._find(self.pattern, text, taken)

    def _find(self, pattern: re.Pattern[str], text: str, taken: Taken) -> Iterator[Finding]:
        for m in pattern.finditer(text):
            if taken and inside(taken, m.start()):
                continue
            value = m.group()
            digits = _NOT_DIGIT.sub("", value)
            if not 7 <= len(digits) <= 17 or _DATE.match(value):
                continue
            region = self._region(text, m, value, digits)
            if region:
                yield Finding(m.start(), m.end(), PHONE, region)

    def _region(self, text: str, m: re.Match[str], value: str, digits: str) -> str | None:
        """The region the number is valid for, or None. Its shape picks the region to try first
        (most candidates are other numbers: addresses, cards, identifiers, versions, and have no
        phone shape); the keyword look-ups and libphonenumber come after, on the few left."""
        bare = value.isdigit()
        if value.startswith(("+", "00")):
            number, region = ("+" + value[2:] if value.startswith("00") else value), None
        elif bare and not before(text, m.start(), _PHONE_WORDS):
            return None
        elif value.startswith(("0", "(0")):
            number, region = value, "national"
        elif _NANP.fullmatch(value) or (bare and len(digits) == 10):
            number, region = value, "US"
        elif _CN_MOBILE.fullmatch(value):
            number, region = value, "CN"
        else:
            return None
        if before(text, m.start(), _NOT_PHONE_WORDS):
            return None
        if region is None:
            return "intl" if _valid(number, None) else None
        if region == "national":
            return next((r for r in self.regions if _valid(number, r)), None)
        return region if _valid(number, region) else None


@lru_cache(maxsize=VALIDATION_CACHE)
def _valid(value: str, region: str | None) -> bool:
    import phonenumbers

    try:
        return bool(phonenumbers.is_valid_number(phonenumbers.parse(value, region)))
    except phonenumbers.NumberParseException:
        return False


# ------------------------------------------------------------------------------------------------
# API keys and tokens

# vendor prefixes: OpenAI, GitHub, Hugging Face, AWS, Slack, GitLab, Google, Stripe, npm, JWT
API_KEY_PATTERN = (
    r"(?<![A-Za-z0-9_-])(?:"
    r"sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}"
    r"|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{40,}"
    r"|hf_[A-Za-z0-9]{30,}"
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"
    r"|glpat-[A-Za-z0-9_-]{20,}"
    r"|AIza[0-9A-Za-z_-]{35}"
    r"|(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}"
    r"|npm_[A-Za-z0-9]{36}"
    r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
    r")(?![A-Za-z0-9_-])"
)
API_KEY_TRIGGER = (
    "sk-|gh[pousr]_|github_pat_|hf_|AKIA|ASIA|xox[abposr]-|glpat-|AIza|_live_|_test_|npm_|eyJ"
    "|(?i:key|token|secret|passw|passe|pwd|kennwort|bearer)|密码|令牌|密钥"
).encode()
# a value after a name that says it is secret: token=..., "api_key": "...", password: ...
SECRET_PATTERN = (
    r"(?i)(?:(?<![A-Za-z0-9])(?:api[_ -]?key|access[_ -]?key|secret(?:[_ -]?key)?|client[_ -]?secret|"
    r"auth[_ -]?token|access[_ -]?token|refresh[_ -]?token|token|passwor[dt]|passwd|pwd|"
    r"mot de passe|passwort|kennwort|密码|令牌|密钥)"
    r"[\"']?\s*(?:[:=]|:=|=>|是|为|：)\s*[\"']?|bearer\s+)"
    r"(?P<value>[A-Za-z0-9+/_.~!@#$%^&*=-]{8,})"
)
_PASSWORD_WORD = re.compile(r"(?i)passw|passwd|pwd|mot de passe|kennwort|密码")


def _secret(text: str, m: re.Match[str]) -> tuple[int, int, str] | None:
    value = m.group("value").rstrip(".,;")
    start = m.start("value")
    if _PASSWORD_WORD.search(m.group(0)[: m.start("value") - m.start()]):
        # a password needs no randomness to be secret, only not to be a plain word
        if len(value) >= 6 and not value.isalpha():
            return start, start + len(value), "password"
        return None
    classes = sum(
        map(bool, (re.search(r"[a-z]", value), re.search(r"[A-Z]", value), re.search(r"[0-9]", value)))
    )
    if len(value) >= 16 and classes >= 2 and entropy(value) >= 3.5:
        return start, start + len(value), "key=value"
    return None


class SecretDetector(PatternDetector):
    """Vendor-prefixed keys and tokens, and high-entropy values after a secret's name."""

    def __init__(self) -> None:
        super().__init__("api-key", API_KEY, API_KEY_PATTERN, API_KEY_TRIGGER)
        self.secret = re.compile(SECRET_PATTERN)

    def find(self, text: str, taken: Taken = ()) -> Iterator[Finding]:
        for m in self.pattern.finditer(text):
            if not (taken and inside(taken, m.start())):
                yield Finding(m.start(), m.end(), API_KEY, "prefix")
        for m in self.secret.finditer(text):
            if taken and inside(taken, m.start("value")):
                continue
            span = _secret(text, m)
            if span:
                yield Finding(span[0], span[1], API_KEY, span[2])


# ------------------------------------------------------------------------------------------------
# postal addresses: a street with its number next to a postal code (patterns that hold for DE,
# FR, GB, US and CN; a postal code on its own is not personal data and is not reported)

_UP = "A-ZÄÖÜÉÈ"
_LO = "a-zäöüßéèêëàâçîïôûù"
# the words that name a street, in each country's pattern below
_DE_STREETS = r"straße|strasse|str\.|weg|allee|platz|gasse|ring|damm|ufer|chaussee|steig|pfad"
_FR_STREETS = r"rue|avenue|av\.|boulevard|bd|place|allée|impasse|chemin|quai|route|cours"
_GB_STREETS = (
    "Street|St|Road|Rd|Lane|Avenue|Close|Way|Drive|Place|Gardens|Terrace|Crescent|Square|Hill|Grove|Row|Mews"
)
_US_STREETS = (
    "Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Drive|Dr|Lane|Ln|Way|Court|Ct|Place|Pl|Parkway|Pkwy"
)
# (a country's pattern, words one of which each of its matches holds: AddressDetector)
ADDRESS_BRANCHES = (
    # DE/AT: Musterstraße 12a, 10115 Berlin
    (
        rf"(?:[{_UP}][{_LO}]+[ -])?[{_UP}][{_LO}-]*(?:{_DE_STREETS})\s+[0-9]{{1,4}}\s?[a-z]?,?\s+"
        rf"(?:D-)?[0-9]{{4,5}}(?:\s+[{_UP}][{_LO}]+)?",
        _DE_STREETS,
    ),
    # FR: 12 rue de la Paix, 75002 Paris
    (
        rf"[0-9]{{1,4}}(?:\s?(?:bis|ter))?,?\s+(?:{_FR_STREETS})\s+[^,\n0-9]{{2,40}}?,?\s+[0-9]{{5}}\s+"
        rf"[{_UP}][{_LO}{_UP}-]+",
        _FR_STREETS,
    ),
    # GB: 10 Downing Street, London SW1A 2AA
    (
        rf"[0-9]{{1,4}}\s+(?:[A-Z][a-z]+\s){{1,3}}(?:{_GB_STREETS})\.?,?\s+(?:[A-Z][a-z]+,?\s+){{0,2}}"
        r"[A-Z]{1,2}[0-9][A-Z0-9]?\s?[0-9][A-Z]{2}(?![A-Za-z0-9])",
        _GB_STREETS,
    ),
    # US: 1600 Pennsylvania Avenue NW, Washington, DC 20500
    (
        rf"[0-9]{{1,5}}\s+(?:[A-Z][a-z]+\s){{1,3}}(?:{_US_STREETS})\.?(?:\s[NSEW]{{1,2}})?,?\s+"
        r"(?:[A-Z][a-z]+\s?){1,3},?\s+[A-Z]{2}\s+[0-9]{5}(?:-[0-9]{4})?(?![0-9])",
        _US_STREETS,
    ),
    # CN: 北京市朝阳区建国路88号 (邮编 100022)
    (
        r"(?:[\u4e00-\u9fff]{1,6}(?:省|市|区|县|自治区)){1,3}[\u4e00-\u9fff]{1,10}(?:路|街|大道|巷|胡同)"
        r"[0-9]{1,5}号(?:[0-9]{1,4}(?:室|楼|栋|单元))*(?:[，, ]*(?:邮编|邮政编码)[:：]?\s*[0-9]{6})?",
        "号",
    ),
)
ADDRESS_PATTERN = "|".join(branch for branch, _ in ADDRESS_BRANCHES)
ADDRESS_FIRST = f"(?=[{_UP}0-9\u4e00-\u9fff])"
# a postal code before a city (DE, FR), after a state (US), a UK postcode, a Chinese house number
ADDRESS_TRIGGER = (
    # each code is preceded by a space (or D-) in the patterns: not the tail of a longer number
    "(?:^|[^0-9A-Za-z.,:/])[0-9]{4,5},? [A-ZÄÖÜÉ]|(?:^|[^0-9A-Za-z])[A-Z]{2} [0-9]{5}(?:[^0-9]|$)"
    "|(?:^|[^0-9A-Za-z])[A-Z]{1,2}[0-9][A-Z0-9]? ?[0-9][A-Z]{2}(?:[^0-9A-Za-z]|$)|[0-9]号"
).encode()


class AddressDetector(PatternDetector):
    """Postal addresses: a scan with only the countries' patterns whose street words are in the
    text (an RE2 set of them, 0.6 us a text): a pattern that cannot match anywhere changes no
    match of the others. 10 -> 4 us a text the trigger picks on the bench's fresh PII records,
    where one country's words are in most of them. Without google-re2 every pattern is tried."""

    def __init__(self) -> None:
        super().__init__("address", POSTAL_ADDRESS, ADDRESS_FIRST + f"(?:{ADDRESS_PATTERN})", ADDRESS_TRIGGER)

    def find(self, text: str, taken: Taken = ()) -> Iterator[Finding]:
        words = _street_words()
        if words is None:
            return self._find(self.pattern, text, taken)
        branches = words(text.encode("utf-8", "surrogatepass"))
        if not branches:
            return iter(())
        return self._find(_address_pattern(tuple(sorted(branches))), text, taken)


@cache
def _address_pattern(branches: tuple[int, ...]) -> re.Pattern[str]:
    """The address pattern of these ADDRESS_BRANCHES (indexes, ascending), in their order."""
    return re.compile(ADDRESS_FIRST + f"(?:{'|'.join(ADDRESS_BRANCHES[i][0] for i in branches)})")


@cache
def _street_words() -> Callable[[bytes], list[int] | None] | None:
    """The C++ match of an RE2 set of ADDRESS_BRANCHES' street words (None without google-re2)."""
    try:
        import re2
    except ImportError:
        return None
    words = re2.Set.SearchSet(re2.Options())
    for _, street_words in ADDRESS_BRANCHES:
        words.Add(street_words)
    words.Compile()
    return getattr(words, "_set", words).Match  # past the wrapper's str check, as masker.Gate


def builtin_detectors() -> list:
    return [
        PatternDetector("email", EMAIL, EMAIL_PATTERN, rb"@"),
        PatternDetector(
            "url-credentials", URL_CREDENTIALS, URL_PATTERN, rb"://[^\s/@\"]{1,64}:[^\s/@\"]+@", _url
        ),
        PatternDetector("ipv4", IP_ADDRESS, IPV4_PATTERN, rb"[0-9]\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]", _ipv4),
        PatternDetector(
            "ipv6", IP_ADDRESS, IPV6_PATTERN, rb"[0-9A-Fa-f]::|::[0-9A-Fa-f]|(?:[0-9A-Fa-f]{1,4}:){7}", _ipv6
        ),
        # the shortest match of the pattern, a card starting with an issuer's digit (2-6)
        PatternDetector("card", CARD, CARD_PATTERN, rb"(?:^|[^0-9])[2-6](?:[ -]?[0-9]){12}", _card),
        PatternDetector("iban", IBAN, IBAN_PATTERN, rb"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){10}", _iban),
        IdentifierDetector(),
        PhoneDetector(),
        SecretDetector(),
        AddressDetector(),
    ]
