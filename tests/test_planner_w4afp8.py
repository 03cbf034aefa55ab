"""W4AFP8 in the memory planner: FastDeploy's online mix_quant of MoE models (dense block_wise_fp8,
INT4 experts with FP8 activations), Hopper only (#16)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ernie_ops.catalog import find_model
from ernie_ops.errors import UserError
from ernie_ops.serve.gpus import find_gpu
from ernie_ops.serve.planner import LOSS_ORDER, plan_serve, unsupported, weight_bytes

A3B = "ERNIE-4.5-21B-A3B"


def test_w4afp8_weights_are_fp8_dense_and_int4_experts_with_a_scale_per_128():
    m = find_model(A3B)
    w4 = weight_bytes(m, "w4afp8")
    fp8 = weight_bytes(m, "block_wise_fp8")
    wint4 = weight_bytes(m, "wint4")
    dense = next(v for k, v in w4.items() if k.startswith("attention"))
    assert dense == next(v for k, v in fp8.items() if k.startswith("attention"))  # fp8, as FastDeploy
    experts = next(v for k, v in w4.items() if k.startswith("experts"))
    bf16_experts = next(v for k, v in weight_bytes(m, "bf16").items() if k.startswith("experts"))
    assert experts / bf16_experts == pytest.approx((0.5 + 4 / 128) / 2)
    # a little more than wint4 (fp32 group scales), far less than fp8
    assert sum(wint4.values()) < sum(w4.values()) < 0.6 * sum(fp8.values())


def test_w4afp8_fits_21b_a3b_on_one_hopper_card_and_says_how_fastdeploy_runs_it():
    plan = plan_serve(A3B, "H800", quantization="w4afp8")
    assert plan.fits and plan.tensor_parallel == 1 and plan.quantization == "w4afp8"
    assert any("dense block_wise_fp8, experts INT4" in n for n in plan.notes)


@pytest.mark.parametrize(("gpu", "arch"), [("A100", "SM 8.0"), ("L20", "SM 8.9"), ("A10", "SM 8.6")])
def test_w4afp8_is_refused_off_hopper(gpu, arch):
    with pytest.raises(UserError, match=rf"Hopper \(SM 9\.0\) only; .*\({arch}\)") as err:
        plan_serve(A3B, gpu, quantization="w4afp8")
    assert "use wint4" in str(err.value.hint)


def test_w4afp8_is_refused_on_a_dense_model():
    with pytest.raises(UserError, match=r"ERNIE-4\.5-0\.3B has none"):
        plan_serve("ERNIE-4.5-0.3B", "H800", quantization="w4afp8")


def test_w4afp8_needs_the_expert_size_to_split_over_the_ranks():
    odd = replace(find_model(A3B), moe_intermediate_size=1538)
    assert "divisible by the 4 tensor-parallel ranks" in str(unsupported(odd, find_gpu("H800"), "w4afp8", 4))
    assert unsupported(find_model(A3B), find_gpu("H800"), "w4afp8", 4) is None


def test_w4afp8_is_only_planned_when_asked():
    assert "w4afp8" not in LOSS_ORDER
    plan = plan_serve(A3B, "H800")
    assert all(c["quantization"] != "w4afp8" for c in plan.considered)
