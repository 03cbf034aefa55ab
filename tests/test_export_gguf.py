"""`ernie-ops export --format gguf`: one GGUF file for llama.cpp (train/gguf_format.py).

Without llama.cpp (the `gguf` package alone): the file read back with the gguf package's own reader
(architecture, hyperparameters, tensor names, shapes and types per --quant, the values of the f32
file against the checkpoint's split / transposed tensors, the tokenizer's pieces, scores, types,
special ids and chat template), the refusals, and the staging file. With `llama-cpp-python`: the
file loads in llama.cpp, whose logits on a prompt match ERNIEKit's on the Paddle checkpoint (f32
within 1e-3; the q8_0 / q4_0 drift printed and bounded loosely), dense and MoE, and its tokenizer
matches ours.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from finished_run import finished_run

from ernie_ops.errors import UserError

gguf = pytest.importorskip("gguf", reason="the `gguf` extra (llama.cpp's gguf package) is not installed")

from ernie_ops.train import gguf_format  # noqa: E402

PROMPT = [3, 17, 42, 99, 200, 512, 7, 900, 31, 5]
NO_LLAMA_CPP = "llama-cpp-python is not installed (the `llamacpp` extra: pip install llama-cpp-python)"
needs_llama_cpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason=NO_LLAMA_CPP)


@pytest.fixture(scope="module")
def perturbed(tiny_dense, tmp_path_factory) -> Path:
    """The tiny dense model with random norm weights (fresh ones are ones, which hide a norm lost)."""
    from test_export_hf import _perturbed

    return _perturbed(tiny_dense, tmp_path_factory.mktemp("gguf") / "paddle")


@pytest.fixture(scope="module")
def exported(perturbed, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("gguf-out")
    return {q: gguf_format.convert(perturbed, out / f"tiny-{q}.gguf", q).path for q in gguf_format.QUANTS}


def _tensor(path: Path, name: str) -> np.ndarray:
    reader = gguf.GGUFReader(str(path), "r")
    t = next(t for t in reader.tensors if t.name == name)
    return gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(int(x) for x in reversed(t.shape)))


def test_metadata_tensors_and_types(exported, perturbed):
    config = json.loads((perturbed / "config.json").read_text())
    layers = config["num_hidden_layers"]
    per_layer = [
        "attn_norm",
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_output",
        "ffn_norm",
        "ffn_gate",
        "ffn_up",
        "ffn_down",
    ]
    expected = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{n}.weight" for i in range(layers) for n in per_layer
    }
    types = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0", "q4_0": "Q4_0"}
    for quant, path in exported.items():
        info = gguf_format.read(path)
        meta, tensors = info["metadata"], info["tensors"]
        assert meta["general.architecture"] == "ernie4_5"
        assert meta["ernie4_5.block_count"] == layers
        assert meta["ernie4_5.embedding_length"] == config["hidden_size"]
        assert meta["ernie4_5.feed_forward_length"] == config["intermediate_size"]
        assert meta["ernie4_5.attention.head_count"] == config["num_attention_heads"]
        assert meta["ernie4_5.attention.head_count_kv"] == config["num_key_value_heads"]
        assert meta["ernie4_5.attention.key_length"] == config["head_dim"]
        assert meta["ernie4_5.rope.freq_base"] == config["rope_theta"]
        assert meta["ernie4_5.attention.layer_norm_rms_epsilon"] == pytest.approx(config["rms_norm_eps"])
        assert meta["general.file_type"] == int(gguf_format._types(quant)[0])
        assert set(tensors) == expected  # tied: no output.weight, llama.cpp uses token_embd
        h, hd = config["hidden_size"], config["head_dim"]
        assert tensors["blk.0.attn_q.weight"][0] == (h, config["num_attention_heads"] * hd)
        assert tensors["blk.0.attn_k.weight"][0] == (h, config["num_key_value_heads"] * hd)
        assert tensors["blk.0.ffn_down.weight"][0] == (config["intermediate_size"], h)
        assert tensors["token_embd.weight"][0] == (h, config["vocab_size"])
        assert tensors["blk.0.attn_norm.weight"][1] == "F32"  # norms stay float32 at every --quant
        assert tensors["blk.0.ffn_up.weight"][1] == types[quant]
        # q4_0: the tied embedding, which is also the output matrix, stays q8_0
        assert tensors["token_embd.weight"][1] == ("Q8_0" if quant == "q4_0" else types[quant])


def test_f32_values_are_the_checkpoints_split_and_transposed(exported, perturbed):
    from safetensors.numpy import load_file

    config = json.loads((perturbed / "config.json").read_text())
    paddle = load_file(str(perturbed / "model.safetensors"))
    q = config["num_attention_heads"] * config["head_dim"]
    kv = config["num_key_value_heads"] * config["head_dim"]
    inter = config["intermediate_size"]
    qkv = paddle["ernie.layers.1.self_attn.qkv_proj.weight"]  # [hidden, q + 2 kv], Paddle's [in, out]
    up_gate = paddle["ernie.layers.1.mlp.up_gate_proj.weight"]  # [hidden, 2 inter]: gate first
    path = exported["f32"]
    np.testing.assert_array_equal(_tensor(path, "blk.1.attn_q.weight"), qkv[:, :q].T)
    np.testing.assert_array_equal(_tensor(path, "blk.1.attn_k.weight"), qkv[:, q : q + kv].T)
    np.testing.assert_array_equal(_tensor(path, "blk.1.attn_v.weight"), qkv[:, q + kv :].T)
    np.testing.assert_array_equal(_tensor(path, "blk.1.ffn_gate.weight"), up_gate[:, :inter].T)
    np.testing.assert_array_equal(_tensor(path, "blk.1.ffn_up.weight"), up_gate[:, inter:].T)
    np.testing.assert_array_equal(
        _tensor(path, "blk.1.ffn_down.weight"), paddle["ernie.layers.1.mlp.down_proj.weight"].T
    )
    np.testing.assert_array_equal(_tensor(path, "output_norm.weight"), paddle["ernie.norm.weight"])
    np.testing.assert_array_equal(_tensor(path, "token_embd.weight"), paddle["ernie.embed_tokens.weight"])
    # the quantized files hold the same numbers, to their precision
    ref = qkv[:, :q].T
    for quant, bound in (("f16", 1e-3), ("q8_0", 0.02), ("q4_0", 0.3)):
        got = _tensor(exported[quant], "blk.1.attn_q.weight")
        assert np.abs(got - ref).max() <= bound * np.abs(ref).max(), quant


def test_tokenizer_pieces_special_ids_and_chat_template(exported, perturbed):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(perturbed / "tokenizer.model"))
    path = exported["q8_0"]
    tokens = gguf_format.token_list(path)
    assert tokens[: sp.vocab_size()] == [sp.id_to_piece(i) for i in range(sp.vocab_size())]
    meta = gguf_format.read(path)["metadata"]
    assert meta["tokenizer.ggml.model"] == "llama"
    assert meta["tokenizer.ggml.bos_token_id"] == sp.piece_to_id("<s>")
    assert meta["tokenizer.ggml.eos_token_id"] == sp.piece_to_id("</s>")
    assert meta["tokenizer.ggml.eot_token_id"] == sp.piece_to_id("<|end_of_sentence|>")
    assert meta["tokenizer.ggml.add_bos_token"] is False
    reader = gguf.GGUFReader(str(path), "r")
    kinds = reader.fields["tokenizer.ggml.token_type"].contents()
    assert kinds[sp.piece_to_id("<s>")] == gguf.TokenType.CONTROL
    assert kinds[sp.piece_to_id("<|begin_of_sentence|>")] == gguf.TokenType.USER_DEFINED
    assert kinds[sp.piece_to_id("<0x41>")] == gguf.TokenType.BYTE
    tok_config = json.loads((perturbed / "tokenizer_config.json").read_text())
    assert meta["tokenizer.chat_template"] == tok_config["chat_template"]


def test_refusals_and_no_staging_left(perturbed, tiny_moe, tmp_path, monkeypatch):
    with pytest.raises(UserError, match="Q4_K quantizer"):
        gguf_format.convert(perturbed, tmp_path / "m.gguf", "q4_k_m")
    config = json.loads((tiny_moe / "config.json").read_text())
    interleaved = Path(shutil.copytree(tiny_moe, tmp_path / "interleaved"))
    (interleaved / "config.json").write_text(json.dumps({**config, "moe_layer_interval": 2}))
    with pytest.raises(UserError, match="interleaved"):
        gguf_format.convert(interleaved, tmp_path / "moe.gguf", "f16")
    with pytest.raises(UserError, match=r"\.gguf"):
        gguf_format.convert(perturbed, tmp_path / "model.bin", "f16")
    out = gguf_format.convert(perturbed, tmp_path / "m.gguf", "q8_0").path
    before = out.read_bytes()
    with pytest.raises(UserError, match="already exists"):
        gguf_format.convert(perturbed, out, "f16")
    (tmp_path / "notes.gguf").write_text("not a model")
    with pytest.raises(UserError, match="not a GGUF file"):
        gguf_format.convert(perturbed, tmp_path / "notes.gguf", "f16", force=True)

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(gguf_format, "_write_data", boom)
    with pytest.raises(RuntimeError):
        gguf_format.convert(perturbed, out, "f16", force=True)
    assert out.read_bytes() == before  # the earlier file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["interleaved", "m.gguf", "notes.gguf"]  # no staging


def test_cli_export_gguf(perturbed, tmp_path, cli):
    out = tmp_path / "cli.gguf"
    result = cli("export", str(perturbed), "--format", "gguf", "--quant", "q4_0", "--out", str(out), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["format"] == "gguf" and report["quant"] == "q4_0" and report["architecture"] == "ernie4_5"
    assert report["exported"] == str(out) and gguf_format.is_gguf(out)
    refused = cli(
        "export", str(perturbed), "--format", "gguf", "--quant", "q4_k_m", "--out", str(tmp_path / "k.gguf")
    )
    assert refused.returncode != 0 and "llama-quantize" in refused.stderr
    wrong = cli("export", str(perturbed), "--format", "hf", "--quant", "q8_0", "--out", str(tmp_path / "hf"))
    assert wrong.returncode != 0 and "--quant applies to --format gguf" in wrong.stderr


def test_run_export_gguf_is_recorded_and_served_by_quantization(perturbed, tmp_path, cli):
    from ernie_ops.serve.backends.llamacpp import BACKEND
    from ernie_ops.serve.profile import profile_for_checkpoint
    from ernie_ops.train.record import RunRecord

    run = finished_run(tmp_path / "runs", perturbed)
    output = run / "output"
    for quant in ("q8_0", "q4_0"):
        result = cli("export", str(run), "--format", "gguf", "--quant", quant, "--no-forward", "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        assert json.loads(result.stdout)["exported"] == str(run / "export-gguf" / f"{run.name}-{quant}.gguf")
    exports = RunRecord.load(run).exports["gguf"]
    assert sorted(exports) == ["q4_0", "q8_0"] and exports["q4_0"]["from"] == str(output)
    target = BACKEND.resolve(profile_for_checkpoint(str(run), ["quantization=q4_0"]))
    assert target.model_dir == run / "export-gguf" / f"{run.name}-q4_0.gguf" and target.run_dir == run


# ---------------------------------------------------------------------------------------------
# the proof: llama.cpp loads the file and gives ERNIEKit's logits


# llama.cpp runs in a child process: its OpenMP runtime and Paddle's (loaded by ERNIEKit, or by any
# earlier test) crash the process that holds both
LLAMA_CHILD = """
import json, sys
import numpy as np
from ernie_ops.serve.backends import _llamacpp_server
if not _llamacpp_server.extra_buffers():  # the AMX buffers crash on q8_0 / q4_0: as the engine does
    _llamacpp_server.disable_extra_buffers()
