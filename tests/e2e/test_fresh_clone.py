"""A newcomer's first five minutes: `make serve` in a fresh clone of this commit, with the default model, then
the README's "Try it" examples exactly as written (only the port differs), and Ctrl+C leaves nothing behind.

The clone reuses this test run's virtual environment (`make serve VENV=… INSTALL=0`) instead of building
its own: measuring the install is benchmarks/first_run.py's job. Modules come from the clone (python -m runs
from its root, and Triton's stub starts there)."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from engines.triton.launcher import free_port
from tests.conftest import ROOT

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(shutil.which("make") is None or shutil.which("git") is None
                                 or shutil.which("curl") is None, reason="needs make, git and curl")]

README_PORT = "127.0.0.1:8000"


def try_it_blocks(readme: str) -> dict[str, list[str]]:
    """The code blocks of the README's "## Try it" section, by language."""
    section = readme.split("\n## Try it\n", 1)[1].split("\n## ", 1)[0]
    blocks: dict[str, list[str]] = {}
    for language, code in re.findall(r"```(\w+)\n(.*?)```", section, flags=re.DOTALL):
        blocks.setdefault(language, []).append(code)
    return blocks


@pytest.fixture
def clone(tmp_path) -> Path:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    target = tmp_path / "ingot"
    subprocess.run(["git", "clone", "--quiet", "--no-checkout", str(ROOT), str(target)], check=True, timeout=300)
    subprocess.run(["git", "checkout", "--quiet", head], cwd=target, check=True, timeout=300)
    return target


def wait_for(pattern: str, log_path: Path, process: subprocess.Popen, timeout: float = 900) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        if re.search(pattern, text):
            return text
        assert process.poll() is None, f"make serve exited with {process.returncode}:\n{text[-4000:]}"
        time.sleep(0.2)
    raise AssertionError(f"no {pattern!r} after {timeout:.0f}s:\n{log_path.read_text()[-4000:]}")


def test_make_serve_in_a_fresh_clone_answers_the_readme_examples(clone, tmp_path):
    port = free_port()
    blocks = try_it_blocks((clone / "README.md").read_text())
    assert blocks.get("bash") and blocks.get("python"), "the README's Try it has a curl and an openai example"
    ours = {k: v for k, v in os.environ.items() if not k.startswith(("INGOT_API_KEYS", "INGOT_PORT", "INGOT_HOST"))}
    log_path = tmp_path / "make-serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(["make", "serve", f"PORT={port}", f"VENV={sys.prefix}", "INSTALL=0"], cwd=clone,
                                   env=ours, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        text = wait_for(r"gateway on http://127\.0\.0\.1:\d+/v1.*\n.*curl .*\n.*stop with Ctrl\+C", log_path, process)
        # "gateway on" comes only once the gateway answers.
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
        stages = [text.find(line) for line in ("Triton ...", "Triton: model loading: tensorrt_llm", "Triton: ready",
                                               "Triton: done in", "starting the gateway", "gateway on")]
        assert -1 not in stages and stages == sorted(stages), (stages, text[-4000:])
        assert text.count("gateway on ") == 1
        printed_curl = re.search(r"curl -s \S+/v1/chat/completions .*", text).group(0)
        outputs = [run(["bash", "-c", printed_curl])]
        for code in blocks["bash"]:
            outputs.append(run(["bash", "-e", "-c", code.replace(README_PORT, f"127.0.0.1:{port}")]))
        for code in blocks["python"]:
            outputs.append(run([sys.executable, "-c", code.replace(README_PORT, f"127.0.0.1:{port}")]))
    finally:
        os.killpg(process.pid, signal.SIGINT)  # Ctrl+C reaches make and the stack, as in a terminal
        process.wait(timeout=120)

    reply = json.loads(outputs[0])
    assert reply["choices"][0]["message"]["content"] and reply["usage"]["completion_tokens"] >= 1, reply
    curl_output = "".join(outputs[1:1 + len(blocks["bash"])])
    assert '"object":"chat.completion"' in curl_output.replace(" ", ""), curl_output
    assert "data: [DONE]" in curl_output, "the streamed example streams"
    for output in outputs[1 + len(blocks["bash"]):]:
        assert output.strip(), "each openai example prints the model's answer"
    left = subprocess.run(["pgrep", "-f", str(clone)], capture_output=True, text=True).stdout.split()
    assert left == [], f"processes of the stack outlived make serve: {left}"


def run(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{command[-1][:300]}\nexit {result.returncode}:\n{result.stderr[-3000:]}"
    return result.stdout
