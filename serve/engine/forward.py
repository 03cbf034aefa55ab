"""The model: a dense ERNIE 4.5 Paddle checkpoint loaded with ERNIEKit, and the numpy forward that
serves requests over its weights.

The checkpoint is loaded with ERNIEKit's own `Ernie4_5_MoeForCausalLM` in float32 (Paddle has no
bf16 CPU kernels), the tokenizer is `ernie.tokenizer.Ernie4_5_Tokenizer`.

The forward that serves requests is `DenseForward`: dense ERNIE 4.5's arithmetic written out in numpy
over the loaded weights (embedding, norms and LM head shared zero-copy with Paddle, the linear
layers copied once into [out, in] layout, after which Paddle's copies are freed). Kept whole
(`Engine(..., reference=True)`, the tests), ERNIEKit's model is the reference: `reference_logits`
runs it, and the tests hold the fast path to it within float tolerance. Why not ERNIEKit's forward:
on CPU it costs about 3x more per decode step and 4x more per prompt, because Paddle's matmul goes
through its bundled MKL (a slow generic path on non-Intel CPUs, slower gemv everywhere), its
attention concatenates the cache every step, builds masks and casts, and its LM head runs over every
prompt position. Why not `model.generate()`: it re-feeds the whole sequence at every step.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ernie_ops.errors import UserError
from ernie_ops.extras import optional_imports
from ernie_ops.serve.engine.quantize import fake_quantize

log = logging.getLogger(__name__)


def load_checkpoint(path: Path) -> tuple[Any, Any, dict[str, Any]]:
    """ERNIEKit's model (float32, on the CPU, in eval mode), the tokenizer and the generation config
    of a dense ERNIE 4.5 Paddle checkpoint directory."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UserError(f"{path} has no config.json", hint="give an ERNIE 4.5 Paddle checkpoint directory")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if int(config.get("moe_num_experts") or 0) > 0:
        raise UserError(
            f"{path} is a MoE model: the embedded CPU engine runs dense ERNIE 4.5 only",
            hint="ERNIEKit's MoE dispatch kernel (moe_gate_dispatch) is GPU-only in Paddle; "
            "serve MoE models with FastDeploy on a GPU",
        )
    with optional_imports("cpu", "the embedded CPU server"):
        import paddle
        from ernie.modeling_moe import Ernie4_5_MoeForCausalLM
        from ernie.tokenizer import Ernie4_5_Tokenizer

    paddle.set_device("cpu")
    started = time.perf_counter()
    # moe_group "dummy": no process group is needed; fp32: no bf16 CPU kernels
    model = Ernie4_5_MoeForCausalLM.from_pretrained(str(path), moe_group="dummy", dtype="float32")
    model.eval()
    tokenizer = Ernie4_5_Tokenizer.from_pretrained(str(path))
    log.info("loaded %s in %.1f s", path, time.perf_counter() - started)
    return model, tokenizer, _generation_config(path)


def _generation_config(model_dir: Path) -> dict[str, Any]:
    """The checkpoint's generation_config.json ({} when there is none)."""
    path = model_dir / "generation_config.json"
    if not path.exists():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path}: {err}", hint="fix or remove the file") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} is not a JSON object", hint="fix or remove the file")
    return config


def reference_logits(model: Any, token_ids: Sequence[int]) -> np.ndarray:
    """Logits [n, V] of one sequence in one uncached forward of ERNIEKit's own model."""
    import paddle

    n = len(token_ids)
    with paddle.no_grad():
        out = model(
            input_ids=paddle.to_tensor([list(token_ids)], dtype="int64"),
            position_ids=paddle.to_tensor(np.arange(n)[None], dtype="int64"),
            attention_mask=paddle.to_tensor(np.tril(np.ones((n, n), dtype=bool))[None, None]),
            return_dict=True,
        )
    return np.asarray(out.logits.numpy()[0])


