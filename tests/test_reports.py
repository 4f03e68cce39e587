"""report.html and results.html: self-contained, the numbers of report.json and of `slimkit info`,
per-layer budgets from allocation=sensitivity; and, where Chromium is installed, the pages
rendered by a real headless browser."""
import html
import json
import math
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from conftest import cli, compress_once
from slimkit.reports.figures import pareto_front
from slimkit.reports.results import build_results, front_cells

ARGS = ("compress", "--data", "digits", "--model", "lenet300", "--baseline-epochs", "2", "--epochs", "1",
        "--method", "prune", "--set", "sparsity=0.9", "--set", "schedule=oneshot", "--set", "allocation=sensitivity",
        "--quiet")


class Page(HTMLParser):
    """What the tests read from a page: data-key/data-value pairs, svg figures, table rows, resources."""

    def __init__(self, text: str):
        super().__init__()
        self.values, self.figures, self.rows, self.resources, self.attrs_of = {}, [], {}, [], {}
        self._table, self._row = None, None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "data-key" in a:
            self.values[a["data-key"]] = a.get("data-value")
        if tag == "svg" and "figure" in (a.get("class") or ""):
            self.figures.append(a.get("data-figure"))
        if tag in ("script", "img", "iframe", "link") and (a.get("src") or a.get("href")):
            self.resources.append((tag, a.get("src") or a.get("href")))
        if tag == "body":
            self.attrs_of["body"] = a
        if tag == "table":
            self._table = a.get("id")
            self.rows.setdefault(self._table, [])
        if tag == "tr" and self._table:
            self._row = []
            self.rows[self._table].append(self._row)
        if tag == "td" and self._row is not None:
            self._row.append(a.get("data-value"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return compress_once(tmp_path_factory, "report", ARGS)


def test_every_run_writes_a_self_contained_report_html(run_dir):
    assert (run_dir / "report.html").is_file() and not (run_dir / ".work").exists()
    text = (run_dir / "report.html").read_text()
    page = Page(text)
    assert page.resources == []  # no external script, image, frame or stylesheet
    for needle in ("http://", "https://", "url(", "@import"):
        assert needle not in text.replace('xmlns="http://www.w3.org/2000/svg"', ""), needle
    report = json.loads((run_dir / "report.json").read_text())
    assert report["command"].startswith("slimkit compress") and report["config"]["model"] == "lenet300"
    assert report["machine"]["cpus"] >= 1 and report["machine"]["torch"]
    shown = html.unescape(text)
    assert 'allocation = "sensitivity"' in shown and "--set allocation=sensitivity" in shown


def test_numbers_on_the_page_equal_report_json(run_dir):
    report = json.loads((run_dir / "report.json").read_text())
    page = Page((run_dir / "report.html").read_text())
    checked = 0
    for key, value in page.values.items():
        node = report
        for part in key.split("/"):
            node = node[int(part)] if isinstance(node, list) else node[part]
        assert float(value) == node, key
        checked += 1
    for side in ("baseline", "final"):
        for k in ("accuracy", "params", "nonzero_params", "size_bytes", "macs", "nonzero_macs", "latency_ms"):
            assert f"{side}/{k}" in page.values
    assert checked >= 20


def test_layer_table_is_what_slimkit_info_reports(run_dir):
    from slimkit.summary import describe_model

    desc = describe_model(run_dir / "model.slim")
    rows = Page((run_dir / "report.html").read_text()).rows["layers"][1:]  # [0] is the header row
    assert len(rows) == len(desc["layers"])
    for row, layer in zip(rows, desc["layers"]):
        # columns: layer, type, shape before/after, params before/after, non-zero before/after, bytes ...
        assert row[0] is None and int(row[5]) == layer["params"] and int(row[7]) == layer["nonzero"]
        assert int(row[8]) == layer["bytes"] and int(row[12]) == layer["nonzero_macs"]


def test_allocation_meets_the_target_layer_by_layer_and_is_shown(run_dir):
    from slimkit_plugins.prune import num_to_prune

    report = json.loads((run_dir / "report.json").read_text())
    stage = report["stages"][0]
    alloc = stage["allocation"]
    levels = alloc["levels"]
    assert set(levels) == {r["name"] for r in stage["layers"]}
    for r in stage["layers"]:
        assert r["zeros"] == num_to_prune(r["params"], levels[r["name"]]), r["name"]
    total = sum(r["params"] for r in stage["layers"])
    assert sum(r["zeros"] for r in stage["layers"]) >= math.ceil(0.9 * total)
    sens = alloc["sensitivity"]
    assert sens["layers"] == list(levels) and len(sens["accuracy"][0]) == len(sens["levels"])
    text = (run_dir / "report.html").read_text()
    page = Page(text)
    assert "sensitivity" in page.figures
    assert text.count('class="chosen"') == sum(1 for lv in levels.values() if lv in sens["levels"])
    for name, lv in levels.items():
        assert float(page.values[f"stages/0/allocation/levels/{name}"]) == lv


def test_histograms_before_and_after_for_every_layer(run_dir):
    figures = Page((run_dir / "report.html").read_text()).figures
    assert [f for f in figures if f.startswith("hist-") and f.endswith("-before")] == \
        ["hist-0-before", "hist-1-before", "hist-2-before"]
    assert {"hist-0", "hist-1", "hist-2", "curve-loss", "curve-accuracy", "curve-sparsity"} <= set(figures)


def test_slimkit_report_writes_the_same_page_again(run_dir, tmp_path):
    assert cli("report", run_dir, "--out", tmp_path / "again.html") == 0
    assert (tmp_path / "again.html").read_text() == (run_dir / "report.html").read_text()
    assert cli("report", tmp_path / "missing") == 2


def _rows(n: int):
    """``n`` finished sweep rows whose accuracy grows with size: all on the front but one
    dominated cell, plus a failed cell."""
    rows = []
    for i in range(n):
        rows.append({"cell": f"c{i:02d}", "kind": "method", "model": "m", "data": "d", "seed": 0, "status": "done",
                     "prune.sparsity": str(0.5 + i / 100), "accuracy": 0.5 + 0.01 * i, "accuracy_change": 0.0,
                     "params": 100, "nonzero_params": 100 - i, "size_bytes": 1000 * (i + 1), "macs": 10,
                     "nonzero_macs": 100 * (i + 1), "latency_ms": 0.1 * (i + 1), "compression_ratio": 1.0,
                     "seconds": 1.0})
    rows[3]["accuracy"] = 0.4  # dominated by c00..c02 (more accurate and cheaper)
    rows.append({"cell": "broken", "kind": "method", "model": "m", "data": "d", "seed": 0, "status": "failed",
                 "error": "boom"})
    return rows


def test_pareto_front_marks_exactly_the_non_dominated_points():
    pts = [(1, 0.5), (2, 0.7), (3, 0.6), (2, 0.7), (4, 0.9)]
    assert pareto_front(pts) == [True, True, False, True, True]
    rows = _rows(25)
    assert front_cells(rows, ["size_bytes", "nonzero_macs", "latency_ms"]) == {f"c{i:02d}" for i in range(25)} - {"c03"}


def test_results_html_table_links_and_front(tmp_path):
    rows = _rows(25)
    page_text = build_results(rows, title="t")
    page = Page(page_text)
    body = page.rows["cells"][1:]
    assert len(body) == 26
    assert {"pareto-size_bytes", "pareto-nonzero_macs", "pareto-latency_ms"} <= set(page.figures)
    assert page_text.count('<tr class="front">') == 24
    assert page_text.count('class="point front"') == 3 * 24
    for r in rows[:25]:
        assert f'href="cells/{r["cell"]}/report.html"' in page_text
    assert "boom" in page_text and page.resources == []


# --------------------------------------------------------------------------- real browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
browser = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium); "
                                                      "the browser tests need it")


