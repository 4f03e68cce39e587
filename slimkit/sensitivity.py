"""Per-layer sensitivity analysis: compress one layer at a time and measure accuracy.

For every layer a method can compress on its own (:meth:`slimkit.api.Method.sensitivity_layers`)
and every level, a copy of the model has only that layer compressed
(:meth:`slimkit.api.Method.compress_layer`), with no fine-tuning, and is evaluated on the
validation split. This is the analysis of Han et al. 2015 (Fig. 5) and Li et al. 2017
(Fig. 2), and what Distiller, SparseML and AIMET ship: it shows which layers tolerate
compression and drives the per-layer budgets of ``allocation=sensitivity``
(:mod:`slimkit.allocation`).

``slimkit sensitivity`` writes ``sensitivity.csv`` (one row per layer and level),
``sensitivity.json`` (the table as matrices, read back by ``--set sensitivity=FILE``)
and ``sensitivity.svg`` (a heat map: one row per layer, readable with hundreds of
layers). It is resumable: every finished layer x level cell is appended (and fsynced)
to ``OUT/.cells.jsonl`` together with the settings it depends on, and a rerun with the
same settings computes only the missing cells.

The engine never imports a plugin: the method is found in the registry by name and
used only through the two hooks above.
"""
from __future__ import annotations

import copy
import csv
import io
import json
import os
import time
from pathlib import Path
from typing import Callable, Sequence

from slimkit.errors import UserError

DEFAULT_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
CELLS_FILE = ".cells.jsonl"


