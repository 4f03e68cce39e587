"""Running one sweep cell wherever an executor puts it: :func:`run_cell` depends only on the cell's
spec (its settings and seed), never on which process, worker or node runs it.

A spec is plain data (picklable, JSON-able) so that it travels to a worker process or a Ray task::

    {"id": cell id, "out": the cell's directory, "config": RunConfig fields, "verbose": bool,
     "threads": torch threads or None, "write_error": bool, "share": {"path", "token"} or None}

The cell is an ordinary :class:`slimkit.pipeline.Run` writing into its directory: the run's files
are renamed into place atomically, ``report.json`` last. A cell that fails at run time writes
``error.txt`` there and returns ``status="failed"``; an interrupt is not a failure and propagates.

Shared file system or not: ``share`` names a file the driver wrote into the sweep's output
directory with a random token. A worker that reads the same token there writes the cell's
files in place; one that cannot (the directory is not shared with the driver's machine) runs the
cell in a private temporary directory and returns its files as bytes (``files``), which the
driver writes into the cell's directory (:func:`write_returned_files`).
"""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
import traceback
from pathlib import Path

from slimkit import atomic
from slimkit.errors import UserError

MARKER_NAME = ".sweep-share"


def _shared(share: dict | None) -> bool:
    if share is None:
        return True
    try:
        return Path(share["path"]).read_text() == share["token"]
    except OSError:
        return False


def run_cell(spec: dict) -> dict:
    """Run one cell; returns ``{"id", "status", "error", "seconds", "accuracy", "baseline_accuracy",
    "host", "pid", "files"}`` (``files``: name -> bytes, only when the output is not shared)."""
    from slimkit import progress
    from slimkit.pipeline import Run, RunConfig

    if spec.get("threads"):
        import torch

        torch.set_num_threads(int(spec["threads"]))
    shared = _shared(spec.get("share"))
    out = Path(spec["out"]) if shared else Path(tempfile.mkdtemp(prefix="slimkit-cell-")) / spec["id"]
    out.mkdir(parents=True, exist_ok=True)
    config = {**spec["config"], "out": str(out)}
    result = {"id": spec["id"], "status": "done", "error": "", "host": socket.gethostname(), "pid": os.getpid(),
              "files": None, "accuracy": None, "baseline_accuracy": None}
    t0 = time.perf_counter()
    previous = progress.set_line_prefix(f"{spec['id']}: " if spec.get("verbose") else "")
    try:
        report = Run(RunConfig(**config)).execute(teardown=False)  # one process group for the whole sweep
        if report is not None:
            result.update(accuracy=report["final"]["accuracy"], baseline_accuracy=report["baseline"]["accuracy"])
    except Exception as exc:  # a failed cell is recorded; the rest go on (an interrupt propagates)
        message = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
        result.update(status="failed", error=message)
        if spec.get("write_error", True):
            atomic.write_text(out / "error.txt", message + "\n\n" + traceback.format_exc())
    finally:
        progress.set_line_prefix(previous)
    result["seconds"] = time.perf_counter() - t0
    if not shared:
        result["files"] = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
                           if p.is_file() and ".work" not in p.relative_to(out).parts}
        shutil.rmtree(out.parent, ignore_errors=True)
    return result


def write_returned_files(cell_dir: Path, files: dict) -> None:
    """Write the files a worker returned as bytes into the cell's directory, each atomically;
    ``report.json`` last (its presence means the cell is finished)."""
    for name in sorted(files, key=lambda n: n == "report.json"):
        path = cell_dir / name
        if path.resolve().parent != cell_dir.resolve() and cell_dir.resolve() not in path.resolve().parents:
            raise ValueError(f"a worker returned a file outside the cell directory: {name!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(path, files[name])
