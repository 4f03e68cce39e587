"""``slimkit sweep GRID.toml``: every combination of a grid, each as a normal compress run.

A grid (TOML; docs/sweep.md has the full format) names models, data sets, seeds, one
method chain and lists of option values. The sweep runs the cartesian product: for
every (model, model options, data, seed) a *baseline cell* (the chain left empty: the
trained model as it is) and then one *method cell* per combination of the option
lists. Each cell is an ordinary in-process :class:`slimkit.pipeline.Run` writing into
``OUT/cells/<cell-id>/`` (its ``report.json``, ``metrics.jsonl``, ``model.slim``...);
cells of the same model, data and seed share the cached baseline, which the baseline
cell trains first.

Everything is validated before any training: grid keys and types, non-empty lists,
models, data sets, method names, every cell's options (``Method.parse_options``) and
whether every method applies to the model (``Method.check`` on an untrained
instance). A mistake is a :class:`UserError` naming the cell and the key.

Resuming: a cell whose ``report.json`` is present (written last, by an atomic rename)
and whose ``cell.json`` matches the grid's settings is skipped; an unfinished cell
continues from its own checkpoints (the run is made with ``resume=True``); a cell
whose settings changed runs again from scratch. A cell that fails is recorded
(``status=failed``, the message in ``results.csv`` and the traceback in its
``error.txt``) and the sweep goes on; the command then ends with one line naming the
failed cells and exit status 2.
SIGINT/SIGTERM stop the sweep after writing the results gathered so far (exit 130);
running the same command again resumes it.

Outputs in ``OUT/``: ``results.csv`` (one row per cell), ``results.md`` (accuracy
tables: rows the first swept option, columns the other swept options; plus the rate
of convergence and a table of every cell), ``accuracy.png`` (bar per cell),
``convergence.png`` (validation accuracy per epoch of each cell's last stage, one
panel per combination of the swept options after the first, one line per value of
the first) and ``accuracy_vs_params.png`` (scatter).

Under torchrun every rank runs the same cells in the same order (rank 0's decision of
which cells to skip is broadcast); only rank 0 writes files. One process group serves
the whole sweep (``Run.execute(teardown=False)``): re-initialising it after a teardown
hangs under torchrun.
"""
from __future__ import annotations

import csv
import io
import itertools
import json
import math
import re
import shutil
import signal
import time
import tomllib
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from slimkit.measure import epochs_to_fraction
from slimkit import distributed
from slimkit.errors import UserError

GRID_KEYS = {
    "out": "output directory (default runs/sweep-<grid file name>)",
    "models": "list of model names (zoo names or model files)",
    "model_options": "table of model options; a list value is swept",
    "data": "list of data set specs",
    "seeds": "list of seeds (default [0])",
    "epochs": "epochs per method stage (default 10)",
    "baseline_epochs": "epochs to train each baseline (default 20)",
    "lr": "learning rate (default: the optimizer's)",
    "batch_size": "batch size (default 64)",
    "optimizer": "sgd or adam (default sgd)",
    "methods": "the method chain applied in every method cell (may be empty: baselines only)",
    "options": "table of METHOD.OPTION = value or [values]",
    "baseline": "run the baseline cells (default true)",
    "latency": "measure latency in every cell (default true)",
    "cache_dir": "baseline cache directory (default $SLIMKIT_CACHE or ~/.cache/slimkit)",
}
CONVERGENCE_FRACTION = 0.95


# --------------------------------------------------------------------------- the grid

@dataclass
class Cell:
    id: str
    kind: str  # "baseline" or "method"
    model: str
    model_options: dict
    data: str
    seed: int
    methods: list
    options: dict  # method -> {option: raw value}
    swept: dict = field(default_factory=dict)  # "method.option" -> value, for every listed key
    variant: str = ""  # model/data/seed part of the id (the group a baseline belongs to)

    def config(self, grid: "Grid") -> dict:
        """What the cell's result depends on; compared with cell.json to decide whether to skip."""
        return {"id": self.id, "kind": self.kind, "model": self.model, "model_options": self.model_options,
                "data": self.data, "seed": self.seed, "methods": self.methods, "options": self.options,
                "epochs": grid.epochs, "baseline_epochs": grid.baseline_epochs, "lr": grid.lr,
                "batch_size": grid.batch_size, "optimizer": grid.optimizer}