def parse_levels(text: str | None) -> list[float]:
    """``"0.5,0.9"`` -> [0.5, 0.9] (sorted, unique); each level must lie in (0, 1)."""
    if text is None or not text.strip():
        return list(DEFAULT_LEVELS)
    try:
        levels = sorted({float(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise UserError(f"--levels {text!r} is invalid: expected numbers in (0, 1) separated by commas") from None
    if not levels or any(not 0 < lv < 1 for lv in levels):
        raise UserError(f"--levels {text!r} is invalid: every level must lie strictly between 0 and 1")
    return levels


def candidate_layers(method, model, opts: dict) -> dict[str, int]:
    """The method's ``{layer: weights}``, or a UserError when it has no per-layer levels."""
    layers = method.sensitivity_layers(model, opts)
    if layers is None:
        raise UserError(f"method {method.name!r} cannot compress one layer at a time (it does not implement "
                        "sensitivity_layers/compress_layer); sensitivity works with prune and lowrank")
    if not layers:
        raise UserError(f"{method.name}: the model has no layer this method can compress")
    return dict(layers)


def analyse(model, method, opts: dict, levels: Sequence[float], evaluate: Callable[[object], float], *,
            done: dict | None = None, on_cell: Callable[[str, float, float], None] | None = None,
            progress=None, dist=None) -> dict:
    """Accuracy with each layer alone compressed to each level; returns the sensitivity table.

    ``evaluate(model) -> accuracy`` (validation split). ``done``: ``{(layer, level): accuracy}``
    already measured (not recomputed). ``on_cell(layer, level, accuracy)`` is called after
    each new cell (to persist it); ``progress.advance()`` once per cell. Under torchrun
    (``dist.enabled``) the missing cells are sharded: rank ``r`` computes every
    ``world_size``-th cell from ``r`` and one all-reduce gives every rank all of them.
    """
    from slimkit import distributed

    done = dict(done or {})
    layers = candidate_layers(method, model, opts)
    baseline = done.get(("", 0.0))
    if baseline is None:
        baseline = evaluate(model)
        if on_cell:
            on_cell("", 0.0, baseline)
    todo = [(n, lv) for n in layers for lv in levels if (n, lv) not in done]
    if progress is not None:
        progress.advance(len(layers) * len(levels) - len(todo), status="finished earlier")
    rank, world = (dist.rank, dist.world_size) if dist is not None and dist.enabled else (0, 1)
    mine = todo[rank::world]
    own = set(mine)
    for name, level in mine:
        work = method.compress_layer(copy.deepcopy(model), name, level, opts)
        done[(name, level)] = evaluate(work)
        if on_cell:
            on_cell(name, level, done[(name, level)])
        if progress is not None:
            progress.advance(world, status=f"{name} @ {level:g}")
    if world > 1:
        sums = distributed.all_reduce_sum(dist, [done[c] if c in own else 0.0 for c in todo])
        for c, acc in zip(todo, sums):
            done[c] = acc
            if on_cell and c not in own:
                on_cell(c[0], c[1], acc)
    return {"method": method.name, "levels": list(levels), "layers": list(layers),
            "weights": [layers[n] for n in layers], "baseline_accuracy": baseline,
            "accuracy": [[done[(n, lv)] for lv in levels] for n in layers],
            "note": "validation accuracy with only that layer compressed to that level, no fine-tuning"}


def read_sensitivity(path) -> dict:
    """A sensitivity.json, checked (UserError on anything malformed)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sensitivity file {path} does not exist")
    try:
        sens = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"sensitivity file {path} is not valid JSON: {exc}") from None
    keys = ("method", "levels", "layers", "weights", "baseline_accuracy", "accuracy")
    if not isinstance(sens, dict) or any(k not in sens for k in keys):
        raise UserError(f"sensitivity file {path} lacks one of {', '.join(keys)}; write it with slimkit sensitivity")
    n, m = len(sens["layers"]), len(sens["levels"])
    if len(sens["weights"]) != n or len(sens["accuracy"]) != n or any(len(r) != m for r in sens["accuracy"]):
        raise UserError(f"sensitivity file {path}: accuracy must be {n} layers x {m} levels")
    return sens


def to_csv(sens: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["layer", "weights", "level", "accuracy", "accuracy_drop"])
    for name, n, row in zip(sens["layers"], sens["weights"], sens["accuracy"]):
        for level, acc in zip(sens["levels"], row):
            w.writerow([name, n, level, acc, sens["baseline_accuracy"] - acc])
    return buf.getvalue()


def heatmap_svg(sens: dict, chosen: dict | None = None) -> str:
    from slimkit.reports.figures import heatmap

    marks = {i: sens["levels"].index(chosen[n]) for i, n in enumerate(sens["layers"])
             if chosen and chosen.get(n) in sens["levels"]}
    return heatmap("sensitivity", sens["layers"], [f"{lv:g}" for lv in sens["levels"]],
                   [[100 * a for a in row] for row in sens["accuracy"]],
                   title=f"{sens['method']}: validation accuracy (%) with one layer compressed "
                         f"(baseline {100 * sens['baseline_accuracy']:.2f} %)", value_label="%", marks=marks)


def write_outputs(out: Path, sens: dict) -> list[Path]:
    """sensitivity.csv, sensitivity.json and sensitivity.svg in ``out`` (each atomically)."""
    from slimkit.reports.html import atomic_write_text

    return [atomic_write_text(out / "sensitivity.csv", to_csv(sens)),
            atomic_write_text(out / "sensitivity.json", json.dumps(sens, indent=2)),
            atomic_write_text(out / "sensitivity.svg", '<?xml version="1.0" encoding="utf-8"?>\n' + heatmap_svg(sens))]


# --------------------------------------------------------------------------- resumable cells

def _load_cells(path: Path, settings: dict) -> dict:
    """Finished cells of an earlier run with the same settings (else none: the file is dropped)."""
    if not path.exists():
        return {}
    lines = path.read_text().splitlines()
    try:
        head = json.loads(lines[0]) if lines else None
    except json.JSONDecodeError:
        head = None
    if head != {"settings": settings}:
        path.unlink()
        return {}
    done = {}
    for line in lines[1:]:
        try:  # a line cut short by an interruption is simply measured again
            c = json.loads(line)
            done[(c["layer"], float(c["level"]))] = float(c["accuracy"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    return done


class _CellLog:
    """Appends one JSON line per finished cell and fsyncs it, so an interruption loses at most one cell."""

    def __init__(self, path: Path, settings: dict, fresh: bool):
        self.f = open(path, "a", encoding="utf-8")
        if fresh:
            self._write({"settings": settings})

    def _write(self, obj) -> None:
        self.f.write(json.dumps(obj) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def __call__(self, layer: str, level: float, accuracy: float) -> None:
        self._write({"layer": layer, "level": level, "accuracy": accuracy})

    def close(self) -> None:
        self.f.close()


def _baseline_id(run, cfg) -> str:
    """What identifies the model analysed: the baseline cache key of a zoo model (model, data,
    seed, epochs, optimizer...), or a given file's path, size and modification time."""
    from slimkit.pipeline import baseline_key

    if run.source.kind == "zoo":
        return f"zoo:{baseline_key(cfg, run.bundle)}"
    path = Path(run.source.name)
    if path.is_file():
        st = path.stat()
        return f"file:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return f"{run.source.kind}:{run.source.name}"


def run_command(*, model: str, data: str, method: str, levels: Sequence[float], out: str | None, set_pairs,
                model_options: dict, baseline_epochs: int, seed: int, batch_size: int, quiet: bool,
                log: Callable[[str], None]) -> dict:
    """``slimkit sensitivity``: baseline (trained and cached like compress, or the given file),
    then every layer x level cell not yet finished; writes the outputs into ``out``."""
    from slimkit import distributed
    from slimkit.pipeline import Run, RunConfig, assign_options

    out_dir = Path(out or f"runs/sensitivity-{Path(model).stem}-{method}")
    cfg = RunConfig(model=model, data=data, methods=[], model_options=model_options, baseline_epochs=baseline_epochs,
                    seed=seed, batch_size=batch_size, out=str(out_dir), quiet=quiet, latency=False)
    run = Run(cfg)
    m = run.registry.method(method)
    opts = m.parse_options(assign_options([method], run.registry, list(set_pairs))[method])
    probe = run.given_model if run.given_model is not None else run.registry.build_model(
        model, run.bundle.input_shape, run.bundle.num_classes, **model_options)
    layers = candidate_layers(m, probe, opts)
    main = run.dist.is_main
    if main:
        (out_dir / ".work").mkdir(parents=True, exist_ok=True)
    distributed.barrier(run.dist)
    base_model, info = run.baseline(out_dir / ".work" / "metrics.jsonl")
    settings = {"model": model, "model_options": model_options, "data": data, "seed": seed, "method": method,
                "options": dict(opts), "baseline": _baseline_id(run, cfg)}
    cells_path = out_dir / CELLS_FILE
    done = _load_cells(cells_path, json.loads(json.dumps(settings, default=str))) if main else {}
    done = distributed.broadcast_object(run.dist, done)
    finished = sum(1 for k in done if k[0])
    total = len(layers) * len(levels)
    log(f"sensitivity: {method} on {len(layers)} layer(s) x {len(levels)} level(s) = {total} cells"
        + (f"; {finished} finished earlier" if finished else ""))
    trainer = run.trainer(False)
    base_model.eval()
    cell_log = _CellLog(cells_path, json.loads(json.dumps(settings, default=str)), not cells_path.exists()) \
        if main else None
    t0 = time.perf_counter()
    try:
        with run.reporter.bar("sensitivity", total) as bar:
            sens = analyse(base_model, m, opts, levels, lambda net: trainer.evaluate(net, run.bundle, "val"),
                           done=done, on_cell=cell_log, progress=bar, dist=run.dist)
    finally:
        if cell_log:
            cell_log.close()
    sens.update(model=model, data=run.bundle.description, seconds=time.perf_counter() - t0,
                cells_computed=total - finished, options=settings["options"])
    if main:
        write_outputs(out_dir, sens)
        import shutil

        shutil.rmtree(out_dir / ".work", ignore_errors=True)
    distributed.barrier(run.dist)
    distributed.teardown(run.dist)
    return {"out": out_dir, "sensitivity": sens}
