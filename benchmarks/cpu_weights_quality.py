"""What bfloat16 and its int8 decode weights cost in quality on the CPU, against the float32 engine.

On the 22 chats of benchmarks/fidelity.py with the default model (SmolLM2-135M-Instruct): the float32 engine's
greedy answers are the reference; each other setting scores the same prompt + answer token by token through its
decode path (one token per step, where the int8 weights are used), and generates its own greedy answer, one chat
at a time.
Reported: per-token |logprob difference| to float32 (max, mean) and how many greedy answers are identical.

    .venv/bin/python -m benchmarks.cpu_weights_quality --out benchmarks/results/cpu_quantized_smollm2/quality.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.fidelity import CHATS
from engines.portable.config import EngineConfig
from engines.portable.engine import LLMEngine
from engines.portable.sampling import SamplingParams
from engines.portable.sequence import Sequence

# name -> (dtype, cpu_weights); "packed": the CPU default for bfloat16, int4 copies of weights on a 4-bit
# grid and int8 copies of the others (engines/portable/cpu_weights.py)
SETTINGS = {"float32": ("float32", "dense"), "bfloat16": ("bfloat16", "dense"),
            "bfloat16+packed": ("bfloat16", "auto")}


def decode_logprobs(engine: LLMEngine, prompt: list[int], answer: list[int]) -> list[float]:
    """log p(answer[i] | prompt + answer[:i]): the prompt in one prefill, then one token per step."""
    ids = prompt + answer
    seq = Sequence("score", list(ids), len(ids), SamplingParams(max_new_tokens=1))
    engine.blocks.allocate(seq, len(ids))
    logprobs = []
    try:
        count = len(prompt)
        while seq.num_computed_tokens < len(ids):
            logits = engine.runner.run([(seq, count)], [0])[0].float()
            seq.num_computed_tokens += count
            if seq.num_computed_tokens < len(ids):
                logprobs.append(logits.log_softmax(-1)[ids[seq.num_computed_tokens]].item())
            count = 1
    finally:
        engine.blocks.free_sequence(seq)
    return logprobs


def prompts_of(checkpoint: Path) -> tuple[list[list[int]], int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    texts = [tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) for chat in CHATS]
    return [tokenizer.encode(text, add_special_tokens=False) for text in texts], tokenizer.eos_token_id


def run(checkpoint: Path, max_new_tokens: int, names: list[str]) -> dict:
    prompts, eos = prompts_of(checkpoint)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, end_id=eos)
    engines = {name: LLMEngine.from_checkpoint(checkpoint, EngineConfig(dtype=dtype, cpu_weights=weights))
               for name, (dtype, weights) in SETTINGS.items() if name == "float32" or name in names}
    gold_answers = engines["float32"].generate(prompts, params)
    gold = [decode_logprobs(engines["float32"], p, a) for p, a in zip(prompts, gold_answers, strict=True)]
    result = {}
    for name, engine in engines.items():
        if name == "float32":
            continue
        started = time.monotonic()
        # one chat at a time: one row per decode step, as a single stream decodes (int8 serves up to 4 rows)
        answers = [engine.generate([prompt], params)[0] for prompt in prompts]
        diffs = []
        for prompt, answer, reference in zip(prompts, gold_answers, gold, strict=True):
            ours = decode_logprobs(engine, prompt, answer)
            diffs += [abs(a - b) for a, b in zip(ours, reference, strict=True)]
        result[name] = {"identical_greedy_answers": sum(a == g for a, g in zip(answers, gold_answers, strict=True)),
                        "chats": len(prompts), "logprob_abs_diff_max": max(diffs),
                        "logprob_abs_diff_mean": sum(diffs) / len(diffs), "tokens": len(diffs),
                        "seconds": round(time.monotonic() - started, 1)}
    return result


def main(argv: list[str] | None = None) -> int:
    from engines.default_model import ensure_default_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="an HF float32 checkpoint (default: the default model's)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--settings", default="bfloat16,bfloat16+packed",
                        help=f"compared to float32, comma-separated: {', '.join(list(SETTINGS)[1:])}")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    checkpoint = args.checkpoint or ensure_default_model().checkpoint
    result = {"checkpoint": str(checkpoint), "threads": torch.get_num_threads(), "settings": run(
        checkpoint, args.max_new_tokens, args.settings.split(","))}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
