"""A rollout controller's router over HAProxy's runtime API: the weights of two servers of a backend.

HAProxy is what teams often already run in front of inference servers on bare GPU nodes. The
controller changes the split with `set weight BACKEND/SERVER` on the runtime API (the `stats socket`
of haproxy.cfg, `level admin`: a unix socket, or `ipv4@host:port`) and reads the gates' figures:

- **Requests and errors: HAProxy's counters** (`show stat`, per server, differences since the
  stage began): attempts = `stot`; errors = `hrsp_5xx` + `eresp` + `econ` + `wretr`, the error
  rate is errors / attempts. With the log, a request counts towards the stage's `min_requests` once
  it has ended (a log line, or a retried failure), so a stage does not pass on fast answers alone
  while slow ones are still running. `wretr`
  counts the attempts HAProxy retried elsewhere (`retry-on` with `option redispatch`): the client
  got stable's answer, but the candidate failed it, as the gateway counts a retried request.
- **Latency p99: HAProxy's log, not its stats.** `show stat` gives `rtime` / `ttime` as averages over
  the last 1024 requests, which hide a slow tail, so the gates read every request's timers from
  HAProxy's `option httplog` lines, sent as syslog over UDP to the controller (`haproxy.log:
  host:port`, the address in haproxy.cfg's `log` line): E2E = `Ta` (total active time), TTFT = `Tr`
  (time until the server's response headers: for a whole answer, all of it; for a stream, until
  the server began answering, which is earlier than the first token). Exact p99 over the stage.
  Latency gates without `haproxy.log` are refused when the rollout is read.
- **Weights**: a candidate share of W% is `candidate` weight round(2.56 W), `stable` the rest of 256
  (HAProxy's largest); all-stable sets the candidate to 0 (drained: no new requests), all-candidate
  the stable. The raised weight is set before the lowered one, so no moment has both at 0.
- **Revision**: HAProxy keeps none. The router keeps the weights it set and a revision number in a
  file beside the controller's state; weights found different from those (an operator's change, or
  a reload that restored haproxy.cfg's weights: keep them across reloads with `server-state-file`)
  are a foreign change, and the controller stops instead of overriding it.
- **No shadow**: HAProxy does not copy a request body to a second server (only through an SPOE
  agent), so a shadow stage with HAProxy is refused when the rollout is read; a small split stage
  with a judged agreement gate (`ernie_ops.rollout.suitegates`) takes its place.

recipes/rollouts/haproxy.cfg is a working configuration (retries on stable, the log line, the
candidate at weight 0 so a restart without state is all-stable).
"""

from __future__ import annotations

import collections
import contextlib
import json
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ernie_ops import supervise
from ernie_ops.errors import UserError
from ernie_ops.files import write_text_atomic
from ernie_ops.rollout.metrics import quantile
from ernie_ops.rollout.spec import HaproxySpec

MAX_WEIGHT = 256
ERROR_COUNTERS = ("hrsp_5xx", "eresp", "econ", "wretr")
COUNTERS = ("stot", *ERROR_COUNTERS)
LOG_KEPT = 200_000  # request timings kept (a stage's p99 is exact over these)
# `option httplog`: "... FRONTEND BACKEND/SERVER TR/Tw/Tc/Tr/Ta STATUS ..." (Ta may carry a "+")
_HTTPLOG = re.compile(r" (\S+)/(\S+) (-?\d+)/(-?\d+)/(-?\d+)/(-?\d+)/\+?(-?\d+) (-?\d+) ")


def weights_for(mode: str, weight: float) -> tuple[int, int]:
    """(stable, candidate) server weights for MODE and the candidate's WEIGHT percent."""
    if mode == "all-stable":
        return MAX_WEIGHT, 0
    if mode == "all-candidate":
        return 0, MAX_WEIGHT
    if mode == "split":
        candidate = min(MAX_WEIGHT - 1, max(1, round(weight * MAX_WEIGHT / 100)))
        return MAX_WEIGHT - candidate, candidate
    raise UserError(
        f"HAProxy cannot do {mode!r}: it does not copy requests to a second server",
        hint="use split, all-stable or all-candidate stages with HAProxy",
    )


