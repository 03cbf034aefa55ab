"""The load generator behind `ernie-ops bench`: closed-loop concurrency levels or open-loop rates
against one OpenAI-compatible endpoint, streaming, with serving metrics per level.

Closed loop (`levels`): N requests with at most `concurrency` in flight (a fixed pool of workers,
each sending its next request when the previous one ends). Open loop (`rates`, a trace, and the
searches of search.py): request i is sent at its due time whatever the server does (arrivals.py:
Poisson / gamma gaps as vLLM's `bench serve`, or a trace's times), optionally capped at
`max_concurrency` in flight. Each request is bounded by a timeout and each level by a wall-clock
budget and by the stop conditions `max_errors` / `max_error_rate` (when one fires, nothing more is
sent, requests in flight are cancelled and the level is marked truncated / stopped). Requests sent
in a level's first `warmup_s` or last `cooldown_s` seconds are sent but left out of its figures.
Every request goes through `client.request()`, the one SSE parser of the codebase, so smoke, eval
and bench measure TTFT the same way.

Metrics per level (ms: mean / p50 / p90 / p99), with vLLM's and GuideLLM's definitions beside:
- TTFT: first output chunk - start. The start is, in a closed loop, when the request was written
  (vLLM: `st` just before the POST; GuideLLM: the request's start); in an open loop, when it was
  DUE, so a client or a server that falls behind shows as latency rather than as a lower arrival
  rate (vLLM and GuideLLM start at the write, and report scheduling delay, if at all, apart).
- TPOT: (last chunk - first chunk) / (output tokens - 1) per request = vLLM's TPOT = GuideLLM's
  "inter token latency"; GuideLLM's "time per output token" is (last - start) / output tokens.
- ITL: every gap between output chunks, pooled (vLLM's ITL); a chunk may carry several tokens.
- E2E: last byte - start (start as for TTFT); vLLM's E2EL, GuideLLM's request latency.
- request / output / total token throughput: per second of the level's wall time (first send to
  last reply; with warm-up / cool-down windows, of the window), as vLLM's; goodput: requests
  meeting every SLO given, per second (vLLM's `--goodput`, DistServe's definition; one output
  token has no TPOT and cannot miss a TPOT bound, as in vLLM).
- open loop: the achieved arrival rate (requests written per second, first to last) and the
  coefficient of variation of the gaps between writes (1 for Poisson, 1 / sqrt(burstiness)).
- send lag: due (open loop) or taken by a worker (closed loop) -> written: this client's own lag.
Output tokens come from the server's `usage` when it sends it, else one per output chunk. Prompt
lengths are tokens of the served model's tokenizer when one is found (tokens.py), else words, and
the report says which.

The generator's own ceiling and open-loop accuracy against a null server are measured by
`scripts/bench_loadgen.py`; it is far above what a real model server streams on this hardware, so
the figures describe the server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from ernie_ops import eventloop
from ernie_ops.data.formats import ROLE_ALIASES, Bad, Conversation, Preference, Unsupported, detect, parse
from ernie_ops.data.read import read_items
from ernie_ops.errors import UserError
from ernie_ops.files import atomic_output, write_text_atomic
from ernie_ops.text import format_table
from ernie_ops.validate.arrivals import ArrivalStats, TraceRow, gamma_offsets, target_cv, trace_offsets
from ernie_ops.validate.client import CHAT, Endpoint, Reply, get_json, request, resolve_model, session
from ernie_ops.validate.timer import Waker
from ernie_ops.validate.tokens import Tokenizer, prompt_of

Messages = list[dict[str, str]]

# Common English words: about one token each in ERNIE's and most BPE vocabularies, so N words
# approximate an N-token prompt (the chat template adds a few).
WORDS = tuple(
    """the of and to in is was for on that with as by at from his her they this are be have had
    not but one all were we when there can an your which their said if will each about how up out
    them then she many some so these would other into has more two like him see time could no make
    than first been its who now people my made over did down only way find use may water long little
    very after called just where most know get through back much before go good new write our used
    me man too any day same right look think also around another came come work three word must
    because does part even place well such here take why things help put years different away again
    off went old number great tell men say small every found still between name should home big give
    air line set own under read last never us left end along while might next sound below saw
    something thought both few those always show large often together asked house world going want
    school important until form food keep children feet land side without boy once animal life enough
    took four head above kind began almost live page got earth need far hand high year mother light
    country father let night picture being study second soon story since white ever paper hard near
    sentence better best across during today however sure knew try told young sun thing whole hear
    example heard several change answer room sea against top turned learn point city play toward five
    himself usually money seen car morning body upon family later turn move face door cut done group
    true leave color red friends easy""".split()
)
ERRORS_KEPT = 5  # distinct error messages kept per level
BUSY_CLIENT = 0.9  # of a core: above it, a level's figures may be this client's limit
CANCELLED = "cancelled: the level's time limit was reached"


# ---------------------------------------------------------------------------------------------
# arguments


@dataclass(frozen=True)
class Length:
    """A length drawn per request: fixed (`128`), uniform over a range (`128:512`), or normal with a
    mean and a standard deviation, clipped to [min, max] (`mean=256,stdev=64,min=32,max=1024`; min
    defaults to 1, max to mean + 4 stdev), as GuideLLM's synthetic data and genai-perf's
    `--synthetic-input-tokens-mean/-stddev`."""

    low: int
    high: int
    mean: float | None = None
    stdev: float | None = None

    @classmethod
    def parse(cls, text: str | int, what: str = "--input-len") -> Length:
        value = str(text).strip()
        if "=" in value:
            return cls._parse_normal(value, what)
        low, sep, high = value.partition(":")
        try:
            a, b = int(low), int(high if sep else low)
        except ValueError:
            raise UserError(
                f"{what} {value!r} is not a number, a range or a distribution",
                hint=f"e.g. {what} 256, {what} 128:512 or {what} mean=256,stdev=64,min=32,max=1024",
            ) from None
        if a < 1 or b < a:
            raise UserError(
                f"{what} {value!r}: need 1 <= low <= high", hint=f"e.g. {what} 128:512 (low first)"
            )
        return cls(a, b)

    @classmethod
    def _parse_normal(cls, value: str, what: str) -> Length:
        example = f"e.g. {what} mean=256,stdev=64,min=32,max=1024"
        fields: dict[str, float] = {}
        for part in value.split(","):
            key, _, number = part.partition("=")
            key = key.strip()
            if key not in ("mean", "stdev", "min", "max"):
                raise UserError(
                    f"{what} {value!r}: unknown key {key!r} (mean, stdev, min, max)", hint=example
                )
            try:
                fields[key] = float(number)
            except ValueError:
                raise UserError(f"{what} {value!r}: {key}={number!r} is not a number", hint=example) from None
        if "mean" not in fields:
            raise UserError(f"{what} {value!r}: needs mean=", hint=example)
        mean, stdev = fields["mean"], fields.get("stdev", 0.0)
        low = int(fields.get("min", 1))
        high = int(fields.get("max", math.ceil(mean + 4 * stdev)))
        if stdev < 0 or low < 1 or high < low or not low <= mean <= high:
            raise UserError(f"{what} {value!r}: need stdev >= 0 and 1 <= min <= mean <= max", hint=example)
        return cls(low, high, mean, stdev)

    def sample(self, rng: random.Random) -> int:
        if self.mean is not None:
            drawn = round(rng.gauss(self.mean, self.stdev or 0.0))
            return min(max(drawn, self.low), self.high)
        return self.low if self.low == self.high else rng.randint(self.low, self.high)

    def __str__(self) -> str:
        if self.mean is not None:
            return f"mean {self.mean:g} stdev {self.stdev:g} in [{self.low}, {self.high}]"
        return str(self.low) if self.low == self.high else f"{self.low}:{self.high}"


def parse_levels(text: str) -> list[int]:
    """`1,8,32` -> [1, 8, 32]; each level a positive integer."""
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        levels = []
    if not levels or min(levels) < 1:
        raise UserError(
            f"--concurrency {text!r}: expected positive integers", hint="e.g. --concurrency 1,8,32"
        )
    return levels


@dataclass(frozen=True)
class SLO:
    """Per-request service levels in ms; a request is good when it meets every one given."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None

    @property
    def given(self) -> bool:
        return any(v is not None for v in (self.ttft_ms, self.tpot_ms, self.e2e_ms))

    def met(self, reply: Reply, origin: float | None = None) -> bool:
        """Whether `reply` meets every bound, its TTFT and E2E counted from `origin` (an open
        loop's scheduled send time; default: when the request was written)."""
        if not reply.ok:
            return False
        start = reply.origin if origin is None else origin
        ttft, tpot = (None if reply.first is None else reply.first - start), reply.tpot
        if self.ttft_ms is not None and (ttft is None or ttft * 1000 > self.ttft_ms):
            return False
        # one output token has no TPOT: nothing to miss
        if self.tpot_ms is not None and tpot is not None and tpot * 1000 > self.tpot_ms:
            return False
        return self.e2e_ms is None or (reply.end - start) * 1000 <= self.e2e_ms

    def __str__(self) -> str:
        parts = [
            f"{name} <= {value:g} ms"
            for name, value in (("TTFT", self.ttft_ms), ("TPOT", self.tpot_ms), ("E2E", self.e2e_ms))
            if value is not None
        ]
        return ", ".join(parts) if parts else "none (goodput = throughput of successful requests)"


