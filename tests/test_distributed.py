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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _without_timings(obj):
    """A report without what differs between any two runs of the same settings: wall-clock
    times, and the paths and command line that name the run's own --out and cache."""
    if isinstance(obj, dict):
        return {k: _without_timings(v) for k, v in obj.items()
                if k not in ("seconds", "cache_file", "command", "out", "cache_dir")}
    if isinstance(obj, list):
        return [_without_timings(v) for v in obj]
    return obj


@pytest.mark.slow
def test_two_node_torchrun_equals_one_node_two_processes(tmp_path):
    """`--nnodes 2 --nproc_per_node 1` with a c10d rendezvous, both "nodes" on this machine, gives the
    same weights, masks and report as `--nnodes 1 --nproc_per_node 2`."""
    import torch

    from slimkit import storage
    from slimkit.plugins import get_registry

    def compress(out, cache):
        return ["-m", "slimkit", "compress", "--data", "synthetic", "--model", "lenet300", "--model-opt", "width=0.25",
                "--baseline-epochs", "1", "--epochs", "1", "--method", "prune", "--set", "sparsity=0.8",
                "--out", str(out), "--quiet", "--no-latency", "--seed", "3"], {**os.environ, "OMP_NUM_THREADS": "1",
                                                                               "SLIMKIT_CACHE": str(cache)}

    run = [sys.executable, "-m", "torch.distributed.run"]
    args, env = compress(tmp_path / "one", tmp_path / "cache-one")
    one = subprocess.run([*run, "--standalone", "--nnodes", "1", "--nproc_per_node", "2", *args], env=env,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    port = _free_port()
    args, env = compress(tmp_path / "two", tmp_path / "cache-two")
    nodes = [subprocess.Popen([*run, "--nnodes", "2", "--nproc_per_node", "1", "--rdzv-backend", "c10d",
                               "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "two-nodes", *args], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for node in nodes:
        _, err = node.communicate(timeout=600)
        assert node.returncode == 0, err[-3000:]
    a, b = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("one", "two"))
    assert a["world_size"] == b["world_size"] == 2
    assert _without_timings(a) == _without_timings(b)
    registry = get_registry()
    for name in ("model.slim", "baseline.slim"):
        sa, sb = (storage.load_model(tmp_path / d / name, registry).model.state_dict() for d in ("one", "two"))
        assert sa.keys() == sb.keys()
        assert any(k.endswith("weight_mask") for k in sa) or name == "baseline.slim"
        for key in sa:
            assert torch.equal(sa[key], sb[key]), (name, key)


def test_more_local_ranks_than_gpus_train_on_the_cpu(monkeypatch):
    """torchrun --nproc_per_node 2 on a one-GPU machine: no rank asks for cuda:1 (which does
    not exist) or shares a GPU under NCCL; all of them train on the CPU over gloo."""
    import torch

    from slimkit import distributed
    from slimkit.api import DistInfo

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert not distributed.ranks_use_gpus()
    assert distributed.device_for(DistInfo(rank=1, world_size=2, local_rank=1)).type == "cpu"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert distributed.ranks_use_gpus()
    assert distributed.device_for(DistInfo(rank=0, world_size=2, local_rank=0)) == torch.device("cuda", 0)
