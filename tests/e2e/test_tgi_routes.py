"""TGI's native API and SageMaker's routes against the real stack, through huggingface_hub's InferenceClient."""
from __future__ import annotations

import json

import httpx
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import ValidationError as HubValidationError


pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def hub(ingot_stack):
    return InferenceClient(model=ingot_stack.base_url, token=ingot_stack.api_key, timeout=120)


def _post(stack, path: str, body: dict, key: str | None = "default") -> httpx.Response:
    headers = {"Authorization": f"Bearer {stack.api_key if key == 'default' else key}"} if key else {}
    return httpx.post(f"{stack.base_url}{path}", json=body, headers=headers, timeout=120)


def test_text_generation_is_greedy_and_matches_transformers(hub, tokenizer, reference_greedy):
    text = hub.text_generation("The quick brown fox", max_new_tokens=12)
    expected = reference_greedy(tokenizer.encode("The quick brown fox"), 12)
    assert text == tokenizer.decode(expected)


def test_details_carry_tokens_logprobs_and_finish_reason(hub, tokenizer, reference_greedy, reference_logprobs):
    prompt_ids = tokenizer.encode("Hello")
    out = hub.text_generation("Hello", max_new_tokens=6, details=True, stop=[])
    expected = reference_greedy(prompt_ids, 6)
    assert [t.id for t in out.details.tokens] == expected
    assert out.details.generated_tokens == len(expected)
    assert out.details.finish_reason == ("length" if len(expected) == 6 else "eos_token")
    assert out.details.seed is None  # greedy: nothing was sampled
    for token, want in zip(out.details.tokens, reference_logprobs(prompt_ids, expected), strict=True):
        assert token.logprob == pytest.approx(want, abs=1e-3)


def test_sampling_reports_its_seed_and_reproduces(hub):
    first = hub.text_generation("Hello", max_new_tokens=8, do_sample=True, details=True)
    assert isinstance(first.details.seed, int)
    again = hub.text_generation("Hello", max_new_tokens=8, seed=first.details.seed, do_sample=True)
    assert again == first.generated_text


def test_streaming_tokens_add_up_to_the_final_text(hub, tokenizer):
    events = list(hub.text_generation("你好，世界", max_new_tokens=10, stream=True, details=True))
    assert [e.index for e in events] == list(range(1, len(events) + 1))
    assert events[-1].generated_text == "".join(e.token.text for e in events)
    assert all(e.generated_text is None for e in events[:-1])
    assert events[-1].details.generated_tokens == len(events)
    assert events[-1].details.input_length == len(tokenizer.encode("你好，世界"))
    plain = hub.text_generation("你好，世界", max_new_tokens=10)
    assert plain == events[-1].generated_text


def test_stop_and_return_full_text(hub):
    full = hub.text_generation("Hello", max_new_tokens=20)
    stop = full[len(full) // 2: len(full) // 2 + 2]
    cut = hub.text_generation("Hello", max_new_tokens=20, stop=[stop], details=True, return_full_text=True)
    assert cut.generated_text == "Hello" + full[: full.index(stop)]
    assert cut.details.finish_reason == "stop_sequence"


def test_generate_route_answers_an_object_and_root_a_list(ingot_stack):
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 3}}
    single = _post(ingot_stack, "/generate", body).json()
    listed = _post(ingot_stack, "/", body).json()
    assert isinstance(single, dict) and listed == [single]


