"""Generate the labelled PII corpus: German, French, Chinese and English chats with planted personal
data of every type (the label says where: message, start, end, type) and hard negatives (order
numbers, timestamps, version strings, prices, and digit runs, IBANs, card numbers and identifiers
whose checksum fails). Deterministic for a seed.

    python tests/pii/generate.py tests/pii/corpus.jsonl --records 600 --seed 20
"""

# ruff: noqa: E501  (value templates read best on one line)
from __future__ import annotations

import argparse
import itertools
import json
import random
import string
import sys
from collections.abc import Iterator
from pathlib import Path

import phonenumbers
from stdnum import iban, luhn
from stdnum.cn import ric
from stdnum.de import idnr
from stdnum.es import dni
from stdnum.eu import vat
from stdnum.fr import nir
from stdnum.gb import vat as gbvat
from stdnum.it import codicefiscale
from stdnum.pl import pesel

FIRST = ["anna", "jean", "li", "mark", "sophie", "lukas", "wei", "emma", "paul", "chloe", "jan", "mei"]
LAST = ["schmidt", "dubois", "wang", "smith", "muller", "martin", "zhang", "brown", "weber", "leroy"]
DOMAINS = ["example.com", "mail.example.de", "example.fr", "beispiel.de", "example.co.uk", "qq-example.cn"]


