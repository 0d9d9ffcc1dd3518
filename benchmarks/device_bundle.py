"""Pack what a bare GPU machine lacks to run our stack, small enough to travel with the repository.

The GPU image has torch, transformers, numpy, grpcio, protobuf, httpx, tokenizers and safetensors, but
not the gateway's web stack, the Triton client or the `tritonserver` binary. This writes, into an
ignored folder (default `.gpu/`):

    wheels/*.whl                 the missing pure-Python and cp3X wheels, at the versions installed here
    stub-wheels/*.whl            numpy 1.26 for the Python-backend stub alone: Triton 2.51's stub sends
                                 empty output tensors under the numpy 2 of the GPU image
    pytriton-py3X.tar.xz         `pytriton/tritonserver/` (server, Python backend, the one stub for
                                 Python 3.X) and the libraries of `nvidia_pytriton.libs/` that those
                                 programs need (followed through their ELF DT_NEEDED entries)

    python -m benchmarks.device_bundle --out .gpu --python 3.12

On the GPU machine, `. benchmarks/device_env.sh .gpu` installs the wheels and the server under /tmp/site,
puts it on PYTHONPATH, and makes the stub's environment (numpy 1.26, then the machine's packages);
engines/triton/launcher.py then finds the trimmed server there.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

# What the gateway (fastapi, uvicorn, pydantic, tritonclient) and `transformers serve` (the same plus
# openai) import beyond the GPU image's packages, with their own needs.
WHEELS = (
    "fastapi", "starlette", "uvicorn", "pydantic", "pydantic_core", "annotated-types", "typing-inspection",
    "typing-extensions", "annotated-doc", "opentelemetry-api", "anyio", "h11", "sniffio",
    "openai", "jiter", "httpx2", "httpcore2", "truststore", "idna",
    "tritonclient", "python-rapidjson",
    # runtime dependencies the gateway and `ingot serve` import since: offline /docs, progress output
    "fastapi-offline", "rich", "markdown-it-py", "mdurl", "pygments",
    # constrained decoding in the engine (its GPU test validates with jsonschema)
    "xgrammar", "apache-tvm-ffi", "jsonschema", "jsonschema-specifications", "referencing", "rpds-py", "attrs",
    # GGUF checkpoints (ingot serve --checkpoint X.gguf, benchmarks/gpu_fidelity.py)
    "gguf", "pyyaml",
)
STUB_WHEELS = ("numpy==1.26.4",)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")
NEEDED = re.compile(r"\(NEEDED\)\s+Shared library: \[(.+)\]")


def pinned(name: str) -> str:
    """`name==version` as installed here (the versions our tests ran with), else the newest."""
    try:
        return f"{name}=={metadata.version(name)}"
    except metadata.PackageNotFoundError:
        return name


def download_wheels(out: Path, python: str, requirements: list[str]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.whl"):
        stale.unlink()
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--python-version", python, "--implementation", "cp", "-d", str(out)]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    subprocess.run(command + requirements, check=True)
    return sorted(out.glob("*.whl"))


def needed_libraries(binary: Path) -> list[str]:
    text = subprocess.run(["readelf", "-d", str(binary)], check=True, capture_output=True, text=True).stdout
    return NEEDED.findall(text)


def library_closure(roots: list[Path], libs: Path) -> list[Path]:
    """The bundled libraries that `roots` load, directly or through each other (system ones are left out)."""
    found: dict[str, Path] = {}
    pending = list(roots)
    while pending:
        for name in needed_libraries(pending.pop()):
            candidate = libs / name
            if name not in found and candidate.is_file():
                found[name] = candidate
                pending.append(candidate)
    return sorted(found.values())


def pytriton_site() -> Path:
    from engines.triton.launcher import pytriton_root

    return pytriton_root().parents[1]


def triton_files(site: Path, python: str) -> list[Path]:
    """Paths relative to `site`: the server, the Python backend, one stub, and the libraries they need."""
    server = site / "pytriton" / "tritonserver"
    stub = server / "python_backend_stubs" / python / "triton_python_backend_stub"
    if not stub.is_file():
        raise FileNotFoundError(f"nvidia-pytriton ships no Python-backend stub for Python {python}")
    programs = [server / "bin" / "tritonserver", server / "backends" / "python" / "libtriton_python.so", stub]
    libraries = library_closure(programs, site / "nvidia_pytriton.libs")
    extras = [server / "backends" / "python" / "triton_python_backend_utils.py"]
    return [path.relative_to(site) for path in programs + extras + libraries]


def pack_triton(site: Path, python: str, out: Path) -> Path:
    archive = out / f"pytriton-py{python}.tar.xz"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as staging:
        listing = Path(staging) / "files"
        listing.write_text("\n".join(str(p) for p in triton_files(site, python)) + "\n")
        # xz with all cores: Python's lzma would take minutes on 100 MB of libraries
        env = dict(os.environ, XZ_OPT="-9 -T0")
        subprocess.run(["tar", "-C", str(site), "-cJf", str(archive), "-T", str(listing)], check=True, env=env)
    return archive


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(".gpu"))
    parser.add_argument("--python", default="3.12", help="the GPU machine's Python (major.minor)")
    parser.add_argument("--skip-wheels", action="store_true")
    parser.add_argument("--skip-triton", action="store_true")
    args = parser.parse_args(argv)
    if not shutil.which("readelf") and not args.skip_triton:
        parser.error("readelf (binutils) is needed to find the libraries tritonserver loads")
    if not args.skip_wheels:
        wheels = download_wheels(args.out / "wheels", args.python, [pinned(name) for name in WHEELS])
        wheels += download_wheels(args.out / "stub-wheels", args.python, list(STUB_WHEELS))
        for wheel in wheels:
            print(f"{wheel.stat().st_size / 2**20:7.2f} MiB  {wheel.parent.name}/{wheel.name}")
    if not args.skip_triton:
        archive = pack_triton(pytriton_site(), args.python, args.out)
        print(f"{archive.stat().st_size / 2**20:7.2f} MiB  {archive.name}")
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"{total / 2**20:.1f} MiB in {args.out} (a device call carries at most 64 MiB with the repository)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
