"""Engine API: bad input, abort, block accounting, rope scaling against transformers."""
from __future__ import annotations

import pytest
import torch

from engines.portable.block_manager import BlockManager
from engines.portable.config import ModelConfig
from engines.portable.rope import inverse_frequencies
from engines.portable.sampling import SamplingParams
from engines.portable.sequence import Sequence
from tests.portable.conftest import prompt_of


@pytest.mark.parametrize("prompt,params,message", [
    ([], SamplingParams(max_new_tokens=4), "prompt is empty"),
    ([1, 10**6], SamplingParams(max_new_tokens=4), "out of the vocabulary"),
    ([1, 2], SamplingParams(max_new_tokens=600), "exceeds the maximum context length of 512"),
    ([1, 2], SamplingParams(max_new_tokens=0), "max_new_tokens must be at least 1"),
    ([1, 2], SamplingParams(max_new_tokens=4, top_p=0.0), "top_p must be in"),
    ([1, 2], SamplingParams(max_new_tokens=4, temperature=-1.0), "temperature must be >= 0"),
    ([1, 2.5], SamplingParams(max_new_tokens=4), "integer token ids"),
    ([1, 2], SamplingParams(max_new_tokens=4, end_id=10**6), "end_id 1000000 is out of the vocabulary"),
    ([1, 2], SamplingParams(max_new_tokens=4, stop_token_sequences=[[3, -1]]), "stop_token_sequences"),
])
def test_bad_requests_raise_clear_errors(make_engine, prompt, params, message):
    with pytest.raises(ValueError, match=message):
        make_engine("llama").add_request("x", prompt, params)


def test_the_served_context_is_capped_to_the_kv_cache(make_engine):
    engine = make_engine("llama", num_kv_blocks=2, block_size=8)
    assert engine.max_model_len == 16  # the model has 512 positions; one sequence can hold 16 tokens
    with pytest.raises(ValueError, match="exceeds the maximum context length of 16"):
        engine.add_request("x", [1] * 10, SamplingParams(max_new_tokens=8))
    engine.add_request("y", [1] * 10, SamplingParams(max_new_tokens=6, temperature=0))
    while engine.has_unfinished():
        engine.step()


def test_abort_frees_every_block(make_engine):
    engine = make_engine("llama", block_size=8)
    for index in range(4):
        engine.add_request(f"r{index}", prompt_of(30, seed=index), SamplingParams(max_new_tokens=100, temperature=0))
    for _ in range(3):
        engine.step()
    assert engine.num_free_blocks < engine.num_total_blocks
    for index in range(4):
        engine.abort(f"r{index}")
    outputs = engine.step()
    assert sorted(o.request_id for o in outputs if o.finish_reason == "abort") == ["r0", "r1", "r2", "r3"]
    assert not engine.has_unfinished()
    assert engine.num_free_blocks == engine.num_total_blocks


def test_duplicate_request_id_is_refused(make_engine):
    engine = make_engine("llama")
    engine.add_request("same", [1, 2], SamplingParams(max_new_tokens=2))
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request("same", [1, 2], SamplingParams(max_new_tokens=2))


def test_block_manager_reference_counts_and_eviction():
    blocks = BlockManager(num_blocks=4, block_size=2)
    first = Sequence("a", [1, 2, 3, 4, 5], 5, SamplingParams(max_new_tokens=1))
    blocks.allocate(first, 5)
    first.num_computed_tokens = 5
    blocks.register_full_blocks(first)
    assert blocks.num_free_blocks == 1 and len(blocks.cached) == 2
    second = Sequence("b", [1, 2, 3, 4, 9], 5, SamplingParams(max_new_tokens=1))
    assert blocks.reuse_prefix(second) == 4
    assert [blocks.ref_counts[b] for b in second.block_table] == [2, 2]
    blocks.free_sequence(first)
    blocks.free_sequence(second)
    assert blocks.num_free_blocks == 4 and len(blocks.cached) == 2
    hog = Sequence("c", list(range(100, 108)), 8, SamplingParams(max_new_tokens=1))
    blocks.allocate(hog, 8)  # takes every block, evicting the cached prefix
    assert blocks.cached == {} and blocks.num_free_blocks == 0


ROPE_SCALINGS = [
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 64},
    {"rope_type": "linear", "factor": 4.0},
]


def rope_config(scaling: dict) -> dict:
    """A one-layer Llama config.json with the given rope_scaling, for ours and transformers' alike."""
    return {"architectures": ["LlamaForCausalLM"], "vocab_size": 32, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 1, "num_attention_heads": 4, "max_position_embeddings": 512,
            "rope_theta": 500000.0, "rope_scaling": scaling}


@pytest.mark.parametrize("scaling", ROPE_SCALINGS)
def test_rope_scaling_matches_transformers(scaling):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    raw = rope_config(scaling)
    ours = inverse_frequencies(ModelConfig.from_dict(raw))
    hf_config = LlamaConfig(**{k: v for k, v in raw.items() if k != "architectures"})
    theirs, _ = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](hf_config, torch.device("cpu"))
    assert torch.allclose(ours, theirs.float(), rtol=1e-6)


