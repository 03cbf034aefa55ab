"""`ernie-ops data preview`: records as the model sees them, with the trained-on tokens marked.

ERNIEKit encodes each turn as (prompt tokens, answer tokens) with the chat template and trains on
the answer tokens of turns whose label is 1 (ernie/dataset/finetuning.py); that is what is marked.
With a masker, the text shown has its personal data masked (one placeholder numbering per record);
the token counts are those of the record as it is, which is what the model trains on.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ernie_ops.data.formats import Conversation
from ernie_ops.data.lint import TokenCounter, parsed_items
from ernie_ops.data.read import require_file
from ernie_ops.privacy.masker import Masker, Scope

GREEN, RESET = "\x1b[30;42m", "\x1b[0m"


@dataclass
class Rendered:
    line: int
    text: str
    tokens: int
    trained: int


def _pieces(counter: TokenCounter, parsed: Conversation) -> Iterator[tuple[str, bool]]:
    """(decoded text, trained on?) per turn segment, in order."""
    tok = counter.tokenizer
    messages = [{"role": "system", "content": parsed.system}] if parsed.system else []
    for u, a in zip(parsed.users, parsed.assistants, strict=True):
        messages += [{"role": "user", "content": u.strip()}, {"role": "assistant", "content": a.strip()}]
    labels = parsed.labels or [1] * len(parsed.users)
    for (src, tgt), label in zip(tok.encode_chat_inputs({"messages": messages}), labels, strict=True):
        yield tok.decode(src), False
        yield tok.decode(tgt), bool(label)


def preview(
    path: Path,
    model_dir: Path,
    n: int = 3,
    color: bool = False,
    fmt: str = "auto",
    masker: Masker | None = None,
) -> Iterator[Rendered]:
    require_file(path)  # before the seconds the tokenizer takes to load
    counter = TokenCounter(model_dir, max_seq_len=1 << 30)
    shown = 0
    for item, _, parsed, _ in parsed_items(path, fmt, progress=False):
        if not isinstance(parsed, Conversation):
            continue
        pieces = list(_pieces(counter, parsed))
        texts = [text for text, _ in pieces]
        shown_texts = masker.mask_value(texts, Scope()) if masker else texts
        parts, tokens, trained = [], 0, 0
        for (text, learn), shown_text in zip(pieces, shown_texts, strict=True):
            n_tokens = len(counter.tokenizer.tokenize(text))
            tokens += n_tokens
            if learn:
                trained += n_tokens
                parts.append(f"{GREEN}{shown_text}{RESET}" if color else f"[[{shown_text}]]")
            else:
                parts.append(shown_text)
        yield Rendered(item.line, "".join(parts), tokens, trained)
        shown += 1
        if shown >= n:
            return
