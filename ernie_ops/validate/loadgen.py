"""The load generator behind `ernie-ops bench`: closed-loop concurrency levels against one
OpenAI-compatible endpoint, streaming, with serving metrics per level.

For each concurrency level, N requests are sent with at most `concurrency` in flight (a fixed pool of
workers, each sending its next request when the previous one ends), each request bounded by a timeout
and the level by a wall-clock budget (when it runs out, nothing more is sent, requests in flight are
cancelled and the level is marked truncated). Every request goes through `client.request()`, the one
SSE parser of the codebase, so smoke, eval and bench measure TTFT the same way.

Metrics per level: TTFT (request sent to first output chunk), TPOT (per output token after the
first), ITL (gaps between output chunks), end-to-end latency, each as mean/p50/p90/p99 in ms;
request and token throughput; goodput (requests per second meeting every SLO given). Output tokens
come from the server's `usage` when it sends it, else one per output chunk.

The generator's own ceiling against a null server is measured by `scripts/bench_loadgen.py`; it is
far above what a real model server streams on this hardware, so the figures describe the server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ernie_ops.data.formats import ROLE_ALIASES, Bad, Conversation, Preference, Unsupported, detect, parse
from ernie_ops.data.read import read_items
from ernie_ops.errors import UserError
from ernie_ops.files import atomic_output, write_text_atomic
from ernie_ops.text import format_table
from ernie_ops.validate.client import CHAT, Endpoint, Reply, get_json, request, resolve_model, session

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
    """A token count, fixed (`128`) or drawn uniformly per request from a range (`128:512`)."""

    low: int
    high: int

    @classmethod
    def parse(cls, text: str | int, what: str = "--input-len") -> Length:
        value = str(text).strip()
        low, sep, high = value.partition(":")
        try:
            a, b = int(low), int(high if sep else low)
        except ValueError:
            raise UserError(
                f"{what} {value!r} is not a number or a range", hint=f"e.g. {what} 256 or {what} 128:512"
            ) from None
        if a < 1 or b < a:
            raise UserError(
                f"{what} {value!r}: need 1 <= low <= high", hint=f"e.g. {what} 128:512 (low first)"
            )
        return cls(a, b)

    def sample(self, rng: random.Random) -> int:
        return self.low if self.low == self.high else rng.randint(self.low, self.high)

    def __str__(self) -> str:
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

    def met(self, reply: Reply) -> bool:
        if not reply.ok:
            return False
        ttft, tpot = reply.ttft, reply.tpot
        if self.ttft_ms is not None and (ttft is None or ttft * 1000 > self.ttft_ms):
            return False
        # one output token has no TPOT: nothing to miss
        if self.tpot_ms is not None and tpot is not None and tpot * 1000 > self.tpot_ms:
            return False
        return self.e2e_ms is None or reply.latency * 1000 <= self.e2e_ms

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

    def requests(self, n: int) -> list[Planned]:
        return [self._next() for _ in range(n)]

    def _next(self) -> Planned:
        if self.prompts is None:
            k = self.input_len.sample(self.rng)
            messages = [{"role": "user", "content": " ".join(self.rng.choices(WORDS, k=k))}]
        else:
            messages = self.prompts[self.cursor % len(self.prompts)]
            self.cursor += 1
            k = _words(messages)
        body: dict[str, Any] = {
            "messages": messages,
            "max_tokens": self.output_len.sample(self.rng),
            "temperature": self.temperature,
            "stream": True,
        }
        if self.ignore_eos:
            body["ignore_eos"] = True
        return Planned(body, k)

    def describe(self) -> dict[str, Any]:
        return {
            "dataset": self.source,
            "prompts": None if self.prompts is None else len(self.prompts),
            "skipped_records": sum(self.skipped.values()),
            "skipped_reasons": dict(self.skipped.most_common(ERRORS_KEPT)),
            "input_len": str(self.input_len),
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
    """One concurrency level's outcome."""

    concurrency: int
    requests: int  # planned
    completed: int = 0
    failed: int = 0
    cancelled: int = 0  # in flight when the level's time ran out
    not_sent: int = 0  # never sent because the level's time ran out
    truncated: bool = False
    duration_s: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    tokens_from_usage: bool = True  # False when some output was counted as chunks
    good: int = 0
    request_throughput: float = 0.0  # completed requests / s
    output_throughput: float = 0.0  # output tokens / s
    total_token_throughput: float = 0.0  # (input + output) tokens / s
    goodput: float = 0.0  # requests meeting the SLO / s
    ttft_ms: Stats = field(default_factory=Stats)
    tpot_ms: Stats = field(default_factory=Stats)
    itl_ms: Stats = field(default_factory=Stats)
    e2e_ms: Stats = field(default_factory=Stats)
    send_lag_ms: Stats = field(default_factory=Stats)  # this client's queueing, not in the latencies
    client_cpu: float = 0.0  # of one core, used by this process during the level
    errors: dict[str, int] = field(default_factory=dict)  # the first few distinct messages, counted
    replies: list[Reply | None] = field(default_factory=list, repr=False)  # per planned request; not in JSON

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "replies"}
        for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms", "send_lag_ms"):
            out[key] = dict(out[key].__dict__)
        for key in (
            "duration_s",
            "client_cpu",
            "request_throughput",
            "output_throughput",
            "total_token_throughput",
            "goodput",
        ):
            out[key] = _r(out[key])
        return out