def routing_of(stable: int, candidate: int) -> tuple[str, float]:
    """(mode, candidate percent) that server weights amount to."""
    if candidate == 0:
        return "all-stable", 0.0
    if stable == 0:
        return "all-candidate", 100.0
    return "split", round(100 * candidate / (stable + candidate), 2)


class RuntimeAPI:
    """One command per connection (the runtime API's non-interactive mode)."""

    def __init__(self, address: str, timeout: float = 5.0):
        self.address = address
        self.timeout = timeout

    def _connect(self) -> socket.socket:
        address = self.address.removeprefix("unix:").removeprefix("ipv4@")
        host, _, port = address.rpartition(":")
        try:
            if "/" not in address and port.isdigit():
                return socket.create_connection((host or "127.0.0.1", int(port)), self.timeout)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            sock.connect(address)
            return sock
        except PermissionError:
            raise UserError(
                f"no permission to HAProxy's runtime API at {self.address}",
                hint="run as the socket's owner, or give the `stats socket` line a `mode` or `user` for it",
            ) from None
        except OSError as err:
            raise ConnectionError(
                f"HAProxy's runtime API at {self.address} cannot be reached: {err}"
            ) from None

    def __call__(self, command: str) -> str:
        with self._connect() as sock:
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        answer = b"".join(chunks).decode("utf-8", "replace")
        first = answer.strip().splitlines()[0] if answer.strip() else ""
        if (
            first.startswith(("Unknown command", "No such", "Permission denied", "Require "))
            or "not found" in first
        ):
            raise UserError(f"HAProxy refused `{command}`: {answer.strip()[:300]}", hint=_HINT)
        return answer


_HINT = "the `stats socket` line needs `level admin`, and the backend and servers the rollout names"


class LogReceiver:
    """HAProxy's httplog lines over UDP syslog: each request's server, Tr and Ta, and when it ended."""

    def __init__(self, address: str, backend: str):
        host, _, port = address.rpartition(":")
        self.backend = backend
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.bind((host or "127.0.0.1", int(port)))
        except (OSError, ValueError) as err:
            raise UserError(
                f"cannot receive HAProxy's log on {address}: {err}",
                hint="haproxy.log is host:port of a free UDP port, as in haproxy.cfg's `log` line",
            ) from None
        bound = self.sock.getsockname()
        self.address = f"{bound[0]}:{bound[1]}"
        self.lines = 0
        self.timings: collections.deque[tuple[float, str, float, float]] = collections.deque(maxlen=LOG_KEPT)
        threading.Thread(target=self._receive, name="haproxy-log", daemon=True).start()

    def _receive(self) -> None:
        while True:
            try:
                data = self.sock.recv(65535)
            except OSError:
                return
            self.add(data.decode("utf-8", "replace"), time.time())

    def add(self, line: str, at: float) -> None:
        match = _HTTPLOG.search(line)
        if not match:
            return
        self.lines += 1
        backend, server, _, _, _, tr, ta, _status = match.groups()
        if backend == self.backend and int(tr) >= 0:
            self.timings.append((at, server, int(tr) / 1000, int(ta) / 1000))

    def since(self, t: float, server: str) -> tuple[list[float], list[float]]:
        """(sorted Tr, sorted Ta) in seconds of SERVER's requests that ended after T."""
        rows = [(tr, ta) for at, s, tr, ta in list(self.timings) if at >= t and s == server]
        return sorted(r[0] for r in rows), sorted(r[1] for r in rows)

    def close(self) -> None:
        self.sock.close()


