"""vLLM (GPU): serves the transformers layout of ERNIE 4.5 (`Ernie4_5ForCausalLM`,
`Ernie4_5_MoeForCausalLM`, `Ernie4_5_VLMoeForConditionalGeneration` in vLLM's model registry), so a
checkpoint trained here is served after `ernie-ops export RUN --format hf`.

The command is `vllm serve MODEL [options]` for the vLLM release the flag table was extracted from
(`serve/data/vllm-flags.json`, written by `scripts/extract_vllm_flags.py` from that release's own
argument parser source); every flag and value it emits is checked against that table. What the
profile asks that vLLM has no equivalent for is refused with the alternatives, never approximated:
FastDeploy's online weight-only wint8 / wint4 / wint2 / w4a8 have no online counterpart in vLLM for a
bf16 checkpoint. The API key goes in VLLM_API_KEY (vLLM reads it when --api-key is not given), never
on the command line.
"""

from __future__ import annotations

import json
import struct
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ernie_ops.errors import UserError
from ernie_ops.serve.backends.base import Backend, Command

if TYPE_CHECKING:
    from ernie_ops.serve.preflight import Target
    from ernie_ops.serve.profile import ServeProfile

FLAG_TABLE = Path(__file__).resolve().parent.parent / "data" / "vllm-flags.json"

# profile quantization -> vLLM's `--quantization` (an online method applied to the bf16 weights at
# load: `_ONLINE_SHORTHANDS` in vllm/config/quantization.py). From 0.2x `--quantization fp8` no longer
# quantizes online ("use fp8_per_tensor"): the shorthands are the equivalents of FastDeploy's fp8.
ONLINE_QUANTIZATION = {
    "block_wise_fp8": "fp8_per_block",  # fp8 weights, one scale per 128x128 block
    "tensor_wise_fp8": "fp8_per_tensor",  # fp8 weights, one scale per tensor
}
NO_COUNTERPART = {
    "wint8": "int8 weight-only",
    "wint4": "int4 weight-only (MoE: dense int8 + experts int4)",
    "wint2": "2-bit weight-only (a pre-quantized -2Bits Paddle checkpoint)",
    "w4a8": "W4A8C8 (a pre-quantized Paddle checkpoint)",
    "mix_quant": "mixed weight-only",
}
# FastDeploy's parser names (the profiles') -> vLLM's: vLLM's docs (features/reasoning_outputs.md)
# list `ernie45` for ERNIE-4.5-21B-A3B-Thinking (with tool calling) and for the ERNIE-4.5-VL series
# (tool calling not supported there).
REASONING_PARSERS = {"ernie-x1": "ernie45", "ernie-45-vl": "ernie45", "ernie-45-vl-thinking": "ernie45"}
TOOL_PARSERS = {"ernie-x1": "ernie45"}
# FastDeploy's ERNIE-4.5-VL processor kwargs -> the keys vLLM's ernie45_vl processor reads
MM_PROCESSOR_KWARGS = {"image_min_pixels": "min_pixels", "image_max_pixels": "max_pixels"}
CLI_MODULE = "vllm.entrypoints.cli.main"  # the `vllm` console script's module (vLLM's pyproject.toml)
INSTALL = "pip install vllm, on a Linux node with an NVIDIA GPU (ernie-ops serves vLLM on GPUs only)"


@cache
def table() -> dict[str, Any]:
    return json.loads(FLAG_TABLE.read_text(encoding="utf-8"))


def release() -> str:
    return str(table()["source"]["release"])


def _check_value(flag: str, spec: dict[str, Any], value: str | None) -> str | None:
    """Why `value` is not what `flag` takes, or None."""
    kind = spec["type"]
    if kind in ("switch", "bool_optional"):
        return None if value is None else "takes no value"
    if value is None or value.startswith("--"):
        return "needs a value"
    try:
        if kind == "int":
            int(value)
        elif kind == "float":
            float(value)
        elif kind == "json" or (kind == "json_or_str" and value.lstrip().startswith("{")):
            json.loads(value)
    except ValueError:
        return f"{value!r} is not {'JSON' if 'json' in kind else 'an ' + kind}"
    if kind == "choice" and value not in spec["choices"]:
        return f"{value!r} is not one of {', '.join(spec['choices'])}"
    return None


