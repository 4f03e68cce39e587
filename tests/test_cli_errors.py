"""Bad input through the real console entry point (a subprocess): one line on stderr, exit 2.

The table of bad inputs and faults is tests/test_promises.py (in-process, one torch import);
this file checks that the installed `python -m slimkit` path keeps the same promise."""
import gzip
import os

import pytest

from conftest import MNIST_DIR, run_slimkit


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in proc.stderr
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])


def test_unknown_method_lists_valid_ones(tmp_path):
    proc = run_slimkit("compress", "--method", "prnue", "--out", tmp_path / "o")
    assert_one_line_error(proc, "unknown method 'prnue'", "prune")
    assert not (tmp_path / "o").exists()
