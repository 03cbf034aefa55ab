"""From token ids to streamed text: `Detokenizer` (text deltas that never split a character) and
`StopMatcher` (where a stop string completes, and how much text to hold back until it is known)."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any


class Detokenizer:
    """Turns a growing list of token ids into text deltas that never split a character.

    Decoding one piece at a time breaks byte-fallback pieces (a CJK character is 3 pieces) and can
    lose a piece's leading space, so every step decodes a short window: the ids from `prefix` on,
    and the same window without the new ids; the delta is the difference. Text ending in U+FFFD is
    an incomplete UTF-8 sequence: it is held back until the next piece completes it.
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # the window starts here (one piece of context before `read`)
        self.read = 0  # ids before this have been emitted

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before) :]

    def flush(self) -> str:
        """What is left when the request ends (an incomplete character comes out as U+FFFD)."""
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return after[len(before) :] if len(after) > len(before) else ""


class StopMatcher:
    """Finds the first stop string in text that arrives piece by piece (an Aho-Corasick automaton).

    Each character costs the same however many stop strings a request has, and `held` is the
    longest tail of the text that could still grow into one (the stream holds it back). The first
    stop string to end wins; of those ending there, the longest (it starts earliest).
    """

    def __init__(self, stops: Sequence[str]):
        self._next: list[dict[str, int]] = [{}]  # trie edges; node 0 is the root
        self._depth = [0]  # characters from the root: the tail of the text this node stands for
        self._found = [0]  # length of the longest stop string ending at this node, 0 if none
        for stop in stops:
            node = 0
            for char in stop:
                if char not in self._next[node]:
                    self._next.append({})
                    self._depth.append(self._depth[node] + 1)
                    self._found.append(0)
                    self._next[node][char] = len(self._next) - 1
                node = self._next[node][char]
            self._found[node] = len(stop)
        self._fail = [0] * len(self._next)  # the longest proper suffix that is also a trie node
        frontier = deque(self._next[0].values())
        while frontier:
            node = frontier.popleft()
            for char, child in self._next[node].items():
                self._fail[child] = self._step(self._fail[node], char)
                self._found[child] = self._found[child] or self._found[self._fail[child]]
                frontier.append(child)
        self._state = 0

    def _step(self, node: int, char: str) -> int:
        while node and char not in self._next[node]:
            node = self._fail[node]
        return self._next[node].get(char, 0)

    def feed(self, text: str) -> int | None:
        """Read `text`; where in it the first completed stop string begins (negative: in text fed
        before), or None."""
        if len(self._next) == 1:  # no stop strings
            return None
        for i, char in enumerate(text):
            self._state = self._step(self._state, char)
            if self._found[self._state]:
                return i + 1 - self._found[self._state]
        return None

    @property
    def held(self) -> int:
        return self._depth[self._state]
