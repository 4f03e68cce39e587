"""The native kernels change speed, not results: a pruning run of a conv net (trained
through masked_conv2d) gives the same curve and weights with SLIMKIT_KERNELS=reference
as with the native kernels, same seed."""
import json

import pytest
import torch

from conftest import run_slimkit
from slimkit import storage
from slimkit.plugins import get_registry

ARGS = ("compress", "--model", "lenet5", "--data", "digits", "--baseline-epochs", "2", "--epochs", "2",
        "--method", "prune", "--set", "sparsity=0.8", "--quiet", "--no-latency", "--seed", "4")


def test_reference_and_native_give_the_same_pruning_run(tmp_path):
    from slimkit.ops import backend

    if not backend.native_available():
        pytest.skip("native kernels unavailable: " + backend.backend_name())
    runs = {}
    for kernels in ("reference", "native"):
        out = tmp_path / kernels
        proc = run_slimkit(*ARGS, "--out", out, env={"SLIMKIT_KERNELS": kernels, "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stderr
        metrics = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
        runs[kernels] = ([m["train_loss"] for m in metrics if m["stage"] == "prune"],
                         storage.load_model(out / "model.slim", get_registry()).model.state_dict())
    (loss_ref, w_ref), (loss_nat, w_nat) = runs["reference"], runs["native"]
    assert loss_nat == pytest.approx(loss_ref, rel=1e-4)
    for key in w_ref:
        if w_ref[key].is_floating_point():
            torch.testing.assert_close(w_nat[key], w_ref[key], rtol=1e-3, atol=1e-4)
        else:
            assert torch.equal(w_nat[key], w_ref[key]), key
    masks = [k for k in w_ref if k.endswith("weight_mask")]
    assert masks and all(torch.equal(w_nat[k], w_ref[k]) for k in masks)
