"""The checks `ernie-ops check` runs: each rule looks at the loaded recipe and returns problems.

Every rule encodes something ERNIEKit does silently or discovers late; the comment says what.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.version import Version

from ernie_ops.errors import UserError, did_you_mean
from ernie_ops.files import regular_file
from ernie_ops.recipe.load import RESERVED_BLOCK, LoadedRecipe
from ernie_ops.recipe.problems import Problem, error, warning
from ernie_ops.recipe.ranges import RANGES
from ernie_ops.recipe.schema import Field, Schema

SUGGESTIONS = 100  # unknown keys that get a "did you mean" (the report shows about as many)
YAML_BOOL_WORDS = {"true", "false", "yes", "no", "on", "off", "y", "n"}
# PyYAML follows YAML 1.1: a float needs a dot, so `1e-5` is read as the string "1e-5".
YAML11_EXPONENT = re.compile(r"^[+-]?\d+[eE][+-]?\d+$")
# Settings whose kernels exist only on GPUs (seen failing on a CPU with Paddle 3.3.1).
GPU_ONLY_ON_CPU = ("use_flash_attention", "use_attn_mask_start_row_indices", "fuse_rms_norm", "fuse_swiglu")
# compute_type -> what FinetuningArguments.__post_init__ writes into weight_quantize_algo
QUANT_ALGO = {
    "bf16": None,
    "fp16": None,
    "fp8": "fp8linear",
    "wint8": "weight_only_int8",
    "wint4/8": "weight_only_mix",
    "nf4": "nf4",
}
# keys compute_type fp8 overwrites
FP8_OVERWRITES = (
    "apply_hadamard",
    "optim",
    "use_lowprecision_moment",
    "tensorwise_offload_optimizer",
    "optim_shard_num",
    "unified_checkpoint_config",
)
METADATA_KEYS = {
    "model": str,
    "method": str,
    "context": int,
    "min_gpus": int,
    "gpu_memory_gb": int,
    "erniekit": str,
    "notes": str,
}


@dataclass
class Context:
    recipe: LoadedRecipe
    schema: Schema
    gpus: int | None
    nnodes: int
    cwd: Path
    lint_data: bool = True  # lint every local dataset file (off: only its first record is looked at)

    def value(self, key: str) -> Any:
        """What ERNIEKit will use: the recipe's value, else the dataclass default."""
        if key in self.recipe.values:
            return self.recipe.values[key]
        f = self.schema.fields.get(key)
        return f.default if f else None

    def where(self, key: str | None = None) -> str:
        return self.recipe.where(key)

    @property
    def stage(self) -> str:
        return str(self.value("stage"))

    @property
    def is_lora(self) -> bool:
        return str(self.value("fine_tuning")).strip().lower() == "lora"

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.cwd / p

    def knowing(self, attr: str, value: str) -> list[str]:
        """The other ERNIEKit versions whose `attr` (stages, dataset_types, ...) has `value`, oldest first."""
        return sorted((v for v, o in self.schema.others.items() if value in getattr(o, attr)), key=Version)


Rule = Callable[[Context], Iterator[Problem]]


# ---------------------------------------------------------------------------------------------
# keys and types


def unknown_keys(ctx: Context) -> Iterator[Problem]:
    """PdArgumentParser.parse_dict keeps only known fields: anything else vanishes without a word."""
    known = ctx.schema.fields
    unknown = 0
    for key in ctx.recipe.values:
        if key in known or key == RESERVED_BLOCK:
            continue
        unknown += 1
        examples = ctx.schema.example_only_keys.get(key)
        elsewhere = sorted((v for v, o in ctx.schema.others.items() if key in o.keys), key=Version)
        if examples:  # a leftover ERNIEKit's own examples carry: dropped, and harmless there
            also = f" (ERNIEKit {', '.join(elsewhere)} knows it)" if elsewhere else ""
            yield warning(
                ctx.where(key),
                key,
                f"ERNIEKit {ctx.schema.erniekit_version} has no such argument and drops it silently{also}; "
                f"its own example configs set it too ({examples[0]}"
                + (f" and {len(examples) - 1} more" if len(examples) > 1 else "")
                + ")",
                "remove it, unless you know the ERNIEKit you run reads it",
            )
            continue
        if elsewhere:
            yield error(
                ctx.where(key),
                key,
                f"only ERNIEKit {', '.join(elsewhere)} knows this key; "
                f"{ctx.schema.erniekit_version} drops it silently",
                f"install ERNIEKit {elsewhere[-1]}, or remove the key",
            )
            continue
        # a suggestion costs ~0.5 ms (difflib against every key): only the first are looked for
        guess = did_you_mean(key, list(known)) if unknown <= SUGGESTIONS else None
        default = (
            f" (it trains with the default {guess}: {known[guess].default!r})"
            if guess and not ctx.recipe.given(guess)
            else ""
        )
        yield error(
            ctx.where(key),
            key,
            f"unknown key: ERNIEKit ignores it silently{default}",
            f"did you mean '{guess}'?" if guess else "remove it; `ernie-ops check --keys` lists valid keys",
        )


