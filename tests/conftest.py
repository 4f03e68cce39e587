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
