"""LoRA adapters through the whole stack and the official openai client: two adapters served from the start
(`ingot serve --lora`'s overlay of the artifact) and the base model answer concurrent requests with the greedy
tokens of transformers + PEFT (fp32, unmerged); /v1/models lists the adapters with their parent; a third adapter is
loaded and unloaded at run time through vLLM's admin routes, which only the admin key may call."""
from __future__ import annotations

import asyncio
import subprocess

import httpx
import openai
import pytest

from engines.lora_artifact import lora_overlay
from engines.lora_format import read_peft_adapter
from engines.targets.portable import build_portable
from server.tokenizer import Tokenizer
from tests.conftest import TEST_API_KEY, TEST_SETTINGS, start_gateway
from tests.lora_adapters import ALL_MODULES, PeftReference, make_adapter
from tests.e2e.serve_process import start_serve, wait_ready
from tests.portable.conftest import prompt_of

pytestmark = pytest.mark.e2e
pytest.importorskip("peft")
ADMIN_KEY = "ingot-admin-test-key"
TOKENS = 10


@pytest.fixture(scope="module")
def adapters(demo_checkpoints, tmp_path_factory):
    root, base = tmp_path_factory.mktemp("served-loras"), demo_checkpoints["llama"]
    return {"support-bot": make_adapter(base, root / "a", 21, 8, 16, False, ALL_MODULES),
            "sql-writer": make_adapter(base, root / "b", 22, 4, 8, True, ["q_proj", "v_proj", "down_proj"]),
            # loaded at run time, so sent as TensorRT-LLM's FP16 tensors: fp16-exact, scaling 2
            "late": make_adapter(base, root / "c", 23, 4, 8, False, ALL_MODULES, fp16_exact=True),
            "later": make_adapter(base, root / "d", 24, 4, 8, False, ALL_MODULES, fp16_exact=True)}


@pytest.fixture(scope="module")
def reference(demo_checkpoints, adapters):
    return PeftReference(demo_checkpoints["llama"], adapters)


@pytest.fixture(scope="module")
def stack(demo_checkpoints, adapters, triton_server_factory, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-stack")
    build_portable(demo_checkpoints["llama"], root / "demo-llama", TEST_SETTINGS, model_name="demo-llama")
    served = {name: adapters[name] for name in ("support-bot", "sql-writer")}
    # the engine's cache of adapters sent with requests holds one of "late" and "later" at a time
    host_cache = int(read_peft_adapter(adapters["late"]).nbytes * 1.5)
    overlay = lora_overlay(root / "demo-llama", root / "overlay", served, max_loras=2, max_lora_rank=8,
                           extra_parameters={"lora_cache_host_memory_bytes": host_cache})
    triton = triton_server_factory(overlay / "model_repository")
    process, base_url = start_gateway(overlay, triton.grpc_url, root / "gateway.log",
                                      extra_env={"INGOT_ADMIN_KEY": ADMIN_KEY})
    yield base_url, Tokenizer(overlay / "tokenizer")
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


def test_models_list_adapters_with_their_parent(stack):
    base_url, _ = stack
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=TEST_API_KEY, max_retries=0)
    cards = {card.id: card for card in client.models.list().data}
    assert list(cards)[0] == "demo-llama" and set(cards) == {"demo-llama", "support-bot", "sql-writer"}
    assert cards["support-bot"].parent == cards["sql-writer"].parent == "demo-llama"
    assert client.models.retrieve("sql-writer").parent == "demo-llama"
    with pytest.raises(openai.NotFoundError) as err:
        client.completions.create(model="no-such-adapter", prompt="Hi", max_tokens=2)
    assert err.value.body["code"] == "model_not_found" and err.value.body["param"] == "model"


