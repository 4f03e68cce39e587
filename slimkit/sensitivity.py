"""Per-layer sensitivity analysis: compress one layer at a time and measure accuracy.

For every layer a method can compress on its own (:meth:`slimkit.api.Method.sensitivity_layers`)
and every level, a copy of the model has only that layer compressed
(:meth:`slimkit.api.Method.compress_layer`), with no fine-tuning, and is evaluated on the
validation split. This is the analysis of Han et al. 2015 (Fig. 5) and Li et al. 2017
(Fig. 2), and what Distiller, SparseML and AIMET ship: it shows which layers tolerate
compression and drives the per-layer budgets of ``allocation=sensitivity``
(:mod:`slimkit.allocation`).

With ``finetune`` every copy is first given a short fine-tuning and only then evaluated:
NetAdapt's short-term fine-tuning (T.-J. Yang et al., "NetAdapt: Platform-Aware Neural
Network Adaptation for Mobile Applications", ECCV 2018), where each proposal (one
layer simplified) is fine-tuned briefly before its accuracy is measured on held-out data,
because the accuracy right after compression does not say how much of the damage training
recovers. The uncompressed reference gets the same fine-tuning, so a drop compares like with
like; every copy is fine-tuned on the same batches in the same order.

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
from pathlib import Path
from typing import Callable, Sequence

from slimkit.config import read_json
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
                        "sensitivity_layers/compress_layer); sensitivity works with prune, lowrank and filter-prune")
    if not layers:
        raise UserError(f"{method.name}: the model has no layer this method can compress")
    return dict(layers)


def analyse(model, method, opts: dict, levels: Sequence[float], evaluate: Callable[[object], float], *,
            done: dict | None = None, on_cell: Callable[[str, float, float], None] | None = None,
            progress=None, dist=None, finetune: Callable[[object], object] | None = None) -> dict:
    """Accuracy with each layer alone compressed to each level; returns the sensitivity table.

    ``evaluate(model) -> accuracy`` (validation split). ``done``: ``{(layer, level): accuracy}``
    already measured (not recomputed). ``on_cell(layer, level, accuracy)`` is called after
    each new cell (to persist it); ``progress.advance()`` once per cell. Under torchrun
    (``dist.enabled``) the missing cells are sharded: rank ``r`` computes every
    ``world_size``-th cell from ``r`` and one all-reduce gives every rank all of them.
    ``finetune(model)``, when given, trains each compressed copy, and a copy of the
    uncompressed model for the baseline, in place before it is evaluated (short-term
    fine-tuning, NetAdapt); ``model`` itself is never changed.
    """
    from slimkit import distributed

    done = dict(done or {})
    layers = candidate_layers(method, model, opts)
    baseline = done.get(("", 0.0))
    if baseline is None:
        reference = model
        if finetune is not None:
            reference = copy.deepcopy(model)
            finetune(reference)
        baseline = evaluate(reference)
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
        if finetune is not None:
            finetune(work)
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
            "note": "validation accuracy with only that layer compressed to that level, "
                    + ("after a short fine-tuning (NetAdapt)" if finetune else "no fine-tuning")}


def read_sensitivity(path) -> dict:
    """A sensitivity.json, checked (UserError on anything malformed)."""
    path = Path(path)
    sens = read_json(path, "sensitivity file")
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
