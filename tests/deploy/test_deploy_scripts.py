"""The scripts the pods run: artifact verification against real manifests, and Triton's launch line."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engines.manifest import Manifest, write_manifest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "deploy" / "k8s" / "base" / "scripts"
VERIFY = SCRIPTS / "verify_artifact.py"
LAUNCH = SCRIPTS / "launch-triton.sh"


@pytest.fixture
def artifact(tmp_path) -> Path:
    """An artifact laid out as the build writes it, with a manifest from the pipeline's own writer."""
    root = tmp_path / "artifact"
    (root / "tokenizer").mkdir(parents=True)
    (root / "model_repository" / "tensorrt_llm" / "1").mkdir(parents=True)
    (root / "tokenizer" / "tokenizer.json").write_text('{"model": {}}')
    (root / "model_repository" / "tensorrt_llm" / "config.pbtxt").write_text('name: "tensorrt_llm"\n')
    (root / "model_repository" / "tensorrt_llm" / "1" / "rank0.engine").write_bytes(os.urandom(1 << 16))
    write_manifest(root, Manifest(model_name="m", architecture="LlamaForCausalLM", target="trtllm",
                                  max_model_len=4096))
    return root


def verify(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(VERIFY), *map(str, args)], capture_output=True, text=True, timeout=60)


def test_verify_accepts_an_intact_artifact(artifact):
    result = verify(artifact)
    assert result.returncode == 0, result.stderr
    assert "3 file(s) match" in result.stdout


def test_verify_rejects_a_changed_engine(artifact):
    engine = artifact / "model_repository" / "tensorrt_llm" / "1" / "rank0.engine"
    data = bytearray(engine.read_bytes())
    data[100] ^= 1
    engine.write_bytes(bytes(data))
    result = verify(artifact)
    assert result.returncode == 1
    assert "rank0.engine: sha256 mismatch" in result.stderr


def test_verify_rejects_a_missing_file_and_a_missing_manifest(artifact):
    (artifact / "tokenizer" / "tokenizer.json").unlink()
    result = verify(artifact)
    assert result.returncode == 1 and "tokenizer/tokenizer.json: missing" in result.stderr
    (artifact / "manifest.json").unlink()
    assert verify(artifact).returncode == 1


def test_verify_only_checks_the_prefix_the_gateway_downloads(artifact):
    shutil.rmtree(artifact / "model_repository")  # the gateway pod never fetches the engine
    result = verify(artifact, "--only", "tokenizer/")
    assert result.returncode == 0, result.stderr
    assert "1 file(s) match" in result.stdout
    assert verify(artifact, "--only", "nothing-here/").returncode == 1


def test_verify_refuses_paths_that_leave_the_artifact(artifact):
    manifest = (artifact / "manifest.json").read_text()
    (artifact / "manifest.json").write_text(manifest.replace('"tokenizer/tokenizer.json"', '"../outside"'))
    result = verify(artifact)
    assert result.returncode == 1 and "unsafe path" in result.stderr


@pytest.fixture
def fake_bin(tmp_path) -> Path:
    """`mpirun` and `tritonserver` stand-ins that print the command line they were given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("mpirun", "tritonserver"):
        tool = bin_dir / name
        tool.write_text(f'#!/bin/sh\nprintf "%s\\n" {name} "$@"\n')
        tool.chmod(0o755)
    return bin_dir


def launch(fake_bin: Path, repository: Path, **variables) -> subprocess.CompletedProcess:
    environment = {"PATH": f"{fake_bin}:{os.environ['PATH']}", "TRITON_MODEL_REPOSITORY": str(repository),
                   **variables}
    return subprocess.run(["bash", str(LAUNCH)], env=environment, capture_output=True, text=True, timeout=30)


def test_launch_single_gpu_execs_one_tritonserver_on_the_fixed_ports(fake_bin, artifact):
    result = launch(fake_bin, artifact / "model_repository")
    assert result.returncode == 0, result.stderr
    argv = result.stdout.split()
    assert argv[0] == "tritonserver"
    assert f"--model-repository={artifact / 'model_repository'}" in argv
    for flag in ("--http-port=8000", "--grpc-port=8001", "--metrics-port=8002"):
        assert flag in argv


def test_launch_tensor_parallel_runs_one_mpi_rank_per_gpu(fake_bin, artifact):
    result = launch(fake_bin, artifact / "model_repository", TRITON_WORLD_SIZE="4")
    assert result.returncode == 0, result.stderr
    argv = result.stdout.split()
    assert argv[:2] == ["mpirun", "--allow-run-as-root"]
    ranks = " ".join(argv[2:]).split(" : ")
    assert len(ranks) == 4
    for rank, line in enumerate(ranks):
        assert line.startswith("-n 1 tritonserver ")
        assert f"shm-region-prefix-name=prefix{rank}_" in line
        # Only rank 0 loads the whole repository; the others are workers of the tensorrt_llm model.
        assert ("--load-model=tensorrt_llm" in line) == (rank > 0)


def test_launch_refuses_a_bad_world_size_or_a_missing_repository(fake_bin, artifact, tmp_path):
    assert launch(fake_bin, artifact / "model_repository", TRITON_WORLD_SIZE="0").returncode == 2
    assert launch(fake_bin, tmp_path / "nowhere").returncode == 2


def test_launch_passes_the_portable_backend_directory(fake_bin, artifact):
    result = launch(fake_bin, artifact / "model_repository", TRITON_BACKEND_DIR="/opt/ingot/backends")
    assert "--backend-directory=/opt/ingot/backends" in result.stdout.split()


def test_dev_demo_artifact_passes_verification(tmp_path):
    """What the dev overlay's init container builds is what verify-artifact then accepts."""
    out = tmp_path / "models"
    build = subprocess.run([sys.executable, str(ROOT / "deploy" / "k8s" / "overlays" / "dev" / "make_demo_artifact.py"),
                            str(out)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    assert (out / "model_repository" / "tensorrt_llm" / "config.pbtxt").is_file()
    result = verify(out)
    assert result.returncode == 0, result.stderr


def restricted_flags(argv_lines: list[str]) -> dict[str, str]:
    return {line.split("=", 1)[0]: line.split("=", 1)[1] for line in argv_lines
            if line.startswith(("--http-restricted-api=", "--grpc-restricted-protocol="))}


@pytest.mark.parametrize("world_size", ["1", "2"])
def test_launch_closes_tritons_admin_apis_as_ingot_serve_does(fake_bin, artifact, world_size):
    from engines.triton.launcher import RESTRICTED_APIS

    result = launch(fake_bin, artifact / "model_repository", TRITON_WORLD_SIZE=world_size)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()  # one argument a line: the header name has spaces
    flags = restricted_flags(lines)
    assert set(flags) == {"--http-restricted-api", "--grpc-restricted-protocol"}
    assert sum(line.startswith("--http-restricted-api=") for line in lines) == int(world_size)  # every rank
    for setting in flags.values():
        apis, _, header = setting.partition(":")
        assert set(apis.split(",")) == set(RESTRICTED_APIS)
        assert not {"inference", "health", "metadata"} & set(apis.split(","))  # what the gateway uses
        key, _, value = header.partition("=")
        assert " " in key, "a header name a client could send"
        assert len(value) == 32 and int(value, 16) >= 0
    again = restricted_flags(launch(fake_bin, artifact / "model_repository").stdout.splitlines())
    assert again["--http-restricted-api"] != flags["--http-restricted-api"], "the value must be random"
