"""The masker's findings on the labelled corpus and on a held-out generated set, to pin them down:
a change made for speed must find exactly what the code before it found (tests/test_pii_findings.py
compares with findings.json, written by the commit before such a change).

    python tests/pii/findings.py tests/pii/findings.json
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
HELD_OUT = (400, 99)  # records, seed: generate.generate's


def sets() -> dict[str, list[dict]]:
    sys.path.insert(0, str(HERE))
    import generate

    corpus = [json.loads(x) for x in (HERE / "corpus.jsonl").read_text("utf-8").splitlines()]
    return {"corpus": corpus, "held-out": generate.generate(*HELD_OUT)}


def snapshot() -> dict:
    """{set: {"findings": per record, per message [start, end, type, detail], "masked": sha256 of
    the records masked whole (mask_value: placeholders, recurrences)}}"""
    from ernie_ops.privacy import default_masker

    m = default_masker()
    out = {}
    for name, records in sets().items():
        findings = [
            [[[f.start, f.end, f.type, f.detail] for f in m.find(msg["content"])] for msg in r["messages"]]
            for r in records
        ]
        digest = hashlib.sha256()
        for r in records:
            digest.update(json.dumps(m.mask_value(r["messages"]), ensure_ascii=False).encode() + b"\n")
        out[name] = {"findings": findings, "masked": digest.hexdigest()}
    return out


def main() -> int:
    target = Path(sys.argv[1])
    data = snapshot()
    lines = ["{"]
    for i, (name, part) in enumerate(data.items()):
        rows = ",\n".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) for r in part["findings"])
        comma = "," if i < len(data) - 1 else ""
        lines.append(f'"{name}": {{"masked": "{part["masked"]}", "findings": [\n{rows}\n]}}{comma}')
    lines.append("}")
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{target}: findings of {', '.join(data)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
