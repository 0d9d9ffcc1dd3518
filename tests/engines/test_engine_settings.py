"""The portable model's config.pbtxt parameters -> EngineConfig."""
from __future__ import annotations

import os

import pytest

from engines.repository import PortableSettings
from engines.triton.engine_settings import (
    apply_cpu_threads,
    cancellation_check_period_s,
    gil_switch_interval_s,
    cpu_has_fast_bfloat16,
    cpu_threads,
    engine_config_from_parameters,
    engine_in_process,
    response_sender_threads,
)


def test_kv_cache_is_sized_by_the_engine_by_default():
    params = PortableSettings().parameters()
    assert params["kv_cache_memory_bytes"] == "auto"
    cpu = engine_config_from_parameters({**params, "device": "cpu"})
    cpu_dtype = "bfloat16" if cpu_has_fast_bfloat16() else "float32"
    assert (cpu.device, cpu.dtype, cpu.kv_cache_memory_bytes) == ("cpu", cpu_dtype, 0)  # 0: one full context
    gpu = engine_config_from_parameters({**params, "device": "cuda"})
    assert (gpu.device, gpu.dtype, gpu.kv_cache_memory_bytes) == ("cuda", "bfloat16", 0)  # 0: the GPU's free memory


def test_explicit_settings_pass_through():
    params = PortableSettings(device="cuda", dtype="float16", kv_cache_memory_bytes=3 << 30, max_num_seqs=8,
                              max_num_batched_tokens=1024, enable_prefix_caching=False).parameters()
    config = engine_config_from_parameters(params)
    assert (config.device, config.dtype, config.kv_cache_memory_bytes) == ("cuda", "float16", 3 << 30)
    assert (config.max_num_seqs, config.max_num_batched_tokens, config.enable_prefix_caching) == (8, 1024, False)


def test_cpu_int8_weights_are_on_by_default_and_can_be_turned_off():
    assert engine_config_from_parameters(PortableSettings().parameters()).cpu_weights == "auto"
    params = PortableSettings(cpu_weights="dense").parameters()
    assert params["cpu_weights"] == "dense"
    assert engine_config_from_parameters(params).cpu_weights == "dense"


def test_cancellation_check_period_mirrors_tensorrt_llm():
    assert cancellation_check_period_s(PortableSettings().parameters()) == 0.1
    assert cancellation_check_period_s(PortableSettings(cancellation_check_period_ms=20).parameters()) == 0.02
    with pytest.raises(ValueError, match="cancellation_check_period_ms"):
        cancellation_check_period_s({"cancellation_check_period_ms": "0"})


def test_response_sender_threads_default_to_one_and_must_be_positive():
    assert response_sender_threads(PortableSettings().parameters()) == 1
    assert response_sender_threads(PortableSettings(response_sender_threads=3).parameters()) == 3
    with pytest.raises(ValueError, match="response_sender_threads"):
        response_sender_threads({"response_sender_threads": "0"})


def test_cpu_auto_dtype_follows_the_cpu_flags():
    flags = set(open("/proc/cpuinfo").read().split()) if os.path.exists("/proc/cpuinfo") else set()
    if flags:
        assert cpu_has_fast_bfloat16() == bool(flags & {"avx512_bf16", "amx_bf16"})
    fp32 = engine_config_from_parameters({**PortableSettings(device="cpu", dtype="float32").parameters()})
    assert fp32.dtype == "float32"  # what the fidelity tests pin


def test_cpu_threads_are_torchs_unless_set():
    assert cpu_threads("auto", "cpu") is None and cpu_threads("auto", "cuda") is None
    assert cpu_threads("3", "cpu") == 3
    assert PortableSettings(cpu_threads=2).parameters()["cpu_threads"] == "2"
    with pytest.raises(ValueError, match="cpu_threads"):
        cpu_threads("0", "cpu")


def test_threads_are_set_in_the_process_that_serves():
    import torch

    before = torch.get_num_threads()
    try:
        assert apply_cpu_threads({"device": "cpu", "cpu_threads": "1"}) == 1 and torch.get_num_threads() == 1
        assert apply_cpu_threads({"device": "cuda"}) is None and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_gil_switch_interval_is_half_a_millisecond_unless_set():
    assert gil_switch_interval_s(PortableSettings().parameters()) == 0.0005
    assert gil_switch_interval_s(PortableSettings(gil_switch_interval_us=None).parameters()) is None
    assert gil_switch_interval_s({}) is None  # repositories written before the parameter
    assert gil_switch_interval_s(PortableSettings(gil_switch_interval_us=500).parameters()) == 0.0005
    with pytest.raises(ValueError, match="gil_switch_interval_us"):
        gil_switch_interval_s({"gil_switch_interval_us": "0"})


def test_the_engine_gets_its_own_process_on_cuda_and_stays_in_the_stub_on_cpu():
    assert PortableSettings().parameters()["engine_process"] == "auto"
    assert not engine_in_process({**PortableSettings().parameters(), "device": "cuda"})
    assert engine_in_process({**PortableSettings().parameters(), "device": "cpu"})
    assert engine_in_process({"device": "cpu"})  # repositories written before the parameter
    assert not engine_in_process(PortableSettings(device="cpu", engine_process="true").parameters())
    assert engine_in_process(PortableSettings(device="cuda", engine_process="false").parameters())
    with pytest.raises(ValueError, match="engine_process"):
        engine_in_process({"engine_process": "sometimes"})
