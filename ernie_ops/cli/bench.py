from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ernie_ops.argtypes import positive_float, positive_int
from ernie_ops.cli.base import Subcommand, add_endpoint_arguments, endpoint_from
from ernie_ops.errors import UserError

if TYPE_CHECKING:
    from ernie_ops.validate.loadgen import Options

METRICS = """\
metrics (per level; latencies in ms: mean, p50, p90, p99), beside vLLM `bench serve` and GuideLLM:
  TTFT   first output chunk - request start. Start: closed loop, when the request is written (as
         vLLM and GuideLLM); open loop (--request-rate, sweeps, traces), when it was DUE, so a
         client or server that falls behind shows as latency, not as a lower rate. vLLM: from the
         write, in both loops; GuideLLM: from the request's start, its scheduler delay apart.
  TPOT   (last chunk - first chunk) / (output tokens - 1), per request. = vLLM's TPOT (which
         averages the same per request) = GuideLLM's "ITL". GuideLLM's "TPOT" is
         (last - start) / output tokens, which includes the TTFT.
  ITL    every gap between output chunks, pooled over requests (vLLM's ITL). A chunk may carry
         several tokens (server-side batching of the stream), so ITL >= TPOT is normal.
  E2E    last byte - request start (start as for TTFT); vLLM's E2EL, GuideLLM's request latency.
  req/s  completed requests / the level's wall time (first send to last reply), as vLLM's request
         throughput; out tok/s and total tok/s likewise (tokens from the server's `usage`).
  goodput/s  requests meeting every --slo-* bound / wall time (vLLM's --goodput, DistServe's
         definition); without SLOs, the successful requests.
  sent/s, CV  open loop: requests written per second (first to last) and the coefficient of
         variation of the gaps between writes: 1 for Poisson, 1/sqrt(burstiness) for gamma.
  lag    this client's own lag: due (open loop) or taken by a worker (closed) -> written.
Poisson / gamma arrivals: the gaps between requests are gamma(shape=burstiness,
scale=1/(rate*burstiness)), then scaled so a level of N requests spans exactly (N-1)/rate, both
as vLLM does (no sampling noise in the achieved rate; the CV keeps its own). Prompt lengths are tokens
of the served model's tokenizer (--tokenizer DIR, else found from the server), else words (the
report says which)."""


