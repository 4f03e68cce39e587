"""Running a sweep (the driver): choosing the cells still to run (resume), handing them to an
executor (:mod:`slimkit.sweep.executors`; baselines first when cells run side by side), recording
failed ones, stopping cleanly on SIGINT/SIGTERM, then writing the results."""
from __future__ import annotations

import dataclasses
import secrets
import shutil
import signal
import time
from pathlib import Path

from slimkit import atomic, distributed
from slimkit.errors import UserError
from slimkit.rundir import OutLock
from slimkit.sweep.cell import MARKER_NAME, write_returned_files
from slimkit.sweep.grid import read_grid, validate
from slimkit.sweep.progress import GridProgress
from slimkit.sweep.report import collect, read_json, write_json, write_results


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def run_sweep(grid_path, *, out: str | None = None, dry_run: bool = False, verbose: bool = False,
              log=print, executor: str = "local", console=None) -> dict:
    """Run (or with ``dry_run`` only validate and list) a grid on ``executor`` (``local``, ``local:N``,
    ``ray[:ADDRESS]`` or a plugin's). Progress: a live bar on ``console`` when it is a terminal (rich),
    otherwise status lines through ``log``. Returns ``{"rows", "failed", "ran", "skipped", "out"}``
    (``rows`` only on rank 0)."""
    from slimkit.plugins import get_registry

    grid = read_grid(Path(grid_path), out)
    runner = get_registry().executor(executor)
    if runner.parallel and not dry_run:
        runner.warm_up([[data, grid.seeds[0]] for data in grid.data])  # overlaps with the validation
    cells = validate(grid)
    dist = distributed.setup()
    if runner.parallel and dist.world_size > 1:
        distributed.teardown(dist)
        raise UserError(f"--executor {executor} runs cells in other processes; under torchrun use --executor local "
                        "(every rank runs each cell together)")
    main = dist.is_main
    say = log if main else (lambda *a, **k: None)
    n_method = sum(c.kind == "method" for c in cells)
    say(f"sweep {grid.path}: {len(cells)} cells ({len(cells) - n_method} baseline, {n_method} method) -> {grid.out}")
    if dry_run:
        for c in cells:
            say(f"  {c.id}")
        distributed.teardown(dist)
        return {"rows": [], "failed": [], "ran": [], "skipped": [], "out": grid.out, "cells": cells}
    lock = OutLock(grid.out, "sweep").acquire() if main else None  # one sweep per output directory
    try:
        say(f"executor: {runner.describe()}")
        return _run_cells(grid, cells, dist, say, verbose, runner, console if main else None)
    finally:
        if lock is not None:
            lock.release()


def _prepare(grid, cells, main: bool) -> list:
    """Rank 0 decides which cells still have to run (resume: report.json present and cell.json equal
    to the grid's settings means finished) and readies their directories."""
    pending = []
    for cell in cells:
        cell_dir = grid.out / "cells" / cell.id
        config = cell.config(grid)
        if not main:
            continue
        stored = read_json(cell_dir / "cell.json")
        if (cell_dir / "report.json").exists() and stored == config:
            continue
        if cell_dir.exists() and stored != config:
            shutil.rmtree(cell_dir)  # settings changed (or an older layout): start the cell over
        cell_dir.mkdir(parents=True, exist_ok=True)
        write_json(cell_dir / "cell.json", config)
        (cell_dir / "error.txt").unlink(missing_ok=True)
        pending.append(cell.id)
    return pending


def _spec(grid, cell, out: Path, verbose: bool, share, write_error: bool, methods=None) -> dict:
    from slimkit.pipeline import RunConfig

    cfg = RunConfig(model=cell.model, data=cell.data, methods=list(cell.methods if methods is None else methods),
                    options=cell.options if methods is None else {}, model_options=dict(cell.model_options),
                    epochs=grid.epochs, baseline_epochs=grid.baseline_epochs, lr=grid.lr,
                    batch_size=grid.batch_size, optimizer=grid.optimizer, seed=cell.seed, out=str(out),
                    resume=True, latency=grid.latency, quiet=not verbose, cache_dir=grid.cache_dir)
    return {"id": cell.id, "out": str(out), "config": dataclasses.asdict(cfg), "verbose": verbose,
            "share": share, "write_error": write_error}