# ---------------------------------------------------------------------------------------------
# workload


@dataclass(slots=True)
class Planned:
    """One request to send: the body (without `model`) and its prompt's estimated tokens."""

    body: dict[str, Any]
    input_tokens: int


class Workload:
    """Where prompts come from (synthetic words or a data file) and how requests are built.

    `requests(n)` continues one seeded sequence: the warmup and every level get prompts of their
    own (no request repeats another's prompt, so a server's prefix cache does not flatter it).
    Lengths are tokens of `tokenizer` when one is set (`use_tokenizer`), else words.
    """

    def __init__(
        self,
        source: str,
        prompts: list[Messages] | None,
        input_len: Length,
        output_len: Length,
        *,
        seed: int = 0,
        ignore_eos: bool = False,
        temperature: float = 0.0,
        skipped: Counter[str] | None = None,
    ):
        self.source = source
        self.prompts = prompts
        self.input_len = input_len
        self.output_len = output_len
        self.seed = seed
        self.ignore_eos = ignore_eos
        self.temperature = temperature
        self.skipped: Counter[str] = skipped or Counter()
        self.rng = random.Random(seed)
        self.cursor = 0
        self.tokenizer: Tokenizer | None = None
        self.tokenizer_note = "no tokenizer: lengths are words"
        self.built: list[int] = []  # input lengths of the requests built, in the unit
        if prompts is not None:
            self.rng.shuffle(prompts)

    @classmethod
    def synthetic(cls, input_len: Length, output_len: Length, **options: Any) -> Workload:
        return cls("synthetic", None, input_len, output_len, **options)

    @classmethod
    def from_file(cls, path: Path, output_len: Length, **options: Any) -> Workload:
        prompts, skipped = read_prompts(path)
        if not prompts:
            reasons = "; ".join(f"{n} x {why}" for why, n in skipped.most_common(3)) or "the file is empty"
            raise UserError(
                f"{path}: no usable prompt ({reasons})",
                hint="give a JSONL file in a format `ernie-ops data lint` reads (messages, sharegpt, "
                "alpaca, erniekit-sft, ...), or --dataset synthetic",
            )
        lengths = [_words(m) for m in prompts]
        return cls(
            str(path), prompts, Length(min(lengths), max(lengths)), output_len, skipped=skipped, **options
        )

    @property
    def unit(self) -> str:
        return "words" if self.tokenizer is None else "tokens"

    def use_tokenizer(self, tokenizer: Tokenizer | None, note: str) -> None:
        self.tokenizer = tokenizer
        self.tokenizer_note = note

    def requests(self, n: int) -> list[Planned]:
        return [self._next() for _ in range(n)]

    def requests_with(self, lengths: list[tuple[int, int]]) -> list[Planned]:
        """One request per (input, output) length pair (a trace); file prompts ignore the input."""
        return [self._next(i, o) for i, o in lengths]

    def _next(self, input_len: int | None = None, output_len: int | None = None) -> Planned:
        if self.prompts is None:
            k = self.input_len.sample(self.rng) if input_len is None else input_len
            if self.tokenizer is None:
                text = " ".join(self.rng.choices(WORDS, k=k))
            else:
                text, k = prompt_of(self.tokenizer, k, WORDS, self.rng)
            messages = [{"role": "user", "content": text}]
        else:
            messages = self.prompts[self.cursor % len(self.prompts)]
            self.cursor += 1
            k = self._count(messages)
        body: dict[str, Any] = {
            "messages": messages,
            "max_tokens": self.output_len.sample(self.rng) if output_len is None else output_len,
            "temperature": self.temperature,
            "stream": True,
        }
        if self.ignore_eos:
            body["ignore_eos"] = True
        self.built.append(k)
        return Planned(body, k)

    def _count(self, messages: Messages) -> int:
        if self.tokenizer is None:
            return _words(messages)
        return sum(len(self.tokenizer.encode(m["content"])) for m in messages)

    def describe(self) -> dict[str, Any]:
        built = np.asarray(self.built or [0])
        return {
            "dataset": self.source,
            "prompts": None if self.prompts is None else len(self.prompts),
            "skipped_records": sum(self.skipped.values()),
            "skipped_reasons": dict(self.skipped.most_common(ERRORS_KEPT)),
            "input_len": str(self.input_len),
            "input_unit": self.unit,
            "tokenizer": self.tokenizer_note,
            "input_built": {
                "mean": _r(built.mean()),
                "stdev": _r(built.std()),
                "min": int(built.min()),
                "max": int(built.max()),
                "requests": len(self.built),
            },
            "output_len": str(self.output_len),
            "ignore_eos": self.ignore_eos,
            "temperature": self.temperature,
            "seed": self.seed,
        }


