"""Plugins: a third-party package found only through its entry point, a broken plugin,
and one test per hook (test_every_hook_has_a_test enforces that)."""
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import slimkit
from slimkit import hookimpl, hookspecs
from slimkit.api import Method, Option
from slimkit.plugins import load_registry, set_registry

from conftest import REPO, cli, run_slimkit

EXAMPLE = REPO / "docs" / "example-plugin"


def install_example_plugin(site: Path) -> Path:
    """Install docs/example-plugin the way pip would lay it out: the package plus a
    .dist-info with METADATA and entry_points.txt, on a path of its own."""
    shutil.copytree(EXAMPLE / "slimkit_random_prune", site / "slimkit_random_prune")
    info = site / "slimkit_random_prune-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: slimkit-random-prune\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[slimkit]\nrandom-prune = slimkit_random_prune\n")
    return site


def test_hook_register_methods(tmp_path):
    """A third-party package, installed only through its entry point, adds a method."""
    site = install_example_plugin(tmp_path / "site")
    env = {"PYTHONPATH": str(site)}
    methods = json.loads(run_slimkit("methods", "--json", env=env).stdout)
    names = {m["name"]: m for m in methods}
    assert "random-prune" in names and names["random-prune"]["plugin"] == "random-prune"
    options = {o["name"]: o for o in names["random-prune"]["options"]}
    assert set(options) == {"sparsity", "epochs", "lr"}  # epochs and lr: the engine's common options
    assert [n for n, o in options.items() if o["common"]] == ["epochs", "lr"] and options["epochs"]["default"] is None
    plugins = json.loads(run_slimkit("plugins", "--json", env=env).stdout)
    row = next(p for p in plugins if p["plugin"] == "random-prune")
    assert row["distribution"] == "slimkit-random-prune" and row["version"] == "0.1.0"
    assert "method:random-prune" in row["provides"]
    # and it runs through the CLI like a built-in method
    out = tmp_path / "out"
    proc = run_slimkit("compress", "--data", "synthetic", "--method", "random-prune", "--set", "sparsity=0.75",
                       "--epochs", "1", "--baseline-epochs", "2", "--out", out, "--quiet", "--no-latency", env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["methods"][0]["name"] == "random-prune"
    assert report["final"]["sparsity"] == pytest.approx(0.75, abs=1e-3)


def test_broken_plugin_warns_once_and_others_work(tmp_path):
    site = tmp_path / "site"
    (site / "broken_plugin").mkdir(parents=True)
    (site / "broken_plugin" / "__init__.py").write_text("raise ImportError('needs libfoo')\n")
    info = site / "broken_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[slimkit]\nbroken = broken_plugin\n")
    proc = run_slimkit("methods", env={"PYTHONPATH": str(site)})
    assert proc.returncode == 0
    warnings = [l for l in proc.stderr.splitlines() if "broken" in l and "failed to load" in l]
    assert len(warnings) == 1, proc.stderr
    assert "prune" in proc.stdout


class Recorder:
    """A logging plugin: records every event hook call."""

    def __init__(self):
        self.events = []

    @hookimpl
    def stage_started(self, stage, options, context):
        self.events.append(("stage_started", stage, dict(options)))

    @hookimpl
    def epoch_finished(self, stage, epoch, metrics):
        self.events.append(("epoch_finished", stage, epoch, metrics["train_loss"]))

    @hookimpl
    def stage_finished(self, stage, result):
        self.events.append(("stage_finished", stage, result["accuracy"]))


def _run_with(plugins, tmp_path, *args):
    set_registry(load_registry(extra_plugins=plugins))
    try:
        code = cli("compress", "--data", "synthetic", "--baseline-epochs", "2", "--epochs", "2", "--quiet",
                   "--no-latency", "--out", tmp_path / "out", *args)
    finally:
        set_registry(None)
    assert code == 0
    return json.loads((tmp_path / "out" / "report.json").read_text())


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory):
    """One compress run (baseline trained here, then prune) observed by a Recorder."""
    rec = Recorder()
    tmp = tmp_path_factory.mktemp("events")
    # a seed of its own, so the baseline trains in this run rather than coming from a cache
    report = _run_with([rec], tmp, "--method", "prune", "--set", "sparsity=0.5", "--seed", "11")
    return rec.events, report


def test_hook_stage_started(recorded_run):
    events, _ = recorded_run
    started = [e for e in events if e[0] == "stage_started"]
    assert [e[1] for e in started] == ["prune"]
    assert started[0][2]["sparsity"] == 0.5 and started[0][2]["schedule"] == "gradual"
    first_prune_epoch = next(i for i, e in enumerate(events) if e[0] == "epoch_finished" and e[1] == "prune")
    assert events.index(started[0]) < first_prune_epoch


def test_hook_epoch_finished(recorded_run):
    events, report = recorded_run
    epochs = [e for e in events if e[0] == "epoch_finished"]
    assert [(e[1], e[2]) for e in epochs] == [("baseline", 1), ("baseline", 2), ("prune", 1), ("prune", 2)]
    assert all(e[3] > 0 for e in epochs)


def test_hook_stage_finished(recorded_run):
    events, report = recorded_run
    assert events[-1] == ("stage_finished", "prune", report["stages"][0]["accuracy"])


class TinyNet(nn.Module):
    def __init__(self, input_shape, num_classes, hidden=32):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), hidden), nn.ReLU(),
                                  nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.body(x)


slimkit.nn.serializable(TinyNet)


