"""Benchmark the PII masker: precision and recall per type on the labelled corpus (tests/pii/), and
the throughput and peak memory of `ernie-ops data mask` against `ernie-ops data convert` on a large
messages file (each run in its own process, interleaved, best of N; RSS is the largest process's
peak). `mask` runs in one process (--jobs 1) and in --jobs N (default 2) processes; `--baseline REV`
adds the mask of another commit (its ernie_ops/ extracted with git archive), in the same
interleaved rounds, for before/after ratios under the same load.

    python scripts/bench_pii.py --size-mb 150 --repeats 3
    python scripts/bench_pii.py --size-mb 1000 --repeats 2 --work /scratch/pii --baseline HEAD~5

Prints a table and writes JSON under runs/bench/. A benchmark, not a test: the numbers depend on the
machine and its load (the load average is recorded with them). The PII records are the labelled
corpus's generator's (dense: about five values and three hard negatives a record), each with values
of its own (`--pii-values repeat`: drawn from 400 records, which flatters the validation caches).
"best CPU s" (user + system seconds) is the figure a shared machine skews least.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "pii"))

from ernie_ops.files import atomic_output, write_text_atomic  # noqa: E402
from ernie_ops.privacy import default_masker  # noqa: E402
from ernie_ops.privacy.score import score  # noqa: E402
from ernie_ops.text import format_table  # noqa: E402

# ordinary chat text, numbers included (years, counts, prices, versions): what most records are
PLAIN = [
    "Kannst du mir erklären, wie die Steuererklärung 2023 funktioniert? Ich habe 3 Kinder und 2 Jobs.",
    "Die Lieferung kam am 14. März mit 12 Tagen Verspätung, bitte fasse die 5 wichtigsten Punkte zusammen.",
    "Voici un résumé en 3 points : le budget 2024 augmente de 4,5 % et la dette baisse de 12 milliards.",
    "Pouvez-vous traduire ce paragraphe en anglais ? Il contient 250 mots environ.",
    "请帮我把这段文字翻译成英文，大约有300个字，谢谢。",
    "2023年公司营收增长了15%，员工人数达到1200人。请总结要点。",
    "Write a Python function that returns the 10 largest numbers of a list in O(n log k) time.",
    "The meeting moved from 10:30 to 14:00 on 2024-05-17; 8 people attend and room 204 is booked.",
    "Upgrade paddlepaddle to 3.0.0 and ERNIE 4.5 to the 0.3B checkpoint, then rerun the 2 failing tests.",
    "Sure! Here are the steps: 1. open the settings, 2. choose Accounts, 3. click Export, 4. confirm.",
    "The invoice total is 1,249.99 EUR for 3 items; shipping took 5 business days.",
    "Gern geschehen! Wenn du weitere Fragen hast, melde dich einfach.",
]


def make_messages_file(path: Path, size_mb: int, pii_share: float, values: str, seed: int = 0) -> None:
    """SIZE_MB of chats, PII_SHARE of them with planted personal data. VALUES "fresh": each such
    record is a new one from the generator's stream (its own e-mail, IBAN, ...: nothing repeats
    unless real data would, so a per-value cache gains nothing it would not gain on real data);
    "repeat": drawn from 400 records (what this benchmark did first; flatters any per-value cache).
    Written atomically, streamed."""
    import generate

    r = random.Random(seed)
    fresh = generate.stream(seed + 1)
    pool = generate.generate(400, seed + 1) if values == "repeat" else []
    target = size_mb * 1_000_000
    with atomic_output(path) as f:
        written = 0
        while written < target:
            if r.random() < pii_share:
                messages = (r.choice(pool) if pool else next(fresh))["messages"]
            else:
                messages = []
                for _ in range(r.randint(1, 3)):
                    messages.append({"role": "user", "content": " ".join(r.sample(PLAIN, r.randint(1, 4)))})
                    messages.append(
                        {"role": "assistant", "content": " ".join(r.sample(PLAIN, r.randint(2, 6)))}
                    )
            line = (json.dumps({"messages": messages}, ensure_ascii=False) + "\n").encode()
            f.write(line)
            written += len(line)


class Run(NamedTuple):
    seconds: float  # wall
    rss: int  # peak RSS of its largest process, KiB
    cpu: float  # user + system seconds of it and its workers: the measure a busy machine skews least


def run(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Run:
    """Wall seconds, peak RSS and CPU seconds of one command in a child process."""
    code = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
        "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
        "print(time.perf_counter() - t, u.ru_maxrss, u.ru_utime + u.ru_stime)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *cmd], check=True, capture_output=True, text=True, env=env, cwd=cwd
    )
    seconds, rss, cpu = out.stdout.split()
    return Run(float(seconds), int(rss), float(cpu))


def checkout(rev: str, work: Path) -> Path:
    """ernie_ops/ as it was at REV, in a directory of its own under WORK (for PYTHONPATH)."""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{rev}^{{commit}}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    target = work / f"baseline-{commit[:12]}"
    if not (target / "ernie_ops").is_dir():
        target.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", commit, "ernie_ops"], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=150, help="messages file size (the issue asks 1 GB)")
    parser.add_argument("--pii-share", type=float, default=0.1, help="share of records with planted PII")
    parser.add_argument(
        "--pii-values",
        choices=("fresh", "repeat"),
        default="fresh",
        help="fresh: every PII record has values of its own (default); repeat: 400 records drawn again "
        "and again (flatters per-value caching)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench" / "pii-work")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench")
    parser.add_argument("--baseline", metavar="REV", help="also time the mask of this git commit")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes of the second mask run")
    args = parser.parse_args()
    args.work = args.work.resolve()

    corpus = [
        json.loads(x) for x in (ROOT / "tests" / "pii" / "corpus.jsonl").read_text("utf-8").splitlines()
    ]
    import generate

    held_out = generate.generate(1000, 99)
    quality = {
        name: score(recs, default_masker()) for name, recs in (("corpus", corpus), ("held-out", held_out))
    }
    rows = [["type", "planted", "found", "precision", "recall", "held-out P", "held-out R"]]
    for row, other in zip(quality["corpus"].table(), quality["held-out"].table(), strict=True):
        rows.append(
            [
                row["type"],
                str(row["planted"]),
                str(row["found"]),
                f"{row['precision']:.4f}",
                f"{row['recall']:.4f}",
                f"{other['precision']:.4f}",
                f"{other['recall']:.4f}",
            ]
        )
    print(format_table(rows))

    args.work.mkdir(parents=True, exist_ok=True)
    data = args.work / f"messages-{args.size_mb}mb-{args.pii_share}-{args.pii_values}.jsonl"
    if not data.exists() or data.stat().st_size < args.size_mb * 1_000_000:
        print(f"writing {data} ...", file=sys.stderr)
        make_messages_file(data, args.size_mb, args.pii_share, args.pii_values)
    size = data.stat().st_size
    exe = [sys.executable, "-m", "ernie_ops"]
    mask = [*exe, "data", "mask", str(data), str(args.work / "out-mask.jsonl")]
    commands = {
        "convert": [
            *exe,
            "data",
            "convert",
            str(data),
            str(args.work / "out-convert.jsonl"),
            "--to",
            "erniekit-sft",
        ],
        "mask --jobs 1": [*mask, "--jobs", "1"],
        f"mask --jobs {args.jobs}": [*mask, "--jobs", str(args.jobs)],
    }
    # `python -m` puts the working directory first on sys.path: each command runs in the work
    # directory with its own source tree on PYTHONPATH (this checkout's, or the baseline's)
    env = {name: dict(os.environ, PYTHONPATH=str(ROOT)) for name in commands}
    if args.baseline:
        name = f"mask @{args.baseline}"
        commands[name] = [*mask[:-1], str(args.work / "out-mask-baseline.jsonl")]
        env[name] = dict(os.environ, PYTHONPATH=str(checkout(args.baseline, args.work)))
    results: dict[str, list[Run]] = {k: [] for k in commands}
    load = [os.getloadavg()]
    for _ in range(args.repeats):  # interleaved: the machine's load falls on all alike
        for name, cmd in commands.items():
            results[name].append(run(cmd, env[name], args.work))
            load.append(os.getloadavg())
    best = {k: min(r.seconds for r in v) for k, v in results.items()}
    cpu = {k: min(r.cpu for r in v) for k, v in results.items()}
    rows = [["command", "best s", "MB/s", "best CPU s", "peak RSS MiB", "all runs s"]]
    for name, runs in results.items():
        rows.append(
            [
                name,
                f"{best[name]:.2f}",
                f"{size / 1e6 / best[name]:.1f}",
                f"{cpu[name]:.2f}",
                f"{max(r.rss for r in runs) / 1024:.0f}",
                " ".join(f"{r.seconds:.2f}" for r in runs),
            ]
        )
    ratios = {name: best["convert"] / best[name] for name in commands if name != "convert"}
    cpu_ratios = {name: cpu["convert"] / cpu[name] for name in commands if name != "convert"}
    print()
    print(format_table(rows))
    loads = f"{load[0][0]:.2f} .. {max(x[0] for x in load):.2f}"
    for name, ratio in ratios.items():
        print(
            f"{name} runs at {ratio:.0%} of convert's throughput on {size / 1e6:.0f} MB "
            f"(per CPU second: {cpu_ratios[name]:.0%})"
        )
    jobs_name = f"mask --jobs {args.jobs}"
    speedup = best["mask --jobs 1"] / best[jobs_name]
    print(f"{jobs_name} is {speedup:.2f}x as fast as mask --jobs 1 (best of {args.repeats} each)")
    print(f"load average (1 min) {loads} on {os.cpu_count()} CPUs")

    # flat memory: the same masks on a file a quarter the size should peak at about the same RSS
    small = args.work / "messages-quarter.jsonl"
    with data.open("rb") as src, small.open("wb") as dst:
        dst.write(src.read(size // 4).rsplit(b"\n", 1)[0] + b"\n")
    quarter_rss = {}
    for jobs in (1, args.jobs):
        name = f"mask --jobs {jobs}"
        out = str(args.work / "out-mask-quarter.jsonl")
        quarter_rss[name] = run(
            [*exe, "data", "mask", str(small), out, "--jobs", str(jobs)], env[name], args.work
        ).rss
        big_rss = max(r.rss for r in results[name])
        print(
            f"peak RSS of {name} (its largest process): {quarter_rss[name] / 1024:.0f} MiB on "
            f"{size / 4e6:.0f} MB, {big_rss / 1024:.0f} MiB on {size / 1e6:.0f} MB"
        )

    report = {
        "quality": {name: s.table() for name, s in quality.items()},
        "file_mb": round(size / 1e6, 1),
        "pii_share": args.pii_share,
        "pii_values": args.pii_values,
        "runs": {k: [r._asdict() for r in v] for k, v in results.items()},
        "vs_convert": {name: round(r, 3) for name, r in ratios.items()},
        "vs_convert_per_cpu_second": {name: round(r, 3) for name, r in cpu_ratios.items()},
        "baseline": args.baseline,
        "mask_peak_rss_kib_quarter_file": quarter_rss,
        "load_average": load,
        "cpus": os.cpu_count(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"pii-{time.strftime('%Y%m%d-%H%M%S')}.json"
    write_text_atomic(out, json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
