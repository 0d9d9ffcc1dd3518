"""The response path's buffering, with real threads: what piles up while a send is under way leaves as one
response, nothing is lost or reordered, and every request ends with one final response."""
from __future__ import annotations

import threading
import time

from engines.portable.engine import StepOutput
from engines.triton.responses import Flight, Outbox, Outgoing


class SlowSender:
    """Records what is sent; the first send waits until released, as a send to a busy Triton would."""

    def __init__(self):
        self.sent: list[Outgoing] = []
        self.release = threading.Event()
        self.first_started = threading.Event()
        self.done = threading.Event()

    def __call__(self, outgoing: Outgoing) -> None:
        if not self.first_started.is_set():
            self.first_started.set()
            assert self.release.wait(30)
        self.sent.append(outgoing)
        if outgoing.final:
            self.done.set()


def step(request_id: str, token: int, finished: bool = False) -> list[StepOutput]:
    return [StepOutput(request_id, [token], [-0.5], finished, "length" if finished else None)]


def test_tokens_waiting_while_sending_leave_together():
    sender = SlowSender()
    outbox = Outbox(sender, log_error=print)
    outbox.add("a", Flight(sender=None, client_id="", streaming=True, return_log_probs=True))
    outbox.put(step("a", 1))
    assert sender.first_started.wait(30)
    for token in range(2, 6):
        outbox.put(step("a", token))
    outbox.put(step("a", 6, finished=True))
    sender.release.set()
    assert sender.done.wait(30)
    assert outbox.close(timeout=30)
    assert [o.ids for o in sender.sent] == [[1], [2, 3, 4, 5, 6]]
    assert sender.sent[1].log_probs == [-0.5] * 5 and sender.sent[1].final
    assert len(outbox) == 0


def test_non_streaming_sends_once_and_failures_end_every_request():
    sender = SlowSender()
    sender.release.set()
    outbox = Outbox(sender, log_error=print)
    outbox.add("whole", Flight(sender=None, client_id="", streaming=False, return_log_probs=False))
    outbox.add("other", Flight(sender=None, client_id="", streaming=True, return_log_probs=False))
    for token in range(3):
        outbox.put(step("whole", token))
    outbox.put(step("whole", 3, finished=True))
    assert sorted(outbox.fail_all("engine step failed")) == ["other"]
    assert outbox.close(timeout=30)
    by_flight = {o.flight.streaming: o for o in sender.sent}
    assert len(sender.sent) == 2
    assert by_flight[False].ids == [0, 1, 2, 3] and by_flight[False].log_probs is None and by_flight[False].final
    assert by_flight[True].error == "engine step failed" and by_flight[True].final


def test_a_failing_send_does_not_stop_the_others():
    sent, errors = [], []

    def send(outgoing: Outgoing) -> None:
        if outgoing.flight.client_id == "broken":
            raise RuntimeError("Response sender has been closed")
        sent.append(outgoing)

    outbox = Outbox(send, log_error=errors.append)
    outbox.add("x", Flight(sender=None, client_id="broken", streaming=True, return_log_probs=False))
    outbox.add("y", Flight(sender=None, client_id="fine", streaming=True, return_log_probs=False))
    outbox.put(step("x", 1, finished=True) + step("y", 2, finished=True))
    assert outbox.close(timeout=30)
    assert [o.ids for o in sent] == [[2]] and len(errors) == 1


def test_several_sender_threads_keep_each_request_in_order_and_end_each_once():
    sent: dict[str, list[Outgoing]] = {}
    lock = threading.Lock()
    threads_seen = set()

    def send(outgoing: Outgoing) -> None:
        with lock:
            sent.setdefault(outgoing.flight.client_id, []).append(outgoing)
            threads_seen.add(threading.current_thread().name)

    outbox = Outbox(send, log_error=print, threads=3)
    requests = [f"r{n}" for n in range(12)]
    for request_id in requests:
        outbox.add(request_id, Flight(sender=None, client_id=request_id, streaming=True, return_log_probs=False))
    for token in range(50):
        outbox.put([StepOutput(rid, [token], None, token == 49, "length" if token == 49 else None)
                    for rid in requests])
    assert outbox.close(timeout=30)
    assert sorted(sent) == sorted(requests) and len(threads_seen) == 3
    for responses in sent.values():
        assert [token for o in responses for token in o.ids] == list(range(50))
        assert [o.final for o in responses].count(True) == 1 and responses[-1].final
        assert responses[0].first and not any(o.first for o in responses[1:])


class FreeingSender:
    """A Triton response sender as the server treats it: the final response frees the request, and any question
    asked after that (Triton would read freed memory) is recorded as a violation."""

    def __init__(self):
        self.freed = False
        self.violations = 0

    def is_cancelled(self) -> bool:
        if self.freed:
            self.violations += 1
        time.sleep(0.0002)  # a round trip to the server, with the GIL released
        if self.freed:
            self.violations += 1
        return False


def test_no_request_is_asked_about_once_its_final_response_has_gone():
    def send(outgoing: Outgoing) -> None:
        time.sleep(0.0001)
        if outgoing.final:
            outgoing.flight.sender.freed = True

    outbox = Outbox(send, log_error=print)
    stop = threading.Event()

    def monitor() -> None:  # portable_model's cancellation check, as often as it can run
        while not stop.is_set():
            for _, flight in outbox.flights():
                outbox.if_open(flight, lambda f: f.sender.is_cancelled())

    senders = [FreeingSender() for _ in range(300)]
    for n, sender in enumerate(senders):
        outbox.add(f"r{n}", Flight(sender=sender, client_id="", streaming=True, return_log_probs=False))
    checker = threading.Thread(target=monitor)
    checker.start()
    for n in range(len(senders)):  # requests end while the monitor goes through its list of them
        outbox.put(step(f"r{n}", 1, finished=True))
        time.sleep(0.0002)
    assert outbox.close(timeout=30)
    stop.set()
    checker.join(30)
    assert all(sender.freed for sender in senders)
    assert sum(sender.violations for sender in senders) == 0


def test_a_request_refused_after_intake_ends_with_one_error_and_later_outputs_are_dropped():
    sender = SlowSender()
    sender.release.set()
    outbox = Outbox(sender, log_error=print)
    outbox.add("refused", Flight(sender=None, client_id="", streaming=True, return_log_probs=False))
    outbox.add("kept", Flight(sender=None, client_id="", streaming=True, return_log_probs=False))
    outbox.fail("refused", "invalid request: prompt too long")
    outbox.fail("unknown", "never held: nothing is sent")
    outbox.put(step("refused", 7))  # an engine's late word about it goes nowhere
    outbox.put(step("kept", 1, finished=True))
    assert outbox.close(timeout=30)
    assert len(sender.sent) == 2
    assert {o.error: (o.ids, o.final) for o in sender.sent} == {"invalid request: prompt too long": ([], True),
                                                                None: ([1], True)}
    assert len(outbox) == 0