def test_adapters_and_base_in_concurrent_requests_match_peft(stack, reference):
    base_url, tokenizer = stack
    models = ["support-bot", "demo-llama", "sql-writer", "support-bot", "sql-writer", "demo-llama"]
    prompts = [prompt_of(7 + 3 * i, seed=80 + i) for i in range(len(models))]

    async def ask(model, prompt):
        client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key=TEST_API_KEY, max_retries=0)
        reply = await client.completions.create(model=model, prompt=prompt, max_tokens=TOKENS, temperature=0,
                                                extra_body={"ignore_eos": True})
        await client.close()
        return reply.choices[0].text

    async def ask_all():
        return await asyncio.gather(*(ask(m, p) for m, p in zip(models, prompts, strict=True)))

    texts = asyncio.run(ask_all())
    for model, prompt, text in zip(models, prompts, texts, strict=True):
        adapter = None if model == "demo-llama" else model
        assert text == tokenizer.decode(reference.greedy(adapter, prompt, TOKENS)), model
    assert texts[0] != tokenizer.decode(reference.greedy(None, prompts[0], TOKENS))


def test_admin_routes_load_and_unload_with_the_admin_key_only(stack, adapters, reference):
    base_url, tokenizer = stack
    body = {"lora_name": "late", "lora_path": str(adapters["late"])}
    url = f"{base_url}/v1/load_lora_adapter"
    assert httpx.post(url, json=body, timeout=60).status_code == 401
    user = httpx.post(url, json=body, headers={"Authorization": f"Bearer {TEST_API_KEY}"}, timeout=60)
    assert user.status_code == 403 and user.json()["error"]["type"] == "permission_error"
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    assert httpx.post(url, json=body, headers={"Authorization": "Bearer nope"}, timeout=60).status_code == 401
    loaded = httpx.post(url, json=body, headers=admin, timeout=120)
    assert loaded.status_code == 200 and "late" in loaded.text
    again = httpx.post(url, json=body, headers=admin, timeout=120)
    assert again.status_code == 400 and "already been loaded" in again.json()["error"]["message"]
    missing = httpx.post(url, json={"lora_name": "x", "lora_path": "/no/such/dir"}, headers=admin, timeout=60)
    assert missing.status_code == 400 and "adapter_config.json" in missing.json()["error"]["message"]

    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=TEST_API_KEY, max_retries=0)
    prompt = prompt_of(11, seed=99)
    for _ in range(2):  # the first request carries the weights, the second only the task id
        text = client.completions.create(model="late", prompt=prompt, max_tokens=TOKENS, temperature=0,
                                         extra_body={"ignore_eos": True}).choices[0].text
        assert text == tokenizer.decode(reference.greedy("late", prompt, TOKENS))
    assert "late" in [card.id for card in client.models.list().data]

    # "later" evicts "late" from the engine's host cache: the engine answers "not found in cache" and the
    # gateway sends the weights again, unseen by the client
    body = {"lora_name": "later", "lora_path": str(adapters["later"])}
    assert httpx.post(url, json=body, headers=admin, timeout=120).status_code == 200
    for model in ("later", "late", "later"):
        text = client.completions.create(model=model, prompt=prompt, max_tokens=TOKENS, temperature=0,
                                         extra_body={"ignore_eos": True}).choices[0].text
        assert text == tokenizer.decode(reference.greedy(model, prompt, TOKENS)), model

    unload = f"{base_url}/v1/unload_lora_adapter"
    assert httpx.post(unload, json={"lora_name": "late"}, headers=admin, timeout=60).status_code == 200
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="late", prompt=prompt, max_tokens=2)
    gone = httpx.post(unload, json={"lora_name": "late"}, headers=admin, timeout=60)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "lora_adapter_not_found"


