"""llama.cpp's own server (`llama-server`) for the llamacpp engine: continuous batching over
`--parallel` slots, which llama-cpp-python's server (one request at a time) does not do.

Flags and behaviour as read in llama.cpp's `common/arg.cpp` and `tools/server/` at SOURCE (the
llama.cpp llama-cpp-python 0.3.36 vendors; `scripts/build_llama_server.sh` builds that one):
- `--ctx-size` is the KV cache of all slots together: without `--kv-unified` (the default when
  `--parallel` is given) each slot gets ctx-size / parallel, so the engine passes
  max_model_len x max_num_seqs.
- The API key: llama-server reads `LLAMA_API_KEY` from its environment (the `--api-key` option's
  environment name), so the key never goes on argv. Only `/health` needs no key;
  every route answers 503 until the model is loaded.
- Any other option can come from a `LLAMA_ARG_*` variable in its environment or a llama.cpp
  config.ini (system-wide or the user's); a flag on the command line wins over both, so the engine
  gives every setting it relies on as a flag and warns about the others it would inherit.
- `--no-repack` turns llama.cpp's extra buffer types (AMX, repack) off: needed where the CPU has AMX
  and the binary has the AMX kernels (q8_0 / q4_0 crash in them, see _llamacpp_server.py); the build
  script compiles without them, so repack stays on.
- Waiting threads: this build's CPU backend runs its threads through OpenMP (libgomp; the build
  finds it), so `--poll` does nothing and a thread at a barrier waits as libgomp says: it spins
  GOMP_SPINCOUNT times (default 300000, milliseconds) before sleeping. While a neighbour process (or
  the HTTP thread, or a client on the same cores) holds a core, the other compute threads spin those
  milliseconds at every barrier. The engine sets GOMP_SPINCOUNT=10000 unless the environment has
  OMP_WAIT_POLICY or GOMP_SPINCOUNT. Measured with llama-bench at 2 threads on 2 cores (0.3B shape,
  q4_0, interleaved rounds, mean of 5 runs each): quieter rounds, decode 50.6-52.4 tok/s against
  50.0-52.8 by default, prompt 430-481 against 446-470 (no loss); with other work on the cores,
  decode 9.4 against 5.3; served under such load (3 interleaved rounds), batch-1 decode 8-12 tok/s
  against 1.2-7.5. OMP_WAIT_POLICY=passive (never spin) loses quiet: decode 31.5-33.3 tok/s.
- What else the served run costs beside llama.cpp's own benchmarks (profiled at the 0.3B shape):
  sampling with the server's default chain at temperature 0 is 0.10 ms a token (0.09 greedy: no
  sampler flags needed); its HTTP threads take 0.03-0.06 s of CPU for 330 streamed tokens and the
  streaming client 0.10-0.15 s; of 8 requests sent at once the first is prefilled alone (the loop
  starts on what has arrived) and the other 7 together.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from ernie_ops.errors import UserError

SOURCE = "ggml-org/llama.cpp 0c1e57098bba43ac29e6e3b677cdceebdd22334f"
BINARY_ENV = "LLAMA_SERVER"  # a path to llama-server, or "off" for llama-cpp-python's server
API_KEY_ENV = "LLAMA_API_KEY"
BUILD_HINT = "scripts/build_llama_server.sh   # builds llama-server into the venv (about 10 minutes)"
# every flag `command` emits, as common/arg.cpp spells it at SOURCE (checked against --help at start)
FLAGS = (
    "--model",
    "--host",
    "--port",
    "--parallel",
    "--ctx-size",
    "--cont-batching",
    "--threads",
    "--threads-batch",
    "--jinja",
    "--metrics",
    "--no-webui",
    "--alias",
    "--no-repack",
)
OFF = ("off", "0", "none", "no")
WAIT_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")  # the user's own choice of how threads wait
SPIN_COUNT = "10000"  # about a tenth of a millisecond of spinning at a barrier, then sleep (see above)


def find() -> str | None:
    """The llama-server to run: LLAMA_SERVER, else `llama-server` on PATH, else beside this Python
    (where the build script installs it); None when there is none or LLAMA_SERVER=off."""
    value = os.environ.get(BINARY_ENV, "").strip()
    if value.lower() in OFF:
        return None
    if value:
        path = Path(value).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise UserError(
                f"{BINARY_ENV}={value}: no executable file there",
                hint=f"point {BINARY_ENV} at llama-server, {BINARY_ENV}=off for llama-cpp-python's server, "
                f"or build it: {BUILD_HINT}",
            )
        return str(path)
    found = shutil.which("llama-server")
    if found:
        return found
    beside = Path(sys.executable).parent / "llama-server"
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None


def found() -> bool:
    """Whether llama-server will be used (a bad LLAMA_SERVER counts: pre-flight reports it)."""
    try:
        return find() is not None
    except UserError:
        return True


def _run(binary: str, flag: str) -> str:
    try:
        proc = subprocess.run([binary, flag], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UserError(f"{binary} {flag} failed: {exc}", hint=BUILD_HINT) from None
    return proc.stdout + proc.stderr


def version(binary: str) -> str:
    """`version: N (commit)` as the binary reports it."""
    lines = [line for line in _run(binary, "--version").splitlines() if line.startswith("version:")]
    return lines[0].split(":", 1)[1].strip() if lines else "unknown version"


def check_flags(binary: str) -> None:
    """Refuse a llama-server that does not take a flag the engine passes (another llama.cpp build)."""
    text = _run(binary, "--help")
    missing = [f for f in FLAGS if f not in text]
    if missing:
        raise UserError(
            f"{binary} does not take {', '.join(missing)} (the engine follows llama.cpp at {SOURCE})",
            hint=f"build the matching one: {BUILD_HINT}, or {BINARY_ENV}=off for llama-cpp-python's server",
        )


def binary_has_amx(binary: str) -> bool:
    """Whether the binary has llama.cpp's AMX buffer type (its name is compiled in only with it)."""
    try:
        return b"\0AMX\0" in Path(binary).read_bytes()
    except OSError:
        return False