def summarize(
    concurrency: int, planned: list[Planned], replies: list[Reply | None], duration: float, slo: SLO
) -> Level:
    """The level's metrics from its replies (None: not sent); cancelled replies carry no status."""
    level = Level(concurrency, len(planned), duration_s=duration, replies=replies)
    ok: list[Reply] = []
    errors: Counter[str] = Counter()
    for plan, reply in zip(planned, replies, strict=True):
        if reply is None:
            level.not_sent += 1
        elif reply.error == CANCELLED:
            level.cancelled += 1
        elif not reply.ok:
            level.failed += 1
            message = reply.error or f"HTTP {reply.status}"
            if message in errors or len(errors) < ERRORS_KEPT:
                errors[message] += 1
        else:
            ok.append(reply)
            level.input_tokens += (
                reply.prompt_tokens if reply.prompt_tokens is not None else plan.input_tokens
            )
            level.output_tokens += reply.output_tokens
            level.tokens_from_usage &= reply.completion_tokens is not None
            level.good += slo.met(reply)
    level.completed = len(ok)
    level.errors = dict(errors.most_common())
    level.truncated = level.cancelled + level.not_sent > 0
    if duration > 0:
        level.request_throughput = level.completed / duration
        level.output_throughput = level.output_tokens / duration
        level.total_token_throughput = (level.input_tokens + level.output_tokens) / duration
        level.goodput = level.good / duration
    level.ttft_ms = Stats.of([r.ttft for r in ok if r.ttft is not None])
    level.tpot_ms = Stats.of([r.tpot for r in ok if r.tpot is not None])
    gaps = [np.diff(r.chunk_times) for r in ok if len(r.chunk_times) > 1]
    level.itl_ms = Stats.of(np.concatenate(gaps) if gaps else [])
    level.e2e_ms = Stats.of([r.latency for r in ok])
    level.send_lag_ms = Stats.of([r.send_lag for r in ok if r.send_lag is not None])
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

    @property
    def ok(self) -> bool:
        """Every level completed every request."""
        return self.error is None and all(lv.failed == 0 and not lv.truncated for lv in self.levels)

    def problems(self) -> list[str]:
        """One line per reason the run is not ok."""
        lines = [self.error] if self.error else []
        for lv in self.levels:
            if lv.failed:
                first = next(iter(lv.errors), "")
                lines.append(
                    f"concurrency {lv.concurrency}: {lv.failed}/{lv.requests} requests failed: {first}"
                )
            if lv.truncated:
                lines.append(
                    f"concurrency {lv.concurrency}: truncated at the time limit ({lv.duration_s:.1f} s): "
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
            "ok": self.ok,
            "error": self.error,
            "workload": self.workload,
            "slo": slo | {"description": str(self.slo)},
            "levels": [lv.to_dict() for lv in self.levels],
        }


