"""The portable engine in a process of its own, next to the Triton Python-backend stub.

In the stub the engine thread shares one interpreter, and so one GIL, with the thread sending responses to
tritonserver: on an H100 at 128-256 users the sender is busy all the time and each engine step took about a
fifth longer than the engine alone (benchmarks/results/stack_vs_engine_h100_gil/NOTE.md). With
`engine_process` on, the stub keeps Triton's side (requests in, responses out, cancellation, gauges) and the
engine runs its step loop here, in a child process with its own interpreter.

The two talk over one socket pair with `multiprocessing.connection` framing (pickled tuples):
- stub -> engine: ("add", request_id, GenerationRequest), ("abort", request_id), ("stop",);
- engine -> stub: ("ready", info) or ("failed", traceback) once, then ("step", outputs, gauges) per step
  (all of a step's tokens in one message), ("gauges", gauges) when commands change the cache while no step
  runs, ("rejected", request_id, message) for a request the engine refused, ("step_failed", traceback).

The child ends on "stop" or when the stub's end of the socket closes (the stub died): nothing outlives it.
`EngineProcess` is the stub's side; `main` runs in the child (`python -m engines.triton.engine_process FD`).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import NamedTuple

from engines.triton.processes import name_this_thread
from engines.triton.responses import as_numpy

# The interpreter the child runs; the launcher names the environment's own (the stub's sys.executable is the
# stub binary, not Python).
PYTHON_ENV = "INGOT_ENGINE_PYTHON"
IDLE_POLL_S = 0.05


class WireOutput(NamedTuple):
    """A StepOutput as it crosses to the stub: lists and numpy arrays, no torch. A tuple: the stub's receiver
    unpickles a step's outputs under the GIL the sender needs, and a tuple costs no Python per field there."""

    request_id: str
    new_token_ids: list[int]
    new_logprobs: list[float] | None
    finished: bool
    cum_logprob: float | None
    new_logits: object = None  # numpy rows [tokens, vocab]
    context_logits: object = None  # numpy rows [prompt_len, vocab]


class EngineGone(RuntimeError):
    """The engine process has exited: requests are answered with this error until the model is reloaded."""


@dataclass(frozen=True, slots=True)
class Gauges:
    free_blocks: int
    total_blocks: int
    waiting: int  # requests the scheduler has not started
    pipelined_in_flight: bool  # a pipelined launch is still on the device (stub statistics)
    step_s: float = 0.0  # the step's duration in the engine process


def wire(output) -> WireOutput:
    return WireOutput(output.request_id, output.new_token_ids, output.new_logprobs, output.finished,
                      output.cum_logprob, as_numpy(output.new_logits), as_numpy(output.context_logits))


def interpreter() -> str:
    return os.environ.get(PYTHON_ENV) or shutil.which("python3") or shutil.which("python") or sys.executable


# ---- the stub's side


class EngineProcess:
    """Starts the child, forwards requests and aborts to it, and hands each step's outputs to `on_step` from a
    receiver thread (which holds the stub's GIL only to unpickle one message a step)."""

    def __init__(self, parameters: dict[str, str], version_dir: Path, on_step: Callable[[list, Gauges], None],
                 on_rejected: Callable[[str, str], None], on_failed: Callable[[str], None],
                 log_error: Callable[[str], None]):
        self.on_step, self.on_rejected, self.on_failed, self.log_error = on_step, on_rejected, on_failed, log_error
        self.gauges = Gauges(0, 0, 0, False)
        self.info: dict = {}
        self.dead: str | None = None  # why the engine process is gone, once it is
        self._send_lock = threading.Lock()
        self._stopping = False
        parent_end, child_end = _socket_pair()
        self.process = subprocess.Popen([interpreter(), "-m", "engines.triton.engine_process", str(child_end)],
                                        pass_fds=(child_end,), cwd=Path(__file__).resolve().parents[2])
        os.close(child_end)
        self.conn = Connection(parent_end)
        self._send(("start", parameters, str(version_dir)))
        self._handshake()
        self.receiver = threading.Thread(target=self._receive, name="portable-receive", daemon=True)
        self.receiver.start()

    def _handshake(self) -> None:
        while not self.conn.poll(1.0):
            if self.process.poll() is not None:
                raise RuntimeError(f"the engine process exited with {self.process.returncode} while loading")
        try:
            message = self.conn.recv()
        except EOFError:
            self.process.wait(timeout=10)
            raise RuntimeError(f"the engine process exited with {self.process.returncode} while loading") from None
        if message[0] == "failed":
            self.process.wait(timeout=10)
            raise RuntimeError(f"the engine process failed to load the model:\n{message[1]}")
        self.info = message[1]
        self.gauges = message[2]

    def _send(self, message) -> None:
        with self._send_lock:
            self.conn.send(message)

    def submit(self, request_id: str, generation) -> None:
        """Queue a request; a refusal comes back through `on_rejected`."""
        if self.dead is not None:
            raise EngineGone(self.dead)
        self._send(("add", request_id, generation))

    def abort(self, request_id: str) -> None:
        if self.dead is None:
            try:
                self._send(("abort", request_id))
            except OSError:  # gone meanwhile: the receiver fails every request
                pass

    def _receive(self) -> None:
        name_this_thread()
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                break
            kind = message[0]
            if kind == "step":
                self.gauges = message[2]
                self.on_step(message[1], message[2])
            elif kind == "gauges":
                self.gauges = message[1]
            elif kind == "rejected":
                self.on_rejected(message[1], message[2])
            elif kind == "step_failed":
                self.log_error(f"engine step failed:\n{message[1]}")
                self.on_failed("engine step failed; see the Triton log")
        if not self._stopping:
            code = self.process.poll()
            self.dead = f"the engine process exited ({'running' if code is None else code}); see the Triton log"
            self.log_error(f"portable engine: {self.dead}")
            self.on_failed(self.dead)

    def stop(self, timeout: float) -> None:
        """Ask the child to end; kill it when it does not within `timeout`."""
        self._stopping = True
        try:
            self._send(("stop",))
        except OSError:
            pass
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=timeout)
        self.conn.close()
        self.receiver.join(timeout=timeout)


