"""Owning an output directory: one run at a time, and resumes that cannot mix settings.

Two runs that write the same ``--out`` would race on its work directory and leave a
report that belongs to whichever finished last, so a run holds an advisory lock
(``fcntl.flock``) on ``OUT/.slimkit.lock`` while it works. The kernel releases the
lock when its holder dies, however it dies, so a lock left by a dead process is simply
taken over; the file's text (pid, host, start time) only serves the error message of
a run that finds it held.

``--resume`` picks up the checkpoints in ``OUT/.work``. They are only valid for the
settings that made them, so the run's settings are written there as JSON, and a
resume with other settings is refused, naming every setting that differs.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path

from slimkit import atomic
from slimkit.errors import UserError

LOCK_NAME = ".slimkit.lock"
SETTINGS_NAME = "settings.json"

try:  # advisory locks are POSIX; elsewhere runs are not guarded
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


class OutLock:
    """An exclusive, non-blocking advisory lock on an output directory.

    ``what`` names the command for the error message (``compress``, ``sweep``).
    Use as a context manager; ``acquire`` raises :class:`UserError` when another live
    process holds the lock.
    """

    def __init__(self, out: Path, what: str):
        self.out = Path(out)
        self.path = self.out / LOCK_NAME
        self.what = what
        self._fd: int | None = None
        self._made_out = False

    def acquire(self) -> "OutLock":
        if fcntl is None:
            return self
        try:
            self._made_out = not self.out.exists()
            self.out.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UserError(f"--out {self.out} is not writable ({exc.strerror or exc}); "
                            "choose a directory you can write to") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise UserError(f"--out {self.out} is in use by another slimkit {holder}; wait for it to finish "
                                "or choose another --out") from None
            raise UserError(f"cannot lock --out {self.out}: {exc.strerror or exc}") from None
        # we hold it: record who we are (a stale text from a dead holder is overwritten)
        text = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": self.what,
                           "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")})
        os.ftruncate(fd, 0)
        os.pwrite(fd, text.encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        # Unlink before unlocking: a waiter never locks a file that is about to vanish,
        # because waiters do not wait (LOCK_NB) and a new run creates a fresh file.
        try:
            self.path.unlink()
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None
        if self._made_out:  # a run that failed before writing anything leaves no empty --out behind
            try:
                self.out.rmdir()
            except OSError:
                pass

    def __enter__(self) -> "OutLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "run"
    return (f"{info.get('command', 'run')} (pid {info.get('pid', '?')} on {info.get('host', '?')}, "
            f"started {info.get('started', '?')})")


def check_resume_settings(work: Path, settings: dict, resume: bool) -> None:
    """Record ``settings`` in ``work``; on ``resume``, refuse when the recorded ones differ.

    ``settings`` must be JSON-serialisable and hold everything that changes what a run
    computes (model, data, methods and their options, seed, epochs, ...), and nothing
    that does not (output paths, verbosity).
    """
    path = Path(work) / SETTINGS_NAME
    current = _normalise(settings)
    if resume and Path(work).exists():
        if not path.exists():
            if any(Path(work).iterdir()):
                raise UserError(f"--resume: {work} has no record of the settings that made it (an older slimkit, "
                                "or a run that died at start-up); run again without --resume")
        else:
            try:
                recorded = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise UserError(f"--resume: {path} is unreadable ({exc}); remove {work} or run without --resume") \
                    from None
            changed = _differences(recorded, current)
            if changed:
                raise UserError("--resume with different settings than the interrupted run: " + "; ".join(changed)
                                + ". Use the original settings, or run without --resume to start over")
    Path(work).mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, json.dumps(current, indent=2, sort_keys=True))


def _normalise(settings: dict) -> dict:
    # JSON round trip: tuples become lists, keys become strings, so a recorded copy compares equal
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


def _differences(old, new, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in old:
                out.append(f"{name} is new ({new[key]!r})")
            elif key not in new:
                out.append(f"{name} was {old[key]!r}, now unset")
            else:
                out.extend(_differences(old[key], new[key], name))
        return out
    return [] if old == new else [f"{prefix} was {old!r}, now {new!r}"]