@dataclass
class Grid:
    path: Path
    out: Path
    models: list
    model_options: dict
    data: list
    seeds: list
    epochs: int
    baseline_epochs: int
    lr: float | None
    batch_size: int
    optimizer: str
    methods: list
    options: dict  # "method.option" -> list of values
    listed: list  # option keys given as lists (they name cells)
    baseline: bool
    latency: bool
    cache_dir: str | None
    cells: list = field(default_factory=list)

    @property
    def swept(self) -> list[str]:
        """Option keys with more than one value, in grid order (the axes of tables and plots)."""
        return [k for k in self.options if len(self.options[k]) > 1]


def _fail(path, message: str):
    raise UserError(f"grid {path}: {message}")


def _as_list(path, key: str, value, kind, what: str) -> list:
    values = value if isinstance(value, list) else [value]
    if not values:
        _fail(path, f"key {key!r} is an empty list; give at least one {what}")
    for v in values:
        if not isinstance(v, kind) or isinstance(v, bool) and kind is not bool:
            _fail(path, f"key {key!r} has {v!r}; expected {what}s")
    return values


def _scalar(path, grid: dict, key: str, kind, default, low=None):
    if key not in grid:
        return default
    value = grid[key]
    ok = isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        _fail(path, f"key {key!r} is {value!r}; expected {'a number' if kind is float else kind.__name__}")
    if low is not None and value < low:
        _fail(path, f"key {key!r} is {value!r}; expected at least {low}")
    return value


def _fmt(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value).rstrip("0").rstrip(".") if "e" not in repr(value) else repr(value)
    return str(value)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+,-]+", "_", text).strip("_") or "_"


