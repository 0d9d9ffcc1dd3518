"""Triton Python-backend model `tensorrt_llm` serving the contract from the portable engine.

Decoupled: `execute` only queues requests; one background thread runs the engine's steps and sends
each request's new tokens as they come (or everything at once when `streaming` is false), flagging
the last response final. A request whose client went away (Triton marks it cancelled), or a request
carrying `stop`=true for the same request id, is aborted and its KV blocks freed.
"""
from __future__ import annotations

import json
import threading
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import triton_python_backend_utils as pb_utils

from engines import contract
from engines.triton.engine_settings import engine_config_from_parameters

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


@dataclass
class InFlight:
    sender: object
    client_id: str
    streaming: bool
    return_log_probs: bool
    pending_ids: list[int] = field(default_factory=list)
    pending_log_probs: list[float] = field(default_factory=list)


class TritonPythonModel:
    def initialize(self, args):
        from engines.portable.engine import LLMEngine

        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        version_dir = Path(args["model_repository"]) / args["model_version"]
        checkpoint = version_dir / parameters.get("checkpoint_dir", "checkpoint")
        self.logger = pb_utils.Logger
        self.engine = LLMEngine.from_checkpoint(checkpoint, engine_config_from_parameters(parameters))
        self.in_flight: dict[str, InFlight] = {}
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.stopping = False
        self.gauges = self._make_gauges(args["model_name"])
        self.loop = threading.Thread(target=self._run, name="portable-engine", daemon=True)
        self.loop.start()
        self.logger.log_info(f"portable engine ready: {checkpoint}")

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

    def _update_gauges(self) -> None:
        with self.lock:
            running = len(self.in_flight)
        values = {
            "ingot_engine_running_requests": running,
            "ingot_engine_free_kv_blocks": self.engine.num_free_blocks,
            "ingot_engine_total_kv_blocks": self.engine.num_total_blocks,
        }
        for name, value in values.items():
            self.gauges[name][1].set(value)

    def execute(self, requests):
        for request in requests:
            self._accept(request)
        self.wake.set()
        return None

    def finalize(self):
        self.stopping = True
        self.wake.set()
        self.loop.join(timeout=10)

    def _accept(self, request) -> None:
        sender = request.get_response_sender()
        tensors = {}
        for spec in contract.INPUTS:
            tensor = pb_utils.get_input_tensor_by_name(request, spec.name)
            if tensor is not None:
                tensors[spec.name] = tensor.as_numpy()
        client_id = request.request_id() or ""
        try:
            generation = contract.decode_request(tensors)
            if generation.stop:
                self._stop_client_id(client_id)
                sender.send(flags=FINAL)
                return
            self._submit(generation, sender, client_id)
        except ValueError as exc:
            error = pb_utils.TritonError(f"invalid request: {exc}")
            sender.send(pb_utils.InferenceResponse(output_tensors=[], error=error), flags=FINAL)

    def _submit(self, generation: contract.GenerationRequest, sender, client_id: str) -> None:
        from engines.portable.sampling import SamplingParams

        if generation.beam_width != 1:
            raise ValueError("beam_width must be 1: the portable engine samples one beam")
        internal_id = uuid.uuid4().hex
        flight = InFlight(sender, client_id, generation.streaming, generation.return_log_probs)
        with self.lock:
            self.in_flight[internal_id] = flight
        try:
            self.engine.add_request(internal_id, generation.input_ids, SamplingParams.from_request(generation))
        except ValueError:
            with self.lock:
                self.in_flight.pop(internal_id, None)
            raise

    def _stop_client_id(self, client_id: str) -> None:
        with self.lock:
            targets = [rid for rid, flight in self.in_flight.items() if client_id and flight.client_id == client_id]
        for rid in targets:
            self.engine.abort(rid)

    def _run(self) -> None:
        while not self.stopping:
            try:
                self._iterate()
            except Exception:  # the loop must outlive one bad step; that step's requests fail loudly
                self.logger.log_error(f"engine step failed:\n{traceback.format_exc()}")
                self._fail_all("engine step failed; see the Triton log")

    def _iterate(self) -> None:
        self._abort_cancelled()
        self._update_gauges()
        if not self.engine.has_unfinished():
            self.wake.wait(timeout=0.05)
            self.wake.clear()
            return
        for output in self.engine.step():
            self._deliver(output)

    def _abort_cancelled(self) -> None:
        with self.lock:
            cancelled = [rid for rid, flight in self.in_flight.items() if flight.sender.is_cancelled()]
        for rid in cancelled:
            self.engine.abort(rid)

    def _deliver(self, output) -> None:
        with self.lock:
            flight = self.in_flight.get(output.request_id)
            if flight is None:
                return
            if output.finished:
                del self.in_flight[output.request_id]
        flight.pending_ids.extend(output.new_token_ids)
        if flight.return_log_probs and output.new_logprobs:
            flight.pending_log_probs.extend(output.new_logprobs)
        if output.finish_reason == "abort" and flight.sender.is_cancelled():
            return  # nobody is listening; Triton already closed the stream
        if not (flight.streaming or output.finished):
            return
        if flight.pending_ids or output.finished:
            self._send(flight, final=output.finished)

    def _send(self, flight: InFlight, final: bool) -> None:
        chunk = contract.GenerationChunk(
            output_ids=flight.pending_ids,
            log_probs=flight.pending_log_probs if flight.return_log_probs else None,
            final=final,
        )
        tensors = [pb_utils.Tensor(name, array) for name, array in contract.encode_chunk(chunk).items()]
        flight.pending_ids, flight.pending_log_probs = [], []
        flight.sender.send(pb_utils.InferenceResponse(output_tensors=tensors), flags=FINAL if final else 0)

    def _fail_all(self, message: str) -> None:
        with self.lock:
            failed, self.in_flight = self.in_flight, {}
        for rid, flight in failed.items():
            self.engine.abort(rid)
            response = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))
            flight.sender.send(response, flags=FINAL)
