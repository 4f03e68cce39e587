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

from conftest import REPO, cli, pip_install_target, pythonpath_with, run_slimkit, write_plugin_project

EXAMPLE = REPO / "docs" / "example-plugin"


BROKEN_AT_IMPORT = "raise ImportError('needs libfoo')\n"

# Registers a method under a built-in's name (and one of its own): the clash must keep
# the built-in `prune` and name both distributions; `evil-extra` is still registered.
COLLIDES_WITH_PRUNE = """
from slimkit import hookimpl
from slimkit.api import Method


class EvilPrune(Method):
    name = "prune"
    summary = "not the real prune"


class EvilExtra(Method):
    name = "evil-extra"
    summary = "a method that does not clash"


@hookimpl
def register_methods(register):
    register(EvilPrune())
    register(EvilExtra())
"""

# Raises inside its registration hook after registering one method: nothing of it is kept.
BROKEN_AT_REGISTRATION = """
from slimkit import hookimpl
from slimkit.api import Method


class HalfDone(Method):
    name = "half-done"


@hookimpl
def register_methods(register):
    register(HalfDone())
    raise RuntimeError("registry of libbar unreachable")
"""


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    """docs/example-plugin and three misbehaving plugins, installed for real by pip into one
    directory (one pip run: a build costs seconds)."""
    tmp = tmp_path_factory.mktemp("plugin-site")
    projects = [EXAMPLE,
                write_plugin_project(tmp / "broken", "slimkit-broken-import", "slimkit_broken_import",
                                     BROKEN_AT_IMPORT, "broken-import"),
                write_plugin_project(tmp / "evil", "slimkit-evil-prune", "slimkit_evil_prune",
                                     COLLIDES_WITH_PRUNE, "evil-prune"),
                write_plugin_project(tmp / "halfdone", "slimkit-half-done", "slimkit_half_done",
                                     BROKEN_AT_REGISTRATION, "half-done")]
    scratch = tmp / "scratch"
    scratch.mkdir()
    return pip_install_target(projects, tmp / "site", scratch)


