"""`make serve` installs only what serving needs; `make test` adds the test extras; stamps keep both idle."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def planned(target: str, venv: Path, *variables: str) -> str:
    """The commands `make TARGET` would run for this environment (make -n runs nothing)."""
    result = subprocess.run(["make", "-n", "-C", str(ROOT), target, f"VENV={venv}", *variables],
                            capture_output=True, text=True, check=True)
    return result.stdout


def installs(commands: str) -> list[str]:
    return [line for line in commands.splitlines() if "pip install" in line and "--upgrade pip" not in line]


def test_serve_on_a_new_machine_installs_the_runtime_only(tmp_path):
    commands = planned("serve", tmp_path / "venv")
    assert installs(commands) == [f"{tmp_path / 'venv'}/bin/python -m pip install -q -e ."]
    assert "-m server.cli serve" in commands


def test_test_installs_the_test_extras(tmp_path):
    assert installs(planned("test", tmp_path / "venv")) == [
        f"{tmp_path / 'venv'}/bin/python -m pip install -q -e '.[test]'"]


def test_serve_after_test_and_test_after_serve_install_nothing(tmp_path):
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".installed-serve").touch()  # after `make serve`
    assert installs(planned("serve", venv)) == []
    assert len(installs(planned("test", venv))) == 1, "the test extras are still missing"
    (venv / ".installed").touch()  # after `make test`, which marks the serving install done as well
    assert installs(planned("serve", venv)) == [] and installs(planned("test", venv)) == []


def test_a_newer_pyproject_reinstalls(tmp_path):
    venv = tmp_path / "venv"
    venv.mkdir()
    old = (ROOT / "pyproject.toml").stat().st_mtime - 3600
    for stamp in (".installed-serve", ".installed"):
        (venv / stamp).touch()
        os.utime(venv / stamp, (old, old))
    assert len(installs(planned("serve", venv))) == 1 and len(installs(planned("test", venv))) == 1


def test_install_0_uses_the_environment_as_it_is(tmp_path):
    commands = planned("serve", tmp_path / "elsewhere", "INSTALL=0", "PORT=8123")
    assert installs(commands) == [] and "venv" not in commands
    assert f"{tmp_path / 'elsewhere'}/bin/python -m server.cli serve" in commands and "--port 8123" in commands


def test_ci_runs_make_test_only():
    commands = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.startswith(("#", "set ", "cd "))]
    assert commands == ["make test"]


def test_serving_dependencies_hold_no_test_tools():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {dep.split("[")[0].split("<")[0].split(">")[0].split("=")[0].strip().lower()
               for dep in project["dependencies"]}
    test_only = {"pytest", "moto", "kubernetes-validate", "matplotlib", "accelerate", "ruff", "openai"}
    assert runtime & test_only == set()
    assert test_only <= {dep.split("[")[0].split(">")[0].split("=")[0].strip().lower()
                         for dep in project["optional-dependencies"]["test"]}