class Gen:
    def __init__(self, seed: int):
        self.r = random.Random(seed)

    def digits(self, n: int) -> str:
        return "".join(self.r.choice(string.digits) for _ in range(n))

    # -- personal data of every type ---------------------------------------------------------------
    def email(self) -> str:
        r = self.r
        sep = r.choice([".", "_", "", "-"])
        return f"{r.choice(FIRST)}{sep}{r.choice(LAST)}{r.randint(0, 99) if r.random() < 0.4 else ''}@{r.choice(DOMAINS)}"

    def phone(self, region: str, national: bool) -> str:
        base = phonenumbers.example_number_for_type(region, self.r.choice([0, 1]))  # fixed line, mobile
        assert base is not None, region
        for _ in range(200):
            e164 = phonenumbers.format_number(base, phonenumbers.PhoneNumberFormat.E164)
            num = phonenumbers.parse(e164[:-4] + self.digits(4), None)
            if phonenumbers.is_valid_number(num):
                fmt = phonenumbers.PhoneNumberFormat
                if national:
                    return phonenumbers.format_number(num, fmt.NATIONAL)
                if self.r.random() < 0.3:
                    return phonenumbers.format_number(num, fmt.E164)
                return phonenumbers.format_number(num, fmt.INTERNATIONAL)

        raise AssertionError(f"no valid {region} number near the example")

    def cn_mobile(self) -> str:
        while True:
            n = "1" + self.r.choice("3456789") + self.digits(9)
            try:  # a number starting with a carrier prefix (17951...) is too short once it is cut
                if phonenumbers.is_valid_number(phonenumbers.parse(n, "CN")):
                    return n
            except phonenumbers.NumberParseException:
                continue

    def iban(self) -> str:
        country = self.r.choice(["DE", "FR", "NL", "ES", "IT", "AT", "BE"])
        while True:
            if country == "DE":
                bban = self.digits(18)
            elif country == "FR":
                bban = self.digits(23)
            elif country == "NL":
                bban = "ABNA" + self.digits(10)
            elif country == "ES":
                bban = self.digits(20)
            elif country == "IT":
                bban = self.r.choice(string.ascii_uppercase) + self.digits(22)
            elif country == "AT":
                bban = self.digits(16)
            else:
                bban = self.digits(12)
            value = country + iban.calc_check_digits(country + "00" + bban) + bban
            if iban.is_valid(value):
                return (
                    " ".join(value[i : i + 4] for i in range(0, len(value), 4))
                    if self.r.random() < 0.7
                    else value
                )

    def card(self) -> str:
        prefix = self.r.choice(["4", "51", "55", "2221", "37", "6011", "3530", "62"])
        length = 15 if prefix == "37" else 16
        body = prefix + self.digits(length - len(prefix) - 1)
        number = body + luhn.calc_check_digit(body)
        if self.r.random() < 0.6 and length == 16:
            return " ".join(number[i : i + 4] for i in range(0, 16, 4))
        if self.r.random() < 0.5 and length == 16:
            return "-".join(number[i : i + 4] for i in range(0, 16, 4))
        return number

    def vat(self) -> str:
        country = self.r.choice(["DE", "FR", "IT", "NL", "ES", "AT", "GB", "PL", "BE"])
        while True:
            if country == "FR":
                siren = self.digits(8)
                siren += luhn.calc_check_digit(siren)
                value = f"FR{(12 + 3 * (int(siren) % 97)) % 97:02d}{siren}"
            elif country == "GB":
                value = "GB" + self.digits(9)
                if gbvat.is_valid(value):
                    return value
                continue
            elif country == "AT":
                value = "ATU" + self.digits(8)
            elif country == "NL":
                value = "NL" + self.digits(9) + "B01"
            elif country == "ES":
                value = "ESB" + self.digits(8)
            elif country == "BE":
                value = "BE0" + self.digits(9)
            else:
                value = country + self.digits({"DE": 9, "IT": 11, "PL": 10}[country])
            if vat.is_valid(value):
                return value

    def national_id(self) -> tuple[str, str]:
        """(the identifier, the words before it that say what it is)"""
        kind = self.r.choice(["de", "fr", "cn", "us", "gb", "it", "es", "pl"])
        if kind == "de":
            while True:
                v = str(self.r.randint(1, 9)) + self.digits(10)
                if idnr.is_valid(v):
                    grouped = f"{v[:2]} {v[2:5]} {v[5:8]} {v[8:]}" if self.r.random() < 0.3 else v
                    return grouped, self.r.choice(
                        ["Steuer-ID", "steuerliche Identifikationsnummer", "tax ID"]
                    )
        if kind == "fr":
            body = f"{self.r.randint(1, 2)}{self.r.randint(40, 99)}{self.r.randint(1, 12):02d}{self.r.randint(1, 95):02d}{self.r.randint(1, 990):03d}{self.r.randint(1, 999):03d}"
            key = 97 - int(body) % 97
            v = f"{body}{key:02d}"
            if self.r.random() < 0.5:
                v = f"{v[0]} {v[1:3]} {v[3:5]} {v[5:7]} {v[7:10]} {v[10:13]} {v[13:]}"
            assert nir.is_valid(v), v
            return v, self.r.choice(["numéro de sécurité sociale", "NIR", "n° INSEE"])
        if kind == "cn":
            while True:
                body = f"110105{self.r.randint(1950, 2005)}{self.r.randint(1, 12):02d}{self.r.randint(1, 28):02d}{self.digits(3)}"
                v = body + ric.calc_check_digit(body)
                if ric.is_valid(v):
                    return v, self.r.choice(["身份证号", "身份证号码", "ID card"])
        if kind == "us":
            from stdnum.us import ssn

            while True:
                v = f"{self.r.randint(1, 665):03d}-{self.r.randint(1, 99):02d}-{self.r.randint(1, 9999):04d}"
                if ssn.is_valid(v):
                    return v, self.r.choice(["SSN", "social security number", "Social Security No."])
        if kind == "gb":
            v = f"{self.r.choice('ACEHJKLMPRSWY')}{self.r.choice('ABCEHJKLMPRSTWXY')}{self.digits(6)}{self.r.choice('ABCD')}"
            if self.r.random() < 0.5:
                v = f"{v[:2]} {v[2:4]} {v[4:6]} {v[6:8]} {v[8]}"
            return v, self.r.choice(["National Insurance number", "NI number"])
        if kind == "it":
            letters = "".join(self.r.choice(string.ascii_uppercase) for _ in range(6))
            body = f"{letters}{self.digits(2)}{self.r.choice('ABCDEHLMPRST')}{self.r.randint(1, 28):02d}{self.r.choice('ABCDEFGHILM')}{self.digits(3)}"
            return body + codicefiscale.calc_check_digit(body), "codice fiscale"
        if kind == "es":
            body = self.digits(8)
            return body + dni.calc_check_digit(body), "DNI"
        while True:
            body = f"{self.r.randint(50, 99)}{self.r.randint(1, 12):02d}{self.r.randint(1, 28):02d}{self.digits(4)}"
            v = body + pesel.calc_check_digit(body)
            if pesel.is_valid(v):
                return v, "PESEL"

    def ip(self) -> str:
        r = self.r
        if r.random() < 0.75:
            first = r.randint(11, 223)
            first += first == 127  # 127/8 is loopback, not personal data (no draw: the stream stays)
            return f"{first}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"
        return f"2001:db8:{r.randint(0, 0xFFFF):x}:{r.randint(0, 0xFFFF):x}::{r.randint(1, 0xFFFF):x}"

    def url_credentials(self) -> str:
        r = self.r
        scheme = r.choice(["postgres", "mysql", "https", "redis", "amqp", "ftp"])
        password = "".join(r.choice(string.ascii_letters + string.digits) for _ in range(r.randint(8, 16)))
        host = r.choice(["db.internal.example.com", "10.1.2.3", "cache.example.de", "mq.example.fr"])
        return f"{scheme}://{r.choice(FIRST)}:{password}@{host}:{r.randint(1000, 9999)}/{r.choice(['app', 'prod', 'queue'])}"

    def api_key(self) -> tuple[str, str]:
        r = self.r
        alnum = string.ascii_letters + string.digits

        def rand(n: int, alphabet: str = alnum) -> str:
            return "".join(r.choice(alphabet) for _ in range(n))

        kind = r.randrange(7)
        if kind == 0:
            return "sk-" + rand(48), ""
        if kind == 1:
            return "ghp_" + rand(36), ""
        if kind == 2:
            return "hf_" + rand(34), ""
        if kind == 3:
            return "AKIA" + rand(16, string.ascii_uppercase + string.digits), ""
        if kind == 4:
            return f"xoxb-{self.digits(12)}-{self.digits(12)}-{rand(24)}", ""
        if kind == 5:
            return rand(32), r.choice(["api_key=", "token: ", "API_KEY=", "secret_key = ", "access_token="])
        return rand(24) + "!", r.choice(["password=", "Passwort: ", "mot de passe : ", "密码："])

    def address(self, lang: str) -> str:
        r = self.r
        if lang == "de":
            street = r.choice(
                ["Hauptstraße", "Lindenweg", "Goethestr.", "Bahnhofstraße", "Am Markt", "Rosenallee"]
            )
            if street == "Am Markt":
                street = "Marktplatz"
            return f"{street} {r.randint(1, 120)}{r.choice(['', 'a', 'b'])}, {r.randint(10000, 99999)} {r.choice(['Berlin', 'München', 'Köln', 'Hamburg'])}"
        if lang == "fr":
            return f"{r.randint(1, 150)} {r.choice(['rue de la Paix', 'avenue Victor Hugo', 'boulevard Voltaire', 'place du Marché'])}, {r.randint(10000, 95999)} {r.choice(['Paris', 'Lyon', 'Marseille', 'Toulouse'])}"
        if lang == "zh":
            return f"{r.choice(['北京市朝阳区', '上海市浦东新区', '广州市天河区'])}{r.choice(['建国路', '世纪大道', '天河路'])}{r.randint(1, 999)}号"
        if r.random() < 0.5:
            return f"{r.randint(1, 9999)} {r.choice(['Maple', 'Oak', 'Main', 'Cedar Hill'])} {r.choice(['Street', 'Avenue', 'Road', 'Drive'])}, {r.choice(['Springfield', 'Austin', 'Portland'])}, {r.choice(['IL', 'TX', 'OR'])} {r.randint(10000, 99999)}"
        return f"{r.randint(1, 200)} {r.choice(['Baker', 'High', 'Church', 'Victoria'])} {r.choice(['Street', 'Road', 'Lane'])}, London {r.choice(['NW1', 'SW1A', 'E1', 'N7'])} {r.randint(1, 9)}{r.choice('ABDEFGHJLNPQRSTUWXYZ')}{r.choice('ABDEFGHJLNPQRSTUWXYZ')}"

    # -- hard negatives -----------------------------------------------------------------------------
    def failing_run(self) -> str:
        """A digit run that no checksum accepts (of the lengths the identifiers and cards use)."""
        from ernie_ops.privacy.ids import DIGIT_SCHEMES, validator

        while True:
            n = self.r.choice([9, 10, 11, 13, 15, 16, 18, 19])
            v = str(self.r.randint(1, 9)) + self.digits(n - 1)
            if luhn.is_valid(v) or any(validator(s.name)(v) for s in DIGIT_SCHEMES if s.length == n):
                continue
            return v

    def bad_iban(self) -> str:
        value = self.iban().replace(" ", "")
        check = (int(value[2:4]) + self.r.randint(1, 50)) % 100
        bad = f"{value[:2]}{check:02d}{value[4:]}"
        return bad if not iban.is_valid(bad) else self.bad_iban()

    def bad_card(self) -> str:
        number = self.card().replace(" ", "").replace("-", "")
        bad = number[:-1] + str((int(number[-1]) + self.r.randint(1, 9)) % 10)
        return " ".join(bad[i : i + 4] for i in range(0, len(bad), 4))

    def bad_id(self) -> tuple[str, str]:
        value, words = self.national_id()
        if words in (
            "SSN",
            "social security number",
            "Social Security No.",
            "National Insurance number",
            "NI number",
        ):
            return self.bad_id()  # no check digit to get wrong
        last = value[-1]
        if last.isdigit():
            value = value[:-1] + str((int(last) + self.r.randint(1, 9)) % 10)
        else:
            value = value[:-1] + ("A" if last != "A" else "B")
        from ernie_ops.privacy.ids import DIGIT_SCHEMES, LETTER_SCHEMES, validator

        compact = value.replace(" ", "").replace("-", "")
        names = [s.name for s in DIGIT_SCHEMES if s.length == len(compact)]
        names += [name for name, _ in LETTER_SCHEMES if name != "gb.nino"]
        if any(validator(n)(compact) for n in names) or (len(compact) > 11 and luhn.is_valid(compact)):
            return self.bad_id()
        return value, words

    def negative(self, lang: str) -> str:
        r = self.r
        choices = [
            lambda: {
                "de": f"Ihre Bestellnummer lautet {r.randint(1000, 9999)}-{r.randint(2019, 2026)}-{r.randint(1000, 9999)}.",
                "fr": f"Votre commande n° {r.randint(20190101, 20261231)}-{r.randint(1, 9999):04d} est expédiée.",
                "zh": f"您的订单号是{self.digits(4)}-{self.digits(6)}。",
                "en": f"Order #A-{r.randint(100000, 999999)} ships tomorrow.",
            }[lang],
            lambda: (
                f"Timestamp {r.randint(2019, 2026)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d} {r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}"
            ),
            lambda: (
                f"{r.randint(2019, 2026)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}T{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}Z"
            ),
            lambda: f"{r.randint(1, 28):02d}.{r.randint(1, 12):02d}.{r.randint(2019, 2026)}",
            lambda: f"version {r.randint(1, 12)}.{r.randint(0, 9)}.{r.randint(0, 30000)}.{r.randint(0, 9)}",
            lambda: f"v{r.randint(0, 5)}.{r.randint(0, 20)}.{r.randint(0, 9)}",
            lambda: f"paddlepaddle=={r.randint(2, 3)}.{r.randint(0, 9)}.{r.randint(0, 9)}",
            lambda: f"Referenz {self.failing_run()}",
            lambda: f"Tracking {self.failing_run()}",
            lambda: f"ticket {self.failing_run()}",
            lambda: f"IBAN {self.bad_iban()}",
            lambda: f"Karte {self.bad_card()}",
            lambda: "{1} {0}".format(*self.bad_id()),
            lambda: f"Preis: {r.randint(1, 9)}.{r.randint(100, 999)},{r.randint(0, 99):02d} EUR",
            lambda: f"{r.randint(1, 999)} x {r.randint(1, 99)} = {r.randint(1000, 99999)}",
            lambda: f"ISBN 978-3-{r.randint(10, 99)}-{r.randint(100000, 999999)}-{r.randint(0, 9)}",
            lambda: f"Zimmer {r.randint(100, 999)}, Gebäude {r.randint(1, 20)}",
        ]
        return r.choice(choices)()