# ---------------------------------------------------------------------------------------------
# running


@dataclass
class Options:
    """How a run is bounded and what it reports."""

    levels: list[int]
    num_prompts: int | None = None  # per level; None: max(4 * concurrency, 16)
    max_duration: float = 600.0  # per level, seconds
    timeout: float = 300.0  # per request, seconds
    warmup: int = 1
    slo: SLO = field(default_factory=SLO)
    api: str = CHAT
    progress: bool = True


def requests_per_level(options: Options, concurrency: int) -> int:
    return options.num_prompts or max(4 * concurrency, 16)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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
    )
    async with session(endpoint, max(options.levels), options.timeout) as client:
        status, body = await get_json(client, f"{endpoint.base}/models")
        if status == 0:
            result.error = f"nothing answers at {endpoint.root}: {body}; no request was sent"
            return result
        endpoint = await resolve_model(client, endpoint)
        result.model = endpoint.model
        if options.warmup:
            warm = workload.requests(options.warmup)
            await run_level(client, endpoint, warm, min(options.levels), options, progress=False)
        for concurrency in options.levels:
            planned = workload.requests(requests_per_level(options, concurrency))
            cpu = time.process_time()
            replies, duration = await run_level(client, endpoint, planned, concurrency, options)
            level = summarize(concurrency, planned, replies, duration, options.slo)
            level.client_cpu = (time.process_time() - cpu) / duration if duration > 0 else 0.0
            result.levels.append(level)
            if level.client_cpu > BUSY_CLIENT:
                say(
                    f"bench: at concurrency {concurrency} this client used {level.client_cpu:.0%} of a "
                    "core: the figures may be the client's limit, not the server's (fewer levels, "
                    "or a second bench process on another core)"
                )
    return result


async def run_level(
    client: Any,
    endpoint: Endpoint,
    planned: list[Planned],
    concurrency: int,
    options: Options,
    progress: bool | None = None,
) -> tuple[list[Reply | None], float]:
    """Send `planned` with at most `concurrency` in flight: (reply per request, None when not sent;
    wall seconds). A fixed pool of workers shares one iterator of request indices: cheaper than a
    task and a semaphore per request, and closed-loop by construction."""
    replies: list[Reply | None] = [None] * len(planned)
    todo = iter(range(len(planned)))
    bar = (
        _progress_bar(len(planned), concurrency)
        if (options.progress if progress is None else progress)
        else None
    )
    in_flight: dict[int, float] = {}

    async def worker() -> None:
        for i in todo:
            in_flight[i] = time.perf_counter()
            replies[i] = await request(client, endpoint, planned[i].body, options.api, options.timeout)
            del in_flight[i]
            if bar is not None:
                bar.update()
            # let the other replies that arrived with this one take their arrival times before this
            # worker spends ~0.1 ms building its next request (streams that end together would
            # otherwise have their ends measured late, one after another)
            await asyncio.sleep(0)

    start = time.perf_counter()
    workers = [asyncio.ensure_future(worker()) for _ in range(min(concurrency, len(planned)))]
    try:
        done, pending = await asyncio.wait(workers, timeout=options.max_duration)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        duration = time.perf_counter() - start
        for task in done:
            task.result()  # a bug in a worker is not a measurement
    finally:
        for task in workers:
            task.cancel()
        if bar is not None:
            bar.close()
    for i, sent in in_flight.items():
        replies[i] = Reply(error=CANCELLED, start=sent, end=start + duration)
    return replies, duration