class Bench(Subcommand):
    name = "bench"
    help = "load-test an OpenAI-compatible endpoint: TTFT, TPOT, ITL, latency, throughput, goodput"
    description = (
        "Load-test a running OpenAI-compatible server (FastDeploy, vLLM, `ernie-ops serve`) with streamed "
        "chat requests. Closed loop by default (--concurrency: each level keeps C requests in flight); "
        "open loop with --request-rate (Poisson, or gamma with --burstiness: requests are sent when "
        "due whatever the server does), --rate-sweep (one at a time, then all at once, then rates "
        "between, as GuideLLM's sweep), --find-max-rate (the highest rate whose p99 meets the "
        "--slo-* bounds, by bisection to --precision) or --trace (replay a JSONL of timestamps and "
        "lengths). Reports TTFT, TPOT, ITL and end-to-end latency (mean, p50, p90, p99), request and "
        "token throughput, goodput under the SLO given, and this client's own lag; writes "
        "bench.json, bench.png, bench.md and bench.html to --out. "
        "Requests go to URL only; each is bounded by --timeout and each level by --max-duration, "
        "--max-errors and --max-error-rate. "
        "Exit status: 0 every request of every level completed (find-max-rate: a rate was found), "
        "1 a request failed or a level was cut short, 2 a usage error."
    )
    examples = (
        "ernie-ops bench http://127.0.0.1:8180 --concurrency 1,8,32",
        "ernie-ops bench 127.0.0.1:8180 --input-len 128:512 --output-len 256 --ignore-eos --num-prompts 200",
        "ernie-ops bench 127.0.0.1:8180 --request-rate 2,4,8 --duration 60 --tokenizer runs/sft/checkpoint",
        "ernie-ops bench 127.0.0.1:8180 --request-rate 10 --burstiness 0.5 --max-concurrency 64",
        "ernie-ops bench 127.0.0.1:8180 --input-len mean=512,stdev=128,min=64,max=2048 --request-rate 4",
        "ernie-ops bench 127.0.0.1:8180 --rate-sweep 8 --duration 30",
        "ernie-ops bench 127.0.0.1:8180 --find-max-rate --slo-ttft-ms 500 --slo-tpot-ms 50 --duration 20",
        "ernie-ops bench 127.0.0.1:8180 --trace traffic.jsonl --trace-scale 0.5 --warmup-window 10",
        "ernie-ops bench http://127.0.0.1:8180 --dataset eval.jsonl --slo-ttft-ms 500 --max-error-rate 0.05",
        "ernie-ops bench https://llm.internal/v1 --api-key-env LLM_KEY --model ernie-4.5-21b --json",
    )

    def epilog(self) -> str:
        return super().epilog() + "\n\n" + METRICS

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_endpoint_arguments(parser)
        parser.add_argument(
            "--dataset",
            default="synthetic",
            metavar="FILE|synthetic",
            help="prompts: synthetic random words (default), or a JSONL/JSON file in any format "
            "`ernie-ops data lint` reads (each record's prompt: system + turns up to the last user turn)",
        )
        load = parser.add_argument_group("load (one of; default: --concurrency 1,8,32)")
        load.add_argument(
            "--concurrency",
            metavar="C[,C...]",
            help="closed loop: comma-separated levels, run in turn (default 1,8,32)",
        )
        load.add_argument(
            "--request-rate",
            metavar="R[,R...]",
            help="open loop: requests per second, Poisson arrivals (gamma with --burstiness); several "
            "rates run in turn",
        )
        load.add_argument(
            "--rate-sweep",
            type=int,
            nargs="?",
            const=10,
            metavar="K",
            help="K levels (default 10): one at a time, as many at once as --max-concurrency (256), then "
            "K-2 rates evenly between the two (GuideLLM's sweep)",
        )
        load.add_argument(
            "--find-max-rate",
            action="store_true",
            help="the highest rate whose --slo-percentile meets every --slo-* bound (bisection)",
        )
        load.add_argument(
            "--trace",
            type=Path,
            metavar="FILE",
            help="replay a JSONL trace: timestamp (s) or timestamp_ms, input_length, output_length per line "
            "(--num-prompts N: its first N)",
        )
        opened = parser.add_argument_group("open loop")
        opened.add_argument(
            "--burstiness",
            type=positive_float,
            metavar="B",
            help="gamma shape of the gaps between requests (vLLM's): 1 Poisson (default), <1 burstier, "
            ">1 more regular; CV = 1/sqrt(B)",
        )
        opened.add_argument(
            "--max-concurrency",
            type=positive_int,
            metavar="N",
            help="cap on requests in flight (vLLM's); a request waiting for a slot is late, and its "
            "wait counts in its latency",
        )
        opened.add_argument(
            "--duration",
            type=positive_float,
            metavar="S",
            help="requests per rate level = rate x S (default 30 s; --num-prompts instead gives a count)",
        )
        opened.add_argument(
            "--trace-scale",
            type=positive_float,
            metavar="X",
            help="multiply the trace's times by X (2 = half as fast, 0.5 = twice as fast; default 1)",
        )
        found = parser.add_argument_group("find-max-rate")
        found.add_argument(
            "--slo-percentile",
            type=positive_float,
            metavar="P",
            help="the percentile that must meet the SLO (default 99)",
        )
        found.add_argument(
            "--precision",
            type=positive_float,
            metavar="F",
            help="stop when (lowest missed - highest met) / highest met <= F (default 0.02)",
        )
        found.add_argument(
            "--rate-min",
            type=positive_float,
            metavar="R",
            help="first rate tried (default: the synchronous rate)",
        )
        found.add_argument("--rate-max", type=positive_float, metavar="R", help="highest rate tried")
        parser.add_argument(
            "--num-prompts",
            type=int,
            metavar="N",
            help="requests per level (default: closed loop max(4 x concurrency, 16); open loop rate x"
            " --duration)",
        )
        parser.add_argument(
            "--input-len",
            metavar="N|A:B|mean=M,stdev=S[,min=A,max=B]",
            help="synthetic prompt length in tokens of the served model's tokenizer (words without one): "
            "fixed, uniform in [A, B], or normal clipped to [min, max] (default 256)",
        )
        parser.add_argument(
            "--output-len",
            metavar="N|A:B|mean=M,stdev=S[,min=A,max=B]",
            help="max_tokens per request, same forms (default 128)",
        )
        parser.add_argument(
            "--tokenizer",
            type=Path,
            metavar="DIR",
            help="checkpoint directory whose tokenizer counts prompt tokens (default: the served model's, "
            "when found: --model as a path, /v1/models, or the `ernie-ops serve` record)",
        )
        parser.add_argument(
            "--ignore-eos", action="store_true", help="ask for exactly max_tokens (vLLM/FastDeploy extension)"
        )
        parser.add_argument("--temperature", type=float, default=0.0, help="default 0 (greedy)")
        stops = parser.add_argument_group("stop conditions and windows (per level)")
        stops.add_argument(
            "--max-duration",
            type=positive_float,
            default=600.0,
            metavar="S",
            help="wall-clock limit per level (default 600 s)",
        )
        stops.add_argument(
            "--timeout", type=positive_float, default=300.0, metavar="S", help="per request (default 300 s)"
        )
        stops.add_argument(
            "--max-errors", type=int, metavar="N", help="stop a level after more than N failed requests"
        )
        stops.add_argument(
            "--max-error-rate",
            type=float,
            metavar="F",
            help="stop a level when more than this share of its ended requests failed (judged after 20)",
        )
        stops.add_argument(
            "--warmup",
            type=int,
            default=1,
            metavar="N",
            help="uncounted requests before the first level (default 1)",
        )
        stops.add_argument(
            "--warmup-window",
            type=float,
            default=0.0,
            metavar="S",
            help="requests sent in a level's first S seconds are sent but left out of its figures",
        )
        stops.add_argument(
            "--cooldown-window",
            type=float,
            default=0.0,
            metavar="S",
            help="... and those sent in its last S seconds (throughputs: per second of the window between)",
        )
        slo = parser.add_argument_group("SLO (goodput; find-max-rate)")
        slo.add_argument("--slo-ttft-ms", type=positive_float, metavar="X", help="TTFT <= X ms")
        slo.add_argument("--slo-tpot-ms", type=positive_float, metavar="Y", help="TPOT <= Y ms")
        slo.add_argument("--slo-e2e-ms", type=positive_float, metavar="Z", help="latency <= Z ms")
        parser.add_argument("--seed", type=int, default=0, help="prompts, lengths and arrivals (default 0)")
        parser.add_argument("--out", type=Path, metavar="DIR", help="default runs/bench-<timestamp>/")
        parser.add_argument("--json", action="store_true", help="the result as JSON on stdout")

    def run(self, args: argparse.Namespace) -> int:
        from ernie_ops.validate import loadgen

        options = options_from(args)
        output_len = loadgen.Length.parse(args.output_len or "128", "--output-len")
        input_len = loadgen.Length.parse(args.input_len or "256", "--input-len")
        common = dict(seed=args.seed, ignore_eos=args.ignore_eos, temperature=args.temperature)
        if args.dataset == "synthetic":
            workload = loadgen.Workload.synthetic(input_len, output_len, **common)
        else:
            workload = loadgen.Workload.from_file(Path(args.dataset), output_len, **common)
        endpoint = endpoint_from(args)
        result = loadgen.bench(endpoint, workload, options)

        out: Path = args.out or Path("runs") / time.strftime("bench-%Y%m%d-%H%M%S")
        image = loadgen.write(result, out)
        if args.json:
            print(json.dumps(result.to_dict(), indent=2))
        else:
            print(loadgen.text_report(result))
            print(f"\nwrote {out}/bench.json, bench.md, bench.html{', bench.png' if image else ''}")
        for problem in result.problems():
            print(f"FAILED: {problem}", file=sys.stderr)
        return 0 if result.ok else 1


