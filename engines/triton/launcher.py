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

Nothing outlives `stop()`: the server leads its own process group, which its Python-backend stubs
share; they ignore SIGTERM and are reaped by the server when it unloads the model, so `stop()` waits
for the whole group and SIGKILLs what remains after a timeout. Only the gateway's needs are open to
any local process: health, metadata and inference. The admin APIs (model repository, logging, trace,
statistics, shared memory, model config) are off: Triton 2.51 cannot disable them one by one, but it
can restrict them to a header, and a header whose name holds spaces can be sent by no HTTP or gRPC
client. (A secret value would not do: every local process can read a server's command line.) The
Python backend creates its shared-memory region with mode 0644 whatever the umask (Boost sets the
mode after creating it), so a watcher makes each region of this server's name prefix 0600 as soon as it
appears, while the model loads and before any request can reach it.
"""
from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from engines.triton.processes import process_group
from engines.triton.startup_stage import read_stage


class TritonStartError(RuntimeError):
    pass


RESTRICTED_APIS = ("model-repository", "model-config", "statistics", "trace", "logging", "shared-memory")
UNSENDABLE_HEADER = "admin apis are off"  # not a valid HTTP header name nor gRPC metadata key
SHM_DIR = Path("/dev/shm")
# gRPC keepalive, both ways. The gateway pings while it has requests open, also when no data flows (a queued
# request): Triton's default counts pings less than 5 minutes apart without data as abuse and drops the connection,
# with every request on it, after two; it accepts one every MIN_PING_INTERVAL_MS here (the gateway's interval,
# INGOT_TRITON_KEEPALIVE, may not go below it). Triton pings an idle-looking gateway every minute, so requests of a
# gateway that vanished without closing its connection (a lost node) are cancelled within about 80 s.
MIN_PING_INTERVAL_MS = 5000
KEEPALIVE_FLAGS = (
    f"--grpc-http2-min-recv-ping-interval-without-data={MIN_PING_INTERVAL_MS}",
    "--grpc-keepalive-time=60000",
    "--grpc-keepalive-timeout=20000",
)


def _prepare_child() -> None:
    """Runs in the child before exec: files and shared memory it makes are this user's only; on Linux,
    the kernel ends tritonserver if its parent dies."""
    os.umask(0o077)
    try:
        import ctypes

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
    env["INGOT_ENGINE_PYTHON"] = python.executable  # the portable engine's own process (engine_process.py)
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
    shm_prefix: str = ""  # name prefix of the Python backend's shared-memory regions

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

    def processes(self) -> list[int]:
        """The server and its stubs still running (its process group)."""
        return process_group(self.process.pid)

    def stop(self, timeout: float = 20.0, stub_grace: float = 5.0) -> None:
        """SIGTERM (Triton unloads the model, which ends its stubs), SIGKILL after `timeout`; returns once
        no process of the group is left, the server reaped and its shared memory removed."""
        if self.process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.process.wait()
        self.reap_group(stub_grace)

    def reap_group(self, grace: float = 5.0) -> None:
        """After the server exited: give its stubs `grace` seconds to follow, then SIGKILL them."""
        deadline = time.monotonic() + grace
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.processes():
            self._signal_group(signal.SIGKILL)
            deadline = time.monotonic() + 30
            while self.processes() and time.monotonic() < deadline:
                time.sleep(0.05)
        self.remove_shared_memory()

    def _signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.process.pid, signum)  # the server leads its group (start_new_session)
        except ProcessLookupError:
            pass

    def guard_shared_memory(self) -> threading.Thread:
        """Keep this server's shared-memory regions private for as long as it runs."""
        thread = threading.Thread(target=self._guard_shared_memory, name="triton-shm-guard", daemon=True)
        thread.start()
        return thread

    def _guard_shared_memory(self) -> None:
        private: set[Path] = set()
        last_new = time.monotonic()
        while self.process.poll() is None:
            for region in SHM_DIR.glob(f"{self.shm_prefix}*"):
                if region not in private:
                    try:
                        region.chmod(0o600)
                        private.add(region)
                        last_new = time.monotonic()
                    except FileNotFoundError:
                        pass
            # Tight until the model's region appeared (it loads then), relaxed once it serves.
            time.sleep(0.005 if not private or time.monotonic() - last_new < 2 else 0.5)

    def remove_shared_memory(self) -> None:
        """Regions a killed server or stub could not remove itself."""
        if not self.shm_prefix:
            return
        for region in SHM_DIR.glob(f"{self.shm_prefix}*"):
            region.unlink(missing_ok=True)


def start_triton(
    model_repository: Path,
    work_dir: Path,
    host: str = "127.0.0.1",
    http_port: int = 0,
    grpc_port: int = 0,
    metrics_port: int = 0,
) -> TritonServer:
    """Start tritonserver in the background; call `wait_ready()` on the result. Ports of 0 are free ones;
    a restart passes the previous server's ports to keep its address."""
    work_dir = Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    python = StubPython.find()
    backends = prepare_backends(work_dir, python)
    ports = [port or free_port(host) for port in (http_port, grpc_port, metrics_port)]
    log_path = work_dir / "tritonserver.log"
    shm_prefix = f"ingot_{secrets.token_hex(6)}_"
    restricted = f"{','.join(RESTRICTED_APIS)}:{UNSENDABLE_HEADER}={secrets.token_hex(16)}"
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
        f"--http-restricted-api={restricted}",
        f"--grpc-restricted-protocol={restricted}",
        f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
        *KEEPALIVE_FLAGS,
        "--exit-on-error=true",
        "--exit-timeout-secs=10",
        "--log-verbose=0",
    ]
    if log_path.exists():  # a restarted server keeps its predecessor's log beside its own
        log_path.replace(log_path.with_name("tritonserver.previous.log"))
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=server_environment(python), cwd=PROJECT_ROOT,
            start_new_session=True, preexec_fn=_prepare_child if sys.platform.startswith("linux") else None,
        )
    server = TritonServer(process, host, *ports, log_path=log_path, shm_prefix=shm_prefix)
    server.guard_shared_memory()
    return server