def test_generate_stream_route_sends_tgi_events(ingot_stack):
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 4}}
    with httpx.stream("POST", f"{ingot_stack.base_url}/generate_stream", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {ingot_stack.api_key}"}) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line.startswith("data:")]
    events = [json.loads(line[len("data:"):]) for line in lines]
    assert events and events[-1]["generated_text"] is not None
    assert set(events[0]) == {"index", "token", "generated_text", "details"}  # top_tokens only when asked


@pytest.mark.parametrize("parameters, fragment", [
    ({"watermark": True}, "watermark"),
    ({"best_of": 2}, "you must use sampling when `best_of` is > 1"),
    ({"best_of": 2, "do_sample": True, "seed": 1}, "`seed` must not be set"),
    ({"best_of": 17, "do_sample": True}, "`best_of` must be > 0 and <= 16. Given: 17"),
    ({"top_n_tokens": 6}, "`top_n_tokens` must be >= 0 and <= 5"),
    ({"temperature": 0}, "temperature"),
    ({"top_p": 1.0}, "top_p"),
    ({"max_new_tokens": 100000}, "maximum context length"),
])
def test_refused_parameters_are_tgi_validation_errors(ingot_stack, parameters, fragment):
    response = _post(ingot_stack, "/generate", {"inputs": "Hello", "parameters": parameters})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error_type"] == "validation" and fragment in body["error"]


@pytest.mark.parametrize("parameters, fragment", [
    ({"best_of": 2, "do_sample": True}, "`best_of` != 1 is not supported when streaming tokens"),
    ({"decoder_input_details": True, "details": True}, "`decoder_input_details` == true is not supported when"),
])
def test_what_tgi_does_not_stream_is_refused_on_generate_stream(ingot_stack, parameters, fragment):
    response = _post(ingot_stack, "/generate_stream", {"inputs": "Hello", "parameters": parameters})
    assert response.status_code == 422 and fragment in response.json()["error"], response.text


def _reference_top(reference_model, prompt_ids: list[int], new_ids: list[int], k: int) -> list[list[tuple]]:
    """transformers' k most likely (id, logprob) after the prompt and each generated token."""
    import torch

    with torch.no_grad():
        logits = reference_model(torch.tensor([prompt_ids + new_ids])).logits[0, len(prompt_ids) - 1: -1]
    top = logits.float().log_softmax(-1).topk(k)
    return [list(zip(ids.tolist(), values.tolist(), strict=True)) for values, ids in zip(*top, strict=True)]


def _get(token, name: str):
    """A token's field: huggingface_hub leaves the tokens of nested lists (top_tokens) as dicts."""
    return token[name] if isinstance(token, dict) else getattr(token, name)


def test_top_n_tokens_are_the_models_most_likely_tokens(hub, tokenizer, reference_model):
    prompt_ids = tokenizer.encode("Hello")
    out = hub.text_generation("Hello", max_new_tokens=5, details=True, top_n_tokens=3, stop=[])
    ids = [t.id for t in out.details.tokens]
    assert len(out.details.top_tokens) == len(ids) == out.details.generated_tokens
    for chosen, top, want in zip(out.details.tokens, out.details.top_tokens,
                                 _reference_top(reference_model, prompt_ids, ids, 3), strict=True):
        assert [_get(t, "id") for t in top] == [token_id for token_id, _ in want]
        assert [_get(t, "logprob") for t in top] == pytest.approx([logprob for _, logprob in want], abs=1e-3)
        assert _get(top[0], "id") == chosen.id  # greedy takes the most likely
        assert _get(top[0], "logprob") == pytest.approx(chosen.logprob, abs=1e-5)
        assert all(_get(t, "text") == tokenizer.token_text(_get(t, "id")) for t in top)


def test_streamed_tokens_carry_their_top_tokens(hub):
    events = list(hub.text_generation("你好", max_new_tokens=6, stream=True, details=True, top_n_tokens=2))
    plain = hub.text_generation("你好", max_new_tokens=6, details=True, top_n_tokens=2)
    assert ([[_get(t, "id") for t in e.top_tokens] for e in events]
            == [[_get(t, "id") for t in top] for top in plain.details.top_tokens])
    assert all(_get(e.top_tokens[0], "id") == e.token.id for e in events)  # greedy takes the most likely


def test_decoder_input_details_score_the_prompt(hub, tokenizer, reference_logprobs):
    prompt = "The quick brown fox 你好"
    prompt_ids = tokenizer.encode(prompt)
    out = hub.text_generation(prompt, max_new_tokens=3, details=True, decoder_input_details=True)
    prefill = out.details.prefill
    assert [t.id for t in prefill] == prompt_ids
    assert [t.text for t in prefill] == [tokenizer.token_text(i) for i in prompt_ids]
    assert prefill[0].logprob is None  # nothing comes before the first token
    want = reference_logprobs(prompt_ids[:1], prompt_ids[1:])
    assert [t.logprob for t in prefill[1:]] == pytest.approx(want, abs=1e-3)
    without = hub.text_generation(prompt, max_new_tokens=3, details=True)
    assert without.details.prefill == [] and without.generated_text == out.generated_text


def test_best_of_keeps_the_highest_mean_logprob_and_reports_the_others(hub):
    out = hub.text_generation("Hello", max_new_tokens=8, best_of=3, do_sample=True, temperature=1.5,
                              details=True, return_full_text=True, decoder_input_details=True, stop=[])
    others = out.details.best_of_sequences
    assert len(others) == 2
    seeds = {out.details.seed, *(other.seed for other in others)}
    assert len(seeds) == 3  # each sequence sampled with its own seed

    def mean(tokens):
        return sum(t.logprob for t in tokens) / len(tokens)

    assert all(mean(out.details.tokens) >= mean(other.tokens) for other in others)
    assert all(other.prefill == out.details.prefill and other.prefill for other in others)
    for text, seed in [(out.generated_text, out.details.seed), *((o.generated_text, o.seed) for o in others)]:
        assert text.startswith("Hello")  # return_full_text applies to every sequence
        again = hub.text_generation("Hello", max_new_tokens=8, do_sample=True, temperature=1.5, seed=seed, stop=[])
        assert "Hello" + again == text  # each reported seed reproduces its sequence
    plain = hub.text_generation("Hello", max_new_tokens=8, best_of=2, do_sample=True)
    assert isinstance(plain, str)  # without details: only the best text


def test_hub_raises_its_validation_error(hub):
    with pytest.raises(HubValidationError, match="watermark"):
        hub.text_generation("Hello", max_new_tokens=2, watermark=True)


def test_generation_routes_need_the_key_info_and_ping_do_not(ingot_stack):
    for path in ("/generate", "/generate_stream", "/", "/invocations", "/tokenize"):
        response = _post(ingot_stack, path, {"inputs": "Hello"}, key=None)
        assert response.status_code == 401 and response.json()["error"]["code"] == "missing_api_key", path
    assert _post(ingot_stack, "/generate", {"inputs": "Hello"}, key="wrong").status_code == 401
    info = httpx.get(f"{ingot_stack.base_url}/info", timeout=30).json()
    assert info["model_id"] == ingot_stack.model and info["max_total_tokens"] == 512
    assert info["max_best_of"] == 16
    assert httpx.get(f"{ingot_stack.base_url}/ping", timeout=30).status_code == 200


def test_tgi_tokenize_gives_ids_and_character_offsets(ingot_stack, tokenizer):
    text = "Hello 你好"
    tokens = _post(ingot_stack, "/tokenize", {"inputs": text}).json()
    assert [t["id"] for t in tokens] == tokenizer.encode(text)
    assert all(t["text"] == text[t["start"]:t["stop"]] for t in tokens)


def test_invocations_take_tgi_chat_and_completion_bodies(ingot_stack, tokenizer, reference_greedy):
    tgi = _post(ingot_stack, "/invocations", {"inputs": "Hello", "parameters": {"max_new_tokens": 5}}).json()
    assert tgi == [{"generated_text": tokenizer.decode(reference_greedy(tokenizer.encode("Hello"), 5))}]
    messages = [{"role": "user", "content": "Hi"}]
    chat = _post(ingot_stack, "/invocations", {"messages": messages, "max_tokens": 5, "temperature": 0}).json()
    expected = tokenizer.decode(reference_greedy(tokenizer.apply_chat_template(messages), 5))
    assert chat["object"] == "chat.completion" and chat["choices"][0]["message"]["content"] == expected
    aliased = _post(ingot_stack, "/invocations", {"model": "tgi", "prompt": "Hello", "max_tokens": 5,
                                                  "temperature": 0}).json()
    assert aliased["object"] == "text_completion" and aliased["choices"][0]["text"] == tgi[0]["generated_text"]
    wrong = _post(ingot_stack, "/invocations", {"model": "other", "prompt": "Hello"})
    assert wrong.status_code == 404 and wrong.json()["error"]["code"] == "model_not_found"


def test_hub_chat_completion(hub, ingot_stack, tokenizer, reference_greedy):
    messages = [{"role": "user", "content": "Hello! 你好"}]
    reply = hub.chat_completion(messages, model=ingot_stack.model, max_tokens=8, temperature=0)
    expected = tokenizer.decode(reference_greedy(tokenizer.apply_chat_template(messages), 8))
    assert reply.choices[0].message.content == expected
    streamed = hub.chat_completion(messages, model=ingot_stack.model, max_tokens=8, temperature=0, stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices) == expected


def test_grammar_constrains_the_output(hub):
    digits = hub.text_generation("Hello", max_new_tokens=6, grammar={"type": "regex", "value": "[0-9]{3}"})
    assert len(digits) == 3 and digits.isdigit()
    answer = hub.text_generation("Hello", max_new_tokens=40, grammar={
        "type": "json", "value": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}})
    assert isinstance(json.loads(answer)["n"], int)