def _refuse(given: list[str], why: str, hint: str) -> None:
    if given:
        raise UserError(f"{' and '.join(given)}: {why}", hint=hint)


def options_from(args: argparse.Namespace) -> Options:
    """The run's Options from the command line; combinations that make no sense are refused."""
    from ernie_ops.validate import arrivals, loadgen

    modes = [
        flag
        for flag, value in (
            ("--request-rate", args.request_rate),
            ("--rate-sweep", args.rate_sweep),
            ("--find-max-rate", args.find_max_rate),
            ("--trace", args.trace),
        )
        if value
    ]
    if len(modes) > 1:
        raise UserError(
            f"{' and '.join(modes)} are different loads: give one",
            hint="--request-rate fixed rates; --rate-sweep chooses rates; --find-max-rate searches; "
            "--trace replays",
        )
    mode = modes[0] if modes else None
    if args.concurrency is not None and mode is not None:
        raise UserError(
            f"--concurrency (closed-loop levels) does not go with {mode} (an open loop)",
            hint="to cap the requests in flight of an open loop, use --max-concurrency N",
        )
    opened = mode in ("--request-rate", "--rate-sweep", "--find-max-rate")
    _refuse(
        [
            f
            for f, v in (("--burstiness", args.burstiness), ("--duration", args.duration))
            if v and not opened
        ],
        "only for generated arrivals (--request-rate, --rate-sweep, --find-max-rate)",
        "a trace brings its own times (--trace-scale stretches them); a closed loop has none",
    )
    _refuse(
        ["--max-concurrency"] if args.max_concurrency and mode is None else [],
        "caps an open loop; a closed loop's level is its concurrency",
        "use --concurrency N for N requests in flight",
    )
    _refuse(
        ["--trace-scale"] if args.trace_scale and mode != "--trace" else [],
        "only with --trace",
        "e.g. --trace traffic.jsonl --trace-scale 0.5",
    )
    searching = [
        f
        for f, v in (
            ("--slo-percentile", args.slo_percentile),
            ("--precision", args.precision),
            ("--rate-min", args.rate_min),
            ("--rate-max", args.rate_max),
        )
        if v
    ]
    _refuse(
        searching if mode != "--find-max-rate" else [],
        "only with --find-max-rate",
        "e.g. --find-max-rate --slo-e2e-ms 2000 --precision 0.05",
    )
    if args.duration and args.num_prompts:
        raise UserError(
            "--duration and --num-prompts both set the size of a rate level: give one",
            hint="--duration 30 sends rate x 30 requests per level; --num-prompts N sends N",
        )
    if args.trace is not None:
        given = [f for f, v in (("--input-len", args.input_len), ("--output-len", args.output_len)) if v]
        if args.dataset != "synthetic":
            given.append("--dataset")
        _refuse(given, "a trace gives every request's lengths", "leave them out with --trace")
    if args.num_prompts is not None and args.num_prompts < 1:
        raise UserError(f"--num-prompts {args.num_prompts}: need at least 1")
    if args.warmup < 0:
        raise UserError(f"--warmup {args.warmup}: cannot be negative")
    if args.max_errors is not None and args.max_errors < 0:
        raise UserError(f"--max-errors {args.max_errors}: cannot be negative")
    if args.max_error_rate is not None and not 0 <= args.max_error_rate < 1:
        raise UserError(
            f"--max-error-rate {args.max_error_rate:g}: a share of requests, 0 <= F < 1",
            hint="e.g. 0.05 for 5%",
        )
    for flag, value in (("--warmup-window", args.warmup_window), ("--cooldown-window", args.cooldown_window)):
        if value < 0:
            raise UserError(f"{flag} {value:g}: cannot be negative")
    if args.slo_percentile is not None and not 0 < args.slo_percentile <= 100:
        raise UserError(f"--slo-percentile {args.slo_percentile:g}: need 0 < P <= 100")
    if args.precision is not None and args.precision >= 1:
        raise UserError(f"--precision {args.precision:g}: a relative gap, e.g. 0.02 for 2%")
    if args.rate_min and args.rate_max and args.rate_min > args.rate_max:
        raise UserError(f"--rate-min {args.rate_min:g} > --rate-max {args.rate_max:g}")
    if args.rate_sweep is not None and args.rate_sweep < 3:
        raise UserError(
            f"--rate-sweep {args.rate_sweep}: need at least 3 levels (synchronous, throughput, one rate)"
        )
    slo = loadgen.SLO(args.slo_ttft_ms, args.slo_tpot_ms, args.slo_e2e_ms)
    if args.find_max_rate and not slo.given:
        raise UserError(
            "--find-max-rate needs an SLO to meet",
            hint="give --slo-ttft-ms, --slo-tpot-ms and/or --slo-e2e-ms (e.g. --slo-ttft-ms 500)",
        )
    rates = _rates(args.request_rate) if args.request_rate else None
    trace = arrivals.load_trace(args.trace) if args.trace is not None else None
    if trace is not None and args.num_prompts:
        trace = trace[: args.num_prompts]  # the trace's first N requests (GuideLLM's data_samples)
    if args.tokenizer is not None:
        from ernie_ops.validate import tokens

        tokens.load(args.tokenizer)  # a bad directory is a usage error before any request
    return loadgen.Options(
        loadgen.parse_levels(args.concurrency or "1,8,32"),
        args.num_prompts,
        args.max_duration,
        args.timeout,
        args.warmup,
        slo,
        progress=not args.json,
        rates=rates,
        burstiness=args.burstiness or 1.0,
        duration=args.duration or 30.0,
        max_concurrency=args.max_concurrency,
        trace=trace,
        trace_scale=args.trace_scale or 1.0,
        rate_sweep=args.rate_sweep,
        find_max_rate=args.find_max_rate,
        slo_percentile=args.slo_percentile or 99.0,
        precision=args.precision or 0.02,
        rate_min=args.rate_min,
        rate_max=args.rate_max,
        max_errors=args.max_errors,
        max_error_rate=args.max_error_rate,
        warmup_s=args.warmup_window,
        cooldown_s=args.cooldown_window,
        tokenizer=args.tokenizer,
        seed=args.seed,
    )


def _rates(text: str) -> list[float]:
    try:
        rates = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        rates = []
    if not rates or any(not 0 < r < float("inf") for r in rates):
        raise UserError(
            f"--request-rate {text!r}: expected positive finite requests per second",
            hint="e.g. --request-rate 4 or --request-rate 2,4,8; for everything at once use a closed "
            "loop (--concurrency N)",
        )
    return rates
