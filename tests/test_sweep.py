"""`slimkit sweep`: grid expansion, validation before training, results, resume, failures, SIGTERM."""
import csv
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from conftest import cli, make_plugin_site
from slimkit.plugins import load_registry, set_registry
from slimkit.sweep import epochs_to_fraction, expand, read_grid, run_sweep

TOY = '''
import os
import time

from slimkit import hookimpl
from slimkit.api import Method, Option


class Toy(Method):
    name = "toy"
    summary = "test method: scales the weights, trains, may fail or sleep"
    options = [Option("fail", bool, False, "raise in apply"), Option("scale", float, 1.0, "weight factor"),
               Option("sleep", float, 0.0, "seconds to sleep in apply")]

    def apply(self, model, ctx, opts):
        counter = os.environ.get("TOY_COUNTER")
        if counter:
            with open(counter, "a") as f:
                f.write(f"scale={opts['scale']} fail={opts['fail']}\\n")
        pids = os.environ.get("TOY_PIDS")  # which process runs which cell (the executor tests kill one)
        if pids:
            with open(pids, "a") as f:
                f.write(f"{os.getpid()} scale={opts['scale']} fail={opts['fail']}\\n")
        time.sleep(opts["sleep"])
        if opts["fail"]:
            raise RuntimeError("boom: toy told to fail")
        for p in model.parameters():
            p.data.mul_(opts["scale"])
        ctx.train(model, epochs=ctx.epochs)
        return model


@hookimpl
def register_methods(register):
    register(Toy())
'''

DATA = "synthetic:96x1x8x8@4"


@pytest.fixture(autouse=True, scope="module")
def _threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared: one thread avoids OpenMP spin contention
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def toy_registry(fresh_registry):
    module = types.ModuleType("slimkit_toy_sweep")
    exec(compile(TOY, "slimkit_toy_sweep.py", "exec"), module.__dict__)
    set_registry(load_registry(extra_plugins=[module]))
    yield


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def grid_file(path: Path, out: Path, options: str, *, model: str = "lenet300", width: float = 0.1,
              epochs: int = 0, method: str = "toy") -> Path:
    """A one-model, one-method grid on the test data (baseline 1 epoch, no latency); ``options``
    is the body of its [options] table. The defaults are the toy method over LeNet-300-100."""
    return write(path, f'''
out = "{out}"
models = ["{model}"]
model_options = {{ width = {width} }}
data = ["{DATA}"]
epochs = {epochs}
baseline_epochs = 1
latency = false
methods = ["{method}"]
[options]
{options}
''')


def rows_of(out: Path):
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


def test_triage_2x2_grid_runs_writes_results_and_resumes_only_the_unfinished_cell(tmp_path):
    out = tmp_path / "triage"
    grid = grid_file(tmp_path / "grid.toml", out, '"structural.block" = [3, 4]\n"structural.regime" = ["frozen", '
                     '"thawed"]\n"structural.init" = "mean"', model="vgg11", width=0.125, epochs=1, method="structural")
    result = run_sweep(grid, log=lambda *a: None)
    ids = ["vgg11-synthetic-baseline"] + [f"vgg11-synthetic-structural-block={b}-regime={r}"
                                          for b in (3, 4) for r in ("frozen", "thawed")]
    assert result["ran"] == ids and not result["failed"] and not result["skipped"]
    rows = rows_of(out)
    assert [r["cell"] for r in rows] == ids
    assert all(r["status"] == "done" for r in rows)
    assert rows[0]["kind"] == "baseline" and rows[0]["structural.block"] == ""
    assert [r["structural.block"] for r in rows[1:]] == ["3", "3", "4", "4"]
    assert {r["structural.init"] for r in rows[1:]} == {"mean"}  # a scalar option: fixed, not in the id
    base_params = int(rows[0]["params"])
    for r in rows[1:]:
        assert int(r["params"]) < base_params and float(r["baseline_accuracy"]) == float(rows[0]["accuracy"])
        assert r["epochs_to_95"] == "1" and float(r["compression_ratio"]) > 1
    for name in ("results.md", "accuracy.png", "convergence.png", "accuracy_vs_nonzero_params.png",
                 "accuracy_vs_file_size.png", "grid.toml"):
        assert (out / name).exists(), name
    md = (out / "results.md").read_text()
    assert "| regime | frozen | thawed |" in md and "| block=3 |" in md

    # "kill" one finished cell: only that one runs again, the others' reports stay untouched
    victim = out / "cells" / ids[3] / "report.json"
    victim.unlink()
    mtimes = {i: (out / "cells" / i / "report.json").stat().st_mtime_ns for i in ids if i != ids[3]}
    again = run_sweep(grid, log=lambda *a: None)
    assert again["ran"] == [ids[3]] and again["skipped"] == [i for i in ids if i != ids[3]]
    assert victim.exists()
    assert {i: (out / "cells" / i / "report.json").stat().st_mtime_ns for i in mtimes} == mtimes
    assert [r["status"] for r in rows_of(out)] == ["done"] * 5


