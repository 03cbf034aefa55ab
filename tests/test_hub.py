"""`ernie-ops pull` / `push` (ernie_ops/hub.py, ernie_ops/cli/hub.py).

What cannot run here, and why: no model hub is reachable from this machine, and huggingface_hub has
no file-based stand-in for a hub endpoint (HF_ENDPOINT must be an http(s) URL; the library's own
tests run against a live staging hub). So a successful download from the network and a successful
upload are not tested. What is tested, for real:
- every failure a user meets offline, through the real CLI in a subprocess (exit 2, one clear
  message, no traceback, the HF_TOKEN never in the output);
- pulling with HF_HUB_OFFLINE=1 from a hub cache laid out the way huggingface_hub writes it
  (models--org--name/{blobs,snapshots/<commit>,refs/main}): snapshot_download itself returns it;
- an endpoint nobody listens on (the real "hub unreachable" path of the library);
- a small local HTTP server that answers every request with one of the hub's error responses
  (status + X-Error-Code / X-Error-Message headers): the library builds its own exceptions from
  them and the CLI maps them. It stands in for the hub only to produce errors, never content;
- the mapping of the library's real exception classes (built with its own hf_raise_for_status);
- the model card and the upload plan from a hand-made run directory, --dry-run without any request,
  the staging of the upload (the library reads the staged files through their links).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from polling import free_port

from ernie_ops import hub
from ernie_ops.errors import UserError
from ernie_ops.train.record import DataFile, RunRecord

TOKEN = "hf_ErnieOpsTestTokenDoNotPrint1234"
REPO = "baidu/ERNIE-4.5-0.3B-Paddle"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
CONFIG = {"architectures": ["Ernie4_5_ForCausalLM"], "dtype": "bfloat16", "hidden_size": 1024}
RECIPE = """\
### data
train_dataset_path: data/train.jsonl
max_seq_len: 8192
### model
model_name_or_path: baidu/ERNIE-4.5-0.3B-Paddle
fine_tuning: LoRA
### finetuning
stage: SFT
max_steps: 20
"""


@pytest.fixture
def hub_env(monkeypatch, tmp_path) -> Path:
    """A clean hub environment: an empty HF_HOME, no token, not offline, and an endpoint nobody
    listens on, so that no test can reach a real hub by accident."""
    for name in (
        "HF_TOKEN",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    return tmp_path / "hf-home"


def _no_leak(result) -> None:
    assert TOKEN not in result.stdout and TOKEN not in result.stderr
    assert "Traceback" not in result.stderr


# --- a stand-in that answers every request with one hub error --------------------------------------------


@dataclass
class ErrorHub:
    url: str
    status: int = 404
    headers: dict[str, str] = field(default_factory=dict)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # method, path, auth


@pytest.fixture
def error_hub(monkeypatch, hub_env) -> Iterator[ErrorHub]:
    state = ErrorHub(url="")

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, body: bool = True) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            state.requests.append((self.command, self.path, self.headers.get("Authorization")))
            payload = json.dumps({"error": state.headers.get("X-Error-Message", "error")}).encode()
            self.send_response(state.status)
            for key, value in {**state.headers, "Content-Type": "application/json"}.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if body:
                self.wfile.write(payload)

        def do_GET(self) -> None:
            self._answer()

        def do_POST(self) -> None:
            self._answer()

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def log_message(self, *args) -> None:  # keep pytest's output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", state.url)
    yield state
    server.shutdown()
    server.server_close()


# --- a hub cache and a run directory, made by hand -----------------------------------------------------


def _populate_cache(hf_home: Path, repo_id: str = REPO) -> Path:
    """The layout huggingface_hub writes: content in blobs/, snapshots/<commit>/ links into them,
    refs/main naming the commit."""
    repo_dir = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo_dir / "blobs").mkdir()
    for name, content in {"config.json": json.dumps(CONFIG), "tokenizer.model": "sp"}.items():
        blob = repo_dir / "blobs" / hashlib.sha256(content.encode()).hexdigest()
        blob.write_text(content)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", blob.name))
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)
    return snapshot


def _checkpoint(directory: Path) -> Path:
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(CONFIG))
    (directory / "model.safetensors").write_bytes(b"\0weights" * 100)
    (directory / "tokenizer.model").write_bytes(b"sentencepiece")
    (directory / "README.md").write_text("# the base model's card\n")
    return directory


@pytest.fixture
def run_dir(tmp_path) -> Path:
    run = tmp_path / "runs" / "sft-20250101-120000"
    data = tmp_path / "train.jsonl"
    data.write_text('{"src": ["hi"], "tgt": ["hello"]}\n')
    record = RunRecord(
        name="sft-20250101-120000",
        run_dir=str(run),
        recipe_source="recipes/ERNIE-4.5-0.3B/sft_lora_8k.yaml",
        overrides=["max_steps=20"],
        status="succeeded",
        stage="SFT",
        fine_tuning="LoRA",
        model_name_or_path=REPO,
        seed=42,
        max_steps=20,
        last_step=20,
        versions={"erniekit": "1.0.1", "paddle": "3.3.1", "python": "3.11.9"},
        git_commit="deadbeef",
        data=[DataFile(str(data), hashlib.sha256(data.read_bytes()).hexdigest(), data.stat().st_size, 1)],
        command=["python", "-m", "erniekit.launcher", "train", str(run / "recipe.yaml")],
    )
    record.save()
    (run / "recipe.yaml").write_text(RECIPE)
    _checkpoint(run / "export")
    return run


# --- pull --------------------------------------------------------------------------------------------------


def test_offline_pull_without_the_model_says_so(cli, hub_env, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    result = cli("pull", REPO, cwd=tmp_path, timeout=60)
    assert result.returncode == 2, result.stderr
    assert (
        "error: HF_HUB_OFFLINE is set and baidu/ERNIE-4.5-0.3B-Paddle is not on this machine" in result.stderr
    )
    assert str(hub_env / "hub") in result.stderr  # where it looked
    assert "hint:" in result.stderr
    assert not (tmp_path / "baidu").exists()
    _no_leak(result)


def test_snapshot_download_answers_offline_from_a_cache_laid_out_by_hand(hub_env, tmp_path):
    snapshot = _populate_cache(hub_env)
    code = (
        "from huggingface_hub import snapshot_download; "
        f"print(snapshot_download({REPO!r})); print(snapshot_download({REPO!r}, revision={COMMIT!r}))"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(snapshot), str(snapshot)]


def test_offline_pull_links_the_cached_snapshot_where_recipes_look(cli, hub_env, tmp_path, monkeypatch):
    snapshot = _populate_cache(hub_env)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = cli("pull", REPO, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(snapshot)
    local = tmp_path / REPO
    assert local.is_symlink() and local.resolve() == snapshot.resolve()
    assert json.loads((local / "config.json").read_text()) == CONFIG  # readable through the blob links
    assert "comes from the hub cache" in result.stderr
    # the next step uses the library's recipes, which already name this directory
    assert "ernie-ops recipes new --model ERNIE-4.5-0.3B" in result.stderr
    assert "--model-path" not in result.stderr

    again = cli("pull", REPO, cwd=tmp_path, timeout=60)  # now the local directory answers
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == str(local.resolve())
    assert "already in the directory" in again.stderr


def test_offline_pull_reports_an_unfinished_download(cli, hub_env, tmp_path, monkeypatch):
    local = tmp_path / "models" / "small"
    (local / ".cache" / "huggingface" / "download").mkdir(parents=True)
    (local / ".cache" / "huggingface" / "download" / "abc.etag.incomplete").write_bytes(b"half")
    (local / "config.json").write_text(json.dumps(CONFIG))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = cli("pull", REPO, "--local-dir", str(local), timeout=60)
    assert result.returncode == 0, result.stderr
    assert "1 file(s)" in result.stderr and "unfinished" in result.stderr
    assert f"--model-path {local}" in result.stderr  # not the recipes' default directory


def test_unreachable_hub_is_one_clear_error(cli, hub_env, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    result = cli("pull", REPO, cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert "error: cannot reach the model hub at http://127.0.0.1:" in result.stderr
    assert "HF_HUB_OFFLINE=1" in result.stderr  # the way out
    _no_leak(result)


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (404, {"X-Error-Code": "RepoNotFound"}, "repository baidu/ERNIE-4.5-0.3B-Paddle not found"),
        (404, {"X-Error-Code": "RevisionNotFound"}, "revision 'v9' not found in baidu/ERNIE-4.5-0.3B-Paddle"),
        (403, {"X-Error-Code": "GatedRepo"}, "is gated and your account has not been granted access"),
        (401, {"X-Error-Message": "Invalid credentials in Authorization header"}, "rejected your token"),
        (503, {}, "the hub failed to answer (503)"),
    ],
)
def test_hub_errors_become_one_line_user_errors(
    cli, error_hub, tmp_path, monkeypatch, status, headers, expected
):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    error_hub.status, error_hub.headers = status, headers
    result = cli("pull", REPO, "--revision", "v9", cwd=tmp_path, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    error_line = next(line for line in result.stderr.splitlines() if line.startswith("error:"))
    assert expected in error_line
    _no_leak(result)
    # the token was used (sent to the hub) though never shown
    assert error_hub.requests and all(auth == f"Bearer {TOKEN}" for _, _, auth in error_hub.requests)


def test_a_server_message_echoing_the_token_is_scrubbed(cli, error_hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    error_hub.status, error_hub.headers = 500, {"X-Error-Message": f"bad token {TOKEN} in request"}
    result = cli("pull", REPO, cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert "bad token *** in request" in result.stderr
    _no_leak(result)


def test_unknown_and_pytorch_repositories_are_warned_about(cli, hub_env, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    unknown = cli("pull", "someone/llama-7b", cwd=tmp_path, timeout=60)
    assert "someone/llama-7b is not a known ERNIE 4.5 repository" in unknown.stderr
    pt = cli("pull", "baidu/ERNIE-4.5-21B-A3B-PT", cwd=tmp_path, timeout=60)
    assert "PyTorch (-PT) checkpoint: ERNIEKit cannot train it" in pt.stderr
    assert "pull baidu/ERNIE-4.5-21B-A3B-Paddle to fine-tune" in pt.stderr
    assert unknown.returncode == pt.returncode == 2  # warnings, then the offline error, not a crash


def test_repo_warnings():
    assert hub.repo_warnings(REPO) == []
    assert hub.repo_warnings("baidu/ERNIE-4.5-VL-424B-A47B-Paddle") == []
    assert "spelt baidu/ERNIE-4.5-0.3B-Paddle" in hub.repo_warnings("BAIDU/ernie-4.5-0.3b-paddle")[0]
    (typo,) = hub.repo_warnings("baidu/ERNIE-4.5-0.3B-Padle")
    assert "did you mean baidu/ERNIE-4.5-0.3B-Paddle" in typo


def test_invalid_repo_id_is_a_user_error(cli, hub_env, tmp_path):
    result = cli("pull", "../../etc", cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert "is not a valid hub repository id" in result.stderr
    assert "Traceback" not in result.stderr


# --- error mapping of the library's own exception classes -------------------------------------------------


def _http_error(status: int, **headers: str) -> Exception:
    """The exception huggingface_hub raises for this answer, built by its own hf_raise_for_status."""
    import requests
    from huggingface_hub.utils import hf_raise_for_status
    from requests.structures import CaseInsensitiveDict

    url = "https://hub.invalid/api/models/baidu/ERNIE-4.5-0.3B-Paddle"
    response = requests.Response()
    response.status_code, response.url, response._content = status, url, b"{}"
    response.headers = CaseInsensitiveDict({k.replace("_", "-"): v for k, v in headers.items()})
    response.request = requests.Request("GET", url).prepare()
    try:
        hf_raise_for_status(response)
    except Exception as err:
        return err
    raise AssertionError(f"no exception for {status}")


def _errors():
    import requests
    from huggingface_hub.errors import LocalEntryNotFoundError, LocalTokenNotFoundError, OfflineModeIsEnabled

    unreachable = LocalEntryNotFoundError("no snapshot")
    unreachable.__cause__ = requests.ConnectionError("connection refused")
    return [
        (_http_error(403, X_Error_Code="GatedRepo"), "pull", "is gated"),
        (_http_error(404, X_Error_Code="RevisionNotFound"), "pull", "revision 'v2' not found"),
        (_http_error(404, X_Error_Code="RepoNotFound"), "pull", "not found (or private)"),
        (_http_error(401), "push", "not found, or your token may not write to it"),
        (
            _http_error(403, X_Error_Message="Access to this resource is disabled."),
            "pull",
            "disabled by its owner",
        ),
        (_http_error(403, X_Error_Message="no write access"), "push", "may not write to baidu/"),
        (_http_error(429), "pull", "rate-limiting"),
        (OfflineModeIsEnabled("offline"), "push", "HF_HUB_OFFLINE is set and push needs the model hub"),
        (unreachable, "pull", "cannot reach the model hub"),
        (requests.exceptions.ProxyError("proxy"), "pull", "(proxy error)"),
        (requests.Timeout("slow"), "pull", "(timed out)"),
        (LocalTokenNotFoundError("no token"), "push", "push needs a hub token"),
    ]


@pytest.mark.parametrize(("err", "action", "expected"), _errors())
def test_map_hub_error(err, action, expected):
    mapped = hub.map_hub_error(err, REPO, revision="v2", action=action)
    assert isinstance(mapped, UserError)
    assert expected in mapped.message
    assert "\n" not in mapped.message and mapped.hint


def test_errors_that_are_not_the_hubs_are_left_alone():
    assert hub.map_hub_error(ValueError("a bug"), REPO) is None
    with pytest.raises(KeyError), hub.hub_errors(REPO):
        raise KeyError("a bug keeps its traceback")


# --- push: the model card and the plan ------------------------------------------------------------------


def test_model_card_carries_the_lineage_and_the_serve_command(run_dir):
    from huggingface_hub import ModelCard

    plan = hub.plan_push(run_dir / "export", "my-org/ernie-sft")
    card = plan.card
    assert RECIPE.strip() in card  # the resolved recipe, verbatim
    record = json.loads((run_dir / "run.json").read_text())
    assert f'"name": "{record["name"]}"' in card and record["run_dir"] not in card  # redacted record
    assert record["data"][0]["sha256"] in card and "| train.jsonl |" in card  # data fingerprints
    assert "| erniekit | 1.0.1 |" in card and "| paddle | 3.3.1 |" in card  # versions
    assert "| method | SFT (LoRA) |" in card and "| base model | baidu/ERNIE-4.5-0.3B-Paddle |" in card
    assert "python -m erniekit.launcher train" in card  # the training command
    assert "ernie-ops pull my-org/ernie-sft " in card
    assert (
        "python -m fastdeploy.entrypoints.openai.api_server --model my-org/ernie-sft --port 8180 "
        "--max-model-len 8192 --max-num-seqs 32\n" in card
    )
    # the hub's own parser reads the metadata block
    meta = ModelCard(card).data.to_dict()
    assert meta["base_model"] == REPO and meta["library_name"] == "PaddlePaddle"
    assert meta["base_model_relation"] == "finetune" and "lora" in meta["tags"]
    assert not any("no run record" in note for note in plan.notes)


def test_model_card_of_a_moe_model_quantizes_and_run_dir_can_be_given(run_dir, tmp_path):
    record = json.loads((run_dir / "run.json").read_text())
    record["model_name_or_path"] = "/models/baidu/ERNIE-4.5-21B-A3B-Paddle"
    (run_dir / "run.json").write_text(json.dumps(record))
    elsewhere = _checkpoint(tmp_path / "merged")
    plan = hub.plan_push(elsewhere, "my-org/moe", run_dir=run_dir)
    assert "--quantization wint4" in plan.card
    assert "base_model: baidu/ERNIE-4.5-21B-A3B-Paddle" in plan.card


def test_push_without_a_run_record_still_writes_a_card_and_says_so(tmp_path):
    plan = hub.plan_push(_checkpoint(tmp_path / "ckpt"), "my-org/x")
    assert any("no run record" in note for note in plan.notes)
    assert "No run record was given" in plan.card
    with pytest.raises(UserError, match="is not a run directory"):
        hub.plan_push(tmp_path / "ckpt", "my-org/x", run_dir=tmp_path)


def test_upload_plan_replaces_the_readme_and_skips_hub_metadata(run_dir):
    export = run_dir / "export"
    (export / ".cache" / "huggingface").mkdir(parents=True)
    (export / ".cache" / "huggingface" / "meta").write_text("x")
    (export / "sub").mkdir()
    (export / "sub" / "extra.json").write_text("{}")
    plan = hub.plan_push(export, "my-org/x")
    assert [rel for rel, _ in plan.files] == [
        "README.md",
        "config.json",
        "model.safetensors",
        "tokenizer.model",
        "sub/extra.json",
    ]
    assert any("README.md is not uploaded" in note for note in plan.notes)


def test_staged_upload_links_the_checkpoint_and_holds_the_card(run_dir, tmp_path):
    from huggingface_hub import CommitOperationAdd

    export = run_dir / "export"
    before = {p: p.read_bytes() for p in export.iterdir()}
    plan = hub.plan_push(export, "my-org/x")
    staged = tmp_path / "stage"
    staged.mkdir()
    hub.stage(plan, staged)
    assert (staged / "README.md").read_text() == plan.card
    for rel, source in plan.files[1:]:
        # what upload_folder will send: the library reads the staged file through its link
        operation = CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(staged / rel))
        assert operation.upload_info.sha256.hex() == hashlib.sha256(source.read_bytes()).hexdigest()
    assert {p: p.read_bytes() for p in export.iterdir()} == before  # the checkpoint is untouched


def test_push_dry_run_prints_card_and_files_without_a_request(cli, error_hub, run_dir, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    result = cli("push", str(run_dir / "export"), "my-org/ernie-sft", "--dry-run", timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("---\n") and "## Recipe" in result.stdout  # stdout is the card alone
    for name in ("README.md", "config.json", "model.safetensors", "tokenizer.model"):
        assert f"  {name}" in result.stderr
    assert "4 files" in result.stderr and "nothing was uploaded" in result.stderr
    assert error_hub.requests == []  # no network call at all
    _no_leak(result)

    card = run_dir / "card.md"
    to_file = cli("push", str(run_dir / "export"), "my-org/ernie-sft", "--dry-run", str(card), timeout=60)
    assert to_file.returncode == 0, to_file.stderr
    assert card.read_text() == result.stdout
    assert "would upload to my-org/ernie-sft" in to_file.stdout
    assert error_hub.requests == []


def test_push_refuses_a_directory_without_config_json(cli, hub_env, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    adapter = tmp_path / "output"
    adapter.mkdir()
    (adapter / "lora_config.json").write_text("{}")
    result = cli("push", str(adapter), "my-org/x", "--dry-run", timeout=60)
    assert result.returncode == 2
    assert "has no config.json" in result.stderr and "merge the LoRA adapter" in result.stderr
    _no_leak(result)
    missing = cli("push", str(tmp_path / "nope"), "my-org/x", timeout=60)
    assert missing.returncode == 2 and "is not a directory" in missing.stderr


def test_push_without_a_token_fails_before_the_network(cli, error_hub, run_dir):
    result = cli("push", str(run_dir / "export"), "my-org/x", timeout=60)
    assert result.returncode == 2
    assert "push needs a hub token" in result.stderr and "HF_TOKEN" in result.stderr
    assert error_hub.requests == []


def test_push_offline_is_refused(cli, hub_env, run_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    result = cli("push", str(run_dir / "export"), "my-org/x", timeout=60)
    assert result.returncode == 2
    assert "HF_HUB_OFFLINE is set and push needs the model hub" in result.stderr
    _no_leak(result)


def test_push_refused_by_the_hub_is_one_line_and_keeps_the_token_secret(cli, error_hub, run_dir, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    error_hub.status, error_hub.headers = 403, {"X-Error-Message": "You don't have the rights"}
    result = cli("push", str(run_dir / "export"), "my-org/x", "--private", timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "error: your token may not write to my-org/x (403)" in result.stderr
    assert error_hub.requests[0][:2] == ("POST", "/api/repos/create")
    assert error_hub.requests[0][2] == f"Bearer {TOKEN}"
    _no_leak(result)


def test_push_to_an_unreachable_hub(cli, hub_env, run_dir, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    result = cli("push", str(run_dir / "export"), "my-org/x", timeout=60)
    assert result.returncode == 2
    assert "cannot reach the model hub" in result.stderr
    _no_leak(result)


# --- start-up cost ---------------------------------------------------------------------------------------


def test_the_cli_module_does_not_import_huggingface_hub():
    code = "import sys, ernie_ops.cli.main; print('huggingface_hub' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"
