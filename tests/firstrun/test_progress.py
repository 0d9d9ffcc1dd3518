"""Progress output: plain lines for logs and pipes, rich spinners and bars on a terminal; Triton's stages."""
from __future__ import annotations

import io
import threading
import time

import pytest
from rich.console import Console

from engines.progress import Reporter, human_bytes
from engines.triton.startup_stage import startup_stage


def plain_reporter(interval: float = 0.0) -> tuple[Reporter, list[str]]:
    lines: list[str] = []
    return Reporter(Console(file=io.StringIO(), force_terminal=False), emit=lines.append, interval=interval), lines


def test_plain_step_says_when_it_starts_and_how_long_it_took():
    reporter, lines = plain_reporter()
    with reporter.step("packing the artifact"):
        pass
    assert lines[0] == "packing the artifact ..."
    assert lines[1].startswith("packing the artifact: done in ") and lines[1].endswith("s")


def test_plain_step_that_fails_says_so():
    reporter, lines = plain_reporter()
    with pytest.raises(RuntimeError), reporter.step("loading"):
        raise RuntimeError("boom")
    assert lines[-1].startswith("loading: failed in ")


def test_plain_stages_print_each_change_once():
    reporter, lines = plain_reporter()
    with reporter.stages("Triton") as stage:
        for name in ("server starting", "server starting", "model loading: m", "model loading: m", "ready"):
            stage(name)
    assert [line.split(" (")[0] for line in lines[1:-1]] == [
        "Triton: server starting", "Triton: model loading: m", "Triton: ready"]


def test_plain_transfer_counts_bytes_from_many_threads_and_gives_the_rate():
    reporter, lines = plain_reporter(interval=0.0)
    total = 8 * 1000 * 4096
    with reporter.transfer("upload to s3://b/p", total) as meter:
        workers = [threading.Thread(target=lambda: [meter(4096) for _ in range(1000)]) for _ in range(8)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    assert meter.done == total
    assert lines[0] == f"upload to s3://b/p: {human_bytes(total)} to move"
    assert lines[-1].startswith(f"upload to s3://b/p: {human_bytes(total)} of {human_bytes(total)}, ")
    assert "/s, done in " in lines[-1]
    assert len(lines) > 3, "intermediate lines while the bytes move"


def test_terminal_transfer_draws_a_bar_with_bytes_and_rate():
    output = io.StringIO()
    reporter = Reporter(Console(file=output, force_terminal=True, width=120))
    with reporter.transfer("download s3://b/p", 3 << 20) as meter:
        for _ in range(3):
            time.sleep(0.2)  # rich needs samples over time for a rate
            meter(1 << 20)
    text = output.getvalue()
    assert "download s3://b/p" in text and "3.1/3.1 MB" in text and "MB/s" in text and "━" in text


def test_human_bytes():
    assert [human_bytes(n) for n in (512, 2048, 5 << 20, 3 << 30)] == ["512 B", "2.0 KiB", "5.0 MiB", "3.0 GiB"]


TRITON_LOG = [  # lines as Triton 2.51 writes them (tests/e2e starts the real server; this pins the parsing)
    'E1123 02:24:41.931285 13097 server.cc:241] "CudaDriverHelper has not been initialized."',
    'I1123 02:24:41.945282 13097 model_lifecycle.cc:472] "loading: tensorrt_llm:1"',
    'I1123 02:24:43.788426 13097 python_be.cc:2249] "TRITONBACKEND_ModelInstanceInitialize: tensorrt_llm_0_0 '
    '(CPU device 0)"',
    'I1123 02:24:49.024759 13097 model_lifecycle.cc:839] "successfully loaded \'tensorrt_llm\'"',
    'I1123 02:24:49.033961 13097 grpc_server.cc:2558] "Started GRPCInferenceService at 127.0.0.1:47859"',
]


def test_triton_stages_from_its_log():
    stages = [startup_stage("\n".join(TRITON_LOG[:count])) for count in range(len(TRITON_LOG) + 1)]
    assert stages == ["server starting", "server starting", "model loading: tensorrt_llm",
                      "model instance starting: tensorrt_llm_0_0", "opening endpoints", "endpoints open"]


def test_triton_stage_waits_for_every_model():
    two = TRITON_LOG[1:4] + ['I1123 model_lifecycle.cc:472] "loading: embedding:1"']
    assert startup_stage("\n".join(two)) == "model loading: embedding"
