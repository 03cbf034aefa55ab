"""Typed fast paths for the common formats: msgspec decodes straight into small structs (in C),
and a few list-level checks accept the record. Anything unusual returns None and goes down the
precise path in formats.py, which gives the reason; both paths accept exactly the same records
(tests/test_data.py holds them to that)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from ernie_ops.data.formats import Conversation, Parsed


class _Part(msgspec.Struct):
    type: str
    text: Any = None


class _Message(msgspec.Struct, forbid_unknown_fields=True):
    """Any other field (tool_calls, function_call, name, ...) takes the precise path."""

    role: Any = None
    content: Any = None
    weight: Any = 1


class _ShareGPTTurn(msgspec.Struct, rename={"speaker": "from"}):
    speaker: Any = None
    value: Any = None


class _Messages(msgspec.Struct):
    messages: list[_Message]
    tools: Any = None


class _ShareGPT(msgspec.Struct):
    conversations: list[_ShareGPTTurn]
    system: Any = None
    images: Any = None
    videos: Any = None


class _ErnieSFT(msgspec.Struct):
    src: list[str] | str
    tgt: list[str] | str
    system: Any = None
    label: Any = None
    is_system: Any = None


class _Alpaca(msgspec.Struct):
    instruction: str
    output: str
    input: Any = None
    system: Any = None
    history: Any = None


def _decoder(kind: type) -> Callable[[bytes], Any]:
    decode: Callable[[bytes], Any] = msgspec.json.Decoder(kind).decode
    errors = (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError)

    def run(raw: bytes) -> Any:
        try:
            return decode(raw)
        except errors:
            return None

    return run


_STR_ONLY = {str}


def _texts_ok(texts: list) -> bool:
    """All non-empty, non-blank strings; written with C-level builtins (the hot path)."""
    return set(map(type, texts)) == _STR_ONLY and all(texts) and not any(map(str.isspace, texts))


def _system_ok(system: Any) -> bool:
    return system is None or type(system) is str


_messages = _decoder(_Messages)


def fast_messages(raw: bytes) -> Parsed | None:
    r = _messages(raw)
    if r is None or r.tools:
        return None
    msgs = r.messages
    roles = [m.role for m in msgs]
    start = 1 if roles and roles[0] == "system" else 0
    n = (len(roles) - start) // 2
    if n == 0 or len(roles) - start != 2 * n:
        return None
    if roles[start::2] != ["user"] * n or roles[start + 1 :: 2] != ["assistant"] * n:
        return None
    contents = [m.content for m in msgs]
    if not _texts_ok(contents):
        return None
    system = contents[0] if start else None
    users, assistants = contents[start::2], contents[start + 1 :: 2]
    weights = [m.weight for m in msgs[start + 1 :: 2]]
    if weights.count(1) == n:
        return Conversation(system, users, assistants)
    if weights.count(0) + weights.count(1) != n or True in weights or False in weights:
        return None
    return Conversation(system, users, assistants, weights)


_sharegpt = _decoder(_ShareGPT)
_HUMAN, _GPT = {"human", "user"}, {"gpt", "assistant"}


def fast_sharegpt(raw: bytes) -> Parsed | None:
    r = _sharegpt(raw)
    if r is None or r.images or r.videos or not _system_ok(r.system):
        return None
    turns = r.conversations
    start = 1 if turns and turns[0].speaker == "system" else 0
    speakers = [t.speaker for t in turns]
    n = (len(speakers) - start) // 2
    if n == 0 or len(speakers) - start != 2 * n:
        return None
    if not set(speakers[start::2]) <= _HUMAN or not set(speakers[start + 1 :: 2]) <= _GPT:
        return None
    values = [t.value for t in turns]
    if not _texts_ok(values):
        return None
    system = values[0] if start else None
    return Conversation(r.system or system, values[start::2], values[start + 1 :: 2])


_ernie_sft = _decoder(_ErnieSFT)


def fast_erniekit_sft(raw: bytes) -> Parsed | None:
    r = _ernie_sft(raw)
    if r is None or r.is_system is not None or r.label is not None or not _system_ok(r.system):
        return None
    users = [r.src] if type(r.src) is str else r.src
    assistants = [r.tgt] if type(r.tgt) is str else r.tgt
    if not users or len(users) != len(assistants) or not (_texts_ok(users) and _texts_ok(assistants)):
        return None
    return Conversation(r.system or None, users, assistants)


_alpaca = _decoder(_Alpaca)


def fast_alpaca(raw: bytes) -> Parsed | None:
    r = _alpaca(raw)
    if r is None or r.history or not _system_ok(r.system) or not _texts_ok([r.instruction, r.output]):
        return None
    extra = r.input or ""
    if type(extra) is not str:
        return None
    user = f"{r.instruction}\n{extra}" if extra.strip() else r.instruction
    return Conversation(r.system or None, [user], [r.output])


FAST: dict[str, Callable[[bytes], Parsed | None]] = {
    "messages": fast_messages,
    "sharegpt": fast_sharegpt,
    "erniekit-sft": fast_erniekit_sft,
    "alpaca": fast_alpaca,
}


def maybe_control(raw: bytes) -> bool:
    """Could this record hold a control character? In valid JSON only a \\u00XX escape can carry one."""
    return b"\\u00" in raw
