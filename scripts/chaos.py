#!/usr/bin/env python3
"""Chaos: hostile clients, adversarial files and recipes, signals, a full disk and races against the
real `ernie-ops` commands and the real embedded server (issue #14). No GPU.

Every attempt is classified:

  clean      the expected behaviour and exit code (0 ok, 1 a check failed, 2 a usage / input error,
             128+N after signal N), no traceback from our code in stdout / stderr / the server log
  wrong      it ended, but not as expected: another exit code or HTTP status, an error that does not
             name the field, a 413 only after the whole body was read, /health slower than 1 s
             during the attack, a flooded log
  traceback  a Python traceback through ernie-ops' own code (ernie_ops/, train/, serve/)
  hang       it passed its deadline and was killed (a connection the server never closed counts too)
  lost       an input changed or deleted, a temporary file left, a process left without its parent,
             a port left bound, a state file that lies, the server down

Everything lives in one temporary directory (removed at the end unless --keep); every process it
starts carries a marker in its environment, and whatever still carries it is ended by PID at the end
and on Ctrl-C; a tmpfs it mounts is unmounted. Exit 0 when every attempt is clean, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import http.client
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
AREAS = ("files", "signals", "recipes", "train", "serve", "http")
OUTCOMES = ("clean", "wrong", "traceback", "hang", "lost")
RANK = {name: i for i, name in enumerate(OUTCOMES)}  # the worst finding of an attempt is its outcome
TAG_VAR = "ERNIE_CHAOS_TAG"
HEALTH_TARGET_S = 1.0

EXAMPLES = """\
examples:
  scripts/chaos.py                                   # everything (about 10 minutes on 2 cores)
  scripts/chaos.py --quick                           # fewer repetitions: a self-test in ~2 minutes
  scripts/chaos.py --only files,recipes --quick      # two cheap areas (seconds)
  scripts/chaos.py --only http --out runs/chaos      # hostile HTTP; every attempt in runs/chaos/chaos.json
  scripts/chaos.py --only signals,train --seed 7     # the same random signal points as another --seed 7 run

