"""`ernie-ops export --format hf`: the transformers layout of an ERNIE 4.5 checkpoint.

The proof (cpu_stack + torch): the tiny dense and MoE checkpoints, exported, loaded by transformers'
own `Ernie4_5ForCausalLM` / `Ernie4_5_MoeForCausalLM`, give ERNIEKit's logits on the Paddle checkpoint
(float32, CPU) and the same greedy continuation. The rest needs neither Paddle nor torch: the tensor
table on synthetic checkpoints (orientations, splits, float32 router, shards, the round trip), the
staging directory, the refusals, and verify on the transformers layout.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from finished_run import finished_run
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from ernie_ops.errors import UserError
from ernie_ops.train import hf_format
from ernie_ops.train.hf_format import HF, PADDLE, convert
from ernie_ops.train.record import RunRecord
from ernie_ops.train.verify import verify_checkpoint

PROMPT = [3, 17, 42, 99, 200, 512, 7, 900, 31, 5]
NEW_TOKENS = 16
TOLERANCE = 1e-4

# ---------------------------------------------------------------------------------------------
# synthetic ERNIEKit checkpoints (numpy only)

H, HEADS, KV, HD, INTER, VOCAB, EXPERTS, MOE_INTER = 32, 4, 2, 8, 48, 96, 4, 16


def _config(moe: bool, tied: bool, bias: bool = False) -> dict:
    config = {
        "architectures": ["Ernie4_5_MoeForCausalLM" if moe else "Ernie4_5_ForCausalLM"],
        "model_type": "ernie4_5_moe" if moe else "ernie4_5",
        "hidden_size": H,
        "intermediate_size": INTER,
        "num_hidden_layers": 2,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV,
        "head_dim": HD,
        "vocab_size": VOCAB,
        "max_position_embeddings": 512,
        "rope_theta": 500000.0,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": tied,
        "use_bias": bias,
        "dtype": "float32",
    }
    if moe:
        config.update(
            moe_num_experts=EXPERTS,
            moe_k=2,
            moe_intermediate_size=MOE_INTER,
            moe_num_shared_experts=1,
            moe_layer_start_index=1,
            moe_layer_interval=1,
            moe_use_aux_free=True,
        )
    return config


def _mlp(t: dict, rng, prefix: str, inter: int, bias: bool) -> None:
    t[f"{prefix}.up_gate_proj.weight"] = rng.standard_normal((H, 2 * inter))
    t[f"{prefix}.down_proj.weight"] = rng.standard_normal((inter, H))
    if bias:
        t[f"{prefix}.up_gate_proj.bias"] = rng.standard_normal(2 * inter)
        t[f"{prefix}.down_proj.bias"] = rng.standard_normal(H)


def fake_checkpoint(
    path: Path,
    moe: bool = False,
    tied: bool = False,
    bias: bool = False,
    dtype: str = "float32",
    correction_bias: bool = True,
) -> Path:
    """An ERNIEKit-layout checkpoint with random values, as ERNIEKit names and orients them."""
    rng = np.random.default_rng(0)
    t: dict[str, np.ndarray] = {"ernie.embed_tokens.weight": rng.standard_normal((VOCAB, H))}
    t["ernie.norm.weight"] = rng.standard_normal(H)
    t["lm_head.weight"] = t["ernie.embed_tokens.weight"].copy() if tied else rng.standard_normal((H, VOCAB))
    for i in range(2):
        p = f"ernie.layers.{i}"
        t[f"{p}.input_layernorm.weight"] = rng.standard_normal(H)
        t[f"{p}.post_attention_layernorm.weight"] = rng.standard_normal(H)
        t[f"{p}.self_attn.qkv_proj.weight"] = rng.standard_normal((H, (HEADS + 2 * KV) * HD))
        t[f"{p}.self_attn.o_proj.weight"] = rng.standard_normal((HEADS * HD, H))
        if bias:
            t[f"{p}.self_attn.qkv_proj.bias"] = rng.standard_normal((HEADS + 2 * KV) * HD)
            t[f"{p}.self_attn.o_proj.bias"] = rng.standard_normal(H)
        if moe and i == 1:
            t[f"{p}.mlp.gate.weight"] = rng.standard_normal((H, EXPERTS))
            if correction_bias:
                t[f"{p}.mlp.moe_statics.e_score_correction_bias"] = rng.standard_normal((1, EXPERTS))
            for e in range(EXPERTS):
                _mlp(t, rng, f"{p}.mlp.experts.{e}", MOE_INTER, bias)
            _mlp(t, rng, f"{p}.mlp.shared_experts", MOE_INTER, bias)
        else:
            _mlp(t, rng, f"{p}.mlp", INTER, bias)
    if dtype == "bfloat16":
        import ml_dtypes

        arrays = {k: v.astype(ml_dtypes.bfloat16) for k, v in t.items()}
    else:
        arrays = {k: v.astype(np.float32) for k, v in t.items()}
    path.mkdir(parents=True)
    save_file(arrays, str(path / "model.safetensors"), metadata={"format": "paddle"})
    config = {**_config(moe, tied, bias), "dtype": dtype}
    (path / "config.json").write_text(json.dumps(config))
    tokenizer = {"tokenizer_class": "Ernie4_5_Tokenizer", "chat_template": "{{ messages }}"}
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer))
    (path / "special_tokens_map.json").write_text(json.dumps({"eos_token": "</s>"}))
    return path


def _load(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for file in sorted(path.glob("*.safetensors")):
        out.update(load_file(str(file)))
    return out


Q, K = HEADS * HD, KV * HD


def test_dense_names_and_orientations(tmp_path):
    src = fake_checkpoint(tmp_path / "ckpt")
    result = convert(src, tmp_path / "hf", HF)
    p, h = _load(src), _load(result.path)
    qkv = p["ernie.layers.0.self_attn.qkv_proj.weight"]
    attn = "model.layers.0.self_attn"
    np.testing.assert_array_equal(h[f"{attn}.q_proj.weight"], qkv[:, :Q].T)  # [out, in]
    np.testing.assert_array_equal(h[f"{attn}.k_proj.weight"], qkv[:, Q : Q + K].T)
    np.testing.assert_array_equal(h[f"{attn}.v_proj.weight"], qkv[:, Q + K :].T)
    np.testing.assert_array_equal(h[f"{attn}.o_proj.weight"], p["ernie.layers.0.self_attn.o_proj.weight"].T)
    up_gate = p["ernie.layers.1.mlp.up_gate_proj.weight"]
    # ERNIEKit: gate, x = up_gate_proj(x).chunk(2); silu(gate) * x -> the first half is gate_proj
    np.testing.assert_array_equal(h["model.layers.1.mlp.gate_proj.weight"], up_gate[:, :INTER].T)
    np.testing.assert_array_equal(h["model.layers.1.mlp.up_proj.weight"], up_gate[:, INTER:].T)
    np.testing.assert_array_equal(
        h["model.layers.1.mlp.down_proj.weight"], p["ernie.layers.1.mlp.down_proj.weight"].T
    )
    np.testing.assert_array_equal(h["model.embed_tokens.weight"], p["ernie.embed_tokens.weight"])
    np.testing.assert_array_equal(h["model.norm.weight"], p["ernie.norm.weight"])
    np.testing.assert_array_equal(h["lm_head.weight"], p["lm_head.weight"].T)  # untied: [hidden, vocab]
    assert not any(n.startswith("ernie.") or "qkv_proj" in n or "up_gate" in n for n in h)
    config = json.loads((result.path / "config.json").read_text())
    assert config["architectures"] == ["Ernie4_5ForCausalLM"] and config["model_type"] == "ernie4_5"
    assert config["torch_dtype"] == "float32" and "dtype" not in config
    assert config["tie_word_embeddings"] is False  # ERNIEKit's default, written out
    with safe_open(str(result.path / "model.safetensors"), "np") as f:
        assert f.metadata() == {"format": "pt"}  # transformers refuses other formats


def test_tied_head_is_left_to_transformers_and_biases_are_split(tmp_path):
    src = fake_checkpoint(tmp_path / "ckpt", tied=True, bias=True)
    h = _load(convert(src, tmp_path / "hf", HF).path)
    p = _load(src)
    assert "lm_head.weight" not in h  # tied: transformers ties it to the embedding
    qkv_bias = p["ernie.layers.0.self_attn.qkv_proj.bias"]
    np.testing.assert_array_equal(h["model.layers.0.self_attn.k_proj.bias"], qkv_bias[Q : Q + K])
    np.testing.assert_array_equal(
        h["model.layers.0.mlp.up_proj.bias"], p["ernie.layers.0.mlp.up_gate_proj.bias"][INTER:]
    )
    np.testing.assert_array_equal(
        h["model.layers.0.self_attn.o_proj.bias"], p["ernie.layers.0.self_attn.o_proj.bias"]
    )


def test_moe_router_stays_float32_and_a_missing_correction_bias_is_zeros(tmp_path):
    src = fake_checkpoint(tmp_path / "ckpt", moe=True, dtype="bfloat16", correction_bias=False)
    result = convert(src, tmp_path / "hf", HF)
    p, h = _load(src), _load(result.path)
    gate = h["model.layers.1.mlp.gate.weight"]
    assert gate.dtype == np.float32 and gate.shape == (EXPERTS, H)
    np.testing.assert_array_equal(gate, p["ernie.layers.1.mlp.gate.weight"].astype(np.float32).T)
    bias = h["model.layers.1.mlp.moe_statics.e_score_correction_bias"]
    assert bias.dtype == np.float32 and bias.shape == (1, EXPERTS) and not bias.any()
    assert any("zeros" in note for note in result.notes)
    assert h["model.layers.1.mlp.experts.3.up_proj.weight"].shape == (MOE_INTER, H)
    assert h["model.layers.1.mlp.shared_experts.gate_proj.weight"].shape == (MOE_INTER, H)
    assert str(h["model.layers.0.mlp.up_proj.weight"].dtype) == "bfloat16"
    config = json.loads((result.path / "config.json").read_text())
    assert config["architectures"] == ["Ernie4_5_MoeForCausalLM"] and config["torch_dtype"] == "bfloat16"
    assert (config["moe_layer_start_index"], config["moe_layer_end_index"], config["moe_layer_interval"]) == (
        1,
        1,
        1,
    )


def test_shards_are_bounded_and_indexed(tmp_path):
    src = fake_checkpoint(tmp_path / "ckpt", moe=True)
    limit = 40_000
    result = convert(src, tmp_path / "hf", HF, max_shard_bytes=limit)
    files = sorted(result.path.glob("*.safetensors"))
    assert result.shards == len(files) > 2
    assert files[0].name == f"model-00001-of-{len(files):05d}.safetensors"
    index = json.loads((result.path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == result.bytes
    for file in files:
        with safe_open(str(file), "np") as f:
            names = list(f.keys())
            size = sum(f.get_tensor(n).nbytes for n in names)
        assert size <= limit or len(names) == 1
        assert all(index["weight_map"][n] == file.name for n in names)
    assert set(index["weight_map"]) == set(_load(result.path))
    assert verify_checkpoint(result.path, forward=False).ok is False  # no tokenizer.model here
    report = verify_checkpoint(result.path, forward=False)
    assert {c.name: c.status for c in report.checks}["shapes"] == "ok"


@pytest.mark.parametrize(("moe", "tied", "bias"), [(False, False, True), (True, True, False)])
def test_round_trip_is_bitwise(tmp_path, moe, tied, bias):
    src = fake_checkpoint(tmp_path / "ckpt", moe=moe, tied=tied, bias=bias)
    hf = convert(src, tmp_path / "hf", HF)
    back = convert(hf.path, tmp_path / "paddle", PADDLE)
    a, b = _load(src), _load(back.path)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name
    config = json.loads((back.path / "config.json").read_text())
    assert config["dtype"] == "float32" and "torch_dtype" not in config
    assert config["architectures"] == [("Ernie4_5_MoeForCausalLM" if moe else "Ernie4_5_ForCausalLM")]
    assert config["tie_word_embeddings"] is tied and config["scale_qk_coeff"] == 1.0
    tokenizer = json.loads((back.path / "tokenizer_config.json").read_text())
    assert tokenizer["tokenizer_class"] == "Ernie4_5_Tokenizer"


def test_a_failure_leaves_neither_the_target_nor_a_staging_directory(tmp_path, monkeypatch):
    src = fake_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "exports" / "hf"
    real, calls = hf_format._build, []

    def failing(item, source):
        calls.append(item.name)
        if len(calls) == 5:
            raise OSError("disk full")
        return real(item, source)

    monkeypatch.setattr(hf_format, "_build", failing)
    with pytest.raises(OSError, match="disk full"):
        convert(src, out, HF)
    assert list(out.parent.iterdir()) == []
    # an existing export survives a failed --force
    monkeypatch.setattr(hf_format, "_build", real)
    convert(src, out, HF)
    before = (out / "model.safetensors").read_bytes()
    calls.clear()
    monkeypatch.setattr(hf_format, "_build", failing)
    with pytest.raises(OSError):
        convert(src, out, HF, force=True)
    assert (out / "model.safetensors").read_bytes() == before
    assert [p.name for p in out.parent.iterdir()] == ["hf"]


def test_refusals(tmp_path):
    src = fake_checkpoint(tmp_path / "ckpt")
    convert(src, tmp_path / "hf", HF)
    with pytest.raises(UserError, match="already exists"):
        convert(src, tmp_path / "hf", HF)
    with pytest.raises(UserError, match="transformers tensor names"):
        convert(tmp_path / "hf", tmp_path / "again", HF)
    with pytest.raises(UserError, match="inside the source"):
        convert(src, src / "hf", HF)
    with pytest.raises(UserError, match="contains"):  # --force never moves the source's parent away
        convert(src, tmp_path, HF, force=True)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not a checkpoint directory"):
        convert(src, tmp_path / "notes", HF, force=True)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    vl = fake_checkpoint(tmp_path / "vl")
    config = json.loads((vl / "config.json").read_text())
    config["architectures"] = ["Ernie4_5_VLMoeForConditionalGeneration"]
    (vl / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="vision-language"):
        convert(vl, tmp_path / "vl-hf", HF)
    odd = fake_checkpoint(tmp_path / "odd")
    tensors = _load(odd)
    tensors["ernie.layers.0.mystery.weight"] = np.zeros((2, 2), np.float32)
    save_file(tensors, str(odd / "model.safetensors"))
    with pytest.raises(UserError, match=r"no transformers name: ernie\.layers\.0\.mystery\.weight"):
        convert(odd, tmp_path / "odd-hf", HF)
    assert not (tmp_path / "odd-hf").exists() and not (tmp_path / "vl-hf").exists()


def test_a_full_disk_is_refused_before_writing(tmp_path, monkeypatch):
    src = fake_checkpoint(tmp_path / "ckpt")
    (tmp_path / "exports").mkdir()
    monkeypatch.setattr(hf_format.shutil, "disk_usage", lambda path: SimpleNamespace(free=1000))
    with pytest.raises(UserError, match="free; the export needs"):
        convert(src, tmp_path / "exports" / "hf", HF)
    assert list((tmp_path / "exports").iterdir()) == []


def test_verify_checks_the_transformers_layout(tmp_path):
    src = fake_checkpoint(tmp_path / "ckpt", moe=True)
    path = convert(src, tmp_path / "hf", HF).path
    report = verify_checkpoint(path, forward=False)
    checks = {c.name: c for c in report.checks}
    assert checks["layout"].detail.startswith("hf") and checks["shapes"].status == "ok"
    assert checks["architecture"].status == "ok" and "paddle config" not in checks
    tensors = _load(path)
    name = "model.layers.0.self_attn.k_proj.weight"
    tensors[name] = np.ascontiguousarray(tensors[name].T)
    del tensors["model.layers.1.mlp.moe_statics.e_score_correction_bias"]
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    shapes = {c.name: c for c in verify_checkpoint(path, forward=False).checks}["shapes"]
    assert shapes.status == "fail"
    assert (
        f"{name} [{H}, {K}], expected [{K}, {H}] (transposed: [in, out] is Paddle's layout)" in shapes.detail
    )
    assert "e_score_correction_bias" in shapes.detail
    config = json.loads((path / "config.json").read_text())
    config.update(architectures=["Ernie4_5_ForCausalLM"], model_type="ernie4_5")
    (path / "config.json").write_text(json.dumps(config))
    arch = {c.name: c for c in verify_checkpoint(path, forward=False).checks}["architecture"]
    assert arch.status == "fail" and "Ernie4_5ForCausalLM" in arch.detail


# ---------------------------------------------------------------------------------------------
# the proof: transformers' classes on the export give ERNIEKit's logits


def _perturbed(tiny: Path, dest: Path, bf16: bool = False) -> Path:
    """The tiny model with random norm weights and MoE correction bias (fresh ones are ones and
    zeros, which would hide a norm or bias left out); `bf16`: stored in bfloat16 like real
    checkpoints, the router and the correction bias float32 as ERNIEKit keeps them."""
    path = Path(shutil.copytree(tiny, dest))
    tensors = load_file(str(path / "model.safetensors"))
    rng = np.random.default_rng(1)
    for name, value in tensors.items():
        if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
            tensors[name] = (1 + 0.3 * rng.standard_normal(value.shape)).astype(np.float32)
        elif name.endswith("e_score_correction_bias"):  # large enough to change which experts win
            tensors[name] = (0.5 * rng.standard_normal(value.shape)).astype(np.float32)
    if bf16:
        import ml_dtypes

        for name, value in tensors.items():
            if not name.endswith(("mlp.gate.weight", "e_score_correction_bias")):
                tensors[name] = value.astype(ml_dtypes.bfloat16)
        config = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({**config, "dtype": "bfloat16"}))
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "np"})
    return path


def _erniekit_logits(path: Path, monkeypatch):
    """ERNIEKit's own model on the Paddle checkpoint, float32 on CPU. Its MoE layer calls two
    GPU-only kernels (moe_gate_dispatch, moe_combine); they are replaced by the reference
    implementations the same packages ship for NPUs (Paddle's math_moe_gate_dispatch, ERNIEKit's
    npu_combining), so the routing arithmetic is still theirs."""
    import ernie.moe.moe_layer as moe_layer
    import paddle
    from ernie.fusion_ops.npu_fusion_ops import npu_combining
    from ernie.modeling_moe import Ernie4_5_MoeForCausalLM
    from paddle.incubate.nn.functional.moe_gate_dispatch import math_moe_gate_dispatch

    def moe_gate_dispatch(x, gate_logits, corr_bias, k, capacity, use_pad, name=None):
        return math_moe_gate_dispatch(x, gate_logits, corr_bias, k, capacity, use_pad)

    monkeypatch.setattr(moe_layer, "moe_gate_dispatch", moe_gate_dispatch)
    monkeypatch.setattr(
        moe_layer, "combining", lambda x, w, i, hard_gate=False: npu_combining(x, w, i, hard_gate)
    )
    paddle.set_device("cpu")
    # the router losses are training-only and call another GPU kernel (int_bincount)
    no_losses = {"moe_aux_loss_lambda": 0.0, "moe_orthogonal_loss_lambda": 0.0, "moe_z_loss_lambda": 0.0}
    model = Ernie4_5_MoeForCausalLM.from_pretrained(
        str(path), moe_group="dummy", dtype="float32", **no_losses
    )
    model.eval()

    def logits(ids: list[int]) -> np.ndarray:
        n = len(ids)
        mask = paddle.tril(paddle.ones([n, n], dtype="bool"))[None, None]  # ERNIEKit needs it explicit
        with paddle.no_grad():
            out = model(
                input_ids=paddle.to_tensor([ids], dtype="int64"), attention_mask=mask, return_dict=True
            )
        return out.logits.numpy()[0]

    return logits


@pytest.mark.cpu_stack
@pytest.mark.parametrize("kind", ["dense", "moe", "moe-bf16"])
def test_transformers_gives_erniekit_logits_and_greedy_tokens(
    kind, tiny_dense, tiny_moe, tmp_path, cli, monkeypatch
):
    torch = pytest.importorskip("torch", reason="the `torch` extra (torch, transformers) is not installed")
    transformers = pytest.importorskip("transformers", reason="the `torch` extra is not installed")
    tiny = tiny_dense if kind == "dense" else tiny_moe
    paddle_ckpt = _perturbed(tiny, tmp_path / "paddle", bf16=kind.endswith("bf16"))
    out = tmp_path / "hf"
    result = cli("export", str(paddle_ckpt), "--format", "hf", "--out", str(out), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    exported = json.loads(result.stdout)
    forward = {c["name"]: c for c in exported["verify"]["checks"]}["forward"]
    assert forward["status"] == "ok", forward  # verify loaded it with transformers' class too

    cls = transformers.Ernie4_5ForCausalLM if kind == "dense" else transformers.Ernie4_5_MoeForCausalLM
    # bf16: both sides compute in float32 on the same bf16 weights (the router stays float32)
    if kind == "moe-bf16":
        with safe_open(str(out / "model.safetensors"), "np") as f:
            assert str(f.get_tensor("model.layers.1.mlp.gate.weight").dtype) == "float32"
            assert str(f.get_tensor("model.embed_tokens.weight").dtype) == "bfloat16"
        assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    model, info = cls.from_pretrained(str(out), torch_dtype=torch.float32, output_loading_info=True)
    model.eval()
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    erniekit = _erniekit_logits(paddle_ckpt, monkeypatch)
    with torch.no_grad():
        theirs = model(torch.tensor([PROMPT])).logits.numpy()[0]
    ours = erniekit(PROMPT)
    diff = float(np.abs(theirs - ours).max())
    print(f"\n{kind}: max |logits(transformers) - logits(ERNIEKit)| = {diff:.3g} over {ours.size} logits")
    assert diff < TOLERANCE

    ids = list(PROMPT)
    for _ in range(NEW_TOKENS):  # ERNIEKit greedy, the whole sequence each step
        ids.append(int(erniekit(ids)[-1].argmax()))
    with torch.no_grad():
        generated = model.generate(torch.tensor([PROMPT]), max_new_tokens=NEW_TOKENS, do_sample=False)
    assert generated[0, len(PROMPT) :].tolist() == ids[len(PROMPT) :]


@pytest.mark.cpu_stack
def test_transformers_tokenizer_matches_erniekit(tiny_dense, tmp_path):
    transformers = pytest.importorskip("transformers", reason="the `torch` extra is not installed")
    from ernie.tokenizer import Ernie4_5_Tokenizer

    path = convert(tiny_dense, tmp_path / "hf", HF).path
    theirs = transformers.AutoTokenizer.from_pretrained(str(path))
    ours = Ernie4_5_Tokenizer.from_pretrained(str(tiny_dense))
    texts = [
        "Hello world",
        " leading space and  two spaces\nnew line",
        "<|begin_of_sentence|>User: reverse the words\nAssistant: ",
        'ünïcode 日本語 123456 {"a": 1}<|end_of_sentence|></s><think>x</think>',
    ]
    for text in texts:
        assert theirs(text)["input_ids"] == ours(text)["input_ids"], text
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
        {"role": "user", "content": "again"},
    ]
    rendered = theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == ours.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert (
        theirs.apply_chat_template(messages, add_generation_prompt=True)
        == (ours.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)["input_ids"])
    )
    assert (theirs.eos_token_id, theirs.pad_token_id) == (2, 0)
    transformers.GenerationConfig.from_pretrained(str(path))  # readable by transformers


@pytest.mark.cpu_stack
def test_run_export_hf_is_recorded(tiny_dense, tmp_path, cli):
    run = finished_run(tmp_path / "runs", tiny_dense)
    output = run / "output"
    result = cli("export", str(run), "--format", "hf", "--no-forward", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    record = RunRecord.load(run)
    assert record.exported == str(output) and record.verified is True  # the Paddle export first
    hf = record.exports["hf"]
    assert hf["path"] == str(run / "export-hf") and hf["from"] == str(output) and hf["verified"] is True
    assert hf["tensors"] == 20 and hf["files"] == 1
    card = (run / "export-hf" / "README.md").read_text()
    assert "library_name: transformers" in card and f"`{run.name}`" in card
    assert str(tmp_path) not in card and "base_model" not in card  # a local base is not named
    again = cli("export", str(run), "--format", "hf", "--no-forward")
    assert again.returncode == 2 and "already exists" in again.stderr and "--force" in again.stderr
    forced = cli("export", str(run), "--format", "hf", "--no-forward", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "recorded in" in forced.stdout and "exports.hf" in forced.stdout


@pytest.mark.slow
def test_lora_run_exports_to_transformers_with_the_merged_logits(
    repo, tiny_dense, tmp_path, cli, monkeypatch
):
    """The whole path a user takes: a LoRA run trained by ERNIEKit, `export --format hf` (ERNIEKit's
    merge, verification, conversion, verification with transformers), the logits of the merge."""
    torch = pytest.importorskip("torch", reason="the `torch` extra (torch, transformers) is not installed")
    transformers = pytest.importorskip("transformers", reason="the `torch` extra is not installed")
    from test_export_verify import make_run

    run = make_run(repo, "recipes/tiny/sft_lora_cpu.yaml", tiny_dense, tmp_path / "lora-run", "LoRA")
    result = cli("export", str(run), "--format", "hf", "--json", timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    out = json.loads(result.stdout)
    assert out["exported"] == str(run / "export-hf")
    assert {c["name"]: c["status"] for c in out["verify"]["checks"]}["forward"] == "ok"
    record = RunRecord.load(run)
    assert record.exported == str(run / "export") and record.verified is True  # ERNIEKit's merge
    assert record.exports["hf"]["from"] == str(run / "export") and record.exports["hf"]["verified"]
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(run / "export-hf"), torch_dtype=torch.float32
    )
    with torch.no_grad():
        theirs = model(torch.tensor([PROMPT])).logits.numpy()[0]
    ours = _erniekit_logits(run / "export", monkeypatch)(PROMPT)
    assert float(np.abs(theirs - ours).max()) < TOLERANCE
