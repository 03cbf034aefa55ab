"""llama.cpp on CPU (`engine: llamacpp`): a GGUF file (`ernie-ops export RUN --format gguf --quant Q`)
served by llama.cpp's own `llama-server` when it is installed (continuous batching over
max_num_seqs slots; `_llama_server.py`: where it is looked for, its flags, LLAMA_SERVER=off), else
by llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`, the optional extra
`llamacpp`: `pip install "llama-cpp-python[server]"`, which compiles llama.cpp at install), which
answers one request at a time. Start-up says which.

- The model is one `.gguf` file, a directory holding some, or a run whose GGUF exports run.json
  records (exports.gguf.<quant>); `quantization:` (f32 | f16 | q8_0 | q4_0) picks among them and
  must match the file's own type. A checkpoint directory is refused with the export command.
- The chat template and the end-of-turn token come from the file (the export writes them); the
  server's own settings (llama_cpp/server/settings.py) are given explicitly where its defaults do
  not suit a shared server: `--interrupt_requests False` (its default cancels a streaming answer
  when the next request arrives), `--logits_all False` (its default keeps the logits of every
  position: vocabulary x context floats), `--use_mlock False`, `--n_ctx` from max_model_len capped
  at the model's context.
- Threads: llama.cpp's threads busy-wait, and collapse when another process shares the cores. The
  default is the physical cores available to this process less one (at least one), for
  n_threads and n_threads_batch: the server's own Python thread (HTTP, tokenizing, streaming) and
  any neighbour keep a core. Measured on 2 cores with a busy neighbour (load 8, 0.3B shape, q4_0,
  64-token prompt, 32 decode steps, two interleaved rounds): 1 thread 10.6 / 14.0 tok/s and 0.9 /
  0.7 s prefill, 2 threads 5.3 / 0.8 tok/s and 1.8 / 5.6 s. Through llama-server (GOMP_SPINCOUNT=10000,
  see _llama_server.py), one busy-looping neighbour and other work (load 2.4-5.7, best of 2
  interleaved rounds, batch-1 decode / 8 concurrent): 1 thread 18.7 / 33.6 tok/s, 2 threads 11.6 /
  36.8 (llama.cpp's own benchmarks at 2 threads, libgomp's default spin: 6.3 / 13.7).
  ERNIE_OPS_LLAMACPP_THREADS overrides it (a dedicated machine: its physical cores).
- It runs through `_llamacpp_server.py`, which is `python -m llama_cpp.server` with llama.cpp's
  extra buffer types off on CPUs with AMX (where this llama.cpp crashes on q8_0 / q4_0 in them).
- llama-cpp-python's server handles one request at a time (no continuous batching); concurrent
  requests queue. The API key goes in the server's environment (`API_KEY` for llama-cpp-python's
  pydantic settings, `LLAMA_API_KEY` for llama-server), never on the command line.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ernie_ops.errors import UserError
from ernie_ops.serve.backends import _llama_server
from ernie_ops.serve.backends.base import Backend, Command

if TYPE_CHECKING:
    from ernie_ops.serve.preflight import Target
    from ernie_ops.serve.profile import ServeProfile

MODULE = "ernie_ops.serve.backends._llamacpp_server"  # llama_cpp.server, AMX-safe (see there)
INSTALL = 'pip install "llama-cpp-python[server]>=0.3.16,<0.4"  (the `llamacpp` extra; compiles llama.cpp)'
SERVER_MODULES = ("fastapi", "uvicorn", "sse_starlette", "starlette_context", "pydantic_settings")
THREADS_ENV = "ERNIE_OPS_LLAMACPP_THREADS"
API_KEY_ENV = "API_KEY"  # its pydantic settings read the field api_key from the environment
# general.file_type -> the profile's quantization name (gguf.LlamaFileType)
FILE_TYPES = {0: "f32", 1: "f16", 7: "q8_0", 2: "q4_0"}


def physical_cores() -> int:
    """The physical cores this process may run on (hyperthread siblings counted once)."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return max(os.cpu_count() or 1, 1)
    cores: set[tuple[str, str]] = set()
    try:
        for cpu in allowed:
            topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
            cores.add(
                (
                    (topology / "physical_package_id").read_text().strip(),
                    (topology / "core_id").read_text().strip(),
                )
            )
    except OSError:
        return max(len(allowed), 1)
    return max(len(cores), 1)


