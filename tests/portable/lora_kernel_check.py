"""The LoRA kernels against the torch path (LoraSlots.delta) on real slots of a demo checkpoint: adapters of
different ranks, modules left out, tokens of the base (-1) and of every slot in one batch.

Run as a module so the CPU test can start it under TRITON_INTERPRET=1 (read when the kernels are defined):
    python -m tests.portable.lora_kernel_check CHECKPOINT DEVICE DTYPE
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from engines.lora_format import AdapterWeights
from engines.portable.config import ModelConfig
from engines.portable.lora import PROJECTIONS, LoraSlots, adapter_from_weights, model_shapes

SLOTS, MAX_RANK = 3, 16


def random_adapter(config: ModelConfig, seed: int, rank: int) -> AdapterWeights:
    rng, weights = np.random.default_rng(seed), {}
    for layer in range(config.num_layers):
        for module, (features_in, features_out) in model_shapes(config).features.items():
            if (seed + layer) % 3 == 0 and module in ("k_proj", "up_proj"):
                continue  # modules an adapter leaves out
            weights[(layer, module)] = (rng.standard_normal((rank, features_in)).astype(np.float32) * 0.1,
                                        rng.standard_normal((features_out, rank)).astype(np.float32) * 0.1)
    return AdapterWeights(weights)


def worst_error(checkpoint: str, device: str, dtype: torch.dtype) -> float:
    from engines.portable import lora_kernels

    config = ModelConfig.from_dir(checkpoint)
    slots = LoraSlots(config, SLOTS, MAX_RANK, torch.device(device), dtype)
    for seed, rank in enumerate((16, 8, 12)):
        slots.acquire(adapter_from_weights(f"adapter-{seed}", random_adapter(config, seed, rank)), set())
    worst = 0.0
    for tokens in (1, 5, 37):
        gen = torch.Generator().manual_seed(tokens)
        token_slots = torch.randint(-1, SLOTS, (tokens,), generator=gen).to(device)
        for layer in range(config.num_layers):
            for projection, modules in PROJECTIONS.items():
                a_all, b_all = slots.layers[layer][projection]
                x = torch.randn(tokens, a_all.shape[1], generator=gen).to(device, dtype)
                base = torch.randn(tokens, b_all.shape[0], generator=gen).to(device, dtype)
                expected = base.float() + slots.delta(layer, projection, x, token_slots).float()
                got = lora_kernels.add_lora(base.clone(), x, a_all, b_all, token_slots, SLOTS, len(modules),
                                            MAX_RANK, slots.row_offsets[projection]).float()
                worst = max(worst, ((got - expected).norm() / expected.norm()).item())
    return worst


if __name__ == "__main__":
    print(worst_error(sys.argv[1], sys.argv[2], getattr(torch, sys.argv[3])))
