"""Real-weight fidelity checks shared by the CPU tests and the GPU script: the chats, and log-probabilities
of a token sequence from transformers and from the portable engine's own forward."""
from __future__ import annotations

from pathlib import Path

import torch

from engines.portable.engine import LLMEngine
from engines.portable.sampling import SamplingParams
from engines.portable.sequence import Sequence

TEXT = Path(__file__).resolve().parents[1] / "tests" / "data" / "perplexity.txt"
LONG_CHAT = [
    {"role": "system", "content": "You are a patient tutor who answers in short paragraphs."},
    {"role": "user", "content": "I am planning a vegetable garden. Which vegetables are easy for a beginner?"},
    {"role": "assistant", "content": "Good choices for a beginner are lettuce, radishes, beans, zucchini and "
                                     "cherry tomatoes. They grow quickly and forgive small mistakes."},
    {"role": "user", "content": "How much sun do tomatoes need, and how often should I water them?"},
    {"role": "assistant", "content": "Tomatoes want six to eight hours of direct sun a day. Water deeply two or "
                                     "three times a week so the soil stays evenly moist, not soaked."},
    {"role": "user", "content": "My radishes grew leaves but no roots. What went wrong?"},
    {"role": "assistant", "content": "Usually too much nitrogen, too little sun, or seeds sown too close "
                                     "together. Thin them to a few centimetres apart."},
    {"role": "user", "content": "Thanks! Can you summarise everything we discussed in three sentences?"},
]
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Hello!"}],
    [{"role": "user", "content": "Explain photosynthesis in one sentence."}],
    [{"role": "user", "content": "Give me three tips for a job interview."}],
    [{"role": "user", "content": "What is 17 times 3?"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [{"role": "user", "content": "Translate 'good morning' into Spanish and German."}],
    [{"role": "system", "content": "Answer like a pirate."}, {"role": "user", "content": "Where is the treasure?"}],
    [{"role": "user", "content": "你好！请介绍一下你自己。"}],
    [{"role": "user", "content": "中国的首都是哪里？"}],
    [{"role": "user", "content": "用一句话解释什么是机器学习。"}],
    [{"role": "user", "content": "Write a Python function that checks whether a number is prime."}],
    [{"role": "user", "content": "What does this code print?\n```python\nprint(sum(range(5)))\n```"}],
    [{"role": "user", "content": "Write a SQL query that counts the rows of the table users."}],
    [{"role": "user", "content": "Fix the bug: def add(a, b): return a - b"}],
    [{"role": "user", "content": "How do I reverse a list in JavaScript?"}],
    [{"role": "user", "content": "Emoji test 😀🚀 — what do these two emoji usually mean?"}],
    [{"role": "user", "content": "Café, naïve, über: which languages do these words come from?"}],
    [{"role": "user", "content": "List the planets of the solar system."}],
    [{"role": "user", "content": "Why is the sky blue?"}],
    [{"role": "user", "content": "Tell me a short joke about computers."}],
    LONG_CHAT,
]


def reference_logprobs(model, ids: list[int], start: int) -> list[float]:
    """log p(ids[i] | ids[:i]) for i >= start, from one forward pass of transformers."""
    with torch.no_grad():
        logits = model(torch.tensor([ids], device=model.device)).logits[0, start - 1:-1].float()
    targets = torch.tensor(ids[start:], device=logits.device)[:, None]
    return logits.log_softmax(-1).gather(-1, targets)[:, 0].tolist()


def engine_logprobs(engine: LLMEngine, ids: list[int]) -> list[float]:
    """log p(ids[i] | ids[:i]) for i >= 1 from the engine's own forward (paged KV cache, one prefill)."""
    seq = Sequence("score", list(ids), len(ids), SamplingParams(max_new_tokens=1))
    engine.blocks.allocate(seq, len(ids))
    try:
        input_ids, positions, meta, _, lora_slots = engine.runner._prepare([(seq, len(ids))])
        model = engine.runner.model
        logits = model.logits(model.forward(input_ids, positions, meta, engine.runner.kv_caches, lora_slots))
    finally:
        engine.blocks.free_sequence(seq)
    targets = torch.tensor(ids[1:], device=logits.device)[:, None]
    return logits[:-1].float().log_softmax(-1).gather(-1, targets)[:, 0].tolist()