def read_grid(path: Path, out: str | None = None) -> Grid:
    """Parse and check a grid file's syntax and types (models, methods and options are checked by
    :func:`validate`)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"grid {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"grid {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - set(GRID_KEYS))
    if unknown:
        hint = (" (this looks like a compress recipe: run it with `slimkit compress --recipe`)"
                if "stage" in unknown or "model" in unknown else "")
        _fail(path, f"unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(GRID_KEYS)}{hint}")
    for key in ("models", "data"):
        if key not in raw:
            _fail(path, f"key {key!r} is missing; expected a list of {GRID_KEYS[key].split('of ')[-1]}")
    models = _as_list(path, "models", raw["models"], str, "model name")
    data = _as_list(path, "data", raw["data"], str, "data set spec")
    seeds = _as_list(path, "seeds", raw.get("seeds", [0]), int, "integer seed")
    methods = raw.get("methods", [])
    if not isinstance(methods, list) or not all(isinstance(m, str) for m in methods):
        _fail(path, f"key 'methods' is {methods!r}; expected a list of method names (a chain)")
    if len(set(methods)) != len(methods):
        _fail(path, f"key 'methods' names a method twice ({methods}); give each once")
    model_options = raw.get("model_options", {})
    if not isinstance(model_options, dict):
        _fail(path, "key 'model_options' must be a table, e.g. model_options = { width = 0.25 }")
    for k, v in model_options.items():
        if isinstance(v, list) and not v:
            _fail(path, f"key 'model_options.{k}' is an empty list; give at least one value")
    options_raw = raw.get("options", {})
    if not isinstance(options_raw, dict):
        _fail(path, "key 'options' must be a table of \"METHOD.OPTION\" = [values]")
    options, listed = {}, []
    for key, value in options_raw.items():
        if isinstance(value, dict):  # [options.structural] block = [...] written as a sub-table
            _fail(path, f"key 'options.{key}' is a table; write \"{key}.OPTION\" = [values] under [options]")
        method, dot, opt = key.partition(".")
        if not dot or not method or not opt:
            _fail(path, f"option key {key!r} must be METHOD.OPTION (e.g. \"structural.block\")")
        if method not in methods:
            _fail(path, f"option key {key!r}: method {method!r} is not in the chain "
                        f"'methods' = {methods}")
        if isinstance(value, list):
            if not value:
                _fail(path, f"option key {key!r} is an empty list; give at least one value")
            listed.append(key)
        options[key] = value if isinstance(value, list) else [value]
    optimizer = _scalar(path, raw, "optimizer", str, "sgd")
    if optimizer not in ("sgd", "adam"):
        _fail(path, f"key 'optimizer' is {optimizer!r}; expected sgd or adam")
    lr = _scalar(path, raw, "lr", float, None)
    if lr is not None and not lr > 0:
        _fail(path, f"key 'lr' is {lr!r}; expected a positive number")
    out_dir = out or _scalar(path, raw, "out", str, f"runs/sweep-{path.stem}")
    return Grid(
        path=path, out=Path(out_dir), models=models, model_options=model_options, data=data, seeds=seeds,
        epochs=_scalar(path, raw, "epochs", int, 10, 0),
        baseline_epochs=_scalar(path, raw, "baseline_epochs", int, 20, 0),
        lr=lr, batch_size=_scalar(path, raw, "batch_size", int, 64, 1), optimizer=optimizer,
        methods=methods, options=options, listed=listed, baseline=_scalar(path, raw, "baseline", bool, True),
        latency=_scalar(path, raw, "latency", bool, True), cache_dir=_scalar(path, raw, "cache_dir", str, None))


def expand(grid: Grid) -> list[Cell]:
    """The grid's cells in run order: per (model, model options, data, seed) its baseline, then
    every option combination (cartesian product, grid order, last key fastest)."""
    mo_keys = list(grid.model_options)
    mo_values = [v if isinstance(v, list) else [v] for v in grid.model_options.values()]
    mo_swept = [k for k, v in grid.model_options.items() if isinstance(v, list)]
    opt_keys = list(grid.options)
    short = len(grid.methods) == 1
    cells: list[Cell] = []
    seen: dict[str, Cell] = {}
    for model in grid.models:
        for mo_combo in itertools.product(*mo_values):
            mopts = dict(zip(mo_keys, mo_combo))
            for data in grid.data:
                for seed in grid.seeds:
                    parts = [Path(model).stem if ("/" in model or model.endswith(".slim")) else model]
                    parts += [f"{k}={_fmt(mopts[k])}" for k in mo_swept]
                    parts.append(data.split(":", 1)[0])
                    if len(grid.seeds) > 1:
                        parts.append(f"seed={seed}")
                    variant = "-".join(_slug(p) for p in parts)
                    todo = []
                    if grid.baseline:
                        todo.append(Cell(f"{variant}-baseline", "baseline", model, mopts, data, seed, [], {},
                                         variant=variant))
                    if grid.methods:
                        for combo in itertools.product(*grid.options.values()):
                            chosen = dict(zip(opt_keys, combo))
                            options = {m: {} for m in grid.methods}
                            for key, value in chosen.items():
                                method, _, opt = key.partition(".")
                                options[method][opt] = value
                            named = [f"{key.split('.', 1)[1] if short else key}={_fmt(chosen[key])}"
                                     for key in grid.listed]
                            cid = "-".join([variant, *map(_slug, grid.methods), *map(_slug, named)])
                            todo.append(Cell(cid, "method", model, mopts, data, seed, list(grid.methods), options,
                                             swept={k: chosen[k] for k in opt_keys}, variant=variant))
                    for cell in todo:
                        if cell.id in seen:
                            raise UserError(f"grid {grid.path}: two cells would share the id {cell.id!r} "
                                            f"({seen[cell.id].data} and {cell.data}?); give different data names "
                                            "or separate grids")
                        seen[cell.id] = cell
                        cells.append(cell)
    return cells


def validate(grid: Grid, registry=None) -> list[Cell]:
    """Expand the grid and check every cell before anything trains; returns the cells."""
    from slimkit.data import load_data
    from slimkit.modelio import classify
    from slimkit.pipeline import assign_options
    from slimkit.plugins import get_registry

    registry = registry or get_registry()
    path = grid.path
    for name in grid.methods:
        try:
            registry.method(name)
        except UserError as exc:
            _fail(path, f"key 'methods': {exc}")
    cells = expand(grid)
    bundles = {}
    for data in grid.data:
        try:
            bundles[data] = load_data(data, registry.datasets, seed=grid.seeds[0])
        except UserError as exc:
            _fail(path, f"key 'data' = {data!r}: {exc}")
    probes: dict = {}
    for cell in cells:
        key = (cell.model, json.dumps(cell.model_options, sort_keys=True), cell.data)
        if key not in probes:
            bundle = bundles[cell.data]
            try:
                source = classify(cell.model, registry)
                if source.kind != "zoo":
                    _fail(path, f"key 'models' = {cell.model!r}: a sweep trains zoo models "
                                f"({', '.join(sorted(registry.models))}); model files are not supported")
                probes[key] = registry.build_model(cell.model, bundle.input_shape, bundle.num_classes,
                                                   **cell.model_options)
            except UserError as exc:
                if str(exc).startswith(f"grid {path}"):
                    raise
                _fail(path, f"cell {cell.id}: key 'models' = {cell.model!r} / 'model_options' = "
                            f"{cell.model_options}: {exc}")
        probe = probes[key]
        if cell.kind != "method":
            continue
        try:
            raw = assign_options(cell.methods, registry, [], cell.options)
            for name in cell.methods:
                method = registry.method(name)
                opts = method.parse_options(raw[name])
                method.check(probe, opts)
        except UserError as exc:
            keys = ", ".join(f"{k}={_fmt(v)}" for k, v in cell.swept.items())
            _fail(path, f"cell {cell.id} ({keys or 'no options'}): {exc}")
    grid.cells = cells
    return cells


# --------------------------------------------------------------------------- running

def last_stage_curve(cell_dir: Path, stage: str) -> list:
    """Validation accuracy per epoch of the last training call of ``stage`` in the cell's metrics.jsonl."""
    path = cell_dir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("stage") == stage]
    if not rows:
        return []
    last_call = max(r.get("call", 0) for r in rows)
    rows = sorted((r for r in rows if r.get("call", 0) == last_call), key=lambda r: r.get("epoch", 0))
    return [r.get("val_accuracy") for r in rows]


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def run_sweep(grid_path, *, out: str | None = None, dry_run: bool = False, verbose: bool = False,
              log=print) -> dict:
    """Run (or with ``dry_run`` only validate and list) a grid. Returns ``{"rows", "failed", "ran",
    "skipped", "out"}`` (``rows`` only on rank 0)."""
    from slimkit.pipeline import Run, RunConfig
    from slimkit.train import Interrupted

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
                stored = _read_json(cell_dir / "cell.json")
                done = (cell_dir / "report.json").exists() and stored == config
                if not done:
                    if cell_dir.exists() and stored != config:
                        shutil.rmtree(cell_dir)  # settings changed (or an older layout): start the cell over
                    cell_dir.mkdir(parents=True, exist_ok=True)
                    _write_json(cell_dir / "cell.json", config)
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
                    (cell_dir / "error.txt").write_text(message + "\n\n" + traceback.format_exc())
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


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    tmp.replace(path)


