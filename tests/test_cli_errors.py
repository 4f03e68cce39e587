"""Bad input as a new user would type it: one line on stderr, exit code 2, nothing written."""
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


def test_unknown_model_and_dataset(tmp_path):
    assert_one_line_error(run_slimkit("compress", "--model", "lenet9000", "--out", tmp_path / "o"),
                          "unknown model 'lenet9000'", "lenet300")
    assert_one_line_error(run_slimkit("compress", "--data", "imagenet:/x", "--out", tmp_path / "o"),
                          "unknown dataset 'imagenet'", "digits")
    assert not (tmp_path / "o").exists()


def test_option_out_of_range_names_option_value_and_range(tmp_path):
    proc = run_slimkit("compress", "--set", "sparsity=1.5", "--out", tmp_path / "o")
    assert_one_line_error(proc, "prune.sparsity", "1.5", "[0")
    proc = run_slimkit("compress", "--set", "schedule=sometimes", "--out", tmp_path / "o")
    assert_one_line_error(proc, "schedule", "oneshot", "gradual")
    proc = run_slimkit("compress", "--set", "colour=blue", "--out", tmp_path / "o")
    assert_one_line_error(proc, "colour", "sparsity")
    proc = run_slimkit("compress", "--set", "novalue", "--out", tmp_path / "o")
    assert_one_line_error(proc, "KEY=VALUE")
    proc = run_slimkit("compress", "--epochs", "many", "--out", tmp_path / "o")
    assert_one_line_error(proc, "--epochs")
    assert not (tmp_path / "o").exists()


def test_missing_data_dir_names_expected_files(tmp_path):
    proc = run_slimkit("compress", "--data", f"mnist:{tmp_path / 'nowhere'}", "--out", tmp_path / "o")
    assert_one_line_error(proc, "nowhere")
    assert not (tmp_path / "o").exists()


def test_corrupt_model_file(tmp_path):
    bad = tmp_path / "model.slim"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    for args in (("info", bad), ("evaluate", bad), ("compress", "--model", bad, "--out", tmp_path / "o")):
        assert_one_line_error(run_slimkit(*args), str(bad))
    assert not (tmp_path / "o").exists()
    assert_one_line_error(run_slimkit("info", tmp_path / "missing.slim"), "does not exist")


def test_bad_recipe(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('model = "lenet300"\nspeed = "fast"\n')
    assert_one_line_error(run_slimkit("compress", "--recipe", recipe), "speed")
    recipe.write_text('model = "lenet300\n')
    assert_one_line_error(run_slimkit("compress", "--recipe", recipe), "TOML")


def test_unknown_command_and_flag():
    assert_one_line_error(run_slimkit("compres"), "compres")
    assert_one_line_error(run_slimkit("compress", "--sparsity", "0.9"), "--sparsity")
