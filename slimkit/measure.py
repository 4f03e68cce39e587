"""Numbers for reports: parameters, non-zeros, sparsity, MACs, the reference size and latency.

The reference size of a model is the bytes of the same model written dense fp32
(:func:`write_dense_fp32`): ``compression_ratio`` in report.json and ``slimkit info``'s
ratio both divide it by the bytes of the file.

Latency is the median of timed forward passes after warm-up, with every model
under comparison timed in the same run, interleaved, so that load on the machine
hits them alike.
"""
from __future__ import annotations

import random
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import torch
import torch.nn as nn

from slimkit.models import count_macs, count_nonzero, count_params
from slimkit.nn import effective_weight, eval_mode


def prunable_sparsity(model: nn.Module) -> float:
    """Fraction of exact zeros among the weights of conv and linear layers."""
    zeros = total = 0
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w = effective_weight(m)
            zeros += int((w == 0).sum())
            total += w.numel()
        elif callable(getattr(m, "weight_counts", None)):  # weight held in buffers (sparse conv / linear)
            n, nonzero = m.weight_counts()
            zeros += n - nonzero
            total += n
    return zeros / total if total else 0.0


def model_stats(model: nn.Module, input_shape) -> dict:
    macs = count_macs(model, tuple(input_shape))
    return {
        "params": count_params(model),
        "nonzero_params": count_nonzero(model),
        "sparsity": prunable_sparsity(model),
        "macs": macs["dense"],
        "nonzero_macs": macs["nonzero"],
    }


def write_dense_fp32(path, model: nn.Module, registry, *, info: dict) -> int:
    """Write ``model`` as the reference artifact: masked and CSR layers decoded to plain
    Conv2d/Linear, float32, every tensor with the ``dense`` codec. Returns the file's bytes."""
    from slimkit import storage
    from slimkit.export import dense_model

    twin = dense_model(model).float()
    plan = {key: ("dense", {}) for key in twin.state_dict()}
    return storage.save_model(path, twin, registry, info=info, plan=plan)


def dense_fp32_bytes(model: nn.Module, registry, *, info: dict) -> int:
    """Bytes of :func:`write_dense_fp32` of ``model`` (written to a temporary directory)."""
    with tempfile.TemporaryDirectory() as tmp:
        return write_dense_fp32(Path(tmp) / "dense.slim", model, registry, info=info)


#: Defaults of :func:`measure_latency`: forward passes timed per model, and untimed ones before.
LATENCY_REPEATS = 50
LATENCY_WARMUP = 10


def latency_note(*, batch_size: int, repeats: int, warmup: int, device, models: int) -> str:
    """How a latency was measured, from the arguments actually given to :func:`measure_latency`."""
    together = ", interleaved with the other model(s)" if models > 1 else ""
    return (f"median of {repeats} forward passes at batch {batch_size} after {warmup} warm-up{together}, "
            f"{torch.get_num_threads()} threads, {device}")


@torch.no_grad()
def measure_latency(models: dict[str, nn.Module], input_shape, *, batch_size: int = 1,
                    warmup: int = LATENCY_WARMUP, repeats: int = LATENCY_REPEATS, device="cpu") -> dict[str, float]:
    """Median milliseconds per forward pass of each model (a module, or any callable such as a
    :class:`~slimkit.runtime.RuntimeModel`), timed interleaved in one run."""
    x = torch.randn(batch_size, *input_shape, device=device)
    cuda = torch.device(device).type == "cuda"
    times = {name: [] for name in models}
    with ExitStack() as stack:  # eval mode while timing; every module's own mode restored after
        for m in models.values():
            if isinstance(m, nn.Module):  # a compiled runtime model is a plain callable
                stack.enter_context(eval_mode(m))
            for _ in range(warmup):
                m(x)
        # a shuffled order every round (fixed seed): in a fixed order each model always follows
        # the same neighbour, whose cache footprint it inherits, and that bias lands on one side
        # of the comparison (slimkit.bench.timing.interleaved_times does the same)
        shuffle, names = random.Random(0).shuffle, list(models)
        for _ in range(repeats):
            shuffle(names)
            for name in names:
                m = models[name]
                if cuda:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                m(x)
                if cuda:
                    torch.cuda.synchronize()
                times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(v) for name, v in times.items()}


def epochs_to_fraction(accuracies, fraction: float = 0.95) -> int | None:
    """Rate of convergence as in Deep Net Triage (Nowak & Corso 2018): the first epoch
    (1-based) whose accuracy reaches ``fraction`` of the best one (the epoch the training
    loop restores as final). ``None`` entries are skipped; None for an empty history."""
    values = [a for a in accuracies if a is not None]
    if not values:
        return None
    target = fraction * max(values)
    return next(i for i, a in enumerate(accuracies, start=1) if a is not None and a >= target)
