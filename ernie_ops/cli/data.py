from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

from ernie_ops.cli.base import Subcommand
from ernie_ops.data.formats import FORMATS  # light: no heavy import
from ernie_ops.errors import UserError
from ernie_ops.text import format_table

FORMAT_CHOICES = ("auto", *FORMATS)
STRATEGIES = ("placeholder", "hash", "remove")  # privacy.STRATEGIES, without importing the masker
MAX_JOBS, AUTO_JOBS_MB = 8, 32


class Data(Subcommand):
    name = "data"
    help = "lint, convert, mask, preview and split training data for ERNIEKit"
    description = (
        "Work on training data before ERNIEKit sees it (ERNIEKit skips records it cannot read with a "
        "warning, and hangs when it skips them all). Formats: erniekit-sft, erniekit-dpo, alpaca, "
        "messages (OpenAI), sharegpt, preference (prompt/chosen/rejected); JSONL or JSON arrays, .gz too."
    )
    examples = (
        "ernie-ops data lint train.jsonl eval.jsonl",
        "ernie-ops data lint chats.jsonl --tokenizer runs/tiny-dense --max-seq-len 4096",
        "ernie-ops data convert chats.jsonl train.jsonl --to erniekit-sft",
        "ernie-ops data preview train.jsonl --tokenizer baidu/ERNIE-4.5-0.3B-Paddle -n 3",
        "ernie-ops data split all.jsonl --eval-fraction 0.05 --seed 0",
        "ernie-ops data lint chats.jsonl --pii",
        "ernie-ops data mask chats.jsonl chats.masked.jsonl",
        "ERNIE_OPS_PII_SALT=... ernie-ops data mask chats.jsonl.gz masked.jsonl.gz --strategy hash",
        "ernie-ops data convert chats.jsonl train.jsonl --to erniekit-sft --mask",
        "ernie-ops data preview train.jsonl --tokenizer runs/tiny-dense --no-mask",
        "ernie-ops data mask big.jsonl.gz masked.jsonl.gz --jobs 4 --json",
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
        fmt = dict(choices=FORMAT_CHOICES, default="auto", help="input format (default: detect)")

        lint = self._action(actions, "lint", "report every bad record with file:line and the reason", 0, 1, 5)
        lint.add_argument("files", nargs="+", type=Path, metavar="FILE")
        lint.add_argument("--format", **fmt)  # type: ignore[arg-type]
        lint.add_argument(
            "--tokenizer", type=Path, metavar="MODEL_DIR", help="token statistics with this tokenizer"
        )
        lint.add_argument(
            "--max-seq-len", type=int, default=4096, help="ERNIEKit's max_seq_len (default 4096)"
        )
        lint.add_argument(
            "--max-bad", type=float, default=0.0, help="fail above this bad fraction (default 0)"
        )
        lint.add_argument("--histogram", type=Path, help="token-length histogram PNG (default runs/lint/...)")
        lint.add_argument(
            "--pii",
            action="store_true",
            help="also find personal data: counts by type and the first places (never the values); "
            "names of people need a NER model, not shipped here (see `data mask --help`)",
        )
        lint.add_argument("--json", action="store_true", help="summary as JSON on stdout")

        convert = self._action(
            actions, "convert", "convert into ERNIEKit's format; rejects go to a file", 2, 8
        )
        convert.add_argument("input", type=Path, metavar="IN")
        convert.add_argument("output", type=Path, metavar="OUT")
        convert.add_argument("--to", required=True, choices=("erniekit-sft", "erniekit-dpo"))
        convert.add_argument("--from", dest="format", **fmt)  # type: ignore[arg-type]
        convert.add_argument(
            "--dedupe",
            action="store_true",
            help="drop exact duplicates (the first copy is kept; the others go to the reject file)",
        )
        convert.add_argument(
            "--mask",
            nargs="?",
            const="placeholder",
            choices=STRATEGIES,
            metavar="STRATEGY",
            help="mask personal data in what is written, the reject file included, as `data mask` does: "
            "placeholder (the default), hash or remove (see `data mask --help`); off unless given",
        )
        _masking_options(convert)
        convert.add_argument("--json", action="store_true", help="summary as JSON on stdout")

        mask = self._action(
            actions,
            "mask",
            "write a copy with personal data masked (same format, texts only; keys and roles kept)",
            6,
            7,
            10,
        )
        mask.description = textwrap.fill(
            "Write a copy of IN with personal data replaced: e-mail addresses, phone numbers, IBANs, "
            "payment cards (Luhn), VAT numbers and national identifiers (checksums by python-stdnum: "
            "DE, FR, CN, US, GB and the rest of the EU), IP addresses, URLs with credentials, API keys "
            "and tokens, street addresses with a postal code. Checksum types are never reported when "
            "the checksum fails. Streams (flat memory); OUT is written atomically, .gz compresses. "
            "Names of people need a NER model, which is not shipped here: plug one in (e.g. Presidio "
            "with a spaCy model) with ERNIE_OPS_PII_DETECTORS=module:factory.",
            width=100,
        )
        mask.add_argument("input", type=Path, metavar="IN")
        mask.add_argument("output", type=Path, metavar="OUT")
        mask.add_argument(
            "--strategy",
            choices=STRATEGIES,
            default="placeholder",
            help="placeholder: <EMAIL_1>, numbered per record (default); hash: <EMAIL_9f86d0...>, "
            "keyed with a secret salt from ERNIE_OPS_PII_SALT or --salt-file (never written); "
            "remove: cut the value out",
        )
        _masking_options(mask)
        mask.add_argument(
            "--jobs",
            type=int,
            metavar="N",
            help="processes that mask at once: an uncompressed JSONL file is cut into N parts masked "
            "side by side; a .gz file is read by this process, which hands the records with personal "
            "data to N workers; a JSON array is masked in one process (a warning says so). Default "
            f"for files over {AUTO_JOBS_MB} MB: one per usable CPU for uncompressed JSONL, one per CPU "
            f"but one on 3 CPUs or more for .gz, at most {MAX_JOBS}; else 1. The output is the same",
        )
        mask.add_argument("--json", action="store_true", help="summary as JSON on stdout")

        preview = self._action(
            actions, "preview", "show records through the chat template, trained tokens marked", 3, 9
        )
        preview.add_argument("file", type=Path, metavar="FILE")
        preview.add_argument("--tokenizer", type=Path, required=True, metavar="MODEL_DIR")
        preview.add_argument("-n", type=int, default=3, help="records to show (default 3)")
        preview.add_argument("--format", **fmt)  # type: ignore[arg-type]
        preview.add_argument("--color", choices=("auto", "always", "never"), default="auto")
        preview.add_argument(
            "--no-mask",
            dest="mask",
            action="store_false",
            default=None,
            help="show personal data as it is (masked by default, as everywhere the toolkit shows or "
            "writes user content; ERNIE_OPS_NO_MASK=1 does the same); token counts are always those "
            "of the unmasked record, which is what the model trains on",
        )

        split = self._action(actions, "split", "deterministic train/eval split", 4)
        split.add_argument("input", type=Path, metavar="IN")
        split.add_argument("--eval-fraction", type=float, default=0.05, help="default 0.05")
        split.add_argument("--seed", type=int, default=0)
        split.add_argument("--out-dir", type=Path, help="default: beside IN (IN-train.jsonl, IN-eval.jsonl)")

    def _action(self, actions, name: str, help: str, *examples: int) -> argparse.ArgumentParser:
        picked = [self.examples[i] for i in examples if i < len(self.examples)]
        return actions.add_parser(
            name,
            help=help,
            description=help,
            epilog="examples:\n" + "\n".join(f"  {e}" for e in picked),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    def run(self, args: argparse.Namespace) -> int:
        actions = {"lint": _lint, "convert": _convert, "mask": _mask, "preview": _preview, "split": _split}
        return actions[args.action](args)


def _masking_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--salt-file", type=Path, help="the secret salt for the hash strategy")
    parser.add_argument(
        "--detector",
        action="append",
        default=[],
        metavar="MODULE:FACTORY",
        help="add a detector (e.g. a NER model for names of people), repeatable",
    )


def _lint(args: argparse.Namespace) -> int:
    from ernie_ops.data.lint import TokenCounter, histogram, lint_file

    tokens = TokenCounter(args.tokenizer, args.max_seq_len) if args.tokenizer else None

    def report(path: Path, line: int, reason: str) -> None:
        if not args.json:
            print(f"{path}:{line}: bad: {reason}")

    results = [lint_file(path, args.format, report, tokens) for path in args.files]
    pii = [_pii(path, args.json) for path in args.files] if args.pii else []
    records = sum(r.records for r in results)
    bad = sum(r.bad for r in results)
    plots = []
    for r in results:
        if r.tokens and r.tokens.lengths:
            out = args.histogram or Path("runs/lint") / f"{r.path.name}.token-lengths.png"
            if len(results) > 1 and args.histogram:
                out = out.with_name(f"{out.stem}-{r.path.name}{out.suffix}")
            plots.append(str(histogram(r.tokens, out, f"{r.path.name}: tokens per record", args.files)))
    fraction = bad / records if records else 0.0
    ok = fraction <= args.max_bad and records > 0
    if args.json:
        summary = {"ok": ok, "files": [r.to_dict() for r in results], "histograms": plots}
        if args.pii:
            summary["pii"] = [p.to_dict() for p in pii]
        print(json.dumps(summary, indent=2))
        return 0 if ok else 1
    rows = [["file", "format", "records", "bad", "duplicates", "not expressible in ERNIEKit"]]
    for r in results:
        unsupported = sum(r.unsupported.values())
        rows.append(
            [str(r.path), r.format or "?", str(r.records), str(r.bad), str(r.duplicates), str(unsupported)]
        )
    print()
    print(format_table(rows))
    for r in results:
        if r.first_duplicate:
            dupes = _duplicates(r.duplicates, r.first_duplicate)
            print(f"  {r.path.name}: warning: {dupes}; `ernie-ops data convert --dedupe` drops them")
        for reason, count in r.reasons.most_common(8):
            print(f"  {r.path.name}: {count} x {reason}")
        for reason, count in r.unsupported.most_common():
            print(f"  {r.path.name}: {count} x not convertible: {reason}")
        if r.tokens:
            s = r.tokens.summary()
            if s["records"]:
                print(
                    f"  {r.path.name}: tokens min {s['min']}, median {s['median']:.0f}, p95 {s['p95']:.0f}, "
                    f"max {s['max']}; at max_seq_len {s['max_seq_len']} ERNIEKit truncates {s['truncated']} "
                    f"and drops {s['dropped']}"
                )
    for plot in plots:
        print(f"  histogram: {plot}")
    for p in pii:
        found = ", ".join(f"{n} {t}" for t, n in p.found.most_common()) or "none found"
        print(f"  {p.source.name}: personal data in {p.with_pii} of {p.records} record(s): {found}")
        if p.with_pii:
            print(f"  {p.source.name}: `ernie-ops data mask {p.source} OUT` writes a masked copy")
    if records == 0:
        print("no records found", file=sys.stderr)
    if ok:
        verdict = "ok"
    elif records == 0:
        verdict = "nothing to train on"
    else:
        verdict = f"too many bad records ({fraction:.2%} > --max-bad {args.max_bad:.2%})"
    print(f"{records} record(s), {bad} bad: {verdict}")
    return 0 if ok else 1


def _convert(args: argparse.Namespace) -> int:
    from ernie_ops.data.convert import convert

    if args.mask is None and (args.salt_file or args.detector):
        raise UserError("--salt-file and --detector are for masking", hint="add --mask (e.g. --mask hash)")
    m = None
    if args.mask:
        from ernie_ops.privacy import masker

        m = masker(args.mask, args.salt_file, args.detector)
    result = convert(args.input, args.output, args.to, args.format, dedupe=args.dedupe, masker=m)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    head = f"{result.source} ({result.format}) -> {result.output} ({args.to})"
    print(f"{head}: {result.written} of {result.records} written")
    if result.masked:
        _print_masked(result.masked)
    if result.first_duplicate:
        print(f"  warning: {_duplicates(result.duplicates, result.first_duplicate)}; --dedupe drops them")
    for reason, count in result.rejected.most_common():
        print(f"  rejected {count} x {reason}")
    if result.rejected:
        print(f"  rejected records, with their line numbers: {result.rejects}")
    return 0


PII_SHOWN = 20  # places of personal data printed per file


def _pii(path: Path, quiet: bool):  # type: ignore[no-untyped-def]
    from ernie_ops.data.mask import scan_file
    from ernie_ops.privacy import default_masker

    shown = 0

    def report(line: int, where: str, type_: str, start: int, end: int) -> None:
        nonlocal shown
        if quiet or shown >= PII_SHOWN:
            return
        shown += 1
        print(f"{path}:{line}: pii: {type_} in {where} at characters {start}-{end}")

    return scan_file(path, default_masker(), report)


def _mask(args: argparse.Namespace) -> int:
    from ernie_ops.data.mask import mask_file
    from ernie_ops.privacy import masker

    if args.jobs is not None and args.jobs < 1:
        raise UserError(f"--jobs must be 1 or more, not {args.jobs}")
    m = masker(args.strategy, args.salt_file, args.detector)
    result = mask_file(args.input, args.output, m, jobs=args.jobs or _auto_jobs(args.input))
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(
        f"{result.source} -> {result.output} ({result.strategy}): personal data in {result.with_pii} "
        f"of {result.records} record(s)"
    )
    _print_masked(result)
    return 0


def _auto_jobs(path: Path) -> int:
    """Processes for a file big enough to repay starting them (a small one is done first).

    An uncompressed JSONL file is cut into byte ranges, one per usable CPU, 2 CPUs included: no
    process coordinates. On 2 CPUs (scripts/bench_pii.py, 250 MB, best of 2-3 interleaved) two
    ranges ran 1.83x as fast as one process with the machine otherwise idle, 1.07-1.22x beside
    one busy process of another session, and 0.94x beside two (the kernel shares the CPUs by
    session, so a busy neighbour leaves one CPU to the whole command); the CPU time of the two
    is 2% more than one's when idle. A .gz file is read, scanned and written by this process
    beside its workers: a worker per CPU but that one, and on 2 CPUs none (one process was
    measured faster there than two workers beside it on a busy machine)."""
    import os

    from ernie_ops.data.read import is_json_array

    try:
        large = path.stat().st_size > AUTO_JOBS_MB * 1_000_000
        if not large or is_json_array(path):
            return 1
    except (OSError, UserError):
        return 1  # mask_file says what is wrong with it
    cpus = len(os.sched_getaffinity(0))
    if path.suffix == ".gz":
        return min(cpus - 1, MAX_JOBS) if cpus > 2 else 1
    return min(cpus, MAX_JOBS)


def _print_masked(result) -> None:  # type: ignore[no-untyped-def]
    from ernie_ops.privacy import NER_NOTE

    if not result.found:
        print(f"  personal data: none found ({result.strategy} masking was on)")
    for type_, n in result.found.most_common():
        print(f"  masked {n} x {type_}")
    if result.not_json:
        print(f"  {result.not_json} line(s) were not JSON: masked as plain text")
    print(f"  note: {NER_NOTE}")


def _duplicates(count: int, first: tuple[int, int]) -> str:
    return (
        f"{count} exact duplicate record(s) (the first: line {first[0]} repeats line {first[1]}); "
        "ERNIEKit trains on every copy"
    )


def _preview(args: argparse.Namespace) -> int:
    from ernie_ops.data.preview import preview
    from ernie_ops.privacy import NO_MASK_ENV, default_masker, masking_on

    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    legend = "highlighted" if color else "in [[double brackets]]"
    print(f"# trained-on tokens (the loss mask ERNIEKit uses) are {legend}")
    if masking_on(args.mask):
        m = default_masker()
        print("# personal data is masked (<EMAIL_1>, ...; names of people are not found): --no-mask shows it")
    else:
        m = None
        print(f"# personal data is NOT masked (--no-mask or {NO_MASK_ENV}=1)")
    print()
    shown = 0
    for r in preview(args.file, args.tokenizer, args.n, color, args.format, m):
        print(f"--- {args.file}:{r.line}  ({r.tokens} tokens, {r.trained} trained on)")
        print(r.text)
        print()
        shown += 1
    if not shown:
        print(f"no SFT conversations found in {args.file}", file=sys.stderr)
        return 1
    return 0


def _split(args: argparse.Namespace) -> int:
    from ernie_ops.data.split import split

    r = split(args.input, args.eval_fraction, args.seed, args.out_dir)
    print(f"{r.train}: {r.n_train} records\n{r.eval}: {r.n_eval} records")
    if r.left_out:
        copies = "copy" if r.left_out == 1 else "copies"
        print(f"  {r.left_out} exact {copies} of eval records left out of train (they would leak eval)")
    return 0
