"""A sweep's grid: reading a grid file, checking it, expanding it into cells (docs/sweep.md).

:func:`read_grid` checks the file's keys and types; :func:`expand` lists the cells in run
order (per model / model options / data / seed a baseline cell, then the cartesian product
of the option lists); :func:`validate` checks every cell (models build, options parse,
methods apply) before anything trains.
"""
from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from slimkit.config import read_toml, run_defaults
from slimkit.errors import UserError

DEFAULTS = run_defaults()  # a cell is a compress run: the same defaults (RunConfig)

GRID_KEYS = {
    "out": "output directory (default runs/sweep-<grid file name>)",
    "models": "list of model names (zoo names or model files)",
    "model_options": "table of model options; a list value is swept",
    "data": "list of data set specs",
    "seeds": f"list of seeds (default [{DEFAULTS['seed']}])",
    "epochs": "epochs per method stage (default 10; prune and sws raise it on small data sets to their min_steps)",
    "baseline_epochs": f"epochs to train each baseline (default {DEFAULTS['baseline_epochs']})",
    "lr": "learning rate (default: the optimizer's)",
    "batch_size": f"batch size (default {DEFAULTS['batch_size']})",
    "optimizer": f"sgd or adam (default {DEFAULTS['optimizer']})",
    "methods": "the method chain applied in every method cell (may be empty: baselines only)",
    "options": "table of METHOD.OPTION = value or [values]",
    "baseline": "run the baseline cells (default true)",
    "latency": f"measure latency in every cell (default {str(DEFAULTS['latency']).lower()})",
    "cache_dir": "baseline cache directory (default $SLIMKIT_CACHE or ~/.cache/slimkit)",
}


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


def fmt_value(value) -> str:
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
    raw = read_toml(path, "grid")
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
    seeds = _as_list(path, "seeds", raw.get("seeds", [DEFAULTS["seed"]]), int, "integer seed")
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
    optimizer = _scalar(path, raw, "optimizer", str, DEFAULTS["optimizer"])
    if optimizer not in ("sgd", "adam"):
        _fail(path, f"key 'optimizer' is {optimizer!r}; expected sgd or adam")
    lr = _scalar(path, raw, "lr", float, DEFAULTS["lr"])
    if lr is not None and not lr > 0:
        _fail(path, f"key 'lr' is {lr!r}; expected a positive number")
    out_dir = out or _scalar(path, raw, "out", str, f"runs/sweep-{path.stem}")
    return Grid(
        path=path, out=Path(out_dir), models=models, model_options=model_options, data=data, seeds=seeds,
        epochs=_scalar(path, raw, "epochs", int, DEFAULTS["epochs"], 0),
        baseline_epochs=_scalar(path, raw, "baseline_epochs", int, DEFAULTS["baseline_epochs"], 0),
        lr=lr, batch_size=_scalar(path, raw, "batch_size", int, DEFAULTS["batch_size"], 1), optimizer=optimizer,
        methods=methods, options=options, listed=listed, baseline=_scalar(path, raw, "baseline", bool, True),
        latency=_scalar(path, raw, "latency", bool, DEFAULTS["latency"]),
        cache_dir=_scalar(path, raw, "cache_dir", str, DEFAULTS["cache_dir"]))


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
                    parts += [f"{k}={fmt_value(mopts[k])}" for k in mo_swept]
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
                            named = [f"{key.split('.', 1)[1] if short else key}={fmt_value(chosen[key])}"
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
            keys = ", ".join(f"{k}={fmt_value(v)}" for k, v in cell.swept.items())
            _fail(path, f"cell {cell.id} ({keys or 'no options'}): {exc}")
    grid.cells = cells
    return cells
