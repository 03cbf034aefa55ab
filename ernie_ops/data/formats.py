"""Training-data formats: recognise a record, validate it, and turn it into ERNIEKit's format.

Every format parses into one of two shapes: a `Conversation` (SFT) or a `Preference` (DPO).
`Bad` means the record is broken in its own format (ERNIEKit would skip it, or the user would lose
it silently); `Unsupported` means it is valid but ERNIEKit's text format cannot express it (tool
calls, images).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

FORMATS = ("erniekit-sft", "erniekit-dpo", "erniekit-vl", "alpaca", "messages", "sharegpt", "preference")


def erniekit_format(stage: str) -> str:
    """The dataset format an ERNIEKit stage reads (SFT, DPO, or a VL stage)."""
    return "erniekit-vl" if "VL" in stage else "erniekit-dpo" if stage == "DPO" else "erniekit-sft"


CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")  # C0 controls but tab, newline, CR


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,23}")


def _named(value: Any) -> str:
    """A record's value as a reason shows it: a short name or number as it is, anything else by
    its type and length. Reasons are printed by lint and kept in reject files, and free text (or a
    long number) where a role or a type belongs may be personal data."""
    if isinstance(value, str):
        return repr(value) if _NAME.fullmatch(value) else f"(a {len(value)}-character text)"
    if value is None or isinstance(value, bool) or (isinstance(value, int) and abs(value) < 10**6):
        return repr(value)
    return f"(a value of type {type(value).__name__})"


class Bad(ValueError):
    """The record is broken in its own format."""


class Unsupported(ValueError):
    """The record is valid, but ERNIEKit's erniekit format cannot express it."""


class Conversation(
    msgspec.Struct,
    kw_only=True,
    omit_defaults=True,
    rename={"users": "src", "assistants": "tgt", "labels": "label"},
):
    """An SFT record. Its msgspec JSON encoding is ERNIEKit's erniekit-sft line (what
    to_erniekit_sft writes: system and labels left out when absent; every parser keeps `system`
    None or non-empty), so convert writes a block of them in one C call."""

    system: str | None = None
    users: list[str]
    assistants: list[str]
    labels: list[int] | None = None  # per assistant turn: 1 trains on it, 0 does not


@dataclass(slots=True)
class Preference:
    system: str | None
    users: list[str]  # the prompt's user turns (one more than its assistant turns)
    assistants: list[str]
    chosen: list[str]
    rejected: list[str]


@dataclass(slots=True)
class VLSample:
    """ERNIEKit's VL-SFT record: images plus text segments; ERNIEKit's text formats cannot hold it."""

    images: list[str]
    texts: list[tuple[str, bool]]  # (text, trained on)


Parsed = Conversation | Preference | VLSample


def detect(record: Any) -> str | None:
    """The format a record looks like, from its keys."""
    if not isinstance(record, dict):
        return None
    keys = record.keys()
    if "text_info" in keys:
        return "erniekit-vl"
    if "src" in keys and "tgt" in keys:
        return "erniekit-dpo" if "response" in keys else "erniekit-sft"
    if "messages" in keys:
        return "messages"
    if "conversations" in keys:
        return "sharegpt"
    if "chosen" in keys and "rejected" in keys:
        return "preference"
    if "instruction" in keys and "output" in keys:
        return "alpaca"
    return None


# ---------------------------------------------------------------------------------------------
# field helpers


def _text(value: Any, where: str, *, allow_empty: bool = False) -> str:
    if type(value) is not str:
        raise Bad(f"{where} must be a string, got {type(value).__name__}")
    if not allow_empty and (not value or value.isspace()):
        raise Bad(f"{where} is empty")
    return value


# A control character can only reach a string through a JSON escape (raw ones are invalid JSON):
# look for those in the raw bytes first (C speed), and walk the record only when one is there.
ESCAPED_CONTROL = re.compile(rb"\\u00(?:0[0-8bBcCeEfF]|1[0-9a-fA-F])")