from llama_cpp import Llama
args = json.loads(sys.argv[1])
if args["tokenize"]:
    llm = Llama(model_path=args["path"], vocab_only=True, verbose=False)
    print(json.dumps([llm.tokenize(t.encode(), add_bos=False, special=True) for t in args["tokenize"]]))
else:
    llm = Llama(model_path=args["path"], n_ctx=64, n_threads=1, logits_all=True, verbose=False)
    llm.eval(args["ids"])
    np.save(args["out"], np.array(llm.scores[: len(args["ids"])], dtype=np.float32))
llm.close()
"""


def _llama(path: Path, tmp: Path, ids: list[int] = (), tokenize: list[str] = ()) -> Any:
    import subprocess
    import sys

    out = tmp / f"{path.stem}.npy"
    args = {"path": str(path), "ids": list(ids), "tokenize": list(tokenize), "out": str(out)}
    done = subprocess.run(
        [sys.executable, "-c", LLAMA_CHILD, json.dumps(args)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout) if tokenize else np.load(out)


@needs_llama_cpp
@pytest.mark.cpu_stack
def test_llama_cpp_gives_erniekit_logits(exported, perturbed, monkeypatch, tmp_path):
    from test_export_hf import _erniekit_logits

    ours = _erniekit_logits(perturbed, monkeypatch)(PROMPT)
    drift = {}
    for quant, path in exported.items():
        theirs = _llama(path, tmp_path, ids=PROMPT)
        assert theirs.shape == ours.shape
        drift[quant] = float(np.abs(theirs - ours).max())
    spread = float(np.abs(ours).max())
    print(f"\nmax |logits(llama.cpp) - logits(ERNIEKit)| (logits up to {spread:.3g}): {drift}")
    assert drift["f32"] < 1e-3
    assert drift["f16"] < 0.05 * spread
    assert drift["q8_0"] < 0.1 * spread
    assert drift["q4_0"] < 0.5 * spread  # random weights: q4_0's drift is large, but bounded


@needs_llama_cpp
@pytest.mark.cpu_stack
def test_llama_cpp_gives_erniekit_logits_on_the_moe_model(tiny_moe, tmp_path, monkeypatch):
    """ernie4_5-moe: experts stacked per layer, router float32, the correction bias (large enough to
    change which experts win) as exp_probs_b, the shared expert."""
    from test_export_hf import _erniekit_logits, _perturbed

    paddle = _perturbed(tiny_moe, tmp_path / "moe")
    drift = {}
    ours = _erniekit_logits(paddle, monkeypatch)(PROMPT)
    for quant in ("f32", "q8_0"):
        done = gguf_format.convert(paddle, tmp_path / f"moe-{quant}.gguf", quant)
        assert done.architecture == "ernie4_5-moe"
        tensors = gguf_format.read(done.path)["tensors"]
        assert tensors["blk.1.ffn_gate_inp.weight"][1] == "F32" and tensors["blk.1.exp_probs_b.bias"][0] == (
            4,
        )
        assert tensors["blk.1.ffn_up_exps.weight"][0][2] == 4  # [n_expert, ff, hidden] (GGUF order reversed)
        theirs = _llama(done.path, tmp_path, ids=PROMPT)
        drift[quant] = float(np.abs(theirs - ours).max())
    print(f"\nMoE: max |logits(llama.cpp) - logits(ERNIEKit)|: {drift}")
    assert drift["f32"] < 1e-3
    assert drift["q8_0"] < 0.1 * float(np.abs(ours).max())


@needs_llama_cpp
def test_llama_cpp_tokenizes_as_sentencepiece(exported, perturbed, tmp_path):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(perturbed / "tokenizer.model"))
    texts = [
        "hello world",
        "Assistant: the cat sat\non the mat",
        "数字 123",
        "<|begin_of_sentence|>User: hi\n",
    ]
    theirs = _llama(exported["q8_0"], tmp_path, tokenize=texts)
    for text, ids in zip(texts[:3], theirs[:3], strict=True):
        assert ids == sp.encode(text), text
    # the marker pieces are user-defined: one token each, as sentencepiece gives them
    assert theirs[3] == sp.encode(texts[3])
    assert theirs[3][0] == sp.piece_to_id("<|begin_of_sentence|>")