def _words(messages: Messages) -> int:
    return sum(len(m["content"].split()) for m in messages)


def read_prompts(path: Path) -> tuple[list[Messages], Counter[str]]:
    """Each record's prompt as chat messages (system, then the turns up to the last user turn), in
    any format our data tools read; records that give none are counted by reason, not fatal."""
    prompts: list[Messages] = []
    skipped: Counter[str] = Counter()
    fmt: str | None = None
    for item in read_items(path):
        value = item.load()
        if item.error:
            skipped["not JSON"] += 1
            continue
        fmt = fmt or detect(value)
        if fmt is None:
            skipped["unknown format"] += 1
            continue
        try:
            messages = prompt_messages(parse(fmt, _answered(fmt, value)))
        except (Bad, Unsupported) as err:
            skipped[f"{fmt}: {err}"] += 1
            continue
        if messages is None:
            skipped[f"{fmt}: not a text conversation"] += 1
        else:
            prompts.append(messages)
    return prompts, skipped


def _answered(fmt: str, record: Any) -> Any:
    """A prompt-only chat record (ending with a user turn) with a placeholder answer appended, so
    the training-data parsers, which want something to learn from, accept it."""
    key, role_key, content_key, assistant = {
        "messages": ("messages", "role", "content", "assistant"),
        "sharegpt": ("conversations", "from", "value", "gpt"),
    }.get(fmt, (None, "", "", ""))
    turns = record.get(key) if key and isinstance(record, dict) else None
    if isinstance(turns, list) and turns and isinstance(turns[-1], dict):
        role = turns[-1].get(role_key)
        if isinstance(role, str) and ROLE_ALIASES.get(role) == "user":
            return {**record, key: [*turns, {role_key: assistant, content_key: "-"}]}
    return record


def prompt_messages(parsed: object) -> Messages | None:
    """System prompt, then user/assistant turns, ending with the last user turn."""
    if isinstance(parsed, Conversation):
        system, users, assistants = parsed.system, parsed.users, parsed.assistants[: len(parsed.users) - 1]
    elif isinstance(parsed, Preference):
        system, users, assistants = parsed.system, parsed.users, parsed.assistants
    else:
        return None
    messages = [{"role": "system", "content": system}] if system else []
    for i, user in enumerate(users):
        messages.append({"role": "user", "content": user})
        if i < len(assistants) and i < len(users) - 1:
            messages.append({"role": "assistant", "content": assistants[i]})
    return messages


# ---------------------------------------------------------------------------------------------
# results


@dataclass
class Stats:
    """Mean and percentiles of one latency, in ms; None when nothing was measured."""

    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    n: int = 0

    @classmethod
    def of(cls, seconds: list[float] | np.ndarray) -> Stats:
        x = np.asarray(seconds, dtype=np.float64) * 1000
        if x.size == 0:
            return cls()
        p50, p90, p99 = np.percentile(x, [50, 90, 99])
        return cls(_r(x.mean()), _r(p50), _r(p90), _r(p99), int(x.size))


def _r(x: float) -> float:
    return round(float(x), 3)


@dataclass
class Level:
    """One level's outcome: a closed loop at `concurrency`, or an open loop at `rate` (or a trace)."""

    concurrency: int  # closed loop: requests in flight; open loop: the cap (0: none)
    requests: int  # planned
    mode: str = "concurrency"  # concurrency | rate | trace
    rate: float | None = None  # open loop: the target, requests / s
    burstiness: float | None = None
    completed: int = 0
    failed: int = 0
    cancelled: int = 0  # in flight when the level's time ran out or a stop condition fired
    not_sent: int = 0  # never sent because the level's time ran out or a stop condition fired
    excluded: int = 0  # sent in the warm-up or cool-down window: not in the figures
    truncated: bool = False
    stopped: str | None = None  # the stop condition that ended the level early
    duration_s: float = 0.0
    window_s: float = 0.0  # the measured window: duration minus warm-up and cool-down
    input_tokens: int = 0
    output_tokens: int = 0
    tokens_from_usage: bool = True  # False when some output was counted as chunks
    good: int = 0
    request_throughput: float = 0.0  # completed requests / s
    output_throughput: float = 0.0  # output tokens / s
    total_token_throughput: float = 0.0  # (input + output) tokens / s
    goodput: float = 0.0  # requests meeting the SLO / s
    achieved_rate: float | None = None  # open loop: requests written / s, first to last
    arrival_cv: float | None = None  # open loop: stdev / mean of the gaps between writes
    target_cv: float | None = None  # open loop: 1 / sqrt(burstiness)
    ttft_ms: Stats = field(default_factory=Stats)
    tpot_ms: Stats = field(default_factory=Stats)
    itl_ms: Stats = field(default_factory=Stats)
    e2e_ms: Stats = field(default_factory=Stats)
    send_lag_ms: Stats = field(default_factory=Stats)  # this client's lag: due -> written
    client_cpu: float = 0.0  # of one core, used by this process during the level
    errors: dict[str, int] = field(default_factory=dict)  # the first few distinct messages, counted
    replies: list[Reply | None] = field(default_factory=list, repr=False)  # per planned request; not in JSON
    due: list[float] = field(default_factory=list, repr=False)  # open loop: scheduled send times
    skipped: set[int] = field(default_factory=set, repr=False)  # in the warm-up / cool-down windows

    @property
    def label(self) -> str:
        if self.mode == "rate":
            b = "" if self.burstiness in (None, 1.0) else f" b={self.burstiness:g}"
            cap = f" c<={self.concurrency}" if self.concurrency else ""
            return f"{self.rate:.4g} req/s{b}{cap}"
        if self.mode == "trace":
            return f"trace x{self.rate:g}" if self.rate else "trace"
        return f"c={self.concurrency}"

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("replies", "due", "skipped")}
        out["label"] = self.label
        for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms", "send_lag_ms"):
            out[key] = dict(out[key].__dict__)
        for key in (
            "duration_s",
            "window_s",
            "client_cpu",
            "request_throughput",
            "output_throughput",
            "total_token_throughput",
            "goodput",
            "achieved_rate",
            "arrival_cv",
            "target_cv",
        ):
            out[key] = None if out[key] is None else _r(out[key])
        return out