@pytest.mark.slow
def test_hook_register_methods(plugin_site, tmp_path):
    """A third-party package (docs/example-plugin, installed by pip), found only through its
    entry point, adds a method."""
    env = pythonpath_with(plugin_site)
    methods = json.loads(run_slimkit("methods", "--json", env=env).stdout)
    names = {m["name"]: m for m in methods}
    assert "random-prune" in names and names["random-prune"]["plugin"] == "random-prune"
    options = {o["name"]: o for o in names["random-prune"]["options"]}
    assert set(options) == {"sparsity", "epochs", "lr"}  # epochs and lr: the engine's common options
    assert [n for n, o in options.items() if o["common"]] == ["epochs", "lr"] and options["epochs"]["default"] is None
    plugins = json.loads(run_slimkit("plugins", "--json", env=env).stdout)
    row = next(p for p in plugins if p["plugin"] == "random-prune")
    assert row["distribution"] == "slimkit-random-prune" and row["version"] == "0.1.0"
    assert row["status"] == "loaded" and "method:random-prune" in row["provides"]
    # and it runs through the CLI like a built-in method
    out = tmp_path / "out"
    proc = run_slimkit("compress", "--data", "synthetic", "--method", "random-prune", "--set", "sparsity=0.75",
                       "--epochs", "1", "--baseline-epochs", "2", "--out", out, "--quiet", "--no-latency", env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["methods"][0]["name"] == "random-prune"
    assert report["final"]["sparsity"] == pytest.approx(0.75, abs=1e-3)


@pytest.mark.slow
def test_broken_and_clashing_plugins_leave_every_command_working(plugin_site, tmp_path):
    env = pythonpath_with(plugin_site)
    proc = run_slimkit("plugins", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    rows = {r["plugin"]: r for r in json.loads(proc.stdout)}
    broken = rows["broken-import"]
    assert broken["status"] == "failed" and broken["distribution"] == "slimkit-broken-import"
    assert broken["error"] == "import failed: ImportError: needs libfoo"
    half = rows["half-done"]
    assert half["status"] == "failed" and "RuntimeError: registry of libbar unreachable" in half["error"]
    assert half["provides"] == []  # what it registered before raising is dropped
    evil = rows["evil-prune"]
    assert evil["status"] == "loaded" and evil["provides"] == ["method:evil-extra"]
    (clash,) = evil["conflicts"]
    assert "'prune'" in clash and "slimkit-evil-prune" in clash and "(slimkit)" in clash
    assert rows["prune"]["provides"] == ["method:prune"] and rows["prune"]["distribution"] == "slimkit"

    table = run_slimkit("plugins", env=env)
    assert table.returncode == 0 and "Traceback" not in table.stderr
    assert "slimkit-broken-import" in table.stdout and "ImportError: needs libfoo" in table.stdout
    doctor = run_slimkit("doctor", env=env)
    assert doctor.returncode == 0, doctor.stderr
    assert "slimkit-broken-import" in doctor.stdout and "needs libfoo" in doctor.stdout
    assert "slimkit-half-done" in doctor.stdout and "slimkit-evil-prune" in doctor.stdout
    methods = {m["name"]: m for m in json.loads(run_slimkit("methods", "--json", env=env).stdout)}
    assert methods["prune"]["plugin"] == "prune" and "half-done" not in methods

    out = tmp_path / "out"
    proc = run_slimkit("compress", "--data", "synthetic", "--method", "prune", "--set", "sparsity=0.5",
                       "--epochs", "1", "--baseline-epochs", "1", "--out", out, "--quiet", "--no-latency", env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["methods"][0]["options"]["sparsity"] == 0.5  # the built-in prune ran
    for args in (("info", out / "model.slim"), ("evaluate", out / "model.slim"), ("--help",)):
        proc = run_slimkit(*args, env=env)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, (args, proc.stderr)


@pytest.mark.slow
def test_disabled_plugins_are_not_imported_and_are_shown(plugin_site):
    env = {**pythonpath_with(plugin_site), "SLIMKIT_DISABLE_PLUGINS": "broken-import, evil-prune,half-done"}
    proc = run_slimkit("plugins", "--json", env=env)
    assert proc.returncode == 0 and "failed" not in proc.stderr and "ignored" not in proc.stderr, proc.stderr
    rows = {r["plugin"]: r for r in json.loads(proc.stdout)}
    for name in ("broken-import", "evil-prune", "half-done"):
        assert rows[name]["status"] == "disabled" and rows[name]["error"] is None and not rows[name]["conflicts"]
    assert rows["random-prune"]["status"] == "loaded"
    doctor = run_slimkit("doctor", env=env)
    assert "disabled   evil-prune (slimkit-evil-prune)" in doctor.stdout


def test_broken_plugin_warns_once_and_others_work(tmp_path):
    site = tmp_path / "site"
    (site / "broken_plugin").mkdir(parents=True)
    (site / "broken_plugin" / "__init__.py").write_text(BROKEN_AT_IMPORT)
    info = site / "broken_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[slimkit]\nbroken = broken_plugin\n")
    proc = run_slimkit("methods", env={"PYTHONPATH": str(site)})
    assert proc.returncode == 0
    warnings = [l for l in proc.stderr.splitlines() if "broken" in l and "failed to load" in l]
    assert len(warnings) == 1, proc.stderr
    assert "prune" in proc.stdout


class ClashingModel:
    """Registers a model under a zoo name, a nameless data set, and a method of its own."""

    @hookimpl
    def register_models(self, register):
        register("lenet300", lambda shape, classes: nn.Linear(1, 1), "not the zoo's")

    @hookimpl
    def register_datasets(self, register):
        register("", lambda argument, seed: None)

    @hookimpl
    def register_methods(self, register):
        class Mine(Method):
            name = "mine"

        register(Mine())


class RaisesInRegistration:
    @hookimpl
    def register_models(self, register):
        register("half", lambda shape, classes: nn.Linear(1, 1))
        raise KeyError("boom")


def test_registration_clash_and_failure_are_recorded_not_raised():
    from slimkit.models.lenet import LeNet300

    with pytest.warns(UserWarning):
        registry = load_registry(extra_plugins=[ClashingModel(), RaisesInRegistration()])
    assert isinstance(registry.build_model("lenet300", (1, 28, 28), 10), LeNet300)  # the zoo's, registered first
    assert "mine" in registry.methods and "" not in registry.datasets and "half" not in registry.models
    clash = registry.plugin_info("ClashingModel")
    assert len(clash.conflicts) == 2 and "model 'lenet300'" in clash.conflicts[0]
    assert "'slimkit.models.zoo' (slimkit (built in))" in clash.conflicts[0]
    failed = registry.plugin_info("RaisesInRegistration")
    assert failed.status == "failed" and failed.error == "register_models raised KeyError: 'boom'"
    assert registry.pm.get_plugin("RaisesInRegistration") is None  # and it receives no events
    assert any("RaisesInRegistration" in line and "boom" in line for line in registry.problems())


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
    # Without the plugin the class is unknown: the model is saved as its fx graph
    # (slimkit.nn.graphspec) and loads back, with the same outputs, with no plugin at all.
    storage.save_model(tmp_path / "n.slim", model, load_registry(), info=info)
    graph = storage.load_model(tmp_path / "n.slim", load_registry()).model
    assert not isinstance(graph, TinyNet)
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(graph.eval()(x), model.eval()(x), rtol=0, atol=0)




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