# --------------------------------------------------------------------------- results

def collect(grid: Grid, cells: list[Cell]) -> list[dict]:
    """One row per cell from its report.json (or its error)."""
    rows = []
    for cell in cells:
        cell_dir = grid.out / "cells" / cell.id
        row = {"cell": cell.id, "kind": cell.kind, "model": cell.model,
               "model_options": json.dumps(cell.model_options, sort_keys=True), "data": cell.data,
               "seed": cell.seed, "methods": "+".join(cell.methods) or "(none)"}
        for key in grid.options:
            row[key] = _fmt(cell.swept[key]) if key in cell.swept else ""
        report = _read_json(cell_dir / "report.json")
        stored = _read_json(cell_dir / "cell.json")
        if report is not None and stored == cell.config(grid):
            b, f = report["baseline"], report["final"]
            stage = cell.methods[-1] if cell.methods else "baseline"
            curve = last_stage_curve(cell_dir, stage)
            row.update({
                "status": "done", "epochs": grid.epochs if cell.methods else 0,
                "baseline_epochs": grid.baseline_epochs,
                "baseline_accuracy": b["accuracy"], "accuracy": f["accuracy"],
                "accuracy_change": f["accuracy"] - b["accuracy"],
                "baseline_params": b["params"], "params": f["params"], "nonzero_params": f["nonzero_params"],
                "size_bytes": f["size_bytes"], "macs": f["macs"], "nonzero_macs": f["nonzero_macs"],
                "latency_ms": f.get("latency_ms", ""), "baseline_latency_ms": b.get("latency_ms", ""),
                "compression_ratio": report["compression_ratio"],
                "param_ratio": b["params"] / f["params"] if f["params"] else "",
                "epochs_to_95": epochs_to_fraction(curve, CONVERGENCE_FRACTION) if curve else "",
                "val_accuracy_curve": json.dumps(curve), "seconds": report.get("seconds", ""), "error": "",
            })
        else:
            error = (cell_dir / "error.txt")
            status = "failed" if error.exists() else "pending"
            row.update({"status": status,
                        "error": error.read_text().split("\n\n", 1)[0].strip() if error.exists() else ""})
        rows.append(row)
    return rows


