#!/usr/bin/env python
"""Throughput and memory of `data lint` and `data convert` on generated messages-format JSONL.

For each size, a file of OpenAI-style chat records (system prompt, 1-3 turns, ~1 KB each, all
distinct) is generated, then three runs each in a fresh process on one core: the ceiling (read
every line and parse it with orjson, nothing else), lint, convert to erniekit-sft, and a bare
round trip (parse with orjson, dump with orjson, write: what any converter must at least do, with
no checks and no change of format; the reference for convert, which also writes its whole
output). Reports MB/s and peak RSS. Targets: lint and convert at >= 60% of the ceiling; RSS flat in
the file size.

    .venv/bin/python scripts/bench_data.py                  # 100 MB and 1 GB (needs ~3 GB of disk)
    .venv/bin/python scripts/bench_data.py --sizes-mb 20    # quick
    .venv/bin/python scripts/bench_data.py --sizes-mb 50 --baseline /tmp/old  # before/after a change

`--baseline DIR` (a copy of the package from another commit: `git archive REV ernie_ops | tar -x
-C DIR`) adds lint and convert runs of that code, interleaved with the others in the same run.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from ernie_ops.benchmark import bench_parser, print_table, write_report

CHILD = {
    "ceiling": """
import orjson
with open(P, "rb") as f:
    for line in f:
        orjson.loads(line)
""",
    "lint": """
from ernie_ops.data.lint import lint_file
r = lint_file(Path(P), progress=False)
assert r.bad == 0, r.to_dict()
""",
    "convert": """
from ernie_ops.data.convert import convert
r = convert(Path(P), Path(P + ".out"), "erniekit-sft", progress=False)
assert r.written == r.records
""",
    "roundtrip": """
import orjson
with open(P, "rb") as f, open(P + ".out", "wb", buffering=1 << 20) as out:
    for line in f:
        out.write(orjson.dumps(orjson.loads(line)) + b"\\n")
""",
}
# before the clock starts: the previous run's output is deleted (freeing a 1 GB file takes the
# kernel ~0.5 s, which would otherwise land on every convert run but the first)
SETUP = dict.fromkeys(("convert", "roundtrip"), 'Path(P + ".out").unlink(missing_ok=True)')
TIMER = """
import resource, sys, time
from pathlib import Path
P = sys.argv[1]
sys.path[:0] = sys.argv[2:]  # --baseline: its package first
{setup}
start = time.perf_counter()
{body}
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def generate(path: Path, size_mb: int, seed: int = 0) -> int:
    rng = random.Random(seed)
    words = "the model answers questions about charts documents invoices tables totals dates names".split()
    target, written, n = size_mb * 1_000_000, 0, 0
    with path.open("w", encoding="utf-8") as f:
        while written < target:
            turns = [{"role": "system", "content": "You are a careful assistant. Answer briefly."}]
            for t in range(rng.randint(1, 3)):
                q = " ".join(rng.choices(words, k=rng.randint(20, 60)))
                a = " ".join(rng.choices(words, k=rng.randint(30, 90)))
                turns += [{"role": "user", "content": f"[{n}.{t}] {q}?"}, {"role": "assistant", "content": a}]
            line = json.dumps({"messages": turns}) + "\n"
            f.write(line)
            written += len(line)
            n += 1
    return n


def run(kind: str, path: Path, baseline: Path | None = None) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one measurement in a fresh, single-threaded process; with
    `baseline`, of the package found there (kinds ending in "_base")."""
    name = kind.removesuffix("_base")
    code = TIMER.format(setup=SETUP.get(name, ""), body=CHILD[name])
    env_one_core = ["taskset", "-c", "0"] if Path("/usr/bin/taskset").exists() else []
    extra = [str(baseline)] if kind.endswith("_base") and baseline else []
    out = subprocess.run(
        [*env_one_core, sys.executable, "-c", code, str(path), *extra],
        capture_output=True,
        text=True,
        check=True,
    )
    seconds, rss_kb = out.stdout.split()
    return float(seconds), int(rss_kb) / 1024


def main() -> int:
    parser = bench_parser(__doc__, "data", repeat=1)
    parser.add_argument("--sizes-mb", default="100,1000", help="file sizes in MB (default 100,1000)")
    parser.add_argument("--dir", type=Path, help="where to put the generated files (default: a temp dir)")
    parser.add_argument("--baseline", type=Path, metavar="DIR", help="also time the package in DIR")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for size in (int(s) for s in args.sizes_mb.split(",")):
            path = Path(tmp) / f"messages-{size}mb.jsonl"
            records = generate(path, size)
            mb = path.stat().st_size / 1e6
            row = {"size_mb": round(mb, 1), "records": records}
            kinds: tuple[str, ...] = ("ceiling", "lint", "convert", "roundtrip")
            if args.baseline:
                kinds += ("lint_base", "convert_base")
            # interleaved (ceiling, lint, convert, ceiling, ...): on shared cores a burst of load
            # then hits every kind alike instead of one kind's whole series; best of the repeats
            runs = [[run(kind, path, args.baseline) for kind in kinds] for _ in range(args.repeat)]
            for k, kind in enumerate(kinds):
                best = min((r[k] for r in runs), key=lambda r: r[0])
                row[f"{kind}_mb_s"] = round(mb / best[0], 1)
                row[f"{kind}_rss_mb"] = round(best[1], 1)
            row["lint_vs_ceiling"] = round(row["lint_mb_s"] / row["ceiling_mb_s"], 3)
            row["convert_vs_ceiling"] = round(row["convert_mb_s"] / row["ceiling_mb_s"], 3)
            row["roundtrip_vs_ceiling"] = round(row["roundtrip_mb_s"] / row["ceiling_mb_s"], 3)
            for kind in kinds[4:]:
                row[f"{kind}_vs_ceiling"] = round(row[f"{kind}_mb_s"] / row["ceiling_mb_s"], 3)
            results.append(row)
            path.unlink()
            Path(str(path) + ".out").unlink(missing_ok=True)
    table = [
        [
            "size MB",
            "records",
            "ceiling MB/s",
            "lint MB/s",
            "lint/ceil",
            "lint RSS MB",
            "convert MB/s",
            "conv/ceil",
            "convert RSS MB",
            "round trip MB/s",
            "rt/ceil",
            "ceiling RSS MB",
        ]
    ]
    for r in results:
        table.append(
            [
                str(r["size_mb"]),
                str(r["records"]),
                str(r["ceiling_mb_s"]),
                str(r["lint_mb_s"]),
                f"{r['lint_vs_ceiling']:.0%}",
                str(r["lint_rss_mb"]),
                str(r["convert_mb_s"]),
                f"{r['convert_vs_ceiling']:.0%}",
                str(r["convert_rss_mb"]),
                str(r["roundtrip_mb_s"]),
                f"{r['roundtrip_vs_ceiling']:.0%}",
                str(r["ceiling_rss_mb"]),
            ]
        )
    print_table(table)
    for r in results:
        for kind in ("lint", "convert"):
            if f"{kind}_base_mb_s" in r:
                before, after = r[f"{kind}_base_vs_ceiling"], r[f"{kind}_vs_ceiling"]
                rss = f"{r[f'{kind}_base_rss_mb']} -> {r[f'{kind}_rss_mb']} MB"
                print(f"{r['size_mb']} MB {kind}: {before:.0%} of ceiling before, {after:.0%} now; RSS {rss}")
    write_report(args.out, results=results, targets={"vs_ceiling": 0.6, "rss": "flat in file size"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
