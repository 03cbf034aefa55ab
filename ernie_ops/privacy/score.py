"""Precision and recall of a masker against labelled texts (the corpus in tests/pii/).

A labelled span is recalled when a finding of its type covers it whole (a partial cover would
leave part of the value in the masked text). A finding is correct when it overlaps a labelled
span of its type; any other finding is a false positive (on the corpus's hard negatives: order
numbers, timestamps, versions, digit runs whose checksum fails).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from ernie_ops.privacy.masker import Masker


@dataclass
class Score:
    gold: Counter = field(default_factory=Counter)
    recalled: Counter = field(default_factory=Counter)
    found: Counter = field(default_factory=Counter)
    correct: Counter = field(default_factory=Counter)
    misses: list[tuple[str, str]] = field(default_factory=list)  # (type, text): for debugging only
    false: list[tuple[str, str]] = field(default_factory=list)

    def precision(self, type_: str | None = None) -> float:
        found = self.found[type_] if type_ else sum(self.found.values())
        correct = self.correct[type_] if type_ else sum(self.correct.values())
        return correct / found if found else 1.0

    def recall(self, type_: str | None = None) -> float:
        gold = self.gold[type_] if type_ else sum(self.gold.values())
        recalled = self.recalled[type_] if type_ else sum(self.recalled.values())
        return recalled / gold if gold else 1.0

    def table(self) -> list[dict]:
        types = sorted(set(self.gold) | set(self.found))
        rows = [
            {
                "type": t,
                "planted": self.gold[t],
                "found": self.found[t],
                "precision": round(self.precision(t), 4),
                "recall": round(self.recall(t), 4),
            }
            for t in types
        ]
        rows.append(
            {
                "type": "ALL",
                "planted": sum(self.gold.values()),
                "found": sum(self.found.values()),
                "precision": round(self.precision(), 4),
                "recall": round(self.recall(), 4),
            }
        )
        return rows


def score(records: Iterable[dict], masker: Masker, keep_examples: bool = False) -> Score:
    """Records as the corpus holds them: {"messages": [...], "spans": [[message, start, end, type]]}."""
    s = Score()
    for record in records:
        for i, message in enumerate(record["messages"]):
            text = message["content"]
            gold = [(a, b, t) for m, a, b, t in record["spans"] if m == i]
            found = masker.find(text)
            for a, b, t in gold:
                s.gold[t] += 1
                if any(f.type == t and f.start <= a and f.end >= b for f in found):
                    s.recalled[t] += 1
                elif keep_examples:
                    s.misses.append((t, text[max(0, a - 30) : b + 10]))
            for f in found:
                s.found[f.type] += 1
                if any(t == f.type and f.start < b and f.end > a for a, b, t in gold):
                    s.correct[f.type] += 1
                elif keep_examples:
                    s.false.append((f.type, text[max(0, f.start - 30) : f.end + 10]))
    return s
