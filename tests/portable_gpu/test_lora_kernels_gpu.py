"""The Triton LoRA kernels on a CUDA GPU: the same numbers as the torch path (bf16), and an engine serving
several adapters and the base in one batch gives the same greedy tokens with either path (fp32, CUDA graphs)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.portable import kernels
from engines.portable.config import EngineConfig, ModelConfig
from engines.portable.engine import LLMEngine
from engines.portable.sampling import SamplingParams
from tests.portable.lora_kernel_check import random_adapter, worst_error

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not kernels.available(), reason=f"needs a CUDA GPU: {kernels.unavailable_reason()}")]


@pytest.mark.parametrize("kind", ["llama", "mistral"])
def test_kernels_match_the_torch_path(kind, demo_checkpoints):
    assert worst_error(str(demo_checkpoints[kind]), "cuda", torch.bfloat16) < 2e-2


@pytest.mark.parametrize("kind", ["llama", "mistral"])
def test_engine_greedy_tokens_equal_with_kernels_and_torch(kind, demo_checkpoints):
    config = ModelConfig.from_dir(demo_checkpoints[kind])
    generator = torch.Generator().manual_seed(5)
    prompts = [[1] + torch.randint(5, 500, (n,), generator=generator).tolist() for n in (4, 19, 33, 8, 27, 12)]
    names = ["a", None, "b", "c", "a", "b"]
    outputs = {}
    for path in ("torch", "triton"):
        engine = LLMEngine.from_checkpoint(demo_checkpoints[kind], EngineConfig(
            device="cuda", dtype="float32", max_loras=3, max_lora_rank=16, lora_kernel=path,
            kv_cache_memory_bytes=64 << 20))
        for seed, name in enumerate(("a", "b", "c")):
            engine.add_lora_weights(name, random_adapter(config, seed, (16, 8, 12)[seed]))
        params = [SamplingParams(max_new_tokens=24, temperature=0.0) for _ in prompts]
        outputs[path] = engine.generate(prompts, params, names)
        assert engine.loras.slots.uses_kernel == (path == "triton")
    assert outputs["triton"] == outputs["torch"]
    assert np.mean([len(o) for o in outputs["triton"]]) == 24
