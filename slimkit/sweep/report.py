"""A sweep's results: one row per cell from its report.json, written as results.csv and results.md
(the figures are :mod:`slimkit.sweep.plots`)."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from slimkit import atomic
from slimkit.measure import epochs_to_fraction
from slimkit.reports.results import write_results_html
from slimkit.sweep.grid import Cell, Grid, fmt_value
from slimkit.sweep.plots import plots

CONVERGENCE_FRACTION = 0.95


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_json(path: Path, obj) -> None:
    atomic_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str))



def last_stage_curve(cell_dir: Path, stage: str, report: dict | None = None) -> list:
    """Validation accuracy per epoch of the last training call of ``stage`` in the cell's metrics.jsonl
    (for a baseline taken from the cache, in the curve kept beside the cached weights)."""
    from slimkit.pipeline import baseline_curve_path

    path = cell_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    rows = [r for r in rows if r.get("stage") == stage]
    cached = ((report or {}).get("baseline") or {}).get("cache_file")
    if not rows and stage == "baseline" and cached:  # the same curve whether this cell trained it or not
        kept = read_json(baseline_curve_path(Path(cached)))
        rows = [r for r in kept if isinstance(r, dict) and r.get("stage") == stage] if isinstance(kept, list) else []
    if not rows:
        return []
    last_call = max(r.get("call", 0) for r in rows)
    rows = sorted((r for r in rows if r.get("call", 0) == last_call), key=lambda r: r.get("epoch", 0))
    return [r.get("val_accuracy") for r in rows]



def collect(grid: Grid, cells: list[Cell]) -> list[dict]:
    """One row per cell from its report.json (or its error)."""
    rows = []
    for cell in cells:
        cell_dir = grid.out / "cells" / cell.id
        row = {"cell": cell.id, "kind": cell.kind, "model": cell.model,
               "model_options": json.dumps(cell.model_options, sort_keys=True), "data": cell.data,
               "seed": cell.seed, "methods": "+".join(cell.methods) or "(none)"}
        for key in grid.options:
            row[key] = fmt_value(cell.swept[key]) if key in cell.swept else ""
        report = read_json(cell_dir / "report.json")
        stored = read_json(cell_dir / "cell.json")
        if report is not None and stored == cell.config(grid):
            b, f = report["baseline"], report["final"]
            stage = cell.methods[-1] if cell.methods else "baseline"
            curve = last_stage_curve(cell_dir, stage, report)
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
    atomic_text(grid.out / "results.csv", buf.getvalue())
    atomic_text(grid.out / "results.md", markdown(grid, rows))
    plots(grid, rows)
    write_results_html(rows, grid.out, title=f"Sweep results: {grid.path.name}")  # sortable table, Pareto plots


def atomic_text(path: Path, text: str) -> None:
    atomic.write_text(path, text)


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


def _group_title(row: dict) -> str:
    """"MODEL (OPTION=VALUE, ...) on DATA, seed S"; no parentheses when the model has no options."""
    options = json.loads(row["model_options"] or "{}")
    named = f" ({', '.join(f'{k}={fmt_value(v)}' for k, v in options.items())})" if options else ""
    return f"{row['model']}{named} on {row['data']}, seed {row['seed']}"


def markdown(grid: Grid, rows: list[dict]) -> str:
    swept = grid.swept
    parts = [f"# Sweep results: {grid.path.name}", "",
             f"Test accuracy (%) of every cell; method stages {grid.epochs if grid.epochs is not None else 'the default'} epochs, baselines "
             f"{grid.baseline_epochs} epochs. Epochs to 95 %: first epoch whose validation accuracy reaches "
             "95 % of the stage's final (best) validation accuracy.", ""]
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(_group_title(r), []).append(r)
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
            for metric, label in (("accuracy", "test accuracy (%)"), ("epochs_to_95", "epochs to 95 %")):
                # with one swept option the table has one column: the metric itself
                col_names = ["/".join(c) if c else label for c in col_values]
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
