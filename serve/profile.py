"""Serve profiles: one YAML file per deployment, validated like recipes (file:line, what, a fix).

A profile names the model (a checkpoint, a run directory or a hub id already pulled), the serving
engine (`engine: fastdeploy | vllm | paddle`; the older key `backend:` is still read, with a
warning), the engine settings and the ports. `mm_processor_kwargs` is type-checked key by key because
FastDeploy drops every kwarg when one has the wrong type; the API key is only ever read from an
environment variable or a file, never stored in the profile or written into logs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ernie_ops.errors import UserError, did_you_mean
from ernie_ops.recipe.load import LoadedRecipe
from ernie_ops.recipe.problems import Problem, error
from ernie_ops.spec import check_fields, field_types, load_yaml, missing, raise_problems, text_overrides

FASTDEPLOY_QUANTIZATIONS = (
    "bf16",
    "wint8",
    "wint4",
    "wint2",
    "block_wise_fp8",
    "tensor_wise_fp8",
    "w4a8",
    "w4afp8",  # FastDeploy 2.4+: online W4AFP8 of MoE models on Hopper (serve/planner.py)
    "mix_quant",
)
# the GGUF types the llama.cpp engine serves (`engine: llamacpp`, serve/backends/llamacpp.py)
GGUF_QUANTIZATIONS = ("f32", "f16", "q8_0", "q4_0")
QUANTIZATIONS: tuple[str, ...] = FASTDEPLOY_QUANTIZATIONS + GGUF_QUANTIZATIONS
# what the embedded CPU engine (`engine: paddle`) does: bf16 = the weights as they are (it computes
# in float32 on a CPU); wint8 / wint4 = FastDeploy's online weight-only quantization, emulated at load
EMBEDDED_QUANTIZATIONS = ("bf16", "wint8", "wint4")
# why the embedded engine cannot do the others, and what to use instead
_NOT_EMBEDDED = {
    "wint2": "wint2 needs a pre-quantized -2Bits checkpoint and FastDeploy on a GPU",
    "w4a8": "w4a8 needs a pre-quantized W4A8C8 checkpoint and FastDeploy on a GPU",
    "block_wise_fp8": "fp8 needs FastDeploy (or vLLM) on a GPU",
    "tensor_wise_fp8": "fp8 needs FastDeploy (or vLLM) on a GPU",
    "mix_quant": "mix_quant quantizes MoE experts apart and the embedded engine runs dense models",
}


def embedded_quantization_problem(quantization: str | dict) -> tuple[str, str] | None:
    """(what is wrong, a hint) when the embedded CPU engine cannot serve QUANTIZATION, else None."""
    name = quantization if isinstance(quantization, str) else str(quantization.get("quantization"))
    if name in EMBEDDED_QUANTIZATIONS:
        return None
    why = _NOT_EMBEDDED.get(name, f"{name} is not a quantization the embedded CPU engine emulates")
    return (
        f"{name!r} is not served by the embedded CPU engine (engine: paddle), which does "
        f"{', '.join(EMBEDDED_QUANTIZATIONS)}: {why}",
        "quantization: wint8 or wint4 (FastDeploy's weight-only scheme, emulated at load), or bf16",
    )


# ERNIE-4.5-VL processor kwargs and the types FastDeploy's processor expects (shared reference)
MM_PROCESSOR_KWARGS: dict[str, type] = {
    "spatial_conv_size": int,
    "temporal_conv_size": int,
    "image_min_pixels": int,
    "image_max_pixels": int,
    "video_min_pixels": int,
    "video_max_pixels": int,
    "video_target_frames": int,
    "video_frames_sample": str,
    "video_max_frames": int,
    "video_min_frames": int,
    "video_fps": int,
}
MM_KINDS = ("image", "video", "audio")


@dataclass
class ServeProfile:
    model: str  # checkpoint directory, run directory (its export is served) or a pulled hub id
    engine: str | None = None  # None: FastDeploy where it and a GPU exist, else the embedded CPU server
    fastdeploy_version: str = "2.5"
    gpus: list[int] = field(default_factory=lambda: [0])
    # a name, or a mix_quant spec {dense_quant_type, moe_quant_type}; engine paddle: bf16 (no
    # quantization: float32 on the CPU), wint8 or wint4 (EMBEDDED_QUANTIZATIONS)
    quantization: str | dict = "bf16"
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    enable_expert_parallel: bool = False
    max_model_len: int = 32768  # FastDeploy's own default is 2048
    max_num_seqs: int = 32  # FastDeploy's own default is 8
    max_num_batched_tokens: int | None = None
    gpu_memory_utilization: float = 0.9
    host: str | None = None  # None: the backend's own default (FastDeploy 0.0.0.0, embedded 127.0.0.1)
    port: int = 8180
    metrics_port: int | None = None  # None: port + 1
    engine_worker_queue_port: int | None = None  # None: port + 2
    cache_queue_port: int | None = None  # None: port + 3
    served_model_name: str | None = None
    chat_template: str | None = None  # a Jinja chat template file used instead of the checkpoint's
    max_request_mb: float | None = None  # embedded backend: larger request bodies get 413 (default 4)
    reasoning_parser: str | None = None
    tool_call_parser: str | None = None
    limit_mm_per_prompt: dict | None = None
    mm_processor_kwargs: dict | None = None
    api_key_env: str | None = None  # the name of an environment variable holding the key
    api_key_file: str | None = None  # or a file holding it
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool | None = None  # None: the engine's default (FastDeploy off, vLLM on)
    speculative_config: dict | None = None
    graph_optimization_config: dict | None = None
    load_choices: str | None = None  # 2.3+: default_v1 (FastDeploy's default) or default
    startup_timeout: float = 1800.0  # weights of the big models load for minutes
    ernie_ops: dict | None = None  # metadata block (model name, GPU type, notes)

    @property
    def backend(self) -> str | None:
        """The engine, by the name the serving code uses for it (`serve/backends/`)."""
        return self.engine

    @backend.setter
    def backend(self, name: str | None) -> None:
        self.engine = name

    @property
    def side_ports(self) -> dict[str, int]:
        return {
            "--metrics-port": self.metrics_port or self.port + 1,
            "--engine-worker-queue-port": self.engine_worker_queue_port or self.port + 2,
            "--cache-queue-port": self.cache_queue_port or self.port + 3,
        }


FIELD_TYPES = field_types(ServeProfile)  # the exact type of each key, checked by ernie_ops.spec
DEPRECATED_KEY = "backend"  # the engine's key before `engine:` (still read, with one warning)
_warned: set[str] = set()


def warn_once(what: str, message: str) -> None:
    """A deprecation warning on stderr, once per process for each WHAT."""
    import sys

    if what not in _warned:
        _warned.add(what)
        print(f"warning: {message}", file=sys.stderr)


def take_engine_alias(values: dict[str, Any], where: Any) -> list[Problem]:
    """Read a deprecated `backend:` key as `engine:` (in place), warning once; both keys with
    different values is an error."""
    if DEPRECATED_KEY not in values:
        return []
    old = values.pop(DEPRECATED_KEY)
    if "engine" in values and values["engine"] != old:
        return [
            error(
                where(DEPRECATED_KEY),
                DEPRECATED_KEY,
                f"says {old!r} and engine: says {values['engine']!r}",
                "keep engine: only (backend: is its old name)",
            )
        ]
    values["engine"] = old
    warn_once(
        "backend-key",
        f"{where(DEPRECATED_KEY)}: `backend:` is deprecated, call it `engine:` (same values); "
        "it is read as engine: for now",
    )
    return []


def validate(recipe: LoadedRecipe) -> tuple[ServeProfile | None, list[Problem]]:
    """The profile of a loaded file (None when a key is unknown, of the wrong type, or `model` is
    missing) and every problem: types by ernie_ops.spec, then the rules between values."""
    values = text_overrides(ServeProfile, recipe)
    alias_problems = take_engine_alias(values, recipe.where)
    version = values.get("fastdeploy_version")
    if isinstance(version, int | float) and not isinstance(version, bool):
        values["fastdeploy_version"] = str(version)  # `2.5` unquoted is a YAML float: mean the same
    clean, problems = check_fields(ServeProfile, values, recipe.where, "serve-profile")
    typed = not problems
    problems += alias_problems
    problems += missing(
        ServeProfile, values, recipe.where, {"model": "model: path/to/checkpoint (or a run directory)"}
    )
    if "model" not in clean:
        return None, problems
    profile = ServeProfile(**clean)  # the keys of the wrong type left out: the rules still run
    problems += _rules(profile, recipe)
    return (profile if typed else None), problems


def _rules(p: ServeProfile, recipe: LoadedRecipe) -> list[Problem]:
    where = recipe.where
    out: list[Problem] = []
    from ernie_ops.serve.backends import names  # the registry: a new engine needs no edit here

    if p.engine is not None and p.engine not in names():
        key = (
            DEPRECATED_KEY if DEPRECATED_KEY in recipe.values and "engine" not in recipe.values else "engine"
        )
        guess = did_you_mean(p.engine, list(names()))
        out.append(
            error(
                where(key),
                key,
                f"{p.engine!r} is not one of {', '.join(names())}",
                f"did you mean {guess!r}?" if guess else "",
            )
        )
    if isinstance(p.quantization, str) and p.quantization not in QUANTIZATIONS:
        guess = did_you_mean(p.quantization, list(QUANTIZATIONS))
        out.append(
            error(
                where("quantization"),
                "quantization",
                f"{p.quantization!r} is not a FastDeploy quantization or GGUF ({', '.join(QUANTIZATIONS)})",
                f"did you mean {guess!r}?" if guess else "",
            )
        )
    elif p.engine == "llamacpp" and p.quantization not in (*GGUF_QUANTIZATIONS, "bf16"):  # bf16: the default
        out.append(
            error(
                where("quantization"),
                "quantization",
                f"{p.quantization!r} is not a GGUF type the llamacpp engine serves",
                f"one of {', '.join(GGUF_QUANTIZATIONS)} (ernie-ops export RUN --format gguf --quant Q)",
            )
        )
    elif p.engine not in (None, "llamacpp") and p.quantization in GGUF_QUANTIZATIONS:  # None: --engine later
        out.append(
            error(
                where("quantization"),
                "quantization",
                f"{p.quantization!r} is a GGUF type: only engine: llamacpp serves GGUF files",
                "engine: llamacpp",
            )
        )
    elif p.engine == "paddle" and (problem := embedded_quantization_problem(p.quantization)):
        out.append(error(where("quantization"), "quantization", *problem))
    elif isinstance(p.quantization, dict) and p.quantization.get("quantization") != "mix_quant":
        out.append(
            error(
                where("quantization"),
                "quantization",
                "a mapping must be a mix_quant spec",
                "{quantization: mix_quant, dense_quant_type: wint8, moe_quant_type: wint4}",
            )
        )
    ranks = p.tensor_parallel_size * p.data_parallel_size
    if p.tensor_parallel_size < 1 or p.data_parallel_size < 1 or not p.gpus or len(p.gpus) % ranks:
        out.append(
            error(
                where("tensor_parallel_size"),
                "tensor_parallel_size",
                f"tensor {p.tensor_parallel_size} x data parallel {p.data_parallel_size} does not divide "
                f"the {len(p.gpus)} GPU(s) listed in gpus",
                f"gpus: a list of {ranks} GPU indices, or sizes that divide {len(p.gpus)}",
            )
        )
    if len(set(p.gpus)) != len(p.gpus):
        out.append(error(where("gpus"), "gpus", f"{p.gpus} lists a GPU twice"))
    ports = {"port": p.port, **{k[2:].replace("-", "_"): v for k, v in p.side_ports.items()}}
    seen: dict[int, str] = {}
    for name, port in ports.items():
        if not 1024 <= port <= 65535:
            out.append(error(where(name), name, f"{port} is not a usable port (1024-65535)"))
        if port in seen:
            out.append(
                error(
                    where(name),
                    name,
                    f"{port} is also {seen[port]}: FastDeploy needs four different ports",
                    "set port, metrics_port, engine_worker_queue_port, cache_queue_port apart",
                )
            )
        seen[port] = name
    if p.max_num_batched_tokens is not None and not (
        p.max_num_seqs <= p.max_num_batched_tokens <= p.max_model_len * p.max_num_seqs
    ):
        out.append(
            error(
                where("max_num_batched_tokens"),
                "max_num_batched_tokens",
                "must be >= max_num_seqs and <= max_model_len x max_num_seqs",
            )
        )
    if not 0 < p.gpu_memory_utilization <= 1:
        out.append(error(where("gpu_memory_utilization"), "gpu_memory_utilization", "must be in (0, 1]"))
    out += _mm_rules(p, where)
    if p.max_request_mb is not None and p.max_request_mb <= 0:
        out.append(error(where("max_request_mb"), "max_request_mb", "must be > 0"))
    if p.api_key_env and p.api_key_file:
        out.append(error(where("api_key_file"), "api_key_file", "give api_key_env or api_key_file, not both"))
    return out


def _mm_rules(p: ServeProfile, where) -> list[Problem]:
    out: list[Problem] = []
    for key, value in (p.mm_processor_kwargs or {}).items():
        expected = MM_PROCESSOR_KWARGS.get(key)
        here = f"mm_processor_kwargs.{key}"
        if expected is None:
            guess = did_you_mean(str(key), list(MM_PROCESSOR_KWARGS))
            out.append(
                error(
                    where("mm_processor_kwargs"),
                    here,
                    "not an ERNIE-4.5-VL processor key (FastDeploy would drop every kwarg)",
                    f"did you mean {guess!r}?" if guess else "",
                )
            )
        elif not isinstance(value, expected) or isinstance(value, bool):
            out.append(
                error(
                    where("mm_processor_kwargs"),
                    here,
                    f"{value!r} is not {expected.__name__}: FastDeploy would silently drop ALL the kwargs",
                    f"give an {expected.__name__}"
                    + (f", e.g. {int(value)}" if isinstance(value, float) else ""),
                )
            )
    for kind, limit in (p.limit_mm_per_prompt or {}).items():
        if kind not in MM_KINDS or not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            out.append(
                error(
                    where("limit_mm_per_prompt"),
                    f"limit_mm_per_prompt.{kind}",
                    f"expected one of {', '.join(MM_KINDS)} with a count >= 0",
                )
            )
    return out


def load_profile(path: Path, sets: list[str] | tuple[str, ...] = ()) -> ServeProfile:
    """The validated profile, or a UserError listing every problem (file:line, what, fix)."""
    recipe, problems = load_yaml(path, sets)
    profile = None
    if recipe is not None:
        profile, more = validate(recipe)
        problems += more
    raise_problems("the serve profile has problems", problems)
    assert profile is not None
    return profile


def profile_for_checkpoint(model: str, sets: list[str] | tuple[str, ...] = ()) -> ServeProfile:
    """`ernie-ops serve CHECKPOINT`: the defaults, with --set overrides."""
    import tempfile

    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "profile.yaml"
        path.write_text(yaml.safe_dump({"model": model}))
        return load_profile(path, sets)


def api_key(p: ServeProfile) -> str | None:
    """The key, read at launch time (never from the profile itself)."""
    import os

    if p.api_key_env:
        key = os.environ.get(p.api_key_env)
        if not key:
            raise UserError(f"api_key_env: the environment variable {p.api_key_env} is not set")
        return key
    if p.api_key_file:
        path = Path(p.api_key_file).expanduser()
        if not path.is_file():
            raise UserError(f"api_key_file: {path} does not exist")
        return path.read_text(encoding="utf-8").strip()
    return None


def as_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)
