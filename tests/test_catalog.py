"""The model catalog is internally consistent and finds models by any of their names."""

from __future__ import annotations

import pytest

from ernie_ops.catalog import MODELS, find_model
from ernie_ops.errors import UserError

PUBLIC = (
    "ERNIE-4.5-0.3B",
    "ERNIE-4.5-21B-A3B",
    "ERNIE-4.5-21B-A3B-Thinking",
    "ERNIE-4.5-300B-A47B",
    "ERNIE-4.5-VL-28B-A3B",
    "ERNIE-4.5-VL-28B-A3B-Thinking",
    "ERNIE-4.5-VL-424B-A47B",
)


def test_every_public_model_is_in_the_catalog():
    assert set(PUBLIC) <= set(MODELS)


@pytest.mark.parametrize("name", PUBLIC)
def test_shapes_are_consistent(name):
    s = MODELS[name]
    assert s.num_heads % s.num_kv_heads == 0, "GQA groups must be whole"
    assert s.active_params_b <= s.total_params_b
    assert s.vocab_size == 103424
    if s.is_moe:
        assert 0 < s.experts_per_token <= s.num_experts
        assert s.moe_intermediate_size > 0
        assert s.architecture in ("Ernie4_5_MoeForCausalLM", "Ernie4_5_VLMoeForConditionalGeneration")
        assert s.active_params_b < s.total_params_b
    else:
        assert s.architecture == "Ernie4_5_ForCausalLM"
    assert s.is_vl == ("-VL-" in name)


def test_kv_cache_per_token_of_the_0_3b():
    # 2 (K and V) x 18 layers x 2 KV heads x 128 head dim x 2 bytes (bf16)
    assert MODELS["ERNIE-4.5-0.3B"].kv_cache_bytes_per_token() == 18432


@pytest.mark.parametrize(
    "query, expected",
    [
        ("baidu/ERNIE-4.5-21B-A3B-Paddle", "ERNIE-4.5-21B-A3B"),
        ("ernie-4.5-0.3b-pt", "ERNIE-4.5-0.3B"),
        ("baidu/ERNIE-4.5-300B-A47B-Base-Paddle", "ERNIE-4.5-300B-A47B"),
        ("ERNIE-4.5-VL-28B-A3B-Thinking", "ERNIE-4.5-VL-28B-A3B-Thinking"),
    ],
)
def test_find_model_by_hub_id_or_name(query, expected):
    assert find_model(query).name == expected


def test_unknown_model_suggests_the_closest():
    with pytest.raises(UserError) as err:
        find_model("ERNIE-4.5-300B-A74B")
    assert "ERNIE-4.5-300B-A47B" in err.value.hint
