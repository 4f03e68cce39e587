"""User models: TorchScript files, python:module:factory with a state dict, and the
refusal to unpickle arbitrary objects unless --trust-checkpoint is given."""
import json
import pickle

import pytest
import torch
import torch.nn as nn

from conftest import cli, run_slimkit
from slimkit.errors import UserError
from slimkit.modelio import load_state_dict, load_torchscript

FACTORY = '''
import torch.nn as nn

def build(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, num_classes))
'''


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))


def test_torchscript_file_is_rebuilt_exactly(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(4 * 16, 10)).eval()
    path = tmp_path / "m.pt"
    torch.jit.script(model).save(str(path))
    rebuilt = load_torchscript(str(path)).eval()
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(rebuilt(x), model(x))


def test_torchscript_model_compresses(tmp_path):
    path = tmp_path / "m.pt"
    torch.jit.script(mlp()).save(str(path))
    assert cli("compress", "--model", path, "--data", "digits", "--epochs", "1", "--set", "sparsity=0.5",
               "--quiet", "--no-latency", "--out", tmp_path / "o") == 0
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["final"]["sparsity"] >= 0.5 and report["baseline"]["params"] == 64 * 48 + 48 + 48 * 10 + 10


def test_python_factory_with_state_dict(tmp_path):
    (tmp_path / "mymodels.py").write_text(FACTORY)
    weights = tmp_path / "w.pt"
    torch.save(mlp().state_dict(), weights)
    proc = run_slimkit("compress", "--model", "python:mymodels:build", "--weights", weights, "--data", "digits",
                       "--epochs", "1", "--set", "sparsity=0.5", "--quiet", "--no-latency", "--out", tmp_path / "o",
                       env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["baseline"]["params"] == 64 * 48 + 48 + 48 * 10 + 10


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_objects_are_refused_without_trust(tmp_path):
    bad = tmp_path / "evil.pt"
    with open(bad, "wb") as f:
        pickle.dump({"weight": Payload()}, f)
    with pytest.raises(UserError, match="--trust-checkpoint"):
        load_state_dict(str(bad))
