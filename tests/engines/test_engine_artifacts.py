"""S3 round trips against moto's S3 server on loopback: a real HTTP endpoint, boto3 as in production."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engines import artifacts
from engines.manifest import read_manifest, verify_files
from engines.repository import PortableSettings
from engines.targets.portable import build_portable

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "ingot-artifacts"


@pytest.fixture(autouse=True)
def fake_credentials(monkeypatch):
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing-secret"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def client(s3_endpoint):
    client = artifacts.s3_client(s3_endpoint)
    if BUCKET not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture
def artifact(demo_checkpoints, tmp_path) -> Path:
    directory = tmp_path / "artifact"
    build_portable(demo_checkpoints["mistral"], directory, PortableSettings(), model_name="demo-mistral")
    return directory


def test_round_trip_resume_and_verify(client, artifact, tmp_path):
    url = f"s3://{BUCKET}/round-trip/demo-mistral"
    manifest = read_manifest(artifact)
    first = artifacts.upload_artifact(artifact, url, client=client)
    assert sorted(first.sent) == sorted([*manifest.files, "manifest.json"])
    assert first.sent[-1] == "manifest.json"  # last, so a partial upload never looks complete
    head = client.head_object(Bucket=BUCKET, Key="round-trip/demo-mistral/model_repository/tensorrt_llm/1/"
                                                 "checkpoint/model.safetensors")
    assert head["Metadata"]["sha256"] == manifest.files["model_repository/tensorrt_llm/1/checkpoint/model.safetensors"]

    second = artifacts.upload_artifact(artifact, url, client=client)
    assert second.sent == [] and len(second.skipped) == len(first.sent)  # resumed: nothing to send

    local = tmp_path / "pulled"
    pulled = artifacts.download_artifact(url, local, client=client)
    assert sorted(pulled.sent) == sorted(manifest.files)
    assert verify_files(local, read_manifest(local)) == []
    again = artifacts.download_artifact(url, local, client=client)
    assert again.sent == [] and len(again.skipped) == len(manifest.files)


def test_changed_file_is_resent(client, artifact):
    url = f"s3://{BUCKET}/changed/demo-mistral"
    artifacts.upload_artifact(artifact, url, client=client)
    config = artifact / "model_repository" / "tensorrt_llm" / "config.pbtxt"
    config.write_text(config.read_text().replace("max_queue_delay_microseconds: 0", "max_queue_delay_microseconds: 1"))
    from engines.manifest import write_manifest

    write_manifest(artifact, read_manifest(artifact))
    report = artifacts.upload_artifact(artifact, url, client=client)
    assert report.sent == ["model_repository/tensorrt_llm/config.pbtxt", "manifest.json"]


def test_corrupted_object_is_detected(client, artifact, tmp_path):
    url = f"s3://{BUCKET}/corrupt/demo-mistral"
    artifacts.upload_artifact(artifact, url, client=client)
    victim = "model_repository/tensorrt_llm/1/checkpoint/model.safetensors"
    client.put_object(Bucket=BUCKET, Key=f"corrupt/demo-mistral/{victim}", Body=b"not the weights")
    local = tmp_path / "pulled"
    with pytest.raises(artifacts.ArtifactIntegrityError) as err:
        artifacts.download_artifact(url, local, client=client)
    assert f"{victim}: sha256" in str(err.value)
    assert not (local / victim).exists()  # the corrupt file is not left behind
    assert not (local / "manifest.json").exists()  # nor a manifest claiming the download is complete


def test_multipart_upload_of_a_large_file(client, tmp_path, monkeypatch):
    monkeypatch.setattr(artifacts, "MULTIPART_THRESHOLD", 5 << 20)
    monkeypatch.setattr(artifacts, "MULTIPART_CHUNK", 5 << 20)
    directory = tmp_path / "big"
    directory.mkdir()
    (directory / "rank0.engine").write_bytes(os.urandom(12 << 20))
    from engines.manifest import Manifest, write_manifest

    write_manifest(directory, Manifest("big", "LlamaForCausalLM", "trtllm", 4096))
    url = f"s3://{BUCKET}/multipart/big"
    artifacts.upload_artifact(directory, url, client=client)
    head = client.head_object(Bucket=BUCKET, Key="multipart/big/rank0.engine")
    assert head["ETag"].strip('"').endswith("-3")  # three 5 MiB parts
    local = tmp_path / "pulled"
    artifacts.download_artifact(url, local, client=client)
    assert (local / "rank0.engine").read_bytes() == (directory / "rank0.engine").read_bytes()


def test_cli_push_and_pull(s3_endpoint, client, artifact, tmp_path):
    env = dict(os.environ, AWS_ENDPOINT_URL=s3_endpoint)
    url = f"s3://{BUCKET}/cli/demo-mistral"

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "engines.cli", *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=120)

    pushed = cli("push", str(artifact), url)
    assert pushed.returncode == 0, pushed.stderr
    assert "testing-secret" not in pushed.stdout + pushed.stderr
    again = cli("push", str(artifact), url)
    assert "uploaded 0 file(s)" in again.stderr
    pulled = cli("pull", url, str(tmp_path / "pulled"))
    assert pulled.returncode == 0, pulled.stderr
    assert verify_files(tmp_path / "pulled", read_manifest(tmp_path / "pulled")) == []
    client.put_object(Bucket=BUCKET, Key="cli/demo-mistral/tokenizer/tokenizer.json", Body=b"{}")
    broken = cli("pull", url, str(tmp_path / "pulled-again"))
    assert broken.returncode == 1
    assert "tokenizer/tokenizer.json: sha256" in broken.stderr


def test_build_from_and_to_s3(s3_endpoint, client, demo_checkpoints, tmp_path):
    for path in sorted(demo_checkpoints["llama"].iterdir()):
        client.upload_file(str(path), BUCKET, f"checkpoints/demo-llama/{path.name}")
    env = dict(os.environ, AWS_ENDPOINT_URL=s3_endpoint)
    result = subprocess.run(
        [sys.executable, "-m", "engines.cli", "build", "--checkpoint", f"s3://{BUCKET}/checkpoints/demo-llama",
         "--profile", "a100-40gb", "--target", "portable", "--out", f"s3://{BUCKET}/engines/demo-llama",
         "--model-name", "demo-llama"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    local = tmp_path / "pulled"
    artifacts.download_artifact(f"s3://{BUCKET}/engines/demo-llama", local, client=client)
    manifest = read_manifest(local)
    assert manifest.model_name == "demo-llama" and manifest.profile["name"] == "a100-40gb"
    assert manifest.tokenizer["chat_template"] == "tokenizer_config.json"
