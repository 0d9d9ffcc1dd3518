"""n, best_of and logit_bias in the portable engine: choices forked from one prefill share its KV blocks,
each draws from its own seed stream, best_of keeps the best by cumulative logprob."""
from __future__ import annotations

import pytest

from engines.contract import choice_seed
from engines.portable.sampling import SamplingParams
from tests.portable.conftest import prompt_of


def sampled(max_new_tokens: int, **extra) -> SamplingParams:
    return SamplingParams(max_new_tokens=max_new_tokens, temperature=1.5, seed=1234, return_logprobs=True, **extra)


def test_choices_share_the_prompts_blocks_and_copy_the_partial_one(make_engine):
    engine = make_engine("llama", block_size=8)
    engine.add_request("r", prompt_of(20, seed=1), sampled(6, n=3))  # 2 full blocks + 1 partial
    engine.step()  # the prefill, then the fork
    live = engine.groups["r"].live
    assert len(live) == 3
    shared = [seq.block_table[:2] for seq in live]
    assert shared[0] == shared[1] == shared[2]
    assert len({seq.block_table[2] for seq in live}) == 3  # each choice writes its own last block
    assert engine.num_total_blocks - engine.num_free_blocks == 2 + 3
    while engine.has_unfinished():
        engine.step()
    assert engine.num_free_blocks == engine.num_total_blocks


def test_each_choice_is_the_request_with_its_derived_seed(make_engine):
    """So the gateway's fan-out (n requests seeded with `choice_seed`) gives the same choices."""
    prompt = prompt_of(13, seed=2)
    engine = make_engine("llama", block_size=8)
    [forked] = engine.generate_outputs([prompt], sampled(12, n=3))
    alone = engine.generate([prompt] * 3, [SamplingParams(max_new_tokens=12, temperature=1.5,
                                                          seed=choice_seed(1234, i)) for i in range(3)])
    assert [choice.token_ids for choice in forked.choices] == alone
    assert len({tuple(tokens) for tokens in alone}) == 3
    assert engine.num_free_blocks == engine.num_total_blocks


def test_seeded_choices_do_not_depend_on_the_batch(make_engine):
    prompt = prompt_of(9, seed=3)
    engine = make_engine("mistral")
    [first] = engine.generate_outputs([prompt], sampled(10, n=2))
    crowd = [prompt_of(30, seed=s) for s in range(4)]
    outputs = engine.generate_outputs([*crowd, prompt], [sampled(8)] * 4 + [sampled(10, n=2)])
    assert [c.token_ids for c in outputs[-1].choices] == [c.token_ids for c in first.choices]


def test_greedy_choices_equal_transformers(make_engine, hf_greedy):
    prompt = prompt_of(11, seed=4)
    engine = make_engine("mistral")
    [output] = engine.generate_outputs([prompt], SamplingParams(max_new_tokens=15, temperature=0.0, n=2))
    expected = hf_greedy("mistral", prompt, 15)
    assert [c.token_ids for c in output.choices] == [expected, expected]


def test_best_of_keeps_the_best_choices_by_cumulative_logprob(make_engine):
    prompt = prompt_of(14, seed=5)
    engine = make_engine("llama")
    [all_four] = engine.generate_outputs([prompt], sampled(8, n=4))
    [best] = engine.generate_outputs([prompt], sampled(8, n=2, best_of=4))
    ranked = sorted(all_four.choices, key=lambda c: c.cum_logprob, reverse=True)[:2]
    assert [c.token_ids for c in best.choices] == [c.token_ids for c in ranked]
    assert [c.index for c in best.choices] == [0, 1]
    for choice in best.choices:
        assert choice.cum_logprob == pytest.approx(sum(choice.logprobs), abs=1e-4)


def test_a_fork_without_a_free_block_is_recomputed(make_engine):
    prompt = prompt_of(12, seed=6)  # one full block of 8 and a partial one
    engine = make_engine("llama", block_size=8)
    [roomy] = engine.generate_outputs([prompt], sampled(4, n=3))
    tight = make_engine("llama", block_size=8, num_kv_blocks=3)
    [output] = tight.generate_outputs([prompt], sampled(4, n=3))
    assert [c.token_ids for c in output.choices] == [c.token_ids for c in roomy.choices]
    assert tight.num_free_blocks == tight.num_total_blocks


def test_aborting_a_request_ends_every_choice(make_engine):
    engine = make_engine("llama")
    engine.add_request("r", prompt_of(10, seed=7), sampled(40, n=3))
    for _ in range(3):
        engine.step()
    engine.abort("r")
    outputs = engine.step()
    assert [(o.finished, o.finish_reason) for o in outputs if o.request_id == "r"] == [(True, "abort")]
    assert not engine.has_unfinished()
    assert engine.num_free_blocks == engine.num_total_blocks


def test_logit_bias_forces_and_forbids_tokens(make_engine, hf_greedy):
    prompt = prompt_of(10, seed=8)
    engine = make_engine("llama")
    assert engine.generate([prompt], SamplingParams(max_new_tokens=5, temperature=0.0, logit_bias={42: 100.0})) \
        == [[42] * 5]
    greedy = hf_greedy("llama", prompt, 8)
    banned = {token: -100.0 for token in set(greedy)}
    [output] = engine.generate([prompt], SamplingParams(max_new_tokens=8, temperature=0.0, logit_bias=banned))
    assert not set(output) & set(greedy)
    [sampled_output] = engine.generate([prompt], sampled(8, logit_bias={7: 100.0}))
    assert sampled_output == [7] * 8


def test_logit_bias_ids_are_checked(make_engine):
    engine = make_engine("llama")
    with pytest.raises(ValueError, match="logit_bias token ids out of the vocabulary"):
        engine.add_request("r", [1, 2, 3], SamplingParams(max_new_tokens=2, logit_bias={10**6: 1.0}))
    with pytest.raises(ValueError, match="best_of"):
        engine.add_request("r", [1, 2, 3], SamplingParams(max_new_tokens=2, n=3, best_of=2))
