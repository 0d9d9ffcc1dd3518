"""A gateway serving a TensorRT-LLM artifact refuses, with a 400 saying what to rebuild, what that engine was not
built with (logits rows, beams), and passes the rest on. TensorRT-LLM cannot run here, so the artifact is the demo
model's with a trtllm manifest, served by the real Triton of the portable engine: what passes the gateway gets a
real answer."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import TEST_API_KEY, start_gateway

pytestmark = pytest.mark.e2e


def serve_as_trtllm(demo_artifact: Path, triton_url: str, tmp_path: Path, **profile):
    artifact = tmp_path / "trtllm-artifact"
    shutil.copytree(demo_artifact, artifact, ignore=shutil.ignore_patterns("model_repository"))
    manifest = json.loads((artifact / "manifest.json").read_text())
    manifest.update(target="trtllm", profile={**manifest["profile"], **profile})
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    return start_gateway(artifact, triton_url, tmp_path / "gateway.log")


def refused(call, fragment: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        call()
    assert fragment in caught.value.message and caught.value.code == "unsupported_by_engine"


def test_an_engine_with_context_logits_only(demo_artifact, ingot_stack, tmp_path):
    process, base_url = serve_as_trtllm(demo_artifact, ingot_stack.triton.grpc_url, tmp_path, max_beam_width=1,
                                        gather_context_logits=True, gather_generation_logits=False)
    try:
        client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=TEST_API_KEY, max_retries=0)
        ask = dict(model="demo-llama", prompt="Hello world", max_tokens=2, temperature=0)
        echoed = client.completions.create(**ask, echo=True, logprobs=0)
        assert echoed.choices[0].logprobs.token_logprobs[0] is None  # the prompt's logprobs came back
        assert len(echoed.choices[0].logprobs.token_logprobs) > 2
        refused(lambda: client.completions.create(**ask, logprobs=2), "--gather-generation-logits")
        messages = [{"role": "user", "content": "Hi"}]
        refused(lambda: client.chat.completions.create(model="demo-llama", messages=messages, max_tokens=2,
                                                       logprobs=True, top_logprobs=2), "--gather-generation-logits")
        chosen = client.chat.completions.create(model="demo-llama", messages=messages, max_tokens=2, logprobs=True)
        assert chosen.choices[0].logprobs.content  # the chosen tokens' logprobs need no logits rows
        refused(lambda: client.completions.create(**ask, extra_body={"num_beams": 2}), "--max-beam-width 2")
        tgi = httpx.post(f"{base_url}/generate", headers={"Authorization": f"Bearer {TEST_API_KEY}"}, timeout=120,
                         json={"inputs": "Hello", "parameters": {"max_new_tokens": 2, "top_n_tokens": 2}})
        assert tgi.status_code == 422 and "--gather-generation-logits" in tgi.json()["error"]
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_beam_search_engine_takes_its_own_width_only(demo_artifact, ingot_stack, tmp_path):
    process, base_url = serve_as_trtllm(demo_artifact, ingot_stack.triton.grpc_url, tmp_path, max_beam_width=2)
    try:
        client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=TEST_API_KEY, max_retries=0)
        ask = dict(model="demo-llama", prompt="Hello world", max_tokens=3)
        beams = client.completions.create(**ask, n=2, extra_body={"use_beam_search": True})
        assert len(beams.choices) == 2
        refused(lambda: client.completions.create(**ask), "exactly 2 beams")
        refused(lambda: client.completions.create(**ask, extra_body={"num_beams": 3}), "exactly 2 beams")
        refused(lambda: client.completions.create(**ask, n=2, extra_body={"num_beams": 2}, echo=True, logprobs=0),
                "--gather-context-logits")
    finally:
        process.terminate()
        process.wait(timeout=30)
