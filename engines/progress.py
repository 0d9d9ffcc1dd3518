"""Progress of long steps a person waits for: rich spinners and bars on a terminal, plain lines otherwise.

One `Reporter` serves `make serve`, `ingot build`, `ingot pull` and `ingot push`:

    reporter = Reporter.for_stream(sys.stderr)
    with reporter.step("packing the artifact"):
        ...
    with reporter.stages("Triton") as stage:      # a step that goes through named stages
        stage("model loading")
    with reporter.transfer("upload s3://b/p", total_bytes) as meter:
        meter.advance(4096)                        # thread-safe: boto3 calls it from its workers

Plain lines (logs, CI, a pipe) go through `emit`, one at each start and end and, for transfers, one every
`interval` seconds, so a log shows what is happening without a line per chunk.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn, TransferSpeedColumn)


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


class TransferMeter:
    """Counts bytes of one transfer; `advance` may be called from several threads at once."""

    def __init__(self, on_advance: Callable[[int], None]):
        self._lock = threading.Lock()
        self._on_advance = on_advance
        self.done = 0

    def advance(self, count: int) -> None:
        with self._lock:
            self.done += count
            self._on_advance(self.done)

    __call__ = advance  # boto3's Callback


class Reporter:
    """Where progress goes: a live rich display when `console` is a terminal, else plain lines via `emit`."""

    def __init__(self, console: Console, emit: Callable[[str], None] | None = None, interval: float = 5.0):
        self.console = console
        self.live = console.is_terminal
        self.emit = emit or (lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True))
        self.interval = interval

    @classmethod
    def for_stream(cls, stream, emit: Callable[[str], None] | None = None) -> "Reporter":
        return cls(Console(file=stream, highlight=False), emit)

    def _progress(self, *columns) -> Progress:
        return Progress(*columns, console=self.console, transient=False)

    @contextmanager
    def step(self, description: str) -> Iterator[None]:
        """One step with a spinner and elapsed time; plain: a line at its start and one at its end."""
        with self.stages(description):
            yield

    @contextmanager
    def stages(self, description: str) -> Iterator[Callable[[str], None]]:
        """A step that names its current stage: `stage("model loading")`; each change is one plain line."""
        started, current = time.monotonic(), [""]
        progress = self._progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn()) \
            if self.live else None
        task = progress.add_task(description, total=None) if progress else None

        def stage(name: str) -> None:
            if name == current[0]:
                return
            current[0] = name
            if progress:
                progress.update(task, description=f"{description}: {name}")
            else:
                self.emit(f"{description}: {name} ({time.monotonic() - started:.0f}s)")

        if progress:
            progress.start()
        else:
            self.emit(f"{description} ...")
        outcome = "failed"
        try:
            yield stage
            outcome = "done"
        finally:
            elapsed = time.monotonic() - started
            if progress:
                progress.update(task, total=1, completed=1, description=f"{description}: {outcome}")
                progress.stop()
            else:
                self.emit(f"{description}: {outcome} in {elapsed:.1f}s")

    @contextmanager
    def transfer(self, description: str, total_bytes: int) -> Iterator[TransferMeter]:
        """Bytes moved with rate: a bar on a terminal; plain lines every `interval` seconds and at the end."""
        started = time.monotonic()
        if self.live:
            progress = self._progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                      TransferSpeedColumn(), TimeRemainingColumn())
            task = progress.add_task(description, total=total_bytes)
            meter = TransferMeter(lambda done: progress.update(task, completed=done))
            with progress:
                yield meter
            return
        last = [started]

        def line(done: int) -> str:
            elapsed = max(time.monotonic() - started, 1e-6)
            return (f"{description}: {human_bytes(done)} of {human_bytes(total_bytes)}, "
                    f"{human_bytes(done / elapsed)}/s")

        def on_advance(done: int) -> None:
            now = time.monotonic()
            if now - last[0] >= self.interval and done < total_bytes:
                last[0] = now
                self.emit(line(done))

        meter = TransferMeter(on_advance)
        self.emit(f"{description}: {human_bytes(total_bytes)} to move")
        yield meter
        self.emit(line(meter.done) + f", done in {time.monotonic() - started:.1f}s")
