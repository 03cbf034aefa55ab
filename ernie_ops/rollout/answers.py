"""What a backend answered, read from the bytes the gateway passed through, and the shadow comparison.

The gateway forwards a backend's bytes untouched and reads them afterwards, once the client has its
answer: the model name, finish reason, tool calls and token counts for the request log and the
metrics, and the text only when it is needed (shadow comparison). In a stream only the events that
carry something of these are decoded (the last ones, and tool-call deltas), not every token.

Tokens are the backend's `usage` when it reports one; otherwise the number of streamed events that
carried text (one token each on FastDeploy, vLLM and the embedded server), or None for a whole
answer without usage.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass(slots=True)
class ToolCall:
    name: str = ""
    arguments: str = ""

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "arguments": self.arguments}


@dataclass(slots=True)
class Answer:
    model: str | None = None
    text: str | None = None  # only when asked for
    finish_reason: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def summary(self) -> dict[str, Any]:
        """The fields of a request-log entry (never the text)."""
        out: dict[str, Any] = {"model": self.model, "finish_reason": self.finish_reason}
        if self.tool_calls:
            out["tool_calls"] = [t.name for t in self.tool_calls]
        if self.prompt_tokens is not None:
            out["prompt_tokens"] = self.prompt_tokens
        if self.completion_tokens is not None:
            out["completion_tokens"] = self.completion_tokens
        return out


_NULL_FINISH = (b'"finish_reason":null', b'"finish_reason": null')
_EMPTY_TEXT = (b'"content":""', b'"content": ""', b'"text":""', b'"text": ""')


_MODEL = re.compile(rb'"model": ?"((?:[^"\\]|\\.)*)"')
_FINISH = re.compile(rb'"finish_reason": ?"([^"]+)"')
_TEXT_KEYS = (b'"content":"', b'"content": "', b'"text":"', b'"text": "')


def read_stream(raw: bytes, want_text: bool = False) -> Answer:
    """An answer from the SSE bytes of a streamed completion (chat or legacy)."""
    if not want_text and b"tool_calls" not in raw:
        return _scan_stream(raw)
    return _parse_stream(raw, want_text)


def _scan_stream(raw: bytes) -> Answer:
    """The figures of a stream without tool calls, by byte searches (the pass-through path: no
    JSON decoding per event); the usage event, when there is one, is decoded."""
    answer = Answer()
    model = _MODEL.search(raw, 0, 4096)
    if model:
        with contextlib.suppress(orjson.JSONDecodeError):
            answer.model = orjson.loads(b'"' + model.group(1) + b'"')
    finishes = _FINISH.findall(raw)
    if finishes:
        answer.finish_reason = finishes[-1].decode("utf-8", "replace")
    at = raw.rfind(b'"usage"')
    if at >= 0:
        start = raw.rfind(b"data:", 0, at)
        end = raw.find(b"\n", at)
        with contextlib.suppress(orjson.JSONDecodeError):
            event = orjson.loads(raw[start + 5 : end if end >= 0 else len(raw)])
            if isinstance(event, dict) and isinstance(event.get("usage"), dict):
                _read_usage(event["usage"], answer)
    if answer.completion_tokens is None:
        chunks = sum(raw.count(key) for key in _TEXT_KEYS) - sum(raw.count(e) for e in _EMPTY_TEXT)
        answer.completion_tokens = chunks or None
    return answer


def _parse_stream(raw: bytes, want_text: bool) -> Answer:
    answer = Answer()
    pieces: list[str] = []
    calls: dict[int, ToolCall] = {}
    chunks = 0
    for line in raw.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if not data or data == b"[DONE]":
            continue
        has_text = (b'"content"' in data or b'"text"' in data) and not any(e in data for e in _EMPTY_TEXT)
        interesting = (
            want_text
            or answer.model is None
            or b'"usage"' in data
            or b"tool_calls" in data
            or (b'"finish_reason"' in data and not any(n in data for n in _NULL_FINISH))
        )
        if has_text:
            chunks += 1
        if not interesting:
            continue
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(event, dict):
            continue
        _read_event(event, answer, pieces, calls)
    if answer.completion_tokens is None and chunks:
        answer.completion_tokens = chunks
    if want_text:
        answer.text = "".join(pieces)
    answer.tool_calls = [calls[i] for i in sorted(calls)]
    return answer


def _read_event(event: dict[str, Any], answer: Answer, pieces: list[str], calls: dict[int, ToolCall]) -> None:
    if answer.model is None and isinstance(event.get("model"), str):
        answer.model = event["model"]
    usage = event.get("usage")
    if isinstance(usage, dict):
        _read_usage(usage, answer)
    for choice in event.get("choices") or ():
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            continue
        if choice.get("finish_reason"):
            answer.finish_reason = str(choice["finish_reason"])
        delta = choice.get("delta")
        if isinstance(delta, dict):
            if isinstance(delta.get("content"), str):
                pieces.append(delta["content"])
            for call in delta.get("tool_calls") or ():
                if not isinstance(call, dict):
                    continue
                index = call.get("index", 0) if isinstance(call.get("index"), int) else 0
                target = calls.setdefault(index, ToolCall())
                function = call.get("function") or {}
                if isinstance(function, dict):
                    if isinstance(function.get("name"), str):
                        target.name += function["name"]
                    if isinstance(function.get("arguments"), str):
                        target.arguments += function["arguments"]
        elif isinstance(choice.get("text"), str):
            pieces.append(choice["text"])


def _read_usage(usage: dict[str, Any], answer: Answer) -> None:
    if isinstance(usage.get("prompt_tokens"), int):
        answer.prompt_tokens = usage["prompt_tokens"]
    if isinstance(usage.get("completion_tokens"), int):
        answer.completion_tokens = usage["completion_tokens"]


def read_whole(raw: bytes, want_text: bool = False) -> Answer:
    """An answer from a whole (non-streamed) completion's JSON body."""
    answer = Answer()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return answer
    if not isinstance(body, dict):
        return answer
    if isinstance(body.get("model"), str):
        answer.model = body["model"]
    if isinstance(body.get("usage"), dict):
        _read_usage(body["usage"], answer)
    choices = body.get("choices") or []
    choice = choices[0] if choices and isinstance(choices[0], dict) else {}
    if choice.get("finish_reason"):
        answer.finish_reason = str(choice["finish_reason"])
    message = choice.get("message")
    if isinstance(message, dict):
        text = message.get("content")
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                answer.tool_calls.append(
                    ToolCall(str(function.get("name") or ""), str(function.get("arguments") or ""))
                )
    else:
        text = choice.get("text")
    if want_text:
        answer.text = text if isinstance(text, str) else ""
    return answer


