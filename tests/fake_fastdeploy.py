"""A stand-in for FastDeploy's OpenAI API server at the process level (FastDeploy needs a GPU).

It behaves the way the supervisor must cope with: the HTTP port stays closed while the weights
"load", FastDeploy-style log lines go to stdout and $FD_LOG_DIR/workerlog.N, worker child processes
run in the same process group (or, with --worker-own-session, outside it), then GET /health,
/ping and /v1/models answer on loopback. The crash flags write the errors FastDeploy writes and
exit non-zero. SIGTERM stops it (unless --ignore-sigterm, to test the SIGKILL escalation).

    python tests/fake_fastdeploy.py --port 8180 [--load-seconds 2] [--crash-during-load] [--oom]
        [--port-in-use-error] [--crash-after-ready S] [--never-ready] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HOST = "127.0.0.1"  # loopback only, whatever --host says


def log(level: str, source: str, message: str, stream=None) -> None:
    """One line in FastDeploy's console format: `LEVEL    date time,ms pid file[line:N] message`."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f",{int(now % 1 * 1000):03d}"
    print(f"{level:<8} {stamp} {os.getpid()} {source} {message}", file=stream or sys.stdout, flush=True)


def log_dir() -> Path:
    path = Path(os.environ.get("FD_LOG_DIR", "log"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--host", default=HOST)
    parser.add_argument("--model", default="baidu/ERNIE-4.5-0.3B-Paddle")
    parser.add_argument("--served-model-name")
    parser.add_argument("--api-key")
    parser.add_argument("--load-seconds", type=float, default=1.0)
    parser.add_argument("--crash-during-load", action="store_true")
    parser.add_argument("--oom", action="store_true", help="crash during load with CUDA out of memory")
    parser.add_argument("--port-in-use-error", action="store_true")
    parser.add_argument("--crash-after-ready", type=float, metavar="S")
    parser.add_argument("--never-ready", action="store_true")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--worker-own-session", action="store_true")
    parser.add_argument("--ignore-sigterm", action="store_true")
    parser.add_argument("--worker-main", type=int, help=argparse.SUPPRESS)  # internal: run as worker N
    args, _unknown = parser.parse_known_args(argv)  # FastDeploy flags it does not model are ignored
    return args


# --- workers ------------------------------------------------------------------------------------


def worker_main(rank: int, ignore_sigterm: bool) -> int:
    """A worker: writes weight-loading progress to workerlog.N and waits to be stopped."""
    if ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with (log_dir() / f"workerlog.{rank}").open("a", encoding="utf-8") as f:
        log("INFO", "worker_process.py[line:725]", f"Worker {rank} started, loading the model", f)
        while True:
            time.sleep(0.5)


def start_workers(args: argparse.Namespace) -> list[subprocess.Popen]:
    workers = []
    for rank in range(args.workers):
        command = [sys.executable, __file__, "--worker-main", str(rank)]
        if args.ignore_sigterm:
            command.append("--ignore-sigterm")
        process = subprocess.Popen(command, start_new_session=args.worker_own_session)
        log("INFO", "engine.py[line:512]", f"Started worker process {rank} (pid {process.pid})")
        workers.append(process)
    return workers


def stop_workers(workers: list[subprocess.Popen]) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.terminate()


# --- failures -----------------------------------------------------------------------------------


def write_worker_error(lines: list[str]) -> None:
    with (log_dir() / "workerlog.0").open("a", encoding="utf-8") as f:
        f.write("Traceback (most recent call last):\n")
        f.write('  File "/usr/local/lib/python3.10/site-packages/fastdeploy/worker/worker_process.py", ')
        f.write("line 730, in run_worker_proc\n")
        for line in lines:
            f.write(line + "\n")


def crash_during_load(args: argparse.Namespace, workers: list[subprocess.Popen]) -> int:
    if args.oom:
        write_worker_error(
            [
                "    self.model = self.get_model()",
                "MemoryError: (ResourceExhausted) Out of memory error on GPU 0. Cannot allocate 2.15GB "
                "memory on GPU 0, 78.31GB memory has been allocated and available memory is only 1.02GB.",
                "Please check whether there is any other process using GPU 0.",
                "If yes, please stop them, or start PaddlePaddle on another GPU. "
                "(at /paddle/paddle/phi/core/memory/allocation/cuda_allocator.cc:84)",
                "CUDA out of memory. Tried to allocate 2.15 GiB",
            ]
        )
    else:
        write_worker_error(
            [
                "    self.worker.init_device()",
                "RuntimeError: (PreconditionNotMet) The worker failed to initialize its device.",
            ]
        )
    stop_workers(workers)
    log(
        "ERROR",
        "engine.py[line:142]",
        "Failed to launch worker processes, check log/workerlog.* for more details.",
    )
    log("ERROR", "api_server.py[line:126]", "Failed to initialize FastDeploy LLM engine, service exit now!")
    return 1


def port_in_use(port: int, workers: list[subprocess.Popen]) -> int:
    stop_workers(workers)
    print(
        f"ERROR:    [Errno 98] error while attempting to bind on address ('{HOST}', {port}): "
        "address already in use",
        flush=True,
    )
    return 1


# --- HTTP ---------------------------------------------------------------------------------------


def make_handler(model: str):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path in ("/health", "/ping"):
                self._send(200, b"", "text/plain")
            elif self.path == "/v1/models":
                body = {
                    "object": "list",
                    "data": [{"id": model, "object": "model", "owned_by": "paddlepaddle", "root": model}],
                }
                self._send(200, json.dumps(body).encode(), "application/json")
            else:
                self._send(404, b'{"detail":"Not Found"}', "application/json")

        def _send(self, status: int, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # uvicorn's access-log format
            host, port = self.client_address[:2]
            print(f'INFO:     {host}:{port} - "{self.requestline}" {args[1]}', flush=True)

    return Handler


def serve(args: argparse.Namespace, workers: list[subprocess.Popen]) -> int:
    model = args.served_model_name or args.model
    try:
        httpd = ThreadingHTTPServer((HOST, args.port), make_handler(model))
    except OSError:
        return port_in_use(args.port, workers)
    print(f"INFO:     Started server process [{os.getpid()}]", flush=True)
    print("INFO:     Waiting for application startup.", flush=True)
    print("INFO:     Application startup complete.", flush=True)
    print(f"INFO:     Uvicorn running on http://{HOST}:{args.port} (Press CTRL+C to quit)", flush=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        if args.crash_after_ready is not None:
            time.sleep(args.crash_after_ready)
            write_worker_error(["RuntimeError: CUDA error(700), an illegal memory access was encountered."])
            log("ERROR", "engine.py[line:318]", "Worker process 0 exited unexpectedly, the engine stops")
            return 1
        while True:
            time.sleep(0.5)
    finally:
        httpd.server_close()
        stop_workers(workers)


def main(argv: list[str]) -> int:
    args = parse(argv)
    if args.worker_main is not None:
        return worker_main(args.worker_main, args.ignore_sigterm)
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        # FastDeploy exits on SIGTERM; SystemExit runs the finally blocks that stop the workers
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    source = "api_server.py[line:98]"
    log("INFO", source, f"model: {args.model}, port: {args.port}, api_key: {args.api_key}")
    log("INFO", "engine.py[line:490]", "Waiting worker processes ready...")
    workers = start_workers(args)
    try:
        if args.port_in_use_error:
            time.sleep(args.load_seconds)
            return port_in_use(args.port, workers)
        if args.crash_during_load or args.oom:
            time.sleep(args.load_seconds)
            return crash_during_load(args, workers)
        steps = 10
        with (log_dir() / "workerlog.0").open("a", encoding="utf-8") as f:
            for step in range(1, steps + 1):  # a tqdm bar: one line rewritten with \r
                time.sleep(args.load_seconds / steps)
                f.write(f"\rLoading Weights: {step * 100 // steps}%|{'#' * step:<10}| {step}/{steps}")
                f.flush()
            f.write("\n")
        while args.never_ready:
            time.sleep(0.5)
        log(
            "INFO",
            "engine.py[line:560]",
            f"Worker processes are launched with {args.load_seconds:.1f} seconds.",
        )
        log("INFO", source, f"Launching metrics service at http://{HOST}:{args.port}/metrics")
        log(
            "INFO",
            source,
            f"Launching chat completion service at http://{HOST}:{args.port}/v1/chat/completions",
        )
        return serve(args, workers)
    finally:
        stop_workers(workers)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
