"""KV-cache sizing and the served context length (engines/portable/kv_budget.py)."""
from __future__ import annotations

import pytest
import torch

from engines.portable.config import EngineConfig, ModelConfig
from engines.portable.kv_budget import (
    CPU_KV_CACHE_MAX_BYTES,
    CPU_KV_CACHE_MIN_BYTES,
    block_bytes,
    kv_cache_blocks,
    planned_context_length,
)
from engines.repository import PortableSettings
from engines.targets.portable import served_context

SMOLLM2 = {"architectures": ["LlamaForCausalLM"], "vocab_size": 49152, "hidden_size": 576,
           "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
           "max_position_embeddings": 8192, "rope_theta": 100000.0, "tie_word_embeddings": True}


def smollm2(**changes) -> ModelConfig:
    return ModelConfig.from_dict({**SMOLLM2, **changes})


def test_cpu_auto_budget_holds_one_full_context():
    model, engine = smollm2(), EngineConfig(device="cpu", kv_cache_memory_bytes=0)
    per_block = block_bytes(model, 16, torch.float32)
    assert per_block == 2 * 30 * 16 * 3 * 64 * 4  # 46,080 bytes a token
    blocks = kv_cache_blocks(model, engine, torch.float32, 8192)
    assert blocks * 16 >= 8192 and blocks * per_block > CPU_KV_CACHE_MIN_BYTES  # 360 MiB, over the 256 MiB floor
    assert planned_context_length(model, engine, torch.float32) == 8192


def test_cpu_auto_budget_keeps_a_floor_and_a_ceiling():
    engine = EngineConfig(device="cpu", kv_cache_memory_bytes=0)
    short = smollm2(max_position_embeddings=512)
    assert kv_cache_blocks(short, engine, torch.float32, 512) == CPU_KV_CACHE_MIN_BYTES // block_bytes(
        short, 16, torch.float32)
    huge = smollm2(max_position_embeddings=131072, num_key_value_heads=9)  # 138 KiB a token: 17 GiB a context
    served = planned_context_length(huge, engine, torch.float32)
    assert served == CPU_KV_CACHE_MAX_BYTES // block_bytes(huge, 16, torch.float32) * 16 < 131072


def test_an_explicit_budget_caps_the_served_context():
    engine = EngineConfig(device="cpu", kv_cache_memory_bytes=128 << 20)
    assert planned_context_length(smollm2(), engine, torch.float32) == (128 << 20) // (46080 * 16) * 16  # 2912
    shorter = EngineConfig(device="cpu", max_model_len=1024, kv_cache_memory_bytes=128 << 20)
    assert planned_context_length(smollm2(), shorter, torch.float32) == 1024


def test_on_cuda_auto_the_model_context_is_planned():
    # the pool is sized from the GPU's free memory when the engine starts; the engine logs if it serves less
    assert planned_context_length(smollm2(), EngineConfig(device="cuda", kv_cache_memory_bytes=0),
                                  torch.bfloat16) == 8192


@pytest.mark.parametrize("kv_bytes,expected", [(None, 8192), (128 << 20, 2912)])
def test_the_manifest_records_the_served_context(kv_bytes, expected):
    settings = PortableSettings(device="cpu", dtype="float32", kv_cache_memory_bytes=kv_bytes)
    assert served_context(SMOLLM2, settings) == expected
