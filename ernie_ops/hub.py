"""The model hub: pull ERNIE 4.5 checkpoints where ERNIEKit reads them, push fine-tuned ones with a card.

ERNIEKit never downloads: a recipe's `model_name_or_path: baidu/ERNIE-4.5-0.3B-Paddle` is a local
directory. `pull` therefore downloads into that relative path by default (huggingface_hub's
`local_dir` mode, resumable), and with HF_HUB_OFFLINE set answers from that directory or the hub
cache only. `push` uploads a checkpoint plus a generated model card that carries the run's lineage
(recipe, run record, data fingerprints, versions) and the commands to serve it.

huggingface_hub (and requests under it) is imported inside the functions: `ernie-ops --help` and
every other subcommand must not pay for it. The hub token (HF_TOKEN or the hub's login) is left to
huggingface_hub to send; nothing here prints or logs it, and server text is scrubbed of it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ernie_ops import __version__
from ernie_ops.errors import UserError, did_you_mean
from ernie_ops.train.record import EXPORT_DIR, RECIPE_FILE, RUN_FILE, RUN_RECORD

log = logging.getLogger(__name__)

LIBRARY_NAME = "ernie-ops"  # sent in the user agent, so hub logs show what downloaded
LOGIN_HINT = "set HF_TOKEN or run `hf auth login`"
# What a local_dir download keeps besides the files: resume state and per-file metadata.
LOCAL_DIR_META = Path(".cache") / "huggingface"
# Files of a training checkpoint that nobody needs to serve it (ERNIEKit's checkpoint-N/ layout).
TRAINING_STATE = ("optimizer.pdopt", "scheduler.pdparams", "rng_state.pth")
# Serving flags per model, from FastDeploy's published minimum-GPU table
# (shared/reference/fastdeploy.md): the smallest setting that fits 80 GB cards.
SERVE_FLAGS = {
    "ERNIE-4.5-21B-A3B": "--quantization wint4",
    "ERNIE-4.5-21B-A3B-Thinking": "--quantization wint4 --reasoning-parser ernie-x1",
    "ERNIE-4.5-300B-A47B": "--quantization wint4 --tensor-parallel-size 4",
    "ERNIE-4.5-VL-28B-A3B": "--quantization wint4 --reasoning-parser ernie-45-vl",
    "ERNIE-4.5-VL-28B-A3B-Thinking": "--quantization wint4 --reasoning-parser ernie-45-vl-thinking",
    "ERNIE-4.5-VL-424B-A47B": "--quantization wint4 --tensor-parallel-size 8 --reasoning-parser ernie-45-vl",
}


# --- repository identity --------------------------------------------------------------------------


def known_hub_ids() -> dict[str, str]:
    """Every catalog hub id, keyed by its lower-case form (the hub resolves ids case-insensitively)."""
    from ernie_ops.catalog import MODELS

    return {hub_id.lower(): hub_id for spec in MODELS.values() for hub_id in spec.hub_ids}


def is_pytorch_repo(repo_id: str) -> bool:
    return repo_id.rstrip("/").lower().endswith("-pt")


def repo_warnings(repo_id: str) -> list[str]:
    """What a user should know before downloading `repo_id`: unknown repository, wrong case, -PT."""
    known = known_hub_ids()
    canonical = known.get(repo_id.lower())
    notes = []
    if canonical is None:
        guess = did_you_mean(repo_id, list(known.values()))
        notes.append(
            f"{repo_id} is not a known ERNIE 4.5 repository"
            + (f" (did you mean {guess}?)" if guess else "")
            + "; downloading it anyway (`ernie-ops models` lists the known ones)"
        )
    elif canonical != repo_id:
        # The hub does not care, but the local directory does: recipes name the canonical spelling.
        notes.append(f"the repository is spelt {canonical}; recipes expect that spelling as a local path")
    if is_pytorch_repo(repo_id):
        paddle = known.get(repo_id[: -len("-PT")].lower() + "-paddle")
        notes.append(
            f"{repo_id} is a PyTorch (-PT) checkpoint: ERNIEKit cannot train it (it loads -Paddle ones)"
            + (f"; pull {paddle} to fine-tune" if paddle else "")
        )
    return notes


def validate_repo_id(repo_id: str) -> None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id as _validate

    try:
        _validate(repo_id)
    except HFValidationError:
        raise UserError(
            f"{repo_id!r} is not a valid hub repository id",
            hint="ORG/NAME, e.g. baidu/ERNIE-4.5-0.3B-Paddle",
        ) from None


# --- errors -----------------------------------------------------------------------------------------


def redact(text: str) -> str:
    """`text` without the hub token in it (server messages may echo what they were sent)."""
    from huggingface_hub import get_token

    token = get_token()
    return text.replace(token, "***") if token else text


def map_hub_error(
    err: BaseException, repo_id: str, *, revision: str | None = None, action: str = "pull"
) -> UserError | None:
    """A one-line UserError with a hint for what huggingface_hub raised; None for anything else.

    The order matters: GatedRepoError is a RepositoryNotFoundError, LocalEntryNotFoundError and the
    others are HfHubHTTPErrors, and all of them are requests exceptions.
    """
    import requests
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        DisabledRepoError,
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        LocalTokenNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    page = f"{constants.ENDPOINT}/{repo_id}"
    if isinstance(err, HFValidationError):
        return UserError(f"{repo_id!r} is not a valid hub repository id", hint="ORG/NAME")
    if isinstance(err, GatedRepoError):
        return UserError(
            f"{repo_id} is gated and your account has not been granted access",
            hint=f"accept its conditions at {page} with the account of your token ({LOGIN_HINT})",
        )
    if isinstance(err, RevisionNotFoundError):
        return UserError(
            f"revision {revision or 'main'!r} not found in {repo_id}",
            hint="give a branch, tag or commit of the repository (default: main)",
        )
    if isinstance(err, RepositoryNotFoundError):
        return _not_found(repo_id, action)
    if isinstance(err, DisabledRepoError):
        return UserError(f"{repo_id} has been disabled by its owner", hint=f"see {page}")
    if isinstance(err, LocalTokenNotFoundError):
        return UserError(f"{action} needs a hub token and none is set", hint=LOGIN_HINT)
    if isinstance(err, OfflineModeIsEnabled) or (
        isinstance(err, LocalEntryNotFoundError)
        and (constants.HF_HUB_OFFLINE or isinstance(err.__cause__, OfflineModeIsEnabled))
    ):
        return UserError(
            f"HF_HUB_OFFLINE is set and {action} needs the model hub",
            hint="unset HF_HUB_OFFLINE on a machine that reaches the hub",
        )
    if isinstance(err, LocalEntryNotFoundError):
        # Online, no usable answer and no local copy to fall back to: say why the hub did not answer.
        cause = err.__cause__
        if isinstance(cause, HfHubHTTPError) and cause.response is not None:
            return _http_error(cause, repo_id, action)
        return _unreachable(cause or err, constants.ENDPOINT)
    if isinstance(err, HfHubHTTPError):
        return _http_error(err, repo_id, action)
    if isinstance(err, (requests.ConnectionError, requests.Timeout)):
        return _unreachable(err, constants.ENDPOINT)
    return None


def _not_found(repo_id: str, action: str) -> UserError:
    from huggingface_hub import get_token

    # The hub answers 401/404 alike for a missing repository and a private one the token cannot see.
    token_note = "" if get_token() else "; no hub token is set"
    if action == "push":
        return UserError(
            f"{repo_id} not found, or your token may not write to it{token_note}",
            hint=f"check the ORG part of the id and that the token has write access ({LOGIN_HINT})",
        )
    guess = did_you_mean(repo_id, list(known_hub_ids().values()))
    return UserError(
        f"repository {repo_id} not found (or private){token_note}",
        hint=(f"did you mean {guess}? " if guess else "")
        + f"`ernie-ops models` lists the ERNIE 4.5 repositories; for a private one {LOGIN_HINT}",
    )


def _unreachable(err: BaseException, endpoint: str) -> UserError:
    import requests

    if isinstance(err, requests.exceptions.ProxyError):
        reason = "proxy error"
    elif isinstance(err, requests.exceptions.SSLError):
        reason = "TLS error"
    elif isinstance(err, requests.Timeout):
        reason = "timed out"
    else:
        reason = "connection failed"
    return UserError(
        f"cannot reach the model hub at {endpoint} ({reason})",
        hint="check the network or HTTPS_PROXY (HF_ENDPOINT names a mirror); "
        "HF_HUB_OFFLINE=1 uses what is already on this machine",
    )


def _http_error(err: Any, repo_id: str, action: str) -> UserError:
    status = err.response.status_code if err.response is not None else None
    server = redact((err.server_message or "").strip().splitlines()[0]) if err.server_message else ""
    detail = f": {server}" if server else ""
    if status == 401:
        return UserError(
            f"the hub rejected your token (401){detail}", hint=f"it may be expired; {LOGIN_HINT}"
        )
    if status == 403:
        what = f"write to {repo_id}" if action == "push" else f"read {repo_id}"
        return UserError(
            f"your token may not {what} (403){detail}",
            hint="create a token with the needed permission in your hub settings, then " + LOGIN_HINT,
        )
    if status == 429:
        return UserError("the hub is rate-limiting this machine (429)", hint="wait a few minutes and retry")
    if status is not None and status >= 500:
        return UserError(f"the hub failed to answer ({status}){detail}", hint="retry later")
    return UserError(f"the hub refused the {action} ({status}){detail}")


@contextlib.contextmanager
def hub_errors(repo_id: str, *, revision: str | None = None, action: str = "pull") -> Iterator[None]:
    """Turn the hub library's exceptions into UserErrors (printed as one line, exit 2)."""
    try:
        yield
    except UserError:
        raise
    except Exception as err:
        mapped = map_hub_error(err, repo_id, revision=revision, action=action)
        if mapped is None:
            raise  # a bug, not a user's mistake: keep the traceback
        raise mapped from None


