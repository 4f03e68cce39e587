"""For every method: the accuracy in report.json is what `slimkit evaluate` measures on
the written model.slim (the artifact, not the model in memory, is what is reported)."""
import json

import pytest

from conftest import cli

VGG = ("--model", "vgg11", "--model-opt", "width=0.125")
CASES = {
    "prune": (*VGG, "--set", "sparsity=0.8"),
    "filter-prune": (*VGG, "--set", "ratio=0.5"),
    "lowrank": (*VGG, "--set", "ratio=0.3"),
    "distill": (*VGG, "--set", "width=0.0625"),
    "structural": (*VGG, "--set", "block=3", "--set", "init=mean"),
    "layer-removal": (*VGG,),
    "quantize": ("--model", "lenet300"),
    "sws": ("--model", "lenet300", "--epochs", "2"),
}


def test_every_method_has_a_case():
    from slimkit.plugins import get_registry

    assert set(get_registry().methods) <= set(CASES)


@pytest.mark.parametrize("method", sorted(CASES))
def test_evaluate_reproduces_the_report(method, tmp_path, capsys):
    out = tmp_path / "o"
    args = CASES[method]
    epochs = () if "--epochs" in args else ("--epochs", "1")
    assert cli("compress", "--data", "digits", "--baseline-epochs", "3", *epochs, "--method", method, *args,
               "--quiet", "--no-latency", "--out", out) == 0
    report = json.loads((out / "report.json").read_text())
    capsys.readouterr()
    assert cli("evaluate", out / "model.slim", "--json") == 0
    measured = json.loads(capsys.readouterr().out)
    assert measured["accuracy"] == report["final"]["accuracy"]
    assert report["final"]["size_bytes"] == (out / "model.slim").stat().st_size