def _type_problem(f: Field, value: Any, list_ok: bool = False) -> tuple[str, str] | None:
    """(what is wrong, fix) when `value` is not what field `f` needs, else None.

    `list_ok`: this ERNIEKit documents a list form for this `str` key (schema.list_values)."""
    if value is None:
        return (
            None
            if f.optional
            else (f"null, expected {f.type}", f"give a value or delete the line (default {f.default!r})")
        )
    if f.type == "bool":
        if isinstance(value, bool):
            return None
        if isinstance(value, str) and value.strip().lower() in YAML_BOOL_WORDS:
            meant = "true" if value.strip().lower() in ("true", "yes", "on", "y") else "false"
            return (
                f"the quoted string {value!r} is not a boolean, and any non-empty string counts as true",
                f"write {meant} without quotes",
            )
        if isinstance(value, int) and value in (0, 1):
            return None
        return f"expected true or false, got {value!r}", "write true or false"
    if f.type in ("int", "float"):
        if isinstance(value, bool):
            return f"expected a number, got {str(value).lower()}", "write a number"
        if f.type == "int" and isinstance(value, float):
            if value.is_integer():
                return f"expected an integer, got {value!r}", f"write {int(value)}"
            return f"expected an integer, got {value!r}", "write a whole number"
        if isinstance(value, int | float):
            return None
        if isinstance(value, str):
            text = value.strip()
            if f.type == "float" and YAML11_EXPONENT.match(text):
                mantissa, exponent = re.split(r"[eE]", text)
                return (
                    f"YAML reads {text} as a string, not a number (a YAML 1.1 float needs a dot)",
                    f"write {mantissa}.0e{exponent}",
                )
            try:
                float(text)
                return f"a quoted string {value!r}, not a number", f"write {text} without quotes"
            except ValueError:
                return f"expected a number, got {value!r}", f"write a number (default {f.default!r})"
        return f"expected a number, got {type(value).__name__}", "write a number"
    if f.type == "str":
        if isinstance(value, str):
            return None
        if isinstance(value, list) and list_ok:
            return None
        if isinstance(value, list):
            joined = ",".join(str(v) for v in value)
            return (
                "ERNIEKit reads this as one comma-separated string; a YAML list becomes the text "
                f"{str(value)!r}",
                f'write "{joined}"',
            )
        if isinstance(value, bool):
            return (
                f"expected text, got the boolean {str(value).lower()} (YAML reads unquoted "
                "yes/no/on/off/true/false as booleans)",
                f'quote it, e.g. "{"yes" if value else "no"}"' + (" (on the command line: key='\"no\"')"),
            )
        if isinstance(value, dict):
            return "expected text, got a mapping", "write a plain value"
        return None  # numbers: ERNIEKit str()s them where it matters (e.g. probabilities)
    if f.type == "list" and not isinstance(value, list | str):
        return f"expected a list, got {type(value).__name__}", "write a YAML list [a, b]"
    if f.type == "dict" and not isinstance(value, dict):
        return f"expected a mapping, got {type(value).__name__}", "write key: value pairs under it"
    return None