def summarize(
    concurrency: int,
    planned: list[Planned],
    replies: list[Reply | None],
    duration: float,
    slo: SLO,
    *,
    due: list[float] | None = None,
    start: float | None = None,
    warmup_s: float = 0.0,
    cooldown_s: float = 0.0,
) -> Level:
    """The level's metrics from its replies (None: not sent); cancelled replies carry no status.

    With `due` (an open loop's scheduled send times), TTFT and E2E count from the scheduled time, so
    a saturated client or server shows as latency; the send lag is due -> written. Without it (a
    closed loop), from when the request was written (as GuideLLM and vLLM), the lag being from when
    a worker took the request to when it was written. Requests sent in the first `warmup_s` or the
    last `cooldown_s` seconds of the level (from `start`) are sent but left out of every figure,
    and the throughputs are per second of the window between."""
    level = Level(concurrency, len(planned), duration_s=duration, replies=replies, due=due or [])
    ok: list[tuple[Reply, float]] = []
    errors: Counter[str] = Counter()
    lags: list[float] = []
    begin = (start or 0.0) + warmup_s
    finish = (start or 0.0) + duration - cooldown_s
    windowed = start is not None and (warmup_s > 0 or cooldown_s > 0)
    for i, (plan, reply) in enumerate(zip(planned, replies, strict=True)):
        if reply is None:
            level.not_sent += 1
            continue
        if reply.error == CANCELLED:
            level.cancelled += 1
            continue
        origin = due[i] if due else reply.origin
        if windowed and not begin <= (due[i] if due else reply.start) <= finish:
            level.excluded += 1
            level.skipped.add(i)
            continue
        if reply.sent is not None:
            lags.append(reply.sent - (due[i] if due else reply.start))
        if not reply.ok:
            level.failed += 1
            message = reply.error or f"HTTP {reply.status}"
            if message in errors or len(errors) < ERRORS_KEPT:
                errors[message] += 1
        else:
            ok.append((reply, origin))
            level.input_tokens += (
                reply.prompt_tokens if reply.prompt_tokens is not None else plan.input_tokens
            )
            level.output_tokens += reply.output_tokens
            level.tokens_from_usage &= reply.completion_tokens is not None
            level.good += slo.met(reply, origin)
    level.completed = len(ok)
    level.errors = dict(errors.most_common())
    level.truncated = level.cancelled + level.not_sent > 0
    window = max(finish - begin, 0.0) if windowed else duration
    level.window_s = window
    if window > 0:
        level.request_throughput = level.completed / window
        level.output_throughput = level.output_tokens / window
        level.total_token_throughput = (level.input_tokens + level.output_tokens) / window
        level.goodput = level.good / window
    level.ttft_ms = Stats.of([r.first - o for r, o in ok if r.first is not None])
    level.tpot_ms = Stats.of([r.tpot for r, _ in ok if r.tpot is not None])
    gaps = [np.diff(r.chunk_times) for r, _ in ok if len(r.chunk_times) > 1]
    level.itl_ms = Stats.of(np.concatenate(gaps) if gaps else [])
    level.e2e_ms = Stats.of([r.end - o for r, o in ok])
    level.send_lag_ms = Stats.of(lags)
    if due:
        sent = [r.sent if r.sent is not None else r.start for r in replies if r is not None]
        arrivals = ArrivalStats.of(sent)
        level.achieved_rate, level.arrival_cv = arrivals.rate, arrivals.cv
    return level


@dataclass
class BenchResult:
    """A whole run: what was measured against what, and each level's outcome."""

    url: str
    model: str | None
    api: str
    workload: dict[str, Any]
    slo: SLO
    levels: list[Level] = field(default_factory=list)
    started: str = ""
    error: str | None = None  # set when nothing could be measured (no server answered)
    mode: str = "concurrency"  # concurrency | rate | trace | sweep | find-max-rate
    search: dict[str, Any] | None = None  # find-max-rate: the outcome and every probe

    @property
    def ok(self) -> bool:
        """Every level completed every request; a rate search: a rate was found (its probes above
        the server's capacity are meant to fail)."""
        if self.error is not None:
            return False
        if self.mode == "find-max-rate":
            return bool(self.search and self.search.get("max_rate") is not None)
        return all(lv.failed == 0 and not lv.truncated for lv in self.levels)

    def problems(self) -> list[str]:
        """One line per reason the run is not ok."""
        lines = [self.error] if self.error else []
        if self.mode == "find-max-rate":
            if self.error is None and not self.ok:
                lines.append(
                    "no rate met the SLO "
                    + (self.search or {}).get("reason", "")
                    + " (looser SLOs, or a lower --rate-min)"
                )
            return lines
        for lv in self.levels:
            if lv.failed:
                first = next(iter(lv.errors), "")
                lines.append(f"{lv.label}: {lv.failed}/{lv.requests} requests failed: {first}")
            if lv.stopped:
                lines.append(
                    f"{lv.label}: stopped ({lv.stopped}) after {lv.duration_s:.1f} s: "
                    f"{lv.cancelled} cancelled in flight, {lv.not_sent} not sent"
                )
            elif lv.truncated:
                lines.append(
                    f"{lv.label}: truncated at the time limit ({lv.duration_s:.1f} s): "
                    f"{lv.cancelled} cancelled in flight, {lv.not_sent} not sent"
                )
        return lines

    def to_dict(self) -> dict[str, Any]:
        slo = dataclasses.asdict(self.slo)
        return {
            "url": self.url,
            "model": self.model,
            "api": self.api,
            "started": self.started,
            "mode": self.mode,
            "ok": self.ok,
            "error": self.error,
            "workload": self.workload,
            "slo": slo | {"description": str(self.slo)},
            "levels": [lv.to_dict() for lv in self.levels],
            "search": self.search,
        }


