"""n, best_of, beam search, logprobs (top alternatives, prompt logprobs with echo, each token's bytes) and
logit_bias through the real stack (Triton + portable engine + gateway) with the official openai client."""
from __future__ import annotations

import openai
import pytest
import torch


pytestmark = pytest.mark.e2e


def raw_logprobs(model, ids: list[int]) -> torch.Tensor:
    """transformers' log-softmax at every position of `ids` (row i predicts token i + 1)."""
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().log_softmax(-1)


def test_chat_n_gives_distinct_reproducible_choices_with_their_index(client, ingot_stack):
    ask = dict(model=ingot_stack.model, messages=[{"role": "user", "content": "Tell me a story"}], max_tokens=12,
               n=3, seed=42, temperature=1.5, extra_body={"ignore_eos": True})
    first = client.chat.completions.create(**ask)
    assert [c.index for c in first.choices] == [0, 1, 2]
    texts = [c.message.content for c in first.choices]
    assert len(set(texts)) == 3
    assert [c.message.content for c in client.chat.completions.create(**ask).choices] == texts
    streamed = {0: "", 1: "", 2: ""}
    for chunk in client.chat.completions.create(**ask, stream=True):
        for choice in chunk.choices:
            streamed[choice.index] += choice.delta.content or ""
    assert [streamed[i] for i in range(3)] == texts
    assert first.usage.completion_tokens == 36  # every choice's tokens
    assert first.usage.prompt_tokens == client.chat.completions.create(**{**ask, "n": 1}).usage.prompt_tokens


def test_best_of_keeps_the_choices_with_the_highest_cumulative_logprob(client, ingot_stack):
    ask = dict(model=ingot_stack.model, prompt="Once upon a time", max_tokens=8, seed=7, temperature=1.2,
               extra_body={"ignore_eos": True})
    every = client.completions.create(**ask, n=4, logprobs=0)
    ranked = sorted(every.choices, key=lambda c: sum(c.logprobs.token_logprobs), reverse=True)
    best = client.completions.create(**ask, n=2, best_of=4)
    assert [c.text for c in best.choices] == [c.text for c in ranked[:2]]
    assert [c.index for c in best.choices] == [0, 1]
    with pytest.raises(openai.BadRequestError, match="best_of"):
        client.completions.create(**ask, n=3, best_of=2)
    with pytest.raises(openai.BadRequestError, match="streamed"):
        client.completions.create(**ask, n=1, best_of=2, stream=True)


def test_completion_top_logprobs_are_the_models_most_likely_tokens(client, ingot_stack, tokenizer, reference_model):
    prompt_ids = tokenizer.encode("The capital of France")
    expected = raw_logprobs(reference_model, prompt_ids)
    reply = client.completions.create(model=ingot_stack.model, prompt=prompt_ids, max_tokens=6, temperature=2.0,
                                      seed=3, logprobs=5, echo=True, extra_body={"ignore_eos": True})
    logprobs = reply.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.top_logprobs) == len(prompt_ids) + 6
    assert logprobs.top_logprobs[0] is None
    # Every prompt position, and the first new token (whatever was sampled, its alternatives are the
    # prompt's last row): the model's five most likely tokens with their logprobs.
    for position in range(1, len(prompt_ids) + 1):
        row = expected[position - 1]
        values, ids = row.topk(5)
        top = logprobs.top_logprobs[position]
        assert max(top.values()) == pytest.approx(values[0].item(), abs=1e-4)
        best: dict[str, float] = {}  # tokens sharing a text (partial UTF-8 shows as U+FFFD) keep the best
        for token, value in zip(ids.tolist(), values.tolist(), strict=True):
            best.setdefault(tokenizer.token_text(token), value)
        assert top == pytest.approx(best, abs=1e-4) or set(top) - set(best) <= {logprobs.tokens[position]}
        for text, value in best.items():
            assert top[text] == pytest.approx(value, abs=1e-4)
    new = range(len(prompt_ids), len(prompt_ids) + 6)
    for position in new:
        top, logprob = logprobs.top_logprobs[position], logprobs.token_logprobs[position]
        assert len(top) <= 6  # the five most likely (fewer texts when some share one), and the sampled token
        assert logprobs.tokens[position] in top
        assert max(top.values()) >= logprob - 1e-6
    # At temperature 2 some sampled token is far from the most likely: its logprob is its own, not a "top-1".
    assert any(logprobs.token_logprobs[p] < max(logprobs.top_logprobs[p].values()) - 1e-3 for p in new)


