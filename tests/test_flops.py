"""FLOP counts of llm/flops.py on a config small enough to count by hand, and the CPU peak."""

from types import SimpleNamespace

import pytest

from dagster_betag.llm.flops import (
    LMShape,
    cpu_mhz,
    cpu_peak,
    forward_flops,
    lora_adapter_params,
    lora_step_flops,
    token_flops,
)

# hidden 8, 2 heads of 4, 1 kv head, MLP 16, 2 layers, vocab 10
TINY = SimpleNamespace(
    hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
    vocab_size=10, head_dim=4,
)


def tiny() -> LMShape:
    return LMShape.from_config(TINY)


def test_shape_from_config_counts_the_matmul_weights():
    shape = tiny()
    assert (shape.attention_width, shape.kv_width) == (8, 4)
    # q 8x8 + k 8x4 + v 8x4 + o 8x8 + gate 8x16 + up 8x16 + down 16x8 = 64+32+32+64+128+128+128
    assert shape.layer_params == 576
    assert shape.lm_head_params == 80
    assert shape.matmul_params() == 2 * 576 + 80
    assert shape.matmul_params(lm_head=False) == 1152


def test_head_dim_and_kv_heads_default_from_the_other_fields():
    config = SimpleNamespace(**{**vars(TINY), "head_dim": None, "num_key_value_heads": None})
    shape = LMShape.from_config(config)
    assert (shape.head_dim, shape.kv_heads, shape.kv_width) == (4, 2, 8)


def test_token_flops_is_twice_the_weights_plus_attention():
    # 2 x 1232 + 4 x 2 layers x 3 keys x 8 = 2464 + 192
    assert token_flops(tiny(), 3) == 2656
    assert token_flops(tiny(), 3, lm_head=False) == 2 * 1152 + 192


def test_forward_flops_sums_tokens_over_growing_context():
    shape = tiny()
    # 2 tokens after 3 cached ones, logits at the last only: contexts 4 and 5
    expected = token_flops(shape, 4, lm_head=False) + token_flops(shape, 5)
    assert forward_flops(shape, 2, past=3, lm_head_tokens=1) == expected == 5344
    # a decoding step is one token at context past + 1
    assert forward_flops(shape, 1, past=9) == token_flops(shape, 10)
    assert forward_flops(shape, 0, past=5) == 0
    with pytest.raises(ValueError):
        forward_flops(shape, -1)


def test_lora_step_counts_frozen_backward_as_one_forward():
    shape = tiny()
    # adapters on q (8 -> 8) and v (8 -> 4), rank 2: 2 layers x (2 x 16 + 2 x 12)
    assert lora_adapter_params(shape, 2, ["q_proj", "v_proj"]) == 112
    # one sequence of 3: matmuls 2 x 1232 x 3 = 7392, attention 4 x 2 x 8 x (1+2+3) = 384, adapters 2 x 112 x 3 = 672
    frozen = lora_step_flops(shape, [3], rank=2, target_modules=["q_proj", "v_proj"])
    assert frozen == 2 * 7392 + 3 * 384 + 3 * 672 == 17952
    full = lora_step_flops(shape, [3], rank=2, target_modules=["q_proj", "v_proj"], weight_grads=True)
    assert full == 3 * (7392 + 384 + 672)
    both = lora_step_flops(shape, [3, 3], rank=2, target_modules=["q_proj", "v_proj"])
    assert both == 2 * frozen
    with pytest.raises(ValueError, match="unknown target"):
        lora_adapter_params(shape, 2, ["qkv"])


def test_smollm2_size_matches_the_docstring():
    smollm2 = LMShape(hidden=576, intermediate=1536, layers=30, heads=9, kv_heads=3, vocab=49152, head_dim=64)
    assert smollm2.matmul_params(lm_head=False) == 106_168_320
    assert smollm2.lm_head_params == 28_311_552
    assert token_flops(smollm2, 1) - token_flops(smollm2, 0) == 69_120


def test_cpu_mhz_prefers_the_override_then_lscpu_max_then_cpuinfo(monkeypatch):
    monkeypatch.delenv("BETAG_CPU_MHZ", raising=False)
    cpuinfo = "processor\t: 0\ncpu MHz\t\t: 2500.0\nprocessor\t: 1\ncpu MHz\t\t: 2700.0\n"
    assert cpu_mhz(cpuinfo, lscpu="Model name: x\n") == (2600.0, "/proc/cpuinfo")
    assert cpu_mhz(cpuinfo, lscpu="CPU max MHz:  3700.0000\n") == (3700.0, "lscpu max")
    monkeypatch.setenv("BETAG_CPU_MHZ", "3000")
    assert cpu_mhz(cpuinfo, lscpu="CPU max MHz: 3700\n") == (3000.0, "BETAG_CPU_MHZ")
    monkeypatch.delenv("BETAG_CPU_MHZ")
    with pytest.raises(RuntimeError, match="BETAG_CPU_MHZ"):
        cpu_mhz("", lscpu="")


def test_cpu_peak_is_cores_times_clock_times_flop_per_cycle():
    peak = cpu_peak(cores=2, mhz=2600.0)
    assert peak.flops == 2 * 2600e6 * 32 == 166.4e9
    assert "2 cores x 2.600 GHz (override) x 32 FLOP/cycle = 166.4 GFLOP/s" == peak.formula()
    assert cpu_peak().cores >= 1


# --- the int8 precision of llm/model.py (what its FLOPs are measured against in bench/) ----------


def test_int8_loads_float32_then_quantizes_and_reports_int8(tmp_path):
    import torch

    from dagster_betag.llm.model import LLMConfig, ModelError, load_llm, model_identity, resolve_dtype, resolve_precision
    from tests.test_llm_model import save_tiny_model

    assert resolve_dtype("int8", "cpu") == torch.float32
    assert resolve_precision("int8", "cpu") == "int8"
    assert resolve_precision("auto", "cpu") == "float32"
    with pytest.raises(ModelError, match="CPU only"):
        resolve_dtype("int8", "cuda")
    with pytest.raises(ModelError, match="int8"):
        resolve_dtype("int4", "cpu")

    folder = save_tiny_model(tmp_path / "tiny-llama")
    config = LLMConfig(model=str(folder), dtype="int8", device="cpu")
    llm = load_llm(config, cache_dir=tmp_path / "cache")
    assert llm.precision == "int8" and llm.identity == model_identity(config, cache_dir=tmp_path / "cache")
    assert not any(type(m) is torch.nn.Linear for m in llm.model.modules())
    reference = load_llm(LLMConfig(model=str(folder), device="cpu"), cache_dir=tmp_path / "cache")
    ids = llm.tokenizer("1. alpha", return_tensors="pt").input_ids
    with torch.inference_mode():
        quantized, exact = llm.model(input_ids=ids).logits, reference.model(input_ids=ids).logits
    assert quantized.shape == exact.shape and torch.allclose(quantized, exact, atol=0.1 * float(exact.abs().max()))