_SPACE = re.compile(r"\s+")


def _normal(text: str | None) -> str:
    return _SPACE.sub(" ", text or "").strip()


def _arguments(text: str) -> Any:
    try:
        return orjson.loads(text) if text else {}
    except orjson.JSONDecodeError:
        return text


def difference(stable: Answer, candidate: Answer) -> str | None:
    """How two answers differ, for a person (None: they agree). Exact agreement: the same text
    (whitespace aside) and the same tool calls (names, and arguments as JSON values); a judge
    suite (`ernie_ops.rollout.judge`) scores answers against references instead."""
    a, b = _normal(stable.text), _normal(candidate.text)
    if a != b:
        at = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        return f"the texts differ from character {at} ({len(a)} and {len(b)} characters)"
    if len(stable.tool_calls) != len(candidate.tool_calls):
        return f"{len(stable.tool_calls)} and {len(candidate.tool_calls)} tool calls"
    for i, (x, y) in enumerate(zip(stable.tool_calls, candidate.tool_calls, strict=True)):
        if x.name != y.name:
            return f"tool call {i + 1}: {x.name} and {y.name}"
        if _arguments(x.arguments) != _arguments(y.arguments):
            return f"tool call {i + 1} ({x.name}): the arguments differ"
    return None


def agree(stable: Answer, candidate: Answer) -> bool:
    """Exact agreement (see `difference`)."""
    return difference(stable, candidate) is None