CSV_TAIL = ["status", "epochs", "baseline_epochs", "baseline_accuracy", "accuracy", "accuracy_change",
            "baseline_params", "params", "nonzero_params", "size_bytes", "macs", "nonzero_macs", "latency_ms",
            "baseline_latency_ms", "compression_ratio", "param_ratio", "epochs_to_95", "seconds",
            "val_accuracy_curve", "error"]


def write_results(grid: Grid, rows: list[dict]) -> None:
    head = ["cell", "kind", "model", "model_options", "data", "seed", "methods", *grid.options]
    columns = head + CSV_TAIL
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: row.get(c, "") for c in columns})
    _atomic_text(grid.out / "results.csv", buf.getvalue())
    _atomic_text(grid.out / "results.md", markdown(grid, rows))
    plots(grid, rows)
    from slimkit.reports.results import write_results_html  # the sortable table and Pareto plots
    write_results_html(rows, grid.out, title=f"Sweep results: {grid.path.name}")


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _pct(value) -> str:
    return f"{100 * value:.2f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "–"


def _table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def _cell_value(row: dict, key: str):
    if row["status"] == "failed":
        return "failed"
    if row["status"] != "done":
        return "–"
    value = row.get(key)
    if key == "accuracy":
        return _pct(value)
    return "–" if value in ("", None) else str(value)


def markdown(grid: Grid, rows: list[dict]) -> str:
    swept = grid.swept
    parts = [f"# Sweep results: {grid.path.name}", "",
             f"Test accuracy (%) of every cell; method stages {grid.epochs} epochs, baselines "
             f"{grid.baseline_epochs} epochs. Epochs to 95 %: first epoch whose validation accuracy reaches "
             "95 % of the stage's final (best) validation accuracy.", ""]
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(f"{r['model']} {r['model_options']} on {r['data']}, seed {r['seed']}", []).append(r)
    for title, members in groups.items():
        parts += [f"## {title}", ""]
        base = [r for r in members if r["kind"] == "baseline"]
        if base:
            parts += [f"Baseline: {_cell_value(base[0], 'accuracy')} % test accuracy, "
                      f"{base[0].get('params', '–')} parameters.", ""]
        method_rows = [r for r in members if r["kind"] == "method"]
        if swept and method_rows:
            first, rest = swept[0], swept[1:]
            row_values = list(dict.fromkeys(r[first] for r in method_rows))
            col_values = list(dict.fromkeys(tuple(r[k] for k in rest) for r in method_rows))
            col_names = ["/".join(c) if c else "accuracy" for c in col_values]
            for metric, label in (("accuracy", "test accuracy (%)"), ("epochs_to_95", "epochs to 95 %")):
                body = []
                for rv in row_values:
                    line = [f"{first.split('.', 1)[1] if '.' in first else first}={rv}"]
                    for cv in col_values:
                        match = [r for r in method_rows if r[first] == rv and tuple(r[k] for k in rest) == cv]
                        line.append(" / ".join(_cell_value(r, metric) for r in match) or "–")
                    body.append(line)
                corner = "/".join(k.split(".", 1)[-1] for k in rest) if rest else ""
                parts += [f"### {label}", "", _table([corner or first.split('.', 1)[-1], *col_names], body), ""]
    parts += ["## All cells", ""]
    body = [[r["cell"], r["status"], _pct(r.get("baseline_accuracy")), _pct(r.get("accuracy")),
             r.get("params", "–"), r.get("nonzero_params", "–"),
             f"{r['compression_ratio']:.2f}" if isinstance(r.get("compression_ratio"), float) else "–",
             r.get("epochs_to_95", "–") if r.get("epochs_to_95", "") != "" else "–",
             f"{r['seconds']:.0f}" if isinstance(r.get("seconds"), (int, float)) else "–",
             (r.get("error") or "")[:120].replace("|", "\\|").replace("\n", " ")]
            for r in rows]
    parts += [_table(["cell", "status", "baseline acc. (%)", "accuracy (%)", "params", "non-zero params",
                      "compression", "epochs to 95 %", "seconds", "error"], body), ""]
    return "\n".join(parts)