# ---------------------------------------------------------------------------------------------
# running


@dataclass
class Options:
    """How a run is bounded and what it reports.

    The load is the closed-loop `levels` (concurrency), or open-loop `rates` (requests / s, gamma
    gaps of shape `burstiness`), or a `trace`; `rate_sweep` and `find_max_rate` (search.py) choose
    the rates themselves."""

    levels: list[int]
    num_prompts: int | None = None  # per level; None: closed max(4 * concurrency, 16), open rate * duration
    max_duration: float = 600.0  # per level, seconds
    timeout: float = 300.0  # per request, seconds
    warmup: int = 1
    slo: SLO = field(default_factory=SLO)
    api: str = CHAT
    progress: bool = True
    rates: list[float] | None = None  # open loop, requests / s
    burstiness: float = 1.0
    duration: float = 30.0  # open loop: requests per level = rate * duration (unless num_prompts)
    max_concurrency: int | None = None  # open loop: a cap on requests in flight (vLLM's)
    trace: list[TraceRow] | None = None
    trace_scale: float = 1.0
    rate_sweep: int | None = None  # levels of a sweep (GuideLLM's sweep_size)
    find_max_rate: bool = False
    slo_percentile: float = 99.0  # find-max-rate: this percentile must meet every SLO bound
    precision: float = 0.02  # find-max-rate: stop when (high - low) / low <= precision
    rate_min: float | None = None  # find-max-rate: the first rate tried (default: the synchronous rate)
    rate_max: float | None = None  # find-max-rate: the highest rate tried
    max_errors: int | None = None  # a level stops after more errors than this
    max_error_rate: float | None = None  # ... or a larger share of failed requests (after 20 ended)
    warmup_s: float = 0.0  # per level, requests sent in the first S seconds are not counted
    cooldown_s: float = 0.0  # ... nor those sent in the last S seconds
    tokenizer: Path | None = None  # its directory; None: the served model's, when found
    seed: int = 0

    @property
    def mode(self) -> str:
        if self.find_max_rate:
            return "find-max-rate"
        if self.rate_sweep:
            return "sweep"
        if self.trace is not None:
            return "trace"
        return "rate" if self.rates else "concurrency"


ERROR_RATE_AFTER = 20  # requests ended before --max-error-rate is judged


def requests_per_level(options: Options, concurrency: int) -> int:
    return options.num_prompts or max(4 * concurrency, 16)


def requests_at_rate(options: Options, rate: float) -> int:
    return options.num_prompts or max(math.ceil(rate * options.duration), 16)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Stop:
    """A level's stop conditions beside its time: more than `max_errors` failed requests, or a
    share of failures above `max_error_rate` once ERROR_RATE_AFTER requests have ended."""

    def __init__(self, options: Options):
        self.max_errors = options.max_errors
        self.max_rate = options.max_error_rate
        self.ended = 0
        self.failed = 0
        self.reason: str | None = None
        self.event = asyncio.Event()

    def record(self, reply: Reply) -> None:
        self.ended += 1
        self.failed += not reply.ok
        if self.reason is not None:
            return
        if self.max_errors is not None and self.failed > self.max_errors:
            self.reason = f"{self.failed} errors > --max-errors {self.max_errors}"
        elif (
            self.max_rate is not None
            and self.ended >= ERROR_RATE_AFTER
            and self.failed / self.ended > self.max_rate
        ):
            self.reason = (
                f"error rate {self.failed}/{self.ended} = {self.failed / self.ended:.0%} > "
                f"--max-error-rate {self.max_rate:g}"
            )
        if self.reason is not None:
            self.event.set()


class Runner:
    """One session against one endpoint: runs levels and returns their figures (what search.py
    drives)."""

    def __init__(self, client: Any, endpoint: Endpoint, workload: Workload, options: Options, say: Any):
        self.client = client
        self.endpoint = endpoint
        self.workload = workload
        self.options = options
        self.say = say
        self.seed = options.seed

    async def closed(self, concurrency: int, n: int | None = None) -> Level:
        planned = self.workload.requests(n or requests_per_level(self.options, concurrency))
        cpu = time.process_time()
        start = time.perf_counter()
        stop = Stop(self.options)
        replies, duration = await run_level(
            self.client, self.endpoint, planned, concurrency, self.options, stop=stop
        )
        level = summarize(
            concurrency,
            planned,
            replies,
            duration,
            self.options.slo,
            start=start,
            warmup_s=self.options.warmup_s,
            cooldown_s=self.options.cooldown_s,
        )
        level.stopped = stop.reason
        return self._finish(level, cpu, duration)

    async def open(self, rate: float, n: int | None = None) -> Level:
        """One level at `rate` requests / s (gamma gaps of shape `burstiness`, a seed per level)."""
        options = self.options
        planned = self.workload.requests(n or requests_at_rate(options, rate))
        self.seed += 1
        offsets = gamma_offsets(len(planned), rate, options.burstiness, seed=self.seed)
        level = await self._open(planned, offsets, f"{rate:.4g} req/s")
        level.mode, level.rate, level.burstiness = "rate", rate, options.burstiness
        level.target_cv = target_cv(options.burstiness)
        return level

    async def replay(self, rows: list[TraceRow], scale: float) -> Level:
        planned = self.workload.requests_with([(r.input_tokens, r.output_tokens) for r in rows])
        level = await self._open(planned, trace_offsets(rows, scale), "trace")
        level.mode, level.rate = "trace", scale
        return level

    async def _open(self, planned: list[Planned], offsets: np.ndarray, label: str) -> Level:
        cpu = time.process_time()
        stop = Stop(self.options)
        replies, due, start, duration = await run_open(
            self.client, self.endpoint, planned, offsets, self.options, stop=stop, label=label
        )
        level = summarize(
            self.options.max_concurrency or 0,
            planned,
            replies,
            duration,
            self.options.slo,
            due=due,
            start=start,
            warmup_s=self.options.warmup_s,
            cooldown_s=self.options.cooldown_s,
        )
        level.stopped = stop.reason
        return self._finish(level, cpu, duration)

    def _finish(self, level: Level, cpu: float, duration: float) -> Level:
        level.client_cpu = (time.process_time() - cpu) / duration if duration > 0 else 0.0
        if level.client_cpu > BUSY_CLIENT:
            self.say(
                f"bench: at {level.label} this client used {level.client_cpu:.0%} of a core: the "
                "figures may be the client's limit, not the server's (fewer levels, or a second "
                "bench process on another core)"
            )
        return level


