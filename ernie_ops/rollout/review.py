"""The review queue: answers that look wrong, kept for a person to judge (`ernie-ops review`).

An item is one JSON file in the queue directory (`runs/gateway/review/` by default), named by its
id (`<request id>-shadow`, `<request id>-judge-stable`, `<request id>-judge-candidate`) and written
atomically: a reader sees it whole or not at all, a crash leaves at most a hidden temporary file.
The gateway only creates items; `mark` rewrites one (atomically, under the directory's lock, so two
people marking at once both land in its history). Each item holds:

    id, request_id, time, route, reason (shadow-disagreement | judge), detail,
    judge {suite, item, name, score, detail, backend}      (judge items)
    request  the messages or prompt;  answers {stable|candidate: {model, url, text, finish_reason,
    tool_calls}}: content masked (`masked: true`) unless the gateway ran with --no-mask
    status   open | correct | wrong | ignored;  marks [{status, note, by, time}]

The gateway hands items to a `ReviewWriter`: a bounded queue and one thread that judges, masks and
writes them, so the request path never waits for the masker or the disk; a full queue drops the
item and counts it (`ernie_ops_gateway_review_dropped_total`).

Retention: items last written before the retention period are deleted (`prune`, run by the
gateway's writer every hour and by `ernie-ops gc`); a file goes whole (one unlink).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ernie_ops.errors import UserError
from ernie_ops.files import delete_older, write_text_atomic

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from ernie_ops.rollout.answers import Answer
    from ernie_ops.rollout.judge import LiveJudge
    from ernie_ops.validate.suite import SuiteItem

log = logging.getLogger(__name__)

FORMAT = "ernie-ops-review/1"
STATUSES = ("open", "correct", "wrong", "ignored")
REASONS = ("shadow-disagreement", "judge")
LOCK = ".lock"
_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]{0,127}")
PRUNE_EVERY_S = 3600.0


@dataclass
class Item:
    path: Path
    data: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.data.get("id", self.path.stem))

    @property
    def status(self) -> str:
        return str(self.data.get("status", "open"))

    @property
    def reason(self) -> str:
        return str(self.data.get("reason", ""))

    @property
    def time(self) -> float:
        value = self.data.get("time")
        return float(value) if isinstance(value, int | float) else 0.0


class ReviewQueue:
    """The queue directory: add, read, mark and prune items."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def path_of(self, item_id: str) -> Path:
        if not _ID.fullmatch(item_id):
            raise UserError(
                f"{item_id!r} is not a review item id",
                hint="ids look like 6751c0de-17-shadow; `ernie-ops review list` shows them",
            )
        return self.directory / f"{item_id}.json"

    def add(self, data: dict[str, Any]) -> Path:
        """Write a new item; an id already taken (a gateway restarted within the second it started,
        replicas sharing the queue) gets a suffix rather than replacing an item someone marked."""
        base, n = data["id"], 1
        while self.path_of(data["id"]).exists():
            n += 1
            data = {**data, "id": f"{base}.{n}"}
        return write_text_atomic(self.path_of(data["id"]), json.dumps(data, ensure_ascii=False, indent=1))

    def read(self) -> tuple[list[Item], list[str]]:
        """Every item, oldest first, and a problem line for each file that is not a whole item."""
        items: list[Item] = []
        problems: list[str] = []
        if not self.directory.is_dir():
            return items, problems
        for path in sorted(self.directory.glob("*.json")):
            if path.name.startswith("."):
                continue
            try:
                items.append(self._load(path))
            except UserError as err:
                problems.append(str(err))
        items.sort(key=lambda i: (i.time, i.id))
        return items, problems

    def get(self, item_id: str) -> Item:
        path = self.path_of(item_id)
        if not path.is_file():
            raise UserError(
                f"no review item {item_id} in {self.directory}",
                hint="`ernie-ops review list` shows the ids (or give --dir)",
            )
        return self._load(path)

    def mark(self, item_id: str, status: str, note: str = "", by: str = "") -> Item:
        if status not in STATUSES:
            raise UserError(f"unknown status {status!r}; expected one of {', '.join(STATUSES)}")
        with self._locked():
            item = self.get(item_id)
            mark = {"status": status, "note": note, "by": by, "time": round(time.time(), 3)}
            item.data["status"] = status
            item.data.setdefault("marks", []).append(mark)
            write_text_atomic(item.path, json.dumps(item.data, ensure_ascii=False, indent=1))
        return item

    def prune(self, older_than_s: float, now: float | None = None) -> list[Path]:
        """Delete items last written before the retention period; the deleted paths."""
        return delete_older(self.directory, "*.json", (time.time() if now is None else now) - older_than_s)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _load(self, path: Path) -> Item:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise UserError(f"{path}: cannot read it ({err.strerror or err})") from None
        except UnicodeDecodeError as err:
            raise UserError(f"{path}: not UTF-8 text at byte {err.start}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            what = "not valid JSON" if text.rstrip().endswith("}") else "truncated (a partial copy?)"
            raise UserError(
                f"{path}:{err.lineno}: {what}: {err.msg}; expected a whole review item (one JSON object)",
                hint="restore it, or delete it (the gateway writes items whole, so this is a copy or "
                "an edit gone wrong)",
            ) from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise UserError(f"{path}:1: not a review item; expected a JSON object with format {FORMAT!r}")
        return Item(path, data)


