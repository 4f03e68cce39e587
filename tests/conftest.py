import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = REPO.parent / "shared" / "data" / "mnist"


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """One baseline cache for the whole session, never the user's ~/.cache."""
    cache = tmp_path_factory.mktemp("slimkit-cache")
    old = os.environ.get("SLIMKIT_CACHE")
    os.environ["SLIMKIT_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("SLIMKIT_CACHE", None)
    else:
        os.environ["SLIMKIT_CACHE"] = old


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread for in-process tests: the suite runs on 2 shared cores, where
    OpenMP threads spinning against each other (and against subprocess tests) cost far
    more than they gain on these small models. Tests about threading set their own."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def fresh_registry():
    """Reload plugins after the test (tests may register extra plugins)."""
    from slimkit.plugins import set_registry

    set_registry(None)
    yield
    set_registry(None)


def run_slimkit(*args, env=None, cwd=None, timeout=600):
    """Run the real console entry point in a subprocess; returns CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "slimkit", *map(str, args)], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=timeout)


def cli(*args):
    """Run the CLI in-process; returns the exit code (0 when it returned normally)."""
    from slimkit.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return exc.code
    return 0


def make_plugin_site(site, dist_name: str, module_name: str, source: str, entry_name: str | None = None):
    """Lay out a plugin distribution as pip would (a module plus a .dist-info with an entry
    point in group ``slimkit``) under ``site``; put ``site`` on PYTHONPATH to use it."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module_name}.py").write_text(source)
    info = site / f"{dist_name.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[slimkit]\n{entry_name or dist_name} = {module_name}\n")
    return site


def write_plugin_project(root, dist_name: str, module_name: str, source: str, entry_name: str | None = None):
    """A plugin project as its author would write it: pyproject.toml (with the ``slimkit``
    entry point) and one module. Install it with :func:`pip_install_target`."""
    root.mkdir(parents=True)
    (root / f"{module_name}.py").write_text(source)
    (root / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=64"]\nbuild-backend = "setuptools.build_meta"\n\n'
        f'[project]\nname = "{dist_name}"\nversion = "1.0"\n\n'
        f'[tool.setuptools]\npy-modules = ["{module_name}"]\n\n'
        f'[project.entry-points.slimkit]\n"{entry_name or dist_name}" = "{module_name}"\n')
    return root


def pip_install_target(projects, target, scratch):
    """Install plugin projects for real (pip, no network, no dependencies) into ``target``;
    each is copied to ``scratch`` first so that the build leaves the source tree clean.
    Put ``target`` on PYTHONPATH (see :func:`pythonpath_with`) to use them."""
    import shutil

    copies = []
    for i, project in enumerate(projects):
        copies.append(Path(scratch) / f"{i}-{Path(project).name}")
        shutil.copytree(project, copies[-1])
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--no-index", "--disable-pip-version-check", "--target", str(target), *map(str, copies)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return Path(target)


def pythonpath_with(*dirs) -> dict:
    """An environment for run_slimkit: ``dirs`` first, then the PYTHONPATH this run has."""
    return {"PYTHONPATH": os.pathsep.join([*map(str, dirs), *filter(None, [os.environ.get("PYTHONPATH")])])}


def stage_context(stage, bundle, tmp_path, *, epochs=1, dist=None, trainer=None):
    """A StageContext as the pipeline builds one (CPU, seed 0, batch 64, SGD), for calling a
    method's ``apply`` directly; what the method logs is kept in ``ctx.logs``."""
    import torch

    from slimkit.api import DistInfo, StageContext
    from slimkit.progress import Reporter
    from slimkit.train import Trainer

    dist = dist or DistInfo()
    trainer = trainer or Trainer(device=torch.device("cpu"), dist=dist, seed=0, batch_size=64,
                                 reporter=Reporter(False))
    logs = []
    ctx = StageContext(stage=stage, data=bundle, device=torch.device("cpu"), dist=dist, out_dir=tmp_path,
                       seed=0, epochs=epochs, lr=None, batch_size=64, optimizer="sgd", log=logs.append,
                       _trainer=trainer)
    ctx.logs = logs
    return ctx


def compress_once(tmp_path_factory, name: str, args) -> Path:
    """Run ``slimkit compress ARGS --out DIR`` in-process (for a module-scoped fixture) and return DIR."""
    out = tmp_path_factory.mktemp(name) / "out"
    assert cli(*args, "--out", out) == 0
    return out