async def run(
    endpoint: Endpoint, workload: Workload, options: Options, notice: Callable[[str], None] | None = None
) -> BenchResult:
    """Every level in turn against `endpoint` (and nothing else: no redirects are followed)."""
    say = notice or (lambda line: print(line, file=sys.stderr, flush=True))
    if not is_loopback(endpoint.host):
        say(f"bench: sending load to {endpoint.host} (not this machine)")
    result = BenchResult(
        endpoint.root,
        endpoint.model,
        options.api,
        workload.describe(),
        options.slo,
        started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        mode=options.mode,
    )
    connections = options.max_concurrency or (max(options.levels) if options.mode == "concurrency" else 4096)
    async with session(endpoint, connections, options.timeout) as client:
        status, body = await get_json(client, f"{endpoint.base}/models")
        if status == 0:
            result.error = f"nothing answers at {endpoint.root}: {body}; no request was sent"
            return result
        endpoint = await resolve_model(client, endpoint)
        result.model = endpoint.model
        if workload.prompts is None or options.tokenizer is not None:
            choose_tokenizer(workload, options, endpoint, body)
        runner = Runner(client, endpoint, workload, options, say)
        if options.warmup:
            warm = workload.requests(options.warmup)
            await run_level(client, endpoint, warm, min(options.levels or [1]), options, progress=False)
        if options.find_max_rate or options.rate_sweep:
            from ernie_ops.validate import search

            if options.find_max_rate:
                result.search = await search.find_max_rate(runner, result.levels, say)
            else:
                await search.sweep(runner, result.levels, say)
        elif options.trace is not None:
            result.levels.append(await runner.replay(options.trace, options.trace_scale))
        elif options.rates:
            for rate in options.rates:
                result.levels.append(await runner.open(rate))
        else:
            for concurrency in options.levels:
                result.levels.append(await runner.closed(concurrency))
    result.workload = workload.describe()
    return result


def choose_tokenizer(workload: Workload, options: Options, endpoint: Endpoint, models: Any) -> None:
    """The tokenizer lengths are counted in: --tokenizer, else the served model's when found."""
    from ernie_ops.validate import tokens

    if options.tokenizer is not None:
        workload.use_tokenizer(tokens.load(options.tokenizer), f"tokens of {options.tokenizer}")
        return
    port = urlsplit(endpoint.base).port
    found = tokens.find(tokens.candidates(endpoint.model, models, port, is_loopback(endpoint.host)))
    if found is None:
        workload.use_tokenizer(
            None, "words: the served model's tokenizer was not found (give --tokenizer DIR for tokens)"
        )
    else:
        workload.use_tokenizer(tokens.load(found), f"tokens of the served model's tokenizer ({found})")


