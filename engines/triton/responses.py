"""Requests in flight and their waiting responses, sent by sender threads outside the engine's step loop.

Each `send` of Triton's Python backend is a blocking round trip to the server process (the stub writes
the response to shared memory and waits for the server to take it; the GIL is released meanwhile, and
the server handles sends on a thread pool). The engine thread therefore only appends a step's new tokens
to each request's buffer and marks the request ready; a sender thread takes every ready request's
buffer whole. Under light load that is one token per response; when sending falls behind, the tokens
that piled up for a request leave together in one response, so the cost of sending follows what the
senders can do, not the number of tokens the engine makes. With several sender threads, each request
is answered by one of them (its responses stay in order) and their round trips overlap.

Every request ends with exactly one final response, including requests aborted because their client
went away: Triton frees a request (its response factory, ~70 KB) only on that final flag, and cannot
unload the model while any is left. Once that final response has gone, the request's sender must not be
asked anything: the server answers `is_cancelled` by reading the freed response factory (a segmentation
fault of tritonserver, seen under load). `Outbox.if_open` asks only while the final response has not
started, and the final send waits for a question under way.

Nothing here imports Triton: the model passes the function that turns a batch of tokens into a
response and sends it.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from engines.triton.processes import name_this_thread


@dataclass
class Flight:
    """One request the engine holds, as the response path sees it."""

    sender: object  # Triton's InferenceResponseSender
    client_id: str
    streaming: bool
    return_log_probs: bool
    pending_ids: list[int] = field(default_factory=list)
    pending_log_probs: list[float] = field(default_factory=list)
    final: bool = False
    error: str | None = None
    cancelled: bool = False  # Triton said the client went away; the engine was asked to abort
    beam_search: bool = False  # the beams arrive whole at the end, one output each, best first
    pending_logits: list = field(default_factory=list)  # generation logits rows [tokens, vocab] not sent yet
    context_logits: object = None  # the prompt's logits rows, sent with the next response
    cum_log_prob: float | None = None
    beams: list = field(default_factory=list)  # beam search: (ids, log_probs, cum_log_prob) of each beam
    outputs: frozenset[str] | None = None  # the output tensors the client asked for; None: all
    answered: bool = False  # a response has left for it (the sender sends first responses first)
    arrived: float = 0.0  # time.perf_counter() at intake (engines/triton/stub_stats.py)
    produced: bool = False  # the engine has given it tokens (stub_stats)
    arrived_step: int = 0  # engine steps run before its intake (stub_stats)
    lane: int = 0  # the sender thread that answers it
    # held while the final response is sent and while Triton is asked about the request (Outbox.if_open)
    closing: threading.Lock = field(default_factory=threading.Lock, repr=False)
    closed: bool = False  # its final response has been (or is being) sent: Triton has freed the request


@dataclass(slots=True)
class Outgoing:
    """What the sender thread sends for one request: its waiting tokens, maybe flagged final."""

    flight: Flight
    ids: list[int]
    log_probs: list[float] | None
    final: bool
    error: str | None
    logits: list = field(default_factory=list)
    context_logits: object = None
    cum_log_prob: float | None = None
    beams: list = field(default_factory=list)
    first: bool = False  # the request's first response


SendFn = Callable[[Outgoing], None]


def as_numpy(rows):
    """Logits rows as numpy (None stays None): torch tensors from the engine in process, numpy from the engine
    process (engines/triton/engine_process.py makes them with this)."""
    return rows.numpy() if hasattr(rows, "numpy") else rows


def _answered(flight: Flight) -> bool:
    return flight.answered


class _Lane:
    """One sender thread and the requests it answers (each request has one lane: its responses stay in order)."""

    def __init__(self, lock: threading.Lock, run: Callable[["_Lane"], None], name: str):
        self.cond = threading.Condition(lock)
        self.ready: dict[str, Flight] = {}
        self.thread = threading.Thread(target=run, args=(self,), name=name, daemon=True)


class Outbox:
    def __init__(self, send: SendFn, log_error: Callable[[str], None], threads: int = 1):
        if threads < 1:
            raise ValueError(f"the response path needs at least one sender thread, got {threads}")
        self._send, self._log_error = send, log_error
        self._lock = threading.Lock()
        self._flights: dict[str, Flight] = {}
        self._closed = False
        names = ["portable-sender"] if threads == 1 else [f"portable-sender{n}" for n in range(threads)]
        self._lanes = [_Lane(self._lock, self._run, name) for name in names]
        self._added = 0
        for lane in self._lanes:
            lane.thread.start()

    # ---- the request side (Triton's execute thread, the cancellation monitor)

    def add(self, request_id: str, flight: Flight) -> None:
        with self._lock:
            flight.lane = self._added % len(self._lanes)
            self._added += 1
            self._flights[request_id] = flight

    def discard(self, request_id: str) -> None:
        """Forget a request the engine refused; the caller answers it."""
        with self._lock:
            self._flights.pop(request_id, None)

    def flight(self, request_id: str) -> Flight | None:
        return self._flights.get(request_id)

    def flights(self) -> list[tuple[str, Flight]]:
        with self._lock:
            return list(self._flights.items())

    def __len__(self) -> int:
        return len(self._flights)

    @staticmethod
    def if_open(flight: Flight, ask: Callable[[Flight], object]) -> object | None:
        """`ask(flight)` (a question to Triton about the request, such as `is_cancelled`) if its final response
        has not started to leave, else None; the final send waits for a question under way."""
        with flight.closing:
            return None if flight.closed else ask(flight)

    # ---- the engine side (the step loop: no I/O, one lock per step)

    def put(self, outputs: Iterable) -> None:
        """Buffer one step's outputs (engine StepOutput objects) and wake the senders that got work."""
        lanes = self._lanes
        with self._lock:
            woken = set()
            for output in outputs:
                flight = self._flights.get(output.request_id)
                if flight is None:
                    continue
                if flight.beam_search:
                    flight.beams.append((output.new_token_ids, output.new_logprobs, output.cum_logprob))
                else:
                    flight.pending_ids.extend(output.new_token_ids)
                    if flight.return_log_probs and output.new_logprobs:
                        flight.pending_log_probs.extend(output.new_logprobs)
                self._keep_extras(flight, output)
                if output.finished:
                    flight.final = True
                    del self._flights[output.request_id]
                if flight.final or (flight.streaming and flight.pending_ids):
                    lanes[flight.lane].ready[output.request_id] = flight
                    woken.add(flight.lane)
            for lane in woken:
                lanes[lane].cond.notify()

    @staticmethod
    def _keep_extras(flight: Flight, output) -> None:
        """Logits rows and the cumulative logprob, when the request asked for them."""
        if getattr(output, "new_logits", None) is not None:
            flight.pending_logits.append(as_numpy(output.new_logits))
        if getattr(output, "context_logits", None) is not None:
            flight.context_logits = as_numpy(output.context_logits)
        flight.cum_log_prob = getattr(output, "cum_logprob", None)

    def fail(self, request_id: str, message: str) -> None:
        """End one request with an error response (the engine refused it after intake)."""
        with self._lock:
            flight = self._flights.pop(request_id, None)
            if flight is not None:
                self._end_with_error(request_id, flight, message).cond.notify()

    def fail_all(self, message: str) -> list[str]:
        """End every request with an error response; returns their ids (for the engine to abort)."""
        with self._lock:
            failed, self._flights = self._flights, {}
            for request_id, flight in failed.items():
                self._end_with_error(request_id, flight, message)
            for lane in self._lanes:
                lane.cond.notify()
        return list(failed)

    def _end_with_error(self, request_id: str, flight: Flight, message: str) -> _Lane:
        """Mark a request (no longer held) for a final error response; its lane, to wake. Under the lock."""
        flight.final, flight.error = True, message
        lane = self._lanes[flight.lane]
        lane.ready[request_id] = flight
        return lane

    # ---- the sender threads

    def _take(self, lane: _Lane) -> list[Outgoing] | None:
        with self._lock:
            lane.cond.wait_for(lambda: lane.ready or self._closed)
            if not lane.ready:
                return None
            ready, lane.ready = lane.ready, {}
            # Requests waiting for their first response go first: time to first token is what a
            # newcomer waits, while a running stream's next tokens only gather in its buffer meanwhile.
            batch = []
            for flight in sorted(ready.values(), key=_answered):
                batch.append(Outgoing(flight, flight.pending_ids,
                                      flight.pending_log_probs if flight.return_log_probs else None,
                                      flight.final, flight.error, flight.pending_logits, flight.context_logits,
                                      flight.cum_log_prob, flight.beams, not flight.answered))
                flight.answered = True
                flight.pending_ids, flight.pending_log_probs, flight.pending_logits = [], [], []
                flight.context_logits, flight.beams = None, []
            return batch

    def _run(self, lane: _Lane) -> None:
        name_this_thread()
        while (batch := self._take(lane)) is not None:
            for outgoing in batch:
                try:
                    if outgoing.final:
                        with outgoing.flight.closing:
                            outgoing.flight.closed = True
                            self._send(outgoing)
                    else:
                        self._send(outgoing)
                except Exception as exc:  # a closed or broken sender must not stop the others' responses
                    self._log_error(f"sending a response failed: {exc!r}")

    def close(self, timeout: float) -> bool:
        """Send what is ready, then stop the threads; False if they did not end within `timeout`."""
        with self._lock:
            self._closed = True
            for lane in self._lanes:
                lane.cond.notify()
        deadline = time.monotonic() + timeout
        for lane in self._lanes:
            lane.thread.join(max(deadline - time.monotonic(), 0.0))
        return not any(lane.thread.is_alive() for lane in self._lanes)
