"""How many KV-cache blocks the engine gets, and the context length it can therefore serve.

The served context is what one sequence can hold: the model's (or the configured) maximum length, capped to
the whole KV pool. vLLM refuses to start when one full context does not fit; the portable engine serves the
shorter context instead and says so in its log, and the artifact's manifest records the same number so the
gateway's default max_tokens (context minus prompt) never asks the engine for more than it holds.
"""
from __future__ import annotations

import logging

import torch

from engines.portable.config import EngineConfig, ModelConfig

log = logging.getLogger(__name__)

GPU_RESERVE_BYTES = 3 << 30  # activations, logits, CUDA graphs and the allocator's slack
# CPU "auto" budget: one full context, never less than room for a few concurrent chats, and never more than
# vLLM's CPU default (VLLM_CPU_KVCACHE_SPACE, 4 GiB): SmolLM2-135M's 8192 tokens take 360 MiB in fp32.
CPU_KV_CACHE_MIN_BYTES = 256 << 20
CPU_KV_CACHE_MAX_BYTES = 4 << 30


def block_bytes(model: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    element = torch.tensor([], dtype=dtype).element_size()
    return 2 * model.num_layers * block_size * model.num_kv_heads * model.head_dim * element


def cpu_auto_budget(model: ModelConfig, block_size: int, dtype: torch.dtype, max_model_len: int) -> int:
    one_context = -(-max_model_len // block_size) * block_bytes(model, block_size, dtype)
    return min(max(one_context, CPU_KV_CACHE_MIN_BYTES), CPU_KV_CACHE_MAX_BYTES)


def kv_cache_blocks(model: ModelConfig, engine: EngineConfig, dtype: torch.dtype, max_model_len: int) -> int:
    """Blocks of the KV pool: given, or from a byte budget. A budget of 0 ("auto") takes, on CUDA, what the GPU
    has free (weights already loaded) up to `gpu_memory_utilization` of it, less a reserve; on CPU, one full
    context within [CPU_KV_CACHE_MIN_BYTES, CPU_KV_CACHE_MAX_BYTES]."""
    if engine.num_kv_blocks is not None:
        return engine.num_kv_blocks
    per_block = block_bytes(model, engine.block_size, dtype)
    budget = engine.kv_cache_memory_bytes
    if budget <= 0 and engine.device.startswith("cuda"):
        free, total = torch.cuda.mem_get_info(torch.device(engine.device))
        budget = int(free - (1.0 - engine.gpu_memory_utilization) * total) - GPU_RESERVE_BYTES
    elif budget <= 0:
        budget = cpu_auto_budget(model, engine.block_size, dtype, max_model_len)
    if budget < per_block:
        raise ValueError(f"KV-cache budget of {budget} bytes holds not one block of {per_block} bytes")
    return budget // per_block


def served_context_length(max_model_len: int, num_blocks: int, block_size: int) -> int:
    capacity = num_blocks * block_size
    if capacity < max_model_len:
        log.warning("the KV cache holds %d tokens, less than the model's context of %d: serving a context of %d "
                    "tokens (raise kv_cache_memory_bytes to serve the whole context)", capacity, max_model_len,
                    capacity)
    return min(max_model_len, capacity)


def planned_context_length(model: ModelConfig, engine: EngineConfig, dtype: torch.dtype) -> int:
    """The context an engine with this configuration will serve, known before it starts wherever the KV pool
    does not depend on a GPU's free memory (there: the model's own length; the engine logs if it serves less)."""
    max_model_len = engine.max_model_len or model.max_position_embeddings
    if engine.num_kv_blocks is None and engine.kv_cache_memory_bytes <= 0 and engine.device.startswith("cuda"):
        return max_model_len
    blocks = kv_cache_blocks(model, engine, dtype, max_model_len)
    return min(max_model_len, blocks * engine.block_size)
