"""Triton Python-backend model `tensorrt_llm` serving the contract from the portable engine.

Decoupled, with three threads besides Triton's:
- `execute` only queues requests for the engine;
- the engine thread runs the engine's steps and hands each step's tokens to the outbox, never waiting
  on Triton (see engines/triton/responses.py: one sender thread sends them, a request's waiting tokens
  together in one response when sending falls behind, always ending with a final response). With
  `engine_process` on (the default on CUDA), the engine runs in a child process instead
  (engines/triton/engine_process.py) and a receiver thread hands its steps' tokens to the outbox, so the
  engine's steps never wait for the GIL that the sender holds;
- a monitor asks Triton, every `cancellation_check_period_ms` as TensorRT-LLM's backend does, which
  requests were cancelled (each ask is a round trip to the server), aborts those in the engine, and
  updates the gauges. A request carrying `stop`=true aborts the request with the same id at once.
"""
from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path

import triton_python_backend_utils as pb_utils

from engines import contract
from engines.triton.engine_process import (
    EngineGone,
    EngineProcess,
    Gauges,
    add_generation,
    engine_gauges,
    load_engine,
)
from engines.triton.engine_settings import (
    cancellation_check_period_s,
    engine_in_process,
    gil_switch_interval_s,
    response_sender_threads,
)
from engines.triton.processes import name_this_thread
from engines.triton.response_tensors import chunk_tensors, plain_tensors, wanted
from engines.triton.responses import Flight, Outbox, Outgoing
from engines.triton.stub_stats import StubStats, stats_period_s

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
# How long finalize waits for a running step and for the last responses: below Triton's exit timeout.
FINALIZE_WAIT_S = 3.0


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.logger = pb_utils.Logger
        self.check_period = cancellation_check_period_s(parameters)
        self.server_pid = os.getppid()  # tritonserver started this stub
        self.stats_period = stats_period_s()
        self.stats = StubStats() if self.stats_period else None
        self.steps_run = 0  # engine steps, counted while statistics are on
        self.outbox = Outbox(self._send, self.logger.log_error, response_sender_threads(parameters))
        switch_interval = gil_switch_interval_s(parameters)
        if switch_interval is not None:  # the stub runs this one model: the setting is the process's
            sys.setswitchinterval(switch_interval)
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.gauges = self._make_gauges(args["model_name"])
        if engine_in_process(parameters):
            self.engine = _LocalEngine(parameters, version_dir)
            self.loop = threading.Thread(target=self._run, name="portable-engine", daemon=True)
        else:
            self.engine = EngineProcess(parameters, version_dir, self._take_step, self._reject, self._fail_all,
                                        self.logger.log_error)
            self.loop = None
        self.monitor = threading.Thread(target=self._watch, name="portable-watch", daemon=True)
        # What loading made lives as long as the model: a full collection under load (with the GIL held,
        # stalling the engine thread) need not walk it again.
        gc.collect()
        gc.freeze()
        if self.loop is not None:
            self.loop.start()
        self.monitor.start()
        info = self.engine.info
        if info["loras"]:
            self.logger.log_info(f"portable engine: LoRA adapters {info['loras']} (name: lora_task_id)")
        where = f"process {info['pid']}" if self.loop is None else "in the stub"
        self.logger.log_info(f"portable engine ready ({where}): {info['checkpoint']} ({info['device']}, "
                             f"{info['dtype']}, {info['threads'] or 'default'} CPU threads, "
                             f"context {info['context']})")

    @staticmethod
    def _make_gauges(model_name: str) -> dict:
        """Engine state exported on Triton's own metrics endpoint (scraped with Triton's metrics)."""
        descriptions = {
            "ingot_engine_running_requests": "Requests the portable engine holds (running or waiting).",
            "ingot_engine_free_kv_blocks": "Free paged KV-cache blocks.",
            "ingot_engine_total_kv_blocks": "All paged KV-cache blocks.",
        }
        gauges = {}
        for name, description in descriptions.items():
            family = pb_utils.MetricFamily(name=name, description=description, kind=pb_utils.MetricFamily.GAUGE)
            # A Metric is only valid while its family lives: keep both.
            gauges[name] = (family, family.Metric(labels={"model": model_name}))
        return gauges

    # ---- requests in (Triton's thread)

    def execute(self, requests):
        started = time.perf_counter()
        for request in requests:
            self._accept(request)
        self.wake.set()
        if self.stats is not None:
            self.stats.intake(time.perf_counter() - started, len(requests))
        return None

    def _accept(self, request) -> None:
        sender = request.get_response_sender()
        client_id = request.request_id() or ""
        try:
            generation = contract.decode_request(_input_arrays(request))
            if generation.stop:
                self._stop_client_id(client_id)
                sender.send(flags=FINAL)
                return
            self._submit(generation, sender, client_id, wanted(request.requested_output_names()))
        except ValueError as exc:
            error = pb_utils.TritonError(f"invalid request: {exc}")
            sender.send(pb_utils.InferenceResponse(output_tensors=[], error=error), flags=FINAL)
        except EngineGone as exc:
            sender.send(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc))),
                        flags=FINAL)

    def _submit(self, generation: contract.GenerationRequest, sender, client_id: str,
                outputs: frozenset[str] | None) -> None:
        internal_id = uuid.uuid4().hex
        flight = Flight(sender, client_id, generation.streaming, generation.return_log_probs,
                        beam_search=generation.beam_width > 1, outputs=outputs, arrived=time.perf_counter())
        self.outbox.add(internal_id, flight)
        if self.stats is not None:
            flight.arrived_step = self.steps_run
            self.stats.waiting(self.engine.gauges.waiting)
        try:
            self.engine.submit(internal_id, generation)
        except Exception:  # refused (ValueError) or no engine: the caller answers it
            self.outbox.discard(internal_id)
            raise

    def _reject(self, request_id: str, message: str) -> None:
        """The engine process refused a request (what `_accept` answers at once in process)."""
        self.outbox.fail(request_id, f"invalid request: {message}")

    def _fail_all(self, message: str) -> None:
        for request_id in self.outbox.fail_all(message):
            self.engine.abort(request_id)

    def _stop_client_id(self, client_id: str) -> None:
        if not client_id:
            return
        for request_id, flight in self.outbox.flights():
            if flight.client_id == client_id:
                self.engine.abort(request_id)  # the engine's abort output ends it with a final response

    # ---- the engine thread: steps only, no I/O

    def _run(self) -> None:
        name_this_thread()
        while not self.stopping.is_set():
            try:
                if not self.engine.has_unfinished():
                    self.wake.wait(timeout=0.05)
                    self.wake.clear()
                    continue
                started = time.perf_counter()
                outputs = self.engine.step()
                if self.stats is not None:
                    self._note_step(outputs, time.perf_counter() - started, self.engine.gauges.pipelined_in_flight)
                self.outbox.put(outputs)
            except Exception:  # the loop must outlive one bad step; that step's requests fail loudly
                self.logger.log_error(f"engine step failed:\n{traceback.format_exc()}")
                self._fail_all("engine step failed; see the Triton log")

    def _take_step(self, outputs: list, gauges: Gauges) -> None:
        """A step of the engine process (its receiver thread)."""
        if self.stats is not None:
            self._note_step(outputs, gauges.step_s, gauges.pipelined_in_flight)
        self.outbox.put(outputs)

    def _note_step(self, outputs, seconds: float, pipelined: bool) -> None:
        now = time.perf_counter()
        self.steps_run += 1
        self.stats.step(seconds, pipelined)
        for output in outputs:
            flight = self.outbox.flight(output.request_id)
            if flight is not None and not flight.produced and output.new_token_ids:
                flight.produced = True
                self.stats.first_token(now - flight.arrived, self.steps_run - flight.arrived_step)

    # ---- the monitor: cancellation and gauges, on a period

    def _watch(self) -> None:
        name_this_thread()
        stats_due = time.monotonic() + self.stats_period
        while not self.stopping.wait(self.check_period):
            if self.stats is not None and time.monotonic() >= stats_due:
                line = self.stats.line(self.stats_period, len(self.outbox))
                if line is not None:
                    self.logger.log_info(line)
                stats_due += self.stats_period
            if os.getppid() != self.server_pid:
                # tritonserver died without unloading the model (SIGKILL, a crash): the stub's own exit path
                # then hangs and the stub (GPU memory and all) would live on, ignoring SIGTERM.
                self.logger.log_error("portable engine: tritonserver is gone; the stub exits")
                os._exit(1)
            try:
                self._abort_cancelled()
                self._update_gauges()
            except Exception:  # Triton shutting down; the next period tries again
                self.logger.log_warn(f"engine monitor: {traceback.format_exc(limit=2)}")

    def _abort_cancelled(self) -> None:
        aborted = False
        for request_id, flight in self.outbox.flights():
            # never asked once its final response has gone: the server would read the freed request
            if not flight.cancelled and self.outbox.if_open(flight, _is_cancelled):
                flight.cancelled = True
                self.engine.abort(request_id)
                aborted = True
        if aborted:
            self.wake.set()

    def _update_gauges(self) -> None:
        # The request count is read before and after the blocks and published last: each `set` is a round
        # trip to tritonserver, and a scrape that sees no request must also see every block free. A request
        # frees its blocks before it leaves the outbox (the first read), and enters the outbox before it gets
        # any (the second read catches one that arrived while the blocks were counted).
        running = len(self.outbox)
        gauges = self.engine.gauges
        values = {
            "ingot_engine_free_kv_blocks": gauges.free_blocks,
            "ingot_engine_total_kv_blocks": gauges.total_blocks,
            "ingot_engine_running_requests": max(running, len(self.outbox)),
        }
        for name, value in values.items():
            self.gauges[name][1].set(value)

    # ---- the sender thread (engines/triton/responses.py calls this)

    def _send(self, outgoing: Outgoing) -> None:
        started = time.perf_counter() if self.stats is not None else 0.0
        self._respond(outgoing)
        if self.stats is not None:
            now = time.perf_counter()
            self.stats.sent(now - started, len(outgoing.ids), now - outgoing.flight.arrived if outgoing.first else None)

    @staticmethod
    def _respond(outgoing: Outgoing) -> None:
        flags = FINAL if outgoing.final else 0
        if outgoing.error is not None:
            error = pb_utils.TritonError(outgoing.error)
            outgoing.flight.sender.send(pb_utils.InferenceResponse(output_tensors=[], error=error), flags=flags)
            return
        if outgoing.flight.cancelled:
            if outgoing.final:  # nobody listens: only the final flag, which frees the request in Triton
                outgoing.flight.sender.send(flags=FINAL)
            return
        tensors = [_tensor(name, array) for name, array in _tensors_of(outgoing).items()]
        outgoing.flight.sender.send(pb_utils.InferenceResponse(output_tensors=tensors), flags=flags)

    # ---- unloading

    def finalize(self):
        """Stop the threads and end every request still held, each within a bounded wait: Triton frees
        the requests on their final responses, and the stub exits only once this returns."""
        self.stopping.set()
        self.wake.set()
        if self.loop is not None:
            self.loop.join(timeout=FINALIZE_WAIT_S)
        self._fail_all("the model is being unloaded")
        self.engine.stop(FINALIZE_WAIT_S)
        if not self.outbox.close(timeout=FINALIZE_WAIT_S):
            self.logger.log_warn("portable engine: responses still being sent at unload")
        self.monitor.join(timeout=FINALIZE_WAIT_S)