class HaproxyRouter:
    """The `Router` of the rollout controller over HAProxy (see the module docstring)."""

    def __init__(
        self,
        spec: HaproxySpec,
        state_path: Path,
        stable: str | None = None,
        candidate: str | None = None,
        log: LogReceiver | None = None,  # one already listening (else spec.log's)
    ):
        self.spec = spec
        self.api = RuntimeAPI(spec.socket)
        self.state_path = Path(state_path)
        self.log = log or (LogReceiver(spec.log, spec.backend) if spec.log else None)
        self._urls = (stable, candidate) if stable and candidate else None
        self._snapshots: list[tuple[float, dict[str, dict[str, int]]]] = []
        self._check_servers()

    @property
    def servers(self) -> dict[str, str]:
        return {"stable": self.spec.stable_server, "candidate": self.spec.candidate_server}

    def _check_servers(self) -> None:
        found = self.stats()
        absent = [s for s in self.servers.values() if s not in found]
        if absent:
            raise UserError(
                f"HAProxy's backend {self.spec.backend!r} has no server {', '.join(map(repr, absent))} "
                f"(it has {', '.join(sorted(found)) or 'none'})",
                hint="name them in the rollout: haproxy: {backend, stable_server, candidate_server}",
            )

    def stats(self) -> dict[str, dict[str, int]]:
        """The backend's servers' counters and weights (`show stat`)."""
        text = self.api("show stat")
        lines = text.splitlines()
        if not lines or not lines[0].startswith("# "):
            raise UserError(f"HAProxy's `show stat` answered {text[:200]!r}", hint=_HINT)
        header = lines[0][2:].split(",")
        out = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == self.spec.backend and row.get("svname") not in ("BACKEND", "FRONTEND"):
                out[row["svname"]] = {k: int(row.get(k) or 0) for k in (*COUNTERS, "weight")}
        return out

    # -- revision ------------------------------------------------------------------------------

    def _recorded(self) -> dict[str, Any]:
        try:
            recorded: dict[str, Any] = json.loads(self.state_path.read_text(encoding="utf-8"))
            return recorded
        except FileNotFoundError:
            return {"revision": 0, "weights": None}
        except json.JSONDecodeError as err:
            raise UserError(f"{self.state_path}: not JSON ({err})", hint="remove it to start over") from None

    def routing(self) -> dict[str, Any]:
        stats = self.stats()
        weights = [stats[self.servers["stable"]]["weight"], stats[self.servers["candidate"]]["weight"]]
        recorded = self._recorded()
        revision = int(recorded["revision"])
        if recorded["weights"] is not None and recorded["weights"] != weights:
            revision += 1  # changed by someone else since this router set them
        mode, weight = routing_of(*weights)
        return {
            "mode": mode,
            "weight": weight,
            "revision": revision,
            "weights": weights,
            "updated": recorded.get("updated"),
        }

    def set(self, mode: str, weight: float, reason: str, revision: int | None) -> dict[str, Any]:
        wanted = weights_for(mode, weight)
        if revision is not None:
            current = self.routing()["revision"]
            if current != revision:
                raise UserError(f"revision {revision} is not the current one ({current})")
        names = (self.servers["stable"], self.servers["candidate"])
        order = sorted(range(2), key=lambda i: -wanted[i])  # the raised weight first
        self.api("; ".join(f"set weight {self.spec.backend}/{names[i]} {wanted[i]}" for i in order))
        updated = time.time()
        self._snapshots.append((updated, self.stats()))
        new = {
            "revision": int(self._recorded()["revision"]) + 1,
            "weights": list(wanted),
            "mode": mode,
            "weight": weight,
            "reason": reason,
            "updated": updated,
        }
        write_text_atomic(self.state_path, json.dumps(new, indent=2) + "\n")
        return new

    # -- figures -------------------------------------------------------------------------------

    def figures(self, since: float) -> dict[str, Any]:
        now_stats = self.stats()
        now = time.time()
        base = next((s for t, s in reversed(self._snapshots) if t <= since), None)
        if base is None:  # a restarted controller: count from its first reading
            base = next((s for t, s in self._snapshots if t > since), None)
        if base is None:
            self._snapshots.append((now, now_stats))
            base = now_stats
        out: dict[str, Any] = {"since": since, "now": now, "backends": {}, "shadow": {}}
        for role, server in self.servers.items():
            before, after = base.get(server, {}), now_stats[server]
            delta = {k: max(0, after[k] - before.get(k, 0)) for k in COUNTERS}
            started = delta["stot"]
            if not started:
                continue
            errors = min(started, sum(delta[k] for k in ERROR_COUNTERS))
            figures: dict[str, Any] = {"requests": started, "errors": errors, "error_rate": errors / started}
            if self.log is not None:
                trs, tas = self.log.since(since, server)
                # a request counts for the stage's minimums once it has ended (logged, or failed and
                # retried elsewhere), as on the gateway: slow ones still running have no timing yet
                figures["requests"] = min(started, len(tas) + delta["wretr"] + delta["econ"])
                figures["started"] = started
                figures |= {
                    "ttft_p99": quantile(trs, 0.99),
                    "e2e_p99": quantile(tas, 0.99),
                    "ttft_p50": quantile(trs, 0.5),
                    "e2e_p50": quantile(tas, 0.5),
                    "logged": len(tas),
                }
            out["backends"][f"{role}/client"] = figures
        self._check_log(out)
        return out

    def _check_log(self, figures: dict[str, Any]) -> None:
        """Requests through HAProxy and not one log line: the latency gates would see nothing."""
        total = sum(b.get("started", b["requests"]) for b in figures["backends"].values())
        if self.log is not None and self.log.lines == 0 and total >= 50:
            raise UserError(
                f"HAProxy answered {total} requests but sent no log line to {self.log.address}",
                hint=f"haproxy.cfg needs `log {self.log.address} local0` (global) and `option httplog`",
            )

    def endpoints(self) -> tuple[str, str] | None:
        return self._urls

    def close(self) -> None:
        if self.log is not None:
            self.log.close()


