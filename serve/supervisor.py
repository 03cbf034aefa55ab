"""Supervise a FastDeploy server: start it, wait until it answers, watch it, stop the whole tree.

FastDeploy keeps its HTTP port closed until the weights are loaded (a minute or more for the big
models), so "connection refused" is the normal state during start-up; what matters is whether the
process is still alive. A process that dies is reported at once, with the tails of its logs and the
likely cause (`diagnose`), instead of after the start-up timeout. The server runs in its own process
group, so one signal reaches the API server, the engine and every worker; stopping is SIGTERM, a
grace period, then SIGKILL, and also reaches workers that left the group.

Its ports are locked (`ernie_ops.proc.Lock`, the descriptors handed to the server) so that two starts
on one port cannot both succeed, and a foreground server dies with its supervisor, SIGKILL included.
`detach=True` leaves the server running and records it in a JSON state file that `server_status`
and `stop_server` read back. An `--api-key` value is never printed or stored (shown as `***`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ernie_ops.errors import Terminated
from ernie_ops.files import write_text_atomic
from ernie_ops.proc import Lock
from ernie_ops.supervise import (
    KILL_WAIT_S,
    Child,
    Known,
    alive,
    exit_text,
    from_ticks,
    last_exception,
    match_known,
    read_tail,
    signal_name,
    start,
    stop_tree,
    tree,
)
from ernie_ops.text import strip_ansi

POLL_S = 0.25  # how often the child and /health are checked while waiting
PROGRESS_EVERY_S = 5.0  # one progress line this often when the output is not a terminal
HEALTH_EVERY_S = 10.0  # after ready: /health checked this often (404 = a worker stopped beating)
PROBE_TIMEOUT_S = 2.0
STOP_GRACE_S = 10.0
TAIL_LINES = 20
TAIL_BYTES = 64 * 1024
SECRET_FLAGS = ("--api-key",)
SECRET_ENV = ("FD_API_KEY",)
MASK = "***"
HEADER = "=== ernie-ops serve:"  # our line in server.log that separates runs


# ---------------------------------------------------------------------------------------------
# diagnosis


# Most specific first: an OOM inside a worker also ends in "Failed to launch worker processes" and
# "Failed to initialize FastDeploy LLM engine", which say only that something went wrong.
KNOWN_FAILURES: tuple[Known, ...] = (
    Known(
        re.compile(r"No module named '?fastdeploy"),
        "FastDeploy is not installed in this Python environment",
        "install fastdeploy-gpu from Paddle's package index (scripts/setup_gpu.sh), or serve on CPU",
    ),
    Known(
        re.compile(
            r"out of memory|ResourceExhausted|cudaErrorMemoryAllocation|\bOOM\b"
            r"|(not enough|insufficient) (gpu |device )?memory",
            re.I,
        ),
        "the GPU ran out of memory at start-up (weights + KV cache do not fit)",
        "lower --gpu-memory-utilization (e.g. 0.8), --max-num-seqs or --max-model-len, quantize "
        "(--quantization wint8 / wint4), or add GPUs (--tensor-parallel-size)",
    ),
    Known(
        re.compile(
            r"no kernel image is available|cudaErrorNoKernelImageForDevice|unsupported (gpu|sm|arch)"
            r"|(sm|compute capability)[ _]?\d+ is not supported",
            re.I,
        ),
        "this GPU's architecture has no FastDeploy kernels (prebuilt wheels cover SM80/86/89/90 only)",
        "run on an A100/A800/A30/L20/H20/H800-class GPU, or build FastDeploy from source for this SM",
    ),
    Known(
        re.compile(r"address already in use|Errno 98\b|port \d+ is (already )?(in use|occupied)", re.I),
        "a port FastDeploy needs is already taken (another server on this host?)",
        "pick free ports for all four: --port, --metrics-port, --engine-worker-queue-port and "
        "--cache-queue-port (or stop the other server: ernie-ops serve stop)",
    ),
    Known(
        re.compile(
            r"(reasoning|tool)[ _](call[ _])?(helper|parser)\b[^\n]*not (found|registered|supported)"
            r"|not found in (reasoning|tool)_?parsers?"
            r"|(unknown|invalid|unsupported) (reasoning|tool)[ _-]?(call[ _-]?)?parser",
            re.I,
        ),
        "the --reasoning-parser / --tool-call-parser name is unknown to this FastDeploy version",
        "use a name this version knows: ernie-45-vl, ernie-45-vl-thinking, ernie-x1 (2.1/2.2: ernie_x1; "
        "2.0: only ernie-45-vl), qwen3",
    ),
    Known(
        re.compile(r"Too many image items in prompt|Too many (video|audio) items", re.I),
        "a request had more images/videos than --limit-mm-per-prompt allows (default: 1 of each)",
        """raise the limit, e.g. --limit-mm-per-prompt '{"image": 4, "video": 1}'""",
    ),
    Known(
        re.compile(r"cannot unpack non-iterable bool object"),
        "a torch (-PT) checkpoint on FastDeploy 2.0/2.1, which reads Paddle checkpoints only",
        "serve the -Paddle checkpoint, or upgrade to FastDeploy >= 2.2",
    ),
    Known(
        re.compile(
            r"Repo(sitory)? ?Not ?Found|(download|downloading)[^\n]{0,80}(model|repo)"
            r"|(model|path)[^\n]{0,80}(does not exist|not found|no such file)",
            re.I,
        ),
        "the --model path was not found, so FastDeploy treated it as a hub id and tried to download it",
        "pass the absolute path of a local checkpoint directory (config.json + weights), or fetch it "
        "first: ernie-ops pull baidu/ERNIE-4.5-0.3B-Paddle",
    ),
    Known(
        re.compile(r"undefined symbol|fastdeploy_ops|(paddle|fastdeploy)[^\n]*version[^\n]*mismatch", re.I),
        "the paddlepaddle-gpu and fastdeploy-gpu builds do not match",
        "install the pair that belongs together (FD 2.0->Paddle 3.1.0, 2.1->3.1.1, 2.2->3.2.0, "
        "2.3->3.2.1, 2.4->3.3.0, 2.5->3.3.1): scripts/setup_gpu.sh",
    ),
    Known(
        re.compile(r"Failed to launch worker processes", re.I),
        "FastDeploy's worker processes failed to start",
        "read workerlog.* in the log directory; usual causes: mismatched paddlepaddle-gpu / fastdeploy-gpu "
        "builds, a GPU already busy (nvidia-smi), an unsupported GPU (SM80/86/89/90 only)",
    ),
    Known(
        re.compile(r"Worker Service Not Healthy", re.I),
        "a worker stopped sending heartbeats (hung or crashed) while the API server stayed up",
        "read workerlog.*; restart the server, and lower --max-num-seqs if it happens under load",
    ),
    Known(
        re.compile(r"Failed to initialize FastDeploy LLM engine", re.I),
        "the FastDeploy engine failed to start (the cause is earlier in workerlog.* / fastdeploy.log)",
        "read workerlog.* in the log directory; check the model path, GPU memory and the ports",
    ),
)


def diagnose(log_text: str) -> str | None:
    """The likely cause of a failure from FastDeploy's logs, with a one-line fix; None if unknown."""
    text = strip_ansi(log_text)
    found = match_known(text, KNOWN_FAILURES)
    if found is None:
        return None
    known, match = found
    port = _port_near(text, match) if "port" in known.fix else None
    cause = f"{known.cause} (port {port})" if port else known.cause
    return f"{cause}. Fix: {known.fix}"


