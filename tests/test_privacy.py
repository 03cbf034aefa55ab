"""Personal data: the detectors against the labelled corpus in tests/pii/, the masking strategies,
`data mask` and `data lint --pii`."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest

from ernie_ops.cli.main import main
from ernie_ops.errors import UserError
from ernie_ops.privacy import CHECKSUM_TYPES, TYPES, Finding, Masker, default_masker, masker
from ernie_ops.privacy.masker import load_detectors
from ernie_ops.privacy.score import score

PII = Path(__file__).parent / "pii"
sys.path.insert(0, str(PII))
import generate  # noqa: E402  (tests/pii/generate.py)

STRUCTURED = set(TYPES)  # every built-in type is checksum-validated or structured


def corpus() -> list[dict]:
    return [json.loads(line) for line in (PII / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]


def test_the_corpus_is_what_its_generator_makes() -> None:
    assert generate.generate(600, 20) == corpus()
    langs = {r["lang"] for r in corpus()}
    planted = {t for r in corpus() for *_, t in r["spans"]}
    assert langs == {"de", "fr", "zh", "en"}
    assert planted == set(TYPES)


@pytest.mark.parametrize("records", [corpus(), generate.generate(400, 1234)], ids=["corpus", "held-out"])
def test_recall_and_precision_meet_the_targets(records: list[dict]) -> None:
    s = score(records, default_masker(), keep_examples=True)
    for t in STRUCTURED:
        assert s.recall(t) >= 0.99, (t, s.misses[:5])
    assert s.precision() >= 0.98, s.false[:5]


@pytest.mark.parametrize(
    "text",
    [
        "Karte 4111 1111 1111 1112",  # Luhn fails
        "IBAN DE88 3704 0044 0532 0130 00",  # check digits fail
        "Steuer-ID 86095742718",  # idnr check digit fails
        "身份证号 110105194912310021",  # check character fails
        "USt-IdNr. DE136695977",
        "Bestellnummer 4711-2024-0815, am 2024-03-15 14:32:07",
        "upgrade to version 10.0.19041.1 or v2.13.0",
        "Referenz 48392017457 und 1234567890123456",
    ],
)
def test_nothing_is_reported_when_the_checksum_fails_or_there_is_nothing(text: str) -> None:
    assert default_masker().find(text) == []


def test_each_type_is_found_with_its_position() -> None:
    text = (
        "Mail anna@example.de, Tel +49 30 12345678, IBAN DE89 3704 0044 0532 0130 00, "
        "Karte 4111 1111 1111 1111, USt DE136695976, Steuer-ID 86095742719, IP 192.168.1.20, "
        "https://bob:s3cr3t@db.example.com/x, sk-abcdefghijklmnopqrstuvwx12, Musterstraße 12, 10115 Berlin"
    )
    found = {text[f.start : f.end]: f.type for f in default_masker().find(text)}
    assert found == {
        "anna@example.de": "EMAIL",
        "+49 30 12345678": "PHONE",
        "DE89 3704 0044 0532 0130 00": "IBAN",
        "4111 1111 1111 1111": "CARD",
        "DE136695976": "VAT_ID",
        "86095742719": "NATIONAL_ID",
        "192.168.1.20": "IP_ADDRESS",
        "https://bob:s3cr3t@db.example.com/x": "URL_CREDENTIALS",
        "sk-abcdefghijklmnopqrstuvwx12": "API_KEY",
        "Musterstraße 12, 10115 Berlin": "POSTAL_ADDRESS",
    }
    assert set(CHECKSUM_TYPES) <= set(found.values())


def test_a_library_error_on_odd_input_is_a_failed_validation_not_a_crash() -> None:
    # stdnum's cn.ric raises KeyError (not its ValidationError) for this number: a known province
    # (23) with an unknown county; the check character holds, so it reaches the birth-place lookup
    text = "身份证号 233036148110045772, ID 233036148110045772"
    assert default_masker().find(text) == []
    assert default_masker().mask_value({"messages": [{"role": "user", "content": text}]})


@pytest.mark.parametrize(
    "text",
    [
        "sweep: POST http://127.0.0.1:11494/v1/chat/completions 200",  # the toolkit's own diagnostics
        "listening on 0.0.0.0:8180, health at http://127.255.3.1:8180/health",
        "bound [::1]:8180 and [::]:8180; also 0:0:0:0:0:0:0:1 and 0:0:0:0:0:0:0:0",
    ],
)
def test_loopback_and_unspecified_addresses_are_not_reported(text: str) -> None:
    assert default_masker().find(text) == []


def test_private_link_local_and_public_addresses_are_reported() -> None:
    text = (
        "hosts 10.0.0.7, 192.168.1.20, 172.16.4.2, 8.8.8.8, 128.0.0.1, fe80::1ff:fe23:4567:890a, 2001:db8::1f"
    )
    found = [text[f.start : f.end] for f in default_masker().find(text) if f.type == "IP_ADDRESS"]
    assert found == [
        "10.0.0.7",
        "192.168.1.20",
        "172.16.4.2",
        "8.8.8.8",
        "128.0.0.1",
        "fe80::1ff:fe23:4567:890a",
        "2001:db8::1f",
    ]


def test_placeholders_are_consistent_within_a_record_and_keys_and_roles_are_kept() -> None:
    record = {
        "messages": [
            {"role": "user", "content": "I am anna@example.de, call +4930123456"},
            {"role": "assistant", "content": "Noted anna@example.de; and bob@example.com?"},
        ]
    }
    masked = default_masker().mask_value(record)
    assert masked == {
        "messages": [
            {"role": "user", "content": "I am <EMAIL_1>, call <PHONE_1>"},
            {"role": "assistant", "content": "Noted <EMAIL_1>; and <EMAIL_2>?"},
        ]
    }


def test_hashing_needs_a_salt_and_never_shows_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ERNIE_OPS_PII_SALT", raising=False)
    with pytest.raises(UserError, match="salt"):
        masker("hash")
    monkeypatch.setenv("ERNIE_OPS_PII_SALT", "a-long-secret-salt-value")
    m = masker("hash")
    one, two = m.mask_text("anna@example.de"), m.mask_text("x anna@example.de")
    assert one.startswith("<EMAIL_") and two == "x " + one
    assert "secret" not in one
    salt = tmp_path / "salt"
    salt.write_text("another-long-secret-salt\n")
    assert masker("hash", salt).mask_text("anna@example.de") != one  # the salt keys the hash
    assert masker("remove").mask_text("mail anna@example.de now") == "mail  now"


class NameDetector:
    """What a team's NER detector looks like to the masker (here: one fixed name)."""

    name, types, trigger = "names", ("PERSON",), None

    def find(self, text: str):  # type: ignore[no-untyped-def]
        at = text.find("Anna Schmidt")
        return [Finding(at, at + 12, "PERSON", "test")] if at >= 0 else []


