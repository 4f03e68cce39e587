"""Progress display: rich bars on rank 0, nothing when quiet or on other ranks."""
from __future__ import annotations

import sys
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


class Reporter:
    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    def log(self, message: str) -> None:
        if self.enabled:
            console.print(message, highlight=False)

    @contextmanager
    def bar(self, description: str, total: int):
        if not self.enabled:
            yield _NullTask()
            return
        progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                            console=console, transient=False, disable=not sys.stderr.isatty() and False)
        with progress:
            task = progress.add_task(description, total=total, status="")
            yield _Task(progress, task)


class _Task:
    def __init__(self, progress, task):
        self.progress, self.task = progress, task

    def advance(self, n=1, status: str | None = None):
        kwargs = {"status": status} if status is not None else {}
        self.progress.update(self.task, advance=n, **kwargs)

    def describe(self, description: str):
        self.progress.update(self.task, description=description)


class _NullTask:
    def advance(self, n=1, status=None):
        pass

    def describe(self, description):
        pass
