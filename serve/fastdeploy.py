"""FastDeploy's command line, version by version: the flag table (data, with its source) and the
builder that turns a serve profile into the exact `python -m fastdeploy.entrypoints.openai.api_server`
argument list for the targeted FastDeploy release.

Each release's flags, parser names and quantization methods are extracted from its own source
(`scripts/extract_fastdeploy_flags.py` -> `data/fastdeploy-flags-<series>.json`, with the commit).
Flags drift between 2.x releases (port defaults, `--enable-mm`, parser names, `--load-choices`), and
FastDeploy drops a whole `--mm-processor-kwargs` on one wrong type, so every flag the builder emits
is checked against the target version's table with a value of the right type.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from packaging.version import Version

from ernie_ops.errors import UserError

DATA = Path(__file__).resolve().parent / "data"
VERSIONS = ("2.0", "2.1", "2.2", "2.3", "2.4", "2.5", "2.6")
DEFAULT_VERSION = "2.5"  # the newest release paired with paddlepaddle-gpu 3.3.1 (doctor's table)
MODULE = "fastdeploy.entrypoints.openai.api_server"

# Releases with a table extracted from their own source (scripts/extract_fastdeploy_flags.py:
# data/fastdeploy-flags-<series>.json, which records the commit). An older release is described by
# the oldest extracted table minus what arrived later, per FastDeploy's history:
# flag -> first release that has it (--enable-keep-sampling-mask: in 2.5.0; release/2.4 got it in a
# 2026-03 patch, #6725; develop at the 2.6 table's commit has not)
ADDED_IN = {"--load-choices": "2.3", "--enable-keep-sampling-mask": "2.5"}
# --quantization names that arrived after 2.0 (both for torch-layout checkpoints, not ERNIE's)
QUANTIZATION_ADDED_IN = {"modelopt_fp4": "2.5", "mxfp4": "2.5"}
# online quantization of a BF16 checkpoint that came after the name: FastDeploy knew w4afp8 from
# 2.0 for pre-quantized checkpoints only; online MoE W4AFP8 (#5282) is in release/2.4 and later
ONLINE_SINCE = {"w4afp8": "2.4"}
# parser names of the releases without an extracted table; canonical names are the current ones
REASONING_PARSERS = {
    "2.0": {"ernie-45-vl": "ernie-45-vl", "qwen3": "qwen3"},
    "2.1": {"ernie-45-vl": "ernie-45-vl", "ernie-x1": "ernie_x1", "qwen3": "qwen3"},
    "2.3": {
        "ernie-45-vl": "ernie-45-vl",
        "ernie-45-vl-thinking": "ernie-45-vl-thinking",
        "ernie-x1": "ernie-x1",
        "qwen3": "qwen3",
    },
}
TOOL_PARSERS = {
    "2.0": {},
    "2.1": {"ernie-x1": "ernie_x1"},  # assumed spelled like the reasoning parser of the same release
    "2.3": {"ernie-x1": "ernie-x1", "ernie-45-vl-thinking": "ernie-45-vl-thinking"},
}
# 2.0-2.2 had fixed defaults for the side ports; from 2.3 they are picked automatically
FIXED_PORT_DEFAULTS = {"--metrics-port": 8001, "--engine-worker-queue-port": 8002, "--cache-queue-port": 8003}


def _at_or_before(table: dict[str, Any], version: str) -> Any:
    """The entry of the newest release <= version."""
    keys = sorted((k for k in table if Version(k) <= Version(version)), key=Version)
    return table[keys[-1]]


@cache
def extracted() -> tuple[str, ...]:
    """The series that have a table extracted from their source, oldest first."""
    found = (
        p.name.removeprefix("fastdeploy-flags-").removesuffix(".json")
        for p in DATA.glob("fastdeploy-flags-*.json")
    )
    return tuple(sorted(found, key=Version))


@cache
def release_table(series: str) -> dict[str, Any]:
    """The extracted table of a series, or for an older one the oldest extracted table."""
    own = [s for s in extracted() if s == series] or extracted()[:1]
    return json.loads((DATA / f"fastdeploy-flags-{own[0]}.json").read_text(encoding="utf-8"))


def has_own_table(series: str) -> bool:
    return series in extracted()


@dataclass(frozen=True)
class Dialect:
    version: str

    @property
    def v(self) -> Version:
        return Version(self.version)

    @property
    def has_serve_cli(self) -> bool:  # `fastdeploy serve` arrived in 2.3
        return self.v >= Version("2.3")

    @property
    def needs_enable_mm(self) -> bool:  # VL needed --enable-mm in 2.0; auto-detected from 2.1
        return self.v < Version("2.1")

    @property
    def prefix_caching_default(self) -> bool:  # on by default from 2.2
        return self.v >= Version("2.2")

    @property
    def fixed_side_ports(self) -> bool:
        return self.v < Version("2.3")

    def reasoning_parser(self, name: str) -> str:
        return self._parser(name, REASONING_PARSERS, "reasoning_parser")

    def tool_parser(self, name: str) -> str:
        return self._parser(name, TOOL_PARSERS, "tool_call_parser")

    def _parser(self, name: str, table: dict[str, dict[str, str]], key: str) -> str:
        if has_own_table(self.version):  # the names its source registers
            listed = {"reasoning_parser": "reasoning_parsers", "tool_call_parser": "tool_parsers"}[key]
            names = {n: n for n in release_table(self.version)[listed]}
        else:
            names = _at_or_before(table, self.version)
        if name not in names:
            known = ", ".join(names) or "none"
            raise UserError(f"{key} {name!r} does not exist in FastDeploy {self.version} (it has: {known})")
        return names[name]


def dialect(version: str | None) -> Dialect:
    version = str(version or DEFAULT_VERSION)
    series = ".".join(version.split(".")[:2])
    if series not in VERSIONS:
        raise UserError(
            f"FastDeploy version {version!r} is not one ernie-ops knows",
            hint=f"fastdeploy_version: one of {', '.join(VERSIONS)}",
        )
    return Dialect(series)


def flag_table(version: str) -> dict[str, dict[str, Any]]:
    """Flags of a FastDeploy release: its own table, or the oldest extracted one minus later arrivals."""
    table = release_table(version)["flags"]
    if has_own_table(version):
        return dict(table)
    return {f: spec for f, spec in table.items() if Version(ADDED_IN.get(f, "2.0")) <= Version(version)}


def quantizations(version: str) -> list[str]:
    """The --quantization method names a release knows (a JSON quantization_config is also taken)."""
    names = release_table(version)["quantization_methods"]
    return [q for q in names if Version(QUANTIZATION_ADDED_IN.get(q, "2.0")) <= Version(version)]


def _check_quantization(value: str, version: str) -> str | None:
    known = quantizations(version)
    if value not in known:
        since = QUANTIZATION_ADDED_IN.get(value)
        if since:
            return f"{value!r} arrived in FastDeploy {since}"
        return f"{value!r} is not a quantization FastDeploy {version} knows ({', '.join(known)})"
    since = ONLINE_SINCE.get(value)
    if since and Version(since) > Version(version):
        return (
            f"{value!r} as online quantization of a BF16 checkpoint arrived in FastDeploy {since}; "
            "before it, serve a pre-quantized checkpoint (its config.json names the method) "
            "without --quantization"
        )
    return None


def _check_value(flag: str, spec: dict[str, Any], value: str | None, version: str) -> str | None:
    """Why `value` is not what `flag` takes in this release, or None."""
    kind = spec["type"]
    if kind == "switch":
        return None if value is None else "takes no value"
    if value is None:
        return None if kind == "bool_optional" else "needs a value"
    if "choices" in spec and value not in spec["choices"]:
        return f"{value!r} is not one of {', '.join(spec['choices'])}"
    if kind == "quantization" and not value.startswith("{"):
        return _check_quantization(value, version)
    try:
        if kind == "int":
            int(value)
        elif kind == "float":
            float(value)
        elif kind == "csv_int":
            [int(v) for v in value.split(",")]
        elif kind == "json" or kind == "quantization":
            json.loads(value)
    except ValueError:
        what = {"json": "JSON", "quantization": "JSON", "csv_int": "comma-separated ints"}.get(
            kind, "an " + kind
        )
        return f"{value!r} is not {what}"
    return None


def check_command(args: list[str], version: str) -> None:
    """Every flag must exist in this release's table, with a value of the right type."""
    table = flag_table(version)
    negatives = {f"--no-{f[2:]}": f for f, s in table.items() if s["type"] == "bool_optional"}
    i = 0
    while i < len(args):
        flag = args[i]
        name = negatives.get(flag, flag)
        spec = table.get(name)
        if spec is None:
            raise UserError(
                f"{flag} does not exist in FastDeploy {version}", hint="set another fastdeploy_version"
            )
        takes_value = spec["type"] not in ("switch", "bool_optional")
        value = args[i + 1] if takes_value and i + 1 < len(args) else None
        problem = _check_value(flag, spec, value, version)
        if problem:
            raise UserError(f"FastDeploy {version}: {flag} {problem}")
        i += 2 if takes_value else 1


