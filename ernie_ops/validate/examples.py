"""Small example suites, so `ernie-ops eval` runs against any server with nothing to prepare.

`write_example_suites(DIR)` writes four suites (and their PNGs under DIR/images/):

    chart_qa.jsonl   bar and line charts (matplotlib) with known values: read a value (exact,
                     2% tolerance), name the highest/lowest category (exact, text)
    documents.jsonl  invoices and receipts (PIL) with known fields: extract them as JSON (f1;
                     receipts nest a list of items, scored as items[0].price, ...)
    boxes.jsonl      coloured circles and rectangles at known pixel boxes: locate them as JSON
                     boxes (iou)
    text.jsonl       text only, for text models such as the tiny test model: arithmetic (exact),
                     JSON answers (json), patterns (regex), multiple choice (choice)

Items use the format of `ernie_ops.validate.suite` and every judge of `judges`. Everything is
derived from `seed` (the same seed, the same files, byte for byte with the same matplotlib and
Pillow: PNG metadata is left out), images are 320x240 to 400x300, and the whole set is ~150 KB.

`reference_answers(seed)` gives, per suite and item id, an answer that scores 1.0: a stand-in for
a perfect server in tests. `example_suites()` lists the suites with their descriptions.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ernie_ops.files import atomic_output, write_text_atomic

EXAMPLES = {
    "chart_qa.jsonl": "bar/line charts: read a value (exact, 2% tolerance) or name a category (exact)",
    "documents.jsonl": "invoices and receipts: extract the fields as JSON (f1)",
    "boxes.jsonl": "coloured shapes: locate them as JSON boxes with labels (iou)",
    "text.jsonl": "text only: arithmetic (exact), JSON (json), patterns (regex), multiple choice (choice)",
}
IMAGES = "images"

Drawer = Callable[[Path], None]  # writes one PNG to the given path


@dataclass
class _Example:
    item: dict[str, Any]
    answer: str  # a reply that scores 1.0


@dataclass
class _Suite:
    name: str
    examples: list[_Example] = field(default_factory=list)
    images: dict[str, Drawer] = field(default_factory=dict)  # file name under images/ -> drawer

    def add(self, answer: Any, **item: Any) -> None:
        self.examples.append(_Example(item, answer if isinstance(answer, str) else json.dumps(answer)))


def example_suites() -> dict[str, str]:
    """The example suites' file names and what each tests."""
    return dict(EXAMPLES)


def write_example_suites(out_dir: Path, seed: int = 0) -> list[Path]:
    """Write the example suites and their images into `out_dir` (created; existing files of the
    same names are replaced). Returns the suite files."""
    out_dir = Path(out_dir)
    (out_dir / IMAGES).mkdir(parents=True, exist_ok=True)
    written = []
    for suite in _build(seed):
        for name, draw in suite.images.items():
            draw(out_dir / IMAGES / name)
        path = out_dir / suite.name
        lines = (json.dumps(e.item, ensure_ascii=False) + "\n" for e in suite.examples)
        write_text_atomic(path, "".join(lines))
        written.append(path)
    return written


def reference_answers(seed: int = 0) -> dict[str, dict[str, str]]:
    """{suite file name: {item id: an answer that scores 1.0}} for the suites of `seed`."""
    return {s.name: {e.item["id"]: e.answer for e in s.examples} for s in _build(seed)}


def _build(seed: int) -> list[_Suite]:
    """The suites' items, answers and (not yet run) image drawers. Each suite has its own random
    stream, so changing one suite leaves the others' files unchanged."""
    builders = {"chart_qa.jsonl": _charts, "documents.jsonl": _documents, "boxes.jsonl": _boxes}
    builders["text.jsonl"] = _text
    return [build(random.Random(f"{seed}:{name}")) for name, build in builders.items()]


# ---------------------------------------------------------------- charts

_ANSWER_NUMBER = "Answer with the number only."
_ANSWER_LABEL = "Answer with the label only."


