"""What logprobs cost the portable engine: output tokens/s of one workload in four modes.

  plain          no logprobs
  logprobs       each token's logprob (the contract's return_log_probs; chat logprobs=true)
  top_logprobs   + each token's raw logits row handed back (return_generation_logits) and its top 5
                 computed from it (engines/logprobs.py), as the gateway does for top_logprobs
  echo           prompt logprobs: every prompt position's logits row (return_context_logits) and the
                 prompt tokens' logprobs computed from them; prefix caching is off for these requests

The model is a random-weight Llama of the shape given (no downloads); the vocabulary size matters most,
since every row handed back is `vocab` floats.

    python -m benchmarks.logprobs_cost                       # CPU, a small model with a 49,152 vocabulary
    python -m benchmarks.logprobs_cost --device cuda --dtype bfloat16 --hidden 2048 --layers 16 --vocab 32000 \
        --requests 64 --kv-cache-bytes 0

Results: benchmarks/results/logprobs_cost_<device>.json and .md.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.results_io import add_out_argument, command_line, commit, utc_now, write_result
from engines.logprobs import token_logprobs, top_logprobs
from engines.portable.config import EngineConfig
from engines.portable.engine import LLMEngine
from engines.portable.sampling import SamplingParams

MODES = ("plain", "logprobs", "top_logprobs", "echo")


def random_checkpoint(path: Path, hidden: int, layers: int, vocab: int) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=hidden, intermediate_size=hidden * 4, num_hidden_layers=layers,
                         num_attention_heads=max(1, hidden // 64), num_key_value_heads=max(1, hidden // 256),
                         vocab_size=vocab, max_position_embeddings=4096, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def params_of(mode: str, output_len: int) -> SamplingParams:
    return SamplingParams(max_new_tokens=output_len, temperature=1.0, seed=1, ignore_end_id=True,
                          return_logprobs=mode != "plain", return_generation_logits=mode == "top_logprobs",
                          return_context_logits=mode == "echo")


def run_mode(engine: LLMEngine, mode: str, prompts: list[list[int]], output_len: int) -> dict:
    start = time.perf_counter()
    outputs = engine.generate_outputs(prompts, params_of(mode, output_len))
    for prompt, output in zip(prompts, outputs, strict=True):  # the gateway's share of the work
        if mode == "top_logprobs":
            for rows in output.choices[0].logits:
                for row in rows.numpy():
                    top_logprobs(row, 5)
        if mode == "echo":
            token_logprobs(output.context_logits.numpy(), prompt)
    elapsed = time.perf_counter() - start
    tokens = sum(len(output.choices[0].token_ids) for output in outputs)
    return {"mode": mode, "seconds": round(elapsed, 3), "output_tokens": tokens,
            "output_tokens_per_s": round(tokens / elapsed, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="runs per mode, interleaved; the best is kept")
    parser.add_argument("--kv-cache-bytes", type=int, default=256 << 20,
                        help="the engine's KV cache (0 on CUDA: what the GPU has free)")
    add_out_argument(parser)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = random_checkpoint(Path(tmp) / "model", args.hidden, args.layers, args.vocab)
        engine = LLMEngine.from_checkpoint(checkpoint, EngineConfig(
            device=args.device, dtype=args.dtype, enable_prefix_caching=False,
            kv_cache_memory_bytes=args.kv_cache_bytes))
        generator = torch.Generator().manual_seed(0)
        prompts = [torch.randint(3, args.vocab, (args.prompt_len,), generator=generator).tolist()
                   for _ in range(args.requests)]
        run_mode(engine, "plain", prompts[:2], 4)  # warm-up
        best: dict[str, dict] = {}
        for _ in range(args.repeats):
            for mode in MODES:
                result = run_mode(engine, mode, prompts, args.output_len)
                if mode not in best or result["output_tokens_per_s"] > best[mode]["output_tokens_per_s"]:
                    best[mode] = result
    plain = best["plain"]["output_tokens_per_s"]
    rows = [{**best[mode], "relative_to_plain": round(best[mode]["output_tokens_per_s"] / plain, 3)}
            for mode in MODES]
    record = {
        "benchmark": "logprobs_cost",
        "date": utc_now(), "command": command_line("benchmarks.logprobs_cost", argv),
        "commit": commit(), "host": platform.node(), "cpu_count": torch.get_num_threads(),
        "load_average": os.getloadavg(),  # at the end: on a shared machine the figures move with it
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu",
        "model": {"hidden": args.hidden, "layers": args.layers, "vocab": args.vocab, "dtype": args.dtype},
        "workload": {"requests": args.requests, "prompt_len": args.prompt_len, "output_len": args.output_len},
        "results": rows,
    }
    tag = "cpu" if args.device == "cpu" else "gpu"
    write_result(args.out, f"logprobs_cost_{tag}", record, _markdown(record))


def _markdown(record: dict) -> str:
    model, work = record["model"], record["workload"]
    lines = [f"# Cost of logprobs in the portable engine ({record['device']})", "",
             f"{record['date']}, commit {record['commit']}, `{record['command']}`; 1-minute load average at "
             f"the end {record['load_average'][0]:.1f} on {record['cpu_count']} threads", "",
             f"Random Llama: hidden {model['hidden']}, {model['layers']} layers, vocabulary {model['vocab']}, "
             f"{model['dtype']}; {work['requests']} requests x {work['prompt_len']} prompt / {work['output_len']} "
             "output tokens, all submitted at once, sampled at temperature 1.", "",
             "| mode | output tok/s | vs plain |", "|---|---|---|"]
    lines += [f"| {row['mode']} | {row['output_tokens_per_s']} | {row['relative_to_plain']:.2f} |"
              for row in record["results"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