def test_echo_with_logprobs_scores_the_prompt(client, ingot_stack, tokenizer, reference_model):
    prompt_ids = tokenizer.encode("Paged attention stores keys and values in blocks")
    expected = raw_logprobs(reference_model, prompt_ids)
    reference = [expected[i - 1, prompt_ids[i]].item() for i in range(1, len(prompt_ids))]
    reply = client.completions.create(model=ingot_stack.model, prompt=prompt_ids, max_tokens=0, echo=True,
                                      logprobs=1)
    choice = reply.choices[0]
    assert choice.text == tokenizer.decode(prompt_ids)
    assert choice.logprobs.token_logprobs[0] is None
    assert choice.logprobs.token_logprobs[1:] == pytest.approx(reference, abs=1e-4)
    assert len(choice.logprobs.tokens) == len(prompt_ids)
    assert reply.usage.completion_tokens == 0 and reply.usage.prompt_tokens == len(prompt_ids)
    with_text = client.completions.create(model=ingot_stack.model, prompt=prompt_ids, max_tokens=3, echo=True,
                                          logprobs=2, temperature=0)
    scored = with_text.choices[0].logprobs
    assert len(scored.token_logprobs) == len(prompt_ids) + 3
    assert scored.token_logprobs[1:len(prompt_ids)] == pytest.approx(reference, abs=1e-4)
    streamed = list(client.completions.create(model=ingot_stack.model, prompt=prompt_ids, max_tokens=0, echo=True,
                                              logprobs=1, stream=True))
    echoed = [c.choices[0] for c in streamed if c.choices and c.choices[0].logprobs]
    assert echoed[0].logprobs.token_logprobs[1:] == pytest.approx(reference, abs=1e-4)
    with pytest.raises(openai.BadRequestError, match="echo"):
        client.completions.create(model=ingot_stack.model, prompt="x", max_tokens=0)


def test_logit_bias_steers_and_bad_values_are_400(client, ingot_stack, tokenizer):
    forced = tokenizer.encode("!")[-1]
    reply = client.completions.create(model=ingot_stack.model, prompt="Hello", max_tokens=4, temperature=0.7,
                                      logit_bias={str(forced): 100}, extra_body={"ignore_eos": True})
    assert reply.choices[0].text == tokenizer.decode([forced] * 4)
    for bias, message in (({str(forced): 101}, "between -100 and 100"), ({"abc": 1}, "token ids"),
                          ({"99999999": 1}, "out of the vocabulary"), ({str(forced): "x"}, "must be a number")):
        with pytest.raises(openai.BadRequestError, match=message) as error:
            client.chat.completions.create(model=ingot_stack.model, messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=2, logit_bias=bias)
        assert error.value.body["param"] == "logit_bias"


def test_chat_logprobs_carry_each_tokens_own_bytes(client, ingot_stack, tokenizer):
    partial = tokenizer.encode("你")[-1]  # byte-level BPE: part of the character's three bytes
    assert "\ufffd" in tokenizer.token_text(partial) or len(tokenizer.encode("你")) == 1
    reply = client.chat.completions.create(model=ingot_stack.model, messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=3, temperature=0, logprobs=True, top_logprobs=4,
                                           logit_bias={str(partial): 100})
    content = reply.choices[0].logprobs.content
    assert [bytes(item.bytes) for item in content] == [tokenizer.token_bytes(partial)] * 3
    assert all(len(item.top_logprobs) == 4 for item in content)
    assert content[0].top_logprobs[0].logprob >= content[0].top_logprobs[-1].logprob
    text = "你好 😀"
    ids = tokenizer.encode(text)
    assert b"".join(tokenizer.token_bytes(t) for t in ids).decode("utf-8").endswith(text)


def test_beam_search_equals_transformers(client, ingot_stack, tokenizer, reference_model):
    prompt_ids = tokenizer.encode("A journey of a thousand miles")
    with torch.no_grad():
        out = reference_model.generate(torch.tensor([prompt_ids]), max_new_tokens=8, num_beams=3, do_sample=False,
                                       num_return_sequences=2, eos_token_id=None, pad_token_id=0)
    expected = [tokenizer.decode(row[len(prompt_ids):].tolist()) for row in out]
    reply = client.completions.create(model=ingot_stack.model, prompt=prompt_ids, max_tokens=8, n=2, best_of=3,
                                      temperature=0, extra_body={"use_beam_search": True, "ignore_eos": True})
    assert [c.text for c in reply.choices] == expected
    chat = client.chat.completions.create(model=ingot_stack.model, messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=5, extra_body={"num_beams": 2, "ignore_eos": True})
    assert len(chat.choices) == 1 and chat.choices[0].finish_reason == "length"
    with pytest.raises(openai.BadRequestError, match="streamed"):
        client.completions.create(model=ingot_stack.model, prompt="x", max_tokens=2, stream=True,
                                  extra_body={"num_beams": 2})
