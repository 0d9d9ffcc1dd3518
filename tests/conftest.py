"""Shared fixtures: demo checkpoints, a real Triton server, and the whole stack on loopback."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from engines.repository import PortableSettings
from engines.targets.portable import build_portable
from engines.triton.launcher import TritonServer, free_port, start_triton
from tests import demo_fixtures, real_model_fixtures
from tests.redis_server import RedisServer

demo_checkpoints = demo_fixtures.demo_checkpoints
real_model = real_model_fixtures.real_model
real_model_artifact = real_model_fixtures.real_model_artifact
real_model_stack = real_model_fixtures.real_model_stack
ROOT = Path(__file__).resolve().parents[1]
TEST_API_KEY = "sk-ingot-test-key"
# The engine in a process of its own, as on CUDA (engine_process "auto" keeps it in the stub on CPU): the
# whole e2e suite runs the process path; the in-process path runs in tests/engines/test_portable_model_triton.py
# and under the real model (tests/real_model_fixtures.py), which serves with the defaults.
TEST_SETTINGS = PortableSettings(dtype="float32", kv_cache_memory_bytes=32 << 20, max_num_seqs=32,
                                 max_num_batched_tokens=512, engine_process="true")


@pytest.fixture(scope="session")
def demo_artifact(demo_checkpoints, tmp_path_factory) -> Path:
    artifact = tmp_path_factory.mktemp("artifact") / "demo-llama"
    build_portable(demo_checkpoints["llama"], artifact, TEST_SETTINGS, model_name="demo-llama")
    return artifact


@pytest.fixture(scope="session")
def triton_server_factory(tmp_path_factory):
    """Call with a model repository: starts the real tritonserver, waits until ready, stops at the end."""
    servers: list[TritonServer] = []

    def start(model_repository: Path) -> TritonServer:
        server = start_triton(Path(model_repository), tmp_path_factory.mktemp("triton"))
        servers.append(server)
        server.wait_ready(timeout=240)
        return server

    yield start
    for server in servers:
        server.stop()


@dataclass
class Stack:
    base_url: str
    api_key: str
    model: str
    tokenizer_dir: Path
    artifact: Path
    triton: TritonServer
    gateway: subprocess.Popen
    gateway_log: Path


def start_gateway(artifact: Path, triton_url: str, log_path: Path, extra_env: dict | None = None):
    port = free_port()
    env = dict(os.environ, INGOT_API_KEYS=TEST_API_KEY, PYTHONUNBUFFERED="1", **(extra_env or {}))
    command = [sys.executable, "-m", "server.cli", "gateway", "--artifact", str(artifact),
               "--triton-url", triton_url, "--port", str(port)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300   # importing torch/transformers takes minutes on a loaded 2-core machine
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                return process, base_url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"gateway did not start:\n{log_path.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def ingot_stack(demo_artifact, triton_server_factory, tmp_path_factory) -> Stack:
    """Real Triton (portable engine, demo Llama, CPU) and a real gateway process on loopback."""
    triton = triton_server_factory(demo_artifact / "model_repository")
    log_path = tmp_path_factory.mktemp("gateway") / "gateway.log"
    process, base_url = start_gateway(demo_artifact, triton.grpc_url, log_path)
    stack = Stack(base_url, TEST_API_KEY, "demo-llama", demo_artifact / "tokenizer", demo_artifact, triton,
                  process, log_path)
    yield stack
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> RedisServer:
    """A real redis-server on loopback, for limits shared by several gateways."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def s3_endpoint():
    """A real S3-compatible server (moto in server mode) on a free loopback port, fresh for each test module."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
