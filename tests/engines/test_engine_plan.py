"""Plans for the published Llama-2 and Mistral configs, with the memory arithmetic written out.

Units: GiB = 2**30 (GPU capacity), GB = 1e9 (how model sizes are usually quoted).
A100-40GB = 40 GiB = 42,949,672,960 B; the 80 GB cards = 85,899,345,920 B.
Reserve per GPU = 2 GiB runtime + max_num_tokens × (4·hidden + 2·intermediate/TP) × 2 B + max_batch × vocab/TP × 4 B.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from engines.checkpoint import load_model_config
from engines.plan import BuildPaths, PlanError, check_engine_config, make_plan
from engines.profiles import PROFILES, ProfileError, get_profile

REFERENCE = Path(__file__).resolve().parents[2] / "engines" / "reference_configs"
PATHS = BuildPaths("/ckpt", "/work/tllm_checkpoint", "/out/model_repository/tensorrt_llm/1", "/examples")
MODELS = ("llama-2-7b", "llama-2-13b", "llama-2-70b", "mistral-7b")


def plan_for(model: str, profile: str, **overrides):
    return make_plan(load_model_config(REFERENCE / model), get_profile(profile, **overrides), PATHS, model)


def test_llama2_7b_on_a100_40gb_by_hand():
    plan = plan_for("llama-2-7b", "a100-40gb")
    # Parameters: embed + lm_head 2 × 32000 × 4096 = 262,144,000
    #   per layer: q,k,v,o 4 × 4096² = 67,108,864; MLP 3 × 4096 × 11008 = 135,266,304; norms 2 × 4096
    #   32 layers × 202,383,360 = 6,476,267,520; + final norm 4096 → 6,738,415,616 (the published 6.74B)
    assert plan.parameters == 6_738_415_616
    chosen = plan.chosen
    assert chosen.tp_size == 1
    # fp16 weights: 6.74e9 × 2 B = 13,476,831,232 B ≈ 13.5 GB, all on one GPU.
    assert chosen.weight_bytes_per_gpu == 13_476_831_232
    # KV per token = 2 (K,V) × 32 layers × 32 KV heads × 128 head_dim × 2 B = 524,288 B = 512 KiB.
    assert plan.kv_bytes_per_token == 2 * 32 * 32 * 128 * 2 == 512 * 1024
    # Reserve: 2 GiB + 8192 × (4·4096 + 2·11008) × 2 = 629,145,600 + 64 × 32000 × 4 = 8,192,000.
    assert chosen.reserve_bytes_per_gpu == 2 * 2**30 + 629_145_600 + 8_192_000 == 2_784_821_248
    # Left: 42,949,672,960 − 13,476,831,232 − 2,784,821,248 = 26,688,020,480; × 0.9 = 24,019,218,432.
    assert chosen.kv_budget_bytes_per_gpu == 24_019_218_432
    # 24,019,218,432 / 524,288 = 45,813 tokens → 11 sequences of 4096 tokens.
    assert chosen.max_kv_tokens == 45_813
    assert chosen.max_concurrent_sequences == 11


def test_llama2_70b_on_a100_40gb_needs_tp4():
    plan = plan_for("llama-2-70b", "a100-40gb")
    # 68.98e9 parameters × 2 B = 137.95 GB. TP=1: 138 GB > 42.9 GB; TP=2: 69 GB per GPU > 42.9 GB.
    # TP=4: linear layers 80 × (2·8192² + 2·8192·1024 + 3·8192·28672) = 68,451,041,280 params × 2 B / 4
    #       = 34,225,520,640; norms (80·2·8192 + 8192) × 2 = 2,637,824; embed + lm_head 2 × 262,144,000 / 4
    #       → 34,490,302,464 B ≈ 34.5 GB per GPU, leaving room for the KV cache.
    assert plan.parameters == 68_976_648_192
    assert [c.tp_size for c in plan.candidates] == [1, 2, 4]
    assert not plan.candidates[0].fits and not plan.candidates[1].fits
    assert "exceed 42.95 GB per GPU" in plan.candidates[1].reason
    assert plan.tp_size == 4
    assert plan.chosen.weight_bytes_per_gpu == 34_490_302_464
    # GQA: 8 KV heads. KV per token = 2 × 80 × 8 × 128 × 2 = 327,680 B for the model, / 4 GPUs = 81,920 B.
    assert plan.kv_bytes_per_token == 327_680
    assert plan.chosen.kv_bytes_per_token_per_gpu == 81_920
    # 42.95 − 34.49 − 2.92 (reserve) = 5.53 GB; × 0.9 = 4.98 GB; / 81,920 B ≈ 60.8k tokens = 14 × 4096.
    assert plan.chosen.max_concurrent_sequences == 14
    assert any("needs TP=4" in note for note in plan.notes)


def test_llama2_13b_on_a100_40gb_goes_to_tp2_for_kv_room():
    plan = plan_for("llama-2-13b", "a100-40gb")
    # 13.02e9 × 2 B = 26.03 GB fits one 42.9 GB card, but KV per token is 2 × 40 × 40 × 128 × 2 = 819,200 B:
    # (42.95 − 26.03 − 3.51 reserve) × 0.9 = 12.58 GB holds 15,352 tokens = 3 sequences of 4096 < 4 required.
    first = plan.candidates[0]
    assert first.tp_size == 1 and first.max_kv_tokens == 15_352 and first.max_concurrent_sequences == 3
    assert not first.fits
    assert plan.tp_size == 2
    assert plan.chosen.weight_bytes_per_gpu == pytest.approx(13.02e9, rel=0.01)


def test_mistral_7b_gqa_kv_cache():
    plan = plan_for("mistral-7b", "a100-40gb")
    # 7,241,732,096 params (MLP 3 × 4096 × 14336 per layer; k,v 4096 × 1024) × 2 B = 14.48 GB.
    assert plan.parameters == 7_241_732_096
    assert plan.chosen.weight_bytes_per_gpu == 14_483_464_192
    # 8 KV heads: 2 × 32 × 8 × 128 × 2 = 131,072 B = 128 KiB per token, a quarter of Llama-2-7B's.
    assert plan.kv_bytes_per_token == 131_072
    assert plan.tp_size == 1
    assert plan.chosen.max_concurrent_sequences >= 40


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_reference_model_plans_on_every_profile(model, profile):
    plan = plan_for(model, profile)
    chosen = plan.chosen
    gpu = PROFILES[profile].gpu.memory_bytes
    assert chosen.fits and chosen.tp_size * chosen.pp_size <= 8
    # The three parts never exceed the card, and the KV cache gets exactly the configured fraction of the rest.
    left = gpu - chosen.weight_bytes_per_gpu - chosen.reserve_bytes_per_gpu
    assert chosen.kv_budget_bytes_per_gpu == int(left * 0.9)
    assert chosen.max_kv_tokens == chosen.kv_budget_bytes_per_gpu // chosen.kv_bytes_per_token_per_gpu
    assert chosen.max_concurrent_sequences >= 4
    assert f"--tp_size {chosen.tp_size}" in " ".join(plan.convert_command)


def test_expected_tp_per_profile():
    expected = {  # 80 GB cards hold 70B fp16 at TP=2 (69 GB/GPU); 13B fits one 80 GB card.
        ("llama-2-7b", "a100-40gb"): 1, ("llama-2-13b", "a100-40gb"): 2, ("llama-2-70b", "a100-40gb"): 4,
        ("mistral-7b", "a100-40gb"): 1, ("llama-2-13b", "a100-80gb"): 1, ("llama-2-70b", "a100-80gb"): 2,
        ("llama-2-70b", "h100-80gb"): 2, ("mistral-7b", "h100-80gb"): 1,
    }
    for (model, profile), tp in expected.items():
        assert plan_for(model, profile).tp_size == tp, (model, profile)


def test_quantization_shrinks_weights_and_tp():
    # int4 AWQ: 0.5 B + one fp16 scale per 128 weights for the linear layers: 70B fits A100-40GB at TP=2.
    plan = plan_for("llama-2-70b", "a100-40gb", quantization="int4_awq")
    assert plan.tp_size == 2
    assert plan.convert_command[1].endswith("/quantization/quantize.py")
    assert ["--qformat", "int4_awq"] == plan.convert_command[plan.convert_command.index("--qformat"):][:2]
    int8 = plan_for("llama-2-7b", "a100-40gb", quantization="int8_weight_only")
    assert int8.chosen.weight_bytes_per_gpu < 7.2e9  # ≈ 6.48e9 linear params × 1 B + 0.26e9 × 2 B
    command = " ".join(int8.convert_command)
    assert "--use_weight_only --weight_only_precision int8" in command


def test_fp8_on_h100_and_refused_on_a100():
    plan = plan_for("llama-2-70b", "h100-80gb", quantization="fp8")
    # FP8 weights (1 B) and FP8 KV cache: 2 × 80 × 8 × 128 × 1 = 163,840 B per token.
    assert plan.kv_bytes_per_token == 163_840
    assert "--kv_cache_dtype fp8" in " ".join(plan.convert_command)
    assert "--use_fp8_context_fmha enable" in " ".join(plan.build_command)
    for profile in ("a100-40gb", "a100-80gb"):
        with pytest.raises(ProfileError, match="FP8 needs Hopper"):
            get_profile(profile, quantization="fp8")


def test_build_command_flags():
    plan = plan_for("llama-2-70b", "a100-40gb")
    build = " ".join(plan.build_command)
    for flag in ("--gpt_attention_plugin float16", "--gemm_plugin float16", "--context_fmha enable",
                 "--paged_kv_cache enable", "--remove_input_padding enable", "--use_fused_mlp enable",
                 "--use_paged_context_fmha enable", "--multiple_profiles enable", "--max_batch_size 64",
                 "--max_input_len 2048", "--max_seq_len 4096", "--max_num_tokens 8192", "--workers 4",
                 "--checkpoint_dir /work/tllm_checkpoint", "--output_dir /out/model_repository/tensorrt_llm/1"):
        assert flag in build, flag
    assert plan.build_command[0] == "trtllm-build"
    convert = " ".join(plan.convert_command)
    assert convert.startswith("python3 /examples/llama/convert_checkpoint.py --model_dir /ckpt")
    for flag in ("--output_dir /work/tllm_checkpoint", "--dtype float16", "--tp_size 4", "--pp_size 1",
                 "--use_parallel_embedding"):
        assert flag in convert, flag


def test_too_big_at_any_tp_fails_with_numbers():
    big = load_model_config(REFERENCE / "llama-2-70b")
    from dataclasses import replace
    huge = replace(big, hidden_size=16384, intermediate_size=53248, num_layers=126, num_heads=128)  # ~405B
    with pytest.raises(PlanError) as err:
        make_plan(huge, get_profile("a100-40gb"), PATHS, "huge")
    message = str(err.value)
    assert "does not fit profile a100-40gb" in message
    for tp in (1, 2, 4, 8):
        assert f"tp={tp} pp=1" in message
    assert "exceed 42.95 GB per GPU" in message


def test_explicit_tp_and_lengths_are_checked():
    with pytest.raises(PlanError, match="tp=1 pp=1"):
        plan_for("llama-2-70b", "a100-40gb", tp_size=1)
    with pytest.raises(PlanError, match="max_position_embeddings 4096"):
        plan_for("llama-2-7b", "a100-40gb", max_seq_len=8192)
    with pytest.raises(ProfileError, match="power of two"):
        get_profile("a100-40gb", tp_size=3)
    assert plan_for("llama-2-7b", "a100-40gb", tp_size=2).tp_size == 2


def test_engine_config_check():
    plan = plan_for("llama-2-70b", "a100-40gb")
    good = {
        "version": "0.12.0",
        "pretrained_config": {"architecture": "LlamaForCausalLM", "dtype": "float16",
                              "mapping": {"world_size": 4, "tp_size": 4, "pp_size": 1},
                              "quantization": {"quant_algo": None}},
        "build_config": {"max_batch_size": 64, "max_input_len": 2048, "max_seq_len": 4096, "max_num_tokens": 8192,
                         "plugin_config": {"paged_kv_cache": True, "remove_input_padding": True,
                                           "use_paged_context_fmha": True}},
    }
    assert check_engine_config(good, plan) == []
    bad = {**good, "build_config": {**good["build_config"], "max_seq_len": 2048}}
    assert check_engine_config(bad, plan) == ["build_config.max_seq_len is 2048, the plan says 4096"]


def test_beams_and_logits_reach_trtllm_build_and_cost_memory():
    plain = plan_for("llama-2-7b", "a100-80gb")
    assert "--max_beam_width 1" in " ".join(plain.build_command)
    assert not {"--gather_context_logits", "--gather_generation_logits"} & set(plain.build_command)
    assert any("--gather-context-logits" in note for note in plain.notes)  # the plan says what will be refused
    plan = plan_for("llama-2-7b", "a100-80gb", max_beam_width=4, gather_context_logits=True,
                    gather_generation_logits=True)
    assert plan.tp_size == plain.tp_size == 1
    build = plan.build_command
    assert build[build.index("--max_beam_width") + 1] == "4"
    assert "--gather_context_logits" in build and "--gather_generation_logits" in build
    # Logits rows of a step: 128 × 4 beams + 8192 context tokens, each 32000 × 4 B, instead of 128 rows.
    extra = (128 * 4 + 8192 - 128) * 32000 * 4
    assert plan.chosen.reserve_bytes_per_gpu == plain.chosen.reserve_bytes_per_gpu + extra
    # Each request holds 4 beams of up to 4096 tokens.
    assert plan.chosen.max_concurrent_sequences == plan.chosen.max_kv_tokens // (4096 * 4)
    assert "× 4 beams" in plan.chosen.reason
    assert any("exactly 4 beams" in note for note in plan.notes)
    assert not any("--gather" in note for note in plan.notes)


def test_max_beam_width_is_bounded():
    for bad in (0, 17):
        with pytest.raises(ProfileError, match="max_beam_width must be between 1 and 16"):
            get_profile("a100-40gb", max_beam_width=bad)


def test_engine_config_check_covers_beams_and_logits():
    plan = plan_for("llama-2-70b", "a100-40gb", max_beam_width=2, gather_generation_logits=True)
    build = {"max_batch_size": 64, "max_input_len": 2048, "max_seq_len": 4096, "max_num_tokens": 8192,
             "max_beam_width": 2, "gather_context_logits": False, "gather_generation_logits": True,
             "plugin_config": {"paged_kv_cache": True, "remove_input_padding": True, "use_paged_context_fmha": True}}
    good = {"pretrained_config": {"architecture": "LlamaForCausalLM", "dtype": "float16",
                                  "mapping": {"world_size": 4, "tp_size": 4, "pp_size": 1},
                                  "quantization": {"quant_algo": None}},
            "build_config": build}
    assert check_engine_config(good, plan) == []
    bad = {**good, "build_config": {**build, "max_beam_width": 1, "gather_generation_logits": False}}
    assert check_engine_config(bad, plan) == ["build_config.max_beam_width is 1, the plan says 2",
                                              "build_config.gather_generation_logits is False, the plan says True"]
