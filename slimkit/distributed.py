"""torchrun support: one process per rank, DDP over gloo (CPU) or nccl (GPU).

Under torchrun the environment carries RANK, WORLD_SIZE and LOCAL_RANK; slimkit
initialises the process group from it. Only rank 0 prints and writes files;
every rank trains on its own shard of each batch stream.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from slimkit.api import DistInfo


def ranks_use_gpus() -> bool:
    """Whether each process of this node gets a GPU of its own (cuda:LOCAL_RANK).

    With more processes on the node (torchrun's LOCAL_WORLD_SIZE) than visible GPUs, two
    ranks would share a GPU, which NCCL refuses, or ask for one that does not exist
    (cuda:1 on a one-GPU machine); then every rank trains on the CPU over gloo instead,
    and rank 0 says so once (see :func:`setup`).
    """
    if not torch.cuda.is_available():
        return False
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1")) <= torch.cuda.device_count()


def setup() -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if ranks_use_gpus() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        elif torch.cuda.is_available() and rank == 0:
            import sys

            print(f"slimkit: {os.environ.get('LOCAL_WORLD_SIZE')} processes on this node but "
                  f"{torch.cuda.device_count()} GPU(s): training on the CPU over gloo; start at most "
                  f"{torch.cuda.device_count()} process(es) per node to train on the GPUs", file=sys.stderr)
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_object(info: DistInfo, obj):
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(info: DistInfo, values: list[float]) -> list[float]:
    if not info.enabled:
        return values
    # NCCL reduces only GPU tensors (gloo both)
    t = torch.tensor(values, dtype=torch.float64, device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


def device_for(info: DistInfo) -> torch.device:
    if ranks_use_gpus():
        return torch.device("cuda", info.local_rank)
    return torch.device("cpu")
