"""`slimkit sweep --executor`: the same results.csv on local, local:N and Ray; killed workers cost a rerun
of their cell and change no result; a killed driver resumes; failures are recorded; plugins add executors."""
import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import cli, make_plugin_site
from slimkit import hookimpl
from slimkit.plugins import load_registry, set_registry
from slimkit.sweep import run_sweep
from slimkit.sweep.cell import run_cell
from slimkit.sweep.executors import Executor
from test_sweep import TOY

DATA = "synthetic:96x1x8x8@4"
TIMING = {"seconds", "latency_ms", "baseline_latency_ms"}  # the only columns allowed to differ between runs

try:
    import ray
except ImportError:  # the optional extra slimkit[ray]
    ray = None
needs_ray = pytest.mark.skipif(ray is None, reason="ray is not installed (pip install 'slimkit[ray]')")


@pytest.fixture(autouse=True, scope="module")
def _threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # the in-process cells use the workers' one thread: bitwise equal results
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def toy_site(tmp_path_factory):
    """The toy method as an installed plugin: found by worker processes and Ray workers too."""
    site = make_plugin_site(tmp_path_factory.mktemp("site"), "slimkit-toy-sweep", "slimkit_toy_sweep", TOY,
                            entry_name="toy")
    pids = tmp_path_factory.mktemp("pids") / "pids.txt"
    saved = (list(sys.path), os.environ.get("PYTHONPATH"), os.environ.get("TOY_PIDS"))
    sys.path.insert(0, str(site))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    os.environ["TOY_PIDS"] = str(pids)
    set_registry(None)
    yield pids
    sys.path[:] = saved[0]
    for key, value in (("PYTHONPATH", saved[1]), ("TOY_PIDS", saved[2])):
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    set_registry(None)