# Sentences with one slot each, per language: {v} is the value, {w} the words that name it.
TEMPLATES = {
    "de": {
        "EMAIL": ["Schreib mir an {v}, danke!", "Meine E-Mail-Adresse ist {v}."],
        "PHONE": ["Ruf mich unter {v} an.", "Telefon: {v}", "Du erreichst mich mobil unter {v}."],
        "IBAN": ["Bitte überweise auf {v}.", "Meine IBAN: {v}"],
        "CARD": ["Die Kreditkarte {v} wurde belastet.", "Kartennummer {v}"],
        "VAT_ID": ["Unsere USt-IdNr. lautet {v}.", "Rechnung an {v} ausstellen"],
        "NATIONAL_ID": ["Meine {w} ist {v}.", "{w}: {v}"],
        "IP_ADDRESS": ["Der Server {v} antwortet nicht.", "Login von IP {v} blockiert"],
        "URL_CREDENTIALS": ["Verbinde dich mit {v} und prüfe die Tabelle.", "DSN: {v}"],
        "API_KEY": ["Mein Schlüssel {w}{v} funktioniert nicht.", "Hier ist der Token {w}{v}"],
        "POSTAL_ADDRESS": ["Lieferadresse: {v}", "Ich wohne in der {v}."],
    },
    "fr": {
        "EMAIL": ["Écrivez-moi à {v} s'il vous plaît.", "Mon adresse e-mail : {v}"],
        "PHONE": ["Appelez-moi au {v}.", "Mon numéro de téléphone est le {v}."],
        "IBAN": ["Virement sur l'IBAN {v} svp.", "Voici mon RIB : {v}"],
        "CARD": ["Ma carte {v} a été refusée.", "Carte bancaire n° {v}"],
        "VAT_ID": ["Notre numéro de TVA est {v}.", "TVA intracommunautaire : {v}"],
        "NATIONAL_ID": ["Mon {w} est {v}.", "{w} : {v}"],
        "IP_ADDRESS": ["L'adresse IP {v} est bloquée.", "Connexion depuis {v}"],
        "URL_CREDENTIALS": ["Connectez-vous avec {v} pour tester.", "URL : {v}"],
        "API_KEY": ["Ma clé {w}{v} ne marche plus.", "Utilise {w}{v} dans la config"],
        "POSTAL_ADDRESS": ["Livraison au {v}.", "J'habite {v}."],
    },
    "zh": {
        "EMAIL": ["我的邮箱是{v}，请联系我。", "请发邮件到{v}"],
        "PHONE": ["我的手机号是{v}。", "请拨打电话{v}联系我"],
        "IBAN": ["请汇款到IBAN {v}。", "账户：{v}"],
        "CARD": ["我的银行卡号是{v}。", "信用卡{v}被扣款了"],
        "VAT_ID": ["公司的欧盟增值税号是{v}。", "税号：{v}"],
        "NATIONAL_ID": ["我的{w}是{v}。", "{w}：{v}"],
        "IP_ADDRESS": ["服务器{v}无法访问。", "来自IP {v}的请求"],
        "URL_CREDENTIALS": ["数据库连接是{v}，请检查。", "连接串：{v}"],
        "API_KEY": ["我的密钥{w}{v}失效了。", "配置里写了{w}{v}"],
        "POSTAL_ADDRESS": ["我住在{v}。", "收货地址：{v}"],
    },
    "en": {
        "EMAIL": ["Email me at {v} when ready.", "My address is {v}."],
        "PHONE": ["Call me at {v} tomorrow.", "My phone number is {v}."],
        "IBAN": ["Please wire it to {v}.", "IBAN: {v}"],
        "CARD": ["My card {v} was declined.", "Charge card number {v} please"],
        "VAT_ID": ["Our VAT number is {v}.", "Invoice VAT ID {v}"],
        "NATIONAL_ID": ["My {w} is {v}.", "{w}: {v}"],
        "IP_ADDRESS": ["The host {v} is down.", "Blocked requests from {v}"],
        "URL_CREDENTIALS": ["Connect with {v} and run the migration.", "DATABASE_URL={v}"],
        "API_KEY": ["My key {w}{v} stopped working.", "I set {w}{v} in the env file"],
        "POSTAL_ADDRESS": ["Ship it to {v}.", "I live at {v}."],
    },
}
FILLER = {
    "de": [
        "Hallo, ich brauche Hilfe mit meinem Konto.",
        "Danke, das hat geholfen.",
        "Kannst du das zusammenfassen?",
    ],
    "fr": ["Bonjour, j'ai besoin d'aide.", "Merci beaucoup pour votre réponse.", "Pouvez-vous résumer ?"],
    "zh": ["你好，我需要帮助。", "谢谢你的回答。", "可以总结一下吗？"],
    "en": ["Hi, I need help with my account.", "Thanks, that worked.", "Can you summarise this?"],
}
PHONE_REGIONS = {"de": "DE", "fr": "FR", "zh": "CN", "en": "US"}