def _charts(rng: random.Random) -> _Suite:
    suite = _Suite("chart_qa.jsonl")

    quarters = ["Q1", "Q2", "Q3", "Q4"]
    revenue = rng.sample(range(20, 95), 4)
    suite.images["chart_revenue.png"] = _bar_chart("Quarterly revenue ($k)", quarters, revenue)
    image = f"{IMAGES}/chart_revenue.png"
    _chart_value(suite, image, "revenue-q3", f"What is the value of the Q3 bar? {_ANSWER_NUMBER}", revenue[2])
    best = quarters[revenue.index(max(revenue))]
    _chart_label(
        suite, image, "revenue-highest", f"Which quarter has the highest revenue? {_ANSWER_LABEL}", best
    )

    fruits = ["Apples", "Bananas", "Cherries", "Dates"]
    sales = rng.sample(range(10, 60), 4)
    suite.images["chart_fruit.png"] = _bar_chart("Fruit sales (units)", fruits, sales)
    image = f"{IMAGES}/chart_fruit.png"
    _chart_value(
        suite, image, "fruit-bananas", f"How many units of Bananas were sold? {_ANSWER_NUMBER}", sales[1]
    )
    worst = fruits[sales.index(min(sales))]
    _chart_label(suite, image, "fruit-lowest", f"Which fruit sold the fewest units? {_ANSWER_LABEL}", worst)
    spread = max(sales) - min(sales)
    _chart_value(
        suite,
        image,
        "fruit-spread",
        f"What is the difference between the highest and the lowest sales? {_ANSWER_NUMBER}",
        spread,
        answer=f"The difference is {max(sales)} - {min(sales)} = {spread}.",  # the last-number rule
        kind="arithmetic",
    )

    months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun"]
    temps = rng.sample(range(2, 30), 6)
    suite.images["chart_temperature.png"] = _line_chart("Average temperature (°C)", months, temps)
    image = f"{IMAGES}/chart_temperature.png"
    _chart_value(
        suite, image, "temperature-mar", f"What is the average temperature in Mar? {_ANSWER_NUMBER}", temps[2]
    )
    hottest = months[temps.index(max(temps))]
    question = f"In which month is the temperature highest? {_ANSWER_LABEL}"
    _chart_label(suite, image, "temperature-highest", question, hottest, answer=f"Answer: {hottest}")

    browsers = ["Chrome", "Safari", "Firefox", "Edge"]
    cuts = sorted(rng.sample(range(5, 95), 3))
    shares = [cuts[0], cuts[1] - cuts[0], cuts[2] - cuts[1], 100 - cuts[2]]
    suite.images["chart_browsers.png"] = _bar_chart("Browser share (%)", browsers, shares, percent=True)
    image = f"{IMAGES}/chart_browsers.png"
    question = "What share does Firefox have? Answer with the percentage only."
    _chart_value(suite, image, "browsers-firefox", question, f"{shares[2]}%")
    top = browsers[shares.index(max(shares))]
    _chart_label(
        suite, image, "browsers-highest", f"Which browser has the largest share? {_ANSWER_LABEL}", top
    )
    return suite


def _chart_value(
    suite: _Suite,
    image: str,
    id: str,
    prompt: str,
    expected: Any,
    answer: str | None = None,
    kind: str = "value",
) -> None:
    """An item reading a figure off IMAGE (exact within 2%); ANSWER scores 1.0 (default: EXPECTED)."""
    suite.add(
        str(expected) if answer is None else answer,
        id=id,
        prompt=prompt,
        image=image,
        expected=expected,
        judge="exact",
        tolerance=0.02,
        tags=["chart", kind],
    )


def _chart_label(
    suite: _Suite, image: str, id: str, prompt: str, expected: str, answer: str | None = None
) -> None:
    """An item naming a category of IMAGE (exact); ANSWER scores 1.0 (default: EXPECTED)."""
    suite.add(
        expected if answer is None else answer,
        id=id,
        prompt=prompt,
        image=image,
        expected=expected,
        judge="exact",
        tags=["chart", "compare"],
    )


def _figure() -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(3.2, 2.4), dpi=100)  # 320x240 px


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    with atomic_output(path) as f:
        fig.savefig(f, format="png", dpi=100, metadata={"Software": None})


def _bar_chart(title: str, labels: list[str], values: list[int], percent: bool = False) -> Drawer:
    def draw(path: Path) -> None:
        import matplotlib

        with matplotlib.rc_context(matplotlib.rcParamsDefault):  # a user's matplotlibrc changes nothing
            fig = _figure()
            ax = fig.add_subplot()
            bars = ax.bar(labels, values, color=["#4c72b0", "#dd8452", "#55a868", "#c44e52"])
            ax.bar_label(bars, labels=[f"{v}%" if percent else str(v) for v in values], fontsize=8)
            ax.set_title(title, fontsize=10)
            ax.set_ylim(0, max(values) * 1.2)
            ax.tick_params(labelsize=8)
            _save(fig, path)

    return draw


def _line_chart(title: str, labels: list[str], values: list[int]) -> Drawer:
    def draw(path: Path) -> None:
        import matplotlib

        with matplotlib.rc_context(matplotlib.rcParamsDefault):
            fig = _figure()
            ax = fig.add_subplot()
            ax.plot(labels, values, marker="o", color="#4c72b0")
            for x, y in enumerate(values):
                ax.annotate(
                    str(y), (x, y), textcoords="offset points", xytext=(0, 5), ha="center", fontsize=8
                )
            ax.set_title(title, fontsize=10)
            ax.set_ylim(0, max(values) * 1.25)
            ax.tick_params(labelsize=8)
            _save(fig, path)

    return draw