def make_name_detector() -> NameDetector:
    return NameDetector()


def test_a_detector_plugs_in_without_changing_callers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERNIE_OPS_PII_DETECTORS", f"{__name__}:make_name_detector")
    m = Masker(load_detectors())
    assert m.mask_text("Anna Schmidt wrote anna@example.de") == "<PERSON_1> wrote <EMAIL_1>"
    assert m.may_hold(b"no digits at all")  # a detector without a trigger looks at every record


def test_data_mask_writes_a_masked_copy_with_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    records = corpus()[:80]
    source = tmp_path / "chats.jsonl"
    lines = [json.dumps({"messages": r["messages"]}, ensure_ascii=False) for r in records]
    lines.insert(
        3,
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}),
    )
    lines.insert(5, "not json: anna@example.de")
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "masked.jsonl.gz"
    assert main(["data", "mask", str(source), str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    data = gzip.decompress(out.read_bytes()).decode()
    planted = [m["content"][a:b] for r in records for i, a, b, _ in r["spans"] for m in [r["messages"][i]]]
    assert planted and not [v for v in planted if v in data]
    assert "anna@example.de" not in data and summary["not_json"] == 1
    assert summary["found"]["EMAIL"] >= 1 and summary["records"] == len(lines)
    out_lines = data.splitlines()
    assert out_lines[3] == lines[3]  # a record without personal data is copied byte for byte
    first = json.loads(out_lines[0])
    assert [m["role"] for m in first["messages"]] == [m["role"] for m in records[0]["messages"]]


def test_data_mask_refuses_to_overwrite_its_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = tmp_path / "chats.jsonl"
    source.write_text('{"messages": [{"role": "user", "content": "anna@example.de"}]}\n')
    assert main(["data", "mask", str(source), str(source)]) != 0
    assert "destroy the input" in capsys.readouterr().err
    assert "anna@example.de" in source.read_text()


def test_lint_pii_counts_and_places_but_never_shows_the_values(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    records = corpus()[:40]
    source = tmp_path / "chats.jsonl"
    source.write_text(
        "\n".join(json.dumps({"messages": r["messages"]}, ensure_ascii=False) for r in records) + "\n",
        encoding="utf-8",
    )
    main(["data", "lint", str(source), "--pii"])
    out = capsys.readouterr().out
    assert "pii: EMAIL in messages[" in out or "pii: PHONE in messages[" in out
    assert "personal data in" in out
    planted = [m["content"][a:b] for r in records for i, a, b, _ in r["spans"] for m in [r["messages"][i]]]
    assert not [v for v in planted if v in out]


def test_without_re2_the_gate_falls_back_to_re_and_finds_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    records = corpus()[:60]
    fast = default_masker()
    monkeypatch.setitem(sys.modules, "re2", None)  # import re2 raises ImportError
    slow = Masker(load_detectors())
    assert not slow._gate.sets
    lines = [json.dumps({"messages": r["messages"]}, ensure_ascii=False).encode() for r in records]
    lines += [b'{"messages": [{"role": "user", "content": "nothing here, 2024-05-17 10:30"}]}']
    assert fast.hit_lines(lines) == slow.hit_lines(lines) == list(range(len(records)))
    for r in records:
        assert fast.mask_value(r["messages"]) == slow.mask_value(r["messages"])


def test_a_value_found_once_is_masked_wherever_it_recurs_in_the_record() -> None:
    record = {
        "messages": [
            {"role": "user", "content": "Meine Steuer-ID ist 86095742719."},
            {"role": "assistant", "content": "Notiert: 86095742719 (nicht 860957427190)."},
        ]
    }
    masked = default_masker().mask_value(record)
    assert masked["messages"][1]["content"] == "Notiert: <NATIONAL_ID_1> (nicht 860957427190)."
    # a prompt given as context lends its findings to the fields that are masked
    row = {"expected": "86095742719", "prediction": "86095742719"}
    from ernie_ops.privacy import mask_fields

    assert mask_fields(row, ["expected", "prediction"]) == row  # a bare 11-digit run alone is not one
    masked_row = mask_fields(row, ["expected", "prediction"], context=["Steuer-ID 86095742719?"])
    assert masked_row == {"expected": "<NATIONAL_ID_1>", "prediction": "<NATIONAL_ID_1>"}


def test_data_mask_reads_a_json_array_and_writes_jsonl(tmp_path: Path) -> None:
    source = tmp_path / "chats.json"
    records = [{"messages": [{"role": "user", "content": f"mail anna{i}@example.de"}]} for i in range(3)]
    source.write_text(json.dumps(records, indent=2))
    out = tmp_path / "masked.jsonl"
    assert main(["data", "mask", str(source), str(out)]) == 0
    lines = out.read_text().splitlines()
    assert [json.loads(line)["messages"][0]["content"] for line in lines] == ["mail <EMAIL_1>"] * 3


class _NoSkipping:
    """A built-in detector seen as a plugged-in one: it never gets the outranking values."""

    def __init__(self, detector) -> None:  # type: ignore[no-untyped-def]
        self.d, self.name, self.types = detector, detector.name, detector.types
        self.trigger = detector.trigger

    def find(self, text: str):  # type: ignore[no-untyped-def]
        return self.d.find(text)


def _texts_with_whitespace(records: list[dict]) -> list[str]:
    """The corpus texts, and each again with its spaces turned into newlines, tabs or quotes."""
    texts = [m["content"] for r in records for m in r["messages"]]
    return texts + [t.replace(" ", "\n\t "[i % 3], 1 + i % 4) for i, t in enumerate(texts)]


def test_skipping_what_an_outranking_detector_found_changes_no_finding() -> None:
    fast = default_masker()
    slow = Masker([_NoSkipping(d) for d in load_detectors()])
    assert not slow._outranked and fast._outranked
    texts = _texts_with_whitespace(corpus()[:300] + generate.generate(300, 4321))
    assert [fast.find(t) for t in texts] == [slow.find(t) for t in texts]


def test_each_text_is_searched_by_the_detectors_its_own_trigger_selects() -> None:
    """Per text gating finds what running every detector on every text finds (newlines and tabs
    included, which are escapes in the raw line)."""
    m = default_masker()
    texts = _texts_with_whitespace(corpus()[:300])
    assert [m.find(t) for t in texts] == [m.find(t, m.detectors) for t in texts]
    record = {"messages": [{"role": "user", "content": "Lieferadresse:\nHauptstraße 67,\n67204 München"}]}
    assert m.mask_value(record)["messages"][0]["content"] == "Lieferadresse:\n<POSTAL_ADDRESS_1>"


def test_a_label_and_a_colon_on_the_line_before_still_name_the_value() -> None:
    m = default_masker()
    assert [f.type for f in m.find("PESEL:\n91101381402")] == ["NATIONAL_ID"]
    assert m.find("PESEL\n91101381402") == []  # a new line without a colon: a new clause
    record = {
        "messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "PESEL:\n91101381402"}]
    }
    assert m.mask_value(record)["messages"][1]["content"] == "PESEL:\n<NATIONAL_ID_1>"


def test_hit_lines_finds_every_line_a_detector_could_find_something_in() -> None:
    m = default_masker()
    pii = [json.dumps({"messages": r["messages"]}, ensure_ascii=False).encode() for r in corpus()[:50]]
    plain = b'{"messages": [{"role": "user", "content": "nothing here, 2024-05-17 10:30"}]}'
    lines = [plain, *pii[:20], plain, plain, *pii[20:], b"", plain]
    expected = [i for i, line in enumerate(lines) if line in pii]
    assert m.hit_lines(lines) == expected == [i for i, line in enumerate(lines) if m.may_hold(line)]


def test_resolve_is_the_priority_rule_with_or_without_overlaps() -> None:
    """base.resolve's shortcut for findings that do not overlap returns what the full rule does
    (higher type, then longer span, then earlier start), overlaps or not."""
    import random

    from ernie_ops.privacy.base import PRIORITY, resolve

    def rule(findings: list[Finding]) -> list[Finding]:
        chosen: list[Finding] = []
        for f in sorted(findings, key=lambda f: (-PRIORITY.get(f.type, 20), f.start - f.end, f.start)):
            if all(f.end <= c.start or f.start >= c.end for c in chosen):
                chosen.append(f)
        return sorted(chosen, key=lambda f: f.start)

    r = random.Random(5)
    overlapping = 0
    for _ in range(2000):
        findings = []
        for _ in range(r.randint(0, 5)):
            start = r.randint(0, 60)
            findings.append(Finding(start, start + r.randint(1, 12), r.choice(TYPES)))
        expected = rule(findings)
        overlapping += len(expected) < len(findings)
        assert resolve(findings) == expected, findings
    assert 100 < overlapping < 1900  # both paths taken


def test_the_iban_check_is_stdnums_for_every_country_and_odd_forms() -> None:
    """detectors._mod97 + _iban_valid (stdnum's per-country data looked up once) decide as
    stdnum.iban.is_valid does: an IBAN of each registry country with a BBAN of its format, the same
    with a wrong check digit or a wrong length, letters where digits go, unknown countries, and the
    countries with their own check (BE, ES, ...) with random BBANs."""
    import random

    from stdnum import iban, numdb

    from ernie_ops.privacy.detectors import _iban_valid, _mod97

    r = random.Random(11)
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    kinds = {"n": "0123456789", "a": letters, "c": "0123456789" + letters}
    samples: list[str] = []
    countries = [(low, props) for _, low, _, props, _ in numdb.get("iban").prefixes]
    for code, props in [*countries, ("XX", {"bban": "18!n"}), ("QQ", {"bban": "4!a14!c"})]:
        for _ in range(30):
            parts = iban._struct_re.findall(props["bban"])  # ("8", "n"): 8 digits
            bban = "".join(r.choice(kinds[kind]) for n, kind in parts for _ in range(int(n)))
            if r.random() < 0.2:  # letters where digits go, or a character more or less
                bban = r.choice([bban + r.choice(kinds["c"]), bban[:-1], bban.replace("0", "Q")])
            value = code + iban.mod_97_10.calc_check_digits(bban + code) + bban
            samples += [value, value[:2] + f"{(int(value[2:4]) + 1) % 100:02d}" + value[4:]]
    valid = 0
    for value in samples:
        expected = iban.is_valid(value)
        valid += expected
        assert (_mod97(value) and _iban_valid(value)) == expected, value
    assert 0 < valid < len(samples)


def test_the_iban_check_falls_back_to_stdnum_without_its_private_helper(monkeypatch) -> None:
    """A python-stdnum release without iban._struct_to_re (private) is asked iban.is_valid itself."""
    from ernie_ops.privacy import detectors

    monkeypatch.setattr(detectors, "_stdnum_helper", lambda: False)
    monkeypatch.setattr(detectors, "_iban_country", None)  # would raise if it were still called
    detectors._iban_valid.cache_clear()
    try:
        assert detectors._iban_valid("DE89370400440532013000")
        assert not detectors._iban_valid("DE89370400440532013001")
    finally:
        detectors._iban_valid.cache_clear()


def test_the_eu_vat_check_is_stdnums_on_what_the_vat_pattern_matches() -> None:
    """ids.validator("eu.vat") (the country's module directly) decides as stdnum.eu.vat.is_valid
    does on VAT_PATTERN's matches: generated valid numbers and random ones for every prefix."""
    import random

    from stdnum.eu import vat

    from ernie_ops.privacy.ids import VAT_PATTERN, VAT_PREFIXES, validator

    r = random.Random(12)
    g = generate.Gen(13)
    samples = [g.vat() for _ in range(300)]
    for prefix in VAT_PREFIXES.split("|"):
        for _ in range(60):
            body = "".join(r.choice("0123456789" * 4 + "ABLPXZ+* ") for _ in range(r.randint(7, 13)))
            samples.append(prefix + body.strip())
    checked = valid = 0
    for text in samples:
        for m in VAT_PATTERN.finditer(text):
            expected = vat.is_valid(m.group())
            assert validator("eu.vat")(m.group()) == expected, m.group()
            checked, valid = checked + 1, valid + expected
    assert checked > 1000 and 100 < valid < checked


def test_the_identifier_scans_skipped_by_their_hints_would_have_found_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ids._SCAN_HINTS (VAT_PATTERN and LETTERS_PATTERN without their lookarounds, in RE2) skip
    only scans that find nothing: the detector finds the same with the hints and without them, on
    the corpus, generated records and random strings of identifier characters."""
    import random

    from ernie_ops.privacy import ids

    pytest.importorskip("re2")
    detector = ids.IdentifierDetector()
    r = random.Random(14)
    alphabet = "0123456789" * 3 + "ABDEFGLMNPRSTUXYZ+*-. \n"
    texts = _texts_with_whitespace(corpus()[:300] + generate.generate(300, 4322))
    texts += ["".join(r.choice(alphabet) for _ in range(r.randint(8, 40))) for _ in range(20000)]
    with_hints = [list(detector.find(t)) for t in texts]
    monkeypatch.setattr(ids, "_hints", lambda: None)
    without = [list(detector.find(t)) for t in texts]
    assert with_hints == without
    assert sum(1 for f in with_hints for x in f if x.type == "VAT_ID") > 50
    assert sum(1 for f in with_hints for x in f if x.detail in ("es.dni", "gb.nino", "it.codicefiscale")) > 50


def test_the_address_scan_with_only_the_countries_whose_street_words_occur_finds_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """detectors.AddressDetector leaves out the countries' patterns whose street words are not in
    the text: it finds what the whole pattern finds, on the corpus, generated records and random
    mixes of street words, numbers, postcodes and city names."""
    import random

    from ernie_ops.privacy import detectors

    pytest.importorskip("re2")
    detector = detectors.AddressDetector()
    r = random.Random(15)
    pieces = [
        *"Street St Road Ave Dr Pl Blvd Way rue avenue bd place straße Hauptstraße weg Ring".split(),
        *"12 1600 75002 10115 SW1A 2AA DC 20500 NW Paris Berlin London Washington de la".split(),
        "北京市朝阳区建国路88号", "88号", "邮编 100022", ",", "\n", "Musterstr.", "D-10115",
    ]  # fmt: skip
    texts = _texts_with_whitespace(corpus()[:300] + generate.generate(300, 4323))
    texts += [" ".join(r.choice(pieces) for _ in range(r.randint(2, 12))) for _ in range(20000)]
    with_words = [list(detector.find(t)) for t in texts]
    monkeypatch.setattr(detectors, "_street_words", lambda: None)
    assert with_words == [list(detector.find(t)) for t in texts]
    assert sum(map(len, with_words)) > 500