def value_for(g: Gen, type_: str, lang: str) -> tuple[str, str]:
    r = g.r
    if type_ == "EMAIL":
        return g.email(), ""
    if type_ == "PHONE":
        if lang == "zh" and r.random() < 0.5:
            return g.cn_mobile(), ""
        region = (
            PHONE_REGIONS[lang]
            if r.random() < 0.7
            else r.choice(["DE", "FR", "GB", "US", "CN", "IT", "ES", "NL"])
        )
        national = region == PHONE_REGIONS[lang] and r.random() < 0.6
        return g.phone(region, national), ""
    if type_ == "IBAN":
        return g.iban(), ""
    if type_ == "CARD":
        return g.card(), ""
    if type_ == "VAT_ID":
        return g.vat(), ""
    if type_ == "NATIONAL_ID":
        return g.national_id()
    if type_ == "IP_ADDRESS":
        return g.ip(), ""
    if type_ == "URL_CREDENTIALS":
        return g.url_credentials(), ""
    if type_ == "API_KEY":
        return g.api_key()
    return g.address("en" if lang == "en" else lang), ""


def sentence(g: Gen, type_: str, lang: str) -> tuple[str, int, int]:
    value, words = value_for(g, type_, lang)
    template = g.r.choice(TEMPLATES[lang][type_])
    if type_ == "API_KEY":
        head, tail = template.split("{w}{v}")
        text = head.format() + words + value + tail
        start = len(head) + len(words)
    else:
        head, tail = template.split("{v}")
        head = head.replace("{w}", words)
        text = head + value + tail.replace("{w}", words)
        start = len(head)
    return text, start, start + len(value)


