"""``slimkit info``: what is in a .slim file, layer by layer, and what it costs."""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import torch
import torch.nn as nn
from rich.table import Table
from safetensors import safe_open

from slimkit import storage
from slimkit.export import dense_model
from slimkit.measure import measure_latency, model_stats
from slimkit.models import count_macs
from slimkit.plugins import get_registry

# Bytes per element, by the dtype names safetensors uses.
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
             "U16": 2, "U32": 4, "U64": 8}


def stored_bytes(path: Path, header: dict) -> dict[str, int]:
    """Bytes of tensor data each state-dict key occupies in the file (all its parts)."""
    sizes: dict[str, int] = {}
    with safe_open(str(path), framework="pt") as f:
        for key, entry in header["tensors"].items():
            total = 0
            for part in entry.get("parts", []):
                sl = f.get_slice(f"{key}::{part}")
                total += math.prod(sl.get_shape()) * _ITEMSIZE[sl.get_dtype().upper()]
            sizes[key] = total
    return sizes


def describe_model(path, *, latency: bool = False, batch_size: int = 1) -> dict:
    registry = get_registry()
    loaded = storage.load_model(path, registry)
    model, header = loaded.model, loaded.header
    shape = tuple(header["input_shape"])
    macs = count_macs(model, shape, layers=True)
    per_key = stored_bytes(loaded.path, header)
    layers = []
    for name, module in model.named_modules():
        own = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
        if not own or isinstance(module, nn.Sequential):
            continue
        prefix = f"{name}." if name else ""
        params = sum(p.numel() for _, p in module.named_parameters(recurse=False))
        weight = getattr(module, "weight", None)
        mask = getattr(module, "weight_mask", None)
        nonzero = 0
        for pname, p in module.named_parameters(recurse=False):
            eff = p * mask if pname == "weight" and isinstance(mask, torch.Tensor) else p
            nonzero += int(torch.count_nonzero(eff))
        codecs = sorted({header["tensors"][prefix + k]["codec"] for k, _ in own if prefix + k in header["tensors"]})
        row = {"layer": name or "(model)", "type": type(module).__name__,
               "shape": list(weight.shape) if isinstance(weight, torch.Tensor) else None,
               "params": params, "nonzero": nonzero,
               "macs": macs["layers"].get(name, {}).get("dense", 0),
               "nonzero_macs": macs["layers"].get(name, {}).get("nonzero", 0),
               "bytes": sum(per_key.get(prefix + k, 0) for k, _ in own),
               "codec": ",".join(c for c in codecs if c not in storage.DERIVED)}
        sparse_weight = getattr(module, "sparse_weight", None)
        if sparse_weight is not None:  # --sparse-inference layer: which kernel it runs, and why
            row["runs_sparse"] = bool(sparse_weight.uses_sparse)
            row["kernel_reason"] = sparse_weight.reason
        layers.append(row)
    stats = model_stats(model, shape)
    with tempfile.TemporaryDirectory() as tmp:  # the same model stored dense fp32: the reference size
        dense_twin = dense_model(model)  # masked and CSR layers decoded to plain Conv2d/Linear
        dense_bytes = storage.save_model(Path(tmp) / "dense.slim", dense_twin, registry, info={
            k: header[k] for k in ("model", "input_shape", "num_classes", "data") if k in header})
    desc = {"file": str(loaded.path), "model": header.get("model"), "input_shape": list(shape),
            "num_classes": header.get("num_classes"), "data": header.get("data", {}).get("description"),
            "layers": layers, **stats, "size_bytes": loaded.size_bytes, "tensor_bytes": sum(per_key.values()),
            "dense_fp32_bytes": dense_bytes, "ratio_to_dense_fp32": dense_bytes / loaded.size_bytes}
    from slimkit.runtime.engines import engine_advice

    desc["engines"] = engine_advice(desc)  # which engine makes this model faster (slimkit's runtime / ONNX Runtime)
    if latency:
        # A model with sparse-inference layers is timed side by side (interleaved, one run)
        # with its dense twin, the same weights decoded to plain Conv2d/Linear: the speed-up
        # the sparse path buys on this machine.
        timed = {"model": model}
        if any(r.get("runs_sparse") for r in layers):
            timed["dense"] = dense_twin
        lat = measure_latency(timed, shape, batch_size=batch_size)
        desc["latency_ms"] = lat["model"]
        desc["latency_note"] = (f"median of 50 forward passes at batch {batch_size} after 10 warm-up, "
                                f"{torch.get_num_threads()} threads, cpu")
        if "dense" in lat:
            desc["latency_dense_ms"] = lat["dense"]
            desc["sparse_speedup"] = lat["dense"] / lat["model"]
    return desc


def print_description(desc: dict, console) -> None:
    table = Table(title=f"{desc['file']}: {desc['model']}, input {tuple(desc['input_shape'])}, "
                        f"{desc['num_classes']} classes")
    for col in ("layer", "type", "shape", "params", "non-zero", "MACs", "non-zero MACs", "bytes", "stored as"):
        table.add_column(col, justify="left" if col in ("layer", "type", "shape", "stored as") else "right")
    for r in desc["layers"]:
        stored = r["codec"] + (" (sparse kernel)" if r.get("runs_sparse") else
                               " (dense kernel)" if "runs_sparse" in r else "")
        table.add_row(r["layer"], r["type"], "x".join(map(str, r["shape"])) if r["shape"] else "",
                      f"{r['params']:,}", f"{r['nonzero']:,}", f"{r['macs']:,}", f"{r['nonzero_macs']:,}",
                      f"{r['bytes']:,}", stored)
    table.add_row("total", "", "", f"{desc['params']:,}", f"{desc['nonzero_params']:,}", f"{desc['macs']:,}",
                  f"{desc['nonzero_macs']:,}", f"{desc['tensor_bytes']:,}", "", end_section=True)
    console.print(table)
    console.print(f"file: {desc['size_bytes']:,} bytes (tensors {desc['tensor_bytes']:,} + header and index "
                  f"{desc['size_bytes'] - desc['tensor_bytes']:,}); dense fp32: {desc['dense_fp32_bytes']:,} bytes; "
                  f"{desc['ratio_to_dense_fp32']:.2f}x smaller; sparsity {100 * desc['sparsity']:.2f} %")
    if desc.get("engines"):
        console.print(f"engines: {desc['engines']}", markup=False)
    if "latency_ms" in desc:
        console.print(f"latency: {desc['latency_ms']:.3f} ms ({desc['latency_note']})")
        if "latency_dense_ms" in desc:
            console.print(f"dense twin (same weights as plain Conv2d/Linear, timed interleaved with it): "
                          f"{desc['latency_dense_ms']:.3f} ms; sparse path {desc['sparse_speedup']:.2f}x faster")
