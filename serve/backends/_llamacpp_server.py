"""llama-cpp-python's OpenAI server (`python -m llama_cpp.server`, the same arguments), started by the
llamacpp engine through this module for one reason: on CPUs with AMX (Intel Sapphire Rapids and
later) the llama.cpp that llama-cpp-python 0.3.36 builds with GGML_NATIVE crashes (SIGSEGV in
decode) on q8_0 / q4_0 weights placed in its AMX buffer type, whatever wrote the file (its own
`llama_model_quantize` too). The server has no setting for it, so here the model parameters'
`use_extra_bufts` (AMX and the CPU repack buffers) is turned off on such CPUs before the server
loads the model. ERNIE_OPS_LLAMACPP_EXTRA_BUFFERS=1 keeps them (=0 turns them off anywhere). A
llama-cpp-python built without the AMX kernels (CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=ON ...
-DGGML_AMX_INT8=OFF") keeps the repack buffers on every CPU.

Not registered as a backend (the leading underscore); run as `python -m` by the engine only.
"""

from __future__ import annotations

import os
import runpy
from pathlib import Path

ENV = "ERNIE_OPS_LLAMACPP_EXTRA_BUFFERS"


def cpu_has_amx() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return any(line.startswith("flags") and " amx_int8" in line for line in text.splitlines())


def build_has_amx() -> bool:
    """Whether the installed llama.cpp was compiled with its AMX kernels (its system info says so)."""
    try:
        import llama_cpp
    except ImportError:
        return False
    return "AMX_INT8 = 1" in llama_cpp.llama_print_system_info().decode(errors="replace")


def extra_buffers() -> bool:
    """Keep llama.cpp's extra buffer types unless this CPU would run the AMX kernels (the CPU has AMX
    and the build compiled them in); a build without AMX (GGML_NATIVE=OFF, GGML_AMX_INT8=OFF) keeps
    the repack buffers, which speed q4_0 / q8_0 up."""
    value = os.environ.get(ENV, "").strip()
    if value in ("0", "1"):
        return value == "1"
    return not (cpu_has_amx() and build_has_amx())


def disable_extra_buffers() -> None:
    """Every model llama-cpp-python loads from now on in this process: no extra buffer types."""
    import llama_cpp.llama_cpp as lib

    original = lib.llama_model_default_params

    def params():  # type: ignore[no-untyped-def]
        p = original()
        p.use_extra_bufts = False
        return p

    lib.llama_model_default_params = params


def scrub_environment() -> list[str]:
    """Drop the environment variables llama-cpp-python's server would read as settings: its pydantic
    settings take any field from a variable of that name (case-insensitive: MODEL, N_CTX, CHAT_FORMAT,
    N_GPU_LAYERS, ...) and CONFIG_FILE replaces the command line altogether. Everything it needs is on
    the command line the engine built; only API_KEY (how the engine passes the key) stays."""
    from llama_cpp.server.settings import Settings

    fields = {name.lower() for name in Settings.model_fields} | {"config_file"}
    dropped = [k for k in os.environ if k.lower() in fields and k.lower() != "api_key"]
    for name in dropped:
        del os.environ[name]
    return dropped


def main() -> None:
    dropped = scrub_environment()
    if dropped:
        print(f"ernie-ops: ignoring {', '.join(sorted(dropped))} from the environment", flush=True)
    if not extra_buffers():
        disable_extra_buffers()
        print(f"ernie-ops: llama.cpp extra buffer types (AMX, repack) off ({ENV}=1 keeps them)", flush=True)
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
