"""Write one output file atomically: all of it or nothing, never a half-written file.

``atomic_write(path)`` hands out a temporary file in the destination directory; when the
block ends it is flushed, fsynced, given the usual mode (0666 minus the umask, so 0644
as a rule), renamed over ``path``, and the directory is fsynced so the rename survives a
crash. On any exception (a full disk, Ctrl-C, a bug in the caller) the temporary file is
removed and the exception goes on; an ``OSError`` from the environment (no space, no
permission, a read-only file system, a path under a file) becomes a one-line
:class:`~slimkit.errors.UserError` naming the path and what would be right.

Test seam: with ``SLIMKIT_FAULT_ENOSPC_AFTER=N`` in the environment (or
:data:`fail_after_bytes` set to ``N``), every file written through here raises
``OSError(ENOSPC)`` once ``N`` bytes have been written to it, as a full disk would.
"""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

from slimkit.errors import UserError

__all__ = ["atomic_write", "write_bytes", "write_text", "fail_after_bytes", "FAULT_ENV"]

#: Environment variable of the test seam (bytes each file may take before ENOSPC).
FAULT_ENV = "SLIMKIT_FAULT_ENOSPC_AFTER"
#: Module-level test seam; overrides :data:`FAULT_ENV` when not None.
fail_after_bytes: int | None = None


class _FullDisk:
    """A binary sink that accepts ``budget`` bytes and then fails as a full disk does."""

    def __init__(self, raw, budget: int):
        self._raw, self._left = raw, budget

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        if len(data) > self._left:
            self._raw.write(data[:self._left])
            self._left = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._left -= len(data)
        return self._raw.write(data)

    def __getattr__(self, name):  # flush, fileno, tell, ... of the real file
        return getattr(self._raw, name)


class _TextSink:
    """Text written as UTF-8 to a binary sink (no newline translation)."""

    def __init__(self, sink):
        self._sink = sink

    def write(self, text: str) -> int:
        self._sink.write(text.encode("utf-8"))
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._sink.flush()


def _fault_budget() -> int | None:
    if fail_after_bytes is not None:
        return int(fail_after_bytes)
    value = os.environ.get(FAULT_ENV)
    return int(value) if value not in (None, "") else None


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc: read it by setting it, and put it back at once
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # a platform that cannot open directories (Windows) has nothing to sync
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a directory; the rename itself is done
    finally:
        os.close(fd)


def user_error(exc: OSError, path: Path, advice: str) -> UserError:
    """The one-line error for an ``OSError`` met while writing ``path``."""
    code = exc.errno
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        what = "no space left on device"
        advice = f"free space or {advice}"
    elif code in (errno.EACCES, errno.EPERM):
        what = "permission denied"
    elif code == errno.EROFS:
        what = "read-only file system"
    elif code in (errno.ENOTDIR, errno.EEXIST):
        what = "a part of the path is a file, not a directory"
    elif code == errno.EISDIR:
        what = "it is a directory"
    else:
        what = exc.strerror or type(exc).__name__
    return UserError(f"{what} writing {path}; {advice}")


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb", *, advice: str = "choose another --out"):
    """Context manager: a file object for ``path`` that replaces it only when the block succeeds.

    ``mode`` is ``"wb"`` or ``"w"`` (text, UTF-8). ``advice`` ends the error message of an
    ``OSError`` (what the user should do instead).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', not {mode!r}")
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as raw:
            budget = _fault_budget()
            sink = raw if budget is None else _FullDisk(raw, budget)
            yield sink if mode == "wb" else _TextSink(sink)
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)
    except OSError as exc:
        raise user_error(exc, path, advice) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def write_text(path, text: str, *, advice: str = "choose another --out") -> int:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the size of the file written."""
    return write_bytes(path, text.encode("utf-8"), advice=advice)


def write_bytes(path, data: bytes, *, advice: str = "choose another --out") -> int:
    """Write ``data`` to ``path`` atomically; returns the size of the file written."""
    with atomic_write(path, "wb", advice=advice) as f:
        f.write(data)
    return len(data)