@pytest.fixture(scope="module")
def ray_cluster(toy_site):
    """A real local Ray cluster with 2 CPUs, started after the toy plugin is on PYTHONPATH."""
    if ray is None:
        pytest.skip("ray is not installed (pip install 'slimkit[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def write_grid(path: Path, out: Path, cache: Path, body: str) -> Path:
    path.write_text(f'out = "{out}"\ncache_dir = "{cache}"\ndata = ["{DATA}"]\nepochs = 1\nbaseline_epochs = 1\n'
                    f'latency = false\n{body}')
    return path


def results(out: Path) -> list[dict]:
    with open(out / "results.csv") as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


SIX_CELLS = '''models = ["lenet300"]
model_options = { width = 0.1 }
seeds = [0, 1]
methods = ["prune"]
[options]
"prune.sparsity" = [0.5, 0.8]
'''


@pytest.mark.slow
@needs_ray
def test_six_cells_give_the_same_results_csv_on_local_local2_and_ray(tmp_path, ray_cluster):
    tables = {}
    for executor in ("local", "local:2", "ray"):
        name = executor.replace(":", "")
        # each executor trains its own baselines (its own cache): nothing is shared but the grid
        grid = write_grid(tmp_path / f"{name}.toml", tmp_path / name, tmp_path / f"cache-{name}", SIX_CELLS)
        result = run_sweep(grid, executor=executor, log=lambda *a: None)
        assert len(result["ran"]) == 6 and not result["failed"], result
        tables[executor] = results(tmp_path / name)
        assert len(list((tmp_path / f"cache-{name}" / "baselines").glob("*.slim"))) == 2  # one per seed
    assert [r["status"] for r in tables["local"]] == ["done"] * 6
    assert len({r["accuracy"] for r in tables["local"]}) > 1  # real, different cells
    assert tables["local:2"] == tables["local"]
    assert tables["ray"] == tables["local"]


KILL_GRID = '''models = ["lenet300"]
model_options = { width = 0.1 }
methods = ["toy"]
[options]
"toy.scale" = [1.0, 0.5]
"toy.fail" = [false, true]
"toy.sleep" = 1.5
'''


def _kill_first_run_of(pids: Path, target: str, killed: list, stop: threading.Event) -> None:
    """SIGKILL the process that runs the cell ``target`` the first time it starts it (mid-cell)."""
    while not stop.is_set():
        lines = pids.read_text().splitlines() if pids.exists() else []
        hit = [line.split()[0] for line in lines if line.split(" ", 1)[1] == target]
        if hit:
            os.kill(int(hit[0]), signal.SIGKILL)
            killed.append(int(hit[0]))
            return
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local:2", pytest.param("ray", marks=needs_ray)])
def test_a_worker_killed_mid_cell_costs_one_rerun_and_changes_no_result(tmp_path, toy_site, executor, request):
    if executor == "ray":
        request.getfixturevalue("ray_cluster")
    pids = toy_site
    cache = tmp_path / "cache"
    reference = write_grid(tmp_path / "ref.toml", tmp_path / "ref", cache, KILL_GRID)
    run_sweep(reference, log=lambda *a: None)  # undisturbed, in this process
    pids.write_text("")
    grid = write_grid(tmp_path / "kill.toml", tmp_path / "kill", cache, KILL_GRID)
    killed, stop = [], threading.Event()
    killer = threading.Thread(target=_kill_first_run_of, args=(pids, "scale=0.5 fail=False", killed, stop))
    killer.start()
    try:
        result = run_sweep(grid, executor=executor, log=lambda *a: None)
    finally:
        stop.set()
        killer.join()
    assert len(killed) == 1 and killed[0] != os.getpid()
    runs = [line.split(" ", 1)[1] for line in pids.read_text().splitlines()]
    assert runs.count("scale=0.5 fail=False") == 2  # the killed cell ran again, once
    assert all(runs.count(c) == 1 for c in ("scale=1.0 fail=False", "scale=1.0 fail=True", "scale=0.5 fail=True"))
    # a cell failing at run time is recorded with its error, the others go on
    assert sorted(result["failed"]) == ["lenet300-synthetic-toy-scale=0.5-fail=true",
                                        "lenet300-synthetic-toy-scale=1-fail=true"]
    rows = results(tmp_path / "kill")
    assert [r["status"] for r in rows] == ["done", "done", "failed", "done", "failed"]
    assert all("boom: toy told to fail" in r["error"] for r in rows if r["status"] == "failed")
    assert rows == results(tmp_path / "ref")


@pytest.mark.slow
def test_a_killed_driver_resumes_without_recomputing_finished_cells(tmp_path, toy_site):
    grid = write_grid(tmp_path / "g.toml", tmp_path / "out", tmp_path / "cache", '''models = ["lenet300"]
model_options = { width = 0.1 }
methods = ["toy"]
[options]
"toy.scale" = [1.0, 0.8, 0.6, 0.5]
"toy.sleep" = [1.0]
''')
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "slimkit", "sweep", str(grid), "--executor", "local:2"]
    driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and len(list(out.glob("cells/*/report.json"))) < 3 and driver.poll() is None:
        time.sleep(0.1)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    finished = sorted(p.parent.name for p in out.glob("cells/*/report.json"))
    assert 3 <= len(finished) < 5
    stamps = {f: (out / "cells" / f / "report.json").stat().st_mtime_ns for f in finished}
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    skipped = sorted(line.split("] ", 1)[1].split(":", 1)[0] for line in again.stdout.splitlines()
                     if "finished earlier, skipped" in line)
    assert skipped == finished
    assert {f: (out / "cells" / f / "report.json").stat().st_mtime_ns for f in finished} == stamps
    assert [r["status"] for r in results(out)] == ["done"] * 5


