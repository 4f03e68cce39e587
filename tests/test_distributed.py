"""torchrun with 2 CPU processes (gloo): one report, and the same masks on both ranks."""
import json
import os
import subprocess
import sys

import pytest

from conftest import make_plugin_site

# A method that gathers a digest of every rank's masks into the report, through the plugin API.
MASK_DIGEST = '''
import hashlib
import torch
import torch.distributed as dist
from slimkit import hookimpl
from slimkit.api import Method

class MaskDigest(Method):
    name = "mask-digest"
    summary = "Record a digest of each rank's pruning masks (test plugin)."

    def apply(self, model, ctx, opts):
        h = hashlib.sha256()
        for name, buf in model.named_buffers():
            if name.endswith("weight_mask"):
                h.update(name.encode()); h.update(buf.cpu().numpy().tobytes())
        digests = [None] * ctx.dist.world_size
        dist.all_gather_object(digests, (ctx.dist.rank, h.hexdigest()))
        ctx.record(mask_digests=digests)
        return model

@hookimpl
def register_methods(register):
    register(MaskDigest())
'''


@pytest.mark.slow
def test_torchrun_two_processes_one_report_equal_masks(tmp_path):
    site = make_plugin_site(tmp_path / "site", "slimkit-mask-digest", "slimkit_mask_digest", MASK_DIGEST,
                            entry_name="mask-digest")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "slimkit",
         "compress", "--data", "synthetic", "--model", "lenet300", "--baseline-epochs", "2", "--epochs", "2",
         "--method", "prune", "--method", "mask-digest", "--set", "sparsity=0.8", "--out", out, "--quiet",
         "--no-latency", "--seed", "3"],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["baseline.slim", "metrics.jsonl", "model.slim", "report.html",
                                                     "report.json", "training_curves.png"]
    report = json.loads((out / "report.json").read_text())
    assert report["world_size"] == 2
    digests = report["stages"][1]["mask_digests"]
    assert sorted(r for r, _ in digests) == [0, 1]
    assert digests[0][1] == digests[1][1]
    assert report["final"]["sparsity"] >= 0.8
    # each epoch is logged once (by rank 0), not once per rank
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(l["stage"], l["epoch"]) for l in lines] == [("baseline", 1), ("baseline", 2), ("prune", 1), ("prune", 2)]


@pytest.mark.slow
def test_torchrun_sensitivity_shards_the_cells_and_equals_one_process(tmp_path):
    """Two ranks compute alternate cells; the gathered table equals a single process's."""
    common = ["sensitivity", "--data", "synthetic", "--model", "lenet300", "--baseline-epochs", "1", "--levels",
              "0.5,0.9,0.99", "--quiet", "--seed", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                          "slimkit", *common, "--out", tmp_path / "two"], capture_output=True, text=True, env=env,
                         timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "slimkit", *common, "--out", tmp_path / "one"], capture_output=True,
                         text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    a = json.loads((tmp_path / "two" / "sensitivity.json").read_text())
    b = json.loads((tmp_path / "one" / "sensitivity.json").read_text())
    assert a["accuracy"] == b["accuracy"] and a["cells_computed"] == b["cells_computed"] == 9
