"""Workloads: exact prompt lengths with a tokenizer, prompt files, seeded and repeatable."""
from __future__ import annotations

import json

import pytest

from benchmarks.workload import LengthSpec, count_tokens, from_file, load_tokenizer, synthetic
from engines.demo import train_tokenizer


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer().save(str(directory / "tokenizer.json"))
    return directory


def test_synthetic_prompts_have_exact_token_counts(tokenizer_dir):
    tokenizer = load_tokenizer(tokenizer_dir)
    requests = synthetic(20, LengthSpec(64, "uniform", 0.5), LengthSpec(16), seed=1, tokenizer=tokenizer)

    assert len({r.prompt_tokens for r in requests}) > 1
    for request in requests:
        assert 32 <= request.prompt_tokens <= 96
        assert count_tokens(tokenizer, request.prompt) == request.prompt_tokens
        assert request.max_tokens == 16


def test_fixed_lengths_without_a_tokenizer_use_words():
    requests = synthetic(3, LengthSpec(10), LengthSpec(5), seed=0)
    assert [len(r.prompt.split()) for r in requests] == [10, 10, 10]
    assert all(r.prompt_tokens is None and r.max_tokens == 5 for r in requests)


def test_same_seed_same_workload_other_seed_other_workload():
    spec = LengthSpec(50, "normal", 0.3)
    assert synthetic(5, spec, spec, seed=4) == synthetic(5, spec, spec, seed=4)
    assert synthetic(5, spec, spec, seed=4) != synthetic(5, spec, spec, seed=5)


def test_prompt_file_with_prompts_messages_and_sharegpt(tmp_path, tokenizer_dir):
    lines = [
        {"prompt": "Tell me about paged attention.", "max_tokens": 7},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]},
        {"conversations": [{"from": "human", "value": "What is continuous batching?"},
                           {"from": "gpt", "value": "New requests join the running batch."}]},
    ]
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")

    requests = from_file(path, 6, None, seed=0, tokenizer=load_tokenizer(tokenizer_dir))

    assert len(requests) == 6
    by_prompt = {r.prompt: r for r in requests}
    assert by_prompt["Tell me about paged attention."].max_tokens == 7
    chat = by_prompt["Be brief.\nHello!"]
    assert chat.chat_messages()[0] == {"role": "system", "content": "Be brief."} and chat.max_tokens == 128
    sharegpt = by_prompt["What is continuous batching?"]
    assert sharegpt.chat_messages() == [{"role": "user", "content": "What is continuous batching?"}]
    assert sharegpt.max_tokens == count_tokens(load_tokenizer(tokenizer_dir), "New requests join the running batch.")
    assert all(r.prompt_tokens == count_tokens(load_tokenizer(tokenizer_dir), r.prompt) for r in requests)


def test_sharegpt_json_array_with_a_fixed_output_length(tmp_path):
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps([{"id": "a", "conversations": [{"from": "human", "value": "Hi there"},
                                                              {"from": "gpt", "value": "Hello"}]}]))
    (request,) = from_file(path, 1, LengthSpec(9), seed=0)
    assert request.prompt == "Hi there" and request.max_tokens == 9


def test_bad_prompt_files_say_what_is_wrong(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok"}\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: not JSON"):
        from_file(path, 1, None, seed=0)
    path.write_text('{"text": "no known field"}\n')
    with pytest.raises(ValueError, match="needs `prompt`, `messages` or `conversations`"):
        from_file(path, 1, None, seed=0)