def _baseline_jobs(grid, cells, todo, verbose, share) -> list:
    """Baselines are trained once and shared: before a parallel executor starts method cells, every
    baseline they need is trained (or found in the cache), by the group's baseline cell when it is
    to run, otherwise by a baseline-only run in OUT/.baselines/ (removed afterwards)."""
    running = {c.variant for c in todo if c.kind == "baseline"}
    jobs, seen = [], set()
    for cell in todo:
        if cell.kind == "method" and cell.variant not in running and cell.variant not in seen:
            seen.add(cell.variant)
            spec = _spec(grid, cell, grid.out / ".baselines" / cell.variant, verbose, share, True, methods=[])
            jobs.append({**spec, "id": f"{cell.variant}-baseline (for the method cells)", "prepare": True})
    return jobs


def _dispatch(phases, executor, tracker, main: bool, ran: list, failed: list) -> None:
    """Hand each phase's specs to the executor; record each result as it comes."""
    for specs in phases:
        for spec, result in executor.run([s for s in specs if s], tracker.started):
            if result.get("files") is not None and main:
                write_returned_files(Path(spec["out"]), result["files"])
            if spec.get("prepare"):
                shutil.rmtree(spec["out"], ignore_errors=True)
                tracker.prepared(spec, result)
                continue
            (failed if result["status"] == "failed" else ran).append(spec["id"])
            tracker.finished(spec, result)


def _run_cells(grid, cells, dist, say, verbose: bool, executor, console) -> dict:
    from slimkit.train import Interrupted

    main = dist.is_main
    if main:
        (grid.out / "cells").mkdir(parents=True, exist_ok=True)
        if grid.path.resolve() != (grid.out / "grid.toml").resolve():
            shutil.copyfile(grid.path, grid.out / "grid.toml")  # the grid the results came from
    previous = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread
        previous = None
    pending = set(distributed.broadcast_object(dist, _prepare(grid, cells, main)))
    number = {c.id: i for i, c in enumerate(cells, start=1)}
    for cell in cells:
        if cell.id not in pending:
            say(f"[{number[cell.id]}/{len(cells)}] {cell.id}: finished earlier, skipped")
    todo = [c for c in cells if c.id in pending]
    share = None
    if executor.parallel:  # workers elsewhere check that they see the driver's output directory
        share = {"path": str(grid.out / MARKER_NAME), "token": secrets.token_hex(16)}
        atomic.write_text(Path(share["path"]), share["token"])
        phases = [_baseline_jobs(grid, cells, todo, verbose, share)
                  + [_spec(grid, c, grid.out / "cells" / c.id, verbose, share, True) for c in todo
                     if c.kind == "baseline"],
                  [_spec(grid, c, grid.out / "cells" / c.id, verbose, share, True) for c in todo
                   if c.kind == "method"]]
    else:
        phases = [[_spec(grid, c, grid.out / "cells" / c.id, verbose, None, main) for c in todo]]
    tracker = GridProgress(len(cells), len(cells) - len(todo), executor, say, console)
    ran, failed = [], []
    interrupted = None
    started = time.perf_counter()
    try:
        with tracker:
            _dispatch(phases, executor, tracker, main, ran, failed)
    except (Interrupted, KeyboardInterrupt) as exc:
        interrupted = exc
        say("sweep interrupted")
    finally:
        executor.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if share is not None:
            Path(share["path"]).unlink(missing_ok=True)
        shutil.rmtree(grid.out / ".baselines", ignore_errors=True)
    ran = [c.id for c in cells if c.id in set(ran)]  # grid order, whatever order they finished in
    failed = [c.id for c in cells if c.id in set(failed)]
    skipped = [c.id for c in cells if c.id not in pending]
    rows = []
    if main:
        rows = collect(grid, cells)
        write_results(grid, rows)
        say(f"wrote {grid.out / 'results.csv'}, {grid.out / 'results.md'} and plots; ran {len(ran)}, "
            f"skipped {len(skipped)} finished, {len(failed)} failed, {time.perf_counter() - started:.1f} s")
    distributed.barrier(dist)
    distributed.teardown(dist)
    if interrupted is not None:
        raise Interrupted(f"sweep interrupted; {len(ran) + len(skipped)} of {len(cells)} cells are finished; "
                          f"run the same command again to resume")
    return {"rows": rows, "failed": failed, "ran": ran, "skipped": skipped, "out": grid.out, "cells": cells}