def _progress_bar(total: int, concurrency: int) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=f"concurrency {concurrency}",
        unit="req",
        file=sys.stderr,
        disable=None,  # off when stderr is not a terminal
        leave=False,
        mininterval=0.25,
    )


def bench(endpoint: Endpoint, workload: Workload, options: Options) -> BenchResult:
    """`run` from synchronous code."""
    return asyncio.run(run(endpoint, workload, options))


# ---------------------------------------------------------------------------------------------
# reporting


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def table_rows(result: BenchResult) -> list[list[str]]:
    rows = [
        [
            "concurrency",
            "ok",
            "failed",
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
            "wall s",
        ]
    ]
    for lv in result.levels:
        rows.append(
            [
                f"{lv.concurrency}{' (truncated)' if lv.truncated else ''}",
                str(lv.completed),
                str(lv.failed),
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
                f"{lv.duration_s:.1f}",
            ]
        )
    return rows


def _header(result: BenchResult) -> list[str]:
    w = result.workload
    skipped = f", {w['skipped_records']} records skipped" if w.get("skipped_records") else ""
    return [
        f"endpoint {result.url} (model {result.model}, /v1/{result.api}, streaming)",
        f"workload {w['dataset']}{skipped}: input {w['input_len']} tokens, output {w['output_len']} tokens"
        f"{', ignore_eos' if w['ignore_eos'] else ''}, seed {w['seed']}",
        f"SLO: {result.slo}",
    ]


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
        f"c={lv.concurrency} {_ms(lv.send_lag_ms.p50)}/{_ms(lv.send_lag_ms.p99)}" for lv in result.levels
    )
    cpu = ", ".join(f"c={lv.concurrency} {lv.client_cpu:.0%}" for lv in result.levels)
    return (
        f"latencies start when a request is written; before that it waited in this client "
        f"(send lag p50/p99 ms: {lags}); this client's CPU, of one core: {cpu}"
    )


def markdown(result: BenchResult, image: str | None = "bench.png") -> str:
    """A Markdown section for a deployment report: what was run, the table, the plot, the problems."""
    lines = ["## Load test", ""]
    lines += [f"- {line}" for line in _header(result)]
    if result.levels:
        from ernie_ops.validate.report import md_table

        rows = table_rows(result)
        lines += ["", md_table(rows, right=set(range(1, len(rows[0])))).rstrip("\n")]
        lines += ["", "Latencies in ms; throughput per second of wall time of each level."]
        lines += ["", _lag_note(result).capitalize() + "."]
    if image and result.levels:
        lines += ["", f"![latency against throughput]({image})"]
    problems = result.problems()
    lines += ["", "**Result:** " + ("every request completed." if result.ok else "failed.")]
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
            left.annotate(
                f"c={lv.concurrency}", (xi, lv.ttft_ms.p50), textcoords="offset points", xytext=(4, 6)
            )
    left.set_xlabel("output tokens / s")
    left.set_ylabel("ms")
    left.set_title("latency against throughput")
    if any(lv.ttft_ms.p99 for lv in levels) and max(lv.ttft_ms.p99 or 0 for lv in levels) > 50 * min(
        lv.tpot_ms.p50 or lv.ttft_ms.p50 or 1 for lv in levels
    ):
        left.set_yscale("log")
    left.grid(alpha=0.3)
    left.legend()
    e2e = [[r.latency * 1000 for r in lv.replies if r is not None and r.ok] for lv in levels]
    right.boxplot(e2e, showfliers=True)
    right.set_xticks(range(1, len(levels) + 1), [str(lv.concurrency) for lv in levels])
    right.set_xlabel("concurrency")
    right.set_ylabel("end-to-end latency (ms)")
    right.set_title("end-to-end latency per level")
    right.grid(alpha=0.3, axis="y")
    fig.suptitle(f"{result.model} at {result.url}", fontsize=10)
    fig.tight_layout()
    with atomic_output(out) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return out