areas: files (data convert/lint/split: outputs that are inputs, FIFOs, devices, .gz, umask, bad inputs),
signals (SIGTERM/SIGHUP/SIGINT mid-convert/lint/split of a large file), recipes (YAML bombs, FIFOs,
/dev/zero, deep YAML, bad overrides, huge recipes, bad values), train (same --run-name at once, an
output_dir holding another run, SIGKILL/SIGHUP/SIGTERM/SIGINT then --resume, a full tmpfs), serve
(signals to foreground and detached servers, two servers on one port, status/stop truthfulness, --port),
http (a keyed server under hostile bodies, fields, templates, connections; /health polled every 100 ms).
"""

# -------------------------------------------------------------------------------------------------
# results


@dataclass
class Attempt:
    area: str
    name: str
    command: str = ""
    outcome: str = "clean"
    seconds: float = 0.0
    detail: str = ""
    findings: list[str] = field(default_factory=list)
    started: float = 0.0  # wall clock, for the /health probe's window
    tag: str = ""  # the environment marker of every process it starts
    output: str = ""  # the tail of the last command's output (in the JSON, not on the progress line)

    def mark(self, outcome: str, finding: str) -> None:
        self.findings.append(f"{outcome}: {finding}")
        if RANK[outcome] > RANK[self.outcome]:
            self.outcome = outcome

    def note(self, text: str) -> None:
        self.findings.append(text)

    def as_json(self) -> dict[str, Any]:
        return {
            "area": self.area,
            "name": self.name,
            "outcome": self.outcome,
            "seconds": round(self.seconds, 3),
            "command": self.command,
            "detail": "; ".join(self.findings),
            "output": self.output,
        }


@dataclass
class Result:
    argv: list[str]
    rc: int | None  # None: hung (killed at the deadline)
    out: str
    err: str
    seconds: float

    @property
    def text(self) -> str:
        return self.out + "\n" + self.err

    def tail(self, n: int = 300) -> str:
        text = (self.err.strip() or self.out.strip()).replace("\n", " | ")
        return text[-n:]


class ChaosError(Exception):
    """The harness itself could not set an attempt up (reported as such, never as clean)."""


# -------------------------------------------------------------------------------------------------
# helpers


def our_traceback(text: str) -> str | None:
    """The first traceback in TEXT that passes through ernie-ops' own code, as 'Error at file:line'.

    A traceback only through other packages (ERNIEKit's own log tail, quoted in a diagnosis) is not
    ours to fix here."""
    for match in re.finditer(r"Traceback \(most recent call last\):\n", text):
        block = text[match.end() : match.end() + 20000]
        lines = block.splitlines()
        frames: list[tuple[str, str]] = []
        error = ""
        for line in lines:
            m = re.match(r'\s*File "([^"]+)", line (\d+)', line)
            if m:
                frames.append((m.group(1), m.group(2)))
            elif line and not line[0].isspace() and not line.startswith("Traceback"):
                error = line.strip()
                break
        mine = [f for f in frames if _is_ours(f[0])]
        if mine:
            return f"{error[:200]} at {mine[-1][0]}:{mine[-1][1]}"
    return None


def _is_ours(path: str) -> bool:
    if "/site-packages/ernie_ops/" in path:
        return True
    try:
        rel = Path(path).resolve().relative_to(REPO)
    except (ValueError, OSError):
        return False
    return rel.parts[:1] in (("ernie_ops",), ("train",), ("serve",))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def describe(path: Path) -> tuple[Any, ...]:
    """What a path is now: (kind, content hash or link target or device)."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return ("absent",)
    if stat.S_ISLNK(st.st_mode):
        return ("symlink", os.readlink(path))
    if stat.S_ISREG(st.st_mode):
        return ("file", sha256(path))
    if stat.S_ISFIFO(st.st_mode):
        return ("fifo",)
    if stat.S_ISCHR(st.st_mode):
        return ("chardev", st.st_rdev)
    if stat.S_ISDIR(st.st_mode):
        return ("dir",)
    return ("other", st.st_mode)


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    """name -> (size, mtime_ns) of every file under ROOT."""
    out = {}
    for p in sorted(root.rglob("*")):
        with contextlib.suppress(OSError):
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def hidden_tmps(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob(".*.tmp")) if directory.is_dir() else []


def port_bound(port: int) -> bool:
    for host in ("127.0.0.1", "0.0.0.0"):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                return True
    return False


def port_holder(port: int, wait: float = 5.0) -> str | None:
    """Who still listens on PORT after up to WAIT seconds (None: nobody)."""
    deadline = time.monotonic() + wait
    while port_bound(port):
        if time.monotonic() > deadline:
            for conn in psutil.net_connections(kind="tcp"):
                if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
                    try:
                        proc = psutil.Process(conn.pid) if conn.pid else None
                        who = f"pid {conn.pid}: {' '.join(proc.cmdline())[:120]}" if proc else "no process"
                    except psutil.Error:
                        who = f"pid {conn.pid}"
                    return f"port {port} still bound ({who})"
            return f"port {port} still bound (no listener found: a socket of the kernel)"
        time.sleep(0.25)
    return None


def http_call(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 20.0,
) -> tuple[int, bytes]:
    """(status, body); status 0 when the server closed the connection without answering. A timeout
    raises TimeoutError (the caller's hang)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
        return 0, b""
    except TimeoutError as err:
        raise TimeoutError(f"no answer within {timeout:.0f} s") from err
    finally:
        conn.close()


def status_of(data: bytes) -> int:
    m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return int(m.group(1)) if m else 0


PROBE = r"""
import http.client, sys, time
port, out = int(sys.argv[1]), sys.argv[2]
with open(out, "a", buffering=1) as f:
    while True:
        t0 = time.monotonic(); wall = time.time(); status = -1
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/health"); status = c.getresponse().status; c.close()
        except Exception:
            status = -1
        dt = time.monotonic() - t0
        f.write(f"{wall:.3f} {dt:.4f} {status}\n")
        time.sleep(max(0.0, 0.1 - dt))
"""


# -------------------------------------------------------------------------------------------------
# the harness


class Chaos:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.quick: bool = args.quick
        self.seed: int = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 30)
        self.rng = random.Random(self.seed)
        self.root = Path(tempfile.mkdtemp(prefix="ernie-chaos-"))
        self.run_tag = f"chaos-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.attempts: list[Attempt] = []
        self.notes: list[str] = []
        self.mounts: list[Path] = []
        self.current: Attempt | None = None
        self.counter = 0
        self.exe = self._exe()
        self.model: Path | None = None
        self.health_summary: dict[str, Any] = {}
        self.ports_used: set[int] = set()

    # ---------------------------------------------------------------- processes

    @staticmethod
    def _exe() -> list[str]:
        script = Path(sys.executable).parent / "ernie-ops"
        return [str(script)] if script.exists() else [sys.executable, "-m", "ernie_ops.cli.main"]

    def env(self, tag: str | None = None, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("ERNIE_OPS_API_KEY",)}
        env.update(PYTHONUNBUFFERED="1", COLUMNS="200", XDG_STATE_HOME=str(self.root / "state"))
        env[TAG_VAR] = tag or self.attempt_tag()
        env.update(extra)
        return env

    def attempt_tag(self) -> str:
        return self.current.tag if self.current else f"{self.run_tag}:outside:"

    def spawn(
        self,
        argv: list[str],
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        umask: int = -1,
    ) -> tuple[subprocess.Popen[bytes], Path, Path]:
        io = self.root / "io"
        io.mkdir(exist_ok=True)
        self.counter += 1
        out, err = io / f"{self.counter}.out", io / f"{self.counter}.err"
        with open(out, "wb") as fo, open(err, "wb") as fe:
            proc = subprocess.Popen(
                argv,
                cwd=cwd or self.root,
                env=env or self.env(),
                stdin=subprocess.DEVNULL,
                stdout=fo,
                stderr=fe,
                start_new_session=True,
                umask=umask,
            )
        return proc, out, err

    @staticmethod
    def finish(proc: subprocess.Popen[bytes], out: Path, err: Path, timeout: float, started: float) -> Result:
        try:
            rc: int | None = proc.wait(timeout=max(0.0, timeout - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            rc = None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
        return Result(
            [str(a) for a in proc.args],  # type: ignore[union-attr]
            rc,
            out.read_text(errors="replace"),
            err.read_text(errors="replace"),
            time.monotonic() - started,
        )

    def run(
        self,
        args: list[str],
        *,
        timeout: float = 30.0,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        umask: int = -1,
        cli: bool = True,
    ) -> Result:
        argv = [*self.exe, *args] if cli else args
        if self.current is not None and not self.current.command:
            self.current.command = self.shown(argv)
        started = time.monotonic()
        proc, out, err = self.spawn(argv, cwd=cwd, env=env, umask=umask)
        return self.finish(proc, out, err, timeout, started)

    def shown(self, argv: list[str]) -> str:
        parts = []
        for a in argv:
            a = str(a).replace(str(self.root), "$T")
            if a == str(self.exe[0]) or a.endswith("/ernie-ops"):
                a = "ernie-ops"
            parts.append(a if len(a) < 120 else a[:100] + f"...({len(a)} chars)")
        return " ".join(parts)

    @staticmethod
    def tagged(prefix: str) -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter():
            if proc.pid == os.getpid():
                continue
            try:
                if (
                    proc.environ().get(TAG_VAR, "").startswith(prefix)
                    and proc.status() != psutil.STATUS_ZOMBIE
                ):
                    found.append(proc)
            except (psutil.Error, OSError):
                continue
        return found

    @staticmethod
    def end(procs: list[psutil.Process], grace: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after GRACE, each by its PID."""
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=grace)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGKILL)
        psutil.wait_procs(alive, timeout=grace)

    def leftovers(self, tag: str, wait: float = 5.0, keep: tuple[int, ...] = ()) -> list[psutil.Process]:
        """Processes of an attempt still alive after WAIT seconds (then ended)."""
        deadline = time.monotonic() + wait
        while True:
            procs = [p for p in self.tagged(tag) if p.pid not in keep]
            if not procs or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        return procs

    @staticmethod
    def proc_line(proc: psutil.Process) -> str:
        try:
            cmd = " ".join(proc.cmdline())[:140]
            return f"pid {proc.pid} (parent {proc.ppid()}): {cmd}"
        except psutil.Error:
            return f"pid {proc.pid}"

    # ---------------------------------------------------------------- attempts

    @contextlib.contextmanager
    def attempt(self, area: str, name: str, command: str = "", reap: bool = True) -> Iterator[Attempt]:
        self.counter += 1
        tag = f"{self.run_tag}:{self.counter}:"
        att = Attempt(area, name, command=command, started=time.time(), tag=tag)
        self.current = att
        t0 = time.monotonic()
        interrupted = False
        try:
            yield att
        except ChaosError as err:
            att.mark("wrong", f"harness: {err}")
        except TimeoutError as err:
            att.mark("hang", str(err))
        except KeyboardInterrupt:  # ours: end what the attempt started, and do not count it
            interrupted = True
            self.end(self.tagged(tag), grace=1.0)
            raise
        except Exception as err:  # the harness must go on to the next attempt
            att.mark("wrong", f"harness error {type(err).__name__}: {err}")
        finally:
            self.current = None
            if not interrupted:
                if reap:
                    left = self.leftovers(tag, wait=5.0)
                    if left:
                        att.mark("lost", "left running: " + "; ".join(self.proc_line(p) for p in left[:4]))
                        self.end(left, grace=1.0)
                att.seconds = time.monotonic() - t0
                self.attempts.append(att)
                self.progress(att)

    def progress(self, att: Attempt) -> None:
        detail = "; ".join(att.findings)
        if len(detail) > 220:
            detail = detail[:217] + "..."
        print(f"  {att.area:<8} {att.name:<44} {att.outcome:<9} {att.seconds:6.1f} s  {detail}", flush=True)

    def check(
        self,
        att: Attempt,
        res: Result,
        rcs: tuple[int, ...] | set[int],
        within: float | None = None,
        says: str | None = None,
    ) -> bool:
        """The common judgement of a finished command; True when it ended (not hung)."""
        att.output = f"exit {res.rc}: {res.tail(400)}"
        if res.rc is None:
            att.mark("hang", f"no exit after {res.seconds:.0f} s (killed); output: {res.tail()}")
            return False
        rc = res.rc if res.rc >= 0 else 128 - res.rc
        if rc not in rcs:
            att.mark("wrong", f"exit {rc}, expected {'/'.join(map(str, sorted(rcs)))}: {res.tail()}")
        tb = our_traceback(res.text)
        if tb:
            att.mark("traceback", tb)
        if within is not None and res.seconds > within:
            att.mark("wrong", f"took {res.seconds:.1f} s (> {within:.0f} s)")
        if says and says.lower() not in res.text.lower():
            att.mark("wrong", f"the output does not mention {says!r}: {res.tail()}")
        return True

    def unchanged(self, att: Attempt, before: dict[Path, tuple[Any, ...]]) -> None:
        for path, was in before.items():
            now = describe(path)
            if now != was:
                att.mark("lost", f"{self.rel(path)} changed: {was[0]} -> {now[0]}")

    def no_tmp(self, att: Attempt, *dirs: Path) -> None:
        for d in dirs:
            left = hidden_tmps(d)
            if left:
                att.mark("lost", f"temporary file left in {self.rel(d)}: {', '.join(left[:3])}")
                for name in left:
                    with contextlib.suppress(OSError):
                        (d / name).unlink()

    def rel(self, path: Path | str) -> str:
        return str(path).replace(str(self.root), "$T")

    def snap(self, *paths: Path) -> dict[Path, tuple[Any, ...]]:
        return {p: describe(p) for p in paths}

    def dir(self, name: str) -> Path:
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def free_port(self) -> int:
        for _ in range(200):
            port = self.rng.randrange(20000, 45000)
            if port not in self.ports_used and not port_bound(port):
                self.ports_used.add(port)
                return port
        raise ChaosError("no free port found")

    # ---------------------------------------------------------------- set-up shared by areas

    def tiny_model(self) -> Path:
        if self.model is None:
            target = self.root / "models" / "tiny"
            with self.attempt("setup", "tiny-model builds") as att:
                res = self.run(["tiny-model", str(target)], timeout=180)
                self.check(att, res, {0})
            if not (target / "config.json").is_file():
                raise SystemExit(f"chaos: the tiny model could not be built: {self.attempts[-1].findings}")
            self.model = target
        return self.model

    def write_chats(self, path: Path, n: int = 40, bad: int = 2, salt: str = "") -> Path:
        lines = []
        for i in range(n):
            record = {
                "messages": [
                    {"role": "user", "content": f"{salt}question {i}: is {i} even?"},
                    {"role": "assistant", "content": "yes" if i % 2 == 0 else "no"},
                ]
            }
            lines.append(json.dumps(record))
            if bad and i % max(1, n // bad) == 0:
                lines.append('{"messages": [broken')
        path.write_text("\n".join(lines) + "\n")
        return path

    # =================================================================================================
    # area: files

    def area_files(self) -> None:
        d = self.dir("files")
        chats = self.write_chats(d / "chats.jsonl")
        convert = ["data", "convert"]
        to = ["--to", "erniekit-sft"]

        def refused(
            name: str, inp: Path, out: Path, extra: tuple[Path, ...] = (), quick: bool = True
        ) -> None:
            if self.quick and not quick:
                return
            watch = self.snap(inp, out, *extra)
            with self.attempt("files", name) as att:
                res = self.run([*convert, str(inp), str(out), *to], timeout=20)
                if self.check(att, res, {2}, within=10):
                    self.unchanged(att, watch)
                self.no_tmp(att, out.parent, inp.parent)

        # 1: the output is the input, directly, through a symlink, a hard link, another spelling
        refused("convert-out-is-input", chats, chats)
        link = d / "link.jsonl"
        link.symlink_to(chats)
        refused("convert-out-symlink-to-input", chats, link)
        hard = d / "hard.jsonl"
        os.link(chats, hard)
        refused("convert-out-hardlink-to-input", chats, hard, quick=False)
        refused(
            "convert-out-input-other-spelling", chats, d / "." / ".." / d.name / "chats.jsonl", quick=False
        )
        # the derived rejects path is the input: convert X.rejects.jsonl X.jsonl (and X.jsonl.gz)
        rej_in = self.write_chats(d / "x.rejects.jsonl", salt="r")
        refused("convert-rejects-path-is-input", rej_in, d / "x.jsonl", (d / "x.jsonl",))
        refused(
            "convert-rejects-path-is-input-gz", rej_in, d / "x.jsonl.gz", (d / "x.jsonl.gz",), quick=False
        )
        (d / "y.rejects.jsonl").symlink_to(chats)
        refused(
            "convert-rejects-path-symlink-to-input",
            chats,
            d / "y.jsonl",
            (d / "y.jsonl", d / "y.rejects.jsonl"),
        )
        # outputs that are not regular files: a FIFO, a character device, /dev/null through a link
        fifo = d / "out.fifo"
        os.mkfifo(fifo)
        refused("convert-out-fifo", chats, fifo)
        os.mkfifo(d / "z.rejects.jsonl")
        refused(
            "convert-rejects-path-fifo",
            chats,
            d / "z.jsonl",
            (d / "z.jsonl", d / "z.rejects.jsonl"),
            quick=False,
        )
        null = d / "null"
        try:
            os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a /dev/null of our own
            refused("convert-out-char-device(/dev/null)", chats, null)
        except OSError as err:
            self.notes.append(
                f"files: mknod not permitted ({err.strerror}); /dev/null only through a symlink"
            )
        devnull_link = d / "devnull.jsonl"
        devnull_link.symlink_to("/dev/null")
        refused("convert-out-symlink-to-/dev/null", chats, devnull_link, (Path("/dev/null"),))
        refused("convert-out-directory", chats, self.dir("files/adir"), quick=False)

        # 3: .gz output is gzip; outputs follow the umask
        plain = d / "plain.jsonl"
        with self.attempt("files", "convert-plain-reference") as att:
            res = self.run([*convert, str(chats), str(plain), *to], timeout=20)
            self.check(att, res, {0})
        gz = d / "gz-out.jsonl.gz"
        with self.attempt("files", "convert-gz-output-is-gzip") as att:
            res = self.run([*convert, str(chats), str(gz), *to], timeout=20)
            if self.check(att, res, {0}):
                data = gz.read_bytes() if gz.is_file() else b""
                if data[:2] != b"\x1f\x8b":
                    att.mark("wrong", f"{self.rel(gz)} is not gzip (starts {data[:8]!r})")
                elif plain.is_file() and gzip.decompress(data) != plain.read_bytes():
                    att.mark("wrong", "the gzip output decompresses to other records than the plain output")
            self.no_tmp(att, d)
        for mask in (0o077, 0o002) if not self.quick else (0o077,):
            out = d / f"umask-{mask:03o}.jsonl"
            with self.attempt("files", f"convert-follows-umask-{mask:03o}") as att:
                res = self.run([*convert, str(chats), str(out), *to], timeout=20, umask=mask)
                if self.check(att, res, {0}):
                    mode_wanted = 0o666 & ~mask
                    for p in (out, d / f"umask-{mask:03o}.rejects.jsonl"):
                        mode = stat.S_IMODE(p.stat().st_mode) if p.exists() else None
                        if mode != mode_wanted:
                            att.mark(
                                "wrong",
                                f"{p.name} mode {mode and oct(mode)}, umask {mask:03o} "
                                f"wants {oct(mode_wanted)}",
                            )
        if not self.quick:
            sd = self.dir("files/split-umask")
            src = self.write_chats(sd / "all.jsonl", bad=0)
            with self.attempt("files", "split-follows-umask-077") as att:
                res = self.run(
                    ["data", "split", str(src), "--eval-fraction", "0.25"], timeout=20, umask=0o077
                )
                if self.check(att, res, {0}):
                    for p in (sd / "all-train.jsonl", sd / "all-eval.jsonl"):
                        mode = stat.S_IMODE(p.stat().st_mode) if p.exists() else None
                        if mode != 0o600:
                            att.mark("wrong", f"{p.name} mode {mode and oct(mode)}, umask 077 wants 0o600")

        # two converts into one output at once: one whole result, no temporary file
        other = self.write_chats(d / "other.jsonl", salt="other ")
        plain_other = d / "plain-other.jsonl"
        self.run([*convert, str(other), str(plain_other), *to], timeout=20)
        for i in range(1 if self.quick else 3):
            shared = d / f"race-{i}.jsonl"
            with self.attempt("files", f"convert-two-at-once-same-output-{i}") as att:
                started = time.monotonic()
                a = self.spawn([*self.exe, *convert, str(chats), str(shared), *to])
                b = self.spawn([*self.exe, *convert, str(other), str(shared), *to])
                att.command = self.shown([*self.exe, *convert, "A|B", str(shared), *to]) + "  (twice at once)"
                ra, rb = self.finish(*a, 30, started), self.finish(*b, 30, started)
                ok = self.check(att, ra, {0, 2}) & self.check(att, rb, {0, 2})
                if ok:
                    if 0 not in (ra.rc, rb.rc):
                        att.mark("wrong", "neither convert succeeded")
                    got = shared.read_bytes() if shared.is_file() else b""
                    if got not in (plain.read_bytes(), plain_other.read_bytes()):
                        att.mark(
                            "lost", f"{shared.name} is neither input's whole conversion ({len(got)} bytes)"
                        )
                self.no_tmp(att, d)

        # inputs that must be refused quickly or read without a traceback (lint, convert, split)
        loop_a, loop_b = d / "loop-a.jsonl", d / "loop-b.jsonl"
        loop_a.symlink_to(loop_b)
        loop_b.symlink_to(loop_a)
        in_fifo = d / "in.fifo"
        os.mkfifo(in_fifo)
        deep = d / "deep.jsonl"
        deep.write_text(
            chats.read_text() + "[" * 100_000 + "]" * 100_000 + "\n" + '{"messages": ' + "[" * 50_000 + "\n"
        )
        trunc = d / "trunc.jsonl.gz"
        trunc.write_bytes(gzip.compress(chats.read_bytes() * 20)[:300])
        fake_gz = d / "fake.jsonl.gz"
        fake_gz.write_bytes(chats.read_bytes())
        binary = d / "binary.jsonl"
        binary.write_bytes(b"\x00\xff\xfe" * 1000 + b"\n" + b'{"messages": "\xc3\x28"}\n' + b"\r\n" * 10)
        empty = d / "empty.jsonl"
        empty.write_bytes(b"")
        long_line = d / "long-line.jsonl"
        long_line.write_text('{"messages": [{"role": "user", "content": "' + "x" * 20_000_000 + '"}]')
        cases: list[tuple[str, Path, set[int], float | None, bool]] = [
            ("symlink-loop", loop_a, {2}, 10, True),
            ("fifo", in_fifo, {2}, 10, True),
            ("/dev/zero", Path("/dev/zero"), {2}, 10, True),
            ("directory", self.dir("files/indir"), {2}, 10, False),
            ("missing", d / "missing.jsonl", {2}, 10, False),
            ("deeply-nested-json", deep, {0, 1, 2}, None, True),
            ("truncated-gz", trunc, {1, 2}, None, True),
            ("gz-that-is-not-gzip", fake_gz, {1, 2}, None, False),
            ("binary-and-bad-utf8", binary, {0, 1, 2}, None, False),
            ("empty", empty, {0, 1, 2}, None, False),
            ("20MB-single-line-no-newline", long_line, {0, 1, 2}, None, False),
        ]
        for label, path, rcs, within, core in cases:
            if self.quick and not core:
                continue
            for verb in ("lint", "convert", "split"):
                if verb == "split" and label not in ("symlink-loop", "fifo", "/dev/zero", "truncated-gz"):
                    continue
                outdir = self.dir(f"files/out-{verb}-{re.sub(r'[^a-z0-9]+', '-', label)}")
                watch = self.snap(path) if path.exists() and not path.is_dir() else {}
                with self.attempt("files", f"{verb}-input-{label}") as att:
                    if verb == "lint":
                        args = ["data", "lint", str(path)]
                        want = rcs
                    elif verb == "convert":
                        args = [*convert, str(path), str(outdir / "out.jsonl"), *to]
                        want = rcs
                    else:
                        args = ["data", "split", str(path), "--out-dir", str(outdir)]
                        want = rcs
                    res = self.run(args, timeout=30 if within is None else 20)
                    if self.check(att, res, want, within=within):
                        self.unchanged(att, watch)
                        if verb == "convert" and res.rc not in (0, None) and (outdir / "out.jsonl").exists():
                            att.mark("lost", "a failed convert left its output behind")
                    self.no_tmp(att, outdir)

        # split outputs that are the input or a FIFO
        sd = self.dir("files/split")
        src = self.write_chats(sd / "all.jsonl", bad=0)
        (sd / "all-train.jsonl").symlink_to(src)
        watch = self.snap(src, sd / "all-train.jsonl")
        with self.attempt("files", "split-output-symlink-to-input") as att:
            res = self.run(["data", "split", str(src)], timeout=20)
            if self.check(att, res, {2}, within=10):
                self.unchanged(att, watch)
            self.no_tmp(att, sd)
        if not self.quick:
            sd2 = self.dir("files/split-fifo")
            src2 = self.write_chats(sd2 / "all.jsonl", bad=0)
            os.mkfifo(sd2 / "all-eval.jsonl")
            watch = self.snap(src2, sd2 / "all-eval.jsonl", sd2 / "all-train.jsonl")
            with self.attempt("files", "split-output-fifo") as att:
                res = self.run(["data", "split", str(src2)], timeout=20)
                if self.check(att, res, {2}, within=10):
                    self.unchanged(att, watch)
                self.no_tmp(att, sd2)

    # =================================================================================================
    # area: signals

    def big_file(self) -> Path:
        d = self.dir("signals")
        big = d / "big.jsonl"
        if not big.exists():
            r = random.Random(1)
            block = []
            for i in range(4000):
                record = {
                    "messages": [
                        {"role": "user", "content": f"question {i} " + "x" * r.randint(20, 200)},
                        {"role": "assistant", "content": f"answer {i} " + "y" * r.randint(20, 200)},
                    ]
                }
                block.append(json.dumps(record))
                if i % 500 == 0:
                    block.append('{"messages": [broken')
            chunk = ("\n".join(block) + "\n").encode()
            reps = (60 if self.quick else 120) * (1 << 20) // len(chunk)
            with open(big, "wb") as f:
                for _ in range(reps):
                    f.write(chunk)
        return big

    def area_signals(self) -> None:
        big = self.big_file()
        d = big.parent
        big_sha = sha256(big)
        kinds = {
            "convert": lambda out: [
                "data",
                "convert",
                str(big),
                str(out / "big-sft.jsonl"),
                "--to",
                "erniekit-sft",
            ],
            "convert-gz": lambda out: [
                "data",
                "convert",
                str(big),
                str(out / "big-sft.jsonl.gz"),
                "--to",
                "erniekit-sft",
            ],
            "split": lambda out: ["data", "split", str(big), "--out-dir", str(out), "--eval-fraction", "0.1"],
            "lint": lambda out: ["data", "lint", str(big)],
        }
        baseline: dict[str, tuple[Result, dict[str, tuple[Any, ...]]]] = {}

        def outputs(out: Path) -> dict[str, tuple[Any, ...]]:
            return {p.name: describe(p) for p in sorted(out.iterdir())} if out.is_dir() else {}

        def base(kind: str) -> tuple[Result, dict[str, tuple[Any, ...]]]:
            if kind not in baseline:
                out = self.dir(f"signals/base-{kind}")
                with self.attempt("signals", f"baseline-{kind}-completes") as att:
                    res = self.run(kinds[kind](out), timeout=180)
                    self.check(att, res, {1} if kind == "lint" else {0})
                    att.note(f"{res.seconds:.1f} s")
                baseline[kind] = (res, outputs(out))
            return baseline[kind]

        n = 3 if self.quick else 16
        signals = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
        for i in range(n):
            sig = signals[i % 3] if i < 3 else self.rng.choice(signals)
            kind = ("convert", "convert-gz", "split")[i % 3] if i < 3 else self.rng.choice(list(kinds))
            ref, ref_outputs = base(kind)
            out = self.dir(f"signals/run-{i}")
            old: dict[str, tuple[Any, ...]] = {}
            if kind != "lint" and self.rng.random() < 0.5:  # an older output that must survive an interrupt
                for name in ref_outputs:
                    (out / name).write_bytes(b"older output\n")
                old = outputs(out)
            delay = self.rng.uniform(0.05, max(0.3, ref.seconds * 1.1))
            name = f"{signal.Signals(sig).name}-at-{delay:.2f}s-{kind}{'-over-old' if old else ''}"
            with self.attempt("signals", name) as att:
                argv = [*self.exe, *kinds[kind](out)]
                att.command = (
                    self.shown(argv) + f"  (kill -{signal.Signals(sig).name[3:]} after {delay:.2f} s)"
                )
                started = time.monotonic()
                proc, po, pe = self.spawn(argv)
                time.sleep(delay)
                sent = proc.poll() is None
                if sent:
                    os.kill(proc.pid, sig)
                res = self.finish(proc, po, pe, 60, started)
                finished = {0} if kind != "lint" else {1}
                if not self.check(att, res, {128 + sig} | finished):
                    continue
                if not sent:
                    att.note("finished before the signal")
                now = outputs(out)
                if res.rc in finished:
                    if kind != "lint" and now != ref_outputs:
                        att.mark(
                            "lost",
                            f"completed, but the outputs differ from an undisturbed run: {sorted(now)}",
                        )
                elif kind != "lint" and now != old:
                    # each output must be its old self or the whole new one, and all of one kind
                    state: dict[str, str] = {}
                    for fname in sorted(set(now) | set(old) | set(ref_outputs)):
                        is_old = now.get(fname, ("absent",)) == old.get(fname, ("absent",))
                        is_new = now.get(fname, ("absent",)) == ref_outputs.get(fname, ("absent",))
                        state[fname] = "old" if is_old else "new" if is_new else "broken"
                    shown = ", ".join(f"{k}: {v}" for k, v in state.items())
                    if "broken" in state.values():
                        att.mark(
                            "lost",
                            f"exit {res.rc}, and an output is neither its old content nor whole: {shown}",
                        )
                    elif set(state.values()) == {"old", "new"}:
                        att.mark(
                            "wrong", f"exit {res.rc} between its outputs: some replaced, some not ({shown})"
                        )
                    else:
                        att.note(f"exit {res.rc}, but every output was already complete ({shown})")
                if sha256(big) != big_sha:
                    att.mark("lost", "the input changed")
                self.no_tmp(att, out, d)

    # =================================================================================================
    # area: recipes

    def area_recipes(self) -> None:
        d = self.dir("recipes")
        tiny = self.tiny_model()
        data = self.dir("recipes/data")
        for name in ("sft-train.jsonl", "sft-eval.jsonl"):
            shutil.copy(REPO / "recipes" / "data" / name, data / name)
        base_text = (REPO / "recipes" / "tiny" / "sft_lora_cpu.yaml").read_text()
        base_text = base_text.replace("recipes/data/", f"{data}/").replace("runs/tiny-dense", str(tiny))
        good = d / "good.yaml"
        good.write_text(base_text)
        with self.attempt("recipes", "check-the-unharmed-recipe") as att:
            self.check(att, self.run(["check", str(good)]), {0})

        def recipe(name: str, text: str | bytes) -> Path:
            p = d / name
            if isinstance(text, bytes):
                p.write_bytes(text)
            else:
                p.write_text(text)
            return p

        def attack(
            name: str,
            args: list[str],
            rcs: set[int],
            within: float | None = 15,
            says: str | None = None,
            quick: bool = True,
            watch: tuple[Path, ...] = (),
            timeout: float = 30,
        ) -> Attempt | None:
            if self.quick and not quick:
                return None
            before = self.snap(*watch)
            with self.attempt("recipes", name) as att:
                res = self.run(args, timeout=timeout)
                if self.check(att, res, rcs, within=within, says=says):
                    self.unchanged(att, before)
            return att

        laughs = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
        for i in range(1, 10):
            laughs.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
        bomb = recipe("alias-bomb.yaml", base_text + "\n" + "\n".join(laughs) + "\n")
        attack("check-yaml-alias-bomb+override", ["check", str(bomb), "seed=1"], {1, 2}, watch=(bomb,))
        attack("train-yaml-alias-bomb", ["train", str(bomb), "--dry-run"], {1, 2}, quick=False)
        profile_bomb = recipe("profile-bomb.yaml", f"model: {tiny}\n" + "\n".join(laughs) + "\n")
        attack(
            "serve-profile-alias-bomb", ["serve", str(profile_bomb), "--print-command"], {1, 2}, quick=False
        )
        merge_bomb = recipe(
            "merge-bomb.yaml",
            base_text
            + "\n"
            + "\n".join(
                ["m0: &m0 {k0: 1}"]
                + [f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}], k{i}: {i}}}" for i in range(1, 25)]
            )
            + "\n",
        )
        attack("check-yaml-merge-key-bomb", ["check", str(merge_bomb)], {1, 2}, quick=False)

        # `check` reports a recipe it cannot read as a failed check (1) or a usage error (2)
        fifo = d / "fifo-recipe.yaml"
        os.mkfifo(fifo)
        attack("check-recipe-fifo", ["check", str(fifo)], {1, 2}, within=10, watch=(fifo,))
        attack("train-recipe-fifo", ["train", str(fifo)], {1, 2}, within=10, quick=False)
        zero = d / "zero.yaml"
        zero.symlink_to("/dev/zero")
        attack("check-recipe-/dev/zero", ["check", str(zero)], {1, 2}, within=10)
        attack("train-recipe-/dev/zero", ["train", str(zero)], {1, 2}, within=10, quick=False)
        attack(
            "check-recipe-directory",
            ["check", str(self.dir("recipes/dir.yaml"))],
            {1, 2},
            within=10,
            quick=False,
        )
        loop = d / "loop.yaml"
        loop.symlink_to(d / "loop2.yaml")
        (d / "loop2.yaml").symlink_to(loop)
        attack("check-recipe-symlink-loop", ["check", str(loop)], {1, 2}, within=10)
        data_fifo = data / "train.fifo"
        os.mkfifo(data_fifo)
        attack(
            "check-dataset-fifo", ["check", str(good), f"train_dataset_path={data_fifo}"], {1, 2}, within=10
        )
        attack(
            "check-dataset-/dev/zero", ["check", str(good), "train_dataset_path=/dev/zero"], {1, 2}, within=10
        )
        attack(
            "train-dataset-/dev/zero",
            ["train", str(good), "train_dataset_path=/dev/zero", "--runs-dir", str(d / "runs")],
            {1, 2},
            within=10,
            quick=False,
        )
        data_loop = data / "loop.jsonl"
        data_loop.symlink_to(data_loop)
        attack("check-dataset-symlink-loop", ["check", str(good), f"train_dataset_path={data_loop}"], {1, 2})

        deep_map = recipe("deep-map.yaml", base_text + "deep: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n")
        attack("check-5000-deep-yaml-mapping", ["check", str(deep_map)], {1, 2})
        deep_flow = recipe("deep-flow.yaml", base_text + "deep: " + "[" * 5000 + "]" * 5000 + "\n")
        attack("check-5000-deep-yaml-flow", ["check", str(deep_flow)], {1, 2}, quick=False)
        attack(
            "check-override-5000-deep",
            ["check", str(good), "seed=" + "[" * 5000 + "]" * 5000],
            {1, 2},
            quick=False,
        )

        overrides = [
            ("seed=[1,2", {1, 2}, True),
            ("output_dir=`x`", {0, 1, 2}, True),
            ("=5", {1, 2}, False),
            ("seed", {1, 2}, False),
            ("seed==1", {1, 2}, False),
            ("learning_rate=${foo}", {1, 2}, True),
            ("output_dir=${oc.env:HOME}", {0, 1, 2}, False),
            ("seed=1e999", {1, 2}, False),
            ("a.b.c.d=1", {1, 2}, False),
            ("max_seq_len=" + "9" * 5000, {1, 2}, False),
            ("stage=" + "x" * 120_000, {1, 2}, False),  # a single argument's limit is 128 KB
        ]
        for value, rcs, core in overrides:
            label = value if len(value) < 30 else value[:20] + f"...({len(value)})"
            attack(f"check-override {label!r}", ["check", str(good), value], rcs, quick=core)
        attack(
            "train-override seed=[1,2", ["train", str(good), "seed=[1,2", "--dry-run"], {1, 2}, quick=False
        )

        keys = 50_000 if self.quick else 500_000
        huge = d / "huge.yaml"
        with open(huge, "w") as f:
            f.write(base_text)
            for i in range(keys):
                f.write(f"unknown_key_{i:07d}: {i}\n")
        attack(
            f"check-{keys // 1000}k-unknown-keys-{huge.stat().st_size >> 20}MB",
            ["check", str(huge)],
            {1},
            within=15 if not self.quick else 8,
            timeout=60,
        )
        long_value = recipe("long-value.yaml", base_text + "stage: " + "x" * 10_000_000 + "\n")
        attack("check-10MB-scalar", ["check", str(long_value)], {1}, within=15, quick=False, timeout=60)

        values = [
            ("max_seq_len: -5", {1}, "max_seq_len", True),
            ("max_seq_len: 0", {1}, "max_seq_len", False),
            ("max_seq_len: .inf", {1}, "max_seq_len", False),
            ("max_seq_len: 99999999999999999999999999", {1}, "max_seq_len", False),
            ("max_seq_len: true", {1}, "max_seq_len", False),
            ("batch_size: 0", {1}, "batch_size", False),
            ("learning_rate: .nan", {1}, "learning_rate", False),
            ("seed: -1", {0, 1}, None, False),
        ]
        for n, (line, rcs, says, core) in enumerate(values):
            key = line.split(":")[0]
            text = (
                re.sub(rf"(?m)^{key}:.*$", line, base_text)
                if re.search(rf"(?m)^{key}:", base_text)
                else base_text + line + "\n"
            )
            p = recipe(f"value-{key}-{n}.yaml", text)
            attack(f"check {line!r}", ["check", str(p)], rcs, says=says, quick=core)
        bad = recipe("bad-msl.yaml", re.sub(r"(?m)^max_seq_len:.*$", "max_seq_len: -5", base_text))
        attack(
            "train-max_seq_len--5-refused",
            ["train", str(bad), "--runs-dir", str(d / "runs")],
            {1, 2},
            says="max_seq_len",
            quick=False,
        )

        pwned = d / "PWNED"
        rce = recipe("rce.yaml", base_text + f'evil: !!python/object/apply:os.system ["touch {pwned}"]\n')
        tagged_att = attack("check-yaml-python-tag", ["check", str(rce)], {1, 2})
        if tagged_att and pwned.exists():
            tagged_att.mark("lost", "a !!python tag in a recipe ran a command")
        shapes: list[tuple[str, str | bytes, bool]] = [
            ("non-utf8", base_text.encode() + b"stage: \xff\xfe\n", False),
            ("nul-byte", base_text.encode() + b"stage: a\x00b\n", True),
            ("top-level-list", "- 1\n- 2\n", False),
            ("top-level-scalar", "hello\n", False),
            ("empty", "", False),
            ("duplicate-keys", base_text + "max_seq_len: 128\n", False),  # a warning: 0 or 1
            ("tab-indent", base_text + "nested:\n\tk: 1\n", False),
            ("bad-yaml", base_text + "key: [unclosed\n", True),
        ]
        for label, content, core in shapes:
            p = recipe(f"shape-{label}.yaml", content)
            attack(
                f"check-recipe-{label}",
                ["check", str(p)],
                {0, 1} if label == "duplicate-keys" else {1, 2},
                quick=core,
            )

        # serve profiles: adversarial values (nothing is started: --print-command)
        for label, sets, core in (
            ("port=-1", ["--set", "port=-1"], True),
            ("port=99999999", ["--set", "port=99999999"], False),
            ("port=abc", ["--set", "port=abc"], False),
            ("unknown-field", ["--set", "prot=8000"], False),
            ("--port -1", ["--port", "-1"], True),
        ):
            attack(f"serve-profile {label}", ["serve", str(tiny), *sets, "--print-command"], {2}, quick=core)
        # --print-command needs no local model: these really start, and must be refused before serving
        for label, target, sets in (
            ("serve-/dev/zero", "/dev/zero", []),
            ("serve max_num_seqs=0", str(tiny), ["--set", "max_num_seqs=0"]),
        ):
            port = self.free_port()
            attack(
                label,
                ["serve", target, "--set", f"port={port}", "--set", "startup_timeout=60", *sets],
                {1, 2},
                timeout=90,
                within=None,
                quick=False,
            )
        serve_zero = d / "profile-zero.yaml"
        serve_zero.symlink_to("/dev/zero")
        attack(
            "serve-profile-/dev/zero",
            ["serve", str(serve_zero), "--print-command"],
            {2},
            within=10,
            quick=False,
        )
        serve_fifo = d / "profile-fifo.yaml"
        os.mkfifo(serve_fifo)
        attack("serve-profile-fifo", ["serve", str(serve_fifo), "--print-command"], {2}, within=10)

    # =================================================================================================
    # area: train

    def train_recipe(self) -> Path:
        d = self.dir("train")
        recipe = d / "lora.yaml"
        if not recipe.exists():
            data = self.dir("train/data")
            for name in ("sft-train.jsonl", "sft-eval.jsonl"):
                shutil.copy(REPO / "recipes" / "data" / name, data / name)
            text = (REPO / "recipes" / "tiny" / "sft_lora_cpu.yaml").read_text()
            text = text.replace("recipes/data/", f"{data}/").replace(
                "runs/tiny-dense", str(self.tiny_model())
            )
            recipe.write_text(text)
        return recipe

    def train_args(self, runs: Path, name: str, steps: int, save: int = 10, *overrides: str) -> list[str]:
        return [
            "train",
            str(self.train_recipe()),
            f"max_steps={steps}",
            f"save_steps={save}",
            "eval_steps=100000",
            *overrides,
            "--runs-dir",
            str(runs),
            "--run-name",
            name,
        ]

    @staticmethod
    def run_json(run_dir: Path) -> dict[str, Any] | None:
        try:
            data = json.loads((run_dir / "run.json").read_text())
            return data if isinstance(data, dict) else None
        except (OSError, ValueError):
            return None

    def area_train(self) -> None:
        self.tiny_model()
        runs = self.dir("train/runs")

        # 4: two trains with one --run-name at once: two run directories, both succeed
        with self.attempt("train", "same-run-name-twice-at-once") as att:
            argv = [*self.exe, *self.train_args(runs, "same", 4, save=2)]
            att.command = self.shown(argv) + "  (twice at once)"
            started = time.monotonic()
            a, b = self.spawn(argv), self.spawn(argv)
            ra, rb = self.finish(*a, 240, started), self.finish(*b, 240, started)
            if self.check(att, ra, {0}) & self.check(att, rb, {0}):
                dirs = sorted(p for p in runs.glob("same*") if p.is_dir())
                if len(dirs) != 2:
                    att.mark("lost", f"{len(dirs)} run directories for two runs: {[p.name for p in dirs]}")
                for run_dir in dirs:
                    record = self.run_json(run_dir) or {}
                    if record.get("status") != "succeeded":
                        att.mark("lost", f"{run_dir.name}/run.json status {record.get('status')!r}")
        first = next(iter(sorted(runs.glob("same*"))), None)

        # a recipe whose output_dir holds another run's checkpoints: refused without --resume/--force
        if first is not None and (first / "output").is_dir():
            theirs = first / "output"
            before = tree_state(theirs)
            with self.attempt("train", "output_dir-holds-another-runs-checkpoints") as att:
                res = self.run(self.train_args(runs, "intruder", 4, 2, f"output_dir={theirs}"), timeout=240)
                if self.check(att, res, {1, 2}) and "usage:" in res.err:
                    att.mark("wrong", "refused as a usage error, not for the output_dir")
                if tree_state(theirs) != before:
                    att.mark("lost", f"{self.rel(theirs)} changed")
        else:
            self.notes.append("train: no finished run to point output_dir at (same-run-name failed)")

        # 5: signals at random points of train, then --resume
        kill, hup, term, intr = signal.SIGKILL, signal.SIGHUP, signal.SIGTERM, signal.SIGINT
        plan = [kill, hup] if self.quick else [kill, kill, kill, hup, hup, term, term, intr]
        for i, sig in enumerate(plan):
            self.train_signal(runs, i, sig)

        # 6: a full disk (a small tmpfs as --runs-dir)
        # a run of 40 steps saving every 5 needs ~2.4 MB (268 KB a checkpoint): full at different points
        # (train sets 1 MB aside for its last record)
        for size in ["2m"] if self.quick else ["1100k", "2m", "3m"]:
            self.train_disk_full(size)

    def train_signal(self, runs: Path, i: int, sig: int) -> None:
        name = f"sig{i}"
        steps = 100
        delay = self.rng.uniform(0.5, 7.0)
        signame = signal.Signals(sig).name
        with self.attempt("train", f"{signame}-at-{delay:.1f}s-then-resume") as att:
            tag = self.attempt_tag()
            argv = [*self.exe, *self.train_args(runs, name, steps)]
            att.command = (
                self.shown(argv) + f"  (kill -{signame[3:]} after {delay:.1f} s; then train --resume)"
            )
            started = time.monotonic()
            proc, po, pe = self.spawn(argv)
            time.sleep(delay)
            sent = proc.poll() is None
            if sent:
                os.kill(proc.pid, sig)  # the ernie-ops process only, as `kill` from another shell
            res = self.finish(proc, po, pe, 90, started)
            if not self.check(att, res, {0, 128 + sig}):
                return
            if not sent:
                att.note("finished before the signal")
            left = self.leftovers(tag, wait=5.0)
            if left:
                att.mark("lost", "orphaned: " + "; ".join(self.proc_line(p) for p in left[:4]))
                self.end(left, grace=1.0)
            run_dir = next(iter(sorted(runs.glob(f"{name}-*"))), None)
            if run_dir is None:
                att.note("stopped before its run directory existed")
                return
            record = self.run_json(run_dir)
            if sig != signal.SIGKILL and record is not None and record.get("status") == "running":
                att.mark("lost", f"run.json still says running after exit {res.rc}")
            resumed = self.run(["train", "--resume", str(run_dir)], timeout=240)
            att.note(f"resume exit {resumed.rc}")
            if record is None or (record.get("last_step") == steps and "already finished" in resumed.err):
                self.check(
                    att, resumed, {0, 2}
                )  # nothing to resume: stopped before the record, or after the end
            elif self.check(att, resumed, {0}):
                record = self.run_json(run_dir) or {}
                if record.get("status") != "succeeded" or record.get("last_step") != steps:
                    att.mark(
                        "wrong",
                        f"after --resume run.json status {record.get('status')!r} "
                        f"last_step {record.get('last_step')}",
                    )
            if resumed.rc not in (0, None):
                att.note("resume: " + resumed.tail(200))

    def train_disk_full(self, size: str) -> None:
        mnt = self.dir(f"train/tmpfs-{size}")
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            note = f"train: disk full not tried: mount -t tmpfs not permitted here ({proc.stderr.strip()})"
            if note not in self.notes:
                self.notes.append(note)
            return
        self.mounts.append(mnt)
        try:
            with self.attempt("train", f"disk-full-tmpfs-{size}") as att:
                res = self.run(self.train_args(mnt, "full", 40, save=5), timeout=180)
                if self.check(att, res, {0, 1, 2}):
                    run_dir = next(iter(sorted(mnt.glob("full-*"))), None)
                    record = self.run_json(run_dir) if run_dir else None
                    if res.rc == 0:
                        att.note("it fit")
                    elif record is not None and record.get("status") != "failed":
                        att.mark("lost", f"exit {res.rc} but run.json status {record.get('status')!r}")
                    elif run_dir is not None and record is None:
                        att.note("no run.json (the disk was full before it was written)")
        finally:
            self.unmount(mnt)

    def unmount(self, mnt: Path) -> None:
        for args in (["umount", str(mnt)], ["umount", "-l", str(mnt)]):
            if subprocess.run(args, capture_output=True).returncode == 0:
                break
        if mnt in self.mounts:
            self.mounts.remove(mnt)

    # =================================================================================================
    # area: serve

    def serve_args(self, port: int, *extra: str) -> list[str]:
        return [
            "serve",
            str(self.tiny_model()),
            "--set",
            f"port={port}",
            "--set",
            "startup_timeout=120",
            *extra,
        ]

    def status(self, port: int | None = None) -> list[dict[str, Any]]:
        which = ["--port", str(port)] if port else []
        res = self.run(["serve", "status", *which, "--json"], timeout=30)
        if (
            res.rc == 2 and "unrecognized arguments: --json" in res.err
        ):  # before `serve status` printed a table
            res = self.run(["serve", "status", *which], timeout=30)
        if res.rc != 0:
            raise ChaosError(f"serve status exit {res.rc}: {res.tail()}")
        try:
            data = json.loads(res.out)
        except ValueError:
            return []
        return data if isinstance(data, list) else []

    def servers_of(self, tag: str) -> list[psutil.Process]:
        out = []
        for p in self.tagged(tag):
            with contextlib.suppress(psutil.Error):
                if "ernie_ops.serve.openai_server" in " ".join(p.cmdline()):
                    out.append(p)
        return out

    def health(self, port: int, timeout: float = 3.0) -> int:
        try:
            return http_call(port, "GET", "/health", timeout=timeout)[0]
        except TimeoutError:
            return -1

    def state_files(self, port: int) -> list[Path]:
        """Where a detached server's record may be (XDG state dir; runs/serve in older versions)."""
        return [
            p
            for p in (
                self.root / "state" / "ernie-ops" / "serve" / f"{port}.json",
                self.root / "runs" / "serve" / f"{port}.json",
            )
            if p.exists() or p.is_symlink()
        ]

    def stop_and_verify(self, att: Attempt, port: int, tag: str) -> None:
        res = self.run(["serve", "stop", "--port", str(port)], timeout=60)
        self.check(att, res, {0})
        held = port_holder(port)
        if held:
            att.mark("lost", f"{held} after serve stop")
        left = self.servers_of(tag)
        if left:
            att.mark("lost", "server still running after serve stop: " + self.proc_line(left[0]))
        for path in self.state_files(port):
            att.mark("lost", f"state file {self.rel(path)} left after serve stop")

    def area_serve(self) -> None:
        self.tiny_model()

        # 19: serve DIR --port N serves on N
        port = self.free_port()
        with self.attempt("serve", "serve-DIR--port-N-serves-on-N") as att:
            tag = self.attempt_tag()
            res = self.run(["serve", str(self.tiny_model()), "--port", str(port), "--detach"], timeout=150)
            if self.check(att, res, {0}):
                if self.health(port) != 200:
                    att.mark("wrong", f"nothing answers /health on port {port}")
                listening = [s for s in self.servers_of(tag)]
                if listening and not any(str(port) in " ".join(p.cmdline()) for p in listening):
                    att.mark("wrong", "the server runs, but not on --port: " + self.proc_line(listening[0]))
                self.stop_and_verify(att, port, tag)

        # 7: two serve --detach on one port at once
        for i in range(1 if self.quick else 2):
            port = self.free_port()
            with self.attempt("serve", f"two-detach-one-port-at-once-{i}") as att:
                tag = self.attempt_tag()
                argv = [*self.exe, *self.serve_args(port, "--detach")]
                att.command = self.shown(argv) + "  (twice at once)"
                started = time.monotonic()
                a, b = self.spawn(argv), self.spawn(argv)
                ra, rb = self.finish(*a, 150, started), self.finish(*b, 150, started)
                if self.check(att, ra, {0, 1, 2}) & self.check(att, rb, {0, 1, 2}):
                    ok = [r for r in (ra, rb) if r.rc == 0]
                    if len(ok) != 1:
                        att.mark("wrong", f"exits {ra.rc} and {rb.rc}: exactly one should succeed")
                    servers = self.servers_of(tag)
                    if len(servers) != 1:
                        att.mark("lost", f"{len(servers)} server processes after two starts on one port")
                    if self.health(port) != 200:
                        att.mark("lost", f"nothing healthy on port {port}")
                    listed = self.status(port)
                    running = [s for s in listed if s.get("running")]
                    if len(running) != 1 or (servers and running and running[0].get("pid") != servers[0].pid):
                        att.mark(
                            "lost",
                            f"serve status lists {[(s.get('pid'), s.get('running')) for s in listed]}; "
                            f"server pids {[p.pid for p in servers]}",
                        )
                self.stop_and_verify(att, port, tag)
                if self.status(port):
                    att.mark("lost", "serve status still lists a server after serve stop")

        # 5: a foreground serve killed (SIGKILL) leaves no server; SIGTERM/SIGHUP/SIGINT stop it with 128+N
        plan = (
            [signal.SIGKILL, signal.SIGTERM]
            if self.quick
            else [
                signal.SIGKILL,
                signal.SIGKILL,
                signal.SIGKILL,
                signal.SIGTERM,
                signal.SIGHUP,
                signal.SIGINT,
            ]
        )
        for sig in plan:
            port = self.free_port()
            delay = self.rng.uniform(0.3, 6.0)
            signame = signal.Signals(sig).name
            with self.attempt("serve", f"foreground-{signame}-at-{delay:.1f}s") as att:
                tag = self.attempt_tag()
                argv = [*self.exe, *self.serve_args(port)]
                att.command = self.shown(argv) + f"  (kill -{signame[3:]} after {delay:.1f} s)"
                started = time.monotonic()
                proc, po, pe = self.spawn(argv)
                time.sleep(delay)
                ready = self.health(port, timeout=1) == 200
                os.kill(proc.pid, sig)
                res = self.finish(proc, po, pe, 60, started)
                self.check(att, res, {128 + sig})
                att.note("after ready" if ready else "during start-up")
                left = self.leftovers(tag, wait=5.0)
                if left:
                    att.mark("lost", "left running: " + "; ".join(self.proc_line(p) for p in left[:3]))
                    self.end(left, grace=1.0)
                held = port_holder(port)
                if held:
                    att.mark("lost", held)

        # a detached start killed (SIGKILL) at a random point: either nothing runs, or it runs and is recorded
        for _ in range(1 if self.quick else 3):
            port = self.free_port()
            delay = self.rng.uniform(0.3, 5.0)
            with self.attempt("serve", f"detach-SIGKILL-at-{delay:.1f}s") as att:
                tag = self.attempt_tag()
                argv = [*self.exe, *self.serve_args(port, "--detach")]
                att.command = self.shown(argv) + f"  (kill -KILL after {delay:.1f} s)"
                started = time.monotonic()
                proc, po, pe = self.spawn(argv)
                time.sleep(delay)
                os.kill(proc.pid, signal.SIGKILL)
                self.finish(proc, po, pe, 30, started)
                time.sleep(3.0)
                servers = self.servers_of(tag)
                listed = [s for s in self.status(port) if s.get("running")]
                if servers and not listed:
                    att.mark(
                        "lost", "a server runs that serve status does not know: " + self.proc_line(servers[0])
                    )
                elif listed and not servers:
                    att.mark("lost", f"serve status says running, no server runs: {listed[0]}")
                att.note("a server was left running" if servers else "nothing left running")
                if listed or self.state_files(port):
                    self.stop_and_verify(att, port, tag)
                elif held := port_holder(port):
                    att.mark("lost", held)

        # status / stop truthful after the server was killed behind their back; the port is reusable
        port = self.free_port()
        with self.attempt("serve", "status-after-server-SIGKILLed") as att:
            tag = self.attempt_tag()
            res = self.run([*self.serve_args(port, "--detach")], timeout=150)
            if self.check(att, res, {0}):
                servers = self.servers_of(tag)
                for p in servers:
                    p.kill()
                psutil.wait_procs(servers, timeout=5)
                time.sleep(0.5)
                listed = self.status(port)
                if any(s.get("running") or s.get("healthy") for s in listed):
                    att.mark("lost", f"serve status says running after the server was killed: {listed}")
                stop = self.run(["serve", "stop", "--port", str(port)], timeout=60)
                self.check(att, stop, {0, 1})
                again = self.run([*self.serve_args(port, "--detach")], timeout=150)
                if self.check(att, again, {0}):
                    self.stop_and_verify(att, port, tag)

        # a port held by a foreign socket; a state file pointing at someone else's process
        port = self.free_port()
        with self.attempt("serve", "port-held-by-another-socket") as att:
            tag = self.attempt_tag()
            with socket.socket() as holder:
                holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                holder.bind(("127.0.0.1", port))
                holder.listen(1)
                res = self.run([*self.serve_args(port, "--detach")], timeout=60)
                self.check(att, res, {1, 2})
                if self.servers_of(tag):
                    att.mark("lost", "a server process was left although the port was taken")
                if self.state_files(port):
                    att.mark("lost", "a state file was written for a server that never started")
        port = self.free_port()
        with self.attempt("serve", "stop-with-a-state-file-naming-another-process") as att:
            att.command = (
                f"sleep 60 & (own process group); a stale runs state file {port}.json naming its pid/pgid "
                f"(start_ticks 1); ernie-ops serve status --port {port}; ernie-ops serve stop --port {port}"
            )
            bystander = subprocess.Popen(["sleep", "60"], env=self.env(), start_new_session=True)
            for state in (
                self.root / "state" / "ernie-ops" / "serve" / f"{port}.json",
                self.root / "runs" / "serve" / f"{port}.json",
            ):
                state.parent.mkdir(parents=True, exist_ok=True)
                state.write_text(
                    json.dumps(
                        {
                            "pid": bystander.pid,
                            "pgid": bystander.pid,
                            "start_ticks": 1,
                            "host": "127.0.0.1",
                            "port": port,
                            "url": f"http://127.0.0.1:{port}",
                            "log_dir": "x",
                            "command": ["python", "-m", "ernie_ops.serve.openai_server"],
                            "started_at": "2026-01-01T00:00:00+0000",
                        }
                    )
                )
            listed = self.status(port)
            if any(s.get("running") for s in listed):
                att.mark("lost", f"serve status calls an unrelated process our server: {listed}")
            res = self.run(["serve", "stop", "--port", str(port)], timeout=60)
            self.check(att, res, {0, 1})
            time.sleep(0.5)
            if bystander.poll() is not None:
                att.mark("lost", f"serve stop killed an unrelated process (pid {bystander.pid})")
            bystander.kill()
            bystander.wait()
        with self.attempt("serve", "stop-and-status-with-nothing-running") as att:
            port = self.free_port()
            res = self.run(["serve", "stop", "--port", str(port)], timeout=30)
            self.check(att, res, {1})
            bad = self.root / "state" / "ernie-ops" / "serve" / f"{port}.json"
            bad.parent.mkdir(parents=True, exist_ok=True)
            bad.write_text("{not json")
            res = self.run(["serve", "status"], timeout=30)
            self.check(att, res, {0})
            res = self.run(["serve", "stop", "--port", str(port)], timeout=30)
            self.check(att, res, {0, 1})
            bad.unlink(missing_ok=True)

    # =================================================================================================
    # area: http

    def start_keyed_server(self, port: int, key: str) -> dict[str, Any] | None:
        env = self.env(tag=f"{self.run_tag}:http-server:", CHAOS_API_KEY=key)
        res = self.run(
            [*self.serve_args(port, "--set", "api_key_env=CHAOS_API_KEY", "--detach")], timeout=150, env=env
        )
        if res.rc != 0:
            self.notes.append(f"http: the keyed server did not start (exit {res.rc}): {res.tail()}")
            return None
        listed = [s for s in self.status(port) if s.get("port") == port]
        return listed[0] if listed else {}

    def area_http(self) -> None:
        self.tiny_model()
        port = self.free_port()
        key = uuid.uuid4().hex
        auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        server: dict[str, Any] = {}
        with self.attempt("http", "start-keyed-server", reap=False) as att:
            info = self.start_keyed_server(port, key)
            if info is None:
                att.mark("wrong", self.notes[-1])
                return
            server.update(info)
        log_path = self.root / str(server.get("log_dir", "")) / "server.log"
        probe_file = self.root / "health.log"
        probe = subprocess.Popen(
            [sys.executable, "-c", PROBE, str(port), str(probe_file)],
            env=self.env(tag=f"{self.run_tag}:probe:"),
            start_new_session=True,
        )
        restarts = 0

        def log_size() -> int:
            try:
                return log_path.stat().st_size
            except OSError:
                return 0

        def health_window(t0: float, t1: float) -> tuple[float, int, str]:
            worst, failed, statuses = 0.0, 0, dict[str, int]()
            with contextlib.suppress(OSError):
                for line in probe_file.read_text().splitlines():
                    parts = line.split()
                    if len(parts) == 3 and t0 - 0.2 <= float(parts[0]) <= t1:
                        worst = max(worst, float(parts[1]))
                        if parts[2] != "200":
                            failed += 1
                            statuses[parts[2]] = statuses.get(parts[2], 0) + 1
            shown = ", ".join(
                f"{'no answer' if k == '-1' else 'HTTP ' + k} x{v}" for k, v in statuses.items()
            )
            return worst, failed, shown

        def after(att: Attempt, mark: int) -> None:
            nonlocal restarts, log_path
            time.sleep(0.05)
            status = self.health(port, timeout=5)
            worst, failed, how = health_window(att.started, time.time())
            if worst > HEALTH_TARGET_S:
                att.mark(
                    "wrong",
                    f"/health took {worst:.2f} s during this attack (target < {HEALTH_TARGET_S:.0f} s)",
                )
            elif worst:
                att.note(f"/health worst {worst * 1000:.0f} ms")
            if failed:
                att.mark("lost", f"/health failed {failed} times during this attack ({how})")
            with contextlib.suppress(OSError), open(log_path, "rb") as f:
                f.seek(mark)
                tb = our_traceback(f.read().decode(errors="replace"))
                if tb:
                    att.mark("traceback", f"server.log: {tb}")
            if status != 200:
                att.mark("lost", f"server down after this attack (/health: {status})")
                self.end(self.tagged(f"{self.run_tag}:http-server:"), grace=2)
                for path in self.state_files(port):
                    path.unlink(missing_ok=True)
                restarts += 1
                info = self.start_keyed_server(port, key)
                if info:
                    log_path = self.root / str(info.get("log_dir", "")) / "server.log"

        def hit(
            name: str,
            body: Any,
            expect: set[int],
            names: str | None = None,
            path: str = "/v1/chat/completions",
            headers: dict[str, str] | None = None,
            method: str = "POST",
            timeout: float = 20,
            quick: bool = True,
        ) -> None:
            if self.quick and not quick:
                return
            raw = (
                body
                if isinstance(body, bytes) or body is None
                else json.dumps(body, separators=(",", ":")).encode()
            )
            shown = f"curl -X {method} :{port}{path}"
            if raw is not None:
                shown += f" -d {raw[:160].decode(errors='replace')!r}" + (
                    f"...({len(raw)} bytes)" if len(raw) > 160 else ""
                )
            with self.attempt("http", name, command=shown) as att:
                mark = log_size()
                try:
                    status, reply = http_call(
                        port, method, path, raw, headers if headers is not None else auth, timeout
                    )
                    if status not in expect:
                        att.mark(
                            "wrong",
                            f"HTTP {status}, expected {'/'.join(map(str, sorted(expect)))}: {reply[:200]!r}",
                        )
                    elif names and status >= 400 and names.encode().lower() not in reply.lower():
                        att.mark("wrong", f"HTTP {status} does not name {names!r}: {reply[:200]!r}")
                    else:
                        att.note(f"HTTP {status}")
                finally:
                    after(att, mark)

        def chat(**extra: Any) -> dict[str, Any]:
            return {
                "model": "tiny",
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 4,
                **extra,
            }

        try:
            hit("normal-chat", chat(), {200})
            # 8: client-supplied chat templates
            loop_bomb = (
                "{% for a in range(100000) %}{% for b in range(100000) %}{{ a }}{% endfor %}{% endfor %}"
            )
            hit(
                "jinja-loop-bomb-in-chat_template_kwargs",
                chat(chat_template_kwargs={"chat_template": loop_bomb}),
                {400},
                names="chat_template",
            )
            hit(
                "jinja-loop-bomb-top-level-chat_template",
                chat(chat_template=loop_bomb),
                {200, 400},
                quick=False,
            )
            hit(
                "jinja-ssti-in-chat_template_kwargs",
                chat(
                    chat_template_kwargs={"chat_template": "{{ ''.__class__.__mro__[1].__subclasses__() }}"}
                ),
                {400},
                quick=False,
            )
            hit(
                "chat_template_kwargs-1MB-value",
                chat(chat_template_kwargs={"enable_thinking": "x" * 1_000_000}),
                {200, 400},
                quick=False,
            )
            # 9: huge bodies
            self.big_body(port, auth, "body-10MB-content-length", 10 << 20, after, log_size)
            self.big_body(port, auth, "body-50MB-content-length", 50 << 20, after, log_size)
            self.big_body(port, auth, "body-50MB-chunked", 50 << 20, after, log_size, chunked=True)
            if not self.quick:
                self.big_body(
                    port, auth, "body-declares-1TB-sends-little", 1 << 40, after, log_size, send=4096
                )
            # 10: stop lists
            hit("stop-20000-strings", chat(stop=[f"s{i}" for i in range(20_000)]), {400}, names="stop")
            hit("stop_token_ids-2M", chat(stop_token_ids=[1] * 2_000_000), {400, 413}, names="stop_token_ids")
            # 13: fields the server cannot honour: 400 naming the field
            hit("seed--1", chat(seed=-1), {400}, names="seed")
            hit("chat-logprobs-true", chat(logprobs=True), {400}, names="logprobs")
            image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
            hit(
                "image_url-to-text-model",
                {
                    "model": "tiny",
                    "max_tokens": 4,
                    "messages": [{"role": "user", "content": [{"type": "text", "text": "what"}, image]}],
                },
                {400},
                names="image",
            )
            hit(
                "completions-context-overflow",
                {"model": "tiny", "prompt": "word " * 100_000, "max_tokens": 4},
                {400},
                names="prompt",
                path="/v1/completions",
            )
            for label, body, expect, names, core in (
                ("max_tokens--1", chat(max_tokens=-1), {400}, "max_tokens", True),
                ("max_tokens-1e12", chat(max_tokens=10**12), {400}, "max_tokens", False),
                ("n-0", chat(n=0), {400}, "n", False),
                ("n-1000", chat(n=1000), {200, 400}, None, False),
                ("top_p-2", chat(top_p=2), {400}, "top_p", False),
                ("temperature-1e308", chat(temperature=1e308), {200, 400}, None, False),
                ("seed-2**70", chat(seed=2**70), {400}, "seed", False),
                (
                    "empty-messages",
                    {"model": "tiny", "messages": [], "max_tokens": 4},
                    {400},
                    "messages",
                    True,
                ),
                (
                    "unknown-role",
                    {"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]},
                    {400},
                    None,
                    False,
                ),
                (
                    "content-null",
                    {"model": "tiny", "messages": [{"role": "user", "content": None}]},
                    {200, 400},
                    None,
                    False,
                ),
                (
                    "lone-surrogate",
                    chat(messages=[{"role": "user", "content": "\ud800"}]),
                    {200, 400},
                    None,
                    False,
                ),
                (
                    "50k-messages",
                    chat(messages=[{"role": "user", "content": "x"}] * 50_000),
                    {400, 413},
                    None,
                    False,
                ),
                ("tools-garbage", chat(tools=[{"type": "function", "function": 7}]), {400}, None, False),
                ("response_format-garbage", chat(response_format={"type": "nope"}), {400}, None, False),
            ):
                hit(label, body, expect, names=names, quick=core)
            hit(
                "temperature-NaN",
                b'{"model":"tiny","messages":[{"role":"user","content":"Hi"}],"max_tokens":4,"temperature":NaN}',
                {200, 400},
                quick=False,
            )
            hit("invalid-json", b'{"model": "tiny", "messages": [', {400})
            hit("json-array-body", b"[1, 2, 3]", {400}, quick=False)
            hit("nested-json-100k", b"[" * 100_000 + b"]" * 100_000, {400})
            hit(
                "non-utf8-body",
                b'{"model": "tiny", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
                {400},
                quick=False,
            )
            hit(
                "text-plain-content-type",
                chat(),
                {200, 400, 415},
                headers={"Authorization": f"Bearer {key}", "Content-Type": "text/plain"},
                quick=False,
            )
            hit("unknown-path", None, {404}, path="/v1/nope", method="GET", quick=False)
            hit("wrong-method", None, {405}, method="DELETE", quick=False)
            # 12: with an API key nothing but /health answers without it
            for path in ("/metrics", "/docs", "/openapi.json", "/redoc", "/v1/models"):
                hit(
                    f"no-key-GET-{path}",
                    None,
                    {401, 403},
                    path=path,
                    method="GET",
                    headers={},
                    quick=path != "/redoc",
                )
            hit("no-key-chat", chat(), {401, 403}, headers={"Content-Type": "application/json"})
            hit(
                "wrong-key-chat",
                chat(),
                {401},
                headers={"Authorization": "Bearer nope", "Content-Type": "application/json"},
                quick=False,
            )
            hit(
                "basic-auth-chat",
                chat(),
                {401},
                headers={"Authorization": "Basic eDp5", "Content-Type": "application/json"},
                quick=False,
            )
            hit("no-key-health", None, {200}, path="/health", method="GET", headers={})
            # raw protocol abuse
            self.raw_attacks(port, key, after, log_size)
            # streams cut by the client; many requests at once
            self.stream_disconnects(port, auth, after, log_size)
            self.overload(port, auth, after, log_size)
            # 11: thousands of partial and silent connections, slowloris
            self.connection_flood(port, key, after, log_size, log_path)
            hit("normal-chat-after-all", chat(), {200})
        finally:
            probe.terminate()
            probe.wait()
            worst, failed, how = health_window(0, time.time())
            samples = len(probe_file.read_text().splitlines()) if probe_file.exists() else 0
            self.health_summary = {
                "failures": how,
                "worst_s": round(worst, 3),
                "failed": failed,
                "samples": samples,
                "restarts": restarts,
            }
            with self.attempt("http", f"health-under-{HEALTH_TARGET_S:.0f}s-throughout") as att:
                att.command = f"GET :{port}/health every 100 ms during the http area ({samples} probes)"
                if worst > HEALTH_TARGET_S:
                    att.mark("wrong", f"worst /health latency {worst:.2f} s")
                if failed:
                    att.mark(
                        "lost",
                        f"/health failed {failed} of {samples} times ({how}); "
                        f"server restarted {restarts} times",
                    )
                att.note(f"worst {worst * 1000:.0f} ms over {samples} probes")
            with self.attempt("http", "stop-keyed-server") as att:
                self.stop_and_verify(att, port, f"{self.run_tag}:http-server:")

    def big_body(
        self,
        port: int,
        auth: dict[str, str],
        name: str,
        total: int,
        after: Callable[[Attempt, int], None],
        log_size: Callable[[], int],
        chunked: bool = False,
        send: int | None = None,
    ) -> None:
        """A huge body must get 413 before it is read whole: with a Content-Length, from the headers
        alone; chunked, once past the limit (it cannot all sit in socket buffers)."""
        with self.attempt("http", name) as att:
            att.command = f"POST :{port}/v1/chat/completions with a {total >> 20} MB body" + (
                " (chunked)" if chunked else ""
            )
            mark = log_size()
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
                head = (
                    "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                    f"Authorization: {auth['Authorization']}\r\nContent-Type: application/json\r\n"
                )
                head += (
                    "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {total}\r\n\r\n"
                )
                sock.sendall(head.encode())
                reply, sent = b"", 0
                if not chunked:  # the headers say it all: the answer should come before any body byte
                    ready, _, _ = select.select([sock], [], [], 3.0)
                    if ready:
                        reply = sock.recv(65536)
                chunk = b'{"model": "tiny", "messages": [{"role": "user", "content": "' + b"x" * (256 * 1024)
                limit = total if send is None else send
                while not reply and sent < limit:
                    ready, _, _ = select.select([sock], [], [], 0)
                    if ready:
                        reply = sock.recv(65536)
                        break
                    piece = chunk[: limit - sent]
                    try:
                        sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece)
                    except (BrokenPipeError, ConnectionResetError):
                        break
                    except TimeoutError:
                        break
                    sent += len(piece)
                if not reply:
                    ready, _, _ = select.select([sock], [], [], 20.0)
                    if not ready:
                        raise TimeoutError(
                            f"no answer 20 s after {sent >> 20} MB of {total >> 20} MB were sent"
                        )
                    with contextlib.suppress(ConnectionResetError):
                        reply = sock.recv(65536)
                status = status_of(reply)
                att.note(f"HTTP {status} after {sent / (1 << 20):.1f} MB sent")
                if status != 413:
                    att.mark(
                        "wrong", f"HTTP {status or 'none (connection closed)'}, expected 413: {reply[:160]!r}"
                    )
                elif sent >= limit and limit == total:
                    att.mark("wrong", "413 only after the whole body was sent")
            finally:
                sock.close()
                after(att, mark)

    def raw_attacks(
        self, port: int, key: str, after: Callable[[Attempt, int], None], log_size: Callable[[], int]
    ) -> None:
        cases: list[tuple[str, bytes, bool]] = [
            ("garbage-request-line", b"HELLO THERE\r\n\r\n", True),
            (
                "100KB-header-line",
                b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
                True,
            ),
            (
                "2000-headers",
                b"GET /health HTTP/1.1\r\nHost: x\r\n"
                + b"".join(b"X-%d: y\r\n" % i for i in range(2000))
                + b"\r\n",
                False,
            ),
            (
                "content-length-and-chunked",
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                False,
            ),
            (
                "negative-content-length",
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
                True,
            ),
            (
                "non-numeric-content-length",
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
                False,
            ),
            (
                "bad-chunk-size",
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                False,
            ),
            ("http-0.9", b"GET /health\r\n\r\n", False),
            (
                "1MB-authorization",
                b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                + b"k" * (1 << 20)
                + b"\r\n\r\n",
                False,
            ),
        ]
        for name, data, core in cases:
            if self.quick and not core:
                continue
            with self.attempt(
                "http", name, command=f"raw TCP to :{port}: {data[:80]!r}...({len(data)} bytes)"
            ) as att:
                mark = log_size()
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                try:
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                        sock.sendall(data)
                    reply = b""
                    try:
                        reply = sock.recv(4096)
                    except TimeoutError:
                        att.mark("hang", "no answer and the connection left open for 10 s")
                    except ConnectionResetError:
                        reply = b""
                    status = status_of(reply)
                    may_pass = (
                        name in ("100KB-header-line", "2000-headers") and status == 200
                    )  # big but legal
                    if reply and not 400 <= status < 500 and not may_pass:
                        att.mark("wrong", f"answered {reply[:60]!r}, expected a 4xx or a closed connection")
                    att.note(f"HTTP {status}" if reply else "closed")
                finally:
                    sock.close()
                    after(att, mark)

    def stream_disconnects(
        self,
        port: int,
        auth: dict[str, str],
        after: Callable[[Attempt, int], None],
        log_size: Callable[[], int],
    ) -> None:
        n = 5 if self.quick else 30
        with self.attempt("http", f"{n}-streams-cut-after-first-chunk") as att:
            att.command = (
                f"POST :{port}/v1/chat/completions stream=true max_tokens=200, "
                f"socket closed after the first chunk, x{n}"
            )
            mark = log_size()
            body = json.dumps(
                {
                    "model": "tiny",
                    "messages": [{"role": "user", "content": "Hi"}],
                    "max_tokens": 200,
                    "stream": True,
                }
            ).encode()
            head = (
                "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: {auth['Authorization']}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            )
            try:
                for _ in range(n):
                    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
                        sock.sendall(head.encode() + body)
                        got = b""
                        while b"data:" not in got:
                            piece = sock.recv(4096)
                            if not piece:
                                break
                            got += piece
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                        )
                started = time.monotonic()
                status, reply = http_call(
                    port,
                    "POST",
                    "/v1/chat/completions",
                    json.dumps(
                        {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
                    ).encode(),
                    auth,
                    timeout=30,
                )
                if status != 200:
                    att.mark(
                        "wrong", f"a normal request after the cut streams: HTTP {status} {reply[:120]!r}"
                    )
                else:
                    att.note(f"a normal request after them: {time.monotonic() - started:.2f} s")
            finally:
                after(att, mark)

    def overload(
        self,
        port: int,
        auth: dict[str, str],
        after: Callable[[Attempt, int], None],
        log_size: Callable[[], int],
    ) -> None:
        n = 40 if self.quick else 150
        with self.attempt("http", f"{n}-requests-at-once") as att:
            att.command = f"{n} x POST :{port}/v1/chat/completions max_tokens=16 at once"
            mark = log_size()
            body = json.dumps(
                {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 16}
            ).encode()
            statuses: list[int] = []
            lock = threading.Lock()

            def one() -> None:
                try:
                    status = http_call(port, "POST", "/v1/chat/completions", body, auth, timeout=90)[0]
                except TimeoutError:
                    status = -1
                with lock:
                    statuses.append(status)

            threads = [threading.Thread(target=one, daemon=True) for _ in range(n)]
            try:
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(120)
                counts = {s: statuses.count(s) for s in sorted(set(statuses))}
                att.note(f"statuses {counts}")
                if -1 in counts:
                    att.mark("hang", f"{counts[-1]} requests unanswered after 90 s")
                bad = {s: c for s, c in counts.items() if s not in (200, 429, 503, -1)}
                if bad:
                    att.mark("wrong", f"unexpected statuses {bad}")
            finally:
                after(att, mark)

    def connection_flood(
        self,
        port: int,
        key: str,
        after: Callable[[Attempt, int], None],
        log_size: Callable[[], int],
        log_path: Path,
    ) -> None:
        n = 150 if self.quick else 1000  # of each kind
        slow = 10 if self.quick else 40
        deadline_s = 45.0  # the server's read timeout (30 s by default) and a margin
        with self.attempt("http", f"{3 * n}-partial-and-silent-connections+{slow}-slowloris") as att:
            att.command = (
                f"{n} partial headers, {n} partial bodies, {n} silent connections and {slow} slowloris "
                f"(a header byte a second) to :{port}; each must be closed by the server "
                f"within {deadline_s:.0f} s of its opening"
            )
            mark = log_size()
            lines_before = self.log_lines(log_path)
            partial_head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Ty"
            partial_body = (
                f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"model": "t'
            ).encode()
            socks: dict[socket.socket, str] = {}
            opened: dict[socket.socket, float] = {}  # a flood takes a while to open: each has its own clock
            refused = 0
            started = time.monotonic()
            try:
                for kind, payload in (
                    ("partial-header", partial_head),
                    ("partial-body", partial_body),
                    ("silent", b""),
                ):
                    for _ in range(n):
                        try:
                            s = socket.create_connection(("127.0.0.1", port), timeout=5)
                            if payload:
                                s.sendall(payload)
                            s.setblocking(False)
                            socks[s], opened[s] = kind, time.monotonic()
                        except OSError:
                            refused += 1
                slowloris: list[socket.socket] = []
                for _ in range(slow):
                    with contextlib.suppress(OSError):
                        s = socket.create_connection(("127.0.0.1", port), timeout=5)
                        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
                        s.setblocking(False)
                        slowloris.append(s)
                        socks[s], opened[s] = "slowloris", time.monotonic()
                att.note(
                    f"opened {len(socks)} in {time.monotonic() - started:.1f} s "
                    f"({refused} refused at connect)"
                )
                open_ = set(socks)
                tick = 0
                overdue: set[socket.socket] = set()
                while open_ - overdue:
                    time.sleep(0.5)
                    tick += 1
                    for s in list(open_):
                        try:
                            data = s.recv(4096)
                            if data or data == b"":
                                open_.discard(s)
                        except BlockingIOError:
                            if socks[s] == "slowloris" and tick % 2 == 0:
                                with contextlib.suppress(OSError):
                                    s.send(b"X-%d: a\r\n" % tick)
                        except OSError:
                            open_.discard(s)
                    overdue = {s for s in open_ if time.monotonic() - opened[s] > deadline_s}
                still: dict[str, int] = {}
                for s in overdue:
                    still[socks[s]] = still.get(socks[s], 0) + 1
                if still:
                    att.mark("hang", f"still open after {deadline_s:.0f} s: {still}")
                else:
                    att.note(f"all closed by the server after {time.monotonic() - started:.0f} s")
            finally:
                for s in socks:
                    s.close()
                now = self.log_lines(log_path)
                access, other = now[0] - lines_before[0], now[1] - lines_before[1]
                att.note(f"server.log +{other} lines (+{access} access-log lines)")
                if other > 100:
                    att.mark(
                        "wrong",
                        f"server.log grew {other} lines (not counting access lines) "
                        f"for {len(socks)} connections: flooded",
                    )
                after(att, mark)

    @staticmethod
    def log_lines(path: Path) -> tuple[int, int]:
        """(access-log lines, other lines) of a server log."""
        try:
            text = path.read_bytes()
        except OSError:
            return 0, 0
        lines = text.count(b"\n")
        access = len(re.findall(rb'"[A-Z]+ \S* HTTP/[0-9.]+" \d{3}', text))
        return access, lines - access

    # =================================================================================================
    # the report

    def table(self, areas: list[str]) -> str:
        rows = [["area", "tried", *OUTCOMES]]
        total = {o: 0 for o in OUTCOMES}
        for area in areas:
            atts = [a for a in self.attempts if a.area == area]
            if not atts:
                continue
            counts = {o: sum(a.outcome == o for a in atts) for o in OUTCOMES}
            for o in OUTCOMES:
                total[o] += counts[o]
            rows.append([area, str(len(atts)), *(str(counts[o]) for o in OUTCOMES)])
        rows.append(["all", str(sum(total.values())), *(str(total[o]) for o in OUTCOMES)])
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = []
        for j, row in enumerate(rows):
            lines.append(
                "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row))
            )
            if j == 0 or j == len(rows) - 2:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def cleanup(self) -> None:
        left = self.tagged(self.run_tag + ":")
        if left:
            print(f"chaos: ending {len(left)} leftover processes by PID: {[p.pid for p in left]}", flush=True)
            self.end(left, grace=3.0)
        for mnt in list(self.mounts):
            self.unmount(mnt)
        if self.args.keep:
            print(f"chaos: kept {self.root}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/chaos.py",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--only", metavar="AREA[,AREA]", help=f"areas to run (default: all of {','.join(AREAS)})"
    )
    parser.add_argument("--quick", action="store_true", help="fewer attempts and repetitions (a self-test)")
    parser.add_argument(
        "--seed", type=int, help="random signal points, delays and ports (default: random, printed)"
    )
    parser.add_argument("--out", type=Path, metavar="DIR", help="write DIR/chaos.json with every attempt")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, outputs)")
    args = parser.parse_args(argv)
    areas = list(AREAS)
    if args.only:
        areas = [a.strip() for a in args.only.split(",") if a.strip()]
        unknown = [a for a in areas if a not in AREAS]
        if unknown:
            parser.error(f"unknown area {', '.join(unknown)}; choose from {', '.join(AREAS)}")
    # a shell that started us in the background made SIGINT ignored, and children would inherit that
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)

    chaos = Chaos(args)
    print(
        f"chaos: seed {chaos.seed}{' (quick)' if chaos.quick else ''}; areas {','.join(areas)}; "
        f"temp {chaos.root}",
        flush=True,
    )
    started = time.monotonic()
    interrupted = False
    try:
        for area in areas:
            print(f"== {area}", flush=True)
            t0 = time.monotonic()
            try:
                getattr(chaos, f"area_{area}")()
            except (Exception, SystemExit) as err:  # one area's broken set-up must not stop the others
                with chaos.attempt(area, "area-set-up") as att:
                    att.mark("wrong", f"harness: the area stopped early: {type(err).__name__}: {err}")
            print(f"== {area}: {time.monotonic() - t0:.0f} s", flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print("chaos: interrupted; cleaning up", flush=True)
    finally:
        chaos.cleanup()
    elapsed = time.monotonic() - started
    shown_areas = [a for a in ("setup", *AREAS) if any(x.area == a for x in chaos.attempts)]
    print()
    print(chaos.table(shown_areas))
    if chaos.health_summary:
        h = chaos.health_summary
        print(
            f"/health during the hostile-HTTP part: worst {h['worst_s'] * 1000:.0f} ms "
            f"over {h['samples']} probes "
            f"(target < {HEALTH_TARGET_S * 1000:.0f} ms), {h['failed']} failed"
        )
    for note in chaos.notes:
        print(f"note: {note}")
    bad = [a for a in chaos.attempts if a.outcome != "clean"]
    if bad:
        print("\nnot clean:")
        for a in bad:
            print(
                f"  [{a.area}] {a.name}: {a.outcome}\n    command: {a.command}\n"
                f"    detail:  {'; '.join(a.findings)[:600]}"
            )
    print(
        f"\nchaos: {len(chaos.attempts)} attempts in {elapsed:.0f} s, {len(bad)} not clean "
        f"(seed {chaos.seed})"
    )
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        report = {
            "seed": chaos.seed,
            "quick": chaos.quick,
            "areas": areas,
            "seconds": round(elapsed, 1),
            "interrupted": interrupted,
            "health": chaos.health_summary,
            "notes": chaos.notes,
            "attempts": [a.as_json() for a in chaos.attempts],
        }
        (args.out / "chaos.json").write_text(json.dumps(report, indent=2) + "\n")
        print(f"chaos: every attempt in {args.out / 'chaos.json'}")
    if interrupted:
        return 130
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
