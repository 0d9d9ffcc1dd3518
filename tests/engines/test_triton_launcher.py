"""Which Python the Triton Python-backend stub runs in, and what its environment holds."""
from __future__ import annotations

import sys

from engines.triton.launcher import PROJECT_ROOT, StubPython, pytriton_libs, pytriton_root, server_environment


def test_the_running_interpreter_by_default(monkeypatch):
    monkeypatch.delenv("INGOT_TRITON_PYTHON", raising=False)
    python = StubPython.find()
    assert python.executable == sys.executable
    assert python.version == f"{sys.version_info.major}.{sys.version_info.minor}"


def test_another_interpreter_leads_path_and_picks_the_stub_version(monkeypatch, tmp_path):
    other = tmp_path / "env" / "bin" / "python3"
    other.parent.mkdir(parents=True)
    other.write_text("#!/bin/sh\nprintf '3.12\\n/opt/python/lib\\n'\n")
    other.chmod(0o755)
    monkeypatch.setenv("INGOT_TRITON_PYTHON", str(other))

    python = StubPython.find()
    env = server_environment(python)

    assert (python.version, python.libdir) == ("3.12", "/opt/python/lib")
    assert env["PATH"].split(":")[0] == str(other.parent)
    assert env["LD_LIBRARY_PATH"].split(":")[:2] == [str(pytriton_libs()), "/opt/python/lib"]
    assert str(PROJECT_ROOT) in env["PYTHONPATH"].split(":")


def test_the_server_and_its_libraries_lie_side_by_side():
    assert (pytriton_root() / "bin" / "tritonserver").is_file()
    assert pytriton_libs().is_dir() and pytriton_libs().parent == pytriton_root().parents[1]


def test_prepare_backends_as_the_dockerfile_calls_it(monkeypatch, tmp_path):
    """The portable image prepares the backend folder with no interpreter named: this one's stub."""
    from engines.triton.launcher import prepare_backends

    monkeypatch.delenv("INGOT_TRITON_PYTHON", raising=False)
    assert "prepare_backends(Path('/opt/ingot'))" in (PROJECT_ROOT / "Dockerfile").read_text()
    python = prepare_backends(tmp_path) / "python"
    assert (python / "triton_python_backend_stub").is_file() and (python / "libtriton_python.so").is_file()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    expected = pytriton_root() / "python_backend_stubs" / version / "triton_python_backend_stub"
    assert (python / "triton_python_backend_stub").read_bytes() == expected.read_bytes()
