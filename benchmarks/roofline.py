"""Memory-bandwidth roofline for decoder-only LLMs: bytes moved per decode step and per prefill, and
the tokens/s they allow at a measured device-copy bandwidth.

A decode step must read every weight once (the embedding table aside: only the batch's rows), read
each sequence's KV cache (up to the sliding window) and write one new K/V row per sequence and layer.
A prefill must read the weights and write the prompt's K/V; it is usually bound by arithmetic instead,
so its floor is the larger of bytes / bandwidth and FLOPs / matmul rate.

    python -m benchmarks.roofline --model llama-2-7b --bandwidth 3.0e12
    python -m benchmarks.roofline --model mistral-7b --measure      # on a GPU: measure both ceilings
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass

# Exact shapes of the public checkpoints (their config.json), as transformers config arguments.
MODEL_CONFIGS = {
    "llama-2-7b": dict(
        architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=32000, hidden_size=4096,
        intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
        max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
        hidden_act="silu"),
    "mistral-7b": dict(
        architectures=["MistralForCausalLM"], model_type="mistral", vocab_size=32000, hidden_size=4096,
        intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        max_position_embeddings=32768, rms_norm_eps=1e-5, rope_theta=10000.0, sliding_window=4096,
        tie_word_embeddings=False, hidden_act="silu"),
}


@dataclass(frozen=True)
class ModelShape:
    name: str
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    sliding_window: int | None = None
    tied_embeddings: bool = False
    dtype_bytes: int = 2  # bf16

    @classmethod
    def from_config(cls, name: str, raw: dict) -> "ModelShape":
        heads = raw["num_attention_heads"]
        return cls(name=name, vocab=raw["vocab_size"], hidden=raw["hidden_size"],
                   intermediate=raw["intermediate_size"], layers=raw["num_hidden_layers"], heads=heads,
                   kv_heads=raw.get("num_key_value_heads") or heads,
                   head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
                   sliding_window=raw.get("sliding_window"),
                   tied_embeddings=bool(raw.get("tie_word_embeddings", False)))

    @classmethod
    def named(cls, name: str) -> "ModelShape":
        return cls.from_config(name, MODEL_CONFIGS[name])

    @property
    def layer_params(self) -> int:
        attention = self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)
        return attention + 3 * self.hidden * self.intermediate + 2 * self.hidden

    @property
    def params(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return self.layers * self.layer_params + embeddings + self.hidden

    @property
    def matmul_params(self) -> int:
        """Weights that every token multiplies (all but the embedding lookup)."""
        return self.layers * self.layer_params + self.vocab * self.hidden

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes

    def visible(self, context: int) -> int:
        return min(context, self.sliding_window) if self.sliding_window else context


def decode_step_bytes(shape: ModelShape, context_lens: list[int]) -> dict:
    """One decode step for a batch whose sequences hold `context_lens` tokens (the new one included)."""
    batch = len(context_lens)
    weights = (shape.matmul_params + batch * shape.hidden) * shape.dtype_bytes  # + embedding rows
    kv_read = sum(shape.visible(n) for n in context_lens) * shape.kv_bytes_per_token
    kv_write = batch * shape.kv_bytes_per_token
    return {"weights": weights, "kv_read": kv_read, "kv_write": kv_write, "total": weights + kv_read + kv_write}


def prefill_cost(shape: ModelShape, prompt_lens: list[int]) -> dict:
    """Bytes and FLOPs of one prefill pass over whole prompts (causal attention, window honoured)."""
    tokens = sum(prompt_lens)
    weights = shape.matmul_params * shape.dtype_bytes
    kv_write = tokens * shape.kv_bytes_per_token
    matmul_flops = 2 * tokens * shape.matmul_params
    attended = sum(sum(shape.visible(i + 1) for i in range(n)) for n in prompt_lens)
    attention_flops = 4 * shape.layers * shape.heads * shape.head_dim * attended
    return {"bytes": weights + kv_write, "weights": weights, "kv_write": kv_write,
            "flops": matmul_flops + attention_flops}


def decode_roofline_tokens_per_s(shape: ModelShape, context_lens: list[int], bandwidth: float) -> float:
    return len(context_lens) * bandwidth / decode_step_bytes(shape, context_lens)["total"]


def batch1_decode_roofline(shape: ModelShape, prompt_len: int, new_tokens: int, bandwidth: float) -> dict:
    """Tokens/s of decoding `new_tokens` after a prompt, one sequence, at the bandwidth floor."""
    seconds = sum(decode_step_bytes(shape, [prompt_len + i])["total"] for i in range(1, new_tokens + 1)) / bandwidth
    return {"tokens_per_s": new_tokens / seconds,
            "bytes_per_step": decode_step_bytes(shape, [prompt_len + new_tokens // 2])}


def workload_roofline(shape: ModelShape, requests: int, prompt_len: int, output_len: int, bandwidth: float,
                      matmul_flops_per_s: float | None = None) -> dict:
    """All requests arrive at once: one prefill of every prompt (its last position yields the first
    output token), then output_len - 1 decode steps of the whole batch. Output tokens/s at the floor."""
    prefill = prefill_cost(shape, [prompt_len] * requests)
    prefill_s = prefill["bytes"] / bandwidth
    if matmul_flops_per_s:
        prefill_s = max(prefill_s, prefill["flops"] / matmul_flops_per_s)
    decode_bytes = sum(decode_step_bytes(shape, [prompt_len + step] * requests)["total"]
                       for step in range(1, output_len))
    decode_s = decode_bytes / bandwidth
    total_s = prefill_s + decode_s
    return {"output_tokens_per_s": requests * output_len / total_s, "seconds": total_s,
            "prefill_seconds": prefill_s, "decode_seconds": decode_s, "prefill_flops": prefill["flops"],
            "decode_bytes": decode_bytes}


def measure_copy_bandwidth(nbytes: int = 2 << 30, repeats: int = 20) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written (median)."""
    import torch

    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    times = []
    for index in range(repeats + 3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        if index >= 3:
            times.append(start.elapsed_time(end) / 1e3)
    times.sort()
    del src, dst
    torch.cuda.empty_cache()
    return 2 * nbytes / times[len(times) // 2]


def measure_matmul_rate(size: int = 8192, repeats: int = 10) -> float:
    """bf16 matrix-product rate in FLOP/s on random data (median)."""
    import torch

    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    times = []
    for index in range(repeats + 3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        if index >= 3:
            times.append(start.elapsed_time(end) / 1e3)
    times.sort()
    return 2 * size ** 3 / times[len(times) // 2]


def report(shape: ModelShape, bandwidth: float, matmul_rate: float | None, requests: int, prompt_len: int,
           output_len: int, batch1_tokens: int) -> dict:
    return {
        "model": asdict(shape), "params": shape.params, "weight_bytes": shape.params * shape.dtype_bytes,
        "kv_bytes_per_token": shape.kv_bytes_per_token, "bandwidth_bytes_per_s": bandwidth,
        "matmul_flops_per_s": matmul_rate,
        "batch1": batch1_decode_roofline(shape, prompt_len, batch1_tokens, bandwidth),
        "workload": {"requests": requests, "prompt_len": prompt_len, "output_len": output_len,
                     **workload_roofline(shape, requests, prompt_len, output_len, bandwidth, matmul_rate)},
        "prefill": prefill_cost(shape, [prompt_len] * requests),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODEL_CONFIGS), default="llama-2-7b")
    parser.add_argument("--bandwidth", type=float, default=3.0e12, help="bytes/s (read + write)")
    parser.add_argument("--matmul-rate", type=float, default=None, help="bf16 FLOP/s for the prefill floor")
    parser.add_argument("--measure", action="store_true", help="measure bandwidth and matmul rate on the GPU")
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--output-len", type=int, default=256)
    parser.add_argument("--batch1-tokens", type=int, default=128)
    args = parser.parse_args(argv)
    bandwidth, rate = args.bandwidth, args.matmul_rate
    if args.measure:
        bandwidth, rate = measure_copy_bandwidth(), measure_matmul_rate()
    result = report(ModelShape.named(args.model), bandwidth, rate, args.requests, args.prompt_len,
                    args.output_len, args.batch1_tokens)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
