"""A live progress display of the sweep; silent when stdout is not a terminal or when asked to be quiet."""
from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from benchmarks.records import RequestRecord


class SweepProgress:
    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stdout.isatty()
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("errors {task.fields[errors]}"), TimeElapsedColumn(),
                                  console=Console(), disable=not self.enabled)
        self._task = None
        self._errors = 0

    def __enter__(self) -> SweepProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()

    def start_run(self, description: str, total: int) -> None:
        self._errors = 0
        self._task = self._progress.add_task(description, total=total, errors=0)

    def request_done(self, record: RequestRecord) -> None:
        self._errors += not record.ok
        self._progress.update(self._task, advance=1, errors=self._errors)

    def finish_run(self) -> None:
        """A run cut short by its duration is complete at what it did."""
        self._progress.update(self._task, total=self._progress.tasks[-1].completed)

    def note(self, message: str) -> None:
        if self.enabled:
            self._progress.console.print(message)