@pytest.mark.slow
def test_workers_forked_from_the_fork_server_run_cells_on_several_threads(tmp_path):
    """The fork server has run no parallel torch operation: a worker on 2 threads (local:1 on 2
    cores) does not hang in its first one (GNU OpenMP is not fork-safe), and its cells are right."""
    body = 'models = ["lenet300"]\nmodel_options = { width = 0.1 }\nmethods = ["prune"]\n' \
           '[options]\n"prune.sparsity" = [0.5, 0.9]\n'
    grid = write_grid(tmp_path / "g.toml", tmp_path / "out", tmp_path / "cache", body)
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    command = [sys.executable, "-m", "slimkit", "sweep", str(grid), "--executor", "local:1"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"local:1 ({max(1, os.cpu_count() or 1)} thread(s) each)" in done.stdout
    rows = results(tmp_path / "out")
    assert [r["status"] for r in rows] == ["done"] * 3
    for row, sparsity in zip(rows[1:], (0.5, 0.9)):
        report = json.loads((tmp_path / "out" / "cells" / row["cell"] / "report.json").read_text())
        assert report["stages"][0]["overall_sparsity"] == pytest.approx(sparsity, abs=1e-3)


class InlineExecutor(Executor):
    """A plugin's executor: runs each cell in this process and remembers what it ran."""

    name, parallel = "inline", True
    seen: list = []

    def __init__(self, argument):
        self.argument = argument

    def run(self, specs, on_start):
        for spec in specs:
            on_start(spec, f"inline {self.argument}")
            self.seen.append(spec["id"])
            yield spec, run_cell(spec)


class InlinePlugin:
    @hookimpl
    def register_executors(self, register):
        register("inline", InlineExecutor, "runs cells in the calling process (test plugin)")


def test_hook_register_executors(tmp_path, fresh_registry, capsys):
    set_registry(load_registry(extra_plugins=[InlinePlugin()]))
    grid = write_grid(tmp_path / "g.toml", tmp_path / "out", tmp_path / "cache", '''models = ["lenet300"]
model_options = { width = 0.1 }
baseline = false
methods = ["prune"]
[options]
"prune.sparsity" = [0.5, 0.9]
''')
    lines = []
    result = run_sweep(grid, executor="inline:x", log=lines.append)
    # baselines first: one baseline-only run (no baseline cell in this grid), then both cells
    assert InlineExecutor.seen == ["lenet300-synthetic-baseline (for the method cells)",
                                   "lenet300-synthetic-prune-sparsity=0.5", "lenet300-synthetic-prune-sparsity=0.9"]
    assert result["ran"] == InlineExecutor.seen[1:]
    assert [r["status"] for r in results(tmp_path / "out")] == ["done", "done"]
    assert not (tmp_path / "out" / ".baselines").exists()
    assert any("on inline x" in line and "1 running" in line for line in lines)
    assert "2/2 done, 0 running, 0 failed, ETA 0:00:00]" in lines[-2]
    for spec, message in (("nope", "unknown executor 'nope'; available executors: inline, local, ray"),
                          ("local:zero", "expected a number of worker processes")):
        assert cli("sweep", grid, "--executor", spec) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err


def _cell_lines():
    from slimkit.progress import Reporter

    with Reporter().bar("prune", 2) as task:
        task.epoch_done(1, 2, 0.5, 0.9, 0.1)
    Reporter().log("a [bold]message[/bold]")


def test_verbose_prefixes_each_cell_line_with_its_name_and_workers_send_them_to_the_driver(capsys):
    from slimkit.progress import epoch_line, set_line_prefix, set_line_sink

    sent = []
    previous = set_line_prefix("cellA: ")
    try:
        _cell_lines()  # in the driver's process (local): printed
        set_line_sink(lambda line, markup: sent.append((line, markup)))
        _cell_lines()  # in a worker (local:N): sent to the driver, which prints them
    finally:
        set_line_prefix(previous)
        set_line_sink(None)
    err = capsys.readouterr().err.splitlines()
    assert err == ["cellA: " + epoch_line("prune", 1, 2, 0.5, 0.9, 0.1), "cellA: a message"]
    assert sent == [("cellA: " + epoch_line("prune", 1, 2, 0.5, 0.9, 0.1), False),
                    ("cellA: a [bold]message[/bold]", True)]


class NotSharedExecutor(InlineExecutor):
    """Runs cells as a worker on another machine would: the driver's output directory is not there
    (the share token does not match), so each cell's files come back as bytes."""

    returned: list = []

    def run(self, specs, on_start):
        for spec in specs:
            on_start(spec, "elsewhere")
            result = run_cell({**spec, "share": {**spec["share"], "token": "not the driver's token"}})
            self.returned.append(sorted(result["files"] or {}))
            yield spec, result


class NotSharedPlugin:
    @hookimpl
    def register_executors(self, register):
        register("elsewhere", NotSharedExecutor, "as if on a node without the shared output directory (test)")


@pytest.mark.slow
def test_cells_whose_worker_cannot_see_the_output_come_back_as_bytes_with_equal_results(tmp_path, fresh_registry):
    set_registry(load_registry(extra_plugins=[NotSharedPlugin()]))
    body = 'models = ["lenet300"]\nmodel_options = { width = 0.1 }\nmethods = ["prune"]\n' \
           '[options]\n"prune.sparsity" = [0.5]\n'
    # each trains its own baseline: the same files in both cell directories
    here = run_sweep(write_grid(tmp_path / "a.toml", tmp_path / "here", tmp_path / "c1", body), log=lambda *a: None)
    away = run_sweep(write_grid(tmp_path / "b.toml", tmp_path / "away", tmp_path / "c2", body), executor="elsewhere",
                     log=lambda *a: None)
    assert here["ran"] == away["ran"] and len(away["ran"]) == 2
    assert all({"report.json", "model.slim", "baseline.slim"} <= set(files) for files in NotSharedExecutor.returned)
    assert results(tmp_path / "away") == results(tmp_path / "here")
    for cell in away["ran"]:
        assert sorted(p.name for p in (tmp_path / "away" / "cells" / cell).iterdir()) == \
            sorted(p.name for p in (tmp_path / "here" / "cells" / cell).iterdir())
    with pytest.raises(ValueError, match="outside the cell directory"):
        from slimkit.sweep.cell import write_returned_files

        write_returned_files(tmp_path / "away" / "cells" / away["ran"][0], {"../../escape.txt": b"x"})


def _grid_events(tracker) -> None:
    """A grid of 3 cells on two workers: two start, one finishes, one fails, the last starts."""
    a, b, c = ({"id": name} for name in ("cellA", "cellB", "cellC"))
    tracker.started(a, "worker 0 pid 11")
    tracker.started(b, "worker 1 pid 12")
    tracker.finished(a, {"status": "done", "accuracy": 0.9, "baseline_accuracy": 0.95, "seconds": 4.0, "host": "h"})
    tracker.finished(b, {"status": "failed", "error": "boom: diverged\ntraceback", "seconds": 2.0})
    tracker.started(c, "worker 0 pid 11")


class TwoSlots:
    slots = 2


def test_progress_off_a_terminal_is_one_status_line_per_event():
    import io

    from rich.console import Console

    from slimkit.sweep.progress import GridProgress

    lines = []
    not_a_terminal = Console(file=io.StringIO(), force_terminal=False)
    with GridProgress(3, 0, TwoSlots(), lines.append, not_a_terminal) as tracker:
        _grid_events(tracker)
    assert not tracker.live and not_a_terminal.file.getvalue() == ""
    assert lines == [
        "[0/3 done, 1 running (cellA on worker 0 pid 11), 0 failed, ETA ?] cellA: started on worker 0 pid 11",
        "[0/3 done, 2 running (cellA on worker 0 pid 11; cellB on worker 1 pid 12), 0 failed, ETA ?] "
        "cellB: started on worker 1 pid 12",
        "[1/3 done, 1 running (cellB on worker 1 pid 12), 0 failed, ETA 0:00:04] "
        "cellA: accuracy 90.00 % (baseline 95.00 %), 4.0 s on h",
        # mean 3 s per cell, one cell left, on one of the two slots
        "[1/3 done, 0 running, 1 failed, ETA 0:00:03] cellB: FAILED: boom: diverged",
        "[1/3 done, 1 running (cellC on worker 0 pid 11), 1 failed, ETA 0:00:03] cellC: started on worker 0 pid 11"]


def test_progress_on_a_terminal_is_a_live_bar_with_a_row_per_running_cell():
    import io
    import re

    from rich.console import Console

    from slimkit.sweep.progress import GridProgress

    lines = []
    terminal = Console(file=io.StringIO(), force_terminal=True, width=100, color_system=None)
    with GridProgress(3, 0, TwoSlots(), lines.append, terminal) as tracker:
        _grid_events(tracker)
        screen = terminal.file.getvalue()
        last = screen[screen.rindex("grid"):]  # the last frame drawn
    assert tracker.live
    # events above the bar, without the status the bar shows
    assert lines == ["cellA: accuracy 90.00 % (baseline 95.00 %), 4.0 s on h", "cellB: FAILED: boom: diverged"]
    grid_row, cell_row = last.splitlines()[:2]
    assert re.fullmatch(r"grid +[━╸]+ +1/3 done, 1 running, 1 failed, ETA 0:00:03 +0:00:0\d", grid_row), last
    assert re.fullmatch(r" +cellC +━+ on worker 0 pid 11 +0:00:0\d", cell_row), last  # running: a pulsing bar
    assert "cellA" not in last and "cellB" not in last  # finished: their rows are gone
    width = cell_row.count("━")
    assert abs(grid_row.count("━") - 2 / 3 * width) <= 1  # 2 of 3 cells finished (1 done, 1 failed)
    assert "\x1b[" in screen  # drawn in place (cursor movements), not printed line by line
    final = terminal.file.getvalue()
    assert "1/3 done, 1 running, 1 failed" in final[final.rindex("grid"):]