# ---------------------------------------------------------------- documents

_VENDORS = ["Northwind Traders", "Contoso Ltd", "Fabrikam Inc", "Tailspin Toys", "Adventure Works"]
_STORES = ["Corner Cafe", "Green Grocer", "Book Nook", "City Bakery"]
_GOODS = ["Coffee", "Bagel", "Juice", "Salad", "Muffin", "Tea", "Sandwich"]
_SERVICES = ["Consulting", "Hosting", "Support", "Licenses", "Training"]


def _date(rng: random.Random) -> str:
    return f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def _documents(rng: random.Random) -> _Suite:
    suite = _Suite("documents.jsonl")
    invoice_prompt = (
        "Extract these fields from the invoice as a JSON object: invoice_number, date (YYYY-MM-DD), "
        "vendor (the company that issued it), total (a number). Answer with JSON only."
    )
    for n, vendor in enumerate(rng.sample(_VENDORS, 4)):
        lines = [(s, rng.randint(1, 9), rng.randint(20, 400) + rng.choice([0, 0.5, 0.25])) for s in _SERVICES]
        lines = rng.sample(lines, rng.randint(2, 3))
        fields = {
            "invoice_number": f"INV-{rng.randint(10000, 99999)}",
            "date": _date(rng),
            "vendor": vendor,
            "total": round(sum(q * p for _, q, p in lines), 2),
        }
        customer = rng.choice([v for v in _VENDORS if v != vendor])
        text = [
            ("INVOICE", True),
            (f"{vendor}", False),
            (f"Invoice No: {fields['invoice_number']}", False),
            (f"Date: {fields['date']}", False),
            (f"Bill to: {customer}", False),
            ("", False),
            *((f"{s}  {q} x {p:,.2f} = {q * p:,.2f}", False) for s, q, p in lines),
            ("", False),
            (f"TOTAL DUE: ${fields['total']:,.2f}", True),
        ]
        name = f"invoice_{n}.png"
        suite.images[name] = _document((400, 300), text)
        suite.add(
            fields,
            id=f"invoice-{n}",
            prompt=invoice_prompt,
            image=f"{IMAGES}/{name}",
            expected=fields,
            judge="f1",
            max_tokens=256,
            tags=["document", "invoice"],
        )
    receipt_prompt = (
        'Read this receipt. Answer with JSON only, in this form: {"store": str, "date": "YYYY-MM-DD", '
        '"items": [{"name": str, "price": number}], "total": number}, items in the order printed.'
    )
    for n, store in enumerate(rng.sample(_STORES, 4)):
        items: list[dict[str, Any]] = [
            {"name": g, "price": rng.randint(150, 1200) / 100} for g in rng.sample(_GOODS, rng.randint(2, 3))
        ]
        fields = {
            "store": store,
            "date": _date(rng),
            "items": items,
            "total": round(sum(i["price"] for i in items), 2),
        }
        text = [
            (store.upper(), True),
            (f"Date: {fields['date']}", False),
            ("", False),
            *((f"{i['name']}\t{i['price']:.2f}", False) for i in items),
            ("", False),
            (f"TOTAL\t{fields['total']:.2f}", True),
        ]
        name = f"receipt_{n}.png"
        suite.images[name] = _document((300, 300), text)
        answer = f"```json\n{json.dumps(fields, indent=2)}\n```"  # a fenced answer, as chat models write
        suite.add(
            answer,
            id=f"receipt-{n}",
            prompt=receipt_prompt,
            image=f"{IMAGES}/{name}",
            expected=fields,
            judge="f1",
            max_tokens=256,
            tags=["document", "receipt"],
        )
    return suite


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _document(size: tuple[int, int], lines: list[tuple[str, bool]]) -> Drawer:
    """A white page with one text line per entry, larger when flagged; the part after a tab is
    right-aligned (prices)."""

    def draw(path: Path) -> None:
        from PIL import Image, ImageDraw

        page = Image.new("RGB", size, "white")
        pen = ImageDraw.Draw(page)
        y = 16
        for text, large in lines:
            font = _font(18 if large else 14)
            left, _, right = text.partition("\t")
            pen.text((20, y), left, fill="black", font=font)
            if right:
                pen.text((size[0] - 20, y), right, fill="black", font=font, anchor="ra")
            y += 26 if large else 20
        page.save(path, format="PNG")

    return draw


# ---------------------------------------------------------------- boxes