def check_command(args: list[str]) -> None:
    """Every flag exists in the release's table with a value of its type; parser and quantization
    names exist in the release's registries. `args` are the options after `vllm serve MODEL`."""
    t = table()
    flags: dict[str, dict[str, Any]] = t["flags"]
    negatives = {f"--no-{f[2:]}": f for f, s in flags.items() if s["type"] == "bool_optional"}
    names = {"--reasoning-parser": "reasoning_parsers", "--tool-call-parser": "tool_parsers"}
    i = 0
    while i < len(args):
        flag = args[i]
        spec = flags.get(negatives.get(flag, flag))
        if spec is None:
            raise UserError(f"{flag} does not exist in vLLM {release()}")
        takes_value = spec["type"] not in ("switch", "bool_optional")
        value = args[i + 1] if takes_value and i + 1 < len(args) else None
        problem = _check_value(flag, spec, value)
        if problem:
            raise UserError(f"vLLM {release()}: {flag} {problem}")
        if flag in names and value not in t[names[flag]]:
            raise UserError(f"vLLM {release()} has no {flag[2:]} {value!r}")
        if flag == "--quantization" and value not in t["quantization_methods"]:
            raise UserError(f"vLLM {release()} has no quantization method {value!r}")
        i += 2 if takes_value else 1


def quantization_args(profile: ServeProfile) -> list[str]:
    """`--dtype` / `--quantization` for the profile's quantization, or a refusal with the
    alternatives when vLLM has no equivalent."""
    q = profile.quantization
    name = q if isinstance(q, str) else str(q.get("quantization", "mix_quant"))
    if name == "bf16":
        return ["--dtype", "bfloat16"]
    if name in ONLINE_QUANTIZATION:
        method = ONLINE_QUANTIZATION[name]
        if method not in table()["online_quantization"]:
            raise UserError(f"vLLM {release()} has no online {method}")
        return ["--dtype", "bfloat16", "--quantization", method]
    what = NO_COUNTERPART.get(name, name)
    raise UserError(
        f"quantization {name} is FastDeploy's {what} quantization; vLLM {release()} has no online "
        "weight-only counterpart for a bf16 checkpoint (its int8_per_channel_weight_only quantizes "
        "MoE experts only, and vLLM's own source marks it broken)",
        hint="serve it with FastDeploy (--engine fastdeploy), or with vLLM: quantization: "
        "block_wise_fp8 (online fp8, --quantization fp8_per_block) or bf16, or give model: a "
        "checkpoint quantized for vLLM (GPTQ / AWQ / compressed-tensors: vLLM reads its "
        "quantization_config) with quantization: bf16",
    )


def _mm_processor_kwargs(profile: ServeProfile) -> dict[str, Any]:
    out = {}
    for key, value in (profile.mm_processor_kwargs or {}).items():
        if key not in MM_PROCESSOR_KWARGS:
            raise UserError(
                f"mm_processor_kwargs.{key} is a FastDeploy processor key with no counterpart in "
                f"vLLM's ERNIE-4.5-VL processor (it takes {', '.join(MM_PROCESSOR_KWARGS)})",
                hint=f"remove mm_processor_kwargs.{key} to serve with vLLM",
            )
        out[MM_PROCESSOR_KWARGS[key]] = value
    return out