# --- pull ---------------------------------------------------------------------------------------------


@dataclass
class PullResult:
    path: Path  # the directory that holds the model files
    local_dir: Path  # the directory the user asked for (a recipe's model_name_or_path)
    source: str  # "hub", "local-dir" (offline, already there) or "cache" (offline, linked)
    notes: list[str] = field(default_factory=list)


def pull(
    repo_id: str,
    *,
    revision: str | None = None,
    local_dir: Path | None = None,
    include: list[str] | None = None,
) -> PullResult:
    """Download a snapshot into `local_dir` (default: the repo id as a relative path)."""
    from huggingface_hub import constants, snapshot_download

    validate_repo_id(repo_id)
    target = local_dir if local_dir is not None else Path(repo_id)
    if target.exists() and not target.is_dir():
        raise UserError(f"{target} exists and is not a directory", hint="give another --local-dir")
    if constants.HF_HUB_OFFLINE:
        return _pull_offline(repo_id, revision=revision, target=target)
    with hub_errors(repo_id, revision=revision):
        path = snapshot_download(
            repo_id,
            revision=revision,
            local_dir=target,
            allow_patterns=include,
            library_name=LIBRARY_NAME,
            library_version=__version__,
        )
    # Without an answer from the hub, snapshot_download returns a non-empty local_dir as it is (with a
    # warning); unfinished files then mean the model is not all there.
    return PullResult(Path(path), target, "hub", _unfinished_note(target))


