"""LoRA in the TensorRT-LLM plan: trtllm-build's LoRA flags, the adapters' memory written out by hand, the
backend's LoRA cache parameters, and the engine check.

Llama-2-7B, rank 16 on all seven projections, one adapter in float16:
per layer 16 × (4·(4096+4096) + 2·(4096+11008) + (11008+4096)) = 16 × 78,080 = 1,249,280 weights;
× 32 layers × 2 B = 79,953,920 B; eight adapters 639,631,360 B.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from engines.checkpoint import load_model_config
from engines.plan import BuildPaths, PlanError, check_engine_config, make_plan
from engines.profiles import ProfileError, get_profile
from engines.repository import TrtllmSettings, parse_config_pbtxt, render_config_pbtxt

REFERENCE = Path(__file__).resolve().parents[2] / "engines" / "reference_configs"
PATHS = BuildPaths("/ckpt", "/work/tllm_checkpoint", "/out/model_repository/tensorrt_llm/1", "/examples")


def plan_for(model: str, profile: str, **overrides):
    return make_plan(load_model_config(REFERENCE / model), get_profile(profile, **overrides), PATHS, model)


def test_llama2_7b_with_eight_rank16_adapters_by_hand():
    plan = plan_for("llama-2-7b", "h100-80gb", dtype="float16", max_loras=8, max_lora_rank=16)
    build = " ".join(plan.build_command)
    assert build.endswith("--lora_plugin float16 --lora_target_modules attn_q attn_k attn_v attn_dense "
                          "mlp_h_to_4h mlp_4h_to_h mlp_gate --max_lora_rank 16")
    lora, chosen = plan.lora, plan.chosen
    assert lora["adapter_bytes_per_gpu"] == 79_953_920
    assert lora["device_cache_bytes"] == 8 * 79_953_920
    free = 80 * 2**30 - chosen.weight_bytes_per_gpu - chosen.reserve_bytes_per_gpu
    assert lora["left_after_kv_cache_bytes"] == free - chosen.kv_budget_bytes_per_gpu  # 0.1 of free
    fraction = lora["lora_cache_gpu_memory_fraction"]
    assert 0 < fraction <= 1 and fraction * lora["left_after_kv_cache_bytes"] >= lora["device_cache_bytes"]
    without = plan_for("llama-2-7b", "h100-80gb", dtype="float16")
    # the plugin's workspace: max_num_tokens 8192 × rank 16 × 7 modules × 2 B
    assert chosen.reserve_bytes_per_gpu - without.chosen.reserve_bytes_per_gpu == 8192 * 16 * 7 * 2
    assert "--lora_plugin" not in without.build_command and without.lora == {}


def test_backend_parameters_and_config_pbtxt():
    plan = plan_for("mistral-7b", "a100-80gb", max_loras=4, max_lora_rank=32)
    settings = TrtllmSettings(lora_cache=plan.lora)
    parameters = settings.parameters()
    assert parameters["lora_cache_gpu_memory_fraction"] == str(plan.lora["lora_cache_gpu_memory_fraction"])
    assert parameters["lora_cache_max_adapter_size"] == "32"
    assert parameters["lora_cache_optimal_adapter_size"] == "8"
    assert int(parameters["lora_cache_host_memory_bytes"]) >= 1 << 30
    config = parse_config_pbtxt(render_config_pbtxt("tensorrtllm", parameters, trtllm_version="0.12.0"))
    inputs = {tensor.name: tensor for tensor in config.input}
    from tritonclient.grpc import model_config_pb2

    assert inputs["lora_weights"].data_type == model_config_pb2.TYPE_FP16
    assert list(inputs["lora_config"].dims) == [-1, 3]
    assert "lora_cache_gpu_memory_fraction" not in TrtllmSettings().parameters()


def test_qkv_are_adapted_together_and_bad_settings_are_refused():
    plan = plan_for("llama-2-7b", "a100-80gb", max_loras=2, lora_target_modules=("attn_q", "mlp_4h_to_h"))
    assert plan.lora["target_modules"] == ["attn_q", "attn_k", "attn_v", "mlp_4h_to_h"]
    with pytest.raises(ProfileError, match="LoRA needs --dtype float16"):
        get_profile("h100-80gb", max_loras=2)  # bfloat16 by default
    with pytest.raises(ProfileError, match=r"\['q_proj'\] are not among"):
        get_profile("a100-80gb", max_loras=2, lora_target_modules=("q_proj",))
    with pytest.raises(PlanError, match="LoRA cache for 2000 adapters"):
        plan_for("llama-2-7b", "a100-80gb", max_loras=2000, max_lora_rank=64, tp_size=1)


def test_engine_check_sees_a_missing_lora_plugin():
    plan = plan_for("llama-2-7b", "a100-80gb", max_loras=2, max_lora_rank=8)
    engine = {"build_config": {"max_batch_size": 128, "max_input_len": 2048, "max_seq_len": 4096,
                               "max_num_tokens": 8192,
                               "plugin_config": {"paged_kv_cache": True, "remove_input_padding": True,
                                                 "use_paged_context_fmha": True, "lora_plugin": None}},
              "pretrained_config": {"mapping": {"tp_size": 1, "pp_size": 1}, "dtype": "float16",
                                    "architecture": "LlamaForCausalLM", "quantization": {"quant_algo": None}}}
    problems = check_engine_config(engine, plan)
    assert any("without the LoRA plugin" in p for p in problems)
    engine["build_config"]["plugin_config"]["lora_plugin"] = "float16"
    engine["build_config"]["lora_config"] = {"max_lora_rank": 8, "lora_target_modules": plan.lora["target_modules"]}
    assert check_engine_config(engine, plan) == []
