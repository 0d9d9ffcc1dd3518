"""LoRA adapters over the real default model (SmolLM2-135M-Instruct, float32): two adapters and the base in one
batch give transformers + PEFT's greedy tokens, on real chat prompts."""
from __future__ import annotations

import pytest

from engines.portable.config import EngineConfig
from engines.portable.engine import LLMEngine
from engines.portable.sampling import SamplingParams
from tests.lora_adapters import PeftReference, make_adapter

peft = pytest.importorskip("peft")
pytestmark = pytest.mark.e2e  # the real model: fetched and converted once per machine

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CHATS = ["What is the capital of France?", "Write a haiku about the sea.", "用一句话介绍长城。"]
NEW_TOKENS = 12


def test_adapters_over_the_real_model_match_peft(real_model, tmp_path):
    from transformers import AutoTokenizer

    adapters = {"all-r8": make_adapter(real_model.checkpoint, tmp_path / "all-r8", 0, 8, 16, False, ALL),
                "attn-r4": make_adapter(real_model.checkpoint, tmp_path / "attn-r4", 1, 4, 8, True, ALL[:4])}
    tokenizer = AutoTokenizer.from_pretrained(real_model.checkpoint)
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": chat}], add_generation_prompt=True,
                                           tokenize=False) for chat in CHATS]
    prompts = [tokenizer.encode(text, add_special_tokens=False) for text in texts]
    names = ["all-r8", "attn-r4", None]

    engine = LLMEngine.from_checkpoint(real_model.checkpoint, EngineConfig(dtype="float32", max_loras=2))
    for name, path in adapters.items():
        engine.add_lora(name, path)
    params = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0.0, ignore_end_id=True)
    outputs = engine.generate(prompts, [params] * len(prompts), names)

    reference = PeftReference(real_model.checkpoint, adapters)
    expected = [reference.greedy(name, prompt, NEW_TOKENS) for name, prompt in zip(names, prompts, strict=True)]
    assert outputs == expected
    base = [reference.greedy(None, prompt, NEW_TOKENS) for prompt in prompts[:2]]
    assert all(out != ref for out, ref in zip(outputs, base, strict=False))  # each adapter changes the answer
