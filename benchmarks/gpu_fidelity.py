"""Real-weight fidelity on a GPU: the portable engine in bfloat16 against transformers, from one GGUF file.

    python -m benchmarks.gpu_fidelity --gguf /path/SmolLM2-135M-Instruct.Q4_1.gguf

The GGUF comes from the command line (the GPU machine has no internet: carry the file, e.g. the one in
~/.cache/ingot/models/*/ after a `make serve` here). It is converted as `ingot build` would, then:

- greedy decoding of the shared chats by the engine (bfloat16, all chats batched together) against
  transformers in float32 (the gold) and in bfloat16: identical chats are counted (the engine's answer
  with the end-of-turn token it stops on and drops, as generate keeps it), and must be about as many as
  transformers' own bfloat16 run gets; where a chat diverges, the gold's log-probability gap between its
  own choice and ours at that position tells a near-tie (bfloat16 rounding) from a real error;
- per-token log-probabilities of the gold answers, engine bfloat16 vs gold float32 (and transformers
  bfloat16 vs gold, for scale);
- perplexity of tests/data/perplexity.txt, the same three ways.

The checks and their bfloat16 tolerances are in CHECKS; results go to benchmarks/results/ as JSON and a
short markdown note. Exit code 0 when every check passes, 1 otherwise.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.fidelity import CHATS, TEXT, engine_logprobs, reference_logprobs
from benchmarks.results_io import commit

RESULTS = Path(__file__).resolve().parent / "results"
# bfloat16 keeps 8 bits of mantissa: logits move by ~1e-2 relative, so log-probabilities by a few 1e-2.
CHECKS = {
    # gold's gap between its choice and ours where they part: a flip needs a gap within the logprob error
    "greedy_diverges_only_at_near_ties_nats": 0.35,
    # identical chats, against transformers' own bfloat16 run on the same GPU (same rounding, same near-ties)
    "greedy_identical_below_transformers_half_max_fraction": 0.1,
    "logprob_max_abs_nats": 0.35,
    "logprob_mean_abs_nats": 0.05,
    "perplexity_max_rel": 0.02,
}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", required=True, type=Path, help="the GGUF file (e.g. SmolLM2-135M-Instruct.Q4_1.gguf)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--work-dir", type=Path, help="where the converted checkpoint goes (default: temporary)")
    parser.add_argument("--name", default=None, help="results file stem (default gpu_fidelity_<gpu>)")
    return parser.parse_args(argv)


def load_transformers(gguf: Path, dtype: torch.dtype, device: str):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=dtype)
    return model.to(device).eval()


def greedy_reference(model, prompts: list[list[int]], max_new: int, eos: int) -> list[list[int]]:
    outputs = []
    with torch.no_grad():
        for prompt in prompts:
            out = model.generate(torch.tensor([prompt], device=model.device), max_new_tokens=max_new,
                                 do_sample=False, eos_token_id=eos, pad_token_id=eos)
            outputs.append(out[0, len(prompt):].tolist())
    return outputs


def as_generated(tokens: list[int], max_new: int, eos: int) -> list[int]:
    """The engine's answer as transformers' generate writes it: the engine drops the end-of-turn token it stops
    on, generate keeps it. An answer shorter than max_new stopped on it (end_id is the only stop asked for)."""
    return tokens + [eos] if len(tokens) < max_new and (not tokens or tokens[-1] != eos) else tokens


def divergence(gold_model, prompt: list[int], gold: list[int], ours: list[int]) -> dict | None:
    """Where `ours` leaves `gold`: position and the gold's log-probability gap to our token there."""
    position = next((i for i, (a, b) in enumerate(zip(gold, ours, strict=False)) if a != b), None)
    if position is None:
        return None if len(gold) == len(ours) else {"position": min(len(gold), len(ours)), "gap": math.inf}
    with torch.no_grad():
        ids = torch.tensor([prompt + gold[:position]], device=gold_model.device)
        logprobs = gold_model(ids).logits[0, -1].float().log_softmax(-1)
    return {"position": position, "gap": float(logprobs[gold[position]] - logprobs[ours[position]])}


