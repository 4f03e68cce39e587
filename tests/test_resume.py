"""Ctrl-C mid-run keeps a checkpoint and no partial outputs; --resume finishes the run
and gives the same model as a run that was never interrupted."""
import json

import torch

from conftest import make_plugin_site, run_slimkit

# Raises KeyboardInterrupt (as Ctrl-C would) at the end of a chosen epoch, once.
INTERRUPTER = '''
import os
from slimkit import hookimpl

@hookimpl
def epoch_finished(stage, epoch, metrics):
    if os.environ.get("INTERRUPT_AT") == f"{stage}:{epoch}":
        raise KeyboardInterrupt
'''

ARGS = ("compress", "--data", "synthetic", "--model", "lenet300", "--baseline-epochs", "2", "--epochs", "4",
        "--method", "prune", "--set", "sparsity=0.8", "--quiet", "--no-latency", "--seed", "5")


def test_interrupt_then_resume_matches_uninterrupted(tmp_path):
    site = make_plugin_site(tmp_path / "site", "slimkit-interrupter", "slimkit_interrupter", INTERRUPTER)
    env = {"PYTHONPATH": str(site)}
    reference = tmp_path / "reference"
    assert run_slimkit(*ARGS, "--out", reference, env=env).returncode == 0

    out = tmp_path / "out"
    first = run_slimkit(*ARGS, "--out", out, env={**env, "INTERRUPT_AT": "prune:2"})
    assert first.returncode == 130, first.stderr
    assert "--resume" in first.stderr and "Traceback" not in first.stderr
    assert not (out / "model.slim").exists() and not (out / "report.json").exists()
    assert any((out / ".work" / "checkpoints").iterdir())

    second = run_slimkit(*ARGS, "--out", out, "--resume", env=env)
    assert second.returncode == 0, second.stderr
    assert not (out / ".work").exists()
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines if l["stage"] == "prune"] == [1, 2, 3, 4]

    got = json.loads((out / "report.json").read_text())
    want = json.loads((reference / "report.json").read_text())
    assert got["final"]["accuracy"] == want["final"]["accuracy"]
    assert got["final"]["nonzero_params"] == want["final"]["nonzero_params"]
    from slimkit import storage
    from slimkit.plugins import get_registry
    a = storage.load_model(out / "model.slim", get_registry()).model.state_dict()
    b = storage.load_model(reference / "model.slim", get_registry()).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_learning_rate_warms_up_linearly_then_follows_a_cosine():
    from slimkit.train import lr_factor, warmup_steps
    assert warmup_steps(2500, 125) == 125          # 5 % of 20 epochs = one epoch
    assert warmup_steps(250, 125) == 12            # 5 % of 2 epochs
    assert warmup_steps(10, 10) == 1               # never zero
    w = warmup_steps(2500, 125)
    assert lr_factor(0, 2500, w) == 1 / 125
    assert lr_factor(61, 2500, w) == 62 / 125
    assert lr_factor(w, 2500, w) == 1.0            # the peak, then the cosine
    assert abs(lr_factor(w + (2500 - w) // 2, 2500, w) - 0.5) < 1e-3
    assert lr_factor(2500, 2500, w) == 0.0 and lr_factor(9999, 2500, w) == 0.0
