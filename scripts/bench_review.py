#!/usr/bin/env python
"""What the review queue costs: the writer's rate, and the stable path with every answer flagged.

1. **Writer rate** (in this process): `--items` review cases with a ~1 KB prompt and two ~0.5 KB
   answers holding an e-mail address and a phone number, handed to a `ReviewWriter` at once, masked
   (the default) and unmasked (`--no-mask`). Items written per second and ms per item: the rate of
   flagged answers a gateway can queue before its review queue fills and drops (counted).
2. **Stable path with a judge** (three processes besides this one): a null OpenAI server, and two
   gateways in front of it (`ernie-ops gateway run`, all-stable): one plain, one with a
   `--judge-suite` whose one item is the benchmark's prompt and expects an answer the null server
   never gives, so every answer is judged, flagged, masked and written as a review item. The client
   sends `--requests` streamed requests, alternating between the gateways one at a time (closed
   loop), and reports each gateway's client-side latency p50 / p99 and what the judged one adds,
   with the items written and dropped read from its /metrics.

    .venv/bin/python scripts/bench_review.py            # ~30 s
    .venv/bin/python scripts/bench_review.py --quick    # ~10 s
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from prometheus_client import CollectorRegistry

from ernie_ops.benchmark import bench_parser, print_table, write_report
from ernie_ops.rollout.answers import Answer
from ernie_ops.rollout.review import Case, ReviewWriter, Side
from ernie_ops.supervise import Child, start

PROMPT = "Please answer briefly: what is the status of the order?"
FILLER = "The customer wrote again about the delivery and asked for a call back before noon. "


def case(i: int) -> Case:
    prompt = f"Order {i}: mail ana.lopez{i}@example.com or call +1 415 555 01{i % 100:02d}. " + FILLER * 11
    answer = f"I wrote to ana.lopez{i}@example.com about order {i}. " + FILLER * 5
    sides = [
        Side("stable", "http://s/v1", Answer(model="a", text=answer)),
        Side("candidate", "http://c/v1", Answer(model="b", text="I cannot help. " + FILLER * 5)),
    ]
    return Case(
        f"b-{i}",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": prompt}]},
        sides,
        "shadow-disagreement",
    )


def writer_rate(items: int, mask: bool) -> dict[str, float]:
    cases = [case(i) for i in range(items)]
    with tempfile.TemporaryDirectory(prefix="bench-review-") as tmp:
        writer = ReviewWriter(Path(tmp), CollectorRegistry(), mask=mask, capacity=items + 1)
        started = time.perf_counter()
        for c in cases:
            writer.submit(c)
        writer.close(timeout=600)
        seconds = time.perf_counter() - started
        assert writer.written == items, f"{writer.written} of {items} written"
    return {"items_per_s": items / seconds, "ms_per_item": seconds * 1000 / items}


def child(command: list[str], marker: str) -> tuple[Child, str]:
    proc = start(command, text=True)
    assert proc.process.stdout is not None
    for line in proc.process.stdout:
        found = re.search(r"(http://[0-9.]+:[0-9]+)", line)
        if marker in line and found:
            return proc, found.group(1)
    proc.stop()
    raise RuntimeError(f"{' '.join(command[:4])} did not start")


def gateway(stable: str, tmp: Path, name: str, *extra: str) -> tuple[Child, str]:
    command = [sys.executable, "-m", "ernie_ops", "gateway", "run", "--stable", stable, "--port", "0"]
    command += ["--state", str(tmp / name / "state.json"), "--log-dir", str(tmp / name / "log")]
    command += ["--review-dir", str(tmp / name / "review"), *extra]
    return child(command, "gateway on")


def metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(
        float(x.rsplit(" ", 1)[1])
        for x in text.splitlines()
        if x.startswith(name + "{") or x.startswith(name + " ")
    )


def stable_path(requests: int, tokens: int) -> dict[str, object]:
    body = {
        "model": "null-model",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": tokens,
        "stream": True,
    }
    with tempfile.TemporaryDirectory(prefix="bench-review-") as tmp_name:
        tmp = Path(tmp_name)
        suite = tmp / "suite.jsonl"
        suite.write_text(
            json.dumps({"prompt": PROMPT, "expected": "an answer the null server never gives"}) + "\n"
        )
        children: list[Child] = []
        try:
            null, null_url = child(
                [sys.executable, "-m", "ernie_ops.validate.null_server", "--port", "0"], "listening on"
            )
            children.append(null)
            plain, plain_url = gateway(null_url, tmp, "plain")
            children.append(plain)
            judged, judged_url = gateway(null_url, tmp, "judged", "--judge-suite", str(suite))
            children.append(judged)
            times: dict[str, list[float]] = {"plain": [], "judged": []}
            with httpx.Client(timeout=30) as client:
                for i in range(requests * 2 + 20):
                    which, url = ("plain", plain_url) if i % 2 == 0 else ("judged", judged_url)
                    sent = time.perf_counter()
                    r = client.post(url + "/v1/chat/completions", json=body)
                    assert r.status_code == 200 and "[DONE]" in r.text
                    if i >= 20:  # the first ones warm the connections up
                        times[which].append((time.perf_counter() - sent) * 1000)
            deadline = time.monotonic() + 60
            while (
                metric(judged_url, "ernie_ops_gateway_review_items_total")
                + metric(judged_url, "ernie_ops_gateway_review_dropped_total")
                < requests + 10
                and time.monotonic() < deadline
            ):
                time.sleep(0.2)
            written = metric(judged_url, "ernie_ops_gateway_review_items_total")
            dropped = metric(judged_url, "ernie_ops_gateway_review_dropped_total")
            files = len(list((tmp / "judged" / "review").glob("*.json")))
        finally:
            for c in children:
                c.stop()
    figures = {
        w: {"p50_ms": float(np.percentile(t, 50)), "p99_ms": float(np.percentile(t, 99))}
        for w, t in times.items()
    }
    return {
        **figures,
        "items_written": written,
        "item_files": files,
        "dropped": dropped,
        "requests_each": requests,
    }


def main() -> int:
    parser = bench_parser(__doc__, "review", repeat=1)
    parser.add_argument("--quick", action="store_true", help="fewer items and requests")
    parser.add_argument("--items", type=int, default=2000, help="part 1 review cases (default 2000)")
    parser.add_argument(
        "--requests", type=int, default=1000, help="part 2 requests per gateway (default 1000)"
    )
    parser.add_argument("--tokens", type=int, default=16, help="streamed chunks per answer (default 16)")
    args = parser.parse_args()
    if args.quick:
        args.items, args.requests = 500, 300
    load_before = os.getloadavg()
    print(f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}", flush=True)
    rates = {"masked": writer_rate(args.items, True), "unmasked": writer_rate(args.items, False)}
    path = stable_path(args.requests, args.tokens)
    load_after = os.getloadavg()
    rows = [["part 1: review writer", "items/s", "ms per item"]]
    for what, r in rates.items():
        rows.append([what, f"{r['items_per_s']:.0f}", f"{r['ms_per_item']:.2f}"])
    print_table(rows)
    print()
    rows = [["part 2: streamed request, client side (ms)", "p50", "p99"]]
    for what in ("plain", "judged"):
        f = path[what]
        rows.append([f"gateway, {what}", f"{f['p50_ms']:.2f}", f"{f['p99_ms']:.2f}"])  # type: ignore[index]
    added = {q: path["judged"][q] - path["plain"][q] for q in ("p50_ms", "p99_ms")}  # type: ignore[index]
    rows.append(
        ["added by judging + queueing every answer", f"{added['p50_ms']:.2f}", f"{added['p99_ms']:.2f}"]
    )
    print_table(rows)
    print(
        f"\nreview items written {path['items_written']:.0f} ({path['item_files']} files), dropped "
        f"{path['dropped']:.0f}; load average after {load_after[0]:.2f}"
    )
    write_report(
        args.out,
        writer=rates,
        stable_path={**path, "added": added},
        load_average={"before": load_before, "after": load_after},
        cores=len(os.sched_getaffinity(0)),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
