"""`ernie-ops smoke`: a functional checklist run against any OpenAI-compatible endpoint.

Every check ends PASS, FAIL, WARN or SKIP with the evidence that decided it. Capabilities a model
may lack (thinking, JSON output, tool calls, images) are *expected* or not: an expected capability
that fails is a FAIL; one that is not expected and fails is a WARN (reported, never fatal). The
expectation comes from the model catalog by the served name (Thinking models think, VL models see
images) unless `--expect` says otherwise. Vision is only tried when expected: a text-only server
would rightly reject the image.

The checks are deliberately deterministic (temperature 0) so a second run gives the same evidence,
and the stop-string check uses the model's own greedy answer to pick a stop string it must honour.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
import orjson

from ernie_ops.errors import UserError
from ernie_ops.validate.client import Endpoint, Reply, get_json, request, resolve_model, session

CAPABILITIES = ("thinking", "json", "tools", "vision")
PASS, FAIL, WARN, SKIP = "PASS", "FAIL", "WARN", "SKIP"
DEFAULT_CONTEXT = 131072  # the largest ERNIE 4.5 context: an over-long prompt beyond any model's


@dataclass
class Check:
    name: str
    status: str
    evidence: str
    seconds: float = 0.0
    capability: str | None = None


@dataclass
class SmokeReport:
    endpoint: str
    model: str
    expected: list[str]
    checks: list[Check] = field(default_factory=list)
    masked: bool = True  # personal data in the evidence (answers quoted) replaced

    @property
    def passed(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    def counts(self) -> dict[str, int]:
        return {s: sum(c.status == s for c in self.checks) for s in (PASS, FAIL, WARN, SKIP)}

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed, "counts": self.counts()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SmokeReport:
        checks = [Check(**c) for c in data.get("checks", [])]
        masked = bool(data.get("masked", False))  # reports from before masking were not
        return cls(data["endpoint"], data["model"], data.get("expected", []), checks, masked)


def _catalog(model: str | None) -> Any:
    """The served model's catalog entry, or None for a name the catalog does not know."""
    from ernie_ops.catalog import find_model

    try:
        return find_model(model or "")
    except UserError:
        return None


def default_expectations(model: str) -> set[str]:
    """What the catalog says the served model can do (nothing for names it does not know)."""
    spec = _catalog(model)
    if spec is None:
        return set()
    expected = {"thinking"} if spec.thinking or spec.vision else set()
    return expected | ({"vision"} if spec.vision else set())


def parse_expect(text: str) -> set[str]:
    """`--expect thinking,json` (or `none`) into a set, refusing unknown names."""
    names = {n.strip() for n in text.split(",") if n.strip() and n.strip() != "none"}
    unknown = names - set(CAPABILITIES)
    if unknown:
        raise UserError(
            f"--expect: unknown capability {', '.join(sorted(unknown))}",
            hint=f"choose from {', '.join(CAPABILITIES)} (comma-separated), or none",
        )
    return names


class _Context:
    """What the checks share: the client, the endpoint, and answers earlier checks found."""

    def __init__(self, client: aiohttp.ClientSession, endpoint: Endpoint, max_tokens: int, concurrency: int):
        self.client = client
        self.endpoint = endpoint
        self.max_tokens = max_tokens
        self.concurrency = concurrency
        self.max_model_len: int | None = None
        self.greedy: Reply | None = None  # the plain chat answer, reused by the stop check

    async def chat(self, content: Any, **extra: Any) -> Reply:
        body = {"messages": [{"role": "user", "content": content}], "temperature": 0, **extra}
        body.setdefault("max_tokens", self.max_tokens)
        return await request(self.client, self.endpoint, body)


Verdict = tuple[bool | None, str]  # (passed, or None for "cannot run here"; evidence)
CheckFn = Callable[[_Context], Awaitable[Verdict]]

PROMPT = "Name three colours of the rainbow."


def _brief(text: str, n: int = 60) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= n else text[: n - 3] + "...")


def _failed(reply: Reply) -> str:
    return f"HTTP {reply.status}: {reply.error}" if reply.status else str(reply.error)


