from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from ernie_ops.argtypes import positive_float, positive_int
from ernie_ops.cli.base import Subcommand, add_endpoint_arguments, add_mask_argument, endpoint_from
from ernie_ops.errors import UserError

SHOWN_FAILURES = 5  # items below 1.0 printed on the console (the report lists more)


class Eval(Subcommand):
    name = "eval"
    help = "score an endpoint on a suite (chart QA, document fields, boxes, JSON, regex, choice)"
    description = (
        "Run a suite (JSONL: prompt or messages, optional image, expected answer, judge) against an "
        "OpenAI-compatible endpoint and score every answer: exact (normalized, numbers with a "
        "tolerance), f1 (JSON fields), iou (boxes in JSON), json (validity, required keys), regex, "
        "choice. Writes eval.json, results.jsonl, eval.md, eval.html and scores.png to --out. With "
        "--baseline the same suite runs on a second endpoint and the two are compared (exit 1 on a "
        "regression beyond --max-drop). `--write-examples DIR` writes small example suites with "
        "generated images."
    )
    examples = (
        "ernie-ops eval --write-examples suites/",
        "ernie-ops eval http://127.0.0.1:8180 --suite suites/text.jsonl",
        "ernie-ops eval http://gpu-node:8180 --suite suites/chart_qa.jsonl --concurrency 8 --out runs/wint4",
        "ernie-ops eval http://127.0.0.1:8180 --suite ours.jsonl --baseline http://127.0.0.1:8181",
        "ernie-ops eval http://gpu-node:8180 --suite suites/boxes.jsonl --box-space norm1000",
        'ernie-ops eval URL --suite s.jsonl --body \'{"chat_template_kwargs": {"enable_thinking": false}}\'',
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_endpoint_arguments(parser, url_optional=True)
        parser.add_argument("--suite", type=Path, metavar="SUITE.jsonl", help="the suite to run")
        parser.add_argument(
            "--judge",
            default="exact",
            help="judge of items without their own `judge` field (default exact)",
        )
        parser.add_argument(
            "--box-space",
            default="pixels",  # checked by load_suite (the judges' regexes stay out of CLI start-up)
            help="coordinates of the model's boxes (iou items without their own `box_space`): pixels "
            "(default), norm1000 (a 0-1000 grid over the image) or norm1 (fractions)",
        )
        parser.add_argument(
            "--concurrency", type=positive_int, default=4, help="requests in flight (default 4)"
        )
        parser.add_argument(
            "--max-tokens",
            type=positive_int,
            default=512,
            help="per item unless it sets its own (default 512)",
        )
        parser.add_argument(
            "--timeout", type=positive_float, default=300.0, help="seconds per request (default 300)"
        )
        parser.add_argument(
            "--body",
            type=_json_object,
            default={},
            metavar="JSON",
            help="extra request fields for every item",
        )
        parser.add_argument(
            "--baseline", metavar="URL2", help="also run the suite here and compare (B = URL)"
        )
        parser.add_argument("--baseline-model", help="the baseline's served model name")
        parser.add_argument("--baseline-api-key-env", metavar="VAR", help="the baseline's API key variable")
        parser.add_argument(
            "--max-drop", type=float, default=0.02, help="allowed drop per metric (default 0.02)"
        )
        parser.add_argument("--min-score", type=float, help="exit 1 when the overall score is below this")
        parser.add_argument("--out", type=Path, help="report directory (default runs/eval-<suite>-<time>)")
        parser.add_argument("--json", action="store_true", help="the summary as JSON on stdout")
        add_mask_argument(parser)
        parser.add_argument(
            "--write-examples", type=Path, metavar="DIR", help="write the example suites and exit"
        )

    def run(self, args: argparse.Namespace) -> int:
        if args.write_examples:
            from ernie_ops.validate.examples import write_example_suites

            for path in write_example_suites(args.write_examples):
                print(path)
            return 0
        if not args.url or not args.suite:
            raise UserError(
                "eval needs a URL and --suite",
                hint="e.g. ernie-ops eval http://127.0.0.1:8180 --suite suite.jsonl "
                "(`ernie-ops eval --write-examples DIR` writes example suites)",
            )
        from ernie_ops.files import write_text_atomic
        from ernie_ops.validate import compare, evaluate
        from ernie_ops.validate.client import Endpoint
        from ernie_ops.validate.report import write_report
        from ernie_ops.validate.suite import check_judge, load_suite

        suite = load_suite(args.suite, check_judge(args.judge), args.box_space)
        endpoint = endpoint_from(args)
        out = args.out or Path("runs") / f"eval-{suite.name}-{datetime.now():%Y%m%d-%H%M%S}"
        log = sys.stderr if args.json else sys.stdout
        candidate = _run(endpoint, suite, args, log)
        baseline = None
        if args.baseline:
            other = Endpoint.parse(args.baseline, args.baseline_api_key_env, args.baseline_model)
            baseline = _run(other, suite, args, log)
        candidate.write(out / "candidate" if baseline else out, [args.suite])
        sections = [f"# Evaluation: {suite.name}\n"]
        plot = evaluate.plot_scores(candidate, out / "scores.png", baseline).name
        verdict = None
        if baseline is not None:
            baseline.write(out / "baseline", [args.suite])
            verdict = compare.compare(
                baseline.items,
                candidate.items,
                f"baseline ({baseline.model})",
                f"candidate ({candidate.model})",
                max_drop=args.max_drop,
            )
            write_text_atomic(
                out / "compare.json", json.dumps(verdict.to_json(), indent=2) + "\n", [args.suite]
            )
            sections += ["## Verdict\n", compare.markdown(verdict), "## Candidate\n"]
        sections.append(evaluate.markdown(candidate, plot))
        if baseline is not None:
            sections += ["## Baseline\n", evaluate.markdown(baseline)]
        md, html = write_report(out, "eval", "\n".join(sections), f"eval {suite.name}", [args.suite])
        _print_summary(candidate, baseline, verdict, log)
        print(f"report: {md} and {html}", file=log)
        if args.json:
            summary: dict[str, Any] = {"candidate": candidate.summary, "out": str(out)}
            if verdict is not None:
                summary |= {"baseline": baseline.summary if baseline else None, "compare": verdict.to_json()}
            print(json.dumps(summary, indent=2))
        failed = bool(candidate.errors or (baseline and baseline.errors))
        low = args.min_score is not None and candidate.score < args.min_score
        return 1 if failed or low or (verdict is not None and not verdict.passed) else 0


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object, e.g. '{\"temperature\": 0.2}'")
    return value


def _run(endpoint: Any, suite: Any, args: argparse.Namespace, log: Any) -> Any:
    import asyncio

    from tqdm import tqdm

    from ernie_ops.validate.evaluate import run_eval

    print(f"{suite.name}: {len(suite.items)} items -> {endpoint.base}", file=log, flush=True)
    with tqdm(total=len(suite.items), unit="item", file=sys.stderr, disable=not sys.stderr.isatty()) as bar:
        return asyncio.run(
            run_eval(
                endpoint,
                suite,
                args.concurrency,
                args.max_tokens,
                args.body,
                args.timeout,
                on_result=lambda _row: bar.update(),
                mask=None if args.mask else False,
            )
        )


def _print_summary(candidate: Any, baseline: Any, verdict: Any, log: Any) -> None:
    from ernie_ops.text import format_table
    from ernie_ops.validate.evaluate import and_more, failures, summary_rows

    for report in (baseline, candidate):
        if report is None:
            continue
        print(f"\n{report.model} at {report.endpoint}: score {report.score:.3f}", file=log)
        print(format_table(summary_rows(report), right={1, 2, 3, 4, 5}), file=log)
        bad = failures(report)
        for item in bad[:SHOWN_FAILURES]:
            why = item["error"] or item["detail"]
            print(f"  below 1.0: {item['id']} ({item['judge']} {item['score']:.2f}): {why}", file=log)
        if more := and_more(len(bad), SHOWN_FAILURES):
            print(f"  {more}", file=log)
    if verdict is not None:
        state = "PASS" if verdict.passed else "FAIL: " + ", ".join(m.metric for m in verdict.regressions)
        print(f"\ncompare (max drop {verdict.max_drop:g}): {state}", file=log)