async def run_level(
    client: Any,
    endpoint: Endpoint,
    planned: list[Planned],
    concurrency: int,
    options: Options,
    progress: bool | None = None,
    stop: Stop | None = None,
) -> tuple[list[Reply | None], float]:
    """Send `planned` with at most `concurrency` in flight: (reply per request, None when not sent;
    wall seconds). A fixed pool of workers shares one iterator of request indices: cheaper than a
    task and a semaphore per request, and closed-loop by construction."""
    replies: list[Reply | None] = [None] * len(planned)
    todo = iter(range(len(planned)))
    bar = (
        _progress_bar(len(planned), f"concurrency {concurrency}")
        if (options.progress if progress is None else progress)
        else None
    )
    in_flight: dict[int, float] = {}

    async def worker() -> None:
        for i in todo:
            if stop is not None and stop.reason is not None:
                return
            in_flight[i] = time.perf_counter()
            reply = replies[i] = await request(
                client, endpoint, planned[i].body, options.api, options.timeout
            )
            del in_flight[i]
            if stop is not None:
                stop.record(reply)
            if bar is not None:
                bar.update()
            # let the other replies that arrived with this one take their arrival times before this
            # worker spends ~0.1 ms building its next request (streams that end together would
            # otherwise have their ends measured late, one after another)
            await asyncio.sleep(0)

    start = time.perf_counter()
    workers = [asyncio.ensure_future(worker()) for _ in range(min(concurrency, len(planned)))]
    waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(asyncio.wait(workers))]
    if stop is not None:
        waits.append(asyncio.ensure_future(stop.event.wait()))
    try:
        await asyncio.wait(waits, timeout=options.max_duration, return_when=asyncio.FIRST_COMPLETED)
        pending = [task for task in workers if not task.done()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        duration = time.perf_counter() - start
        for task in workers:
            if not task.cancelled():
                task.result()  # a bug in a worker is not a measurement
    finally:
        for future in [*workers, *waits]:
            future.cancel()
        if bar is not None:
            bar.close()
    for i, sent in in_flight.items():
        replies[i] = Reply(error=CANCELLED, start=sent, end=start + duration)
    return replies, duration


async def run_open(
    client: Any,
    endpoint: Endpoint,
    planned: list[Planned],
    offsets: np.ndarray,
    options: Options,
    stop: Stop | None = None,
    label: str = "",
) -> tuple[list[Reply | None], list[float], float, float]:
    """Send request i at `start + offsets[i]` whatever the server does (open loop): (reply per
    request, None when not sent; the due times; start; wall seconds until the last reply).

    The dispatcher sleeps until a request is due (timer.py: a timerfd, precise to the microsecond
    where epoll's own timeouts are whole milliseconds) and starts its request as a task. A request
    late because this client was busy is sent at once, and its lateness is counted in its latency
    (from its due time) and in the send lag. With `max_concurrency`, a request waits for a free
    slot in the client (vLLM's --max-concurrency): that wait counts too."""
    n = len(planned)
    replies: list[Reply | None] = [None] * n
    due = [0.0] * n
    slots = asyncio.Semaphore(options.max_concurrency) if options.max_concurrency else None
    bar = _progress_bar(n, label) if options.progress else None
    tasks: set[asyncio.Task[None]] = set()
    in_flight: dict[int, float] = {}

    async def one(i: int) -> None:
        in_flight[i] = time.perf_counter()
        if slots is not None:
            async with slots:
                reply = await request(client, endpoint, planned[i].body, options.api, options.timeout)
        else:
            reply = await request(client, endpoint, planned[i].body, options.api, options.timeout)
        replies[i] = reply
        del in_flight[i]
        if stop is not None:
            stop.record(reply)
        if bar is not None:
            bar.update()

    waker = Waker()
    start = time.perf_counter() + 0.005
    deadline = start + options.max_duration
    try:
        for i, offset in enumerate(offsets):
            when = due[i] = start + float(offset)
            if when > deadline:
                break
            await waker.until(when)
            if stop is not None and stop.reason is not None:
                break
            task = asyncio.ensure_future(one(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(asyncio.wait(set(tasks)))]
            if stop is not None:
                waits.append(asyncio.ensure_future(stop.event.wait()))
            left = max(deadline - time.perf_counter(), 0.0)
            await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
        duration = time.perf_counter() - start
        pending = list(tasks)
        for task in pending:
            task.cancel()
        results = await asyncio.gather(*pending, return_exceptions=True)
        for outcome in results:
            if isinstance(outcome, Exception):
                raise outcome  # a bug in the dispatcher is not a measurement
    finally:
        waker.close()
        for task in list(tasks):
            task.cancel()
        if bar is not None:
            bar.close()
    for i, called in in_flight.items():
        replies[i] = Reply(error=CANCELLED, start=called, end=start + duration)
    return replies, due, start, duration


def _progress_bar(total: int, label: str) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=label,
        unit="req",
        file=sys.stderr,
        disable=None,  # off when stderr is not a terminal
        leave=False,
        mininterval=0.25,
    )


def bench(endpoint: Endpoint, workload: Workload, options: Options) -> BenchResult:
    """`run` from synchronous code, on uvloop when installed (eventloop.py: it keeps an open loop's
    arrivals closer to their schedule on a busy machine)."""
    return eventloop.run(run(endpoint, workload, options))


# ---------------------------------------------------------------------------------------------
# reporting


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def table_rows(result: BenchResult) -> list[list[str]]:
    open_loop = any(lv.mode != "concurrency" for lv in result.levels)
    head = ["load", "ok", "failed"]
    if open_loop:
        head += ["sent/s", "CV"]
    head += [
        "req/s",
        "out tok/s",
        "goodput/s",
        "TTFT p50",
        "TTFT p99",
        "TPOT p50",
        "TPOT p99",
        "ITL p50",
        "ITL p99",
        "E2E p50",
        "E2E p99",
        "lag p99",
        "wall s",
    ]
    rows = [head]
    for lv in result.levels:
        row = [
            f"{lv.label}{' (stopped)' if lv.stopped else ' (truncated)' if lv.truncated else ''}",
            str(lv.completed),
            str(lv.failed),
        ]
        if open_loop:
            row += [
                "-" if lv.achieved_rate is None else f"{lv.achieved_rate:.2f}",
                "-" if lv.arrival_cv is None else f"{lv.arrival_cv:.2f}",
            ]
        row += [
            f"{lv.request_throughput:.2f}",
            f"{lv.output_throughput:.1f}",
            f"{lv.goodput:.2f}",
            _ms(lv.ttft_ms.p50),
            _ms(lv.ttft_ms.p99),
            _ms(lv.tpot_ms.p50),
            _ms(lv.tpot_ms.p99),
            _ms(lv.itl_ms.p50),
            _ms(lv.itl_ms.p99),
            _ms(lv.e2e_ms.p50),
            _ms(lv.e2e_ms.p99),
            _ms(lv.send_lag_ms.p99),
            f"{lv.duration_s:.1f}",
        ]
        rows.append(row)
    return rows


def _header(result: BenchResult) -> list[str]:
    w = result.workload
    skipped = f", {w['skipped_records']} records skipped" if w.get("skipped_records") else ""
    unit = w.get("input_unit", "words")
    built = w.get("input_built") or {}
    made = (
        f" (built: mean {built['mean']:g}, {built['min']}..{built['max']})"
        if built.get("requests") and result.workload.get("prompts") is None
        else ""
    )
    lines = [
        f"endpoint {result.url} (model {result.model}, /v1/{result.api}, streaming)",
        f"workload {w['dataset']}{skipped}: input {w['input_len']} {unit}{made}, "
        f"output {w['output_len']} tokens (max_tokens){', ignore_eos' if w['ignore_eos'] else ''}, "
        f"seed {w['seed']}",
        f"prompt lengths: {w.get('tokenizer', 'words')}{_server_count(result)}",
        f"SLO: {result.slo}",
    ]
    if result.search is not None:
        lines.append(search_line(result.search))
    return lines


def _server_count(result: BenchResult) -> str:
    """What the server counted as prompt tokens, per completed request (its `usage`: the chat
    template's tokens included)."""
    done = sum(lv.completed for lv in result.levels)
    if not done or not all(lv.tokens_from_usage for lv in result.levels if lv.completed):
        return ""
    per = sum(lv.input_tokens for lv in result.levels) / done
    return f"; the server counted {per:.1f} prompt tokens per request (its chat template included)"


def search_line(search: dict[str, Any]) -> str:
    if search.get("max_rate") is None:
        return f"find-max-rate: no rate met the SLO ({search.get('reason', '')})"
    return (
        f"find-max-rate: {search['max_rate']:.3g} req/s is the highest rate whose p{search['percentile']:g} "
        f"met the SLO; {search['failed_rate']:.3g} req/s did not "
        f"(precision {search['precision']:.0%}: (high - low) / low = {search['gap']:.1%}; "
        f"{len(search['probes'])} probes)"
        if search.get("failed_rate") is not None
        else f"find-max-rate: every rate up to {search['max_rate']:.3g} req/s met the SLO "
        f"(the search's ceiling; raise --rate-max)"
    )


def text_report(result: BenchResult) -> str:
    """The table printed by `ernie-ops bench` (latencies in ms)."""
    lines = _header(result)
    if result.levels:
        rows = table_rows(result)
        lines += ["", format_table(rows, right=set(range(1, len(rows[0])))), "(latencies in ms)"]
        lines.append(_lag_note(result))
    return "\n".join(lines)


def _lag_note(result: BenchResult) -> str:
    """The generator's own queueing and CPU per level: large values mean the client, not the
    server, was busy."""
    lags = ", ".join(
        f"{lv.label} {_ms(lv.send_lag_ms.p50)}/{_ms(lv.send_lag_ms.p99)}" for lv in result.levels
    )
    cpu = ", ".join(f"{lv.label} {lv.client_cpu:.0%}" for lv in result.levels)
    closed = all(lv.mode == "concurrency" for lv in result.levels)
    where = (
        "latencies start when a request is written; before that it waited in this client"
        if closed
        else "closed-loop latencies start when a request is written, open-loop ones (rates, traces) "
        "when it was due, so a late send counts; the lag is from due (or taken) to written"
    )
    excluded = sum(lv.excluded for lv in result.levels)
    windows = f"; {excluded} requests in warm-up / cool-down windows left out" if excluded else ""
    return f"{where} (send lag p50/p99 ms: {lags}); this client's CPU, of one core: {cpu}{windows}"


DEFINITIONS = (
    "TTFT and E2E count from when a request was written (closed loop, as vLLM and GuideLLM) or from "
    "when it was due (open loop: a client or server falling behind shows as latency); TPOT = (last "
    "chunk - first chunk) / (output tokens - 1) per request = vLLM's TPOT = GuideLLM's ITL; ITL = "
    "every gap between output chunks, pooled (vLLM's ITL; a chunk may carry several tokens); "
    "goodput = requests meeting every SLO bound per second (vLLM's --goodput)."
)


def markdown(result: BenchResult, image: str | None = "bench.png") -> str:
    """A Markdown section for a deployment report: what was run, the table, the plot, the problems."""
    lines = ["## Load test", ""]
    lines += [f"- {line}" for line in _header(result)]
    if result.levels:
        from ernie_ops.validate.report import md_table

        rows = table_rows(result)
        lines += ["", md_table(rows, right=set(range(1, len(rows[0])))).rstrip("\n")]
        lines += ["", "Latencies in ms; throughput per second of wall time of each level. " + DEFINITIONS]
        note = _lag_note(result)
        lines += ["", note[:1].upper() + note[1:] + "."]  # not capitalize(): it lowercases "CPU"
    if image and result.levels:
        lines += ["", f"![latency against throughput]({image})"]
    problems = result.problems()
    if result.mode == "find-max-rate":
        verdict = "a rate met the SLO." if result.ok else "no rate met the SLO."
    else:
        verdict = "every request completed." if result.ok else "failed."
    lines += ["", "**Result:** " + verdict]
    lines += [f"- {p}" for p in problems]
    return "\n".join(lines) + "\n"


def write(result: BenchResult, out: Path) -> Path | None:
    """bench.json, bench.png (when anything completed), bench.md and a self-contained bench.html
    in `out`; returns the plot's path."""
    from ernie_ops.validate.report import write_report

    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "bench.json", json.dumps(result.to_dict(), indent=2) + "\n")
    image = plot(result, out / "bench.png")
    write_report(out, "bench", markdown(result, image.name if image else None), f"load test {result.url}")
    return image