class _LocalEngine:
    """The engine in the stub's own interpreter (`engine_process` off), with the face of EngineProcess that the
    model uses; the model's engine thread runs its steps."""

    def __init__(self, parameters: dict[str, str], version_dir: Path):
        self.llm, self.lora_tasks, self.info = load_engine(parameters, version_dir)

    @property
    def gauges(self) -> Gauges:
        return engine_gauges(self.llm)

    def submit(self, request_id: str, generation: contract.GenerationRequest) -> None:
        add_generation(self.llm, self.lora_tasks, request_id, generation)

    def abort(self, request_id: str) -> None:
        self.llm.abort(request_id)

    def has_unfinished(self) -> bool:
        return self.llm.has_unfinished()

    def step(self) -> list:
        return self.llm.step()

    def stop(self, timeout: float) -> None:
        pass


def _is_cancelled(flight: Flight) -> bool:
    return flight.sender.is_cancelled()


def _input_arrays(request) -> dict:
    """The request's contract inputs by name, in one pass (pb_utils.get_input_tensor_by_name walks every
    input again for each name asked)."""
    arrays = {}
    for tensor in request.inputs():
        name = tensor.name()
        if name in contract.INPUT_SPECS:
            arrays[name] = tensor.as_numpy()
    return arrays


# `sequence_length` [[n]] of one-beam responses with n below this: one pb_utils.Tensor each, made once. A sent
# response's CPU tensors are copied into Triton's own output buffers during `send` (python_backend
# InferResponse::Send), and a Tensor keeps its shared-memory copy while it lives, so the same immutable
# Tensor can go out in any number of responses; only the sender thread uses these.
SHARED_LENGTHS = 64
_length_tensors: dict[int, object] = {}