def _pull_offline(repo_id: str, *, revision: str | None, target: Path) -> PullResult:
    """HF_HUB_OFFLINE: the local directory answers first, then the hub cache; never the network."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    if _has_model_files(target):
        notes = ["HF_HUB_OFFLINE is set: using the files already in the directory, not checked with the hub"]
        return PullResult(target.resolve(), target, "local-dir", notes + _unfinished_note(target))
    try:
        snapshot = Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except LocalEntryNotFoundError:
        raise UserError(
            f"HF_HUB_OFFLINE is set and {repo_id}"
            + (f" at revision {revision}" if revision else "")
            + f" is not on this machine (neither in {target}/ nor in the hub cache {constants.HF_HUB_CACHE})",
            hint=f"pull it where the hub is reachable (HF_HUB_OFFLINE unset), or copy the model to {target}",
        ) from None
    notes = [f"HF_HUB_OFFLINE is set: {repo_id} comes from the hub cache ({snapshot})"]
    if target.exists() and any(target.iterdir()):
        # Only resume state of an interrupted download is there: keep it, point at the cache instead.
        notes.append(f"{target} holds an unfinished download; use {snapshot} as model_name_or_path")
        return PullResult(snapshot, target, "cache", notes)
    # A link, not a copy: the weights may be hundreds of GB, and the cache already holds them.
    if target.is_symlink() and not target.exists():
        target.unlink()  # a link left behind by an earlier offline pull whose cache entry is gone
    elif target.exists():
        target.rmdir()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(snapshot, target_is_directory=True)
    notes.append(f"linked {target} -> {snapshot}")
    return PullResult(snapshot, target, "cache", notes)


def _has_model_files(directory: Path) -> bool:
    """Anything besides the download metadata (an interrupted first download leaves only that)."""
    if not directory.is_dir():
        return False
    return any(p.name != LOCAL_DIR_META.parts[0] for p in directory.iterdir())


def _unfinished_note(directory: Path) -> list[str]:
    meta = directory / LOCAL_DIR_META / "download"
    unfinished = list(meta.rglob("*.incomplete")) if meta.is_dir() else []
    if not unfinished:
        return []
    return [
        f"{len(unfinished)} file(s) in {directory} are unfinished downloads: run the same pull "
        "where the hub is reachable to resume them"
    ]


def next_steps(repo_id: str, local_dir: Path) -> list[str]:
    """What to run after a pull: the recipes for this model, or how to point a recipe at it."""
    from ernie_ops.catalog import find_model
    from ernie_ops.recipe.library import LIBRARY

    if is_pytorch_repo(repo_id):
        return [
            "next: serve it with FastDeploy >= 2.2 or transformers; to fine-tune, pull the -Paddle repository"
        ]
    try:
        name = find_model(repo_id).name
    except UserError:
        name = None
    if name is None or not any(e.model == name for e in LIBRARY):
        return [f"next: ernie-ops check YOUR_RECIPE.yaml model_name_or_path={local_dir}"]
    # The library's recipes already name baidu/<model>-Paddle; any other directory must be given.
    model_path = "" if local_dir.as_posix() == f"baidu/{name}-Paddle" else f" --model-path {local_dir}"
    return [
        f"next: ernie-ops recipes --model {name}        # the recipes for this model",
        f"      ernie-ops recipes new --model {name} --method sft-lora --train TRAIN.jsonl "
        f"--eval EVAL.jsonl{model_path} -o my.yaml",
    ]


# --- push: the run and the model card -------------------------------------------------------------------


@dataclass
class RunInfo:
    run_dir: Path
    record: dict[str, Any]
    recipe_text: str | None  # None when recipe.yaml is missing

    @property
    def recipe(self) -> dict[str, Any]:
        """The recipe as data (for max_seq_len and the base model); {} when absent or unreadable."""
        import yaml

        if not self.recipe_text:
            return {}
        try:
            data = yaml.safe_load(self.recipe_text)
        except yaml.YAMLError:
            return {}
        return data if isinstance(data, dict) else {}


def find_run(checkpoint: Path, run_dir: Path | None = None) -> RunInfo | None:
    """The run that produced `checkpoint`: --run, else the parent of `<run_dir>/export`."""
    if run_dir is None:
        parent = checkpoint.resolve().parent
        if checkpoint.resolve().name != EXPORT_DIR or not (parent / RUN_FILE).is_file():
            return None
        run_dir = parent
    record = RUN_RECORD.load(run_dir, dict)  # as data: the model card shows the record as written
    recipe = run_dir / RECIPE_FILE
    return RunInfo(run_dir, record, recipe.read_text(encoding="utf-8") if recipe.is_file() else None)


def base_hub_id(model_path: str) -> str | None:
    """The catalog hub id a recorded `model_name_or_path` stands for (relative path, cache path, id)."""
    parts = Path(model_path).parts
    for part in parts:  # a hub cache snapshot: .../models--baidu--ERNIE-4.5-0.3B-Paddle/snapshots/<sha>
        if part.startswith("models--"):
            return known_hub_ids().get(part.removeprefix("models--").replace("--", "/").lower())
    return known_hub_ids().get("/".join(parts[-2:]).lower()) if len(parts) >= 2 else None


def _method(record: dict[str, Any]) -> str:
    stage = str(record.get("stage") or "?")
    tuning = str(record.get("fine_tuning") or "?")
    return f"{stage} ({'LoRA' if tuning.lower() == 'lora' else 'full fine-tuning'})"


def build_card(checkpoint: Path, repo_id: str, run: RunInfo | None) -> str:
    """The model card (README.md): hub metadata, lineage, how to serve, the recipe and the record."""
    from ernie_ops.catalog import find_model

    config = _read_config(checkpoint)
    record = run.record if run else {}
    recipe = run.recipe if run else {}
    base_path = str(record.get("model_name_or_path") or recipe.get("model_name_or_path") or "")
    base_id = base_hub_id(base_path) if base_path else None
    try:
        spec = find_model(base_id) if base_id else None
    except UserError:
        spec = None
    adapter = (checkpoint / "lora_config.json").is_file()
    sections = [
        _front_matter(config, record, base_id, spec is not None and spec.is_vl, adapter),
        _card_summary(checkpoint, repo_id, config, record, base_id or base_path, adapter),
        _card_serve(repo_id, spec.name if spec else None, recipe.get("max_seq_len"), adapter),
    ]
    if run is None:
        sections.append("## Training\n\nNo run record was given (`ernie-ops push --run RUN_DIR`).\n")
    else:
        # a card is public: no host or user names, no absolute paths (lineage stays: relative
        # paths, file names, hashes, versions); the base model was read from the record as it was
        from ernie_ops.privacy.redact import Redactor

        redactor = Redactor(run.run_dir.resolve().parent)
        record = redactor.value(record)
        shown = RunInfo(run.run_dir, record, redactor.text(run.recipe_text) if run.recipe_text else None)
        sections += [_card_training(shown), _card_data(record), _card_versions(record), _card_recipe(shown)]
        sections.append(
            "## Run record (`run.json`, redacted: host and user names and absolute paths removed)\n\n"
            "```json\n" + json.dumps(record, indent=2, sort_keys=False) + "\n```\n"
        )
    return redact("\n".join(sections))


def _read_config(checkpoint: Path) -> dict[str, Any]:
    try:
        data = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"{checkpoint}/config.json cannot be read ({err})") from None
    return data if isinstance(data, dict) else {}


def _front_matter(
    config: dict[str, Any], record: dict[str, Any], base_id: str | None, vl: bool, adapter: bool
) -> str:
    import yaml

    tags = ["ERNIE4.5", "ernie-ops", "erniekit"]
    if record.get("stage"):
        tags.append(str(record["stage"]).lower())
    if str(record.get("fine_tuning", "")).lower() == "lora":
        tags.append("lora")
    meta: dict[str, Any] = {}
    if "dtype" in config:  # FastDeploy's rule: "dtype" is a Paddle checkpoint, "torch_dtype" a torch one
        meta["library_name"] = "PaddlePaddle"
    if base_id:
        meta["base_model"] = base_id
        meta["base_model_relation"] = "adapter" if adapter else "finetune"
    meta["pipeline_tag"] = "image-text-to-text" if vl else "text-generation"
    meta["tags"] = tags
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def _card_summary(
    checkpoint: Path, repo_id: str, config: dict[str, Any], record: dict[str, Any], base: str, adapter: bool
) -> str:
    rows = [
        ("base model", base or "unknown (no run record)"),
        ("method", _method(record) if record else "unknown (no run record)"),
        ("architecture", ", ".join(config.get("architectures") or []) or "?"),
        ("dtype", str(config.get("dtype") or config.get("torch_dtype") or "?")),
        ("checkpoint", "LoRA adapter (not merged)" if adapter else "full weights"),
    ]
    if record.get("name"):
        rows.append(("run", str(record["name"])))
    table = "| | |\n|---|---|\n" + "".join(f"| {k} | {_cell(v)} |\n" for k, v in rows)
    title = repo_id.split("/")[-1]
    return f"# {title}\n\nERNIE 4.5 fine-tuned with ERNIEKit; card written by ernie-ops.\n\n{table}"


def _card_serve(repo_id: str, model: str | None, max_seq_len: Any, adapter: bool) -> str:
    local = repo_id  # `ernie-ops pull` puts it at the repo id as a relative path
    if adapter:
        return (
            "## Serve\n\nThis is a LoRA adapter: FastDeploy serves merged weights only. Merge it into the "
            "base model first (`erniekit export RECIPE.yaml lora=True`), then serve the merged directory.\n"
        )
    flags = [f"--model {local}", "--port 8180", "--max-num-seqs 32"]
    if isinstance(max_seq_len, int) and max_seq_len > 0:
        flags.insert(2, f"--max-model-len {max_seq_len}")  # the context it was trained for
    extra = SERVE_FLAGS.get(model or "")
    if extra:
        flags.append(extra)
    request = json.dumps({"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 64})
    return (
        "## Serve\n\nWith FastDeploy (GPU; `scripts/setup_gpu.sh` of ernie-ops installs it):\n\n```bash\n"
        f"ernie-ops pull {repo_id}   # or: hf download {repo_id} --local-dir {local}\n"
        "python -m fastdeploy.entrypoints.openai.api_server " + " ".join(flags) + "\n"
        "curl -s http://localhost:8180/v1/chat/completions -H 'Content-Type: application/json' \\\n"
        f"  -d {shlex.quote(request)}\n```\n"
    )


def _card_training(run: RunInfo) -> str:
    record = run.record
    rows = [
        ("status", record.get("status")),
        ("steps", f"{_cell(record.get('last_step'))} of {_cell(record.get('max_steps'))}"),
        ("seed", record.get("seed")),
        ("device", _device(record)),
        ("started / ended", f"{_cell(record.get('started_at'))} / {_cell(record.get('ended_at'))}"),
        ("recipe", record.get("recipe_source")),
        ("overrides", " ".join(record.get("overrides") or []) or "none"),
        ("ernie-ops commit", record.get("git_commit")),
    ]
    if record.get("resumed_from"):
        rows.append(("resumed from", ", ".join(record["resumed_from"])))
    table = "| | |\n|---|---|\n" + "".join(f"| {k} | {_cell(v)} |\n" for k, v in rows)
    command = shlex.join(str(c) for c in record.get("command") or [])
    return f"## Training\n\n{table}\nCommand:\n\n```bash\n{command or '(not recorded)'}\n```\n"


def _card_data(record: dict[str, Any]) -> str:
    files = [d for d in record.get("data") or [] if isinstance(d, dict)]
    if not files:
        return "## Data\n\nNo data files were recorded.\n"
    rows = "".join(
        f"| {_cell(Path(str(d.get('path', '?'))).name)} | `{d.get('sha256', '?')}` | {d.get('bytes', '?')} "
        f"| {d.get('records') if d.get('records') is not None else '?'} |\n"
        for d in files
    )
    return "## Data (fingerprints)\n\n| file | sha256 | bytes | records |\n|---|---|---|---|\n" + rows


def _card_versions(record: dict[str, Any]) -> str:
    versions = {**(record.get("versions") or {}), "ernie-ops (push)": __version__}
    rows = "".join(f"| {_cell(k)} | {_cell(v)} |\n" for k, v in versions.items())
    return "## Versions\n\n| package | version |\n|---|---|\n" + rows


def _card_recipe(run: RunInfo) -> str:
    if run.recipe_text is None:
        return f"## Recipe\n\n`{RECIPE_FILE}` was not found in the run directory.\n"
    return f"## Recipe (`{RECIPE_FILE}`, as passed to ERNIEKit)\n\n```yaml\n{run.recipe_text.rstrip()}\n```\n"


def _device(record: dict[str, Any]) -> str:
    gpus = record.get("gpus") or []
    where = f"gpu {','.join(str(g) for g in gpus)}" if gpus else str(record.get("device") or "-")
    return f"{where}, {record.get('nnodes') or 1} node(s)"


def _cell(value: Any) -> str:
    """A value safe inside a markdown table cell ("-" for what was not recorded)."""
    return "-" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


# --- push: the upload ---------------------------------------------------------------------------------


@dataclass
class UploadPlan:
    checkpoint: Path
    repo_id: str
    files: list[tuple[str, Path]]  # (path in the repository, file on disk); README.md is the card
    card: str
    notes: list[str] = field(default_factory=list)


def plan_push(checkpoint: Path, repo_id: str, run_dir: Path | None = None) -> UploadPlan:
    """Everything `push` would upload, decided without the network (what --dry-run shows)."""
    validate_repo_id(repo_id)
    _check_checkpoint(checkpoint)
    run = find_run(checkpoint, run_dir)
    notes = []
    if run is None:
        notes.append(
            f"no run record for {checkpoint} (it is not <run>/{EXPORT_DIR}; give --run RUN_DIR): "
            "the card will not say how it was trained"
        )
    files = _checkpoint_files(checkpoint)
    if any(rel == "README.md" for rel, _ in files):
        notes.append(f"{checkpoint}/README.md is not uploaded: the generated model card replaces it")
        files = [(rel, p) for rel, p in files if rel != "README.md"]
    state = [rel for rel, _ in files if Path(rel).name in TRAINING_STATE]
    if state:
        notes.append(
            f"uploading training state nobody needs to serve ({', '.join(state)}); push export/ instead"
        )
    if (checkpoint / "lora_config.json").is_file():
        notes.append(
            "this is a LoRA adapter: FastDeploy cannot serve it unmerged (`ernie-ops export` merges)"
        )
    card = build_card(checkpoint, repo_id, run)
    return UploadPlan(checkpoint, repo_id, [("README.md", Path("README.md")), *files], card, notes)


def _check_checkpoint(checkpoint: Path) -> None:
    if not checkpoint.is_dir():
        raise UserError(
            f"{checkpoint} is not a directory", hint="give a checkpoint directory, e.g. runs/<run>/export"
        )
    if not (checkpoint / "config.json").is_file():
        lora = (checkpoint / "lora_config.json").is_file()
        raise UserError(
            f"{checkpoint} has no config.json: it is not a loadable checkpoint",
            hint="merge the LoRA adapter first (`ernie-ops export`) and push the export/ directory"
            if lora
            else "push the directory ERNIEKit or `ernie-ops export` wrote (config.json, weights, tokenizer)",
        )


def _checkpoint_files(checkpoint: Path) -> list[tuple[str, Path]]:
    """The files to upload, minus what the hub library never uploads (.git/, .cache/huggingface/)."""
    files = []
    for root, dirs, names in os.walk(checkpoint, followlinks=True):
        dirs.sort()
        for name in sorted(names):
            path = Path(root) / name
            rel = path.relative_to(checkpoint)
            if ".git" in rel.parts or rel.parts[:2] == LOCAL_DIR_META.parts:
                continue
            files.append((rel.as_posix(), path))
    return files


def stage(plan: UploadPlan, directory: Path) -> None:
    """The upload as a directory: links to the checkpoint's files plus the card, so one upload_folder
    makes one commit and the user's checkpoint is never written to."""
    for rel, source in plan.files:
        dest = directory / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if rel == "README.md":
            dest.write_text(plan.card, encoding="utf-8")
        else:
            dest.symlink_to(source.resolve())


def push(plan: UploadPlan, *, private: bool) -> str:
    """Create the repository if needed and upload the plan in one commit; returns the commit URL."""
    import tempfile

    from huggingface_hub import HfApi, constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise UserError(
            "HF_HUB_OFFLINE is set and push needs the model hub", hint="unset it, or use --dry-run"
        )
    if not get_token():
        raise UserError("push needs a hub token with write access and none is set", hint=LOGIN_HINT)
    api = HfApi(library_name=LIBRARY_NAME, library_version=__version__)
    with (
        hub_errors(plan.repo_id, action="push"),
        tempfile.TemporaryDirectory(prefix="ernie-ops-push-") as tmp,
    ):
        stage(plan, Path(tmp))
        api.create_repo(plan.repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(
            folder_path=tmp,
            repo_id=plan.repo_id,
            repo_type="model",
            commit_message=f"Upload {plan.checkpoint.name} with ernie-ops {__version__}",
        )
    return str(commit)
