"""Typed fast paths for the common formats: msgspec decodes straight into small structs (in C),
and a few list-level checks accept the record. Anything unusual returns None and goes down the
precise path in formats.py, which gives the reason; both paths accept exactly the same records
(tests/test_data.py holds them to that).

`FastFormat.block` takes a whole block of lines at once: one C-level map decodes them all, so a
clean block costs no Python per record beyond the list-level checks; a block with any record
outside the common shape returns None and its lines take the per-record way."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import accumulate, chain
from operator import attrgetter
from typing import Annotated, Any, Literal, cast

import msgspec

from ernie_ops.data.formats import ESCAPED_CONTROL, Conversation, Parsed

# messages: the role is a msgspec tag, so the decoder itself rejects unknown roles, extra fields
# (tool_calls, name, ...), non-string and empty contents and weights other than 0/1; what is
# left in Python is the order of the roles, compared as one list of types. gc=False: decoded
# JSON holds no reference cycles, and untracked structs keep the collector out of the hot loop.
_Content = Annotated[str, msgspec.Meta(min_length=1)]


class _System(msgspec.Struct, tag_field="role", tag="system", forbid_unknown_fields=True, gc=False):
    content: _Content
    weight: Any = None  # ignored, as in formats.py


class _User(msgspec.Struct, tag_field="role", tag="user", forbid_unknown_fields=True, gc=False):
    content: _Content
    weight: Any = None  # ignored, as in formats.py


class _Assistant(msgspec.Struct, tag_field="role", tag="assistant", forbid_unknown_fields=True, gc=False):
    content: _Content
    weight: Literal[0, 1] = 1  # true/false/1.0 are accepted by formats.py: they take that path


class _Messages(msgspec.Struct, gc=False):
    messages: list[_System | _User | _Assistant]
    tools: Any = None


class _ShareGPTTurn(msgspec.Struct, rename={"speaker": "from"}):
    speaker: Any = None
    value: Any = None


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


_ERRORS = (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError)


@dataclass(frozen=True)
class FastFormat:
    kind: type  # the struct a record decodes into; msgspec raises on anything outside it
    check: Callable[[list[Any]], bool]  # are all these records in the common shape? (verdicts only)
    build: Callable[[list[Any]], list[Parsed] | None]  # their records, None if one is not in it
    decode: Callable[[bytes], Any] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "decode", msgspec.json.Decoder(self.kind).decode)

    def one(self, raw: bytes) -> Parsed | None:
        """The record, or None: the precise path in formats.py decides and says why."""
        try:
            record = self.decode(raw)
        except _ERRORS:
            return None
        built = self.build([record])
        return built[0] if built else None

    def block(self, lines: list[bytes], build: bool) -> list[Any] | None:
        """The records of a block of lines (parsed when `build`, else as decoded), if every one is
        in the common shape, else None. Blank lines fail to decode too, so a clean block's
        records align with its lines."""
        try:
            records = list(map(self.decode, lines))
        except _ERRORS:
            return None
        if build:
            return self.build(records)
        return records if self.check(records) else None


def _checked_by(parse: Callable[[Any], Parsed | None]) -> tuple[Callable, Callable]:
    """(check, build) for formats checked record by record: parsing is the check."""

    def build(records: list[Any]) -> list[Parsed] | None:
        parsed = list(map(parse, records))
        return cast(list[Parsed], parsed) if all(parsed) else None

    return (lambda records: build(records) is not None), build


_STR_ONLY = {str}


def _texts_ok(texts: list) -> bool:
    """All non-empty, non-blank strings; written with C-level builtins (the hot path)."""
    return set(map(type, texts)) == _STR_ONLY and all(texts) and not any(map(str.isspace, texts))


def _system_ok(system: Any) -> bool:
    return system is None or type(system) is str


def _shape(n: int) -> list[type[msgspec.Struct]]:
    pairs = [_User, _Assistant] * (n // 2)
    return [_System, *pairs] if n % 2 else pairs


# the message types of every plain conversation up to 128 messages: [system,] user/assistant pairs
_SHAPES = {n: _shape(n) for n in range(2, 129)}
_content, _weight = attrgetter("content"), attrgetter("weight")


_messages_of, _tools_of = attrgetter("messages"), attrgetter("tools")


def _plain(records: list[_Messages]) -> tuple[list[list[Any]], list[Any]] | None:
    """(each record's messages, all of them in one list) when every record is a plain
    conversation, else None. Checked for the whole block in a few C-level passes over all its
    messages at once (a Python loop per record costs more than decoding the record)."""
    if any(map(_tools_of, records)):
        return None
    lists = list(map(_messages_of, records))
    try:
        expected = list(chain.from_iterable(map(_SHAPES.__getitem__, map(len, lists))))
    except KeyError:  # 0, 1 or over 128 messages
        return None
    msgs = list(chain.from_iterable(lists))
    if list(map(type, msgs)) != expected or any(map(str.isspace, map(_content, msgs))):
        return None
    return lists, msgs


def _messages_check(records: list[_Messages]) -> bool:
    return _plain(records) is not None


def _messages_build(records: list[_Messages]) -> list[Parsed] | None:
    """Conversations cut out of one flat list of the block's contents (fewer Python steps per
    record than building each from its own messages)."""
    plain = _plain(records)
    if plain is None:
        return None
    lists, msgs = plain
    contents = list(map(_content, msgs))
    any_untrained = 0 in list(map(_weight, msgs))  # usually not: then no record has labels
    out: list[Parsed] = []
    start = 0
    for end in accumulate(map(len, lists)):
        first = start + (end - start) % 2  # past the system prompt, if there is one
        labels = _labels(msgs[first + 1 : end : 2]) if any_untrained else None
        system = contents[start] if first > start else None
        out.append(
            Conversation(
                system=system,
                users=contents[first:end:2],
                assistants=contents[first + 1 : end : 2],
                labels=labels,
            )
        )
        start = end
    return out


def _labels(assistants: list[_Assistant]) -> list[int] | None:
    weights = list(map(_weight, assistants))
    return weights if 0 in weights else None


_HUMAN, _GPT = {"human", "user"}, {"gpt", "assistant"}


def _sharegpt(r: _ShareGPT) -> Parsed | None:
    if r.images or r.videos or not _system_ok(r.system):
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
    return Conversation(system=r.system or system, users=values[start::2], assistants=values[start + 1 :: 2])


def _erniekit_sft(r: _ErnieSFT) -> Parsed | None:
    if r.is_system is not None or r.label is not None or not _system_ok(r.system):
        return None
    users = [r.src] if isinstance(r.src, str) else r.src
    assistants = [r.tgt] if isinstance(r.tgt, str) else r.tgt
    if not users or len(users) != len(assistants) or not (_texts_ok(users) and _texts_ok(assistants)):
        return None
    return Conversation(system=r.system or None, users=users, assistants=assistants)


def _alpaca(r: _Alpaca) -> Parsed | None:
    if r.history or not _system_ok(r.system) or not _texts_ok([r.instruction, r.output]):
        return None
    extra = r.input or ""
    if type(extra) is not str:
        return None
    user = f"{r.instruction}\n{extra}" if extra.strip() else r.instruction
    return Conversation(system=r.system or None, users=[user], assistants=[r.output])


FAST_FORMATS: dict[str, FastFormat] = {
    "messages": FastFormat(_Messages, _messages_check, _messages_build),
    "sharegpt": FastFormat(_ShareGPT, *_checked_by(_sharegpt)),
    "erniekit-sft": FastFormat(_ErnieSFT, *_checked_by(_erniekit_sft)),
    "alpaca": FastFormat(_Alpaca, *_checked_by(_alpaca)),
}
FAST: dict[str, Callable[[bytes], Parsed | None]] = {name: f.one for name, f in FAST_FORMATS.items()}


def maybe_control(raw: bytes) -> bool:
    """Could these bytes (a record or a block) hold a control character other than tab/newline/CR?
    The backslash test is a memchr: a block without any escape skips the regex."""
    return b"\\" in raw and ESCAPED_CONTROL.search(raw) is not None