def _port_near(text: str, match: re.Match[str]) -> str | None:
    """The port number on the line of an address-in-use error, when it says which."""
    start = text.rfind("\n", 0, match.start()) + 1
    end = text.find("\n", match.end())
    line = text[start : end if end >= 0 else len(text)]
    found = re.search(r"\(\s*'[^']*',\s*(\d{2,5})\)|port[ =:]*(\d{2,5})|:(\d{2,5})\b", line, re.I)
    return next((g for g in found.groups() if g), None) if found else None


# ---------------------------------------------------------------------------------------------
# secrets


@dataclass
class Redactor:
    """Hides API keys: in the command (`--api-key ***`) and anywhere they appear in log text."""

    secrets: list[str] = field(default_factory=list)

    @classmethod
    def for_run(cls, command: list[str], env: dict[str, str] | None = None) -> Redactor:
        secrets = [value for _, value in _secret_args(command)]
        secrets += [env[name] for name in SECRET_ENV if env and env.get(name)]
        # longest first so a key that contains another is hidden whole
        return cls(sorted({s for s in secrets if s}, key=len, reverse=True))

    def command(self, command: list[str]) -> list[str]:
        out = list(command)
        for index, _ in _secret_args(command):
            flag, eq, _value = out[index].partition("=")
            out[index] = f"{flag}={MASK}" if eq else MASK
        return out

    def text(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text


def _secret_args(command: list[str]) -> list[tuple[int, str]]:
    """(index, value) of every secret value: `--api-key X` and `--api-key=X`."""
    found = []
    for i, arg in enumerate(command):
        if arg in SECRET_FLAGS and i + 1 < len(command):
            found.append((i + 1, command[i + 1]))
        elif arg.partition("=")[0] in SECRET_FLAGS and "=" in arg:
            found.append((i, arg.partition("=")[2]))
    return found


def show_command(command: list[str]) -> str:
    """The command as a shell line with secrets hidden (`--api-key ***`, unquoted so it reads plainly)."""
    shown = Redactor().command(command)
    hidden = {i for i, _ in _secret_args(command)}
    return " ".join(arg if i in hidden else shlex.quote(arg) for i, arg in enumerate(shown))


def redact_command(command: list[str]) -> list[str]:
    """The command with every `--api-key` value replaced by ***."""
    return Redactor().command(command)


# ---------------------------------------------------------------------------------------------
# logs


@dataclass
class Logs:
    """The server's logs in log_dir, read from where they stood when this run started.

    Old workerlog.* files from an earlier run must not be mistaken for this run's (an OOM from
    yesterday is not today's cause), so each file is read from its size at start.
    """

    log_dir: Path
    start: dict[str, int] = field(default_factory=dict)

    def mark(self) -> None:
        self.start = {p.name: p.stat().st_size for p in self._files()}

    @property
    def server_log(self) -> Path:
        return self.log_dir / "server.log"

    def _files(self) -> list[Path]:
        if not self.log_dir.is_dir():
            return []
        files = [p for p in self.log_dir.iterdir() if p.is_file() and _is_log(p.name)]
        return sorted(files, key=lambda p: (p.name != "server.log", p.name))

    def lines(self, path: Path, limit: int | None = None) -> list[str]:
        """This run's lines of one file (the last TAIL_BYTES at most), cleaned of colours and \\r bars."""
        return read_tail(path, self.start.get(path.name, 0), limit, TAIL_BYTES)

    def tails(self, limit: int = TAIL_LINES) -> dict[str, list[str]]:
        """server.log and workerlog.* (the files a person reads first), non-empty ones only."""
        out = {}
        for path in self._files():
            if path.name == "server.log" or path.name.startswith("workerlog."):
                lines = self.lines(path, limit)
                if lines:
                    out[path.name] = lines
        return out

    def all_text(self) -> str:
        return "\n".join("\n".join(self.lines(p)) for p in self._files())

    def last_line(self) -> str | None:
        """The newest meaningful line of the most recently written log: what the server is doing."""
        files = sorted(self._files(), key=_mtime, reverse=True)
        for path in files:
            for line in reversed(self.lines(path, 5)):
                if len(line.strip()) > 3 and not line.startswith(HEADER):
                    return line.strip()
        return None


def _is_log(name: str) -> bool:
    return name.endswith(".log") or name.startswith("workerlog.")


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


# ---------------------------------------------------------------------------------------------
# HTTP


def probe_host(host: str) -> str:
    """Where to reach a server bound to `host` from this machine (a wildcard means loopback)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def server_url(host: str, port: int) -> str:
    address = probe_host(host)
    return f"http://[{address}]:{port}" if ":" in address else f"http://{address}:{port}"


def probe_health(
    host: str, port: int, api_key: str | None = None, timeout: float = PROBE_TIMEOUT_S, path: str = "/health"
) -> int | None:
    """The HTTP status of GET `path` (the backend's health path), or None when nothing answers (the
    port is still closed)."""
    import http.client

    connection = http.client.HTTPConnection(probe_host(host), port, timeout=timeout)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        connection.request("GET", path, headers=headers)
        return connection.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def _port_taken(host: str, port: int) -> bool:
    """Something already listens there: its /health would be mistaken for our server's."""
    import socket

    try:
        with socket.create_connection((probe_host(host), port), timeout=1.0):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# output


@dataclass
class Console:
    """Progress on stdout (one status line rewritten in place on a terminal, by tqdm), problems on
    stderr, secrets hidden."""

    redactor: Redactor
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    _bar: Any = None  # the live status line (a tqdm without a bar), while one is showing

    def say(self, message: str) -> None:
        self._end_live()
        print(self.redactor.text(message), file=self.out, flush=True)

    def warn(self, message: str) -> None:
        self._end_live()
        self.out.flush()
        print(self.redactor.text(message), file=self.err, flush=True)

    def progress(self, message: str) -> None:
        message = self.redactor.text(message)
        if not _isatty(self.out):
            print(message, file=self.out, flush=True)
        elif self._bar is None:
            from tqdm import tqdm

            # no bar, no counter: the line is the message, cut to the terminal's width
            self._bar = tqdm(total=None, bar_format="{desc}", desc=message, file=self.out, dynamic_ncols=True)
        else:
            self._bar.set_description_str(message)

    def _end_live(self) -> None:
        if self._bar is not None:
            self._bar.close()  # the last state stays on its own line
            self._bar = None


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _report_failure(console: Console, headline: str, logs: Logs, code: int | None = None) -> None:
    """What happened, the log tails a person would open, and the likely cause with its fix."""
    console.warn(f"error: {headline}")
    tails = logs.tails()
    for name, lines in tails.items():
        console.warn(f"--- {logs.log_dir / name} (last {len(lines)} lines) ---")
        console.warn("\n".join("  " + line for line in lines))
    if not tails:
        console.warn(f"(no log output in {logs.log_dir})")
    cause = diagnose(logs.all_text())
    if cause is None:
        last = last_exception((line for lines in tails.values() for line in lines), width=300)
        cause = f"not a known FastDeploy failure; the last error: {last}" if last else None
    if cause is None and code is not None and code < 0:
        cause = (
            f"killed by signal {signal_name(-code)} (SIGKILL without an error: often the host's OOM killer)"
        )
    if cause:
        console.warn(f"likely cause: {cause}")
    console.warn(f"full logs: {logs.log_dir}")


# ---------------------------------------------------------------------------------------------
# run / status / stop


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def _signals_interrupt():
    """SIGTERM and SIGHUP to the supervisor stop the server like Ctrl-C does, whoever calls it (the
    CLI does the same; only the main thread may set handlers)."""
    try:
        previous = {sig: signal.signal(sig, _raise_terminated) for sig in (signal.SIGTERM, signal.SIGHUP)}
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclass
class _Server:
    child: Child
    host: str
    port: int
    logs: Logs
    console: Console
    api_key: str | None
    ports: list[int] = field(default_factory=list)  # every port it binds (locked), the main one first
    started: float = field(default_factory=time.monotonic)
    health_path: str = "/health"

    @property
    def process(self) -> subprocess.Popen:
        return self.child.process

    @property
    def url(self) -> str:
        return server_url(self.host, self.port)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        self.child.stop(grace)

    def health(self) -> int | None:
        return probe_health(self.host, self.port, self.api_key, path=self.health_path)

    def listener(self) -> int | None:
        """The pid in the server's tree that listens on its port; None if none does (yet)."""
        return _listener(tree(self.process.pid, self.process.pid, self.child.created), self.port)


def _listener(pids: Iterable[int], port: int) -> int | None:
    import psutil

    for pid in sorted(pids):
        try:
            connections = psutil.Process(pid).net_connections(kind="inet")
        except (psutil.Error, OSError):
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in connections):
            return pid
    return None