def build_args(profile: ServeProfile, is_vl: bool, remote_code: bool = False) -> list[str]:
    """The options after `vllm serve MODEL`, checked against the flag table."""
    from ernie_ops.serve.profile import as_json

    if profile.max_request_mb is not None:
        raise UserError(
            "max_request_mb is an option of the embedded backend: vLLM has no request size limit",
            hint="remove it, or put a proxy with a body limit in front (nginx: client_max_body_size)",
        )
    for key in ("speculative_config", "graph_optimization_config", "load_choices"):
        if getattr(profile, key):
            raise UserError(
                f"{key} is FastDeploy's (its JSON differs from vLLM's): vLLM {release()} is not given it",
                hint=f"remove {key} to serve with vLLM",
            )
    args = ["--host", profile.host or VLLM.default_host, "--port", str(profile.port)]
    if profile.served_model_name:
        args += ["--served-model-name", profile.served_model_name]
    if profile.chat_template:
        args += ["--chat-template", str(Path(profile.chat_template).expanduser())]
    if remote_code:
        args += ["--trust-remote-code"]
    args += ["--tensor-parallel-size", str(profile.tensor_parallel_size)]
    if profile.data_parallel_size > 1:
        args += ["--data-parallel-size", str(profile.data_parallel_size)]
    if profile.enable_expert_parallel:
        args += ["--enable-expert-parallel"]
    args += quantization_args(profile)
    args += ["--max-model-len", str(profile.max_model_len), "--max-num-seqs", str(profile.max_num_seqs)]
    if profile.max_num_batched_tokens:
        args += ["--max-num-batched-tokens", str(profile.max_num_batched_tokens)]
    args += ["--gpu-memory-utilization", str(profile.gpu_memory_utilization)]
    # on by default in vLLM; said explicitly so the command shows what runs
    args += ["--enable-prefix-caching" if profile.enable_prefix_caching else "--no-enable-prefix-caching"]
    if profile.enable_chunked_prefill is not None:  # unset: vLLM's default (on)
        args += [
            "--enable-chunked-prefill" if profile.enable_chunked_prefill else "--no-enable-chunked-prefill"
        ]
    if profile.reasoning_parser:
        args += ["--reasoning-parser", _parser(profile.reasoning_parser, REASONING_PARSERS, "reasoning")]
    if profile.tool_call_parser:
        if is_vl:
            raise UserError(
                f"tool_call_parser: vLLM {release()} does not support tool calls for ERNIE-4.5-VL "
                "(its docs list the ernie45 parser for VL without tool calling)",
                hint="--set tool_call_parser=null to serve with vLLM, or serve with FastDeploy",
            )
        args += ["--tool-call-parser", _parser(profile.tool_call_parser, TOOL_PARSERS, "tool call")]
        args += ["--enable-auto-tool-choice"]  # vLLM parses tool calls only with this on
    if profile.limit_mm_per_prompt:
        args += ["--limit-mm-per-prompt", as_json(profile.limit_mm_per_prompt)]
    mm_kwargs = _mm_processor_kwargs(profile)
    if mm_kwargs:
        args += ["--mm-processor-kwargs", as_json(mm_kwargs)]
    args += ["--generation-config", "auto"]  # sampling defaults from the checkpoint's generation_config.json
    check_command(args)
    return args


def _parser(name: str, names: dict[str, str], what: str) -> str:
    """vLLM's name for a profile's parser (FastDeploy's names, or vLLM's own)."""
    mapped = names.get(name, name)
    key = "reasoning_parsers" if what == "reasoning" else "tool_parsers"
    if mapped not in table()[key]:
        known = ", ".join(n for n in table()[key] if "ernie" in n)
        raise UserError(
            f"{what} parser {name!r} has no counterpart in vLLM {release()} (its ERNIE parsers: {known})"
        )
    return mapped


# --- the checkpoint layout --------------------------------------------------------------------------