class DenseForward:
    """A lean numpy forward of dense ERNIE 4.5 over the weights of ERNIEKit's loaded model.

    The same float32 arithmetic as ERNIEKit's `Ernie4_5_MoeForCausalLM` (RMSNorm, fused QKV with
    GQA, interleaved RoPE, softmax attention, SwiGLU MLP, tied or untied LM head), held to it within
    float tolerance by the tests. The embedding / LM head table and the norms are zero-copy views of
    the Paddle parameters; the layer weights are copied once into [out, in] layout (see `_Linear`).
    """

    def __init__(self, model: Any, quantization: str | None = None):
        config = model.config
        problems = [
            name
            for name, bad in (
                ("MoE layers", bool(getattr(config, "use_moe", False))),
                ("LayerNorm instead of RMSNorm", not getattr(config, "use_rmsnorm", True)),
                ("3-D RoPE", bool(config.get("rope_3d", False))),
            )
            if bad
        ]
        if problems:
            raise UserError(f"the CPU engine cannot run this model: {', '.join(problems)}")
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(config.num_key_value_heads or self.heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.heads)
        self.eps = float(config.rms_norm_eps)
        self.inner = int(config.intermediate_size)
        self.scale = np.float32(1.0 / self.head_dim**0.5)  # scale_qk_coeff cancels out in ERNIEKit
        ratio = float(getattr(config, "compression_ratio", 1.0) or 1.0)
        dims = np.arange(0, self.head_dim, 2, dtype=np.float32) / self.head_dim
        self.inv_freq = (1.0 / float(config.rope_theta) ** dims / ratio).astype(np.float32)

        self.layers = [
            _Layer(
                _array(layer.input_layernorm.weight),
                _array(layer.post_attention_layernorm.weight),
                _Linear.of(layer.self_attn.qkv_proj, quantization),
                _Linear.of(layer.self_attn.o_proj, quantization),
                _Linear.of(layer.mlp.up_gate_proj, quantization),
                _Linear.of(layer.mlp.down_proj, quantization),
            )
            for layer in model.ernie.layers
        ]
        self.embed = _array(model.ernie.embed_tokens.weight)
        self.norm = _array(model.ernie.norm.weight)
        head = _array(model.lm_head.weight)
        bias = getattr(model.lm_head, "bias", None)
        # [V, hidden] (a view): the tied embedding table as it is, an untied [hidden, V] transposed
        self.vocab_rows = head if config.tie_word_embeddings else head.T
        self.head_bias = None if bias is None else _array(bias)

    def new_cache(self, batch: int, capacity: int) -> list[np.ndarray]:
        """Keys and values of every layer: [2 * layers] arrays of [batch, kv_heads, capacity, head_dim]."""
        shape = (batch, self.kv_heads, capacity, self.head_dim)
        return [np.zeros(shape, dtype=np.float32) for _ in range(2 * len(self.layers))]

    def _norm(self, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        variance = np.mean(np.square(x), axis=-1, keepdims=True)
        return x / np.sqrt(variance + self.eps) * weight

    def _rope(self, x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        """ERNIE's RoPE rotates interleaved pairs (x[2i], x[2i+1]) by angle i; x is [B, S, heads, D]."""
        pairs = x.reshape(*x.shape[:-1], -1, 2)
        even, odd = pairs[..., 0], pairs[..., 1]
        out = np.empty_like(pairs)
        out[..., 0] = even * cos - odd * sin
        out[..., 1] = odd * cos + even * sin
        return out.reshape(x.shape)

    def forward(
        self, ids: np.ndarray, positions: np.ndarray, bias: np.ndarray, cache: list[np.ndarray], at: int
    ) -> np.ndarray:
        """Logits [B, V] of the last fed position of every row.

        ids / positions: [B, S]; the S new keys and values are written into `cache` at columns
        [at, at + S) and every query attends to columns [0, at + S) with the additive `bias`
        [B, S, at + S] (0 or -inf).
        """
        rows, steps = ids.shape
        heads, kv, dim = self.heads, self.kv_heads, self.head_dim
        end = at + steps
        angles = positions[..., None].astype(np.float32) * self.inv_freq
        cos, sin = np.cos(angles)[:, :, None], np.sin(angles)[:, :, None]  # [B, S, 1, D/2]
        x = self.embed[ids]  # [B, S, hidden]
        for i, w in enumerate(self.layers):
            qkv = w.qkv(self._norm(x, w.ln1))
            qkv = qkv.reshape(rows, steps, heads + 2 * kv, dim)
            q = self._rope(qkv[:, :, :heads], cos, sin)
            keys, values = cache[2 * i], cache[2 * i + 1]
            keys[:, :, at:end] = self._rope(qkv[:, :, heads : heads + kv], cos, sin).transpose(0, 2, 1, 3)
            values[:, :, at:end] = qkv[:, :, heads + kv :].transpose(0, 2, 1, 3)
            out = self._attend(q, keys[:, :, :end], values[:, :, :end], bias)
            x = x + w.o(out)
            gate_up = w.up_gate(self._norm(x, w.ln2))
            gate, up = gate_up[..., : self.inner], gate_up[..., self.inner :]
            x = x + w.down(gate / (1.0 + np.exp(-gate)) * up)  # SwiGLU: silu(gate) * up
        return self._logits(self._norm(x[:, -1], self.norm))

    def _logits(self, x: np.ndarray) -> np.ndarray:
        """x [B, hidden] @ the LM head -> [B, V] (a gemv for one row, else by blocks of vocabulary)."""
        out = (self.vocab_rows @ x[0])[None] if len(x) == 1 else _skinny_matmul(x, self.vocab_rows)
        return out if self.head_bias is None else out + self.head_bias

    def _attend(self, q: np.ndarray, keys: np.ndarray, values: np.ndarray, bias: np.ndarray) -> np.ndarray:
        """Softmax attention with GQA: q [B, S, heads, D], keys / values [B, kv, L, D] -> [B, S, heads * D].

        The query heads sharing a KV head are stacked as rows of one matmul (no repeated keys). A
        prompt is done per row and in query blocks, so the score matrix stays small.
        """
        rows, steps, heads, dim = q.shape
        kv, group = self.kv_heads, heads // self.kv_heads
        q = q.reshape(rows, steps, kv, group, dim).transpose(0, 2, 3, 1, 4)  # [B, kv, group, S, D]
        out = np.empty((rows, kv, group, steps, dim), dtype=np.float32)
        block = rows if steps == 1 else 1  # decode: every row at once; prefill: a row at a time
        for r in range(0, rows, block):
            k, v = keys[r : r + block], values[r : r + block]
            for s in range(0, steps, 256):
                qs = q[r : r + block, :, :, s : s + 256]
                n, width = qs.shape[3], k.shape[2]
                scores = qs.reshape(-1, kv, group * n, dim) @ k.swapaxes(-1, -2)
                scores = scores.reshape(-1, kv, group, n, width) * self.scale
                scores += bias[r : r + block, None, None, s : s + n]
                scores -= scores.max(axis=-1, keepdims=True)  # every row has a valid column: finite
                np.exp(scores, out=scores)
                scores /= scores.sum(axis=-1, keepdims=True)
                mixed = scores.reshape(-1, kv, group * n, width) @ v
                out[r : r + block, :, :, s : s + n] = mixed.reshape(-1, kv, group, n, dim)
        return out.transpose(0, 3, 1, 2, 4).reshape(rows, steps, heads * dim)


def release_linears(model: Any) -> None:
    """Free the memory of ERNIEKit's attention and MLP weights (the engine computes with copies)."""
    for layer in model.ernie.layers:
        for block in (layer.self_attn, layer.mlp):
            for param in block.parameters():
                param._clear_data()


def _array(param: Any) -> np.ndarray:
    """A zero-copy, read-only numpy view of a Paddle parameter's memory (DLPack)."""
    return np.from_dlpack(param.detach())


@dataclass(frozen=True)
class _Linear:
    """y = x @ W + b, with W kept transposed ([out, in], contiguous: a copy of Paddle's [in, out]).

    OpenBLAS's gemm at a handful of rows (decoding a batch) is about twice as fast with the weight as
    the left operand in [out, in] layout, taken a block of output rows at a time, as x @ W (measured
    at 4 and 8 rows on the 0.3B shapes); one row (gemv) and prompt-sized inputs are as fast either way.
    """

    weight_t: np.ndarray  # [out, in]
    bias: np.ndarray | None

    @classmethod
    def of(cls, layer: Any, quantization: str | None = None) -> _Linear:
        """A copy of LAYER's weights (Paddle's own can then be freed, `release_linears`), quantized
        and dequantized as FastDeploy's weight-only QUANTIZATION computes with them (None: as they are)."""
        bias = getattr(layer, "bias", None)
        weight_t = fake_quantize(np.ascontiguousarray(_array(layer.weight).T), quantization)
        return cls(weight_t, None if bias is None else np.array(_array(bias)))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        flat = x.reshape(-1, x.shape[-1])  # one 2-D gemm over all rows, not one per batch row
        if len(flat) == 1:  # gemv down contiguous rows
            y = (self.weight_t @ flat[0])[None]
        elif len(flat) <= 32:
            y = _skinny_matmul(flat, self.weight_t)
        else:
            y = flat @ self.weight_t.T
        y = y.reshape(*x.shape[:-1], -1)
        return y if self.bias is None else y + self.bias


def _skinny_matmul(x: np.ndarray, rows: np.ndarray, block: int = 1024) -> np.ndarray:
    """x [M, in] @ rows.T for a few rows of x, `rows` [out, in] taken `block` output rows at a time."""
    out_t = np.empty((rows.shape[0], x.shape[0]), dtype=np.float32)
    x_t = np.ascontiguousarray(x.T)
    for start in range(0, rows.shape[0], block):
        np.matmul(rows[start : start + block], x_t, out=out_t[start : start + block])
    return out_t.T


@dataclass(frozen=True)
class _Layer:
    ln1: np.ndarray  # RMSNorm weights before attention / before the MLP
    ln2: np.ndarray
    qkv: _Linear
    o: _Linear
    up_gate: _Linear  # [hidden, 2 * inner]: the gate half, then the up half
    down: _Linear