def perplexity(logprobs: list[float]) -> float:
    return math.exp(-sum(logprobs) / len(logprobs))


def compare_logprobs(ours: list[float], gold: list[float]) -> dict:
    diffs = [abs(a - b) for a, b in zip(ours, gold, strict=True)]
    return {"max_abs": max(diffs), "mean_abs": sum(diffs) / len(diffs), "tokens": len(diffs)}


def run(args) -> dict:
    from transformers import AutoTokenizer

    from engines.gguf import convert_gguf
    from engines.portable.config import EngineConfig
    from engines.portable.engine import LLMEngine
    from engines.portable.sampling import SamplingParams

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="ingot-gpu-fidelity-"))
    started = time.monotonic()
    checkpoint = convert_gguf(args.gguf, work / "checkpoint")
    convert_s = time.monotonic() - started
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    eos = tokenizer.eos_token_id
    prompts = [tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) for chat in CHATS]
    prompts = [tokenizer.encode(text, add_special_tokens=False) for text in prompts]
    text_ids = tokenizer.encode(TEXT.read_text())

    engine = LLMEngine.from_checkpoint(checkpoint, EngineConfig(device=args.device, dtype=args.dtype))
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.0, end_id=eos)
    ours = engine.generate(prompts, params)
    gold_model = load_transformers(args.gguf, torch.float32, args.device)
    half_model = load_transformers(args.gguf, getattr(torch, args.dtype), args.device)
    gold = greedy_reference(gold_model, prompts, args.max_new_tokens, eos)
    half = greedy_reference(half_model, prompts, args.max_new_tokens, eos)

    chats = []
    for index, prompt in enumerate(prompts):
        ours_div = divergence(gold_model, prompt, gold[index], as_generated(ours[index], args.max_new_tokens, eos))
        half_div = divergence(gold_model, prompt, gold[index], half[index])
        chats.append({"index": index, "prompt_tokens": len(prompt), "gold_tokens": len(gold[index]),
                      "engine_vs_gold": ours_div, "transformers_bf16_vs_gold": half_div,
                      "engine_text": tokenizer.decode(ours[index], skip_special_tokens=True)})
    answer_ours, answer_gold, answer_half = [], [], []
    for prompt, answer in zip(prompts, gold, strict=True):
        ids = prompt + answer
        answer_ours += engine_logprobs(engine, ids)[len(prompt) - 1:]
        answer_gold += reference_logprobs(gold_model, ids, len(prompt))
        answer_half += reference_logprobs(half_model, ids, len(prompt))
    ppl = {"gold_float32": perplexity(reference_logprobs(gold_model, text_ids, 1)),
           "engine": perplexity(engine_logprobs(engine, text_ids)),
           "transformers_half": perplexity(reference_logprobs(half_model, text_ids, 1)),
           "tokens": len(text_ids)}
    return {"chats": chats, "logprobs": {"engine_vs_gold": compare_logprobs(answer_ours, answer_gold),
                                         "transformers_half_vs_gold": compare_logprobs(answer_half, answer_gold)},
            "perplexity": ppl, "convert_s": convert_s}