def lock_path(directory: Path, port: int) -> Path:
    return directory / f"{port}.lock"


def _take_ports(directory: Path, ports: Iterable[int], command: str) -> list[Lock] | str:
    """A lock per port, all or none (the main port first); else why not (who holds which port)."""
    taken: list[Lock] = []
    for port in dict.fromkeys(ports):
        lock = Lock(lock_path(directory, port))
        if not lock.acquire(command):
            for held in taken:
                held.release()
            owner = Lock.holder(lock.path)
            who = owner.describe() if owner and owner.pid else "another ernie-ops serve"
            return f"port {port} is already taken by a server ernie-ops started ({who})"
        taken.append(lock)
    return taken


def run_server(
    command: list[str],
    env: dict[str, str],
    log_dir: Path,
    host: str,
    port: int,
    startup_timeout: float,
    detach: bool,
    state_file: Path,
    ports: Iterable[int] = (),
    view: Path | None = None,
    health_path: str = "/health",
    record: dict[str, Any] | None = None,
) -> int:
    """Start the server, wait until GET /health answers 200, then supervise it (or detach).

    The server's ports (`port` and the side `ports`) are locked in state_file's directory before it
    starts, and the locks are handed to the server, so they last exactly as long as it does: a second
    start on a port in use is refused at once. A foreground server dies with this process (even by
    SIGKILL); a detached one is recorded in `state_file` from its start (`view`: a symlink to it
    in the project), and called ready only once /health answers and its own process tree listens on
    the port (`health_path`: the backend's; `record`: more fields for the state file, such as the
    backend's name). `env` is the child's whole environment; FD_LOG_DIR is set to log_dir so FastDeploy's
    own logs (workerlog.N, fastdeploy.log) land beside server.log. Returns 0 ready (detach) or
    stopped cleanly, 1 failed (died, timed out, port taken), 130 interrupted (Ctrl-C), 128+N ended
    by signal N (SIGTERM 143, SIGHUP 129).
    """
    redactor = Redactor.for_run(command, env)
    console = Console(redactor)
    shown = show_command(command)
    locks = _take_ports(state_file.parent, [port, *ports], shown)
    if isinstance(locks, str):
        console.warn(
            f"error: {locks}. Fix: choose another --port, or stop it: ernie-ops serve stop --port {port}"
        )
        return 1
    try:
        if _port_taken(host, port):
            console.warn(
                f"error: {probe_host(host)}:{port} is already in use (another server?): its /health would "
                "look like ours. Fix: choose another --port (and --metrics-port, --engine-worker-queue-port,"
                " --cache-queue-port), or stop the other server"
            )
            return 1
        return _run(
            command,
            env,
            log_dir,
            host,
            port,
            startup_timeout,
            detach,
            state_file,
            view,
            locks,
            console,
            health_path,
            record or {},
        )
    finally:
        for lock in locks:  # our copies only: the server keeps its own until it exits
            if lock.fd is not None:
                os.close(lock.fd)
                lock.fd = None