class ModelAndModules:
    @hookimpl
    def register_models(self, register):
        register("tinynet", lambda shape, classes, **kw: TinyNet(list(shape), classes, **kw), "a test MLP")

    @hookimpl
    def register_modules(self, register):
        register(TinyNet)


def test_hook_register_models(tmp_path):
    report = _run_with([ModelAndModules()], tmp_path, "--model", "tinynet", "--model-opt", "hidden=16",
                       "--method", "prune", "--set", "sparsity=0.5")
    assert report["model"] == "tinynet"
    assert report["baseline"]["params"] == 64 * 16 + 16 + 16 * 10 + 10
    # the saved file names the plugin's module type, and loads back only with it registered
    set_registry(load_registry(extra_plugins=[ModelAndModules()]))
    try:
        assert cli("evaluate", tmp_path / "out" / "model.slim") == 0
    finally:
        set_registry(None)


def test_hook_register_modules(tmp_path):
    """A model holding a plugin's module type saves, and loads back only while the
    plugin that registered the type is there."""
    from slimkit import storage
    from slimkit.errors import UserError

    model = TinyNet([1, 8, 8], 10, hidden=8)
    info = {"model": "tinynet", "input_shape": [1, 8, 8], "num_classes": 10, "data": {}}
    with_plugin = load_registry(extra_plugins=[ModelAndModules()])
    storage.save_model(tmp_path / "m.slim", model, with_plugin, info=info)
    loaded = storage.load_model(tmp_path / "m.slim", with_plugin).model
    assert isinstance(loaded, TinyNet) and loaded.body[1].out_features == 8
    with pytest.raises(UserError, match="TinyNet"):
        storage.load_model(tmp_path / "m.slim", load_registry())
    with pytest.raises(UserError, match="register_modules"):
        storage.save_model(tmp_path / "n.slim", model, load_registry(), info=info)




class TwoBlobs:
    """A data set plugin: two Gaussian blobs in 4 dimensions."""

    @hookimpl
    def register_datasets(self, register):
        from slimkit.data import RawData

        def load(argument, seed):
            g = torch.Generator().manual_seed(seed)
            n = int(argument or 400)
            y = torch.arange(n) % 2
            x = torch.randn(n, 4, generator=g) + 3.0 * y[:, None].float()
            cut = n * 3 // 4
            return RawData(x[:cut], y[:cut], x[cut:], y[cut:], num_classes=2, kind="vector",
                           description=f"two blobs, {n} points")

        register("blobs", load, "two Gaussian blobs")


def test_hook_register_datasets(tmp_path):
    report = _run_with([TwoBlobs()], tmp_path, "--data", "blobs:400", "--method", "prune", "--set", "sparsity=0.5")
    assert report["dataset"]["name"] == "blobs:400"
    assert report["dataset"]["test"] == 100
    assert report["final"]["accuracy"] > 0.9  # well separated: a real fit, not chance


def test_every_hook_has_a_test():
    """Every hookspec needs a test named test_hook_<name> somewhere in tests/ (datasette's rule)."""
    hooks = [name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), "slimkit_spec")]
    assert len(hooks) >= 7
    text = "\n".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    missing = [h for h in hooks if not re.search(rf"\btest_hook_{h}\b", text)]
    assert not missing, f"hooks without a test: {missing}"


def _plugin_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a plugin file that reaches slimkit_plugins (absolute,
    relative, or by name through importlib.import_module / __import__)."""
    import ast

    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: a sibling module of slimkit_plugins
                base = "slimkit_plugins" + (f".{node.module}" if node.module else "")
                found += [(node.lineno, base if node.module else f"{base}.{a.name}") for a in node.names]
            elif node.module == "slimkit_plugins":
                found += [(node.lineno, f"slimkit_plugins.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__"):
                found.append((node.lineno, node.args[0].value))
    return [(line, m) for line, m in found if m == "slimkit_plugins" or m.startswith("slimkit_plugins.")]


def test_plugins_import_only_the_engine_never_each_other():
    """Each built-in plugin depends on the engine (slimkit.*) only: what two plugins share
    belongs in the engine (e.g. slimkit.nn.quantized for quantize and sws)."""
    plugin_dir = REPO / "plugins"
    files = sorted(p for p in plugin_dir.glob("*.py") if p.name != "__init__.py")
    assert {"quantize.py", "sws.py"} <= {p.name for p in files}
    offences = [f"plugins/{p.name}:{line} imports {module}" for p in files
                for line, module in _plugin_imports(p) if module != f"slimkit_plugins.{p.stem}"]
    assert not offences, "plugins must not import each other:\n" + "\n".join(offences)


def test_the_import_check_sees_every_form_of_plugin_import(tmp_path):
    source = ("from slimkit_plugins.quantize import replace_layer\nimport slimkit_plugins.prune as pr\n"
              "from slimkit_plugins import lowrank\nfrom . import distill\nfrom .structural import x\n"
              "import importlib\nimportlib.import_module('slimkit_plugins.sws')\n"
              "from slimkit.nn import replace_layer\nimport slimkit.storage\n")
    (tmp_path / "p.py").write_text(source)
    assert sorted(m for _, m in _plugin_imports(tmp_path / "p.py")) == [
        "slimkit_plugins.distill", "slimkit_plugins.lowrank", "slimkit_plugins.prune", "slimkit_plugins.quantize",
        "slimkit_plugins.structural", "slimkit_plugins.sws"]
