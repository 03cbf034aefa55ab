"""The gateway's judge: answers to an eval suite's prompts, scored as `ernie-ops eval` scores them.

`ernie-ops gateway run --judge-suite probes.jsonl` loads a suite (`ernie_ops.validate.suite`). A
client request whose last user message is one of the suite's prompts (the same text, whitespace
aside; images compared as sent) is answered as usual; afterwards, off the request path, the answer
is scored with the item's judge (`ernie_ops.validate.judges.score`) and one scoring below
`min_score` goes to the review queue. Probes sent through production (a canary job replaying the
suite every few minutes) thus catch a backend that went wrong on live traffic; requests that match
no prompt cost one dictionary lookup.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ernie_ops.validate.judges import Score
    from ernie_ops.validate.suite import Suite, SuiteItem

_SPACE = re.compile(r"\s+")


def prompt_key(content: Any) -> str | None:
    """The key of a user message's content (str, or a list of parts) or a legacy prompt."""
    if isinstance(content, str):
        return _SPACE.sub(" ", content).strip()
    if isinstance(content, list):
        return json.dumps(content, sort_keys=True, ensure_ascii=False)
    return None


def request_key(route: str, body: dict[str, Any]) -> str | None:
    """The key of a request: its last user message (chat) or its prompt (completions)."""
    if route.endswith("/chat/completions"):
        messages = body.get("messages")
        if not isinstance(messages, list):
            return None
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return prompt_key(message.get("content"))
        return None
    return prompt_key(body.get("prompt"))


class LiveJudge:
    def __init__(self, suite: Suite, min_score: float = 1.0):
        self.suite = suite
        self.min_score = min_score
        self._items: dict[str, SuiteItem] = {}
        for item in suite.items:
            messages = item.request_messages()
            user = [m for m in messages if m.get("role") == "user"][-1]
            key = prompt_key(user.get("content"))
            if key is not None:
                self._items.setdefault(key, item)

    @classmethod
    def load(cls, path: Path, min_score: float = 1.0) -> LiveJudge:
        from ernie_ops.validate.suite import load_suite

        return cls(load_suite(path), min_score)

    def __len__(self) -> int:
        return len(self._items)

    def match(self, route: str, body: dict[str, Any]) -> SuiteItem | None:
        key = request_key(route, body)
        return self._items.get(key) if key is not None else None

    def verdict(self, item: SuiteItem, text: str) -> Score:
        from ernie_ops.validate.judges import score

        return score(text, item, self.suite.default_judge)