def _run(
    command: list[str],
    env: dict[str, str],
    log_dir: Path,
    host: str,
    port: int,
    startup_timeout: float,
    detach: bool,
    state_file: Path,
    view: Path | None,
    locks: list[Lock],
    console: Console,
    health_path: str = "/health",
    record: dict[str, Any] | None = None,
) -> int:
    log_dir.mkdir(parents=True, exist_ok=True)
    logs = Logs(log_dir)
    logs.mark()
    secrets = [v for _, v in _secret_args(command)] + [env.get(name, "") for name in SECRET_ENV]
    api_key = next((s for s in secrets if s), None)
    url = server_url(host, port)
    console.say(f"starting: {show_command(command)}")
    console.say(
        f"logs: {log_dir} (server.log, workerlog.*); waiting for {url}{health_path} "
        f"(up to {startup_timeout:.0f} s)"
    )
    server: _Server | None = None
    shown = console.redactor.command(command)
    ready = False
    with _signals_interrupt():
        try:
            fds = [lock.fd for lock in locks if lock.fd is not None]
            server = _start(command, env, logs, host, port, console, api_key, fds, detach)
            server.ports = [int(lock.path.stem) for lock in locks]
            server.health_path = health_path
            extra = {**(record or {}), "health_path": health_path}
            if detach:  # recorded from the start: a supervisor killed while waiting leaves it stoppable
                _write_state(state_file, server, shown, "starting", view, extra)
            status = _wait_ready(server, startup_timeout)
            if status is not None:
                return status
            console.say(f"ready: {url} (pid {server.process.pid}, after {server.elapsed():.0f} s)")
            if detach:
                _write_state(state_file, server, shown, "ready", view, extra)
                ready = True
                console.say(
                    f"detached; state in {state_file}. Stop it with: ernie-ops serve stop --port {port}"
                )
                return 0
            console.say("serving; Ctrl-C stops the server")
            return _supervise(server)
        except KeyboardInterrupt as stop:  # Ctrl-C, or Terminated by SIGTERM / SIGHUP
            if server is not None:
                console.warn(
                    "interrupted: stopping the server (SIGTERM, then SIGKILL after the grace period)"
                )
                server.stop()
                console.warn(f"stopped (pid {server.process.pid} and its workers)")
            return 128 + stop.signum if isinstance(stop, Terminated) else 130
        finally:
            if detach and not ready:
                _forget(state_file)


