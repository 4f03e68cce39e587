"""Progress display on rank 0 (nothing when quiet or on other ranks): rich bars on a terminal;
elsewhere (a log file, a pipe) one plain line per epoch, so that a long run's log shows it is alive."""
from __future__ import annotations

from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)
_LINE_PREFIX = ""  # a sweep cell's name before each of its lines (`slimkit sweep --verbose`)
_LINE_SINK = None  # where a sweep worker's lines go instead of stderr: its driver, which prints them


def set_line_sink(sink) -> None:
    """Send every progress line to ``sink(line, markup)`` instead of printing it (``None``: print
    again); ``markup``: whether the line is rich markup."""
    global _LINE_SINK
    _LINE_SINK = sink


def print_line(line: str, markup: bool) -> None:
    """Print one progress line on stderr (above a live display if one is running)."""
    console.print(line, markup=markup, highlight=False, soft_wrap=not markup)


def _emit(line: str, markup: bool) -> None:
    (_LINE_SINK or print_line)(line, markup)


def set_line_prefix(prefix: str) -> str:
    """Prefix every progress line with ``prefix`` (and draw no bars: cells may run side by side);
    returns the previous prefix."""
    global _LINE_PREFIX
    previous, _LINE_PREFIX = _LINE_PREFIX, prefix
    return previous


class Reporter:
    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    def log(self, message: str) -> None:
        if self.enabled:
            _emit(_LINE_PREFIX + message, True)

    @contextmanager
    def bar(self, description: str, total: int):
        if not self.enabled:
            yield _NullTask()
            return
        if not console.is_terminal or _LINE_PREFIX:  # a bar would only be drawn once, at the end
            yield _LineTask(description)
            return
        progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                            console=console, transient=False)
        with progress:
            task = progress.add_task(description, total=total, status="")
            yield _Task(progress, task)


def epoch_line(stage: str, epoch: int, epochs: int, loss: float, val_accuracy: float | None, seconds: float) -> str:
    """One epoch as one plain line: stage, epoch/epochs, train loss, validation accuracy, seconds."""
    val = f"val accuracy {val_accuracy:.4f}" if val_accuracy is not None else "val accuracy -"
    return f"{stage}: epoch {epoch}/{epochs} loss {loss:.4f} {val} {seconds:.1f} s"


class _Task:
    def __init__(self, progress, task):
        self.progress, self.task = progress, task

    def advance(self, n=1, status: str | None = None):
        kwargs = {"status": status} if status is not None else {}
        self.progress.update(self.task, advance=n, **kwargs)

    def describe(self, description: str):
        self.progress.update(self.task, description=description)

    def epoch_done(self, epoch, epochs, loss, val_accuracy, seconds):
        pass  # the bar's status line shows it


class _LineTask:
    """No bar: a line per finished epoch."""

    def __init__(self, description: str):
        self.description = description

    def advance(self, n=1, status=None):
        pass

    def describe(self, description):
        self.description = description

    def epoch_done(self, epoch, epochs, loss, val_accuracy, seconds):
        line = epoch_line(self.description, epoch, epochs, loss, val_accuracy, seconds)
        _emit(_LINE_PREFIX + line, False)


class _NullTask:
    def advance(self, n=1, status=None):
        pass

    def describe(self, description):
        pass

    def epoch_done(self, epoch, epochs, loss, val_accuracy, seconds):
        pass