def _tensor(name: str, array):
    """A pb_utils.Tensor for the array (each costs the sender several microseconds under the GIL)."""
    if name == "sequence_length" and array.shape == (1, 1) and array[0, 0] < SHARED_LENGTHS:
        count = int(array[0, 0])
        tensor = _length_tensors.get(count)
        if tensor is None:
            tensor = _length_tensors[count] = pb_utils.Tensor(name, array)
        return tensor
    return pb_utils.Tensor(name, array)


def _tensors_of(outgoing: Outgoing) -> dict:
    """The response's output tensors: plain tokens built directly, anything else through the contract."""
    log_probs = outgoing.log_probs
    if (not outgoing.beams and not outgoing.logits and outgoing.context_logits is None
            and (log_probs is None or len(log_probs) == len(outgoing.ids))):
        return plain_tensors(outgoing.ids, log_probs, outgoing.cum_log_prob, outgoing.flight.outputs)
    return chunk_tensors(_chunk_of(outgoing), outgoing.flight.outputs)


def _chunk_of(outgoing: Outgoing) -> contract.GenerationChunk:
    """The response's contents: the new tokens, or every beam once beam search has ended."""
    import numpy as np

    if outgoing.beams:
        first, *others = [contract.GenerationChunk(ids, log_probs if outgoing.log_probs is not None else None,
                                                   outgoing.final, cum_log_prob=cum)
                          for ids, log_probs, cum in outgoing.beams]
        first.beams, first.context_logits = others, outgoing.context_logits
        return first
    logits = np.concatenate(outgoing.logits) if outgoing.logits else None
    return contract.GenerationChunk(output_ids=outgoing.ids, log_probs=outgoing.log_probs, final=outgoing.final,
                                    cum_log_prob=outgoing.cum_log_prob, generation_logits=logits,
                                    context_logits=outgoing.context_logits)
