"""results.html: one self-contained page comparing the cells of a sweep.

Input is the list of rows a sweep collects (``slimkit.sweep.collect``: one dict per
cell with its status, accuracy, size, MACs and latency), so the page needs no other
file. It shows a sortable table of the cells (each linking to its own report.html)
and accuracy against bytes on disk, non-zero MACs and latency, with the Pareto front
of each plot marked. A cell is *non-dominated* when no other finished cell is at
least as accurate and at least as cheap with one of the two strictly better; the
table marks the cells that are non-dominated in all four numbers at once
(accuracy, bytes, MACs, latency).
"""
from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Callable, Sequence

from slimkit.reports.figures import pareto_front, scatter_chart
from slimkit.reports.html import atomic_write_text, cell, human_bytes, page, pct, table

#: (row key, axis label, log scale) of the cost axes plotted against accuracy.
COSTS = [("size_bytes", "bytes on disk", True), ("nonzero_macs", "MACs (non-zero weights)", True),
         ("latency_ms", "latency, batch 1 (ms)", False)]
_STANDARD = {"cell", "kind", "model", "model_options", "data", "seed", "methods", "status"}


def _number(v):
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` dominates ``b``: the first entry (accuracy) at least as large, every other
    (a cost) at least as small, and one strictly better."""
    ge = a[0] >= b[0] and all(x <= y for x, y in zip(a[1:], b[1:]))
    return ge and (a[0] > b[0] or any(x < y for x, y in zip(a[1:], b[1:])))


def front_cells(rows: list[dict], keys: Sequence[str]) -> set[str]:
    """Cells of ``rows`` (finished, with every key of ``keys`` a number) that no other such
    cell dominates in (accuracy, *keys)."""
    vec = {r["cell"]: [r["accuracy"], *[r[k] for k in keys]] for r in rows
           if r.get("status") == "done" and _number(r.get("accuracy")) is not None
           and all(_number(r.get(k)) is not None for k in keys)}
    return {c for c, v in vec.items() if not any(dominates(w, v) for d, w in vec.items() if d != c)}


def option_keys(rows: list[dict]) -> list[str]:
    """The swept ``METHOD.OPTION`` columns present in the rows (in their order)."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if "." in k and k not in _STANDARD and k not in keys]
    return keys


def _default_link(row: dict) -> str:
    return f"cells/{row['cell']}/report.html"


def build_results(rows: list[dict], *, title: str = "sweep results",
                  link: Callable[[dict], str] = _default_link) -> str:
    """The results.html text for a sweep's rows."""
    done = [r for r in rows if r.get("status") == "done"]
    opts = option_keys(rows)
    all_front = front_cells(done, [k for k, _, _ in COSTS if any(_number(r.get(k)) is not None for r in done)])
    figures = []
    for key, label, log in COSTS:
        pts = [r for r in done if _number(r.get(key)) is not None and _number(r.get("accuracy")) is not None]
        if not pts:
            continue
        flags = pareto_front([(r[key], r["accuracy"]) for r in pts])
        figures.append(scatter_chart(
            f"pareto-{key}", [{"x": r[key], "y": 100 * r["accuracy"], "label": r["cell"], "href": link(r),
                               "front": f, "baseline": r.get("kind") == "baseline"} for r, f in zip(pts, flags)],
            xlabel=label, ylabel="test accuracy (%)", title=f"accuracy against {label}", logx=log and _spread(pts, key)))
    headers = ["cell", "kind", "model", "data", "seed", *[k.split(".", 1)[-1] if len(
        {o.split('.', 1)[-1] for o in opts}) == len(opts) else k for k in opts],
        "status", "accuracy", "change", "params", "non-zero params", "bytes", "compression", "MACs",
        "non-zero MACs", "latency (ms)", "seconds", "Pareto"]
    body, classes = [], []
    for r in rows:
        ok = r.get("status") == "done"
        on_front = r["cell"] in all_front
        line = [f'<td data-value="{escape(r["cell"])}"><a href="{escape(link(r))}">{escape(r["cell"])}</a></td>'
                if ok else cell(r["cell"]), cell(r.get("kind", "")), cell(r.get("model", "")), cell(r.get("data", "")),
                cell(r.get("seed", ""), r.get("seed"))]
        line += [cell(r.get(k, "")) for k in opts]
        line.append(cell(r.get("status", "") + (f": {r['error'][:100]}" if r.get("error") else "")))
        line += [_num_cell(r, "accuracy", pct), _num_cell(r, "accuracy_change", lambda v: f"{100 * v:+.2f} pt"),
                 _num_cell(r, "params", lambda v: f"{v:,}"), _num_cell(r, "nonzero_params", lambda v: f"{v:,}"),
                 _num_cell(r, "size_bytes", lambda v: f"{v:,} ({human_bytes(v)})"),
                 _num_cell(r, "compression_ratio", lambda v: f"{v:.2f}x"), _num_cell(r, "macs", lambda v: f"{v:,}"),
                 _num_cell(r, "nonzero_macs", lambda v: f"{v:,}"), _num_cell(r, "latency_ms", lambda v: f"{v:.4f}"),
                 _num_cell(r, "seconds", lambda v: f"{v:.0f}"),
                 cell("non-dominated" if on_front else "", 1 if on_front else 0, None, False)]
        body.append(line)
        classes.append("front" if on_front else "")
    n_done, n_failed = len(done), sum(r.get("status") == "failed" for r in rows)
    parts = [f"<h1>{escape(title)}</h1>",
             f'<p class="muted">{len(rows)} cells: {n_done} finished, {n_failed} failed, '
             f'{len(rows) - n_done - n_failed} pending. Click a column to sort; a cell name opens its report.</p>',
             "<h2>Pareto fronts</h2>",
             '<p class="muted">Red: non-dominated cells (no other cell is as accurate and as cheap, with one '
             'strictly better); squares: baselines. A point opens its cell\'s report.</p>',
             '<div class="grid">' + "".join(f for f in figures if f) + "</div>",
             "<h2>Cells</h2>",
             f'<p class="muted">Highlighted: {len(all_front)} cell(s) non-dominated in accuracy, bytes, MACs and '
             'latency together.</p>',
             '<div class="scroll">' + table(headers, body, name="cells", row_classes=classes) + "</div>"]
    return page(title, parts)


def _spread(rows: list[dict], key: str) -> bool:
    """Log scale when the values span more than a factor of 20."""
    values = [r[key] for r in rows if r[key] > 0]
    return bool(values) and max(values) / min(values) > 20


def _num_cell(row: dict, key: str, fmt) -> str:
    v = _number(row.get(key))
    return cell(fmt(v) if v is not None else "–", v, None, True)


def write_results_html(rows: list[dict], out_dir: Path, *, title: str = "sweep results",
                       link: Callable[[dict], str] = _default_link) -> Path:
    """Write ``out_dir/results.html`` atomically (temporary file, fsync, rename)."""
    return atomic_write_text(Path(out_dir) / "results.html", build_results(rows, title=title, link=link))