# -- what the gateway hands over ---------------------------------------------------------------


@dataclass(slots=True)
class Side:
    """One backend's answer to the request."""

    role: str
    url: str
    answer: Answer
    served: str | None = None  # the backend's served model name, when its answer names none

    def to_json(self) -> dict[str, Any]:
        a = self.answer
        return {
            "model": a.model or self.served,
            "url": self.url,
            "text": a.text,
            "finish_reason": a.finish_reason,
            "tool_calls": [t.to_json() for t in a.tool_calls],
        }


@dataclass(slots=True)
class Case:
    """A request whose answer(s) may go to the queue: a shadow disagreement (always), or an answer
    for the judge to score (`judged`: the side scored, `item`: the suite item it answered)."""

    request_id: str
    route: str
    body: dict[str, Any]  # the client's request
    sides: list[Side]
    reason: str
    detail: str = ""
    judged: Side | None = None
    item: SuiteItem | None = None
    time: float = field(default_factory=time.time)


class ReviewWriter:
    """Takes cases from the gateway's event loop without waiting, judges, masks and writes them
    in its own thread; counts what it wrote, passed and dropped on the gateway's registry."""

    def __init__(
        self,
        directory: Path,
        registry: CollectorRegistry,
        mask: bool = True,
        judge: LiveJudge | None = None,
        capacity: int = 256,
        retention_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ):
        from prometheus_client import Counter, Gauge

        self.queue = ReviewQueue(directory)
        self.mask = mask
        self.judge = judge
        self.retention_s = retention_s
        self.clock = clock
        self._cases: queue.Queue[Case | None] = queue.Queue(maxsize=capacity)
        self.items = Counter(
            "ernie_ops_gateway_review_items_total",
            "Answers put on the review queue, by reason (shadow-disagreement, judge).",
            ["reason"],
            registry=registry,
        )
        self.judged = Counter(
            "ernie_ops_gateway_judged_total",
            "Answers to a judge suite's prompts scored by the gateway's judge, by backend and verdict.",
            ["backend", "verdict"],
            registry=registry,
        )
        self.dropped = Counter(
            "ernie_ops_gateway_review_dropped_total",
            "Review cases dropped: the review queue's writer was behind (queue full) or could not write.",
            ["why"],
            registry=registry,
        )
        depth = Gauge(
            "ernie_ops_gateway_review_queue_depth", "Review cases waiting to be written.", registry=registry
        )
        depth.set_function(self._cases.qsize)
        for reason in REASONS:
            self.items.labels(reason)
        for why in ("full", "error"):
            self.dropped.labels(why)
        self.written = 0
        self._thread = threading.Thread(target=self._run, name="review-writer", daemon=True)
        self._thread.start()

    def submit(self, case: Case) -> bool:
        try:
            self._cases.put_nowait(case)
        except queue.Full:
            self.dropped.labels("full").inc()
            return False
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, then stop the thread."""
        with contextlib.suppress(queue.Full):
            self._cases.put(None, timeout=timeout)
        self._thread.join(timeout)

    def _run(self) -> None:
        last_prune = 0.0
        while True:
            if self.retention_s is not None and self.clock() - last_prune > PRUNE_EVERY_S:
                last_prune = self.clock()
                try:
                    for path in self.queue.prune(self.retention_s, last_prune):
                        log.info("review queue: deleted %s (past the retention period)", path.name)
                except OSError as err:
                    log.warning("review queue retention: %s", err)
            try:
                case = self._cases.get(timeout=60.0)
            except queue.Empty:
                continue
            if case is None:
                return
            try:
                self._write(case)
            except Exception as err:  # one bad case must not stop the writer
                self.dropped.labels("error").inc()
                log.warning("review queue: case of request %s not written: %s", case.request_id, err)

    def _write(self, case: Case) -> None:
        judge_info = None
        if case.judged is not None and case.item is not None and self.judge is not None:
            verdict = self.judge.verdict(case.item, case.judged.answer.text or "")
            flagged = verdict.value < self.judge.min_score
            self.judged.labels(case.judged.role, "flagged" if flagged else "pass").inc()
            if not flagged:
                return
            judge_info = {
                "suite": str(self.judge.suite.path.name),
                "item": case.item.id,
                "name": verdict.judge,
                "score": verdict.value,
                "min_score": self.judge.min_score,
                "detail": verdict.detail,
                "backend": case.judged.role,
            }
            case.detail = f"{verdict.judge} judge scored the {case.judged.role} answer {verdict.value:g}"
            if verdict.detail:
                case.detail += f": {verdict.detail}"
        self.queue.add(self.item_data(case, judge_info))
        self.items.labels(case.reason).inc()
        self.written += 1

    def item_data(self, case: Case, judge_info: dict[str, Any] | None) -> dict[str, Any]:
        suffix = "shadow" if case.reason == "shadow-disagreement" else f"judge-{case.judged.role}"  # type: ignore[union-attr]
        data: dict[str, Any] = {
            "format": FORMAT,
            "id": f"{case.request_id}-{suffix}",
            "request_id": case.request_id,
            "time": round(case.time, 3),
            "route": case.route,
            "reason": case.reason,
            "detail": case.detail,
        }
        if judge_info is not None:
            data["judge"] = judge_info
        request, answers = request_content(case.body), {side.role: side.to_json() for side in case.sides}
        if self.mask:
            request, answers = mask_content(request, answers)
        data["masked"] = self.mask
        data["request"] = request
        data["answers"] = answers
        data["status"] = "open"
        data["marks"] = []
        return data


def request_content(body: dict[str, Any]) -> Any:
    """What a person needs of a request: its messages (images as a size, not their bytes) or prompt."""
    if "messages" not in body:
        return body.get("prompt")
    messages = body["messages"]
    if not isinstance(messages, list):
        return messages
    out = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            content = [_without_image(part) for part in content]
            message = {**message, "content": content}
        out.append(message)
    return out


def _without_image(part: Any) -> Any:
    url = part.get("image_url") if isinstance(part, dict) else None
    url = url.get("url") if isinstance(url, dict) else url
    if isinstance(url, str) and url.startswith("data:"):
        return {"type": "image_url", "image_url": {"url": f"<image: {len(url)} bytes of data URL>"}}
    return part


def mask_content(request: Any, answers: dict[str, dict[str, Any]]) -> tuple[Any, dict[str, dict[str, Any]]]:
    """The request and the answers' texts and tool-call arguments masked with one placeholder
    numbering (an address in the prompt and in both answers is the same `<EMAIL_1>`); the model
    names, URLs and finish reasons are kept as they are."""
    from ernie_ops.privacy.masker import Scope, default_masker

    roles = list(answers)
    texts = [[answers[r]["text"], [t["arguments"] for t in answers[r]["tool_calls"]]] for r in roles]
    masked_request, masked_texts = default_masker().mask_value([request, texts], Scope())
    out = {}
    for role, (text, arguments) in zip(roles, masked_texts, strict=True):
        calls = [{**t, "arguments": a} for t, a in zip(answers[role]["tool_calls"], arguments, strict=True)]
        out[role] = {**answers[role], "text": text, "tool_calls": calls}
    return masked_request, out
