"""Several choices (`n=2`) through the client libraries users have, against the real stack: langchain-openai's
ChatOpenAI and OpenAI, litellm's completion and text_completion. Each must give the same choices as the
official openai client with the same seed, in their index order. (Their embeddings: tests/e2e/test_embeddings.py.)
"""
from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.e2e
MESSAGES = [{"role": "user", "content": "Tell me a story about 猫"}]
SAMPLING = dict(max_tokens=10, temperature=1.5, seed=11)


@pytest.fixture(scope="module")
def litellm():
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # its import would fetch a price list from the internet
    import litellm

    return litellm


@pytest.fixture(scope="module")
def chat_texts(client, ingot_stack) -> list[str]:
    reply = client.chat.completions.create(model=ingot_stack.model, messages=MESSAGES, n=2, **SAMPLING,
                                           extra_body={"ignore_eos": True})
    texts = [choice.message.content for choice in reply.choices]
    assert len(set(texts)) == 2  # two different samples, or the checks below prove nothing
    return texts


@pytest.fixture(scope="module")
def completion_texts(client, ingot_stack) -> list[str]:
    reply = client.completions.create(model=ingot_stack.model, prompt="Once upon a time", n=2, **SAMPLING,
                                      extra_body={"ignore_eos": True})
    texts = [choice.text for choice in reply.choices]
    assert len(set(texts)) == 2
    return texts


def test_langchain_chat_openai_n2(ingot_stack, chat_texts):
    from langchain_core.messages import HumanMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=ingot_stack.model, base_url=f"{ingot_stack.base_url}/v1", api_key=ingot_stack.api_key,
                     n=2, max_retries=0, extra_body={"ignore_eos": True}, **SAMPLING)
    result = llm.generate([[HumanMessage(MESSAGES[0]["content"])]])
    assert [generation.text for generation in result.generations[0]] == chat_texts
    assert result.llm_output["token_usage"]["completion_tokens"] == 2 * SAMPLING["max_tokens"]


def test_langchain_openai_completions_n2_and_best_of(ingot_stack, completion_texts):
    from langchain_openai import OpenAI

    common = dict(model=ingot_stack.model, base_url=f"{ingot_stack.base_url}/v1", api_key=ingot_stack.api_key,
                  max_retries=0, extra_body={"ignore_eos": True}, **SAMPLING)
    result = OpenAI(n=2, **common).generate(["Once upon a time"])
    assert [generation.text for generation in result.generations[0]] == completion_texts
    best = OpenAI(n=1, best_of=2, **common).generate(["Once upon a time"])
    assert [generation.text for generation in best.generations[0]] in ([completion_texts[0]], [completion_texts[1]])


def test_litellm_completion_n2(ingot_stack, litellm, chat_texts):
    reply = litellm.completion(model=f"openai/{ingot_stack.model}", messages=MESSAGES, n=2,
                               api_base=f"{ingot_stack.base_url}/v1", api_key=ingot_stack.api_key,
                               extra_body={"ignore_eos": True}, **SAMPLING)
    assert [choice.index for choice in reply.choices] == [0, 1]
    assert [choice.message.content for choice in reply.choices] == chat_texts
    assert reply.usage.completion_tokens == 2 * SAMPLING["max_tokens"]


def test_litellm_streamed_completion_n2(ingot_stack, litellm, chat_texts):
    chunks = litellm.completion(model=f"openai/{ingot_stack.model}", messages=MESSAGES, n=2, stream=True,
                                api_base=f"{ingot_stack.base_url}/v1", api_key=ingot_stack.api_key,
                                extra_body={"ignore_eos": True}, **SAMPLING)
    texts = {0: "", 1: ""}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert [texts[0], texts[1]] == chat_texts


def test_litellm_text_completion_n2(ingot_stack, litellm, completion_texts):
    reply = litellm.text_completion(model=f"text-completion-openai/{ingot_stack.model}", prompt="Once upon a time",
                                    n=2, api_base=f"{ingot_stack.base_url}/v1", api_key=ingot_stack.api_key,
                                    extra_body={"ignore_eos": True}, **SAMPLING)
    assert [choice.text for choice in reply.choices] == completion_texts