def test_failed_cells_are_recorded_the_rest_go_on_and_rerun_retries_only_them(tmp_path, toy_registry,
                                                                                 monkeypatch, capsys):
    counter = tmp_path / "calls.txt"
    monkeypatch.setenv("TOY_COUNTER", str(counter))
    out = tmp_path / "toy"
    grid = grid_file(tmp_path / "toy.toml", out, '"toy.fail" = [false, true]\n"toy.scale" = [1.0, 0.5]')
    assert cli("sweep", grid) == 2  # some cells failed: one line on stderr, like every error
    err = capsys.readouterr().err.strip()
    assert "2 cell(s) failed" in err and len(err.splitlines()) == 1
    rows = rows_of(out)
    status = {r["cell"]: r["status"] for r in rows}
    assert status == {"lenet300-synthetic-baseline": "done",
                      "lenet300-synthetic-toy-fail=false-scale=1": "done",
                      "lenet300-synthetic-toy-fail=false-scale=0.5": "done",
                      "lenet300-synthetic-toy-fail=true-scale=1": "failed",
                      "lenet300-synthetic-toy-fail=true-scale=0.5": "failed"}
    failed = [r for r in rows if r["status"] == "failed"]
    assert all("boom: toy told to fail" in r["error"] for r in failed)
    assert (out / "cells" / failed[0]["cell"] / "error.txt").read_text().startswith("RuntimeError: boom")
    assert len(counter.read_text().splitlines()) == 4
    # rerun: finished cells are skipped (apply not called again), the failed ones are tried again
    counter.unlink()
    assert cli("sweep", grid) == 2
    assert sorted(counter.read_text().splitlines()) == ["scale=0.5 fail=True", "scale=1.0 fail=True"]


BAD_GRIDS = [  # (lines replaced or added, [options] lines, what the one-line error says)
    ({"epoch": "epoch = 3"}, "", "unknown key(s) 'epoch'"),
    ({"models": "models = []"}, "", "key 'models' is an empty list"),
    ({}, '"structural.block" = []', "option key 'structural.block' is an empty list"),
    ({}, '"structural.blok" = [1, 2]', "cell vgg11-synthetic-structural-blok=1 (structural.blok=1): "
                                       "method 'structural' has no option 'blok'"),
    ({}, '"structural.block" = [2, 9]', "cell vgg11-synthetic-structural-block=9 (structural.block=9): "
                                        "option structural.block=9 is out of range"),
    ({}, '"structural.init" = ["avg"]', "cell vgg11-synthetic-structural-init=avg (structural.init=avg): "
                                        "option structural.init='avg' is invalid"),
    ({}, '"prune.sparsity" = [0.5]', "option key 'prune.sparsity': method 'prune' is not in the chain"),
    ({"models": 'models = ["lenet300"]'}, "", "cell lenet300-synthetic-structural (no options): structural: "
                                              "LeNet300 has no `features`"),
    ({"methods": 'methods = ["structural", "nope"]'}, "", "key 'methods': unknown method 'nope'"),
]


@pytest.mark.parametrize("lines,options,message", BAD_GRIDS)
def test_bad_grids_fail_before_any_training_naming_cell_and_key(tmp_path, capsys, lines, options, message):
    base = {"out": f'out = "{tmp_path / "out"}"', "models": 'models = ["vgg11"]', "data": f'data = ["{DATA}"]',
            "methods": 'methods = ["structural"]', "model_options": "model_options = { width = 0.125 }"}
    text = "\n".join({**base, **lines}.values()) + (f"\n[options]\n{options}\n" if options else "\n")
    grid = write(tmp_path / "bad.toml", text)
    cache = Path(os.environ["SLIMKIT_CACHE"])
    before = sorted(cache.rglob("*"))
    assert cli("sweep", grid) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert message in err, err
    assert not (tmp_path / "out").exists()  # nothing written, nothing trained
    assert sorted(cache.rglob("*")) == before


