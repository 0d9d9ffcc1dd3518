"""Shared fixtures of the end-to-end tests: the openai client and tokenizer of the demo stack (`ingot_stack`), and
reference outputs (transformers' greedy decoding of the demo model). A module against another stack (embeddings, the
real model, tools) defines its own `client`/`tokenizer`, which overrides these."""
from __future__ import annotations

import json
import shutil

import openai
import pytest

from engines.repository import PortableSettings
from engines.targets.portable import build_portable
from server.tokenizer import Tokenizer

LONG_CONTEXT = 32768


@pytest.fixture(scope="module")
def client(ingot_stack):
    """The official openai client on the demo stack, without retries so every error reaches the test."""
    return openai.OpenAI(base_url=f"{ingot_stack.base_url}/v1", api_key=ingot_stack.api_key, max_retries=0)


@pytest.fixture(scope="module")
def tokenizer(ingot_stack):
    return Tokenizer(ingot_stack.tokenizer_dir)


@pytest.fixture(scope="session")
def reference_model(demo_checkpoints):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(demo_checkpoints["llama"], dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def reference_logprobs(reference_model):
    """Callable(prompt_ids, new_ids) -> log-probabilities of new_ids under transformers."""
    import torch

    def logprobs(prompt_ids: list[int], new_ids: list[int]) -> list[float]:
        ids = torch.tensor([prompt_ids + new_ids])
        with torch.no_grad():
            logits = reference_model(ids).logits[0, len(prompt_ids) - 1: -1].float()
        return logits.log_softmax(-1).gather(-1, torch.tensor(new_ids)[:, None])[:, 0].tolist()

    return logprobs


@pytest.fixture(scope="session")
def reference_greedy(reference_model):
    """Callable(prompt_ids, max_new_tokens) -> new ids, by transformers, stopping at EOS like the engine."""
    import torch

    model = reference_model
    eos = model.config.eos_token_id

    def greedy(prompt_ids: list[int], max_new_tokens: int) -> list[int]:
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=eos, pad_token_id=eos)
        new = out[0, len(prompt_ids):].tolist()
        return new[: new.index(eos)] if eos in new else new

    return greedy


@pytest.fixture(scope="session")
def long_context_artifact(demo_checkpoints, tmp_path_factory):
    """The demo Llama with a 32k context: a request for tens of thousands of tokens runs for minutes on a CPU,
    so tests can catch a generation that goes on when it should have stopped."""
    root = tmp_path_factory.mktemp("long-context")
    checkpoint = shutil.copytree(demo_checkpoints["llama"], root / "checkpoint")
    config = json.loads((checkpoint / "config.json").read_text())
    config["max_position_embeddings"] = LONG_CONTEXT
    (checkpoint / "config.json").write_text(json.dumps(config))
    artifact = root / "demo-llama"
    settings = PortableSettings(kv_cache_memory_bytes=160 << 20, max_num_seqs=8, max_num_batched_tokens=512)
    build_portable(checkpoint, artifact, settings, model_name="demo-llama")
    return artifact
