"""Where a sweep's cells run: the built-in executors (``local``, ``local:N``, ``ray[:ADDRESS]``),
registered through the ``register_executors`` hook like any plugin's (by :mod:`slimkit.executors`).

An executor receives cell specs (:mod:`slimkit.sweep.cell`) and yields ``(spec, result)`` as cells
finish, in any order; it calls ``on_start(spec, where)`` when a cell starts. It never decides what
a cell computes: the driver (:mod:`slimkit.sweep.run`) chooses the cells, trains baselines first,
writes results. A worker that dies mid-cell (SIGKILL, a lost node) costs that cell a retry, up to
:data:`MAX_ATTEMPTS` runs; the retry resumes from the cell's checkpoints where the directory is
shared.

- ``local``: every cell in this process, one after another (under torchrun on every rank).
- ``local:N``: N worker processes (``spawn``) on this machine, the CPU threads split between them.
- ``ray[:ADDRESS]``: each cell a Ray task asking for one CPU (and one GPU where the cluster has
  GPUs); ``ADDRESS`` as ``ray.init`` takes it (``auto``, ``HOST:PORT``, ``ray://HOST:10001``);
  without it, ``ray.init()`` (``RAY_ADDRESS``, or a cluster started on this machine).
"""
from __future__ import annotations

import collections
import os
import threading
import time

from slimkit.errors import UserError
from slimkit.sweep.cell import run_cell

MAX_ATTEMPTS = 3  # runs of one cell whose worker died, before the cell is recorded as failed


def _died(spec: dict, why: str) -> dict:
    return {"id": spec["id"], "status": "failed", "files": None, "seconds": 0.0, "accuracy": None,
            "baseline_accuracy": None, "error": f"worker died {MAX_ATTEMPTS} times running this cell ({why})"}


class Executor:
    """Runs cell specs; ``parallel`` executors run them outside this process."""

    name = "executor"
    parallel = True
    slots = 1  # cells that can run at once (for the time-left estimate)

    def run(self, specs: list[dict], on_start):
        raise NotImplementedError

    def describe(self) -> str:
        return self.name

    def close(self) -> None:
        """Called by the driver when the sweep ends (workers, connections)."""


class LocalExecutor(Executor):
    """Today's sweep: each cell in this process, in order."""

    name, parallel = "local", False

    def run(self, specs, on_start):
        for spec in specs:
            on_start(spec, "this process")
            yield spec, run_cell(spec)


def _watch_parent(parent: int) -> None:
    """A worker whose driver died (SIGKILL) exits at once: a resumed driver runs its cell again."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _worker(conn, threads: int, parent: int) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the driver, which stops the workers
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    import torch

    torch.set_num_threads(threads)
    while True:
        try:
            spec = conn.recv()
        except EOFError:
            return
        if spec is None:
            return
        conn.send(run_cell({**spec, "threads": threads}))


class ProcessExecutor(Executor):
    """N worker processes on this machine; a worker that dies is replaced and its cell run again."""

    name = "local"

    def __init__(self, workers: int, threads: int | None = None):
        self.slots = workers
        self.threads = threads or max(1, (os.cpu_count() or 1) // workers)
        self._slots: list[list] = []

    def describe(self) -> str:
        return f"local:{self.slots} ({self.threads} thread(s) each)"

    def _spawn(self, ctx):
        parent_conn, child_conn = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(child_conn, self.threads, os.getpid()), daemon=True)
        proc.start()
        child_conn.close()
        return proc, parent_conn

    def run(self, specs, on_start):
        import multiprocessing as mp
        from multiprocessing.connection import wait

        ctx = mp.get_context("spawn")  # a fresh interpreter: no forked torch threads or locks
        queue, attempts = collections.deque(specs), collections.Counter()
        if not self._slots:  # workers stay up between calls (baselines, then method cells) until close()
            self._slots = [[None, None, None] for _ in range(self.slots)]  # process, pipe, spec
        slots = self._slots
        try:
            while queue or any(s[2] is not None for s in slots):
                for index, slot in enumerate(slots):
                    if slot[2] is None and queue:
                        if slot[0] is None or not slot[0].is_alive():
                            slot[0], slot[1] = self._spawn(ctx)
                        slot[2] = queue.popleft()
                        attempts[slot[2]["id"]] += 1
                        slot[1].send(slot[2])
                        on_start(slot[2], f"worker {index} pid {slot[0].pid}")
                busy = [s for s in slots if s[2] is not None]
                wait([s[1] for s in busy] + [s[0].sentinel for s in busy])
                for slot in busy:
                    proc, conn, spec = slot
                    result = None
                    try:
                        if conn.poll():
                            result = conn.recv()
                    except (EOFError, OSError):
                        pass
                    if result is not None:
                        slot[2] = None
                        yield spec, result
                    elif not proc.is_alive():  # died mid-cell: a new worker, the cell again (or failed)
                        proc.join()
                        conn.close()
                        slot[:] = [None, None, None]
                        if attempts[spec["id"]] >= MAX_ATTEMPTS:
                            yield spec, _died(spec, f"exit code {proc.exitcode}")
                        else:
                            queue.appendleft(spec)
        except BaseException:  # interrupted mid-cell: the cells resume from their checkpoints next time
            self.close(kill=True)
            raise

    def close(self, kill: bool = False) -> None:
        for proc, conn, _ in self._slots:
            if proc is None:
                continue
            if proc.is_alive() and not kill:
                try:
                    conn.send(None)
                except OSError:
                    pass
                proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
            proc.join()
        self._slots = []


class RayExecutor(Executor):
    """Each cell a Ray task (one CPU; one GPU where the cluster has GPUs); Ray retries a task whose
    worker died."""

    name = "ray"

    def __init__(self, address: str | None = None):
        try:
            import ray  # noqa: F401
        except ImportError:
            raise UserError("--executor ray needs Ray: pip install 'slimkit[ray]'") from None
        self.address = address

    def describe(self) -> str:
        return f"ray ({self.address or 'ray.init()'}; one CPU per cell)"

    def _connect(self):
        import ray

        if not ray.is_initialized():
            ray.init(address=self.address, log_to_driver=True)
        resources = ray.cluster_resources()
        self.slots = max(1, int(resources.get("CPU", 1)))
        return ray, int(resources.get("GPU", 0))

    def run(self, specs, on_start):
        ray, gpus = self._connect()
        task = ray.remote(run_cell).options(num_cpus=1, num_gpus=1 if gpus else 0, max_retries=MAX_ATTEMPTS - 1,
                                            retry_exceptions=False)
        pending = {}
        for spec in specs:
            pending[task.remote({**spec, "threads": 1})] = spec
            on_start(spec, "ray")
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                spec = pending.pop(done[0])
                try:
                    result = ray.get(done[0])
                except ray.exceptions.RayError as exc:  # the worker died on every attempt
                    result = _died(spec, type(exc).__name__)
                yield spec, result
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