def verdict(result: dict) -> dict:
    chats = result["chats"]
    diverged = [c["engine_vs_gold"] for c in chats if c["engine_vs_gold"] is not None]
    identical = 1 - len(diverged) / len(chats)
    half_identical = sum(c["transformers_bf16_vs_gold"] is None for c in chats) / len(chats)
    shortfall = half_identical - identical
    worst_gap = max((d["gap"] for d in diverged), default=0.0)
    lp, ppl = result["logprobs"]["engine_vs_gold"], result["perplexity"]
    rel = abs(ppl["engine"] - ppl["gold_float32"]) / ppl["gold_float32"]
    checks = {
        "greedy_identical_below_transformers_half": (
            shortfall, shortfall <= CHECKS["greedy_identical_below_transformers_half_max_fraction"]),
        "greedy_worst_divergence_gap_nats": (worst_gap, worst_gap <= CHECKS["greedy_diverges_only_at_near_ties_nats"]),
        "logprob_max_abs_nats": (lp["max_abs"], lp["max_abs"] <= CHECKS["logprob_max_abs_nats"]),
        "logprob_mean_abs_nats": (lp["mean_abs"], lp["mean_abs"] <= CHECKS["logprob_mean_abs_nats"]),
        "perplexity_rel": (rel, rel <= CHECKS["perplexity_max_rel"]),
    }
    return {name: {"value": value, "ok": ok} for name, (value, ok) in checks.items()}


def environment(args) -> dict:
    import transformers

    return {"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
            "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "commit": commit(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "command": "python -m benchmarks.gpu_fidelity " + " ".join(sys.argv[1:]), "gguf": args.gguf.name,
            "dtype": args.dtype, "max_new_tokens": args.max_new_tokens, "chats": len(CHATS)}


def write_note(path: Path, env: dict, result: dict, checks: dict) -> None:
    ppl, half = result["perplexity"], result["logprobs"]["transformers_half_vs_gold"]
    lines = [f"# GPU fidelity: {env['gguf']} on {env['gpu']} ({env['dtype']})", "",
             f"`{env['command']}` at commit {env['commit'][:12]}, {env['date']}; torch {env['torch']}, "
             f"transformers {env['transformers']}. Gold: transformers float32 on the same GPU, from the same GGUF.",
             "", "| check | value | tolerance | ok |", "|---|---|---|---|"]
    limits = {"greedy_identical_below_transformers_half":
                  f"<= {CHECKS['greedy_identical_below_transformers_half_max_fraction']}",
              "greedy_worst_divergence_gap_nats": f"<= {CHECKS['greedy_diverges_only_at_near_ties_nats']}",
              "logprob_max_abs_nats": f"<= {CHECKS['logprob_max_abs_nats']}",
              "logprob_mean_abs_nats": f"<= {CHECKS['logprob_mean_abs_nats']}",
              "perplexity_rel": f"<= {CHECKS['perplexity_max_rel']}"}
    for name, check in checks.items():
        lines.append(f"| {name} | {check['value']:.4g} | {limits[name]} | {'yes' if check['ok'] else 'NO'} |")
    chats = result["chats"]
    same = sum(c["engine_vs_gold"] is None for c in chats)
    half_same = sum(c["transformers_bf16_vs_gold"] is None for c in chats)
    lines += ["", f"Greedy: {same} of {len(chats)} chats identical to the gold (transformers {env['dtype']}: "
              f"{half_same}); the engine's answers count the end-of-turn token it stops on, as generate does.",
              f"Perplexity ({ppl['tokens']} tokens): gold {ppl['gold_float32']:.4f}, engine {ppl['engine']:.4f}, "
              f"transformers {env['dtype']} {ppl['transformers_half']:.4f}.",
              f"Answer log-probabilities, transformers {env['dtype']} vs gold for scale: max "
              f"{half['max_abs']:.4g}, mean {half['mean_abs']:.4g}."]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not args.gguf.is_file():
        print(f"error: {args.gguf}: no such file", file=sys.stderr)
        return 2
    env = environment(args)
    result = run(args)
    checks = verdict(result)
    stem = args.name or "gpu_fidelity_" + env["gpu"].lower().replace("nvidia ", "").replace(" ", "_")[:24]
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"environment": env, "checks": checks, "tolerances": CHECKS, **result}
    (RESULTS / f"{stem}.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    write_note(RESULTS / f"{stem}.md", env, result, checks)
    for name, check in checks.items():
        print(f"{name}: {check['value']:.4g} {'ok' if check['ok'] else 'FAILED'}")
    print(f"results: {RESULTS / stem}.json and .md")
    return 0 if all(check["ok"] for check in checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
