"""What constrained decoding costs in the portable engine: N JSON-schema requests against N unconstrained ones.

Both sides run the same prompts with the same sampling through `LLMEngine.generate` (all requests at once),
after a warm-up that puts every prompt in the prefix cache, so each timed run reuses the same prefill;
the constrained side gives every request one of `--schemas` distinct JSON schemas (round robin), so the
grammar cache compiles each schema once and hits for the rest. The schemas ask for long arrays of small
objects, so every constrained request, like every unconstrained one, runs to `--output-len` tokens: the two
sides keep the same batch at every step and the ratio measures the grammar's cost alone (mask filled on the
host, applied in the sampler, the matcher advanced), not a difference in answer lengths. Both sides run the
pipelined CUDA-graph decode, greedy and sampled: the sampler is queued on the device behind each forward, and
a grammar row's bitmask is filled on the host while that forward runs. The host time spent filling bitmasks
and advancing matchers is reported per constrained step, to compare with the step time.

GPU (the lead's H100, Llama-2-7B shape, random weights made on the device):

    python -m benchmarks.random_checkpoint /tmp/llama-2-7b-random --shape llama-2-7b --device cuda
    python -m benchmarks.grammar_bench --checkpoint /tmp/llama-2-7b-random --device cuda --tag h100_llama2_7b

CPU (the demo checkpoint): python -m benchmarks.grammar_bench --demo --device cpu --requests 16 --output-len 64

Results go to benchmarks/results/grammar_<tag>.json and .md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.results_io import commit

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_RATIO = 0.90


def schema(index: int) -> dict:
    """A long answer: at least 64 small objects (each some 15 tokens); field names differ per schema."""
    item = {"type": "object",
            "properties": {f"id_{index}": {"type": "integer", "minimum": 0, "maximum": 9999},
                           "name": {"type": "string", "maxLength": 16},
                           "kind": {"enum": ["alpha", "beta", "gamma"]},
                           "score": {"type": "number", "minimum": -1, "maximum": 1}},
            "required": [f"id_{index}", "name", "kind", "score"], "additionalProperties": False}
    return {"type": "object", "properties": {"items": {"type": "array", "items": item, "minItems": 64}},
            "required": ["items"], "additionalProperties": False}


def make_engine(args):
    from engines.portable.config import EngineConfig
    from engines.portable.engine import LLMEngine

    checkpoint = Path(args.checkpoint) if args.checkpoint else None
    if args.demo:
        from engines.demo import make_demo_checkpoint

        checkpoint = make_demo_checkpoint("llama", Path(tempfile.mkdtemp()) / "demo-llama")
    if args.kv_cache_gib:
        overrides = {"kv_cache_memory_bytes": args.kv_cache_gib << 30}
    else:  # on CUDA, 0 sizes the cache by what the GPU has free
        overrides = {"kv_cache_memory_bytes": 0} if args.device == "cuda" else {}
    dtype = "bfloat16" if args.device == "cuda" else "float32"
    config = EngineConfig(device=args.device, dtype=dtype, max_num_seqs=args.requests,
                          max_num_batched_tokens=max(2048, args.requests * args.prompt_len), **overrides)
    return LLMEngine.from_checkpoint(checkpoint, config), checkpoint


def run_side(engine, prompts, params, timeline: bool = False) -> dict:
    recorder = engine.record_timeline() if timeline else None
    if engine.config.device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    outputs = engine.generate(prompts, params)
    if engine.config.device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    tokens = sum(len(out) for out in outputs)
    result = {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
              "min_tokens": min(len(out) for out in outputs)}
    if recorder is not None:
        result["timeline"] = recorder.summary()
    return result


def measure(engine, args, temperature: float) -> dict:
    from engines.portable.grammar import Guide
    from engines.portable.sampling import SamplingParams

    vocab = engine.model_config.vocab_size
    generator = torch.Generator().manual_seed(0)
    prompts = [[1] + torch.randint(3, vocab, (args.prompt_len - 1,), generator=generator).tolist()
               for _ in range(args.requests)]

    def params(guide):
        return [SamplingParams(max_new_tokens=args.output_len, temperature=temperature, seed=index, end_id=None,
                               guide=guide(index)) for index in range(args.requests)]

    def guided(index):
        return Guide("json_schema", json.dumps(schema(index % args.schemas)))

    # Warm-up over every prompt: graphs and allocator, and the prompts' KV blocks in the prefix cache, so
    # that no timed side pays a prefill the others reuse.
    run_side(engine, prompts, [SamplingParams(max_new_tokens=2, temperature=temperature, seed=index, end_id=None)
                               for index in range(args.requests)])
    engine.grammars()  # the tokenizer and xgrammar loaded (once per engine, seconds) before any timed run
    free = run_side(engine, prompts, params(lambda _: None), args.timeline)
    cold = run_side(engine, prompts, params(guided))  # compiles each schema once, inside the timed run
    stats_cold = dict(engine.grammars().stats.as_dict())
    before = dict(engine.grammars().stats.as_dict())
    warm = run_side(engine, prompts, params(guided), args.timeline)  # every grammar from the cache
    after = engine.grammars().stats.as_dict()
    fills = max(1, after["fills"] - before["fills"])
    warm["host_fill_ms_per_step"] = 1000 * (after["fill_seconds"] - before["fill_seconds"]) / fills
    warm["host_advance_ms_per_step"] = 1000 * (after["advance_seconds"] - before["advance_seconds"]) / fills
    warm["rows_per_fill"] = (after["filled_rows"] - before["filled_rows"]) / fills
    warm["step_ms"] = 1000 * warm["seconds"] / fills
    return {"temperature": temperature, "unconstrained": free, "constrained_cold_cache": cold,
            "constrained_warm_cache": warm, "ratio_warm": warm["tokens_per_s"] / free["tokens_per_s"],
            "ratio_cold": cold["tokens_per_s"] / free["tokens_per_s"], "grammar_after_cold_run": stats_cold,
            "grammar": engine.grammars().stats.as_dict()}


def markdown(meta: dict, cases: list[dict]) -> str:
    lines = [f"# Constrained decoding cost ({meta['tag']})", "",
             f"{meta['date']} · commit {meta['commit']} · {meta['hardware']} · torch {meta['torch']}", "",
             f"`{meta['command']}`", "",
             f"{meta['requests']} requests, prompt {meta['prompt_len']}, output {meta['output_len']} tokens, "
             f"{meta['schemas']} distinct schemas (long arrays of objects: every request runs to its length).", "",
             "The cold-cache run compiles every schema inside the timed run (first sampling row only; later rows "
             "find the cache warm); the grammar cache itself (tokenizer, xgrammar) is made before it.", "",
             "Host ms/step: the engine loop's time filling bitmasks (xgrammar's threads, while the forward runs) "
             "and advancing matchers (one batched call), per constrained step of the warm run, against that run's "
             "mean step time.", "",
             "| sampling | unconstrained tok/s | constrained tok/s (warm cache) | ratio | cold-cache ratio | "
             "compile s/schema | cache hit rate | host fill ms/step | host advance ms/step | step ms |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for case in cases:
        grammar = case["grammar"]
        kind = "greedy" if case["temperature"] == 0 else f"T={case['temperature']}"
        warm = case["constrained_warm_cache"]
        lines.append(f"| {kind} | {case['unconstrained']['tokens_per_s']:.0f} | "
                     f"{warm['tokens_per_s']:.0f} | {case['ratio_warm']:.3f} | "
                     f"{case['ratio_cold']:.3f} | {grammar['compile_seconds_per_grammar']:.4f} | "
                     f"{grammar['hit_rate']:.3f} | {warm['host_fill_ms_per_step']:.2f} | "
                     f"{warm['host_advance_ms_per_step']:.2f} | {warm['step_ms']:.2f} |")
    lines += ["", f"Target: constrained ≥ {TARGET_RATIO:.2f} of unconstrained throughput."]
    for case in cases:
        lines += timeline_lines(case)
    return "\n".join(lines) + "\n"


def timeline_lines(case: dict) -> list[str]:
    """Mean ms between consecutive marks (engines/portable/step_timeline.py), both sides, where recorded."""
    sides = {"unconstrained": case["unconstrained"], "constrained": case["constrained_warm_cache"]}
    if not all("timeline" in side for side in sides.values()):
        return []
    kind = "greedy" if case["temperature"] == 0 else f"T={case['temperature']}"
    lines = ["", f"## Timeline, {kind} (mean ms between marks; count)", "",
             "| where | between | unconstrained | constrained |", "|---|---|---|---|"]
    for where in ("device", "host"):
        pairs = {pair for side in sides.values() for pair in side["timeline"][where]}
        for pair in sorted(pairs, key=lambda p: -sides["constrained"]["timeline"][where].get(p, {}).get("total_ms", 0)):
            cells = []
            for side in sides.values():
                entry = side["timeline"][where].get(pair)
                cells.append(f"{entry['mean_ms']:.3f} ({entry['count']})" if entry else "-")
            lines.append(f"| {where} | {pair} | {cells[0]} | {cells[1]} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a Hugging Face checkpoint directory with its tokenizer")
    source.add_argument("--demo", action="store_true", help="the demo Llama checkpoint (CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=256)
    parser.add_argument("--schemas", type=int, default=8)
    parser.add_argument("--temperatures", default="1.0,0", help="comma-separated; 0 is greedy")
    parser.add_argument("--kv-cache-gib", type=int, default=None)
    parser.add_argument("--timeline", action="store_true",
                        help="time the decode's host and device phases (engines/portable/step_timeline.py)")
    parser.add_argument("--tag", default=None)
    parser.add_argument("--out-dir", default=str(RESULTS))
    args = parser.parse_args(argv)
    engine, checkpoint = make_engine(args)
    tag = args.tag or f"{args.device}_{Path(checkpoint).name}"
    hardware = torch.cuda.get_device_name() if args.device == "cuda" else f"{platform.processor() or 'cpu'} CPU"
    meta = {"tag": tag, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": commit(), "hardware": hardware, "torch": torch.__version__,
            "command": "python -m benchmarks.grammar_bench " + shlex.join(sys.argv[1:] if argv is None else argv),
            "requests": args.requests, "prompt_len": args.prompt_len, "output_len": args.output_len,
            "schemas": args.schemas, "checkpoint": str(checkpoint)}
    cases = []
    for temperature in (float(t) for t in args.temperatures.split(",")):
        cases.append(measure(engine, args, temperature))
        print(json.dumps(cases[-1], indent=1), flush=True)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"grammar_{tag}.json").write_text(json.dumps({"meta": meta, "cases": cases}, indent=2) + "\n")
    (out / f"grammar_{tag}.md").write_text(markdown(meta, cases))
    print(markdown(meta, cases))


if __name__ == "__main__":
    main()