def types(ctx: Context) -> Iterator[Problem]:
    for key, value in ctx.recipe.values.items():
        f = ctx.schema.fields.get(key)
        if f is None:
            continue
        problem = _type_problem(f, value, key in ctx.schema.list_values)
        if problem:
            yield error(ctx.where(key), key, *problem)
        elif f.choices and value is not None and str(value) not in f.choices:
            guess = did_you_mean(str(value), list(f.choices))
            yield error(
                ctx.where(key),
                key,
                f"{value!r} is not one of {', '.join(f.choices)}",
                f"did you mean {guess!r}?" if guess else f"use one of {', '.join(f.choices)}",
            )


def ranges(ctx: Context) -> Iterator[Problem]:
    """The dataclasses take any number; ERNIEKit fails late, or trains wrong, on most of them."""
    for key, value in ctx.recipe.values.items():
        allowed = RANGES.get(key)
        if allowed is None or key not in ctx.schema.fields:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue  # `types` reports what is not a number
        if not allowed.admits(value):
            default = ctx.schema.fields[key].default
            usable = isinstance(default, int | float) and allowed.admits(default)
            yield error(
                ctx.where(key),
                key,
                f"{value!r} is out of range: it must be {allowed.describe()}",
                f"e.g. {key}: {default!r} (ERNIEKit's default)" if usable else "",
            )


def choices(ctx: Context) -> Iterator[Problem]:
    """Values ERNIEKit compares against fixed strings; anything else fails late or silently differs."""
    stage = ctx.value("stage")
    if isinstance(stage, str) and stage not in ctx.schema.stages:
        newer = ctx.knowing("stages", stage)
        guess = did_you_mean(stage, list(ctx.schema.stages)) or next(
            (s for s in ctx.schema.stages if s.lower() == stage.lower()), None
        )
        fix = f"did you mean {guess!r}?" if guess else f"use one of {', '.join(ctx.schema.stages)}"
        if newer:
            fix = f"stage {stage} needs ERNIEKit {newer[0]} or newer (this is {ctx.schema.erniekit_version})"
        yield error(
            ctx.where("stage"),
            "stage",
            f"{stage!r} is not a stage ERNIEKit {ctx.schema.erniekit_version} runs "
            f"({', '.join(ctx.schema.stages)}; case matters)",
            fix,
        )
    fine_tuning = ctx.value("fine_tuning")
    if isinstance(fine_tuning, str) and fine_tuning.strip().lower() not in ("full", "lora"):
        yield error(
            ctx.where("fine_tuning"),
            "fine_tuning",
            f"{fine_tuning!r} is neither Full nor LoRA; ERNIEKit would silently run full fine-tuning",
            "write Full or LoRA",
        )
    compute_type = ctx.value("compute_type")
    if isinstance(compute_type, str) and compute_type not in ctx.schema.compute_types:
        guess = did_you_mean(compute_type, list(ctx.schema.compute_types))
        newer = ctx.knowing("compute_types", compute_type)
        yield error(
            ctx.where("compute_type"),
            "compute_type",
            f"{compute_type!r} is not one of {', '.join(ctx.schema.compute_types)} "
            f"(ERNIEKit {ctx.schema.erniekit_version} raises 'Unknown compute_type' at start-up)",
            f"compute_type {compute_type} needs ERNIEKit {newer[0]} or newer"
            if newer
            else (f"did you mean {guess!r}?" if guess else ""),
        )
    mix = ctx.value("mix_strategy")
    known_mixes = ctx.schema.mix_strategies
    if ctx.recipe.given("mix_strategy") and known_mixes and isinstance(mix, str) and mix not in known_mixes:
        guess = did_you_mean(mix, list(ctx.schema.mix_strategies))
        yield error(
            ctx.where("mix_strategy"),
            "mix_strategy",
            f"{mix!r} is not a dataset mixing strategy ERNIEKit {ctx.schema.erniekit_version} has "
            f"({', '.join(ctx.schema.mix_strategies)}); it would build no dataset",
            f"did you mean {guess!r}?" if guess else f"use one of {', '.join(ctx.schema.mix_strategies)}",
        )


# ---------------------------------------------------------------------------------------------
# silent overrides


