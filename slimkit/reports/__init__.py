"""Self-contained HTML reports: report.html for a compress run, results.html for a sweep.

``html`` builds the run page, ``results`` the sweep page, ``figures`` the inline SVG
figures both use, ``weights`` the per-layer weight histograms and ``provenance`` the
command, recipe and machine recorded in report.json.
"""
from slimkit.reports.html import build_report, write_report, write_report_html
from slimkit.reports.provenance import run_provenance

__all__ = ["build_report", "write_report", "write_report_html", "run_provenance"]