def plot(result: BenchResult, out: Path) -> Path | None:
    """bench.png: latency percentiles against output throughput per level (annotated with the
    concurrency), and the end-to-end latency distribution per level. None when nothing completed."""
    levels = [lv for lv in result.levels if lv.completed]
    if not levels:
        return None
    import logging

    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    x = [lv.output_throughput for lv in levels]
    series = (
        ("TTFT p50", [lv.ttft_ms.p50 for lv in levels], "o-", "#3b6fb6"),
        ("TTFT p99", [lv.ttft_ms.p99 for lv in levels], "o--", "#7fa5dc"),
        ("TPOT p50", [lv.tpot_ms.p50 for lv in levels], "s-", "#c0392b"),
    )
    for label, y, style, color in series:
        points = [(a, b) for a, b in zip(x, y, strict=True) if b is not None]
        if points:
            left.plot(*zip(*points, strict=True), style, color=color, label=label)
    for lv, xi in zip(levels, x, strict=True):
        if lv.ttft_ms.p50 is not None:
            left.annotate(lv.label, (xi, lv.ttft_ms.p50), textcoords="offset points", xytext=(4, 6))
    left.set_xlabel("output tokens / s")
    left.set_ylabel("ms")
    left.set_title("latency against throughput")
    if any(lv.ttft_ms.p99 for lv in levels) and max(lv.ttft_ms.p99 or 0 for lv in levels) > 50 * min(
        lv.tpot_ms.p50 or lv.ttft_ms.p50 or 1 for lv in levels
    ):
        left.set_yscale("log")
    left.grid(alpha=0.3)
    left.legend()
    e2e = [
        [
            (r.end - (lv.due[i] if lv.due else r.origin)) * 1000
            for i, r in enumerate(lv.replies)
            if r is not None and r.ok
        ]
        for lv in levels
    ]
    right.boxplot(e2e, showfliers=True)
    right.set_xticks(range(1, len(levels) + 1), [lv.label for lv in levels], rotation=20)
    right.set_xlabel("load")
    right.set_ylabel("end-to-end latency (ms)")
    right.set_title("end-to-end latency per level")
    right.grid(alpha=0.3, axis="y")
    fig.suptitle(f"{result.model} at {result.url}", fontsize=10)
    fig.tight_layout()
    with atomic_output(out) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return out