def record(g: Gen, lang: str) -> dict:
    r = g.r
    messages: list[dict] = []
    spans: list[list] = []
    for _turn in range(r.randint(1, 3)):
        for role in ("user", "assistant"):
            parts, offset = [], 0
            local: list[tuple[int, int, str]] = []
            for _ in range(r.randint(1, 3)):
                roll = r.random()
                if roll < 0.45:
                    type_ = r.choice(list(TEMPLATES[lang]))
                    text, s, e = sentence(g, type_, lang)
                    local.append((offset + s, offset + e, type_))
                elif roll < 0.8:
                    text = g.negative(lang)
                else:
                    text = r.choice(FILLER[lang])
                parts.append(text)
                offset += len(text) + 1
            content = " ".join(parts)
            spans += [[len(messages), s, e, t] for s, e, t in local]
            messages.append({"role": role, "content": content})
    return {"lang": lang, "messages": messages, "spans": spans}


def stream(seed: int) -> Iterator[dict]:
    """Records without end, each with values of its own (generate's first N, for a seed)."""
    g = Gen(seed)
    langs = ["de", "fr", "zh", "en"]
    for i in itertools.count():
        yield record(g, langs[i % 4])


def generate(records: int, seed: int) -> list[dict]:
    return list(itertools.islice(stream(seed), records))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path)
    parser.add_argument("--records", type=int, default=600)
    parser.add_argument("--seed", type=int, default=20)
    args = parser.parse_args(argv)
    lines = [json.dumps(r, ensure_ascii=False) for r in generate(args.records, args.seed)]
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{args.out}: {len(lines)} records", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
