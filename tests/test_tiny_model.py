"""The tiny ERNIE 4.5 checkpoint looks like a real one to ERNIEKit, FastDeploy and the tokenizer."""

from __future__ import annotations

import hashlib
import json

import pytest

from ernie_ops.errors import UserError
from ernie_ops.tiny_model import CHAT_TEMPLATE, build_tiny_model

FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "special_tokens_map.json",
    "tokenizer.model",
    "tokenizer_config.json",
)


def _digests(path):
    return {f: hashlib.sha256((path / f).read_bytes()).hexdigest() for f in FILES}


def _weights(path):
    from safetensors.numpy import load_file

    return load_file(str(path / "model.safetensors"))


def test_files_of_a_paddle_checkpoint(tiny_dense):
    for name in FILES:
        assert (tiny_dense / name).is_file(), name
    config = json.loads((tiny_dense / "config.json").read_text())
    # FastDeploy reads a config with "dtype" (and no "torch_dtype") as a Paddle checkpoint
    assert config["dtype"] == "float32" and "torch_dtype" not in config
    assert config["architectures"] == ["Ernie4_5_ForCausalLM"]
    assert config["model_type"] == "ernie4_5"
    assert config["scale_qk_coeff"] == 1.0
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, 0)


def test_parameter_names_are_those_of_real_ernie_checkpoints(tiny_dense):
    names = set(_weights(tiny_dense))
    assert "ernie.embed_tokens.weight" in names
    assert "ernie.layers.0.self_attn.qkv_proj.weight" in names  # fused QKV as in ERNIEKit
    assert "ernie.layers.1.mlp.up_gate_proj.weight" in names  # fused up/gate
    assert "ernie.layers.1.mlp.down_proj.weight" in names
    assert "ernie.norm.weight" in names


def test_moe_has_experts_shared_experts_and_a_gate(tiny_moe):
    config = json.loads((tiny_moe / "config.json").read_text())
    assert config["architectures"] == ["Ernie4_5_MoeForCausalLM"]
    assert (config["moe_num_experts"], config["moe_k"]) == (4, 2)
    names = set(_weights(tiny_moe))
    assert "ernie.layers.0.mlp.up_gate_proj.weight" in names  # layer 0 dense, as in 21B-A3B
    assert {f"ernie.layers.1.mlp.experts.{i}.up_gate_proj.weight" for i in range(4)} <= names
    assert "ernie.layers.1.mlp.gate.weight" in names
    assert "ernie.layers.1.mlp.shared_experts.up_gate_proj.weight" in names


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_erniekit_loads_every_weight(kind, tiny_dense, tiny_moe):
    import paddle
    from ernie.modeling_moe import Ernie4_5_MoeForCausalLM

    path = tiny_dense if kind == "dense" else tiny_moe
    model = Ernie4_5_MoeForCausalLM.from_pretrained(str(path), moe_group="dummy")
    saved = _weights(path)
    state = model.state_dict()
    assert set(saved) == set(state)
    for name, value in saved.items():
        assert (state[name].numpy() == value).all(), name
    model.eval()
    if kind == "dense":  # the MoE forward needs GPU-only dispatch kernels
        ids = paddle.to_tensor([[3, 10, 20, 30]])
        mask = paddle.tril(paddle.ones([4, 4], dtype="bool"))[None, None]
        with paddle.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, return_dict=True).logits
        assert logits.shape == [1, 4, 1024]
        assert bool(paddle.isfinite(logits).all())


def test_tokenizer_speaks_ernie_4_5(tiny_dense):
    from ernie.tokenizer import Ernie4_5_Tokenizer

    tok = Ernie4_5_Tokenizer.from_pretrained(str(tiny_dense))
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.cls_token == "<|begin_of_sentence|>" and tok.sep_token == "<|end_of_sentence|>"
    config = json.loads((tiny_dense / "tokenizer_config.json").read_text())
    assert config["chat_template"] == CHAT_TEMPLATE and config["tokenizer_class"] == "Ernie4_5_Tokenizer"
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Reverse: abc"},
        {"role": "assistant", "content": "cba"},
    ]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert text == "<|begin_of_sentence|>Be brief.\nUser: Reverse: abc\nAssistant: cba<|end_of_sentence|>"
    prompt = tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("User: Reverse: abc\nAssistant: ")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces[0] == "<|begin_of_sentence|>" and pieces[-1] == "<|end_of_sentence|>"
    assert tok.decode(ids) == text  # byte-exact round trip, newlines included
    for marker in ("<think>", "</think>", "<tool_call>", "</tool_call>"):
        assert len(tok.tokenize(marker)) == 1, marker
    # byte fallback: text outside the training corpus still encodes without <unk>
    assert tok.unk_token_id not in tok("naïve 文心 🙂", add_special_tokens=False)["input_ids"]


def test_same_seed_same_bytes_other_seed_other_weights(tiny_dense, tmp_path):
    again = build_tiny_model(tmp_path / "again", kind="dense", seed=0)
    assert _digests(again) == _digests(tiny_dense)
    other = build_tiny_model(tmp_path / "other", kind="dense", seed=1)
    a, b = _weights(tiny_dense), _weights(other)
    assert any((a[k] != b[k]).any() for k in a)


def test_refuses_to_overwrite_without_force(tmp_path, cli):
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    result = cli("tiny-model", str(out))
    assert result.returncode == 2
    assert "already exists" in result.stderr and "--force" in result.stderr
    assert (out / "keep.txt").read_text() == "user data"
    with pytest.raises(UserError):
        build_tiny_model(out)


@pytest.mark.cpu_stack
def test_cli_builds_a_model(tmp_path, cli):
    result = cli("tiny-model", str(tmp_path / "m"), "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "m" / "tiny_model.json").read_text())["seed"] == 3


def test_an_unwritable_destination_is_a_clear_error(cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = cli("tiny-model", str(blocker / "model"))
    assert result.returncode == 2 and "cannot write to" in result.stderr and "Traceback" not in result.stderr
