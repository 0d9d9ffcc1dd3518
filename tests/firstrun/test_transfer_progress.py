"""`ingot push`, `pull` and `build` show S3 transfers in bytes and rate: plain lines into a pipe or log,
a rich bar on a terminal. Against moto's S3 server on loopback, through the real command line."""
from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

from engines import artifacts
from engines.manifest import Manifest, write_manifest
from tests.conftest import ROOT

BUCKET = "ingot-progress"
SECRET = "testing-progress-secret"


@pytest.fixture
def env(s3_endpoint, monkeypatch) -> dict[str, str]:
    values = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
              "AWS_ENDPOINT_URL": s3_endpoint}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    client = artifacts.s3_client(s3_endpoint)
    if BUCKET not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket=BUCKET)
    return dict(os.environ, COLUMNS="120")


@pytest.fixture
def artifact(tmp_path) -> Path:
    directory = tmp_path / "artifact"
    (directory / "engine").mkdir(parents=True)
    (directory / "engine" / "rank0.engine").write_bytes(os.urandom(6 << 20))
    (directory / "engine" / "config.json").write_text("{}")
    write_manifest(directory, Manifest("progress", "LlamaForCausalLM", "trtllm", 4096))
    return directory


def cli(env, *args, timeout=180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engines.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def on_a_terminal(env, *args, timeout=180) -> tuple[int, str]:
    """Run the command line with stderr on a pseudo-terminal, as a person at a shell sees it."""
    master, slave = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "engines.cli", *args], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return process.wait(timeout=timeout), b"".join(chunks).decode(errors="replace")


def test_push_and_pull_print_bytes_and_rate_into_a_pipe(env, artifact, tmp_path):
    url = f"s3://{BUCKET}/plain/progress"
    pushed = cli(env, "push", str(artifact), url)
    assert pushed.returncode == 0, pushed.stderr
    lines = pushed.stderr.splitlines()
    assert lines[0] == f"upload to {url}: 6.0 MiB to move"
    assert re.fullmatch(rf"upload to {url}: 6\.0 MiB of 6\.0 MiB, [\d.]+ (KiB|MiB|GiB)/s, done in [\d.]+s", lines[1])
    assert "\x1b[" not in pushed.stderr, "no terminal codes in a pipe"
    assert SECRET not in pushed.stderr

    pulled = cli(env, "pull", url, str(tmp_path / "pulled"))
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stderr.splitlines()[0] == f"download {url}: 6.0 MiB to move"
    assert "download" in pulled.stderr.splitlines()[1] and "/s, done in" in pulled.stderr.splitlines()[1]


def test_pull_draws_a_bar_on_a_terminal(env, artifact, tmp_path):
    url = f"s3://{BUCKET}/terminal/progress"
    artifacts.upload_artifact(artifact, url, client=artifacts.s3_client())
    code, output = on_a_terminal(env, "pull", url, str(tmp_path / "pulled"))
    assert code == 0, output
    assert f"download {url}" in output and "━" in output
    assert re.search(r"6\.3/6\.3 MB", output), output
    assert "downloaded 2 file(s)" in output


def test_build_from_and_to_s3_tells_each_step(env, demo_checkpoints):
    client = artifacts.s3_client()
    for path in sorted(demo_checkpoints["llama"].iterdir()):
        client.upload_file(str(path), BUCKET, f"checkpoints/demo-llama/{path.name}")
    built = cli(env, "build", "--checkpoint", f"s3://{BUCKET}/checkpoints/demo-llama", "--profile", "a100-40gb",
                "--target", "portable", "--out", f"s3://{BUCKET}/engines/demo-llama", "--model-name", "demo-llama",
                timeout=300)
    assert built.returncode == 0, built.stderr
    steps = [line for line in built.stderr.splitlines() if line.endswith(" ...") or re.search(r": done in [\d.]+s$",
                                                                                             line)]
    starts = [line[:-4] for line in steps if line.endswith(" ...")]
    assert starts == ["download checkpoint", "validate checkpoint", "plan", "portable repository",
                      f"upload to s3://{BUCKET}/engines/demo-llama"]
    assert f"download s3://{BUCKET}/checkpoints/demo-llama: " in built.stderr
    assert re.search(rf"upload to s3://{BUCKET}/engines/demo-llama: [\d.]+ [KMG]iB of", built.stderr)
    assert starts[-1] + ": done in" in built.stderr
