from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ernie_ops.argtypes import positive_float
from ernie_ops.cli.base import Subcommand, add_endpoint_arguments, endpoint_from
from ernie_ops.errors import UserError


class Bench(Subcommand):
    name = "bench"
    help = "load-test an OpenAI-compatible endpoint: TTFT, TPOT, ITL, latency, throughput, goodput"
    description = (
        "Load-test a running OpenAI-compatible server (FastDeploy, vLLM, `ernie-ops serve`) with streamed "
        "chat requests at each concurrency level in turn (closed loop: at most C requests in flight). "
        "Reports TTFT, TPOT, ITL and end-to-end latency (mean, p50, p90, p99), request and token "
        "throughput, and goodput under the SLO given; writes bench.json, bench.png, bench.md and "
        "bench.html to --out. "
        "Requests go to URL only; each is bounded by --timeout and each level by --max-duration. "
        "Exit status: 0 every request of every level completed, 1 a request failed or a level was "
        "cut short, 2 a usage error."
    )
    examples = (
        "ernie-ops bench http://127.0.0.1:8180 --concurrency 1,8,32",
        "ernie-ops bench 127.0.0.1:8180 --input-len 128:512 --output-len 256 --ignore-eos --num-prompts 200",
        "ernie-ops bench http://127.0.0.1:8180 --dataset eval.jsonl --slo-ttft-ms 500 --slo-tpot-ms 50",
        "ernie-ops bench https://llm.internal/v1 --api-key-env LLM_KEY --model ernie-4.5-21b --json",
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_endpoint_arguments(parser)
        parser.add_argument(
            "--dataset",
            default="synthetic",
            metavar="FILE|synthetic",
            help="prompts: synthetic random words (default), or a JSONL/JSON file in any format "
            "`ernie-ops data lint` reads (each record's prompt: system + turns up to the last user turn)",
        )
        parser.add_argument(
            "--concurrency", default="1,8,32", help="comma-separated levels, run in turn (default 1,8,32)"
        )
        parser.add_argument(
            "--num-prompts",
            type=int,
            metavar="N",
            help="requests per level (default max(4 x concurrency, 16))",
        )
        parser.add_argument(
            "--input-len", default="256", metavar="N|A:B", help="synthetic prompt tokens (default 256)"
        )
        parser.add_argument(
            "--output-len", default="128", metavar="N|A:B", help="max_tokens per request (default 128)"
        )
        parser.add_argument(
            "--ignore-eos", action="store_true", help="ask for exactly max_tokens (vLLM/FastDeploy extension)"
        )
        parser.add_argument("--temperature", type=float, default=0.0, help="default 0 (greedy)")
        parser.add_argument(
            "--max-duration",
            type=positive_float,
            default=600.0,
            metavar="S",
            help="per level (default 600 s)",
        )
        parser.add_argument(
            "--timeout", type=positive_float, default=300.0, metavar="S", help="per request (default 300 s)"
        )
        parser.add_argument(
            "--warmup", type=int, default=1, metavar="N", help="uncounted requests first (default 1)"
        )
        parser.add_argument("--slo-ttft-ms", type=positive_float, metavar="X", help="goodput: TTFT <= X ms")
        parser.add_argument("--slo-tpot-ms", type=positive_float, metavar="Y", help="goodput: TPOT <= Y ms")
        parser.add_argument("--slo-e2e-ms", type=positive_float, metavar="Z", help="goodput: latency <= Z ms")
        parser.add_argument("--seed", type=int, default=0, help="prompt and length sampling (default 0)")
        parser.add_argument("--out", type=Path, metavar="DIR", help="default runs/bench-<timestamp>/")
        parser.add_argument("--json", action="store_true", help="the result as JSON on stdout")

    def run(self, args: argparse.Namespace) -> int:
        from ernie_ops.validate import loadgen

        levels = loadgen.parse_levels(args.concurrency)
        output_len = loadgen.Length.parse(args.output_len, "--output-len")
        input_len = loadgen.Length.parse(args.input_len, "--input-len")
        if args.num_prompts is not None and args.num_prompts < 1:
            raise UserError(f"--num-prompts {args.num_prompts}: need at least 1")
        if args.warmup < 0:
            raise UserError(f"--warmup {args.warmup}: cannot be negative")
        options = dict(seed=args.seed, ignore_eos=args.ignore_eos, temperature=args.temperature)
        if args.dataset == "synthetic":
            workload = loadgen.Workload.synthetic(input_len, output_len, **options)
        else:
            workload = loadgen.Workload.from_file(Path(args.dataset), output_len, **options)
        endpoint = endpoint_from(args)
        slo = loadgen.SLO(args.slo_ttft_ms, args.slo_tpot_ms, args.slo_e2e_ms)
        run = loadgen.Options(
            levels,
            args.num_prompts,
            args.max_duration,
            args.timeout,
            args.warmup,
            slo,
            progress=not args.json,
        )
        result = loadgen.bench(endpoint, workload, run)

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
