"""Llama / Mistral forward over a flat batch of tokens from many sequences (RMSNorm, RoPE, GQA, SwiGLU)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from engines.portable.attention import AttentionMetadata, paged_attention, write_kv
from engines.portable.config import ModelConfig
from engines.portable.cpu_weights import linear
from engines.portable.rope import RotaryEmbedding


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


class CausalLM:
    def __init__(self, config: ModelConfig, weights: dict, max_positions: int, device: str, dtype: torch.dtype):
        self.config, self.weights = config, weights
        self.rope = RotaryEmbedding(config, max_positions, torch.device(device), dtype)
        self.q_size = config.num_heads * config.head_dim
        self.kv_size = config.num_kv_heads * config.head_dim
        self.scale = config.head_dim ** -0.5
        # the fused elementwise kernels (GPU, half precision): see engines.portable.kernels.fused
        self.fused = dtype in (torch.bfloat16, torch.float16)
        self.lora = None  # engines.portable.lora.LoraSlots, set by the engine when it serves adapters

    def _project(self, index: int, name: str, x: torch.Tensor, out: torch.Tensor,
                 token_slots: torch.Tensor | None) -> torch.Tensor:
        """A projection's output plus each token's LoRA correction (none for the base, slot -1)."""
        if self.lora is None or token_slots is None:
            return out
        return self.lora.add_delta(index, name, x, out, token_slots)

    def _attention(self, index: int, layer: dict, x: torch.Tensor, angles: tuple[torch.Tensor, torch.Tensor],
                   meta: AttentionMetadata, cache: tuple[torch.Tensor, torch.Tensor],
                   slots: torch.Tensor | None) -> torch.Tensor:
        cfg = self.config
        qkv = self._project(index, "qkv", x, linear(x, layer["qkv"]), slots)
        # q and k rotated in one pass: [T, heads + kv_heads, D]
        qk = self.rope.rotate(qkv[:, :self.q_size + self.kv_size].view(-1, cfg.num_heads + cfg.num_kv_heads,
                                                                         cfg.head_dim), *angles)
        q, k = qk[:, :cfg.num_heads], qk[:, cfg.num_heads:]
        v = qkv[:, self.q_size + self.kv_size:].view(-1, cfg.num_kv_heads, cfg.head_dim)
        write_kv(cache[0], cache[1], k, v, meta)
        out = paged_attention(q, cache[0], cache[1], meta, self.scale).reshape(-1, self.q_size)
        return self._project(index, "o", out, linear(out, layer["o"]), slots)

    def _mlp(self, index: int, layer: dict, x: torch.Tensor, slots: torch.Tensor | None) -> torch.Tensor:
        gate, up = self._project(index, "gate_up", x, linear(x, layer["gate_up"]), slots).chunk(2, dim=-1)
        act = F.silu(gate) * up
        return self._project(index, "down", act, linear(act, layer["down"]), slots)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
                lora_slots: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states [T, hidden] after the final norm; `lora_slots` [T]: each token's adapter slot or -1."""
        if meta.gpu is not None and self.fused:
            return self._forward_fused(input_ids, positions, meta, kv_caches, lora_slots)
        eps = self.config.rms_norm_eps
        hidden = F.embedding(input_ids, self.weights["embed"])
        angles = self.rope.angles(positions)  # once per step, not per layer
        for index, (layer, cache) in enumerate(zip(self.weights["layers"], kv_caches, strict=True)):
            hidden = hidden + self._attention(index, layer, rms_norm(hidden, layer["input_norm"], eps), angles,
                                              meta, cache, lora_slots)
            hidden = hidden + self._mlp(index, layer, rms_norm(hidden, layer["post_norm"], eps), lora_slots)
        return rms_norm(hidden, self.weights["norm"], eps)

    def _forward_fused(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                       kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
                       slots: torch.Tensor | None = None) -> torch.Tensor:
        """The same forward with the GPU kernels: the residual add rides in the next norm's kernel,
        rotary embedding in the K/V write, SiLU * up in one pass."""
        from engines.portable import kernels

        cfg, eps = self.config, self.config.rms_norm_eps
        hidden, residual = F.embedding(input_ids, self.weights["embed"]), None
        for index, (layer, (k_cache, v_cache)) in enumerate(zip(self.weights["layers"], kv_caches, strict=True)):
            def linear(x: torch.Tensor, name: str) -> torch.Tensor:
                return self._project(index, name, x, self._linear(x, layer[name]), slots)  # noqa: B023

            x, residual = kernels.add_rms_norm(hidden, residual, layer["input_norm"], eps)
            q = kernels.rope_write_kv(linear(x, "qkv"), positions, self.rope.cos, self.rope.sin,
                                      k_cache, v_cache, meta.slot_mapping, cfg.num_heads, cfg.num_kv_heads)
            attention = paged_attention(q, k_cache, v_cache, meta, self.scale)
            hidden = linear(attention.reshape(-1, self.q_size), "o")
            x, residual = kernels.add_rms_norm(hidden, residual, layer["post_norm"], eps)
            hidden = linear(kernels.silu_mul(linear(x, "gate_up")), "down")
        return kernels.add_rms_norm(hidden, residual, self.weights["norm"], eps)[0]

    def _linear(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The GPU path's projections: the Triton GEMV for one token where it beats cuBLAS (measured at
        M = 1 only), cuBLAS otherwise."""
        from engines.portable import kernels
        from engines.portable.kernels.matvec import MAX_K

        if x.shape[0] == 1 and weight.shape[1] <= MAX_K:
            return kernels.gemv(x, weight)
        return F.linear(x, weight)

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.fused and hidden.is_cuda:
            return self._linear(hidden, self.weights["lm_head"]).float()
        return linear(hidden, self.weights["lm_head"]).float()
