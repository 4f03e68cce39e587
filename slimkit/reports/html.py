"""report.html: one self-contained page describing a compress run, written from its files.

Inputs are the files a run leaves in its directory: ``report.json`` (numbers, stages,
command, recipe, machine), ``metrics.jsonl`` (training curves), ``baseline.slim`` and
``model.slim`` (the per-layer table comes from :func:`slimkit.summary.describe_model`,
the same numbers ``slimkit info`` prints; the histograms from the weights themselves).
The page has no external resource: CSS, a few lines of JavaScript (table sorting) and
every figure (SVG) are inline, so it works opened from disk with no network.

Every number taken from report.json is shown in an element with ``data-key`` (its
path in report.json, e.g. ``final/accuracy``) and ``data-value`` (the exact value), so
that a test can compare the page with the file.
"""
from __future__ import annotations

import json
from html import escape
from pathlib import Path

from slimkit import atomic
from slimkit.config import read_json
from slimkit.errors import UserError
from slimkit.reports.figures import heatmap, line_chart
from slimkit.reports.provenance import as_recipe

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:1.5em auto;max-width:1200px;color:#222;
padding:0 1em;line-height:1.4}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.2em;border-bottom:1px solid #ddd;margin-top:1.6em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0} th,td{padding:3px 8px;border-bottom:1px solid #eee}
th{background:#f4f4f4;text-align:left;position:sticky;top:0} td.n{text-align:right;font-variant-numeric:tabular-nums}
th.sortable{cursor:pointer} th.sortable:after{content:' \\2195';color:#aaa}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.85em} .muted{color:#777;font-size:.85em}
.grid{display:flex;flex-wrap:wrap;gap:8px} .panel{border:1px solid #eee;padding:4px}
.panel .cap{font-size:.75em;color:#666;max-width:300px} .better{color:#2a7} .worse{color:#c33}
tr.front td{background:#fff3f0} .scroll{max-height:38em;overflow:auto}
"""

# Click a header to sort by it (again: the other way). A link ending in #sort=TABLE:COLUMN
# (or #sort=TABLE:COLUMN:desc) opens the page sorted; the page marks <body data-ready>
# when the script has run, which the browser test checks.
SORT_JS = """
function sortTable(t,i,asc){
  var body=t.tBodies[0], rows=Array.prototype.slice.call(body.rows);
  function key(r){var c=r.cells[i]; if(!c) return null; var v=c.getAttribute('data-value');
    if(v!==null && v!=='' && !isNaN(parseFloat(v))) return parseFloat(v);
    var t=c.textContent.trim(); return (t===''||t==='\u2013')?null:t;}
  rows.sort(function(a,b){var x=key(a),y=key(b);
    if(x===null||y===null) return (x===null)-(y===null);  /* missing values last, either way */
    if(typeof x==='number' && typeof y==='number') return asc?x-y:y-x;
    return asc?String(x).localeCompare(String(y)):String(y).localeCompare(String(x));});
  rows.forEach(function(r){body.appendChild(r);});
  t.querySelectorAll('th').forEach(function(h,j){h.setAttribute('data-dir',j===i?(asc?'asc':'desc'):'');});
}
document.querySelectorAll('table.sortable').forEach(function(t){
  t.querySelectorAll('th').forEach(function(th,i){
    th.classList.add('sortable');
    th.addEventListener('click',function(){sortTable(t,i,th.getAttribute('data-dir')!=='asc');});
  });
});
(function(){var m=/#sort=([^:]+):([^:]+)(:desc)?$/.exec(decodeURIComponent(location.hash)); if(!m) return;
  var t=document.getElementById(m[1]); if(!t) return;
  t.querySelectorAll('th').forEach(function(th,i){if(th.textContent.trim()===m[2]) sortTable(t,i,!m[3]);});})();
document.body.setAttribute('data-ready','1');
"""


# --------------------------------------------------------------------------- page primitives

def page(title: str, body: list[str]) -> str:
    """A complete HTML document with the shared style and the table-sorting script."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>\n" + "\n".join(body) +
            f"\n<script>{SORT_JS}</script>\n</body></html>\n")


def cell(text, value=None, key: str | None = None, numeric: bool | None = None) -> str:
    """A ``<td>``; ``value`` (exact, for sorting and tests) goes in data-value, ``key`` in data-key."""
    attrs = ""
    if value is not None:
        attrs += f' data-value="{escape(repr(value) if isinstance(value, float) else str(value))}"'
    if key:
        attrs += f' data-key="{escape(key)}"'
    if numeric if numeric is not None else isinstance(value, (int, float)) and not isinstance(value, bool):
        attrs += ' class="n"'
    return f"<td{attrs}>{escape(str(text))}</td>"


def table(headers: list[str], rows: list[list[str]], *, sortable: bool = True, name: str = "",
          row_classes: list[str] | None = None) -> str:
    """A table of pre-rendered ``<td>`` cells (see :func:`cell`)."""
    cls = ' class="sortable"' if sortable else ""
    ident = f' id="{escape(name)}"' if name else ""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for i, r in enumerate(rows):
        rc = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        body.append(f"<tr{rc}>" + "".join(r) + "</tr>")
    return f"<table{ident}{cls}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` atomically (:func:`slimkit.atomic.write_text`); returns the path."""
    atomic.write_text(path, text)
    return Path(path)


def pct(v) -> str:
    return f"{100 * v:.2f} %" if isinstance(v, (int, float)) else "–"


def human_bytes(n) -> str:
    if not isinstance(n, (int, float)):
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n}"


# --------------------------------------------------------------------------- report sections

_SUMMARY_ROWS = [  # (label, key in baseline/final, formatter, smaller is better)
    ("test accuracy", "accuracy", pct, False),
    ("parameters", "params", lambda v: f"{v:,}", True),
    ("non-zero parameters", "nonzero_params", lambda v: f"{v:,}", True),
    ("sparsity (conv/linear weights)", "sparsity", pct, None),
    ("bytes on disk", "size_bytes", lambda v: f"{v:,} ({human_bytes(v)})", True),
    ("MACs (dense)", "macs", lambda v: f"{v:,}", True),
    ("MACs (non-zero weights)", "nonzero_macs", lambda v: f"{v:,}", True),
    ("latency, batch 1 (ms, median)", "latency_ms", lambda v: f"{v:.4f}", True),
]


def _summary(report: dict) -> list[str]:
    b, f = report["baseline"], report["final"]
    rows = []
    for label, key, fmt, smaller in _SUMMARY_ROWS:
        if key not in b and key not in f:
            continue
        bv, fv = b.get(key), f.get(key)
        change = ""
        if isinstance(bv, (int, float)) and isinstance(fv, (int, float)):
            if key in ("accuracy", "sparsity"):
                change = f"{100 * (fv - bv):+.2f} pt"
            elif fv:
                change = f"{bv / fv:.2f}x {'smaller' if bv >= fv else 'larger'}"
        good = smaller is not None and isinstance(bv, (int, float)) and isinstance(fv, (int, float)) and (
            (fv < bv) if smaller else (fv > bv))
        bad = smaller is not None and isinstance(bv, (int, float)) and isinstance(fv, (int, float)) and (
            (fv > bv) if smaller else (fv < bv))
        cls = "better" if good else "worse" if bad else ""
        rows.append([f"<td>{escape(label)}</td>",
                     cell(fmt(bv) if bv is not None else "–", bv, f"baseline/{key}", True),
                     cell(fmt(fv) if fv is not None else "–", fv, f"final/{key}", True),
                     f'<td class="n {cls}">{escape(change)}</td>'])
    rows.append(["<td>compression ratio (file bytes)</td>", "<td></td>",
                 cell(f"{report['compression_ratio']:.2f}x", report["compression_ratio"], "compression_ratio", True),
                 "<td></td>"])
    note = b.get("latency_note") or f.get("latency_note") or ""
    return ["<h2>Baseline and result</h2>", table(["", "baseline", "compressed", "change"], rows, sortable=False,
                                                  name="summary"),
            f'<p class="muted">{escape(report.get("accuracy_note", ""))}. Latency: {escape(note or "not measured")}. '
            f'Baseline: {escape(str(b.get("source", "")))}'
            f'{", " + str(b["epochs"]) + " epochs" if "epochs" in b else ""}.</p>']


def _header(report: dict) -> list[str]:
    ds = report.get("dataset", {})
    out = [f"<h1>slimkit report: {escape(str(report.get('model')))} "
           f"{escape(' + '.join(m['name'] for m in report.get('methods', [])) or '(baseline only)')}</h1>",
           f'<p class="muted">slimkit {escape(str(report.get("slimkit_version", "")))}; seed '
           f'{escape(str(report.get("seed")))}; {report.get("world_size", 1)} process(es); run time '
           f'{report.get("seconds", 0):.1f} s</p>']
    if report.get("command"):
        out += ["<h2>Command and recipe</h2>", f"<pre id=\"command\">{escape(report['command'])}</pre>"]
    if report.get("config"):
        out += ['<p class="muted">The run as a recipe (<code>slimkit compress --recipe FILE</code>):</p>',
                f"<pre id=\"recipe\">{escape(as_recipe(report['config'], report.get('methods', [])))}</pre>"]
    split = [cell(f"{ds.get(k, 0):,}", ds.get(k), f"dataset/{k}", True) for k in ("train", "val", "test")]
    out += ["<h2>Data</h2>", f"<p>{escape(ds.get('description', ''))}</p>",
            table(["train", "validation", "test"], [split], sortable=False, name="split")]
    machine = report.get("machine")
    if machine:
        out += ["<h2>Machine</h2>", table(list(machine), [[cell(v) for v in machine.values()]], sortable=False,
                                          name="machine")]
    return out


def _scalar_results(stage: dict) -> str:
    skip = {"method", "options", "accuracy", "seconds"}
    parts = []
    for k, v in stage.items():
        if k in skip or isinstance(v, (list, dict)) or v is None:
            continue
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return ", ".join(parts)


def _stages(report: dict) -> list[str]:
    rows = []
    for i, s in enumerate(report.get("stages", [])):
        opts = ", ".join(f"{k}={v}" for k, v in (s.get("options") or {}).items() if v is not None)
        rows.append([cell(i + 1, i + 1), cell(s["method"]), cell(opts),
                     cell(pct(s.get("accuracy")), s.get("accuracy"), f"stages/{i}/accuracy", True),
                     cell(f"{s.get('seconds', 0):.1f}", s.get("seconds"), f"stages/{i}/seconds", True),
                     cell(_scalar_results(s))])
    if not rows:
        return []
    return ["<h2>Stages</h2>", table(["#", "method", "options", "test accuracy", "seconds", "results"], rows,
                                     name="stages")]


def _curves(history: list[dict]) -> list[str]:
    if not history:
        return []
    stages = list(dict.fromkeys(h["stage"] for h in history))
    figures = {"loss": [], "accuracy": [], "sparsity": []}
    offset = 0
    for stage in stages:
        rows = [h for h in history if h["stage"] == stage]
        xs = [offset + h["epoch"] for h in rows]
        figures["loss"].append({"label": stage, "x": xs, "y": [h.get("train_loss") for h in rows]})
        figures["accuracy"].append({"label": stage, "x": xs,
                                    "y": [100 * h["val_accuracy"] if h.get("val_accuracy") is not None else None
                                          for h in rows]})
        if any("sparsity" in h for h in rows):
            figures["sparsity"].append({"label": f"{stage} (achieved)", "x": xs,
                                        "y": [100 * h["sparsity"] if "sparsity" in h else None for h in rows]})
            if any("target_sparsity" in h for h in rows):
                figures["sparsity"].append({"label": f"{stage} (schedule)", "x": xs, "dashed": True,
                                            "y": [100 * h["target_sparsity"] if "target_sparsity" in h else None
                                                  for h in rows]})
        offset = xs[-1] if xs else offset
    svgs = [line_chart("curve-loss", figures["loss"], xlabel="epoch", ylabel="train loss", title="loss"),
            line_chart("curve-accuracy", figures["accuracy"], xlabel="epoch", ylabel="validation accuracy (%)",
                       title="accuracy")]
    if figures["sparsity"]:
        svgs.append(line_chart("curve-sparsity", figures["sparsity"], xlabel="epoch", ylabel="sparsity (%)",
                               title="sparsity"))
    return ["<h2>Training curves</h2>", '<p class="muted">From metrics.jsonl; epochs of successive stages '
            'follow each other.</p>', '<div class="grid">' + "".join(s for s in svgs if s) + "</div>"]


def _shape(v) -> str:
    return "x".join(map(str, v)) if v else ""


def _layers(before: dict | None, after: dict, sparse_layers) -> list[str]:
    """Per-layer table from two :func:`slimkit.summary.describe_model` results (baseline, final)."""
    prev = {r["layer"]: r for r in (before or {}).get("layers", [])}
    sparse = {r["layer"]: r for r in sparse_layers or []}
    rows = []
    for r in after["layers"]:
        b = prev.get(r["layer"], {})
        if "runs_sparse" in r:
            kernel = f"{'sparse' if r['runs_sparse'] else 'dense'}: {r.get('kernel_reason', '')}"
        elif r["layer"] in sparse:
            s = sparse[r["layer"]]
            kernel = f"{'sparse' if s['sparse'] else 'dense'}: {s.get('reason', '')}"
        else:
            kernel = "dense (run without --sparse-inference)" if r["shape"] else ""
        rows.append([cell(r["layer"]), cell(r["type"]), cell(_shape(b.get("shape"))), cell(_shape(r["shape"])),
                     cell(f"{b['params']:,}" if b else "", b.get("params"), None, True),
                     cell(f"{r['params']:,}", r["params"]),
                     cell(f"{b['nonzero']:,}" if b else "", b.get("nonzero"), None, True),
                     cell(f"{r['nonzero']:,}", r["nonzero"]),
                     cell(f"{r['bytes']:,}", r["bytes"]), cell(r["codec"]),
                     cell(f"{b['macs']:,}" if b else "", b.get("macs"), None, True),
                     cell(f"{r['macs']:,}", r["macs"]), cell(f"{r['nonzero_macs']:,}", r["nonzero_macs"]),
                     cell(kernel)])
    missing = [name for name in prev if name not in {r["layer"] for r in after["layers"]}]
    note = (f'<p class="muted">Layers of the baseline that the result no longer has (replaced or removed): '
            f'{escape(", ".join(missing))}.</p>' if missing else "")
    headers = ["layer", "type", "shape before", "shape after", "params before", "params after",
               "non-zero before", "non-zero after", "bytes in file", "stored as", "MACs before", "MACs after",
               "non-zero MACs after", "kernel"]
    totals = (f'<p class="muted">Total: {after["params"]:,} parameters, {after["nonzero_params"]:,} non-zero, '
              f'{after["tensor_bytes"]:,} bytes of tensors in a {after["size_bytes"]:,}-byte file '
              f'(dense fp32: {after["dense_fp32_bytes"]:,} bytes). Same numbers as '
              f'<code>slimkit info model.slim</code>.</p>')
    return ["<h2 id=\"layers\">Layers</h2>", '<div class="scroll">' + table(headers, rows, name="layers") + "</div>", totals, note]


def sensitivity_section(sens: dict, chosen: dict | None = None, title: str = "Sensitivity") -> list[str]:
    """Heat map of accuracy per layer and level (a sensitivity.json), chosen levels outlined."""
    layers, levels = sens.get("layers", []), sens.get("levels", [])
    if not layers or not levels:
        return []
    acc = sens["accuracy"]
    values = [[100 * a if a is not None else None for a in row] for row in acc]
    marks = {}
    for i, name in enumerate(layers):
        if chosen and name in chosen and chosen[name] in levels:
            marks[i] = levels.index(chosen[name])
    svg = heatmap("sensitivity", layers, [f"{lv:g}" for lv in levels], values,
                  title=f"{sens.get('method', '')}: validation accuracy (%) with one layer compressed",
                  value_label="%", marks=marks)
    out = [f"<h2>{escape(title)}</h2>",
           f'<p class="muted">Each layer compressed alone by {escape(str(sens.get("method")))} at each level, no '
           f'fine-tuning, on the validation split (baseline {pct(sens.get("baseline_accuracy"))}).'
           f'{" Outlined: the level chosen for the layer." if marks else ""}</p>', svg]
    return out


def _allocation(report: dict) -> list[str]:
    out = []
    for i, s in enumerate(report.get("stages", [])):
        alloc = s.get("allocation")
        if not alloc:
            continue
        rows = [[cell(name), cell(f"{lv:g}", lv, f"stages/{i}/allocation/levels/{name}", True),
                 cell(f"{alloc.get('predicted_loss', {}).get(name, 0) * 100:.2f} pt",
                      alloc.get("predicted_loss", {}).get(name), None, True)]
                for name, lv in alloc["levels"].items()]
        out += [f"<h2>Per-layer budgets ({escape(s['method'])})</h2>",
                f"<p>{escape(alloc.get('description', ''))}</p>",
                table(["layer", "chosen level", "predicted accuracy loss"], rows, name=f"allocation-{i}")]
        if alloc.get("sensitivity"):
            out += sensitivity_section(alloc["sensitivity"], alloc["levels"], f"Sensitivity ({s['method']})")
    return out


def _histograms(run_dir: Path, report: dict) -> list[str]:
    from slimkit import storage
    from slimkit.plugins import get_registry
    from slimkit.reports.weights import layer_histograms, mixture_panel

    registry = get_registry()
    final_path, base_path = run_dir / "model.slim", run_dir / "baseline.slim"
    after = storage.load_model(final_path, registry).model
    before = storage.load_model(base_path, registry).model if base_path.exists() else None
    panels = layer_histograms(before, after)
    out = ["<h2 id=\"weights\">Weights</h2>", '<p class="muted">Per layer: the weights of the baseline (grey) and the non-zero '
           'weights of the result (blue); red dashed lines are shared values (codebook centroids, mixture '
           'means) where the result has them.</p>']
    for s in report.get("stages", []):
        if s.get("method") == "sws" and isinstance(s.get("mixture"), dict):
            out.append(mixture_panel(after, s["mixture"]))
    out.append('<div class="grid">' + "".join(
        f'<div class="panel">{p["svg"]}<div class="cap">{escape(p["caption"])}</div></div>' for p in panels)
        + "</div>")
    return out


def build_report(run_dir: Path, *, report_name: str = "report.json") -> str:
    """The report.html text for the run files in ``run_dir``."""
    from slimkit.summary import describe_model

    run_dir = Path(run_dir)
    report_path = run_dir / report_name
    if not report_path.is_file():
        raise UserError(f"{run_dir} has no {report_name}; is it the --out of a finished compress run?")
    report = read_json(report_path, "report")
    metrics = run_dir / "metrics.jsonl"
    history = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] \
        if metrics.exists() else []
    body = _header(report) + _summary(report) + _stages(report) + _allocation(report) + _curves(history)
    final_path, base_path = run_dir / "model.slim", run_dir / "baseline.slim"
    if final_path.exists():
        after = describe_model(final_path)
        before = describe_model(base_path) if base_path.exists() else None
        body += _layers(before, after, report.get("sparse_inference"))
        body += _histograms(run_dir, report)
    else:
        body.append(f'<p class="muted">{escape(str(final_path))} is missing: no per-layer table.</p>')
    title = f"slimkit: {report.get('model')} {'+'.join(m['name'] for m in report.get('methods', []))}"
    return page(title, body)


def write_report(run_dir: Path, dest: Path | None = None, *, report_name: str = "report.json") -> Path:
    """Write report.html for ``run_dir`` atomically (to ``dest``, default ``run_dir/report.html``)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a directory")
    text = build_report(run_dir, report_name=report_name)
    return atomic_write_text(Path(dest) if dest else run_dir / "report.html", text)


def write_report_html(run_dir: Path, log=print) -> Path | None:
    """The pipeline's hook: write ``run_dir/report.html``. A failure here is logged, not
    raised: the run's model and report.json are already written, and ``slimkit report
    RUN_DIR`` can write the page again once the cause is fixed."""
    try:
        return write_report(run_dir)
    except Exception as exc:  # noqa: BLE001 - see the docstring
        log(f"[yellow]report.html not written: {type(exc).__name__}: {exc} (retry with `slimkit report DIR`)"
            "[/yellow]")
        return None