def threads() -> int:
    value = os.environ.get(THREADS_ENV, "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise UserError(f"{THREADS_ENV}={value!r} is not a thread count", hint=f"e.g. {THREADS_ENV}=2")
        return int(value)
    return max(physical_cores() - 1, 1)


def gguf_info(path: Path) -> dict[str, Any]:
    """Architecture, type and context length of a GGUF file (its metadata only)."""
    from ernie_ops.train.gguf_format import read_metadata

    meta = read_metadata(path)
    arch = str(meta.get("general.architecture", ""))

    def number(key: str) -> int:
        value = meta.get(f"{arch}.{key}", 0) or 0
        return int(value[0] if isinstance(value, list) else value)  # per-layer arrays: the first

    heads = number("attention.head_count")
    head_dim = number("attention.key_length") or (number("embedding_length") // heads if heads else 0)
    kv_heads = number("attention.head_count_kv") or heads
    return {
        "architecture": arch,
        "quant": FILE_TYPES.get(int(meta.get("general.file_type", -1))),
        "context": int(meta.get(f"{arch}.context_length", 0) or 0),
        "chat_template": "tokenizer.chat_template" in meta,
        # llama.cpp's default f16 KV cache: K and V, every layer
        "kv_bytes_per_token": 2 * number("block_count") * kv_heads * head_dim * 2,
    }


class LlamaCpp(Backend):
    name = "llamacpp"
    title = "llama.cpp"
    described = "llama.cpp on CPU"
    serves = "GGUF files (ernie-ops export --format gguf) on CPU with llama.cpp: f32, f16, q8_0, q4_0"
    priority = 95  # never the default: chosen with --engine llamacpp / engine: llamacpp
    default_host = "127.0.0.1"

    # which server runs is decided when asked (llama-server may be installed or LLAMA_SERVER set
    # between two commands); the base class's class attributes become properties here
    @property  # type: ignore[misc]
    def health_path(self) -> str:  # type: ignore[override]
        # llama-server: /health answers 503 while the model loads, 200 after, with no key.
        # llama-cpp-python has no /health and every /v1 route wants the API key, which the
        # supervisor's probe does not have; FastAPI's schema answers without one, and the model is
        # loaded before the server listens (create_app loads it, then uvicorn starts)
        return "/health" if _llama_server.found() else "/openapi.json"

    @property  # type: ignore[misc]
    def api_key_env(self) -> str:  # type: ignore[override]
        return _llama_server.API_KEY_ENV if _llama_server.found() else API_KEY_ENV

    def unavailable(self) -> str | None:
        try:
            if _llama_server.find():
                gguf = importlib.util.find_spec("gguf")
                return None if gguf else "the gguf package is missing (the `llamacpp` extra)"
        except UserError as exc:
            return str(exc)
        if importlib.util.find_spec("llama_cpp") is None:
            return "llama-cpp-python is not installed (the `llamacpp` extra)"
        missing = [m for m in (*SERVER_MODULES, "gguf") if importlib.util.find_spec(m) is None]
        if missing:
            return f"llama-cpp-python's server needs {', '.join(missing)} (the `llamacpp` extra)"
        return None

    def resolve(self, profile: ServeProfile) -> Target:
        from ernie_ops.serve.preflight import Target

        path = Path(profile.model).expanduser()
        run_dir = None
        if (path / "run.json").is_file():
            run_dir = path
            path = self._run_export(path, profile)
        elif path.is_dir():
            path = self._in_directory(path, profile)
        if not path.is_file():
            raise UserError(
                f"{profile.model} is not a local GGUF file, directory of them or run directory",
                hint="ernie-ops export RUN --format gguf --quant q8_0, then serve the .gguf it writes",
            )
        from ernie_ops.train.gguf_format import is_gguf

        if not is_gguf(path):
            raise UserError(
                f"{path} is not a GGUF file: llama.cpp serves GGUF",
                hint="ernie-ops export CHECKPOINT --format gguf --quant q8_0   # then serve the .gguf",
            )
        return Target(path.resolve(), None, False, False, run_dir)

    @staticmethod
    def _wanted(profile: ServeProfile) -> str | None:
        from ernie_ops.serve.profile import GGUF_QUANTIZATIONS

        q = profile.quantization
        return q if isinstance(q, str) and q in GGUF_QUANTIZATIONS else None

    def _run_export(self, run: Path, profile: ServeProfile) -> Path:
        from ernie_ops.train.record import RunRecord

        exports = {q: Path(e["path"]) for q, e in (RunRecord.load(run).exports.get("gguf") or {}).items()}
        exports = {q: p for q, p in exports.items() if p.is_file()}
        wanted = self._wanted(profile)
        if wanted in exports:
            return exports[wanted]
        if wanted is None and len(exports) == 1:
            return next(iter(exports.values()))
        have = f" (it has {', '.join(sorted(exports))}; set quantization: to one)" if exports else ""
        raise UserError(
            f"run {run} has no GGUF export{' in ' + wanted if wanted else ''}{have}: "
            "llama.cpp serves GGUF files",
            hint=f"ernie-ops export {run} --format gguf --quant {wanted or 'q8_0'}",
        )

    def _in_directory(self, directory: Path, profile: ServeProfile) -> Path:
        files = sorted(directory.glob("*.gguf"))
        if not files:
            what = "a checkpoint" if (directory / "config.json").is_file() else "a directory"
            raise UserError(
                f"{directory} is {what} without a GGUF file: llama.cpp serves GGUF files",
                hint=f"ernie-ops export {directory} --format gguf --quant q8_0   # writes "
                f"{directory.name}-q8_0.gguf beside it; serve that",
            )
        wanted = self._wanted(profile)
        if wanted:
            files = [f for f in files if gguf_info(f)["quant"] == wanted]
        if len(files) != 1:
            raise UserError(
                f"{directory} holds {len(files) or 'no'} GGUF file(s)"
                + (f" of type {wanted}" if wanted else "")
                + ": name the file as model:",
                hint="model: path/to/file.gguf",
            )
        return files[0]

    def preflight(self, profile: ServeProfile, target: Target) -> list[str]:
        from ernie_ops.serve.preflight import check_ports

        why = self.unavailable()
        if why:
            raise UserError(f"the llamacpp engine cannot run here: {why}", hint=INSTALL)
        info = gguf_info(target.model_dir)
        wanted = self._wanted(profile)
        if wanted and info["quant"] != wanted:
            raise UserError(
                f"{target.model_dir} is {info['quant'] or 'of another type'}, the profile says "
                f"quantization: {wanted}",
                hint=f"serve a {wanted} export (ernie-ops export RUN --format gguf --quant {wanted}) "
                "or change quantization:",
            )
        if not info["architecture"].startswith("ernie4_5"):
            raise UserError(
                f"{target.model_dir} is a {info['architecture'] or 'unknown'} model, not ERNIE 4.5",
                hint="serve a file written by ernie-ops export --format gguf",
            )
        if profile.chat_template:
            raise UserError(
                "chat_template: llama.cpp uses the chat template inside the GGUF file",
                hint="put the template beside the checkpoint as chat_template.jinja and export again",
            )
        check_ports(profile, only_main=True)
        n_ctx = self._n_ctx(profile, info)
        binary = _llama_server.find()
        if binary:
            return self._llama_server_preflight(binary, profile, n_ctx, info)
        lines = [
            f"llama.cpp: {threads()} thread(s) (physical cores {physical_cores()} less one; "
            f"{THREADS_ENV}=N overrides), context {n_ctx}, llama-cpp-python's server: requests served "
            f"one at a time (llama-server, built by {_llama_server.BUILD_HINT.split()[0]}, batches them)"
        ]
        if not info["chat_template"]:
            lines.append("warning: the file has no chat template: llama.cpp falls back to its default format")
        return lines

    def _llama_server_preflight(
        self, binary: str, profile: ServeProfile, n_ctx: int, info: dict[str, Any]
    ) -> list[str]:
        import psutil

        _llama_server.check_flags(binary)
        slots = profile.max_num_seqs
        kv = slots * n_ctx * info["kv_bytes_per_token"]
        free = psutil.virtual_memory().available
        if kv > free:
            raise UserError(
                f"llama-server's KV cache for {slots} slot(s) of {n_ctx} tokens would take "
                f"{kv / 2**30:.1f} GiB, more than the {free / 2**30:.1f} GiB available",
                hint="lower max_num_seqs (the slots) or max_model_len (each slot's context)",
            )
        lines = [
            f"llama.cpp: llama-server {binary} ({_llama_server.version(binary)}), continuous batching: "
            f"{slots} slot(s) of context {n_ctx} (--ctx-size {slots * n_ctx}, shared by the slots; "
            f"KV cache {kv / 2**20:.0f} MiB), "
            f"{threads()} thread(s) (physical cores {physical_cores()} less one; {THREADS_ENV}=N overrides)"
            + "".join(f", {k}={v}" for k, v in _llama_server.environment().items())
        ]
        if not _llama_server.repack(binary):
            lines.append(
                "llama.cpp extra buffer types (AMX, repack) off: this CPU has AMX and the binary its kernels "
                f"(ERNIE_OPS_LLAMACPP_EXTRA_BUFFERS=1 keeps them; {_llama_server.BUILD_HINT.split()[0]} "
                "builds without them)"
            )
        inherited = _llama_server.inherited_settings()
        if inherited:
            lines.append(f"warning: llama-server also takes settings from {', '.join(inherited)}")
        if not info["chat_template"]:
            lines.append("warning: the file has no chat template: llama.cpp falls back to its default format")
        return lines

    @staticmethod
    def _n_ctx(profile: ServeProfile, info: dict[str, Any]) -> int:
        context = info.get("context") or 0
        return min(profile.max_model_len, context) if context else profile.max_model_len

    def command(
        self, profile: ServeProfile, target: Target | None = None, python: str | None = None
    ) -> Command:
        from ernie_ops.serve.profile import api_key

        n_ctx = profile.max_model_len
        if target is not None:
            n_ctx = self._n_ctx(profile, gguf_info(target.model_dir))
        binary = _llama_server.find()
        if binary:
            model = str(target.model_dir) if target is not None else profile.model
            argv = _llama_server.argv(
                binary,
                model,
                profile.host or self.default_host,
                profile.port,
                slots=profile.max_num_seqs,
                slot_context=n_ctx,
                threads=threads(),
                alias=profile.served_model_name,
                repack=_llama_server.repack(binary),
            )
        else:
            argv = self._python_argv(profile, target, python, n_ctx)
        env = _llama_server.environment() if binary else {}
        key = api_key(profile) if target is not None else None  # read only to start, never to show
        if key:
            env[self.api_key_env] = key
        return Command(argv, env)

    def _python_argv(
        self, profile: ServeProfile, target: Target | None, python: str | None, n_ctx: int
    ) -> list[str]:
        n = str(threads())
        argv = [
            *self.python_server(MODULE, profile, target, python),
            "--n_ctx",
            str(n_ctx),
            "--n_threads",
            n,
            "--n_threads_batch",
            n,
            "--interrupt_requests",
            "False",
            "--logits_all",
            "False",
            "--use_mlock",
            "False",
        ]
        if profile.served_model_name:
            argv += ["--model_alias", profile.served_model_name]
        return argv


BACKEND = LlamaCpp()