def _label(grid: Grid, row: dict, keys=None) -> str:
    keys = grid.swept if keys is None else keys
    if row["kind"] == "baseline":
        return "baseline"
    return " ".join(f"{k.split('.', 1)[-1]}={row[k]}" for k in keys) or "+".join(grid.methods)


def plots(grid: Grid, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["status"] == "done"]
    if not done:
        return
    many_variants = len({(r["model"], r["model_options"], r["data"], r["seed"]) for r in rows}) > 1

    def name(r):
        label = _label(grid, r)
        return f"{r['cell'].split('-' + grid.methods[0])[0] if grid.methods else r['cell']} {label}" \
            if many_variants else label

    # accuracy per configuration
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(done) + 2), 4.5))
    colors = ["tab:gray" if r["kind"] == "baseline" else "tab:blue" for r in done]
    ax.bar(range(len(done)), [100 * r["accuracy"] for r in done], color=colors)
    ax.set_xticks(range(len(done)), [name(r) for r in done], rotation=75, ha="right", fontsize=7)
    accs = [100 * r["accuracy"] for r in done]
    ax.set_ylim(max(0, min(accs) - 10), min(100, max(accs) + 3))
    for r in done:
        if r["kind"] == "baseline":
            ax.axhline(100 * r["accuracy"], color="tab:gray", ls="--", lw=0.8)
    ax.set(ylabel="test accuracy (%)", title=f"accuracy per configuration ({grid.path.name})")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(grid.out / "accuracy.png", dpi=110)
    plt.close(fig)

    # convergence: panels = combinations of the swept keys after the first; lines = the first
    method_rows = [r for r in done if r["kind"] == "method" and json.loads(r["val_accuracy_curve"] or "[]")]
    if method_rows:
        swept = grid.swept
        first, rest = (swept[0], swept[1:]) if swept else (None, [])
        panel_keys = list(dict.fromkeys((r["model"], r["model_options"], r["data"], r["seed"],
                                         *(r[k] for k in rest)) for r in method_rows))
        n = len(panel_keys)
        cols = min(n, 3)
        nrows = math.ceil(n / cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(4.5 * cols, 3.4 * nrows), squeeze=False)
        for ax, pk in zip(axes.flat, panel_keys):
            for r in method_rows:
                if (r["model"], r["model_options"], r["data"], r["seed"], *(r[k] for k in rest)) != pk:
                    continue
                curve = json.loads(r["val_accuracy_curve"])
                ax.plot(range(1, len(curve) + 1), [100 * a if a is not None else float("nan") for a in curve],
                        marker=".", label=f"{first.split('.', 1)[-1]}={r[first]}" if first else r["cell"])
            title = " ".join(f"{k.split('.', 1)[-1]}={v}" for k, v in zip(rest, pk[4:]))
            if many_variants:
                title = f"{pk[0]} {pk[2]} s{pk[3]} " + title
            ax.set(title=title or "+".join(grid.methods), xlabel="epoch", ylabel="val accuracy (%)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        fig.suptitle("convergence (validation accuracy of the last stage per epoch)")
        fig.tight_layout()
        fig.savefig(grid.out / "convergence.png", dpi=110)
        plt.close(fig)

    # accuracy against parameter count
    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups: dict[str, list[dict]] = {}
    for r in done:
        key = "baseline" if r["kind"] == "baseline" else (
            " ".join(f"{k.split('.', 1)[-1]}={r[k]}" for k in grid.swept[1:]) or "+".join(grid.methods))
        groups.setdefault(key, []).append(r)
    for key, members in groups.items():
        ax.scatter([r["params"] for r in members], [100 * r["accuracy"] for r in members],
                   marker="*" if key == "baseline" else "o", s=120 if key == "baseline" else 30, label=key)
        if grid.swept and key != "baseline":
            for r in members:
                ax.annotate(str(r[grid.swept[0]]), (r["params"], 100 * r["accuracy"]), fontsize=6,
                            xytext=(2, 2), textcoords="offset points")
    ax.set(xlabel="parameters", ylabel="test accuracy (%)", title="accuracy against parameter count")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, title=f"points labelled with {grid.swept[0].split('.', 1)[-1]}" if grid.swept else None,
              title_fontsize=7)
    fig.tight_layout()
    fig.savefig(grid.out / "accuracy_vs_params.png", dpi=110)
    plt.close(fig)