@dataclass(frozen=True)
class Launch:
    argv: list[str]  # the full command
    env: dict[str, str]  # what to add to the environment (the API key goes here, never in argv)

    def shown(self) -> str:
        """The command for people and logs: secrets never appear."""
        import shlex

        env = " ".join(f"{k}={'***' if 'KEY' in k else shlex.quote(v)}" for k, v in sorted(self.env.items()))
        return (env + " " if env else "") + " ".join(shlex.quote(a) for a in self.argv)


def build_launch(profile: Any, model_dir: Path, is_vl: bool = False, python: str = "python") -> Launch:
    """The FastDeploy command for a validated ServeProfile, in its target version's dialect."""
    from ernie_ops.serve.profile import api_key, as_json

    d = dialect(profile.fastdeploy_version)
    host = profile.host or "0.0.0.0"  # FastDeploy's own default
    args: list[str] = ["--model", str(model_dir), "--host", host, "--port", str(profile.port)]
    for flag, port in profile.side_ports.items():  # explicit: two instances on a host must differ in all
        args += [flag, str(port)]
    if profile.served_model_name:
        args += ["--served-model-name", profile.served_model_name]
    if profile.chat_template:
        args += ["--chat-template", str(Path(profile.chat_template).expanduser())]
    if profile.max_request_mb is not None:
        raise UserError(
            "max_request_mb is an option of the embedded backend: FastDeploy has no request size limit",
            hint="remove it, or put a proxy with a body limit in front (nginx: client_max_body_size)",
        )
    args += ["--tensor-parallel-size", str(profile.tensor_parallel_size)]
    if profile.data_parallel_size > 1:
        args += ["--data-parallel-size", str(profile.data_parallel_size)]
    if profile.enable_expert_parallel:
        args += ["--enable-expert-parallel"]
    if isinstance(profile.quantization, dict):
        args += ["--quantization", as_json(profile.quantization)]
    elif profile.quantization != "bf16":
        args += ["--quantization", profile.quantization]
    args += ["--max-model-len", str(profile.max_model_len), "--max-num-seqs", str(profile.max_num_seqs)]
    if profile.max_num_batched_tokens:
        args += ["--max-num-batched-tokens", str(profile.max_num_batched_tokens)]
    args += ["--gpu-memory-utilization", str(profile.gpu_memory_utilization)]
    if profile.reasoning_parser:
        args += ["--reasoning-parser", d.reasoning_parser(profile.reasoning_parser)]
    if profile.tool_call_parser:
        args += ["--tool-call-parser", d.tool_parser(profile.tool_call_parser)]
    if is_vl and d.needs_enable_mm:
        args += ["--enable-mm"]
    if profile.limit_mm_per_prompt:
        args += ["--limit-mm-per-prompt", as_json(profile.limit_mm_per_prompt)]
    if profile.mm_processor_kwargs:
        args += ["--mm-processor-kwargs", as_json(profile.mm_processor_kwargs)]
    if profile.enable_prefix_caching != d.prefix_caching_default:
        # before 2.2 it was an off-by-default switch; from 2.2 on by default with a --no- form
        args += ["--enable-prefix-caching" if profile.enable_prefix_caching else "--no-enable-prefix-caching"]
    if profile.enable_chunked_prefill:
        args += ["--enable-chunked-prefill"]
    if profile.speculative_config:
        args += ["--speculative-config", as_json(profile.speculative_config)]
    if profile.graph_optimization_config:
        args += ["--graph-optimization-config", as_json(profile.graph_optimization_config)]
    if profile.load_choices:
        args += ["--load-choices", profile.load_choices]
    check_command(args, d.version)
    env = {"CUDA_VISIBLE_DEVICES": ",".join(map(str, profile.gpus))}
    key = api_key(profile)
    if key:
        env["FD_API_KEY"] = key  # FastDeploy reads it from the environment: it never shows in `ps` or logs
    return Launch([python, "-m", MODULE, *args], env)
