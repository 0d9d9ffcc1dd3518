"""LoRA through the real tritonserver and the portable model, with TensorRT-LLM's semantics: adapters packed in
the artifact answer to their task id from the start; another adapter is sent once as lora_weights + lora_config
and then named by its id alone; an id never sent fails with TensorRT-LLM's "not found in cache" text. Every answer
is the greedy continuation of transformers + PEFT (fp32, unmerged)."""
from __future__ import annotations

import queue

import pytest
import tritonclient.grpc as grpcclient

from engines import contract
from engines.lora_format import read_peft_adapter, to_trtllm
from engines.manifest import read_manifest
from engines.repository import PortableSettings
from engines.targets.portable import build_portable
from engines.triton.launcher import start_triton
from engines.triton.lora_tasks import not_cached_message
from tests.lora_adapters import ALL_MODULES, PeftReference, make_adapter
from tests.portable.conftest import prompt_of

pytestmark = pytest.mark.e2e
pytest.importorskip("peft")
TOKENS = 12


@pytest.fixture(scope="module")
def adapters(demo_checkpoints, tmp_path_factory):
    root, base = tmp_path_factory.mktemp("loras"), demo_checkpoints["llama"]
    # "sent" travels as FP16 lora_weights: fp16-exact values and a power-of-two scaling keep it the same adapter
    return {"packed": make_adapter(base, root / "packed", 11, 8, 8, False, ALL_MODULES),
            "sent": make_adapter(base, root / "sent", 12, 4, 8, False, ALL_MODULES, fp16_exact=True)}


@pytest.fixture(scope="module")
def reference(demo_checkpoints, adapters):
    return PeftReference(demo_checkpoints["llama"], adapters)


@pytest.fixture(scope="module")
def server(demo_checkpoints, adapters, tmp_path_factory):
    artifact = tmp_path_factory.mktemp("lora-artifact") / "demo-llama"
    settings = PortableSettings(kv_cache_memory_bytes=32 << 20, max_num_seqs=16, max_num_batched_tokens=512,
                                max_loras=2, max_lora_rank=8, dtype="float32")
    build_portable(demo_checkpoints["llama"], artifact, settings, model_name="demo-llama",
                   loras={"packed": adapters["packed"]})
    server = start_triton(artifact / "model_repository", tmp_path_factory.mktemp("triton"))
    server.wait_ready(timeout=240)
    server.manifest = read_manifest(artifact)
    yield server
    server.stop()


def send(client, responses, request: contract.GenerationRequest) -> None:
    inputs = []
    for name, array in contract.encode_request(request).items():
        infer_input = grpcclient.InferInput(name, list(array.shape), contract.INPUT_SPECS[name].wire_dtype)
        infer_input.set_data_from_numpy(array)
        inputs.append(infer_input)
    client.async_stream_infer(contract.MODEL_NAME, inputs, request_id=str(id(request)),
                              enable_empty_final_response=True)


def run_all(url: str, requests: list[contract.GenerationRequest]) -> dict[str, list[int] | str]:
    """Send every request on one stream at once; each one's tokens, or its error text."""
    client, responses = grpcclient.InferenceServerClient(url), queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    for request in requests:
        send(client, responses, request)
    results: dict[str, list[int] | str] = {str(id(r)): [] for r in requests}
    done: set[str] = set()
    while len(done) < len(requests):
        result, error = responses.get(timeout=240)
        if error is not None:
            # an error response names no request id on the client side: match it to the one left
            pending = [key for key in results if key not in done and results[key] == []]
            results[pending[0]] = str(error)
            done.add(pending[0])
            continue
        response = result.get_response()
        key = response.id
        ids = result.as_numpy("output_ids")
        if ids is not None:
            results[key] += contract.decode_chunk({"output_ids": ids,
                                                   "sequence_length": result.as_numpy("sequence_length")},
                                                  False).output_ids
        if response.parameters["triton_final_response"].bool_param:
            done.add(key)
    client.stop_stream()
    client.close()
    return {key: results[str(id(r))] for key, r in zip(range(len(requests)), requests, strict=True)}


def greedy(prompt: list[int], **lora) -> contract.GenerationRequest:
    return contract.GenerationRequest(input_ids=prompt, request_output_len=TOKENS, end_id=-1, temperature=0.0,
                                      streaming=False, **lora)


def test_packed_and_sent_adapters_and_the_base_in_one_batch(server, adapters, reference):
    packed_id = server.manifest.loras["packed"]["task_id"]
    weights, config = to_trtllm(read_peft_adapter(adapters["sent"]))
    sent_id = 77
    prompts = [prompt_of(9 + 4 * i, seed=60 + i) for i in range(4)]
    first = run_all(server.grpc_url, [
        greedy(prompts[0], lora_task_id=packed_id),
        greedy(prompts[1], lora_task_id=sent_id, lora_weights=weights, lora_config=config),
        greedy(prompts[2]),
    ])
    assert first[0] == reference.greedy("packed", prompts[0], TOKENS)
    assert first[1] == reference.greedy("sent", prompts[1], TOKENS)
    assert first[2] == reference.greedy(None, prompts[2], TOKENS)
    assert first[0] != reference.greedy(None, prompts[0], TOKENS)  # the adapter changes the answer
    # the id alone now: the adapter is cached
    again = run_all(server.grpc_url, [greedy(prompts[3], lora_task_id=sent_id),
                                      greedy(prompts[3], lora_task_id=packed_id)])
    assert again[0] == reference.greedy("sent", prompts[3], TOKENS)
    assert again[1] == reference.greedy("packed", prompts[3], TOKENS)


def test_unknown_task_ids_and_bad_tensors_fail_with_the_reason(server, adapters):
    missing = run_all(server.grpc_url, [greedy([1, 2, 3], lora_task_id=4242)])[0]
    assert isinstance(missing, str) and not_cached_message(4242) in missing
    weights, config = to_trtllm(read_peft_adapter(adapters["sent"]))
    config = config.copy()
    config[0, 0] = 17
    bad = run_all(server.grpc_url, [greedy([1, 2, 3], lora_task_id=5, lora_weights=weights, lora_config=config)])[0]
    assert isinstance(bad, str) and "lora module id 17" in bad
    half = run_all(server.grpc_url, [greedy([1, 2, 3], lora_task_id=5)])[0]
    assert not_cached_message(5) in half  # the refused adapter was not cached
