"""The gateway image's dependency list stays in step with pyproject.toml and is enough for the gateway."""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GATEWAY_REQUIREMENTS = ROOT / "deploy" / "docker" / "requirements-gateway.txt"
# Left out of the gateway image on purpose: the engines' and the build pipeline's dependencies.
NOT_IN_GATEWAY = {"torch", "nvidia-pytriton", "boto3", "rich", "gguf"}


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~;\s]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _requirements(lines) -> dict[str, str]:
    return {_name(line): line.strip() for line in lines if line.strip() and not line.strip().startswith("#")}


def test_gateway_requirements_match_pyproject():
    project = _requirements(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    gateway = _requirements(GATEWAY_REQUIREMENTS.read_text().splitlines())
    for name, line in gateway.items():
        assert project.get(name) == line, f"{name}: {line!r} in the image, {project.get(name)!r} in pyproject.toml"
    left_out = set(project) - set(gateway)
    assert left_out == NOT_IN_GATEWAY & set(project), (
        f"pyproject.toml dependencies {sorted(left_out - NOT_IN_GATEWAY)} are missing from {GATEWAY_REQUIREMENTS.name}")


def test_gateway_modules_import_without_the_left_out_packages():
    """The gateway command must start in an image without torch, nvidia-pytriton, boto3 or rich."""
    blocked = ["torch", "pytriton", "boto3", "botocore", "rich", "gguf"]
    program = (
        "import sys\n"
        f"for name in {blocked!r}:\n"
        "    sys.modules[name] = None  # import fails; importlib.util.find_spec says absent\n"
        "import server.cli, server.app, server.settings, server.auth, server.metrics, server.tokenizer\n"
        "server.cli.main(['gateway', '--help'])\n"
    )
    result = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--triton-url" in result.stdout


def test_dockerfile_builds_non_root_images_with_the_gateway_last():
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, flags=re.MULTILINE | re.IGNORECASE)
    assert stages[-1] == "gateway", "a plain `docker build .` must give the gateway image"
    assert "portable" in stages
    assert re.search(r"^USER\s+10001", text, flags=re.MULTILINE)
    assert "requirements-gateway.txt" in text and "--no-deps" in text
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", text, flags=re.MULTILINE).group(1)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base), base
