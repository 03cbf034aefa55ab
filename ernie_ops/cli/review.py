"""`ernie-ops review list|show|mark`: the gateway's review queue of wrong-looking answers (#19)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ernie_ops.cli.base import Subcommand

if TYPE_CHECKING:
    from ernie_ops.rollout.review import Item

DEFAULT_DIR = Path("runs/gateway/review")
STATUSES = ("open", "correct", "wrong", "ignored")  # as ernie_ops.rollout.review.STATUSES
REASONS = ("shadow-disagreement", "judge")


class Review(Subcommand):
    name = "review"
    help = "the gateway's review queue: answers that looked wrong (list, show, mark)"
    description = (
        "Read and mark the items the gateway put on its review queue: a shadow answer that disagreed "
        "with stable, or an answer to a --judge-suite prompt that its judge scored low. Content is "
        "shown as stored: PII-masked unless the gateway ran with --no-mask (the item then says so). "
        "Exit status: 0 done; 1 (list) some files are not whole items (each reported, the rest "
        "listed); 2 an unknown id, status or filter."
    )
    examples = (
        "ernie-ops review list --status open --since 24h",
        "ernie-ops review show 6751c0de-17-shadow",
        "ernie-ops review mark 6751c0de-17-shadow wrong --note 'candidate drops the unit'",
        "ernie-ops review list --reason judge --json | jq '.items[].id'",
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
        ls = self._action(actions, "list", "the items, oldest first, with filters", (0, 3))
        ls.add_argument("--status", choices=STATUSES, action="append", help="only these (repeatable)")
        ls.add_argument("--reason", choices=REASONS, action="append", help="only these (repeatable)")
        ls.add_argument(
            "--since", metavar="WHEN", help="only items since then: an age (24h, 7d) or a UTC date/time"
        )
        show = self._action(actions, "show", "one item: the request, both answers, why, its marks", (1,))
        show.add_argument("id", metavar="ID")
        mark = self._action(actions, "mark", "record a person's verdict on an item, with a note", (2,))
        mark.add_argument("id", metavar="ID")
        mark.add_argument("status", choices=STATUSES, metavar="STATUS", help=" | ".join(STATUSES))
        mark.add_argument("--note", default="", help="why (kept with the mark)")
        mark.add_argument("--by", help="who marks it (default: the login name)")

    def _action(
        self, actions: Any, name: str, help: str, examples: tuple[int, ...]
    ) -> argparse.ArgumentParser:
        p = actions.add_parser(
            name,
            help=help,
            description=help,
            epilog="examples:\n" + "\n".join(f"  {self.examples[i]}" for i in examples),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument(
            "--dir", type=Path, default=DEFAULT_DIR, help=f"the review queue (default {DEFAULT_DIR})"
        )
        p.add_argument("--json", action="store_true", help="JSON on stdout, for scripts")
        return p

    def run(self, args: argparse.Namespace) -> int:
        from ernie_ops.errors import UserError
        from ernie_ops.rollout.review import ReviewQueue

        queue = ReviewQueue(args.dir)
        if args.dir.exists() and not args.dir.is_dir():
            raise UserError(f"{args.dir} is not a directory", hint="give the gateway's --review-dir")
        if args.action == "list":
            return _list(queue, args)
        if args.action == "show":
            item = queue.get(args.id)
            print(json.dumps(item.data, indent=2, ensure_ascii=False) if args.json else describe(item))
            return 0
        item = queue.mark(args.id, args.status, args.note, args.by or _login())
        if args.json:
            print(json.dumps(item.data, indent=2, ensure_ascii=False))
        else:
            print(f"{item.id}: {item.status}" + (f" ({args.note})" if args.note else ""))
        return 0


def _list(queue: Any, args: argparse.Namespace) -> int:
    items, problems = queue.read()
    since = since_time(args.since) if args.since else None
    items = [
        i
        for i in items
        if (not args.status or i.status in args.status)
        and (not args.reason or i.reason in args.reason)
        and (since is None or i.time >= since)
    ]
    if args.json:
        rows = [{k: v for k, v in i.data.items() if k not in ("request", "answers")} for i in items]
        for row, item in zip(rows, items, strict=True):
            row["models"] = _models(item)
        print(json.dumps({"items": rows, "problems": problems}, indent=2, ensure_ascii=False))
    else:
        if items:
            print(f"{'ID':<28} {'TIME (UTC)':<19} {'REASON':<19} {'STATUS':<8} DETAIL")
        for item in items:
            detail = str(item.data.get("detail", ""))
            detail = detail if len(detail) <= 60 else detail[:57] + "..."
            print(f"{item.id:<28} {_when(item.time):<19} {item.reason:<19} {item.status:<8} {detail}")
        print(f"{len(items)} item(s) in {queue.directory}", file=sys.stderr)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


def since_time(text: str, now: float | None = None) -> float:
    """Seconds since the epoch from an age ('24h', '7d') or a UTC date ('2026-12-01', '2026-12-01T08:00')."""
    from ernie_ops.errors import UserError
    from ernie_ops.privacy.retention import parse_age

    try:
        return (time.time() if now is None else now) - parse_age(text)
    except UserError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UserError(
            f"--since {text!r} is neither an age nor a date",
            hint="e.g. --since 24h, --since 7d, --since 2026-12-01T08:00 (UTC)",
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def describe(item: Item) -> str:
    """An item for a person: what was asked, what each backend answered, why it is here."""
    d = item.data
    lines = [
        f"{item.id}  {d.get('reason')}  status {item.status}",
        f"  time     {_when(item.time)} UTC   route {d.get('route')}   request {d.get('request_id')}",
        f"  why      {d.get('detail', '')}",
    ]
    judge = d.get("judge")
    if isinstance(judge, dict):
        lines.append(
            f"  judge    {judge.get('name')} on item {judge.get('item')} of {judge.get('suite')}: "
            f"score {judge.get('score')} (needs {judge.get('min_score')}) for {judge.get('backend')}"
        )
    lines.append(
        "  content  PII-masked"
        if d.get("masked", True)
        else "  content  NOT MASKED: the gateway ran with --no-mask; this item holds personal data as sent"
    )
    lines.append("request:")
    lines += _indent(_request_text(d.get("request")))
    for role, answer in (d.get("answers") or {}).items():
        if not isinstance(answer, dict):
            continue
        lines.append(
            f"{role} ({answer.get('model')} at {answer.get('url')}, finish {answer.get('finish_reason')}):"
        )
        lines += _indent(str(answer.get("text") or ""))
        for call in answer.get("tool_calls") or ():
            lines.append(f"    tool call {call.get('name')}({call.get('arguments')})")
    marks = d.get("marks") or []
    if marks:
        lines.append("marks:")
    for m in marks:
        note = f": {m.get('note')}" if m.get("note") else ""
        lines.append(f"  {_when(m.get('time') or 0)} {m.get('by') or '?'} -> {m.get('status')}{note}")
    return "\n".join(lines)


def _request_text(request: Any) -> str:
    if isinstance(request, list):
        out = []
        for m in request:
            if isinstance(m, dict):
                content = m.get("content")
                text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
                out.append(f"[{m.get('role')}] {text}")
        return "\n".join(out)
    return str(request if request is not None else "")


def _indent(text: str) -> list[str]:
    return ["    " + line for line in text.splitlines()] or ["    (empty)"]


def _models(item: Item) -> dict[str, Any]:
    answers = item.data.get("answers") or {}
    return {role: a.get("model") for role, a in answers.items() if isinstance(a, dict)}


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


def _login() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""