async def check_health(ctx: _Context) -> Verdict:
    status, body = await get_json(ctx.client, f"{ctx.endpoint.root}/health")
    if status == 200:
        return True, "GET /health -> 200"
    models_status, _ = await get_json(ctx.client, f"{ctx.endpoint.base}/models")
    if status == 404 and models_status == 200:
        return True, "no /health route; GET /v1/models -> 200"
    return False, f"GET /health -> {status or 'no answer'} {_brief(str(body))}"


async def check_models(ctx: _Context) -> Verdict:
    status, body = await get_json(ctx.client, f"{ctx.endpoint.base}/models")
    if status != 200 or not isinstance(body, dict):
        return False, f"GET /v1/models -> {status} {_brief(str(body))}"
    cards = [c for c in body.get("data", []) if isinstance(c, dict)]
    names = [str(c.get("id")) for c in cards]
    for card in cards:
        if card.get("id") == ctx.endpoint.model and isinstance(card.get("max_model_len"), int):
            ctx.max_model_len = card["max_model_len"]
    context = f" (max_model_len {ctx.max_model_len})" if ctx.max_model_len else ""
    return ctx.endpoint.model in names, f"serves {', '.join(names) or 'nothing'}{context}"


async def check_chat(ctx: _Context) -> Verdict:
    reply = await ctx.chat(PROMPT)
    if not reply.ok:
        return False, _failed(reply)
    ctx.greedy = reply
    problems = []
    if reply.finish_reason not in ("stop", "length"):
        problems.append(f"finish_reason {reply.finish_reason!r}")
    if reply.completion_tokens is None or reply.prompt_tokens is None:
        problems.append("no usage")
    usage = f"usage {reply.prompt_tokens}+{reply.completion_tokens} tokens"
    evidence = f"{_brief(reply.text or reply.reasoning)}, finish_reason {reply.finish_reason}, {usage}"
    return not problems, ("; ".join(problems) + ": " if problems else "") + evidence


async def check_stream(ctx: _Context) -> Verdict:
    reply = await ctx.chat(PROMPT, stream=True)
    if not reply.ok:
        return False, _failed(reply)
    chunks = len(reply.chunk_times)
    same = ""
    if ctx.greedy is not None:
        same = (
            ", same text as non-streaming"
            if reply.text == ctx.greedy.text
            else ", differs from non-streaming"
        )
    ttft = f"{reply.ttft * 1000:.0f} ms" if reply.ttft is not None else "n/a"
    evidence = f"{chunks} chunks, TTFT {ttft}, finish_reason {reply.finish_reason}{same}"
    if chunks == 0 or reply.finish_reason is None:
        return False, evidence
    return True, evidence


async def check_stop(ctx: _Context) -> Verdict:
    text = ctx.greedy.text if ctx.greedy else ""
    stop = _pick_stop(text)
    if stop is None:
        return None, f"the greedy answer {_brief(text)} is too short to pick a stop string from"
    expected = text[: text.find(stop)]
    reply = await ctx.chat(PROMPT, stop=[stop])
    if not reply.ok:
        return False, _failed(reply)
    evidence = f"stop={stop!r}: got {_brief(reply.text)}, finish_reason {reply.finish_reason}"
    return reply.text.rstrip() == expected.rstrip() and reply.finish_reason == "stop", evidence


