"""/v1/embeddings against the real stack: Triton serving the demo Llama and all-MiniLM-L6-v2 side by side.

Vectors are checked against sentence-transformers' own; the clients are the ones users have (openai,
langchain-openai, litellm).
"""
from __future__ import annotations

import base64
import os

import httpx
import numpy as np
import openai
import pytest

from engines.embedding import resolve_model_dir
from engines.embedding_artifact import add_embedding_model
from engines.targets.portable import build_portable
from tests.conftest import TEST_API_KEY, TEST_SETTINGS, start_gateway

pytestmark = pytest.mark.e2e
MODEL = "all-MiniLM-L6-v2"
TEXTS = ["Hello world", "你好，世界！今天天气很好", "Emoji 😀 🚀 and café naïve",
         "Paged attention stores the KV cache in fixed-size blocks, so memory is not wasted on padding."]


@pytest.fixture(scope="module")
def embedding_stack(demo_checkpoints, triton_server_factory, tmp_path_factory):
    artifact = tmp_path_factory.mktemp("artifact") / "demo-llama-embed"
    build_portable(demo_checkpoints["llama"], artifact, TEST_SETTINGS, model_name="demo-llama")
    add_embedding_model(artifact, MODEL)
    triton = triton_server_factory(artifact / "model_repository")
    process, base_url = start_gateway(artifact, triton.grpc_url, tmp_path_factory.mktemp("gw") / "gateway.log")
    yield base_url
    process.terminate()
    process.wait(timeout=15)


@pytest.fixture(scope="module")
def reference():
    from sentence_transformers import SentenceTransformer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = SentenceTransformer(str(resolve_model_dir(MODEL)), device="cpu")
    return lambda texts: model.encode(texts, convert_to_numpy=True)


@pytest.fixture(scope="module")
def client(embedding_stack):
    return openai.OpenAI(base_url=f"{embedding_stack}/v1", api_key=TEST_API_KEY, max_retries=0)


def _post(base_url: str, body: dict) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/embeddings", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {TEST_API_KEY}"})


def _cosines(got, expected) -> np.ndarray:
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    return (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)


def test_openai_client_matches_sentence_transformers(client, reference):
    # The openai client asks for base64 by default and decodes it itself.
    reply = client.embeddings.create(model=MODEL, input=TEXTS)
    assert [d.index for d in reply.data] == list(range(len(TEXTS)))
    got = [d.embedding for d in reply.data]
    assert all(len(vector) == 384 for vector in got)
    assert _cosines(got, reference(TEXTS)).min() >= 0.9999
    assert reply.usage.prompt_tokens == reply.usage.total_tokens > len(TEXTS) * 2
    assert reply.model == MODEL


def test_float_and_base64_carry_the_same_vector(embedding_stack):
    floats = _post(embedding_stack, {"model": MODEL, "input": "café", "encoding_format": "float"}).json()
    packed = _post(embedding_stack, {"model": MODEL, "input": "café", "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), dtype="<f4")
    assert np.array_equal(decoded, np.asarray(floats["data"][0]["embedding"], dtype=np.float32))
    assert floats["usage"] == packed["usage"] and floats["usage"]["prompt_tokens"] >= 3  # [CLS] … [SEP]


def test_token_arrays_embed_as_their_text(embedding_stack, reference):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model_dir(MODEL)))
    ids = [tokenizer.encode(text, add_special_tokens=False) for text in TEXTS[:2]]
    one = _post(embedding_stack, {"model": MODEL, "input": ids[0]}).json()
    many = _post(embedding_stack, {"model": MODEL, "input": ids}).json()
    assert _cosines([one["data"][0]["embedding"]], reference(TEXTS[:1])).min() >= 0.9999
    assert _cosines([d["embedding"] for d in many["data"]], reference(TEXTS[:2])).min() >= 0.9999


def test_many_inputs_batch_and_keep_their_order(client, reference):
    texts = [f"sentence number {i}: {'长' * (i % 7)} tokens vary" for i in range(40)]
    reply = client.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    assert _cosines([d.embedding for d in reply.data], reference(texts)).min() >= 0.9999


@pytest.mark.parametrize("body, status, param, fragment", [
    ({"input": "hello " * 300}, 400, "input", "takes at most 256"),
    ({"input": []}, 400, "input", "must not be empty"),
    ({"input": ["ok", ""]}, 400, "input", "No input may be empty"),
    ({"input": [1, 2, 10**9]}, 400, "input", "out of the vocabulary"),
    ({"input": "hi", "dimensions": 128}, 400, "dimensions", "does not support 'dimensions'"),
    ({"input": "hi", "encoding_format": "int8"}, 400, "encoding_format", ""),
    ({"input": "hi", "model": "demo-llama"}, 404, "model", "does not serve embeddings"),
])
def test_bad_requests_get_clear_errors(embedding_stack, body, status, param, fragment):
    response = _post(embedding_stack, {"model": MODEL, **body})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and fragment in error["message"]


def test_native_dimensions_are_accepted(embedding_stack):
    response = _post(embedding_stack, {"model": MODEL, "input": "hi", "dimensions": 384})
    assert response.status_code == 200 and len(response.json()["data"][0]["embedding"]) == 384


def test_models_lists_the_embedding_model(client):
    assert {m.id for m in client.models.list().data} == {"demo-llama", MODEL}


def test_langchain_openai_embeddings(embedding_stack, reference):
    import langchain_openai

    # check_embedding_ctx_length=False: langchain would otherwise send tiktoken ids meant for OpenAI's models.
    embedder = langchain_openai.OpenAIEmbeddings(model=MODEL, base_url=f"{embedding_stack}/v1", api_key=TEST_API_KEY,
                                                 check_embedding_ctx_length=False, max_retries=0)
    documents = embedder.embed_documents(TEXTS)
    query = embedder.embed_query(TEXTS[0])
    assert _cosines(documents + [query], reference(TEXTS + TEXTS[:1])).min() >= 0.9999


def test_litellm_embedding(embedding_stack, reference):
    import litellm

    reply = litellm.embedding(model=f"openai/{MODEL}", input=TEXTS[:2], api_base=f"{embedding_stack}/v1",
                              api_key=TEST_API_KEY)
    vectors = [item["embedding"] for item in reply.data]
    assert _cosines(vectors, reference(TEXTS[:2])).min() >= 0.9999
    assert reply.usage.prompt_tokens > 0
