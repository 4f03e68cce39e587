"""Where a sweep's cells run: the built-in executors (``local``, ``local:N``, ``ray[:ADDRESS]``),
registered through the ``register_executors`` hook like any plugin's (by :mod:`slimkit.executors`).

An executor receives cell specs (:mod:`slimkit.sweep.cell`) and yields ``(spec, result)`` as cells
finish, in any order; it calls ``on_start(spec, where)`` when a cell starts. It never decides what
a cell computes: the driver (:mod:`slimkit.sweep.run`) chooses the cells, trains baselines first,
writes results. A worker that dies mid-cell (SIGKILL, a lost node) costs that cell a retry, up to
:data:`MAX_ATTEMPTS` runs; the retry resumes from the cell's checkpoints where the directory is
shared.

- ``local``: every cell in this process, one after another (under torchrun on every rank).
- ``local:N``: N long-lived worker processes on this machine, each taking cells one after another
  from the driver, the CPU threads split between them. They are forked from a fork server that
  imports torch and slimkit once (started by :meth:`Executor.warm_up` while the driver validates
  the grid; ``spawn`` where there is no fork), so a cell costs no interpreter start-up.
- ``ray[:ADDRESS]``: each cell a Ray task asking for one CPU (and one GPU where the cluster has
  GPUs); ``ADDRESS`` as ``ray.init`` takes it (``auto``, ``HOST:PORT``, ``ray://HOST:10001``);
  without it, ``ray.init()`` (``RAY_ADDRESS``, or a cluster started on this machine).
"""
from __future__ import annotations

import collections
import os
import sys
import threading

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

    def warm_up(self, data_sets: list) -> None:
        """Called by the driver before it validates the grid: start what takes long to start (worker
        processes, connections) so that it overlaps with the validation. ``data_sets``: the
        ``(data spec, seed)`` pairs the cells will load."""

    def close(self) -> None:
        """Called by the driver when the sweep ends (workers, connections)."""


class LocalExecutor(Executor):
    """Today's sweep: each cell in this process, in order."""

    name, parallel = "local", False

    def run(self, specs, on_start):
        for spec in specs:
            on_start(spec, "this process")
            yield spec, run_cell(spec)


def _watch_driver(lifeline) -> None:
    """A worker whose driver died (even by SIGKILL) exits at once: a resumed driver runs its cell
    again. The driver holds the other end of ``lifeline`` and never writes: end of file = gone."""
    try:
        lifeline.recv()
    except (EOFError, OSError):
        pass
    os._exit(1)


#: imported once by the fork server that ``local:N`` forks its workers from: what every cell needs
PRELOAD = ["slimkit.sweep.preload"]
PRELOAD_ENV = "SLIMKIT_SWEEP_PRELOAD"  # the data sets it loads once (their modules stay imported)


def _worker(conn, lifeline, threads: int, environ: dict, path: list, warm: list) -> None:
    """A worker: takes cells from ``conn`` until ``None``, one at a time, in one process for the
    whole sweep (torch, slimkit and the data set's modules are imported once, not per cell)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the driver, which stops the workers
    threading.Thread(target=_watch_driver, args=(lifeline,), daemon=True).start()
    # forked from a fork server started earlier: take the driver's environment and import path now
    os.environ.clear()
    os.environ.update(environ)
    sys.path[:] = path
    import torch

    from slimkit import progress

    torch.set_num_threads(threads)
    # a cell's lines (--verbose) go to the driver, which prints them (above its live bar)
    progress.set_line_sink(lambda line, markup: conn.send(("line", line, markup)))
    _warm_up(warm)
    while True:
        try:
            spec = conn.recv()
        except EOFError:
            return
        if spec is None:
            return
        conn.send(run_cell({**spec, "threads": threads}))


def _warm_up(data_specs: list) -> None:
    """Load the plugins (with this worker's environment) and each data set once before the first
    cell: quick when forked from the fork server, which imported their modules; under ``spawn``
    the imports (e.g. scikit-learn for digits) cost an idle worker's time, not a cell's. Errors
    are left to the cells, which report them."""
    try:
        from slimkit.data import load_data
        from slimkit.plugins import get_registry

        registry = get_registry()
        for data, seed in data_specs:
            load_data(data, registry.datasets, seed=seed)
    except Exception:  # noqa: BLE001 - the cell that needs it fails with the message
        pass


def _start_method() -> str:
    import multiprocessing as mp

    # forkserver: one clean process (no torch threads yet) imports PRELOAD once, workers are forked
    # from it in milliseconds; spawn where there is no fork (Windows)
    return "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"


class ProcessExecutor(Executor):
    """N worker processes on this machine; a worker that dies is replaced and its cell run again."""

    name = "local"

    def __init__(self, workers: int, threads: int | None = None):
        self.slots = workers
        self.threads = threads or max(1, (os.cpu_count() or 1) // workers)
        self._slots: list[list] = []
        self._lifelines: dict = {}

    def describe(self) -> str:
        return f"local:{self.slots} ({self.threads} thread(s) each)"

    def warm_up(self, data_sets: list) -> None:
        import json
        import multiprocessing as mp

        if _start_method() == "forkserver":
            from multiprocessing import forkserver

            mp.get_context("forkserver").set_forkserver_preload(PRELOAD)
            os.environ[PRELOAD_ENV] = json.dumps(data_sets)  # for the fork server only (it inherits the environment)
            try:
                forkserver.ensure_running()  # returns at once; the server imports PRELOAD meanwhile
            finally:
                os.environ.pop(PRELOAD_ENV, None)

    def _spawn(self, ctx, warm: list):
        parent_conn, child_conn = ctx.Pipe()
        lifeline_r, lifeline_w = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_worker, args=(child_conn, lifeline_r, self.threads, dict(os.environ),
                                                 list(sys.path), warm), daemon=True)
        proc.start()
        child_conn.close()
        lifeline_r.close()
        self._lifelines[proc.pid] = lifeline_w  # closed with the worker (or by the driver's death)
        return proc, parent_conn

    def run(self, specs, on_start):
        import multiprocessing as mp
        from multiprocessing.connection import wait

        from slimkit import progress

        ctx = mp.get_context(_start_method())
        queue, attempts = collections.deque(specs), collections.Counter()
        warm = sorted({s["config"]["data"]: s["config"]["seed"] for s in specs}.items())
        if not self._slots:  # workers stay up between calls (baselines, then method cells) until close()
            self._slots = [[None, None, None] for _ in range(self.slots)]  # process, pipe, spec
        slots = self._slots
        try:
            for slot in slots if specs else []:  # all at once: an idle worker warms up while others start cells
                if slot[0] is None or not slot[0].is_alive():
                    slot[0], slot[1] = self._spawn(ctx, warm)
            while queue or any(s[2] is not None for s in slots):
                for index, slot in enumerate(slots):
                    if slot[2] is None and queue:
                        if slot[0] is None or not slot[0].is_alive():
                            slot[0], slot[1] = self._spawn(ctx, warm)
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
                        while result is None and conn.poll():
                            result = conn.recv()
                            if isinstance(result, tuple):  # ("line", text, markup): a line of the cell's
                                progress.print_line(*result[1:])
                                result = None
                    except (EOFError, OSError):
                        pass
                    if result is not None:
                        slot[2] = None
                        yield spec, result
                    elif not proc.is_alive():  # died mid-cell: a new worker, the cell again (or failed)
                        proc.join()
                        conn.close()
                        self._lifelines.pop(proc.pid).close()
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
        for lifeline in self._lifelines.values():
            lifeline.close()
        self._slots, self._lifelines = [], {}


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