@pytest.mark.parametrize("scaling", ROPE_SCALINGS)
def test_rope_cos_sin_match_transformers(scaling):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from engines.portable.rope import RotaryEmbedding

    raw = rope_config(scaling)
    ours = RotaryEmbedding(ModelConfig.from_dict(raw), 512, torch.device("cpu"), torch.float32)
    hf = LlamaRotaryEmbedding(LlamaConfig(**{k: v for k, v in raw.items() if k != "architectures"}))
    positions = torch.tensor([0, 1, 7, 63, 64, 200, 511])
    cos, sin = hf(torch.zeros(1, 1, 16), positions[None])
    assert torch.allclose(ours.cos[positions], cos[0], atol=1e-5)
    assert torch.allclose(ours.sin[positions], sin[0], atol=1e-5)


@pytest.mark.parametrize("change,message", [
    ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "rope scaling 'dynamic' is not supported"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
    ({"attention_bias": True}, "attention_bias=true is not supported"),
    ({"architectures": ["GPT2LMHeadModel"]}, "unsupported architecture 'GPT2LMHeadModel'"),
])
def test_unsupported_configs_are_refused_before_loading(change, message):
    raw = {"architectures": ["LlamaForCausalLM"], "vocab_size": 32, "hidden_size": 64, "intermediate_size": 128,
           "num_hidden_layers": 1, "num_attention_heads": 4, **change}
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_dict(raw)


def test_generate_checks_every_prompt_before_adding_any(make_engine):
    engine = make_engine("llama")
    with pytest.raises(ValueError, match="the prompt is empty"):
        engine.generate([[1, 2, 3], []], SamplingParams(max_new_tokens=2))
    assert not engine.has_unfinished()


def test_abort_is_idempotent_and_reports_once(make_engine):
    engine = make_engine("llama")
    engine.add_request("w", prompt_of(12, seed=1), SamplingParams(max_new_tokens=5, temperature=0))
    engine.abort("w")
    engine.abort("w")
    engine.abort("never-added")
    outputs = engine.step()
    assert [(o.request_id, o.finished, o.finish_reason, o.new_token_ids) for o in outputs] == [
        ("w", True, "abort", [])]
    assert engine.step() == [] and not engine.has_unfinished()
    assert engine.num_free_blocks == engine.num_total_blocks


def test_requests_added_from_another_thread_join_the_running_batch(make_engine, hf_greedy):
    import threading

    engine = make_engine("mistral")
    prompts = {f"t{index}": prompt_of(5 + 7 * index, seed=60 + index) for index in range(6)}
    tokens: dict[str, list[int]] = {rid: [] for rid in prompts}
    finished: set[str] = set()

    def submit():
        for rid, prompt in prompts.items():
            engine.add_request(rid, prompt, SamplingParams(max_new_tokens=12, temperature=0.0))

    submitter = threading.Thread(target=submit)
    engine.add_request("first", prompt_of(9, seed=59), SamplingParams(max_new_tokens=30, temperature=0.0))
    engine.step()
    submitter.start()
    while submitter.is_alive() or engine.has_unfinished():
        for output in engine.step():
            if output.request_id in tokens:
                tokens[output.request_id] += output.new_token_ids
                if output.finished:
                    finished.add(output.request_id)
    assert finished == set(prompts)
    for rid, prompt in prompts.items():
        assert tokens[rid] == hf_greedy("mistral", prompt, 12)


def test_blocks_without_a_cached_prefix_are_handed_out_first():
    blocks = BlockManager(num_blocks=4, block_size=2)
    cached = Sequence("a", [1, 2], 2, SamplingParams(max_new_tokens=1))
    blocks.allocate(cached, 2)
    cached.num_computed_tokens = 2
    blocks.register_full_blocks(cached)
    full_block = cached.block_table[0]
    blocks.free_sequence(cached)
    scratch = Sequence("b", [5], 1, SamplingParams(max_new_tokens=1))
    blocks.allocate(scratch, 1)
    blocks.free_sequence(scratch)  # freed after the cached block, yet handed out before it
    other = Sequence("c", [7, 8, 9, 10, 11, 12], 6, SamplingParams(max_new_tokens=1))
    blocks.allocate(other, 6)
    assert full_block not in other.block_table and len(blocks.cached) == 1
    again = Sequence("d", [1, 2, 5], 3, SamplingParams(max_new_tokens=1))
    assert blocks.reuse_prefix(again) == 2 and again.block_table == [full_block]


def test_prefix_hashes_chain_through_every_earlier_block():
    blocks = BlockManager(num_blocks=8, block_size=2)
    first = Sequence("a", [1, 2, 3, 4, 5], 5, SamplingParams(max_new_tokens=1))
    blocks.allocate(first, 5)
    first.num_computed_tokens = 5
    blocks.register_full_blocks(first)
    # Same second block [3, 4] after a different first block: no reuse at all.
    assert blocks.reuse_prefix(Sequence("b", [9, 9, 3, 4, 5], 5, SamplingParams(max_new_tokens=1))) == 0


def test_zero_kv_blocks_is_a_config_error():
    from engines.portable.config import EngineConfig

    with pytest.raises(ValueError, match="num_kv_blocks must be positive"):
        EngineConfig(num_kv_blocks=0)