def silent_overrides(ctx: Context) -> Iterator[Problem]:
    """FinetuningArguments/ModelArguments.__post_init__ overwrite these without telling anyone."""
    given = ctx.recipe.given
    batch = ctx.value("batch_size")
    batch_note = f"batch_size ({batch}{'' if given('batch_size') else ', its default'})"
    for key in ("per_device_train_batch_size", "per_device_eval_batch_size"):
        if given(key) and ctx.value(key) != batch:
            yield warning(
                ctx.where(key),
                key,
                f"ignored: ERNIEKit overwrites it with {batch_note}",
                f"set batch_size: {ctx.value(key)} instead (it sets both)",
            )
    compute_type = ctx.value("compute_type")
    if given("weight_quantize_algo") and compute_type in QUANT_ALGO:
        becomes = QUANT_ALGO[compute_type]
        if ctx.value("weight_quantize_algo") != becomes:
            yield warning(
                ctx.where("weight_quantize_algo"),
                "weight_quantize_algo",
                f"ignored: compute_type {compute_type!r} sets it to {becomes!r}",
                "choose the quantization with compute_type (wint8, wint4/8, fp8) and drop this key",
            )
    bf16_wins = compute_type != "fp16"
    for key, forced in (("bf16", bf16_wins), ("fp16", not bf16_wins)):
        if given(key) and ctx.value(key) != forced:
            yield warning(
                ctx.where(key),
                key,
                f"ignored: ERNIEKit sets {key}={str(forced).lower()} from compute_type {compute_type!r}",
                "set compute_type (bf16 or fp16) and drop this key",
            )
    if compute_type == "fp8":
        for key in FP8_OVERWRITES:
            if given(key):
                yield warning(ctx.where(key), key, "ignored: compute_type fp8 sets it", "drop this key")
    if given("lora") and bool(ctx.value("lora")) != ctx.is_lora:
        yield warning(
            ctx.where("lora"),
            "lora",
            f"ignored: ERNIEKit derives lora from fine_tuning ({ctx.value('fine_tuning')!r})",
            "set fine_tuning: LoRA or Full and drop this key",
        )
    if given("server_tp_degree"):
        yield warning(
            ctx.where("server_tp_degree"),
            "server_tp_degree",
            "ignored: ERNIEKit copies tensor_parallel_degree into it",
            "drop this key",
        )
    if not given("fine_tuning"):
        yield warning(
            ctx.where(),
            "fine_tuning",
            "not set: ERNIEKit defaults to LoRA, which may not be what this recipe means",
            "write fine_tuning: LoRA or fine_tuning: Full",
        )


def lora_keys_without_lora(ctx: Context) -> Iterator[Problem]:
    if ctx.is_lora:
        return
    for key in ctx.recipe.values:
        if "lora" in key and key != "lora" and key in ctx.schema.fields:
            yield warning(
                ctx.where(key),
                key,
                f"has no effect with fine_tuning: {ctx.value('fine_tuning')}",
                "set fine_tuning: LoRA, or drop the LoRA keys",
            )


# ---------------------------------------------------------------------------------------------
# datasets