def test_expand_is_the_cartesian_product_in_grid_order(tmp_path):
    grid = read_grid(write(tmp_path / "g.toml", '''
models = ["vgg11", "minivgg"]
model_options = { width = [0.25, 0.5] }
data = ["digits"]
seeds = [0, 1]
methods = ["structural"]
[options]
"structural.block" = [1, 2]
"structural.init" = ["random", "mean", "stn"]
'''))
    cells = expand(grid)
    assert len(cells) == 2 * 2 * 2 * (1 + 2 * 3)
    assert cells[0].id == "vgg11-width=0.25-digits-seed=0-baseline"
    assert cells[1].id == "vgg11-width=0.25-digits-seed=0-structural-block=1-init=random"
    assert cells[2].id == "vgg11-width=0.25-digits-seed=0-structural-block=1-init=mean"
    assert cells[-1].id == "minivgg-width=0.5-digits-seed=1-structural-block=2-init=stn"
    assert len({c.id for c in cells}) == len(cells)
    assert grid.swept == ["structural.block", "structural.init"]


def test_epochs_to_95():
    assert epochs_to_fraction([0.5, 0.8, 0.9, 0.96, 0.95]) == 4
    assert epochs_to_fraction([0.2, 0.95, 1.0]) == 2
    assert epochs_to_fraction([]) is None


def test_sigterm_stops_the_sweep_and_a_rerun_skips_the_finished_cells(tmp_path):
    site = make_plugin_site(tmp_path / "site", "slimkit-toy-sweep", "slimkit_toy_sweep", TOY, entry_name="toy")
    out = tmp_path / "killed"
    grid = grid_file(tmp_path / "slow.toml", out, '"toy.scale" = [1.0, 0.8, 0.6, 0.5]\n"toy.sleep" = [1.0]')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "slimkit", "sweep", str(grid)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 90
    while time.time() < deadline and len(list(out.glob("cells/*/report.json"))) < 2 and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "run the same command again to resume" in stderr
    finished = sorted(p.parent.name for p in out.glob("cells/*/report.json"))
    assert 2 <= len(finished) < 5
    assert {r["cell"]: r["status"] for r in rows_of(out)}.items() >= {f: "done" for f in finished}.items()
    assert "pending" in {r["status"] for r in rows_of(out)}

    again = subprocess.run([sys.executable, "-m", "slimkit", "sweep", str(grid)], env=env, capture_output=True,
                           text=True, timeout=180)
    assert again.returncode == 0, again.stderr
    skipped = sorted(line.split("] ", 1)[1].split(":", 1)[0] for line in again.stdout.splitlines()
                     if "finished earlier, skipped" in line)
    assert skipped == finished
    assert [r["status"] for r in rows_of(out)] == ["done"] * 5


def test_cli_and_sweep_defaults_are_runconfigs(tmp_path, monkeypatch):
    import dataclasses

    import typer

    import slimkit.pipeline
    from slimkit.cli import app
    from slimkit.pipeline import RunConfig

    defaults = RunConfig()
    seen = []

    class Captured:
        def __init__(self, cfg, option_pairs=()):
            seen.append(cfg)

        def execute(self):
            return None

    monkeypatch.setattr(slimkit.pipeline, "Run", Captured)
    assert cli("compress") == 0  # no flag, no recipe: every setting is RunConfig's default
    assert seen[0].out == f"runs/{defaults.model}-{'-'.join(defaults.methods)}"
    assert dataclasses.replace(seen[0], out=defaults.out) == defaults
    # a recipe without the keys falls back to the same defaults
    recipe = write(tmp_path / "r.toml", '[[stage]]\nmethod = "prune"\n')
    assert cli("compress", "--recipe", recipe) == 0
    assert dataclasses.replace(seen[1], out=defaults.out, options={}) == defaults

    commands = typer.main.get_command(app).commands
    compress_flags = {p.name: p.default for p in commands["compress"].params}
    for name in ("trust_checkpoint", "resume", "sparse_inference", "latency", "quiet", "collapse_threshold"):
        assert compress_flags[name] == getattr(defaults, name), name
    train = {p.name: p.default for p in commands["train"].params}
    assert (train["model"], train["data"], train["epochs"], train["lr"], train["batch_size"], train["optimizer"],
            train["seed"]) == (defaults.model, defaults.data, defaults.baseline_epochs, defaults.lr,
                               defaults.batch_size, defaults.optimizer, defaults.seed)
    helps = {p.name: p.help for p in commands["compress"].params}
    from slimkit.config import DEFAULT_STAGE_EPOCHS

    assert defaults.epochs is None and f"(default {DEFAULT_STAGE_EPOCHS};" in helps["epochs"]
    assert f"(default {defaults.baseline_epochs})" in helps["baseline_epochs"]

    grid = read_grid(write(tmp_path / "g.toml", 'models = ["lenet300"]\ndata = ["digits"]\n'))
    assert (grid.epochs, grid.baseline_epochs, grid.lr, grid.batch_size, grid.optimizer, grid.seeds,
            grid.latency, grid.cache_dir) == (defaults.epochs, defaults.baseline_epochs, defaults.lr,
                                              defaults.batch_size, defaults.optimizer, [defaults.seed],
                                              defaults.latency, defaults.cache_dir)


