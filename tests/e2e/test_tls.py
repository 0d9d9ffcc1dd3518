"""TLS in the gateway itself: a certificate made by the test's own CA, verified by the official openai client."""
from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time

import httpx
import openai
import pytest

from engines.triton.launcher import free_port
from tests.conftest import ROOT, TEST_API_KEY

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    import trustme

    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = {"ca": folder / "ca.pem", "chain": folder / "chain.pem", "key": folder / "key.pem"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server_cert.private_key_pem.write_to_path(str(paths["key"]))
    with open(paths["chain"], "wb") as chain:
        for blob in server_cert.cert_chain_pems:
            chain.write(blob.bytes())
    return paths


@pytest.fixture(scope="module")
def tls_gateway(ingot_stack, certificate, tmp_path_factory):
    """`ingot gateway --ssl-certfile --ssl-keyfile` on a free port, up once /health answers over HTTPS."""
    port, log_path = free_port(), tmp_path_factory.mktemp("tls-gateway") / "gateway.log"
    command = [sys.executable, "-m", "server.cli", "gateway", "--artifact", str(ingot_stack.artifact),
               "--triton-url", ingot_stack.triton.grpc_url, "--port", str(port),
               "--ssl-certfile", str(certificate["chain"]), "--ssl-keyfile", str(certificate["key"])]
    env = dict(os.environ, INGOT_API_KEYS=TEST_API_KEY, PYTHONUNBUFFERED="1")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"https://127.0.0.1:{port}"
    trusted = ssl.create_default_context(cafile=str(certificate["ca"]))
    deadline = time.monotonic() + 120
    try:
        while True:
            assert process.poll() is None, log_path.read_text()[-3000:]
            try:
                if httpx.get(f"{base_url}/health", verify=trusted, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.2)
        yield base_url
    finally:
        process.terminate()
        process.wait(timeout=15)


def test_the_openai_client_verifies_the_gateways_certificate(tls_gateway, certificate, ingot_stack):
    context = ssl.create_default_context(cafile=str(certificate["ca"]))
    client = openai.OpenAI(base_url=f"{tls_gateway}/v1", api_key=TEST_API_KEY, max_retries=0,
                           http_client=httpx.Client(verify=context))
    reply = client.chat.completions.create(model=ingot_stack.model, max_tokens=3,
                                           messages=[{"role": "user", "content": "Hello over TLS"}])
    assert reply.choices[0].message.content is not None and reply.usage.completion_tokens >= 1
    stream = client.completions.create(model=ingot_stack.model, prompt="Hello", max_tokens=3, stream=True)
    assert any(chunk.choices and chunk.choices[0].finish_reason for chunk in stream)


def test_a_client_without_the_ca_refuses_the_connection(tls_gateway, ingot_stack):
    client = openai.OpenAI(base_url=f"{tls_gateway}/v1", api_key=TEST_API_KEY, max_retries=0)
    with pytest.raises(openai.APIConnectionError):
        client.models.list()


def test_plain_http_gets_no_answer_from_the_tls_port(tls_gateway):
    with pytest.raises(httpx.HTTPError):
        httpx.get(tls_gateway.replace("https://", "http://") + "/health", timeout=10)


def test_a_certificate_without_its_key_is_refused_at_start(ingot_stack, certificate):
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "gateway", "--artifact", str(ingot_stack.artifact),
         "--ssl-certfile", str(certificate["chain"])], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, INGOT_API_KEYS=TEST_API_KEY))
    assert result.returncode == 2 and "--ssl-keyfile" in result.stderr
