"""Start the `tritonserver` binary that the nvidia-pytriton wheel ships, on loopback ports.

The wheel carries the server, the Python backend and one backend stub per Python version. The stub
for the running interpreter goes beside `libtriton_python.so` in a writable copy of the backend
folder, and the virtual environment's `bin/` leads PATH, so the stub imports from this environment.
The package is found without being imported, so a trimmed copy of it (only `pytriton/tritonserver/`
and `nvidia_pytriton.libs/` side by side, see benchmarks/device_bundle.py) serves as well.

The stub's interpreter ignores PYTHONPATH: it sees the standard library, the site-packages of the
environment whose `bin/` leads PATH, and its working directory, which is the repository root (so
`engines` imports). `INGOT_TRITON_PYTHON` names another interpreter whose environment the stub should
use instead: Triton 2.51's stub sends empty output tensors under numpy 2, so where the serving
environment has numpy 2 the stub gets one with numpy 1.26 (benchmarks/device_env.sh makes such one).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from engines.triton.startup_stage import read_stage


class TritonStartError(RuntimeError):
    pass


def _die_with_parent() -> None:
    """Runs in the child before exec: on Linux, the kernel ends tritonserver if its parent dies."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def pytriton_root() -> Path:
    """`pytriton/tritonserver/`, without running pytriton's __init__ (it imports the whole client)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonStartError("nvidia-pytriton is not installed: no tritonserver binary to run")
    return Path(next(iter(spec.submodule_search_locations))) / "tritonserver"


def pytriton_libs() -> Path:
    """The shared libraries the wheel bundles, beside the package in the same site directory."""
    return pytriton_root().parents[1] / "nvidia_pytriton.libs"


def log_tail(path: Path, lines: int = 40) -> str:
    """The last lines of a server's log, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class StubPython:
    """The interpreter whose environment the Python-backend stub runs in."""

    executable: str
    version: str  # "3.12"
    libdir: str  # where its libpythonX.Y lies

    @classmethod
    def find(cls) -> "StubPython":
        executable = os.environ.get("INGOT_TRITON_PYTHON") or sys.executable
        if executable == sys.executable:
            return cls(executable, f"{sys.version_info.major}.{sys.version_info.minor}",
                       sysconfig.get_config_var("LIBDIR") or "")
        probe = "import sys, sysconfig; print(f'{sys.version_info[0]}.{sys.version_info[1]}'); " \
                "print(sysconfig.get_config_var('LIBDIR') or '')"
        try:
            lines = subprocess.run([executable, "-c", probe], check=True, capture_output=True, text=True,
                                   timeout=60).stdout.splitlines()
        except (OSError, subprocess.SubprocessError) as exc:
            raise TritonStartError(f"INGOT_TRITON_PYTHON={executable} does not run: {exc}") from exc
        return cls(executable, lines[0], lines[1] if len(lines) > 1 else "")


def prepare_backends(work_dir: Path, python: StubPython | None = None) -> Path:
    """A writable backend folder with the Python backend and the stub for `python`'s version (by
    default the interpreter that runs the stub, see StubPython.find; the Dockerfile calls it so)."""
    python = python or StubPython.find()
    root = pytriton_root()
    backends = Path(work_dir) / "backends"
    python_backend = backends / "python"
    if python_backend.exists():
        shutil.rmtree(python_backend)
    shutil.copytree(root / "backends" / "python", python_backend, ignore=shutil.ignore_patterns("__pycache__"))
    stub = root / "python_backend_stubs" / python.version / "triton_python_backend_stub"
    if not stub.is_file():
        raise TritonStartError(f"nvidia-pytriton ships no Python-backend stub for Python {python.version}")
    shutil.copy2(stub, python_backend / "triton_python_backend_stub")
    return backends


def server_environment(python: StubPython | None = None) -> dict[str, str]:
    python = python or StubPython.find()
    env = dict(os.environ)
    # The stub links libpythonX.Y: an interpreter that keeps it in its own lib/ needs that folder too.
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(pytriton_libs()), python.libdir, env.get("LD_LIBRARY_PATH", "")) if p)
    env["PATH"] = os.pathsep.join((str(Path(python.executable).parent), env.get("PATH", "")))
    # Ignored by the stub's interpreter (see above), kept for the day a stub honours it.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


@dataclass
class TritonServer:
    process: subprocess.Popen
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int
    log_path: Path

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = 180.0, on_stage=None) -> None:
        """Poll readiness; `on_stage(name)`, if given, hears the startup stage from the log as it goes
        (engines/triton/startup_stage.py), then "ready"."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise TritonStartError(f"tritonserver exited with {self.process.returncode}:\n{self.log_tail()}")
            if self.is_ready():
                if on_stage:
                    on_stage("ready")
                return
            if on_stage:
                on_stage(read_stage(self.log_path))
            time.sleep(0.25)
        self.stop()
        raise TritonStartError(f"tritonserver not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def stop(self, timeout: float = 20.0) -> None:
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_triton(
    model_repository: Path,
    work_dir: Path,
    host: str = "127.0.0.1",
    http_port: int = 0,
    grpc_port: int = 0,
    metrics_port: int = 0,
) -> TritonServer:
    """Start tritonserver in the background; call `wait_ready()` on the result."""
    work_dir = Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    python = StubPython.find()
    backends = prepare_backends(work_dir, python)
    ports = [port or free_port(host) for port in (http_port, grpc_port, metrics_port)]
    log_path = work_dir / "tritonserver.log"
    command = [
        str(pytriton_root() / "bin" / "tritonserver"),
        f"--model-repository={Path(model_repository).resolve()}",
        f"--backend-directory={backends}",
        f"--http-address={host}",
        f"--grpc-address={host}",
        f"--metrics-address={host}",
        f"--http-port={ports[0]}",
        f"--grpc-port={ports[1]}",
        f"--metrics-port={ports[2]}",
        "--exit-on-error=true",
        "--exit-timeout-secs=10",
        "--log-verbose=0",
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=server_environment(python), cwd=PROJECT_ROOT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
    return TritonServer(process, host, *ports, log_path=log_path)