def _start(
    command: list[str],
    env: dict[str, str],
    logs: Logs,
    host: str,
    port: int,
    console: Console,
    api_key: str | None,
    lock_fds: list[int],
    detach: bool,
) -> _Server:
    child_env = {**env, "FD_LOG_DIR": str(logs.log_dir)}
    # unbuffered: the progress line shows server.log's newest line, which must not sit in a buffer
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    with logs.server_log.open("a", encoding="utf-8") as log:
        log.write(f"{HEADER} started {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n")
        log.flush()
        # own session: one signal reaches engine and workers, Ctrl-C is ours; the port locks live as
        # long as the server; a foreground server goes when we go, even by SIGKILL (SIGTERM so it
        # stops its workers), a detached one stays
        child = start(
            command,
            env=child_env,
            stdout=log,
            pass_fds=lock_fds,
            death_signal=None if detach else signal.SIGTERM,
        )
    return _Server(child, host, port, logs, console, api_key)


def _wait_ready(server: _Server, startup_timeout: float) -> int | None:
    """None once /health is 200 from our own server; else the exit status for run_server (the
    server is then stopped)."""
    console = server.console
    last_progress = 0.0
    status: int | None = None
    while True:
        code = server.process.poll()
        if code is not None:
            _report_failure(
                console,
                f"the server {exit_text(code)} after {server.elapsed():.0f} s, before it was ready",
                server.logs,
                code,
            )
            server.stop(grace=2.0)  # workers it may have left behind
            return 1
        status = server.health()
        if status == 200 and server.process.poll() is None:
            if server.listener() is not None:
                return None
            server.stop()
            _report_failure(
                console,
                f"another process answers on port {server.port} (it took the port while ours was "
                "starting); stopped ours. Choose another --port",
                server.logs,
            )
            return 1
        if server.elapsed() > startup_timeout:
            server.stop()
            _report_failure(
                console,
                f"not ready after {startup_timeout:.0f} s (last /health: {status or 'connection refused'}); "
                "stopped it. A big model can need minutes: raise the start-up timeout if the log shows "
                "progress; a silent hang is often a port clash",
                server.logs,
            )
            return 1
        now = time.monotonic()
        every = POLL_S * 4 if _isatty(console.out) else PROGRESS_EVERY_S
        if now - last_progress >= every:
            last_progress = now
            state = "loading" if status is None else f"/health {status}"
            last = server.logs.last_line() or "(no log output yet)"
            console.progress(f"  {server.elapsed():5.0f} s  {state}  | {last[:160]}")
        time.sleep(POLL_S)


