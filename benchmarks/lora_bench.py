"""What LoRA adapters cost the portable engine: the same load with adapters and on the base alone.

Writes a random-weight checkpoint of the chosen shape and random PEFT-format adapters (rank R on every
projection, B not zero), then measures in one process, on one device:
  (a) batch-1 greedy decode tokens/s: the base on an engine without adapters, then one adapter;
  (b) N concurrent requests spread over the adapters (round robin) against the same N on the base alone,
      the adapters already in their device slots (their first use is timed apart);
each as a ratio to the base. The base runs on an engine built without LoRA (max_loras=0), so the ratio
includes everything adapters add (the slot matmuls in every projection and in the CUDA graphs).

    python -m benchmarks.lora_bench --shape llama-2-7b --device cuda --adapters 8 --rank 16 --requests 64

Results: benchmarks/results/lora_<tag>.json and .md.
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from benchmarks.results_io import add_out_argument, commit, utc_now, write_result

MODULES = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
           "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}


def write_adapter(out: Path, config: dict, rank: int, seed: int) -> Path:
    """A PEFT LoRA adapter folder with random A and B (fp32), every projection of every layer."""
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    shapes = {"q_proj": (hidden, heads * head_dim), "k_proj": (hidden, kv_heads * head_dim),
              "v_proj": (hidden, kv_heads * head_dim), "o_proj": (heads * head_dim, hidden),
              "gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden)}
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(config["num_hidden_layers"]):
        for module, parent in MODULES.items():
            features_in, features_out = shapes[module]
            prefix = f"base_model.model.model.layers.{layer}.{parent}.{module}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, features_in, generator=generator) / features_in**0.5
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(features_out, rank, generator=generator) * 0.01
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": list(MODULES),
        "bias": "none", "lora_dropout": 0.0}))
    return out


def prompts_for(count: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [[1] + torch.randint(100, vocab - 1, (length - 1,), generator=generator).tolist() for _ in range(count)]


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def make_engine(checkpoint: Path, args, max_loras: int):
    from engines.portable.config import EngineConfig
    from engines.portable.engine import LLMEngine

    on_gpu = args.device.startswith("cuda")
    config = EngineConfig(device=args.device, dtype="bfloat16" if on_gpu else "float32",
                          kv_cache_memory_bytes=0 if on_gpu else 256 << 20, max_num_seqs=max(args.requests, 1),
                          max_num_batched_tokens=8192 if on_gpu else 1024,
                          max_model_len=args.prompt_len + args.output_len + 16, max_loras=max_loras,
                          max_lora_rank=args.rank, lora_kernel=args.lora_kernel)
    return LLMEngine.from_checkpoint(checkpoint, config)


def timed_generate(engine, prompts, new_tokens: int, loras, device: str) -> tuple[float, int]:
    from engines.portable.sampling import SamplingParams

    params = SamplingParams(max_new_tokens=new_tokens, temperature=0.0, end_id=None)
    synchronize(device)
    started = time.perf_counter()
    outputs = engine.generate(prompts, params, loras)
    synchronize(device)
    return time.perf_counter() - started, sum(len(o) for o in outputs)


def batch1_tokens_per_s(engine, prompt, new_tokens: int, lora, device: str) -> float:
    """Greedy decode tok/s of one request, timed from its first token (the prefill is left out)."""
    from engines.portable.sampling import SamplingParams

    timed_generate(engine, [prompt], 8, [lora], device)
    engine.add_request("batch1", prompt, SamplingParams(max_new_tokens=new_tokens, temperature=0.0, end_id=None), lora)
    produced = 0
    while produced == 0:
        produced += sum(len(out.new_token_ids) for out in engine.step())
    synchronize(device)
    started = time.perf_counter()
    while engine.has_unfinished():
        produced += sum(len(out.new_token_ids) for out in engine.step())
    synchronize(device)
    return (produced - 1) / (time.perf_counter() - started)


def workload_tokens_per_s(engine, prompts, new_tokens: int, loras, device: str) -> float:
    timed_generate(engine, prompts[:2], 4, loras[:2], device)
    seconds, produced = timed_generate(engine, prompts, new_tokens, loras, device)
    return produced / seconds


def run(args) -> dict:
    from benchmarks.random_checkpoint import write_checkpoint

    root = Path(args.work_dir or tempfile.mkdtemp(prefix="ingot-lora-bench-"))
    checkpoint = write_checkpoint(root / "checkpoint", args.shape, device=args.device, dtype="bfloat16",
                                  num_layers=args.num_layers)
    config = json.loads((checkpoint / "config.json").read_text())
    adapters = {f"adapter-{i}": write_adapter(root / f"adapter-{i}", config, args.rank, seed=i)
                for i in range(args.adapters)}
    prompts = prompts_for(args.requests, args.prompt_len, config["vocab_size"])
    names = list(adapters)
    spread = [names[i % len(names)] for i in range(len(prompts))]
    results: dict = {}

    engine = make_engine(checkpoint, args, max_loras=0)
    results["base_batch1_tok_s"] = batch1_tokens_per_s(engine, prompts[0], args.batch1_tokens, None, args.device)
    results["base_workload_tok_s"] = workload_tokens_per_s(engine, prompts, args.output_len, [None] * len(prompts),
                                                           args.device)
    del engine
    gc.collect()
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()

    engine = make_engine(checkpoint, args, max_loras=args.adapters)
    for name, path in adapters.items():
        engine.add_lora(name, path)
    # every adapter's first use copies it into its device slot: timed apart, so the loads below measure serving
    # adapters that are resident (as they are once a server has seen them; --adapters slots hold them all)
    results["first_use_of_all_adapters_s"], _ = timed_generate(engine, prompts[:len(names)], 2, names, args.device)
    results["lora_kernel"] = "triton" if engine.loras.slots.uses_kernel else "torch"
    results["lora_batch1_tok_s"] = batch1_tokens_per_s(engine, prompts[0], args.batch1_tokens, names[0], args.device)
    results["lora_workload_tok_s"] = workload_tokens_per_s(engine, prompts, args.output_len, spread, args.device)
    results["lora_engine_base_workload_tok_s"] = workload_tokens_per_s(engine, prompts, args.output_len,
                                                                      [None] * len(prompts), args.device)
    results["batch1_ratio"] = results["lora_batch1_tok_s"] / results["base_batch1_tok_s"]
    results["workload_ratio"] = results["lora_workload_tok_s"] / results["base_workload_tok_s"]
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    return {"settings": {**vars(args), "out": str(args.out)}, "device": device_name, "commit": commit(),
            "date": utc_now(), "torch": torch.__version__, "results": results}


def markdown(report: dict) -> str:
    s, r = report["settings"], report["results"]
    return "\n".join([
        f"# LoRA cost: {s['shape']}, {s['adapters']} adapters of rank {s['rank']} on every projection",
        "",
        f"{report['device']}, torch {report['torch']}, commit {report['commit']}, {report['date']}.",
        f"`python -m benchmarks.lora_bench --shape {s['shape']} --device {s['device']} --adapters {s['adapters']} "
        f"--rank {s['rank']} --requests {s['requests']} --prompt-len {s['prompt_len']} --output-len "
        f"{s['output_len']} --lora-kernel {s['lora_kernel']}` (LoRA path used: {r['lora_kernel']})",
        "",
        "| case | base alone (tok/s) | with adapters (tok/s) | ratio |",
        "|---|---|---|---|",
        f"| batch-1 decode, one adapter | {r['base_batch1_tok_s']:.1f} | {r['lora_batch1_tok_s']:.1f} | "
        f"{r['batch1_ratio']:.3f} |",
        f"| {s['requests']} requests over {s['adapters']} adapters, {s['prompt_len']}+{s['output_len']} tokens | "
        f"{r['base_workload_tok_s']:.1f} | {r['lora_workload_tok_s']:.1f} | {r['workload_ratio']:.3f} |",
        "",
        f"The same {s['requests']} requests on the base through the engine that holds the adapters: "
        f"{r['lora_engine_base_workload_tok_s']:.1f} tok/s (the slot matmuls run for every token).",
        f"Adapters are resident when timed: the first use of all {s['adapters']} (each copied into its device "
        f"slot) took {r['first_use_of_all_adapters_s']:.2f} s, measured apart.",
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="llama-2-7b")
    parser.add_argument("--num-layers", type=int, default=None, help="fewer layers, for a quick check")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--batch1-tokens", type=int, default=128)
    parser.add_argument("--lora-kernel", default="torch", choices=("auto", "triton", "torch"),
                        help="the per-token correction: Triton kernels (CUDA) or the torch masked matmuls")
    parser.add_argument("--work-dir", default=None)
    add_out_argument(parser, "benchmarks/results", "--out-dir")
    parser.add_argument("--tag", default=None)
    args = parser.parse_args(argv)
    report = run(args)
    tag = args.tag or f"{args.shape}_{args.device.split(':')[0]}"
    write_result(args.out, f"lora_{tag}", report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
