"""The portable model's config.pbtxt parameters -> EngineConfig."""
from __future__ import annotations

import pytest

from engines.repository import PortableSettings
from engines.triton.engine_settings import cancellation_check_period_s, engine_config_from_parameters


def test_kv_cache_is_sized_by_the_engine_by_default():
    params = PortableSettings().parameters()
    assert params["kv_cache_memory_bytes"] == "auto"
    cpu = engine_config_from_parameters({**params, "device": "cpu"})
    assert (cpu.device, cpu.dtype, cpu.kv_cache_memory_bytes) == ("cpu", "float32", 0)  # 0: one full context
    gpu = engine_config_from_parameters({**params, "device": "cuda"})
    assert (gpu.device, gpu.dtype, gpu.kv_cache_memory_bytes) == ("cuda", "bfloat16", 0)  # 0: the GPU's free memory


def test_explicit_settings_pass_through():
    params = PortableSettings(device="cuda", dtype="float16", kv_cache_memory_bytes=3 << 30, max_num_seqs=8,
                              max_num_batched_tokens=1024, enable_prefix_caching=False).parameters()
    config = engine_config_from_parameters(params)
    assert (config.device, config.dtype, config.kv_cache_memory_bytes) == ("cuda", "float16", 3 << 30)
    assert (config.max_num_seqs, config.max_num_batched_tokens, config.enable_prefix_caching) == (8, 1024, False)


def test_cancellation_check_period_mirrors_tensorrt_llm():
    assert cancellation_check_period_s(PortableSettings().parameters()) == 0.1
    assert cancellation_check_period_s(PortableSettings(cancellation_check_period_ms=20).parameters()) == 0.02
    with pytest.raises(ValueError, match="cancellation_check_period_ms"):
        cancellation_check_period_s({"cancellation_check_period_ms": "0"})