def control_character(raw: bytes, record: Any) -> str | None:
    """The reason a record carries a control character (other than tab/newline/CR), else None."""
    if not ESCAPED_CONTROL.search(raw):
        return None
    stack = [("", record)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            bad = CONTROL.search(value)
            if bad:
                return f"{where or 'the record'} contains the control character U+{ord(bad.group()):04X}"
        elif isinstance(value, dict):
            stack.extend((f"{where}.{k}" if where else str(k), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(value))
    return None


def _texts(value: Any, where: str) -> list[str]:
    """ERNIEKit accepts a string or a list of strings for src/tgt."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise Bad(f"{where} must be a string or a list of strings, got {type(value).__name__}")
    return [_text(v, f"{where}[{i}]") for i, v in enumerate(value)]


def _system(record: dict, key: str = "system") -> str | None:
    if key not in record or record[key] is None:
        return None
    return _text(record[key], key, allow_empty=True) or None


def _field(record: dict, key: str) -> Any:
    if key not in record:
        raise Bad(f"missing field '{key}'")
    return record[key]


# ---------------------------------------------------------------------------------------------
# parsers


def parse_erniekit_sft(r: dict) -> Conversation:
    users, assistants = _texts(_field(r, "src"), "src"), _texts(_field(r, "tgt"), "tgt")
    if not users or not assistants:
        raise Bad("src and tgt must not be empty")
    if len(users) != len(assistants):
        raise Bad(f"src has {len(users)} turn(s) but tgt has {len(assistants)}: they must match")
    labels = r.get("label")
    if labels is not None and (
        not isinstance(labels, list) or len(labels) != len(users) or any(x not in (0, 1) for x in labels)
    ):
        raise Bad("label must be a list of 0/1, one per turn")
    system = _system(r)
    if r.get("is_system") == 1 and system is None:  # ERNIEKit's older layout: system in src[0]
        system, users, assistants = users[0], users[1:], assistants[1:]
        labels = labels[1:] if labels else None
        if not users:
            raise Bad("is_system: 1 leaves no turn to train on")
    return Conversation(system=system, users=users, assistants=assistants, labels=labels)


def parse_erniekit_dpo(r: dict) -> Preference:
    users, assistants = _texts(_field(r, "src"), "src"), _texts(_field(r, "tgt"), "tgt")
    if len(users) != len(assistants) + 1:
        raise Bad(f"src must have one more turn than tgt (got {len(users)} and {len(assistants)})")
    response, sort = _field(r, "response"), _field(r, "sort")
    if not isinstance(response, list) or not isinstance(sort, list) or len(response) != 2 or len(sort) != 2:
        raise Bad("response and sort must be lists of two")
    if sort[0] == sort[1]:
        raise Bad(f"sort values must differ (got {sort})")
    pair = [_texts(x, f"response[{i}]") for i, x in enumerate(response)]
    for i, turns in enumerate(pair):
        if len(turns) % 2 != 1:
            raise Bad(f"response[{i}] must have an odd number of turns (assistant, user, assistant, ...)")
    chosen, rejected = (pair[0], pair[1]) if sort[0] > sort[1] else (pair[1], pair[0])
    return Preference(_system(r), users, assistants, chosen, rejected)


def parse_erniekit_vl(r: dict) -> VLSample:
    texts = _field(r, "text_info")
    if not isinstance(texts, list) or not texts:
        raise Bad("text_info must be a non-empty list")
    segments = []
    for i, t in enumerate(texts):
        if not isinstance(t, dict) or t.get("tag") not in ("mask", "no_mask"):
            raise Bad(f"text_info[{i}] must be an object with tag mask or no_mask")
        segments.append(
            (_text(t.get("text"), f"text_info[{i}].text", allow_empty=True), t["tag"] == "no_mask")
        )
    if not any(learn for _, learn in segments):
        raise Bad("no text_info segment is tagged no_mask: nothing to learn from")
    images = r.get("image_info") or []
    if not isinstance(images, list):
        raise Bad("image_info must be a list")
    urls = []
    for i, image in enumerate(images):
        if not isinstance(image, dict) or not isinstance(image.get("image_url"), str):
            raise Bad(f"image_info[{i}] needs an image_url string")
        index = image.get("matched_text_index", 0)
        if not isinstance(index, int) or not 0 <= index < len(segments):
            raise Bad(f"image_info[{i}].matched_text_index {_named(index)} points at no text_info entry")
        urls.append(image["image_url"])
    return VLSample(urls, segments)


def parse_alpaca(r: dict) -> Conversation:
    instruction = _text(_field(r, "instruction"), "instruction")
    extra = r.get("input") or ""
    extra = _text(extra, "input", allow_empty=True)
    output = _text(_field(r, "output"), "output")
    users, assistants = [], []
    history = r.get("history") or []
    if not isinstance(history, list):
        raise Bad("history must be a list of [question, answer] pairs")
    for i, pair in enumerate(history):
        if not isinstance(pair, list) or len(pair) != 2:
            raise Bad(f"history[{i}] must be a [question, answer] pair")
        users.append(_text(pair[0], f"history[{i}][0]"))
        assistants.append(_text(pair[1], f"history[{i}][1]"))
    users.append(f"{instruction}\n{extra}" if extra.strip() else instruction)
    assistants.append(output)
    return Conversation(system=_system(r), users=users, assistants=assistants)


ROLE_ALIASES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}
TOOL_ROLES = {"tool", "function", "function_call", "observation", "ipython"}


def _content(content: Any, where: str) -> str:
    """A message's text: a string, or OpenAI content parts (text only; images are Unsupported)."""
    if type(content) is str:
        if not content or content.isspace():
            raise Bad(f"{where}.content is empty")
        return content
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                texts.append(_text(part.get("text"), f"{where}.content[{i}].text", allow_empty=True))
            elif kind in ("image_url", "image", "input_image", "video_url", "audio"):
                raise Unsupported(
                    f"{kind} content: ERNIEKit's text format has no images (VL data is another format)"
                )
            else:
                raise Bad(f"{where}.content[{i}] has unknown type {_named(kind)}")
        return _content("".join(texts), where)
    if content is None:
        raise Bad(f"{where} has no content")
    raise Bad(f"{where}.content must be a string, got {type(content).__name__}")


def _turns(messages: Any, where: str, role_key: str) -> tuple[str | None, list[str], list[str], list[int]]:
    """(system, users, assistants, labels) from a list of role/content messages, in strict order.
    The hot loop of lint and convert: positions are formatted only when something is wrong."""
    if not isinstance(messages, list) or not messages:
        raise Bad(f"{where} must be a non-empty list")
    content_key = "content" if role_key == "role" else "value"
    system, users, assistants, labels = None, [], [], []
    expected = "user"
    for i, m in enumerate(messages):
        if type(m) is not dict:
            raise Bad(f"{where}[{i}] must be an object")
        raw_role = m.get(role_key)
        role = ROLE_ALIASES.get(raw_role) if type(raw_role) is str else None
        if role is None or m.get("tool_calls") or m.get("function_call"):
            if raw_role in TOOL_ROLES or m.get("tool_calls") or m.get("function_call"):
                raise Unsupported(
                    "tool calls / tool results: ERNIEKit's erniekit SFT format has no tool fields"
                )
            raise Bad(f"{where}[{i}].{role_key} {_named(raw_role)} is not user, assistant or system")
        text = _content(m.get(content_key), f"{where}[{i}]")
        if role == "system":
            if i != 0:
                raise Bad(f"{where}[{i}]: a system message is only allowed first")
            system = text
        elif role != expected:
            raise Bad(f"{where}[{i}]: roles out of order ({role} where {expected} was expected)")
        elif role == "user":
            users.append(text)
            expected = "assistant"
        else:
            assistants.append(text)
            weight = m.get("weight", 1)
            if weight != 1 and weight != 0:
                raise Bad(f"{where}[{i}].weight must be 0 or 1")
            labels.append(int(weight))
            expected = "user"
    return system, users, assistants, labels


def parse_messages(r: dict) -> Conversation:
    if r.get("tools"):
        raise Unsupported("tool definitions: ERNIEKit's erniekit SFT format has no tool fields")
    system, users, assistants, labels = _turns(_field(r, "messages"), "messages", "role")
    if len(assistants) != len(users):
        raise Bad("the conversation ends with a user message: nothing to learn from")
    return Conversation(
        system=system, users=users, assistants=assistants, labels=labels if 0 in labels else None
    )


def parse_sharegpt(r: dict) -> Conversation:
    if r.get("images") or r.get("videos"):
        raise Unsupported("images/videos: ERNIEKit's text format has no images (VL data is another format)")
    system, users, assistants, _ = _turns(_field(r, "conversations"), "conversations", "from")
    system = _system(r) or system
    if len(assistants) != len(users):
        raise Bad("the conversation ends with a human turn: nothing to learn from")
    return Conversation(system=system, users=users, assistants=assistants)


def _side(value: Any, where: str) -> list[str]:
    """A chosen/rejected answer: a string, or assistant messages."""
    if isinstance(value, str):
        return [_text(value, where)]
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        answers = [m for m in value if m.get("role") == "assistant"] or value[-1:]
        return [_content(m.get("content"), f"{where}[{i}]") for i, m in enumerate(answers)]
    raise Bad(f"{where} must be a string or a list of messages")


def parse_preference(r: dict) -> Preference:
    prompt = _field(r, "prompt")
    assistants: list[str] = []
    if isinstance(prompt, str):
        system, users = _system(r), [_text(prompt, "prompt")]
    else:
        system, users, assistants, _ = _turns(prompt, "prompt", "role")
        system = _system(r) or system
        if len(users) != len(assistants) + 1:
            raise Bad("the prompt must end with a user message")
    chosen, rejected = _side(_field(r, "chosen"), "chosen"), _side(_field(r, "rejected"), "rejected")
    if chosen == rejected:
        raise Bad("chosen and rejected are identical")
    return Preference(system, users, assistants, chosen, rejected)


PARSERS: dict[str, Callable[[dict], Parsed]] = {
    "erniekit-sft": parse_erniekit_sft,
    "erniekit-dpo": parse_erniekit_dpo,
    "erniekit-vl": parse_erniekit_vl,
    "alpaca": parse_alpaca,
    "messages": parse_messages,
    "sharegpt": parse_sharegpt,
    "preference": parse_preference,
}


def parse(fmt: str, record: Any) -> Parsed:
    if not isinstance(record, dict):
        raise Bad(f"a record must be a JSON object, got {type(record).__name__}")
    return PARSERS[fmt](record)


# ---------------------------------------------------------------------------------------------
# ERNIEKit's formats out


def to_erniekit_sft(p: Parsed) -> dict:
    if isinstance(p, VLSample):
        raise Unsupported("images: ERNIEKit's text SFT format has no images (keep it as VL-SFT data)")
    if isinstance(p, Preference):
        raise Unsupported("preference data: convert it with --to erniekit-dpo")
    out: dict[str, Any] = {}
    if p.system:
        out["system"] = p.system
    out["src"], out["tgt"] = p.users, p.assistants
    if p.labels is not None:
        out["label"] = p.labels
    return out


def to_erniekit_dpo(p: Parsed) -> dict:
    if not isinstance(p, Preference):
        raise Unsupported("not preference data (no chosen/rejected pair): convert it with --to erniekit-sft")
    out: dict[str, Any] = {}
    if p.system:
        out["system"] = p.system
    out.update(src=p.users, tgt=p.assistants, response=[p.chosen, p.rejected], sort=[1, 0])
    return out


TARGETS: dict[str, Callable[[Parsed], dict]] = {
    "erniekit-sft": to_erniekit_sft,
    "erniekit-dpo": to_erniekit_dpo,
}