def _safetensors_names(path: Path) -> list[str]:
    """Tensor names from a safetensors header (8-byte little-endian length, then JSON)."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        if size > 100_000_000:
            return []
        header = json.loads(f.read(size))
    return [k for k in header if k != "__metadata__"]


def checkpoint_problem(model_dir: Path) -> str | None:
    """Why vLLM cannot load this directory (a Paddle checkpoint, an architecture it lacks), or None."""
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        return "it has no config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    arch = (config.get("architectures") or ["?"])[0]
    if any(model_dir.glob("*.pdparams")):
        return "it is a Paddle checkpoint (*.pdparams)"
    index = model_dir / "model.safetensors.index.json"
    names: list[str] = []
    if index.is_file():
        names = list(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}))
    else:
        shards = sorted(model_dir.glob("*.safetensors"))
        if not shards:
            return "it has no safetensors weights"
        names = _safetensors_names(shards[0])
    if any(n.startswith("ernie.") for n in names):
        return "it is a Paddle checkpoint (ERNIEKit's tensor names: ernie.*)"
    if arch not in table()["ernie_architectures"]:
        return (
            f"its architecture {arch} is not one of vLLM's ERNIE 4.5 architectures "
            f"({', '.join(table()['ernie_architectures'])})"
        )
    return None


class VLLM(Backend):
    name = "vllm"
    title = "vLLM"
    described = "vLLM"
    serves = "ERNIE 4.5 transformers-layout checkpoints (export --format hf) on GPUs, bf16 or fp8"
    priority = 20  # after FastDeploy (the production engine), before the CPU fallback
    default_host = "0.0.0.0"  # vLLM's own default (no --host): every interface
    health_path = "/health"  # 200 once the engine is up, 503 when it died
    api_key_env = "VLLM_API_KEY"  # read by vLLM's server when --api-key is not given
    stop_timeout_s = 60.0

    def unavailable(self) -> str | None:
        import importlib.util

        from ernie_ops.train.launch import detect_gpus

        if not detect_gpus():
            return "no GPU"
        if importlib.util.find_spec("vllm") is None:
            return f"vLLM is not installed ({INSTALL})"
        return None

    def resolve(self, profile: ServeProfile) -> Target:
        """A run directory with a transformers-layout export (`ernie-ops export RUN --format hf`,
        recorded in run.json under exports.hf) serves that export; anything else as for every engine
        (and a Paddle checkpoint is then refused by the layout check, with the export command)."""
        from ernie_ops.serve.preflight import resolve_model

        path = Path(profile.model).expanduser()
        if (path / "run.json").is_file():
            from ernie_ops.train.record import RunRecord

            hf = RunRecord.load(path).exports.get("hf") or {}
            if hf.get("path") and Path(hf["path"]).is_dir():
                target = resolve_model(hf["path"], self.name)
                target.run_dir = path
                return target
        return super().resolve(profile)

    def preflight(self, profile: ServeProfile, target: Target) -> list[str]:
        from ernie_ops.serve.preflight import port_free

        self.check_layout(target)
        self.command(profile, target)  # refuses what vLLM has no equivalent for, before the GPU checks
        host = profile.host or self.default_host
        if not port_free(host, profile.port):
            raise UserError(f"port {profile.port} is already in use", hint="set port to a free port")
        why = self.unavailable()
        if why:
            raise UserError(
                f"vLLM cannot run here: {why}",
                hint="serve on a GPU node, or here with --engine paddle" if why == "no GPU" else None,
            )
        plan = check_gpus(profile, target)
        return [plan] if plan else []

    @staticmethod
    def check_layout(target: Target) -> None:
        problem = checkpoint_problem(target.model_dir)
        if problem is None:
            return
        source = target.run_dir or target.model_dir
        raise UserError(
            f"vLLM cannot serve {target.model_dir}: {problem}. vLLM reads the transformers layout",
            hint=f"ernie-ops export {source} --format hf   # then serve the exported directory",
        )

    def command(
        self, profile: ServeProfile, target: Target | None = None, python: str | None = None
    ) -> Command:
        from ernie_ops.serve.profile import api_key

        quantization_args(profile)  # refused first: exporting the checkpoint would not help
        if target is None:  # --print-command: the local checkpoint when there is one, else the hub id
            try:
                target = self.resolve(profile)
            except UserError:
                target = None
        if target is None:
            model = profile.model
            is_vl = "-VL-" in profile.model
            remote_code = False
            if model.rstrip("/").endswith("-Paddle"):
                raise UserError(
                    f"{model} is the Paddle layout of the model: vLLM reads the transformers layout",
                    hint=f"--set model={model.rstrip('/')[: -len('-Paddle')]}-PT (ernie-ops pull it first), "
                    "or for your own run: ernie-ops export RUN --format hf, then --set model=EXPORTED_DIR",
                )
        else:
            self.check_layout(target)
            model = str(target.model_dir)
            is_vl = target.is_vl
            config = json.loads((target.model_dir / "config.json").read_text(encoding="utf-8"))
            remote_code = "auto_map" in config  # code shipped with the checkpoint (VL processors)
        args = build_args(profile, is_vl, remote_code)
        env = {"CUDA_VISIBLE_DEVICES": ",".join(map(str, profile.gpus))}
        key = api_key(profile) if python is not None else None  # read only to start, never to show
        if key:
            env[self.api_key_env] = key
        # shown as `vllm serve`; started with the interpreter ernie-ops runs in (the same environment)
        head = [python, "-m", CLI_MODULE, "serve"] if python else list(table()["command"])
        return Command([*head, model, *args], env)


def check_gpus(profile: ServeProfile, target: Target) -> str | None:
    """The GPUs exist; the planner (vLLM's memory model) says it fits. Returns its explanation."""
    from ernie_ops.serve.preflight import gpu_inventory, plan_inputs

    fit = plan_inputs(profile, target, gpu_inventory())
    if fit is None:
        return None
    from ernie_ops.serve.planner import plan_serve

    spec, gpu = fit
    quantization = profile.quantization if isinstance(profile.quantization, str) else "wint4"
    plan = plan_serve(
        spec,
        gpu,
        gpus=len(profile.gpus),
        quantization=quantization,
        max_model_len=profile.max_model_len,
        max_num_seqs=profile.max_num_seqs,
        gpu_memory_utilization=profile.gpu_memory_utilization,
        tensor_parallel=profile.tensor_parallel_size,
        engine="vllm",
        max_num_batched_tokens=profile.max_num_batched_tokens,
    )
    if not plan.fits:
        raise UserError(
            f"the planner says this does not fit:\n{plan.explain()}",
            hint="add GPUs (tensor_parallel_size), quantize (block_wise_fp8), or lower max_model_len / "
            "max_num_seqs",
        )
    return plan.explain()


BACKEND = VLLM()
