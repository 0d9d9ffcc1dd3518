"""OpenAI and vLLM behaviours that were silently wrong, each checked on the real stack."""
from __future__ import annotations

import json
import shutil

import httpx
import openai
import pytest

from server.tokenizer import Tokenizer
from tests.conftest import start_gateway

pytestmark = pytest.mark.e2e


def test_max_tokens_beyond_the_context_is_a_400_with_the_numbers(client, ingot_stack):
    # The demo model holds 512 tokens; OpenAI and vLLM refuse rather than cap silently.
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=ingot_stack.model, prompt="Hello", max_tokens=600)
    error = caught.value.body
    assert error["code"] == "context_length_exceeded" and error["param"] == "max_tokens"
    assert "512" in error["message"] and "600" in error["message"]
    with pytest.raises(openai.BadRequestError, match="maximum context length is 512"):
        client.chat.completions.create(model=ingot_stack.model, messages=[{"role": "user", "content": "Hi"}],
                                       max_tokens=510)


def test_max_tokens_that_fit_exactly_are_accepted(client, ingot_stack):
    prompt_tokens = client.completions.create(model=ingot_stack.model, prompt="Hello", max_tokens=1).usage.prompt_tokens
    reply = client.completions.create(model=ingot_stack.model, prompt="Hello", max_tokens=512 - prompt_tokens,
                                      temperature=0, stop=["e"])
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_model_aliases_are_served(ingot_stack):
    response = httpx.post(f"{ingot_stack.base_url}/tokenize", json={"model": "tgi", "prompt": "Hello"},
                          headers={"Authorization": f"Bearer {ingot_stack.api_key}"}, timeout=60)
    assert response.status_code == 200


def test_completions_honour_max_completion_tokens(client, ingot_stack):
    reply = client.completions.create(model=ingot_stack.model, prompt="Hello", max_tokens=10,
                                      extra_body={"max_completion_tokens": 3, "ignore_eos": True})
    assert reply.usage.completion_tokens == 3 and reply.choices[0].finish_reason == "length"


def test_every_answer_carries_the_same_system_fingerprint(client, ingot_stack):
    completion = client.completions.create(model=ingot_stack.model, prompt="Hello", max_tokens=2)
    chat = client.chat.completions.create(model=ingot_stack.model, max_tokens=2,
                                          messages=[{"role": "user", "content": "Hi"}])
    stream = list(client.completions.create(model=ingot_stack.model, prompt="Hello", max_tokens=3, stream=True))
    chat_stream = list(client.chat.completions.create(model=ingot_stack.model, max_tokens=3, stream=True,
                                                      messages=[{"role": "user", "content": "Hi"}]))
    fingerprints = {completion.system_fingerprint, chat.system_fingerprint}
    fingerprints |= {chunk.system_fingerprint for chunk in stream + chat_stream}
    assert len(fingerprints) == 1 and fingerprints.pop().startswith("fp_")


def test_chat_answers_to_the_aliases(client, ingot_stack):
    reply = client.chat.completions.create(model="tgi", max_tokens=2, messages=[{"role": "user", "content": "Hi"}])
    assert reply.model == ingot_stack.model
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", max_tokens=2, messages=[{"role": "user", "content": "Hi"}])


NAMED_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|im_start|>' + message['role'] }}"
    "{% if message['name'] is defined %}{{ ' ' + message['name'] }}{% endif %}"
    "{{ '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


@pytest.fixture(scope="module")
def named_template_gateway(ingot_stack, tmp_path_factory):
    """A second gateway on the same Triton whose chat template writes each message's `name`."""
    artifact = tmp_path_factory.mktemp("named") / "artifact"
    artifact.mkdir()
    shutil.copy2(ingot_stack.artifact / "manifest.json", artifact / "manifest.json")
    shutil.copytree(ingot_stack.tokenizer_dir, artifact / "tokenizer")
    config_path = artifact / "tokenizer" / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = NAMED_TEMPLATE
    config_path.write_text(json.dumps(config))
    (artifact / "tokenizer" / "chat_template.jinja").unlink(missing_ok=True)
    process, base_url = start_gateway(artifact, ingot_stack.triton.grpc_url, artifact.parent / "gateway.log")
    yield base_url, Tokenizer(artifact / "tokenizer")
    process.terminate()
    process.wait(timeout=15)


def test_message_names_reach_the_chat_template(named_template_gateway, ingot_stack):
    base_url, tokenizer = named_template_gateway
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=ingot_stack.api_key, max_retries=0)
    named = [{"role": "user", "name": "Ada", "content": "Hi"}]
    reply = client.chat.completions.create(model=ingot_stack.model, messages=named, max_tokens=1)
    expected = tokenizer.apply_chat_template(named)
    assert reply.usage.prompt_tokens == len(expected)
    assert len(expected) > len(tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}]))