# -- a local HAProxy (tests, scripts/rollout_e2e.py) -------------------------------------------


def local_config(port: int, stable: str, candidate: str, runtime: str, log: str, backend: str = "llm") -> str:
    """haproxy.cfg for a frontend on PORT over STABLE and CANDIDATE (host:port), the runtime API on
    RUNTIME (a unix socket path), httplog to LOG (host:port); the settings of
    recipes/rollouts/haproxy.cfg, all-stable to begin with."""
    return f"""global
    stats socket {runtime} mode 600 level admin
    log {log} local0
defaults
    mode http
    log global
    option httplog
    timeout connect 3s
    timeout client 600s
    timeout server 600s
    retries 2
    option redispatch 1
    retry-on all-retryable-errors
    option http-buffer-request
frontend front
    bind 127.0.0.1:{port}
    default_backend {backend}
backend {backend}
    balance roundrobin
    server stable {stable} weight {MAX_WEIGHT}
    server candidate {candidate} weight 0
"""


def hostport(url: str) -> str:
    """host:port of a URL, as a haproxy.cfg `server` line takes it."""
    return url.split("//", 1)[1].split("/", 1)[0]


@dataclass(frozen=True)
class Local:
    url: str  # the frontend
    spec: HaproxySpec  # its runtime API socket, backend and httplog address
    log: LogReceiver


@contextlib.contextmanager
def local(stable: str, candidate: str, work: Path, port: int) -> Iterator[Local]:
    """HAProxy on 127.0.0.1:PORT over the STABLE and CANDIDATE URLs, all-stable, until the block
    ends: its config in WORK, its httplog received here, its runtime API on a socket in a short
    temporary directory (a unix socket path has at most 107 bytes), removed afterwards."""
    short = Path(tempfile.mkdtemp(prefix="hap"))
    runtime = str(short / "admin.sock")
    log = LogReceiver("127.0.0.1:0", "llm")
    try:
        config = work / "haproxy.cfg"
        write_text_atomic(
            config, local_config(port, hostport(stable), hostport(candidate), runtime, log.address)
        )
        with running(config, runtime):
            yield Local(
                f"http://127.0.0.1:{port}", HaproxySpec(socket=runtime, backend="llm", log=log.address), log
            )
    finally:
        log.close()
        shutil.rmtree(short, ignore_errors=True)


@contextlib.contextmanager
def running(config: Path, runtime: str, timeout: float = 30.0) -> Iterator[supervise.Child]:
    """HAProxy on CONFIG in the foreground (`-db`) until the block ends; ready once its runtime API
    at RUNTIME answers."""
    exe = shutil.which("haproxy")
    if exe is None:
        raise UserError("haproxy is not installed", hint="apt-get install haproxy")
    child = supervise.start([exe, "-f", str(config), "-db"], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                RuntimeAPI(runtime)("show info")
                break
            except ConnectionError:
                if child.process.poll() is not None or time.monotonic() > deadline:
                    raise UserError(
                        f"haproxy -f {config} did not start (exit {child.process.poll()})"
                    ) from None
                time.sleep(0.05)
        yield child
    finally:
        child.stop()