def _supervise(server: _Server) -> int:
    """Until the server exits on its own (reported, 1) or Ctrl-C / SIGTERM (raised to the caller)."""
    next_check = time.monotonic() + HEALTH_EVERY_S
    unhealthy = False
    while True:
        code = server.process.poll()
        if code is not None:
            server.stop(grace=2.0)  # workers it left behind
            if code == 0:
                server.console.say(f"the server exited on its own (status 0) after {server.elapsed():.0f} s")
                return 0
            _report_failure(
                server.console,
                f"the server {exit_text(code)} after {server.elapsed():.0f} s",
                server.logs,
                code,
            )
            return 1
        if time.monotonic() >= next_check:
            next_check = time.monotonic() + HEALTH_EVERY_S
            status = server.health()
            if status != 200 and not unhealthy:
                meaning = {
                    404: "a worker stopped beating (Worker Service Not Healthy)",
                    304: "weights cleared",
                }
                server.console.warn(
                    f"warning: /health answered {status}: {meaning.get(status or 0, 'no answer')}"
                )
            elif status == 200 and unhealthy:
                server.console.say("healthy again")
            unhealthy = status != 200
        time.sleep(POLL_S)


def _write_state(
    state_file: Path,
    server: _Server,
    shown_command: list[str],
    phase: str,
    view: Path | None,
    extra: dict[str, Any] | None = None,
) -> None:
    pid = server.process.pid
    state = {
        **(extra or {}),
        "pid": pid,
        "pgid": os.getpgid(pid),
        "created": server.child.created,  # its start time: tells it from a later process with its pid
        "phase": phase,  # starting, then ready (verified: its own process listens on the port)
        "listener_pid": server.listener() if phase == "ready" else None,
        "host": server.host,
        "port": server.port,
        "ports": server.ports,
        "url": server.url,
        "log_dir": str(server.logs.log_dir),
        "command": shown_command,
        "cwd": os.getcwd(),
        "view": str(view.absolute()) if view else None,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_text_atomic(state_file, json.dumps(state, indent=2) + "\n")
    if view is not None and not view.is_symlink():
        with contextlib.suppress(OSError):  # a view is a convenience: never fail the start over it
            view.parent.mkdir(parents=True, exist_ok=True)
            view.symlink_to(state_file.absolute())


def _forget(state_file: Path, state: dict[str, Any] | None = None) -> None:
    """Remove a server's record and its view in the project."""
    state = state or _read_state(state_file) or {}
    view = Path(state["view"]) if state.get("view") else None
    if view is not None and view.is_symlink() and Path(os.readlink(view)) == state_file.absolute():
        view.unlink(missing_ok=True)
    state_file.unlink(missing_ok=True)


def _read_state(state_file: Path) -> dict[str, Any] | None:
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and isinstance(state.get("pid"), int) else None


def _created(state: dict[str, Any]) -> float | None:
    """The recorded server's start time (older records hold it as clock ticks since boot)."""
    created, ticks = state.get("created"), state.get("start_ticks")
    if isinstance(created, (int, float)):
        return float(created)
    return from_ticks(ticks) if isinstance(ticks, int) else None


def _is_ours(state: dict[str, Any]) -> bool:
    """The recorded server is alive, and its pid has not been reused by another process since."""
    return alive(state["pid"], _created(state))


def server_status(state_file: Path) -> dict[str, Any]:
    """A detached server's record with "running", "healthy" (None when not running) and "state":
    ready, starting, unhealthy, or stale (its process is gone: the record outlived it)."""
    state = _read_state(state_file)
    if state is None:
        reason = "no state file" if not state_file.exists() else "unreadable state file"
        return {
            "running": False,
            "healthy": None,
            "state": "missing",
            "state_file": str(state_file),
            "reason": reason,
        }
    running = _is_ours(state)
    path = state.get("health_path") or "/health"
    status = probe_health(state["host"], state["port"], path=path) if running else None
    if not running:
        word = "stale"
    elif state.get("phase") == "starting":
        word = "starting"
    else:
        word = "ready" if status == 200 else "unhealthy"
    return {
        **state,
        "running": running,
        "healthy": None if not running else status == 200,
        "health_status": status,
        "state": word,
        "url": state.get("url") or server_url(state["host"], state["port"]),
        "state_file": str(state_file),
    }


def stop_server(state_file: Path, timeout: float = 30.0) -> bool:
    """Stop a detached server's whole tree and remove its record; True if something was stopped.

    A stale record (the server is gone) is removed, after stopping workers it left in its group."""
    state = _read_state(state_file)
    if state is None:
        with contextlib.suppress(FileNotFoundError):
            state_file.unlink()
        return False
    pid, pgid, created = state["pid"], state.get("pgid", state["pid"]), _created(state)
    # a reused pid is someone else's process: left alone; workers left in the group are still ours
    stopped = stop_tree(pid, pgid, timeout, created=created)
    if _is_ours(state):
        from ernie_ops.errors import UserError

        raise UserError(
            f"pid {pid} (the server on port {state['port']}) survived SIGKILL; its record is kept"
        )
    _await_ports_released(state_file.parent, state.get("ports") or [state["port"]])
    _forget(state_file, state)
    return stopped


def _await_ports_released(directory: Path, ports: list[int], timeout: float = KILL_WAIT_S) -> None:
    """Return once no process holds the servers' port locks (or after TIMEOUT), so a stopped
    server's ports can be taken again at once: a leader thread that exited shows as a zombie while
    its other threads, which share the lock's file descriptor, are still finishing."""
    deadline = time.monotonic() + timeout
    while any(Lock.holder(lock_path(directory, p)) is not None for p in ports):
        if time.monotonic() >= deadline:
            return
        time.sleep(0.05)


def list_servers(directory: Path) -> list[dict[str, Any]]:
    """Every server ernie-ops started on this machine for this user, by port: the detached ones
    from their records (with `server_status`), the foreground ones from the port locks they hold."""
    found: dict[int, dict[str, Any]] = {}
    for path in directory.glob("*.json") if directory.is_dir() else []:
        status = server_status(path)
        if status["state"] != "missing":
            found[status["port"]] = status
    recorded = {port for status in found.values() for port in status.get("ports") or [status["port"]]}
    holders: dict[tuple[int, str], list[tuple[float, int]]] = {}
    for path in directory.glob("*.lock") if directory.is_dir() else []:
        if path.stem.isdigit() and int(path.stem) not in recorded:
            owner = Lock.holder(path)
            if owner is not None:
                holders.setdefault((owner.pid, owner.command), []).append((owner.started, int(path.stem)))
    for (pid, command), taken in holders.items():
        started, port = min(taken)  # the main port is locked first
        found[port] = {
            "port": port,
            "ports": [p for _, p in sorted(taken)],
            "state": "foreground",
            "running": True,
            "pid": pid,
            "command": command,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        }
    return [found[port] for port in sorted(found)]
