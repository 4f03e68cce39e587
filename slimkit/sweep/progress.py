"""The grid's progress: one status line per event (a cell started, finished or failed) saying how
many cells are done, which are running and where, how many failed, and the estimated time left."""
from __future__ import annotations

import time


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class GridProgress:
    """``[D/N done, R running (where...), F failed, ETA h:mm:ss] message``; the time left is the mean
    duration of the cells finished in this run times the cells left, divided by the executor's slots."""

    def __init__(self, total: int, done: int, executor, say):
        self.total, self.done, self.failed = total, done, 0
        self.executor, self.say = executor, say
        self.running: dict[str, str] = {}  # cell id -> where
        self.durations: list[float] = []

    def eta(self) -> str:
        if not self.durations:
            return "?"
        left = self.total - self.done - self.failed
        slots = max(1, min(getattr(self.executor, "slots", 1), left or 1))
        return _clock(sum(self.durations) / len(self.durations) * left / slots)

    def line(self, message: str) -> None:
        where = "; ".join(f"{cid} on {w}" for cid, w in self.running.items())
        # starts with a digit: rich would read "[word ..." as markup
        self.say(f"[{self.done}/{self.total} done, {len(self.running)} running{f' ({where})' if where else ''}, "
                 f"{self.failed} failed, ETA {self.eta()}] {message}")

    def started(self, spec: dict, where: str) -> None:
        self.running[spec["id"]] = where
        self.line(f"{spec['id']}: started on {where}")

    def prepared(self, spec: dict, result: dict) -> None:
        self.running.pop(spec["id"], None)
        state = "ready" if result["status"] == "done" else f"FAILED: {result['error'].splitlines()[0]}"
        self.line(f"{spec['id']}: baseline {state}")

    def finished(self, spec: dict, result: dict) -> None:
        self.running.pop(spec["id"], None)
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