def _fake_rows(grid, cells):
    """results rows as collect() makes them, for unstructured pruning: the dense parameter count stays, the
    non-zeros and the bytes fall with sparsity."""
    rows = []
    for cell in cells:
        sparsity = cell.swept.get("prune.sparsity", 0.0)
        rows.append({"cell": cell.id, "kind": cell.kind, "model": cell.model, "model_options": "{}", "data": cell.data,
                     "seed": cell.seed, "methods": "+".join(cell.methods) or "(none)", "status": "done",
                     **{k: str(v) for k, v in cell.swept.items()},
                     "baseline_accuracy": 0.97, "accuracy": 0.97 - sparsity / 10, "params": 26_000,
                     "nonzero_params": round(26_000 * (1 - sparsity)), "size_bytes": round(104_000 * (1 - sparsity)),
                     "compression_ratio": 1 / (1 - sparsity), "epochs_to_95": 2 if cell.methods else "",
                     "val_accuracy_curve": "[0.8, 0.95, 0.96]" if cell.methods else "[]", "seconds": 1.0,
                     "error": ""})
    return rows


def test_results_md_names_every_column_and_heading_and_size_plots_use_nonzeros_and_bytes(tmp_path):
    from slimkit.sweep import markdown, plots
    from slimkit.sweep.plots import size_series

    grid = read_grid(write(tmp_path / "g.toml", f'''
out = "{tmp_path / 'out'}"
models = ["lenet300"]
data = ["digits"]
methods = ["prune"]
[options]
"prune.sparsity" = [0.5, 0.9]
'''))
    rows = _fake_rows(grid, expand(grid))
    md = markdown(grid, rows)
    assert "## lenet300 on digits, seed 0" in md and "{}" not in md
    tables = md.split("### ")
    accuracy = next(t for t in tables if t.startswith("test accuracy (%)"))
    epochs = next(t for t in tables if t.startswith("epochs to 95 %"))
    assert "| sparsity | test accuracy (%) |" in accuracy and "| sparsity=0.9 | 88.00 |" in accuracy
    assert "| sparsity | epochs to 95 % |" in epochs and "| sparsity=0.9 | 2 |" in epochs
    assert "accuracy" not in epochs.split("\n## ")[0]
    # with model options the heading names them
    md = markdown(grid, [{**r, "model_options": '{"width": 0.5}'} for r in rows])
    assert "## lenet300 (width=0.5) on digits, seed 0" in md

    # accuracy against size: x is the non-zero count / the file's bytes, distinct for every sparsity
    assert {k: [x for x, _, _ in v] for k, v in size_series(grid, rows, "nonzero_params").items()} == \
        {"baseline": [26_000], "prune": [13_000, 2_600]}
    assert [x for x, _, _ in size_series(grid, rows, "size_bytes")["prune"]] == [52_000, 10_400]
    assert [text for _, _, text in size_series(grid, rows, "size_bytes")["prune"]] == ["0.5", "0.9"]
    grid.out.mkdir()
    (grid.out / "accuracy_vs_params.png").write_bytes(b"stale figure of an earlier version")
    plots(grid, rows)
    for name in ("accuracy.png", "convergence.png", "accuracy_vs_nonzero_params.png", "accuracy_vs_file_size.png"):
        assert (grid.out / name).stat().st_size > 5_000, name
    assert not (grid.out / "accuracy_vs_params.png").exists()