def test_serve_command_takes_adapters_from_folders_and_s3(demo_checkpoints, adapters, reference, tmp_path, monkeypatch,
                                                           s3_endpoint):
    """`ingot serve --lora NAME=PATH`: a local folder and an S3 prefix (moto in server mode), same answers."""
    import os
    import signal

    from engines import artifacts
    from server.stack import DEMO_API_KEY

    env = {k: v for k, v in os.environ.items() if not k.startswith(("INGOT_API_KEYS", "INGOT_ADMIN", "AWS_"))}
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing-secret", AWS_DEFAULT_REGION="us-east-1",
               AWS_ENDPOINT_URL=s3_endpoint)
    for name, value in env.items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    client = artifacts.s3_client(env["AWS_ENDPOINT_URL"])
    client.create_bucket(Bucket="adapters")
    for file in adapters["sql-writer"].iterdir():
        client.upload_file(str(file), "adapters", f"sql-writer/{file.name}")
    artifact = tmp_path / "demo-llama"  # float32, as the PEFT reference (a CPU with bfloat16 would pick it)
    build_portable(demo_checkpoints["llama"], artifact, TEST_SETTINGS, model_name="demo-llama")
    process, base_url, log_path = start_serve(
        tmp_path, "--artifact", str(artifact), "--lora", f"support-bot={adapters['support-bot']}",
        "--lora", "sql-writer=s3://adapters/sql-writer", "--max-loras", "2", "--max-lora-rank", "8", env=env)
    try:
        wait_ready(process, base_url, log_path, timeout=300)
        openai_client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=DEMO_API_KEY, max_retries=0)
        assert {m.id: m.parent for m in openai_client.models.list().data} == {
            "demo-llama": None, "support-bot": "demo-llama", "sql-writer": "demo-llama"}
        tokenizer = Tokenizer(tmp_path / "work" / "lora-artifacts" / "demo-llama" / "tokenizer")
        prompt = prompt_of(9, seed=123)
        for model in ("support-bot", "sql-writer"):
            text = openai_client.completions.create(model=model, prompt=prompt, max_tokens=TOKENS, temperature=0,
                                                    extra_body={"ignore_eos": True}).choices[0].text
            assert text == tokenizer.decode(reference.greedy(model, prompt, TOKENS)), model
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)


def test_tgi_adapter_id_runs_a_served_adapter_and_refuses_an_unknown_one(stack, reference):
    """TGI's `parameters.adapter_id` through huggingface_hub's InferenceClient (its own `adapter_id` argument), on
    /generate and /generate_stream: the adapter's greedy tokens as transformers + PEFT gives them."""
    from huggingface_hub import InferenceClient
    from huggingface_hub.errors import ValidationError as HubValidationError

    base_url, tokenizer = stack
    hub = InferenceClient(model=base_url, token=TEST_API_KEY, timeout=120)
    text = "Adapters change what a model says"
    prompt = tokenizer.encode(text)
    answers = {}
    for adapter in ("support-bot", "sql-writer", None):
        out = hub.text_generation(text, max_new_tokens=TOKENS, details=True, adapter_id=adapter)
        got, expected = [token.id for token in out.details.tokens], reference.greedy(adapter, prompt, TOKENS)
        # TGI has no ignore_eos: an answer may end early at the end-of-sequence token, never elsewhere
        assert got == expected[:len(got)] and got, adapter
        assert len(got) == TOKENS or out.details.finish_reason == "eos_token", adapter
        answers[adapter] = out.generated_text
    assert answers["support-bot"] != answers[None]
    events = list(hub.text_generation(text, max_new_tokens=TOKENS, stream=True, details=True, adapter_id="sql-writer"))
    assert events[-1].generated_text == answers["sql-writer"]

    with pytest.raises(HubValidationError, match="'no-such-adapter' is not a served LoRA adapter"):
        hub.text_generation(text, max_new_tokens=2, adapter_id="no-such-adapter")
    for path in ("/generate", "/generate_stream"):
        refused = httpx.post(f"{base_url}{path}", json={"inputs": text, "parameters": {"adapter_id": "nope"}},
                             headers={"Authorization": f"Bearer {TEST_API_KEY}"}, timeout=60)
        assert refused.status_code == 422, refused.text
        assert refused.json()["error_type"] == "validation"
        assert "the served adapters are" in refused.json()["error"] and "support-bot" in refused.json()["error"]
