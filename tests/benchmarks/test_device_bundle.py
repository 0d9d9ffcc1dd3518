"""What travels to a GPU machine: the trimmed tritonserver keeps every library it loads and nothing else."""
from __future__ import annotations

import shutil

import pytest

from benchmarks.device_bundle import WHEELS, pinned, pytriton_site, triton_files

pytestmark = pytest.mark.skipif(shutil.which("readelf") is None, reason="needs readelf (binutils)")


def test_the_server_for_python_3_12_and_the_libraries_it_needs():
    files = {str(path) for path in triton_files(pytriton_site(), "3.12")}

    assert "pytriton/tritonserver/bin/tritonserver" in files
    assert "pytriton/tritonserver/python_backend_stubs/3.12/triton_python_backend_stub" in files
    assert "pytriton/tritonserver/backends/python/triton_python_backend_utils.py" in files
    assert not any("python_backend_stubs/3.11" in f for f in files)
    libs = {f.split("/")[-1].split("-")[0] for f in files if f.startswith("nvidia_pytriton.libs/")}
    assert {"libtritonserver", "libcudart", "libarchive", "libcurl", "libssl", "libicudata"} <= libs
    assert "libpython3" not in libs                       # the bundled libpython is the 3.13 stub's alone


def test_wheels_are_pinned_to_what_the_tests_ran_with():
    assert {"fastapi", "uvicorn", "pydantic", "tritonclient", "openai"} <= set(WHEELS)
    assert pinned("fastapi").startswith("fastapi==")
    assert pinned("no-such-package-here") == "no-such-package-here"
