"""Engines and transformers references on the demo checkpoints."""
from __future__ import annotations

import pytest
import torch

from engines.portable.config import EngineConfig
from engines.portable.engine import LLMEngine


@pytest.fixture(scope="session")
def hf_models(demo_checkpoints):
    from transformers import AutoModelForCausalLM

    return {kind: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
            for kind, path in demo_checkpoints.items()}


@pytest.fixture(scope="session")
def hf_greedy(hf_models):
    def greedy(kind: str, prompt: list[int], max_new_tokens: int) -> list[int]:
        with torch.no_grad():
            out = hf_models[kind].generate(torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False,
                                           eos_token_id=None, pad_token_id=0)
        return out[0, len(prompt):].tolist()

    return greedy


@pytest.fixture()
def make_engine(demo_checkpoints):
    def make(kind: str, **overrides) -> LLMEngine:
        return LLMEngine.from_checkpoint(demo_checkpoints[kind], EngineConfig(**overrides))

    return make


def prompt_of(length: int, seed: int, vocab: int = 600) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return [1] + torch.randint(5, vocab, (length - 1,), generator=generator).tolist()