def _pick_stop(text: str) -> str | None:
    """A 3-character piece from the middle of the answer, cut where it first occurs."""
    if len(text.strip()) < 8:
        return None
    for start in range(len(text) // 2, len(text) - 3):
        piece = text[start : start + 3]
        if piece.strip() and text.find(piece) > 0:
            return piece
    return None


async def check_max_tokens(ctx: _Context) -> Verdict:
    limit = 3
    reply = await ctx.chat("Count from one to one hundred in words.", max_tokens=limit)
    if not reply.ok:
        return False, _failed(reply)
    n = reply.completion_tokens
    evidence = f"max_tokens={limit}: {n} completion tokens, finish_reason {reply.finish_reason}"
    if n is None:
        return False, "no usage in the reply; " + evidence
    return n <= limit and (reply.finish_reason == "length" or n < limit), evidence


async def check_thinking(ctx: _Context) -> Verdict:
    on, off = await asyncio.gather(
        ctx.chat(PROMPT, chat_template_kwargs={"enable_thinking": True}),
        ctx.chat(PROMPT, chat_template_kwargs={"enable_thinking": False}),
    )
    for reply in (on, off):
        if not reply.ok:
            return False, _failed(reply)
    evidence = (
        f"enable_thinking=true: reasoning_content {len(on.reasoning)} chars; "
        f"false: {len(off.reasoning)} chars"
    )
    return bool(on.reasoning) and not off.reasoning, evidence


async def check_json(ctx: _Context) -> Verdict:
    reply = await ctx.chat(
        'Return a JSON object with the keys "name" and "age" for Alice, who is 30.',
        response_format={"type": "json_object"},
        max_tokens=max(ctx.max_tokens, 64),
    )
    if not reply.ok:
        return False, _failed(reply)
    try:
        value = orjson.loads(reply.text)
    except orjson.JSONDecodeError:
        return False, f"response_format json_object, not JSON: {_brief(reply.text)}"
    return isinstance(value, dict), f"parsed a JSON {type(value).__name__}: {_brief(reply.text)}"


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


async def check_tools(ctx: _Context) -> Verdict:
    reply = await ctx.chat(
        "What is the weather in Beijing right now? Use the tool.",
        tools=[WEATHER_TOOL],
        tool_choice="auto",
        max_tokens=max(ctx.max_tokens, 128),
    )
    if not reply.ok:
        return False, _failed(reply)
    if not reply.tool_calls:
        return False, f"no tool_calls; content {_brief(reply.text)}"
    call = reply.tool_calls[0].get("function", {})
    try:
        arguments = orjson.loads(call.get("arguments") or "{}")
    except orjson.JSONDecodeError:
        return False, f"{call.get('name')} called with arguments that are not JSON: {call.get('arguments')!r}"
    good = call.get("name") == "get_weather" and isinstance(arguments, dict) and "city" in arguments
    return good, f"called {call.get('name')}({_brief(str(call.get('arguments')))})"


def square_png(size: int = 64) -> bytes:
    """A red square on white: small, generated, and unambiguous to a vision model."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(image).rectangle((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill="red")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


async def check_vision(ctx: _Context) -> Verdict:
    url = "data:image/png;base64," + base64.b64encode(square_png()).decode()
    content = [
        {"type": "image_url", "image_url": {"url": url}},
        {"type": "text", "text": "What colour is the square in this image? One word."},
    ]
    reply = await ctx.chat(content, max_tokens=max(ctx.max_tokens, 32))
    if not reply.ok:
        return False, _failed(reply)
    answer = reply.text or reply.reasoning
    said = "; says red" if "red" in answer.lower() else ""
    return bool(answer.strip()), f"PNG data URL accepted: {_brief(answer)}{said}"


async def check_overlong(ctx: _Context) -> Verdict:
    context = (
        ctx.max_model_len or getattr(_catalog(ctx.endpoint.model), "max_context", None) or DEFAULT_CONTEXT
    )
    words = context + 512  # each " hello" is at least one token in any vocabulary
    body = {"messages": [{"role": "user", "content": "hello " * words}], "max_tokens": 8}
    # its own connection: a server may close one it refused a large body on, and the shared pool
    # would hand that dead connection to the next check
    async with session(ctx.endpoint, concurrency=1, timeout=120) as client:
        reply = await request(client, ctx.endpoint, body)
    evidence = f"{words} words vs context {context}: HTTP {reply.status or 'none'}"
    if reply.status in (400, 413, 422) and reply.error:
        return True, f"{evidence}, {_brief(reply.error, 90)}"
    if reply.ok:
        return False, f"{evidence}: the server accepted a prompt longer than its context"
    return False, f"{evidence}: {reply.error}"


async def check_concurrent(ctx: _Context) -> Verdict:
    n = ctx.concurrency
    started = time.perf_counter()
    replies = await asyncio.gather(
        *(ctx.chat(f"Write a word that starts with the letter {chr(97 + i % 26)}.") for i in range(n))
    )
    wall = time.perf_counter() - started
    failed = [r for r in replies if not r.ok]
    latencies = sorted(r.latency for r in replies)
    evidence = f"{n - len(failed)}/{n} succeeded in {wall:.2f} s (median latency {latencies[n // 2]:.2f} s)"
    if failed:
        return False, f"{evidence}; first failure: {_failed(failed[0])}"
    return True, evidence


async def check_auth(ctx: _Context) -> Verdict:
    wrong = Endpoint(ctx.endpoint.base, "sk-wrong-" + "0" * 16, ctx.endpoint.model)
    async with session(wrong, concurrency=1, timeout=30) as client:
        reply = await request(
            client, wrong, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        )
    return reply.status == 401, f"a wrong API key -> HTTP {reply.status or reply.error}"


CHECKS: tuple[tuple[str, str | None, CheckFn], ...] = (
    ("health", None, check_health),
    ("models", None, check_models),
    ("chat", None, check_chat),
    ("streaming", None, check_stream),
    ("stop", None, check_stop),
    ("max_tokens", None, check_max_tokens),
    ("thinking", "thinking", check_thinking),
    ("json_output", "json", check_json),
    ("tool_call", "tools", check_tools),
    ("image", "vision", check_vision),
    ("overlong_prompt", None, check_overlong),
    ("concurrent", None, check_concurrent),
    ("auth", None, check_auth),
)


async def run_smoke(
    endpoint: Endpoint,
    expect: set[str] | None = None,
    max_tokens: int = 16,
    concurrency: int = 8,
    timeout: float = 120.0,
    on_check: Callable[[Check], None] | None = None,
    mask: bool | None = None,
) -> SmokeReport:
    """Every check in order; `expect` None takes the catalog's expectations for the served model.
    The evidence quotes answers: personal data in it is masked unless `mask` is False or
    ERNIE_OPS_NO_MASK=1."""
    from ernie_ops.privacy import default_masker, masking_on

    masked = masking_on(mask)
    async with session(endpoint, concurrency=concurrency + 2, timeout=timeout) as client:
        endpoint = await resolve_model(client, endpoint)
        model = endpoint.model or ""
        expected = default_expectations(model) if expect is None else expect
        report = SmokeReport(endpoint.base, model, sorted(expected), masked=masked)
        ctx = _Context(client, endpoint, max_tokens, concurrency)
        for name, capability, fn in CHECKS:
            check = await _run_check(ctx, name, capability, fn, expected)
            if masked:
                check.evidence = default_masker().mask_text(check.evidence)
            report.checks.append(check)
            if on_check:
                on_check(check)
    return report


async def _run_check(
    ctx: _Context, name: str, capability: str | None, fn: CheckFn, expected: set[str]
) -> Check:
    if capability == "vision" and capability not in expected:
        return Check(name, SKIP, "not a vision model (pass --expect vision to try)", capability=capability)
    if name == "auth" and not ctx.endpoint.api_key:
        return Check(name, SKIP, "no API key in use (--api-key-env)")
    started = time.perf_counter()
    try:
        passed, evidence = await fn(ctx)
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as err:
        passed, evidence = False, f"{type(err).__name__}: {err}"
    seconds = time.perf_counter() - started
    if passed is None:
        status = SKIP
    elif passed:
        status = PASS
    elif capability is not None and capability not in expected:
        status, evidence = WARN, f"{evidence} (not expected of this model)"
    else:
        status = FAIL
    return Check(name, status, evidence, seconds, capability)


def markdown(report: SmokeReport) -> str:
    from ernie_ops.validate.report import md_table

    rows: list[list[object]] = [["check", "status", "seconds", "evidence"]]
    rows += [[c.name, c.status, f"{c.seconds:.2f}", c.evidence] for c in report.checks]
    counts = ", ".join(f"{n} {s}" for s, n in report.counts().items() if n)
    verdict = "**PASS**" if report.passed else "**FAIL**"
    from ernie_ops.privacy import masking_note

    head = f"{verdict}: `{report.model}` at `{report.endpoint}`: {counts}.\n\n"
    return head + md_table(rows) + "\n" + masking_note(report.masked) + "\n"