def repack(binary: str) -> bool:
    """Keep the extra buffer types unless this CPU would run the binary's AMX kernels (same rule
    and override, ERNIE_OPS_LLAMACPP_EXTRA_BUFFERS, as llama-cpp-python's server)."""
    from ernie_ops.serve.backends._llamacpp_server import ENV, cpu_has_amx

    value = os.environ.get(ENV, "").strip()
    if value in ("0", "1"):
        return value == "1"
    return not (cpu_has_amx() and binary_has_amx(binary))


def environment() -> dict[str, str]:
    """What llama-server gets in its environment besides the key: a short OpenMP spin (see above),
    unless the environment already says how its threads wait."""
    if any(k in os.environ for k in WAIT_SETTINGS):
        return {}
    return {"GOMP_SPINCOUNT": SPIN_COUNT}


def inherited_settings() -> list[str]:
    """Settings llama-server would take besides its command line: LLAMA_ARG_* variables in the
    environment it inherits, and the config.ini files every llama.cpp program reads."""
    found = sorted(k for k in os.environ if k.startswith("LLAMA_ARG_"))
    home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    for path in (Path("/etc/llama.cpp/config.ini"), Path(home) / "llama.cpp" / "config.ini"):
        if path.is_file():
            found.append(str(path))
    return found


def argv(
    binary: str,
    model: str,
    host: str,
    port: int,
    *,
    slots: int,
    slot_context: int,
    threads: int,
    alias: str | None,
    repack: bool,
) -> list[str]:
    n = str(threads)
    out = [
        binary,
        "--model",
        model,
        "--host",
        host,
        "--port",
        str(port),
        "--parallel",
        str(slots),
        "--ctx-size",
        str(slots * slot_context),  # shared by the slots: each gets ctx-size / parallel
        "--cont-batching",
        "--threads",
        n,
        "--threads-batch",
        n,
        "--jinja",  # the chat template inside the GGUF, rendered as the model's own Jinja
        "--metrics",
        "--no-webui",
    ]
    if alias:
        out += ["--alias", alias]
    if not repack:
        out.append("--no-repack")
    return out