_COLORS = {"red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30)}
_SHAPES = ("circle", "rectangle")
_CANVAS = (320, 240)


def _boxes(rng: random.Random) -> _Suite:
    suite = _Suite("boxes.jsonl")
    width, height = _CANVAS
    prompt = (
        f"Find every shape in this {width}x{height} image. Answer with JSON only: a list of "
        '{"label": "<color> <shape>", "bbox": [x1, y1, x2, y2]} in pixel coordinates, where color is '
        "red, green, blue or yellow and shape is circle or rectangle."
    )
    cells = [(col * width // 3, row * height // 2) for row in range(2) for col in range(3)]
    for n in range(8):
        shapes = []
        for left, top in rng.sample(cells, rng.randint(1, 3)):  # one shape per cell: no overlaps
            color, kind = rng.choice(list(_COLORS)), rng.choice(_SHAPES)
            w = rng.randint(30, 80)
            h = w if kind == "circle" else rng.randint(30, 90)
            x1 = left + rng.randint(8, width // 3 - w - 8)
            y1 = top + rng.randint(8, height // 2 - h - 8)
            label = f"{color} {kind}"
            shapes.append({"label": label, "bbox": [x1, y1, x1 + w, y1 + h]})
        name = f"shapes_{n}.png"
        suite.images[name] = _shapes_image(shapes)
        suite.add(
            shapes,
            id=f"shapes-{n}",
            prompt=prompt,
            image=f"{IMAGES}/{name}",
            expected=shapes,
            judge="iou",
            max_tokens=256,
            tags=["boxes"],
        )
    return suite


def _shapes_image(shapes: list[dict[str, Any]]) -> Drawer:
    def draw(path: Path) -> None:
        from PIL import Image, ImageDraw

        canvas = Image.new("RGB", _CANVAS, "white")
        pen = ImageDraw.Draw(canvas)
        for shape in shapes:
            color, kind = shape["label"].split()
            (pen.ellipse if kind == "circle" else pen.rectangle)(shape["bbox"], fill=_COLORS[color])
        canvas.save(path, format="PNG")

    return draw


# ---------------------------------------------------------------- text


def _text(rng: random.Random) -> _Suite:
    suite = _Suite("text.jsonl")
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    suite.add(str(a + b), id="add", prompt=f"What is {a} + {b}? {_ANSWER_NUMBER}", expected=a + b)
    a, b = rng.randint(11, 30), rng.randint(11, 30)
    suite.add(
        f"{a} * {b} = {a * b}", id="multiply", prompt=f"What is {a} * {b}? {_ANSWER_NUMBER}", expected=a * b
    )
    a, b = rng.randint(1000, 9999), rng.randint(100, 999)
    suite.add(f"{a - b:,}", id="subtract", prompt=f"What is {a} - {b}? {_ANSWER_NUMBER}", expected=a - b)
    for example in suite.examples:
        example.item |= {"judge": "exact", "max_tokens": 32, "tags": ["arithmetic"]}

    suite.add(
        '{"name": "Ada", "age": 36}',
        id="json-person",
        prompt="Describe a fictional person as a JSON object with keys name (a string) and age (an integer). "
        "Answer with JSON only.",
        judge="json",
        expected={
            "type": "object",
            "required": ["name", "age"],
            "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        },
        max_tokens=64,
        tags=["json"],
    )
    suite.add(
        '["red", "green", "blue"]',
        id="json-colors",
        prompt="List three colours as a JSON array of strings. Answer with JSON only.",
        judge="json",
        expected={"type": "array"},
        max_tokens=64,
        tags=["json"],
    )
    suite.add(
        "2024-05-01",
        id="regex-date",
        prompt="Write any date in ISO format (YYYY-MM-DD) and nothing else.",
        judge="regex",
        expected=r"\d{4}-\d{2}-\d{2}",
        fullmatch=True,
        max_tokens=16,
        tags=["regex"],
    )
    suite.add(
        "Hello!",
        id="regex-hello",
        prompt="Say hello.",
        judge="regex",
        expected=r"(?i)\bhello\b",
        max_tokens=16,
        tags=["regex"],
    )
    suite.add(
        "ada@example.com",
        id="regex-email",
        prompt="Write an email address at example.com for a person named Ada.",
        judge="regex",
        expected=r"[\w.+-]+@example\.com",
        max_tokens=32,
        tags=["regex"],
    )
    questions = [
        (
            "choice-sky",
            "What colour is the sky on a clear day?",
            ["green", "blue", "red", "yellow"],
            "B",
            "B",
        ),
        ("choice-prime", "Which of these numbers is prime?", ["4", "6", "7", "9"], "7", "The answer is (C)."),
        (
            "choice-planet",
            "Which planet is closest to the Sun?",
            ["Venus", "Mercury", "Mars", "Earth"],
            "Mercury",
            "Mercury",
        ),
    ]
    for item_id, question, options, expected, answer in questions:
        suite.add(
            answer,
            id=item_id,
            prompt=f"{question} Answer with the letter of the correct option.",
            judge="choice",
            choices=options,
            expected=expected,
            max_tokens=16,
            tags=["choice"],
        )
    return suite
