#!/usr/bin/env python
"""The rollout acceptance scenario of issue #19, end to end on CPU, as a table.

Two embedded servers on the tiny model (stable, and the same model as the good candidate), a third
on another seed (the candidate whose answers disagree), fault proxies over the good candidate (one
failing every second request, one 1.5 s slow), a steady `ernie-ops bench` load and the controller,
through the built-in gateway and through HAProxy (when installed). Each row: what the controller
decided and why, the client's requests and failures (must be 0), how long after the failing figures
all-stable took effect (must be < 1 s), and the client requests the candidate got after it (must
be 0). Details: `python -m pydoc ernie_ops.rollout.acceptance`.

    python scripts/rollout_e2e.py                       # both routers, every case
    python scripts/rollout_e2e.py --routers gateway --cases good,errors --rate 8
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from ernie_ops.benchmark import bench_parser, print_table, write_report
from ernie_ops.rollout.acceptance import CASES, candidates, run_case


def main() -> int:
    parser = bench_parser(__doc__, "rollout_e2e", repeat=1)
    parser.add_argument("--routers", default="gateway,haproxy", help="gateway, haproxy (default both)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"of {', '.join(CASES)} (default all)")
    parser.add_argument("--rate", type=float, default=10.0, help="client requests per second (default 10)")
    parser.add_argument("--duration", type=float, default=14.0, help="seconds of load per case (default 14)")
    parser.add_argument("--work", type=Path, help="keep each case's report, logs and bench output here")
    args = parser.parse_args()
    routers = [r for r in args.routers.split(",") if r]
    cases = tuple(c for c in args.cases.split(",") if c)
    unknown = sorted(set(cases) - set(CASES)) + sorted(set(routers) - {"gateway", "haproxy"})
    if unknown:
        parser.error(f"unknown: {', '.join(unknown)}")
    if "haproxy" in routers and shutil.which("haproxy") is None:
        print("haproxy is not installed (apt-get install haproxy): its rows are not run", file=sys.stderr)
        routers.remove("haproxy")
    from ernie_ops.tiny_model import build_tiny_model

    work = args.work or Path(tempfile.mkdtemp(prefix="rollout-e2e-"))
    stable_dir = build_tiny_model(work / "models" / "tiny-0", seed=0)
    other_dir = build_tiny_model(work / "models" / "tiny-1", seed=1)
    suite = (
        Path(__file__).resolve().parent.parent / "recipes" / "rollouts" / "suites" / "rollout-agreement.jsonl"
    )
    outcomes = []
    with candidates(stable_dir, other_dir, work / "logs", cases) as urls:
        for router in routers:
            for case in cases:
                print(f"{router} / {case} ...", flush=True)
                outcome = run_case(
                    router,
                    case,
                    urls["stable"],
                    urls[case],
                    work / router / case,
                    args.rate,
                    args.duration,
                    suite,
                )
                outcomes.append(outcome)
    rows = [
        [
            "router / case",
            "decision",
            "at stage",
            "client req",
            "client failed",
            "rollback s",
            "to cand. after",
            "s",
            "ok",
        ]
    ]
    for o in outcomes:
        rows.append(
            [
                f"{o.router} / {o.case}",
                o.status,
                o.failed_stage or "-",
                str(o.client_requests),
                str(o.client_failed),
                "-" if o.rollback_s is None else f"{o.rollback_s:.3f}",
                "-" if o.candidate_after_rollback is None else str(o.candidate_after_rollback),
                f"{o.seconds:.0f}",
                "yes" if o.ok else "NO",
            ]
        )
    print()
    print_table(rows)
    for o in outcomes:
        if o.reason:
            print(f"  {o.router} / {o.case}: {o.reason}")
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; reports under {work}")
    write_report(
        args.out,
        rate=args.rate,
        duration=args.duration,
        load_average=load,
        outcomes=[o.to_json() for o in outcomes],
    )
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