def _socket_pair() -> tuple[int, int]:
    import socket

    parent, child = socket.socketpair()
    return parent.detach(), child.detach()


# ---- the child's side


def load_engine(parameters: dict[str, str], version_dir: Path):
    """The engine of a model version and its LoRA tasks (adapters of the repository loaded), and what the stub
    logs of it; used in this process and, with `engine_process` off, in the stub."""
    from engines.portable.engine import LLMEngine
    from engines.triton.engine_settings import apply_cpu_threads, engine_config_from_parameters, \
        lora_host_cache_bytes
    from engines.triton.lora_tasks import LoraTasks

    threads = apply_cpu_threads(parameters)
    checkpoint = version_dir / parameters.get("checkpoint_dir", "checkpoint")
    engine = LLMEngine.from_checkpoint(checkpoint, engine_config_from_parameters(parameters))
    lora_tasks = LoraTasks(engine, lora_host_cache_bytes(parameters))
    loaded = {}
    if engine.loras is not None:
        loaded = lora_tasks.preload(version_dir / parameters.get("lora_dir", "loras"))
    info = {"checkpoint": str(checkpoint), "device": engine.config.device, "dtype": engine.config.dtype,
            "threads": threads, "context": engine.max_model_len, "loras": loaded, "pid": os.getpid()}
    return engine, lora_tasks, info


def engine_gauges(engine, step_s: float = 0.0) -> Gauges:
    return Gauges(engine.num_free_blocks, engine.num_total_blocks, len(engine.scheduler.waiting),
                  engine.pipelined and engine.has_launch_in_flight(), step_s)


def add_generation(engine, lora_tasks, request_id: str, generation) -> None:
    """Queue a contract request in the engine; ValueError names what is wrong with it."""
    from engines.portable.sampling import SamplingParams

    if generation.beam_width < 1:
        raise ValueError(f"beam_width must be at least 1, got {generation.beam_width}")
    lora = lora_tasks.resolve(generation.lora_task_id, generation.lora_weights, generation.lora_config)
    engine.add_request(request_id, generation.input_ids, SamplingParams.from_request(generation), lora)


class _Engine:
    """The engine and the command loop of the child process."""

    def __init__(self, conn: Connection, parameters: dict[str, str], version_dir: Path):
        self.conn = conn
        self.engine, self.lora_tasks, self.info = load_engine(parameters, version_dir)

    def gauges(self, step_s: float = 0.0) -> Gauges:
        return engine_gauges(self.engine, step_s)

    def handle(self, message) -> bool:
        """One command; False on stop."""
        kind = message[0]
        if kind == "add":
            request_id, generation = message[1], message[2]
            try:
                add_generation(self.engine, self.lora_tasks, request_id, generation)
            except ValueError as exc:
                self.conn.send(("rejected", request_id, str(exc)))
        elif kind == "abort":
            self.engine.abort(message[1])
        elif kind == "stop":
            return False
        return True

    def run(self) -> None:
        import gc

        gc.collect()
        gc.freeze()  # what loading made lives as long as the process
        self.conn.send(("ready", self.info, self.gauges()))
        while True:
            busy = self.engine.has_unfinished()
            handled = False
            while self.conn.poll(0 if busy else IDLE_POLL_S):
                if not self.handle(self.conn.recv()):
                    return
                handled = True
                busy = self.engine.has_unfinished()
            if not busy:
                if handled:  # an abort of a waiting request freed its place without a step
                    self.conn.send(("gauges", self.gauges()))
                continue
            started = time.perf_counter()
            try:
                outputs = self.engine.step()
            except Exception:  # the loop outlives one bad step; the stub fails its requests loudly
                self.conn.send(("step_failed", traceback.format_exc()))
                continue
            self.conn.send(("step", [wire(output) for output in outputs],
                            self.gauges(time.perf_counter() - started)))


def main(argv: list[str]) -> int:
    import signal

    # Like the stub: the server's group gets SIGTERM (and a terminal's SIGINT) while Triton still finishes its
    # requests; this process ends on the stub's "stop" or when the stub's end of the socket closes.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(int(argv[0]))
    try:
        _, parameters, version_dir = conn.recv()
    except EOFError:
        return 1
    try:
        engine = _Engine(conn, parameters, Path(version_dir))
    except Exception:
        conn.send(("failed", traceback.format_exc()))
        return 1
    try:
        engine.run()
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return 0  # the stub is gone
    return 0


if __name__ == "__main__":
    # Through the module's own name, not __main__: the stub unpickles WireOutput and Gauges from there.
    from engines.triton import engine_process

    sys.exit(engine_process.main(sys.argv[1:]))