def _chromium(tmp_path, url: str, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
                           *extra, url], capture_output=True, text=True, timeout=180)


def _console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]


@browser
def test_report_renders_in_chromium_with_its_figures_and_numbers(run_dir, tmp_path):
    proc = _chromium(tmp_path, (run_dir / "report.html").as_uri(), "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _console_errors(proc.stderr) == []
    dom = Page(proc.stdout)
    assert dom.attrs_of["body"].get("data-ready") == "1"  # the page's script ran to the end
    assert {"sensitivity", "curve-loss", "hist-0"} <= set(dom.figures)
    report = json.loads((run_dir / "report.json").read_text())
    for side in ("baseline", "final"):
        for k in ("accuracy", "size_bytes", "nonzero_params", "macs"):
            assert float(dom.values[f"{side}/{k}"]) == report[side][k]
    shot = tmp_path / "report.png"
    proc = _chromium(tmp_path, (run_dir / "report.html").as_uri(), f"--screenshot={shot}", "--window-size=1280,2400")
    assert proc.returncode == 0 and shot.stat().st_size > 20_000  # a blank page compresses to a few KB


@browser
def test_results_sorted_by_a_link_in_chromium(tmp_path):
    from slimkit.reports.results import write_results_html

    rows = _rows(25)
    path = write_results_html(rows, tmp_path)
    proc = _chromium(tmp_path, path.as_uri() + "#sort=cells:accuracy:desc", "--dump-dom")
    assert proc.returncode == 0 and _console_errors(proc.stderr) == []
    dom = Page(proc.stdout)
    assert dom.attrs_of["body"].get("data-ready") == "1"
    assert {"pareto-size_bytes", "pareto-nonzero_macs", "pareto-latency_ms"} <= set(dom.figures)
    cells = [r[0] for r in dom.rows["cells"][1:]]
    by_accuracy = sorted(rows[:25], key=lambda r: -r["accuracy"])
    assert cells[:25] == [r["cell"] for r in by_accuracy]  # the failed cell (no accuracy) sorts last
