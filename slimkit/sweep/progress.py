"""The grid's progress: how many cells are done, which are running and where, how many failed, and
the estimated time left.

On a terminal (the console given is one, e.g. ``slimkit sweep``'s stderr) it is one live
``rich.progress`` bar for the grid with a row under it per running cell (its name, where it runs,
for how long); each event (a cell finished, failed) is printed above the bar. Elsewhere (a log
file, a pipe, CI) the same information comes as one plain status line per event:
``[3/8 done, 2 running (cellA on worker 0 pid 4242; ...), 0 failed, ETA 0:01:10] cellA: ...``.
The same for every executor: they report through :meth:`GridProgress.started` and the driver
through :meth:`~GridProgress.finished` / :meth:`~GridProgress.prepared`.
"""
from __future__ import annotations

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class GridProgress:
    """The time left is the mean duration of the cells finished in this run times the cells left,
    divided by the executor's slots. Use as a context manager (the live bar runs inside it)."""

    def __init__(self, total: int, done: int, executor, say, console=None):
        self.total, self.done, self.failed = total, done, 0
        self.executor, self.say = executor, say
        self.running: dict[str, str] = {}  # cell id -> where
        self.durations: list[float] = []
        self.live = console is not None and console.is_terminal
        self._bar = None
        self._rows: dict[str, int] = {}  # cell id -> its row (task) under the grid's bar
        if self.live:
            self._bar = Progress(TextColumn("{task.description}", markup=False), BarColumn(),
                                 TextColumn("{task.fields[status]}", markup=False), TimeElapsedColumn(),
                                 console=console, transient=False)
            self._grid = self._bar.add_task("grid", total=total, completed=done, status=self.status())

    def __enter__(self):
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._update()
            self._bar.stop()

    def eta(self) -> str:
        if not self.durations:
            return "?"
        left = self.total - self.done - self.failed
        slots = max(1, min(getattr(self.executor, "slots", 1), left or 1))
        return _clock(sum(self.durations) / len(self.durations) * left / slots)

    def status(self) -> str:
        """``D/N done, R running, F failed, ETA h:mm:ss`` (the bar's text; the lines' head)."""
        return f"{self.done}/{self.total} done, {len(self.running)} running, {self.failed} failed, ETA {self.eta()}"

    def _update(self) -> None:
        self._bar.update(self._grid, completed=self.done + self.failed, status=self.status())
        self._bar.refresh()

    def line(self, message: str) -> None:
        """An event: printed above the live bar, or as a plain line with the whole status."""
        if self.live:
            self._update()
            self.say(message)
            return
        where = "; ".join(f"{cid} on {w}" for cid, w in self.running.items())
        # starts with a digit: rich would read "[word ..." as markup
        self.say(f"[{self.done}/{self.total} done, {len(self.running)} running{f' ({where})' if where else ''}, "
                 f"{self.failed} failed, ETA {self.eta()}] {message}")

    def started(self, spec: dict, where: str) -> None:
        self.running[spec["id"]] = where
        if self.live:  # a row under the bar, not a line: the bar says it
            self._rows[spec["id"]] = self._bar.add_task(f"  {spec['id']}", total=None, status=f"on {where}")
            self._update()
            return
        self.line(f"{spec['id']}: started on {where}")

    def _stopped(self, cell_id: str) -> None:
        self.running.pop(cell_id, None)
        if cell_id in self._rows:
            self._bar.remove_task(self._rows.pop(cell_id))

    def prepared(self, spec: dict, result: dict) -> None:
        self._stopped(spec["id"])
        state = "ready" if result["status"] == "done" else f"FAILED: {result['error'].splitlines()[0]}"
        self.line(f"{spec['id']}: baseline {state}")

    def finished(self, spec: dict, result: dict) -> None:
        self._stopped(spec["id"])
        self.durations.append(result.get("seconds") or 0.0)
        if result["status"] == "failed":
            self.failed += 1
            message = (result.get("error") or "").splitlines()
            self.line(f"{spec['id']}: FAILED: {message[0] if message else ''}")
            return
        self.done += 1
        if result.get("accuracy") is None:  # a rank other than 0
            return
        self.line(f"{spec['id']}: accuracy {100 * result['accuracy']:.2f} % (baseline "
                  f"{100 * result['baseline_accuracy']:.2f} %), {result.get('seconds', 0):.1f} s"
                  f"{' on ' + result['host'] if result.get('host') else ''}")