def _split(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    return [p for p in str(value).replace(" ", "").split(",") if p]


def datasets(ctx: Context) -> Iterator[Problem]:
    """erniekit/train/tuner.py checks train and eval paths for every stage without "VL" in its name;
    a VL stage reads image-text data from train_dataset_path and, where the version has it,
    text-only data from text_dataset_path (either may be empty, not both)."""
    vl = "VL" in ctx.stage
    text_paths = _split(ctx.value("text_dataset_path") or "") if vl else []
    splits = ["train"] + ([] if vl else ["eval"])
    for split in splits:
        yield from _dataset_split(ctx, split, vl, bool(text_paths))
    if text_paths and "text_dataset_path" in ctx.schema.fields:
        probs = _split(ctx.value("text_dataset_prob") or "")
        if len(probs) != len(text_paths):
            yield error(
                ctx.where("text_dataset_path"),
                "text_dataset_prob",
                f"{len(text_paths)} text_dataset_path value(s) but {len(probs)} text_dataset_prob value(s): "
                "ERNIEKit needs one per dataset",
                f'text_dataset_prob: "{",".join(["1.0"] * len(text_paths))}"',
            )
        yield from _probabilities(ctx, "text_dataset_prob", probs)
        for path in text_paths:
            yield from _dataset_file(ctx, "text_dataset_path", path, "text")


def _dataset_split(ctx: Context, split: str, vl: bool = False, has_text: bool = False) -> Iterator[Problem]:
    path_key, prob_key, type_key = (f"{split}_dataset_{s}" for s in ("path", "prob", "type"))
    if path_key not in ctx.schema.fields:
        return
    paths = _split(ctx.value(path_key) or "")
    probs = _split(ctx.value(prob_key) or "")
    kinds = _split(ctx.value(type_key) or "")
    if not ctx.recipe.given(path_key):
        default = ctx.value(path_key)
        if default is None and not (vl and has_text):
            stops = "" if vl else " (erniekit/train/tuner.py: 'Dataset Path is None')"
            yield error(
                ctx.where(),
                path_key,
                f"not set, and ERNIEKit {ctx.schema.erniekit_version} has no default: "
                f"it stops at start-up{stops}",
                f"add {path_key}: your-{split}.jsonl (and {prob_key}" + ("" if vl else f", {type_key}") + ")",
            )
        elif default is not None and not ctx.resolve(str(default)).exists():
            yield error(
                ctx.where(),
                path_key,
                f"not set: ERNIEKit falls back to its example path {default!r}, which does not exist here",
                f"add {path_key}: your-{split}.jsonl (and {prob_key}, {type_key})",
            )
        return
    if not paths:
        if not (vl and has_text):
            yield error(ctx.where(path_key), path_key, "empty: ERNIEKit needs at least one dataset")
        return
    if vl:  # the VL reader takes image_info/text_info records by path and probability; no type
        if len(probs) != len(paths):
            yield error(
                ctx.where(path_key),
                prob_key,
                f"{len(paths)} path(s) but {len(probs)} {prob_key} value(s): ERNIEKit needs one per dataset",
                f'{prob_key}: "{",".join(["1.0"] * len(paths))}"',
            )
        yield from _probabilities(ctx, prob_key, probs)
        for path in paths:
            yield from _dataset_file(ctx, path_key, path, "erniekit")
        return
    for key, example in ((prob_key, "1.0"), (type_key, "erniekit")):
        if ctx.value(key) is None:
            yield error(
                ctx.where(path_key),
                key,
                f"not set, and ERNIEKit {ctx.schema.erniekit_version} has no default for it",
                f"{key}: {example}" + (" (one per dataset)" if len(paths) > 1 else ""),
            )
            return
    if not len(paths) == len(probs) == len(kinds):
        yield error(
            ctx.where(path_key),
            path_key,
            f"{len(paths)} path(s) but {len(probs)} {prob_key} value(s) and {len(kinds)} {type_key} "
            "value(s): ERNIEKit needs one of each per dataset",
            f'e.g. {prob_key}: "{",".join(["1.0"] * len(paths))}", '
            f'{type_key}: "{",".join(["erniekit"] * len(paths))}"',
        )
    yield from _probabilities(ctx, prob_key, probs)
    known = ctx.schema.dataset_types
    for kind in dict.fromkeys(kinds):
        if kind not in known:
            newer = ctx.knowing("dataset_types", kind)
            guess = did_you_mean(kind, list(known))
            yield error(
                ctx.where(type_key),
                type_key,
                f"{kind!r} is not a dataset type ERNIEKit {ctx.schema.erniekit_version} reads "
                f"({', '.join(known)}); it raises 'Cannot support {kind} now'",
                f"dataset type {kind} needs ERNIEKit {newer[0]} or newer"
                if newer
                else (f"did you mean {guess!r}?" if guess else ""),
            )
    for i, path in enumerate(paths):
        kind = kinds[i] if i < len(kinds) else "erniekit"
        yield from _dataset_file(ctx, path_key, path, kind)


def _probabilities(ctx: Context, key: str, probs: list[str]) -> Iterator[Problem]:
    values = []
    for p in probs:
        try:
            values.append(float(p))
        except ValueError:
            yield error(ctx.where(key), key, f"{p!r} is not a number", 'write probabilities like "0.7,0.3"')
            return
    if any(v < 0 for v in values):
        yield error(ctx.where(key), key, "probabilities cannot be negative")
        return
    if values and any(v == 0 for v in values):
        yield warning(
            ctx.where(key), key, "a probability of 0 drops that dataset", "remove it, or give it a weight"
        )
    total = sum(values)
    if values and total > 0 and not math.isclose(total, 1.0, abs_tol=1e-6):
        shares = ",".join(f"{v / total:.3g}" for v in values)
        yield warning(
            ctx.where(key),
            key,
            f"sums to {total:g}, not 1: ERNIEKit normalises it to {shares}",
            f'write "{shares}" to say what will happen',
        )


def _dataset_file(ctx: Context, key: str, path: str, kind: str) -> Iterator[Problem]:
    if "://" in path:
        return  # remote storage: nothing to look at from here
    local = ctx.resolve(path)
    if kind == "glob":
        if not list(local.parent.glob(local.name)):
            yield error(ctx.where(key), key, f"the glob {path!r} matches no file")
        return
    if not local.exists() and not local.is_symlink():
        hint = "check the path"
        beside = ctx.recipe.path.parent / path
        if beside.exists():
            hint = (
                f"ERNIEKit resolves paths from the directory it runs in ({ctx.cwd}), not the recipe's; "
                f"write {beside} or run from {ctx.recipe.path.parent}"
            )
        yield error(
            ctx.where(key),
            key,
            f"{path} does not exist (ERNIEKit would fail only after loading the model)",
            hint,
        )
        return
    try:
        regular_file(local, "dataset")  # a FIFO would block the check, /dev/zero never end
    except UserError as err:
        yield error(ctx.where(key), key, err.message, err.hint or "")
        return
    if kind == "erniekit":
        mismatch = list(_data_matches_stage(ctx, key, local, path))
        yield from mismatch
        if not mismatch and ctx.lint_data:
            yield from _lint_dataset(ctx, key, local, path)


def _lint_dataset(ctx: Context, key: str, local: Path, name: str) -> Iterator[Problem]:
    """ERNIEKit skips records it cannot read with a warning; when it skips them all, it hangs."""
    from ernie_ops.data.formats import erniekit_format
    from ernie_ops.data.lint import lint_file

    fmt = erniekit_format(ctx.stage)
    first: list[str] = []

    def keep_first(path: Path, line: int, reason: str) -> None:
        if not first:
            first.append(f"{name}:{line}: {reason}")

    try:
        result = lint_file(local, fmt, keep_first, progress=False)
    except UserError as err:
        yield error(ctx.where(key), key, f"{name}: {err}".replace("\n  hint:", ";"))
        return
    if result.bad:
        hang = " (all of them: ERNIEKit would hang)" if result.bad == result.records else ""
        yield error(
            ctx.where(key),
            key,
            f"{result.bad} of {result.records} records are bad{hang}; ERNIEKit skips them. First: {first[0]}",
            f"ernie-ops data lint {name} lists them all",
        )
    if result.duplicates and result.first_duplicate:
        line, original = result.first_duplicate
        yield warning(
            ctx.where(key),
            key,
            f"{result.duplicates} record(s) are exact copies of earlier ones (first: {name}:{line} "
            f"repeats line {original}); ERNIEKit keeps them and trains on every copy",
            "if the copies are not meant to weigh more: ernie-ops data convert --dedupe drops them",
        )


def _first_record(path: Path) -> tuple[int, Any] | None:
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            if raw.strip():
                return number, json.loads(raw)
    return None


def _data_matches_stage(ctx: Context, key: str, path: Path, name: str) -> Iterator[Problem]:
    """Peek at the first record: DPO data in an SFT recipe (or the reverse) fails late or trains wrong."""
    where = ctx.where(key)
    try:
        first = _first_record(path)
    except (ValueError, RecursionError) as err:  # invalid JSON or UTF-8; nested past the parser's limit
        why = err if isinstance(err, ValueError) else "nested too deeply"
        yield error(where, key, f"{name}: the first record is not JSON ({why})", "fix or regenerate the file")
        return
    except OSError as err:
        yield error(where, key, f"{name}: cannot read it ({err.strerror or err})")
        return
    if first is None:
        yield error(where, key, f"{name} has no records")
        return
    line, record = first
    if not isinstance(record, dict):
        yield error(where, key, f"{name}:{line}: a record must be a JSON object")
        return
    fields = set(record)
    looks_dpo = {"response", "sort"} <= fields
    looks_vl = "text_info" in fields
    stage = ctx.stage
    if looks_vl != ("VL" in stage):
        kind = "multimodal (image_info/text_info)" if looks_vl else "text-only (no text_info)"
        yield error(
            where,
            key,
            f"{name}:{line} is {kind} data but the stage is {stage}",
            "VL-SFT takes image_info/text_info records; SFT and DPO take src/tgt",
        )
    elif looks_vl:
        return
    elif "messages" in fields or "conversations" in fields or {"chosen", "rejected"} <= fields:
        yield error(
            where,
            key,
            f"{name}:{line} is not in ERNIEKit's format (it is OpenAI messages / ShareGPT / "
            "preference-pair data); the erniekit type needs src/tgt (and response/sort for DPO)",
            "convert it to src/tgt records",
        )
    elif stage == "DPO" and not looks_dpo:
        yield error(
            where,
            key,
            f"{name}:{line} is SFT data (no response/sort fields) but the stage is DPO",
            "point the DPO recipe at preference data, or set stage: SFT",
        )
    elif stage != "DPO" and looks_dpo:
        yield error(
            where,
            key,
            f"{name}:{line} is DPO data (response/sort fields) but the stage is {stage}",
            "set stage: DPO, or point it at SFT data (src/tgt)",
        )


# ---------------------------------------------------------------------------------------------
# model, hardware, parallelism


def _model_facts(ctx: Context) -> tuple[int | None, bool | None]:
    """(max context, is MoE) from the model's config.json, else the catalog; None when unknown."""
    path = ctx.value("model_name_or_path")
    if not isinstance(path, str):
        return None, None
    config = ctx.resolve(path) / "config.json"
    if config.is_file():
        try:
            data = json.loads(config.read_text())
            return data.get("max_position_embeddings"), bool(data.get("moe_num_experts"))
        except (ValueError, OSError):
            return None, None
    from ernie_ops.catalog import find_model

    try:
        spec = find_model(path)
    except UserError:
        return None, None
    return spec.max_context, spec.is_moe


def model(ctx: Context) -> Iterator[Problem]:
    path = ctx.value("model_name_or_path")
    if not isinstance(path, str) or not path:
        yield error(
            ctx.where("model_name_or_path"), "model_name_or_path", "not set", "point it at a model directory"
        )
        return
    local = ctx.resolve(path)
    from ernie_ops.catalog import find_model

    try:
        hub = find_model(path) if path.count("/") == 1 and not path.startswith((".", "/", "~")) else None
    except UserError:
        hub = None
    if not local.exists():
        if hub:
            yield warning(
                ctx.where("model_name_or_path"),
                "model_name_or_path",
                f"{path} is not downloaded here; ERNIEKit reads {path}/config.json and does not download",
                f"ernie-ops pull {path}",
            )
        else:
            yield error(
                ctx.where("model_name_or_path"),
                "model_name_or_path",
                f"{path} does not exist (ERNIEKit reads a local directory, it does not download)",
                f"ernie-ops tiny-model {path} builds the tiny test model"
                if "tiny" in path
                else "download the model, or fix the path",
            )
    elif not (local / "config.json").is_file():
        yield error(ctx.where("model_name_or_path"), "model_name_or_path", f"no config.json in {path}")
    else:
        try:
            config = json.loads((local / "config.json").read_text())
        except ValueError:
            config = {}
            yield error(
                ctx.where("model_name_or_path"), "model_name_or_path", f"{path}/config.json is not JSON"
            )
        if "torch_dtype" in config and "dtype" not in config:
            yield error(
                ctx.where("model_name_or_path"),
                "model_name_or_path",
                "a PyTorch checkpoint (torch_dtype): ERNIEKit trains Paddle checkpoints only",
                "use the -Paddle release of the model",
            )
    max_context, is_moe = _model_facts(ctx)
    seq = ctx.value("max_seq_len")
    if max_context and isinstance(seq, int) and not isinstance(seq, bool) and seq > max_context:
        yield error(
            ctx.where("max_seq_len"),
            "max_seq_len",
            f"{seq} is longer than the model's context ({max_context})",
            f"max_seq_len: {max_context} at most",
        )
    group = ctx.value("moe_group")
    if is_moe is False and ctx.recipe.given("moe_group") and group not in ("dummy", None):
        yield warning(
            ctx.where("moe_group"),
            "moe_group",
            f"{group!r} has no effect on a dense model",
            "moe_group: dummy (or drop it)",
        )


def cpu(ctx: Context) -> Iterator[Problem]:
    """On a CPU these settings fail inside ERNIEKit (GPU-only kernels, fleet-only code paths)."""
    if str(ctx.value("device")).lower() != "cpu":
        return
    for key in GPU_ONLY_ON_CPU:
        if ctx.value(key) is True:
            given = ctx.recipe.given(key)
            origin = "" if given else " (ERNIEKit's default)"
            yield error(
                ctx.where(key if given else "device"),
                key,
                f"true{origin} needs a GPU-only kernel; on device cpu it fails",
                f"{key}: false",
            )
    if ctx.stage == "DPO" and not ctx.is_lora:
        yield error(
            ctx.where("fine_tuning"),
            "fine_tuning",
            "full DPO fails in one CPU process (the reference model is wrapped for fleet)",
            "fine_tuning: LoRA on CPU",
        )
    elif ctx.stage == "DPO" and ctx.value("do_eval") is True:
        yield error(
            ctx.where("do_eval"),
            "do_eval",
            "DPO evaluation wraps the reference model for fleet and fails in one CPU process",
            "do_eval: false on CPU",
        )


def dpo(ctx: Context) -> Iterator[Problem]:
    if ctx.stage == "DPO" and ctx.value("offset_alpha") == 0 and ctx.schema.erniekit_version == "1.0.1":
        yield warning(
            ctx.where("offset_alpha"),
            "offset_alpha",
            "0.0 makes ERNIEKit 1.0.1's DPO loss fail (ValueError: too many values to unpack)",
            "offset_alpha: 0.1 (any value > 0)",
        )


def _degree(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 1 else 1


def parallel(ctx: Context) -> Iterator[Problem]:
    """TP x PP x sharding must divide the GPUs; otherwise it fails inside the launch."""
    keys = ("tensor_parallel_degree", "pipeline_parallel_degree", "sharding_parallel_degree")
    degrees = {k: _degree(ctx.value(k)) for k in keys if k in ctx.schema.fields}
    product = math.prod(degrees.values())
    if ctx.gpus is None or product == 1:
        return
    world = ctx.gpus * ctx.nnodes
    if world % product:
        key = next((k for k in keys if degrees.get(k, 1) > 1), keys[0])
        parts = " x ".join(f"{k.split('_')[0]} {d}" for k, d in degrees.items())
        yield error(
            ctx.where(key),
            key,
            f"{parts} = {product} does not divide {ctx.gpus} GPU(s) x {ctx.nnodes} node(s) = {world}",
            f"run on a multiple of {product} GPUs, or lower the degrees so they divide {world}",
        )


def metadata(ctx: Context) -> Iterator[Problem]:
    block = ctx.recipe.values.get(RESERVED_BLOCK)
    if block is None:
        return
    where = ctx.where(RESERVED_BLOCK)
    if not isinstance(block, dict):
        yield error(
            where, RESERVED_BLOCK, "must be a mapping of ernie-ops metadata", "e.g. `model: ERNIE-4.5-0.3B`"
        )
        return
    for key, value in block.items():
        expected = METADATA_KEYS.get(key)
        if expected is None:
            guess = did_you_mean(str(key), list(METADATA_KEYS))
            yield warning(
                where,
                f"{RESERVED_BLOCK}.{key}",
                "unknown metadata key",
                f"did you mean {guess!r}?" if guess else "",
            )
        elif not isinstance(value, expected) or isinstance(value, bool):
            yield error(where, f"{RESERVED_BLOCK}.{key}", f"expected {expected.__name__}, got {value!r}")
    if "model" in block and isinstance(block["model"], str):
        from ernie_ops.catalog import find_model

        try:
            find_model(block["model"])
        except UserError as err:
            yield error(where, f"{RESERVED_BLOCK}.model", err.message, err.hint or "")


RULES: tuple[Rule, ...] = (
    unknown_keys,
    types,
    ranges,
    choices,
    silent_overrides,
    lora_keys_without_lora,
    datasets,
    model,
    cpu,
    dpo,
    parallel,
    metadata,
)
