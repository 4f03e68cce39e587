"""Running a sweep: every cell as an in-process compress run, skipping finished cells (resume),
recording failed ones, stopping cleanly on SIGINT/SIGTERM, then writing the results."""
from __future__ import annotations

import json
import shutil
import signal
import time
import traceback
from pathlib import Path

from slimkit import atomic, distributed
from slimkit.errors import UserError
from slimkit.rundir import OutLock
from slimkit.sweep.grid import read_grid, validate
from slimkit.sweep.report import collect, read_json, write_json, write_results


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def run_sweep(grid_path, *, out: str | None = None, dry_run: bool = False, verbose: bool = False,
              log=print) -> dict:
    """Run (or with ``dry_run`` only validate and list) a grid. Returns ``{"rows", "failed", "ran",
    "skipped", "out"}`` (``rows`` only on rank 0)."""
    grid = read_grid(Path(grid_path), out)
    cells = validate(grid)
    dist = distributed.setup()
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
        return _run_cells(grid, cells, dist, say, verbose)
    finally:
        if lock is not None:
            lock.release()


def _run_cells(grid, cells, dist, say, verbose: bool) -> dict:
    from slimkit.pipeline import Run, RunConfig
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
    ran, skipped, failed = [], [], []
    interrupted = None
    started = time.perf_counter()
    try:
        for i, cell in enumerate(cells, start=1):
            cell_dir = grid.out / "cells" / cell.id
            config = cell.config(grid)
            done = False
            if main:
                stored = read_json(cell_dir / "cell.json")
                done = (cell_dir / "report.json").exists() and stored == config
                if not done:
                    if cell_dir.exists() and stored != config:
                        shutil.rmtree(cell_dir)  # settings changed (or an older layout): start the cell over
                    cell_dir.mkdir(parents=True, exist_ok=True)
                    write_json(cell_dir / "cell.json", config)
                    (cell_dir / "error.txt").unlink(missing_ok=True)
            done = distributed.broadcast_object(dist, done)
            if done:
                skipped.append(cell.id)
                say(f"[{i}/{len(cells)}] {cell.id}: finished earlier, skipped")
                continue
            say(f"[{i}/{len(cells)}] {cell.id}: running")
            t0 = time.perf_counter()
            cfg = RunConfig(model=cell.model, data=cell.data, methods=list(cell.methods), options=cell.options,
                            model_options=dict(cell.model_options), epochs=grid.epochs,
                            baseline_epochs=grid.baseline_epochs, lr=grid.lr, batch_size=grid.batch_size,
                            optimizer=grid.optimizer, seed=cell.seed, out=str(cell_dir), resume=True,
                            latency=grid.latency, quiet=not verbose, cache_dir=grid.cache_dir)
            try:
                report = Run(cfg).execute(teardown=False)  # one process group for the whole sweep
            except (Interrupted, KeyboardInterrupt) as exc:
                interrupted = exc
                say(f"[{i}/{len(cells)}] {cell.id}: interrupted")
                break
            except Exception as exc:  # a failed cell is recorded; the rest go on
                message = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
                failed.append(cell.id)
                if main:
                    atomic.write_text(cell_dir / "error.txt", message + "\n\n" + traceback.format_exc())
                say(f"[{i}/{len(cells)}] {cell.id}: FAILED: {message.splitlines()[0] if message else ''}")
                continue
            ran.append(cell.id)
            if main and report is not None:
                say(f"[{i}/{len(cells)}] {cell.id}: accuracy {100 * report['final']['accuracy']:.2f} % "
                    f"(baseline {100 * report['baseline']['accuracy']:.2f} %), {time.perf_counter() - t0:.1f} s")
    except KeyboardInterrupt as exc:  # between runs
        interrupted = exc
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
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
