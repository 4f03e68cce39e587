"""``slimkit info``: what is in a .slim file, layer by layer, and what it costs."""
from __future__ import annotations

import math

from pathlib import Path

import torch
import torch.nn as nn
from rich.table import Table
from safetensors import safe_open

from slimkit import storage
from slimkit.export import dense_model
from slimkit.kernel_plan import REPORTED_BATCH_SIZES, kernel_plan
from slimkit.errors import UserError
from slimkit.measure import (LATENCY_REPEATS, LATENCY_WARMUP, dense_fp32_bytes, latency_note, measure_latency,
                             model_stats)
from slimkit.models import count_macs
from slimkit.nn.sparse import CSRLayer
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


def _stored_as(module: nn.Module, own_keys: list[str], prefix: str, header: dict) -> str:
    """How the file stores this layer: the weight's codec (with its settings), the CSR buffers
    of a sparse-inference layer, or the codecs of whatever else the layer holds."""
    entries = header["tensors"]
    if callable(getattr(module, "weight_counts", None)) and prefix + "values" in entries:
        dtypes = {k: entries[prefix + k]["dtype"] for k in ("row_ptr", "values") if prefix + k in entries}
        return f"CSR buffers ({dtypes.get('row_ptr', '?')} indices, {dtypes.get('values', '?')} values)"
    weight = entries.get(prefix + "weight")
    if weight is not None and weight["codec"] not in storage.DERIVED:
        meta = ", ".join(f"{k}={v}" for k, v in sorted(weight.get("meta", {}).items())
                         if isinstance(v, (int, str, bool)))
        return weight["codec"] + (f" ({meta})" if meta else "")
    codecs = sorted({entries[prefix + k]["codec"] for k in own_keys if prefix + k in entries})
    return ",".join(c for c in codecs if c not in storage.DERIVED)


def _layer_row(name: str, module: nn.Module, header: dict, macs: dict, per_key: dict) -> dict:
    own = [k for k, _ in module.named_parameters(recurse=False)] + [k for k, _ in module.named_buffers(recurse=False)]
    prefix = f"{name}." if name else ""
    if callable(getattr(module, "weight_counts", None)):  # weight held in CSR buffers: the dense one it stands for
        numel, nonzero = module.weight_counts()
        bias = module._buffers.get("bias")
        shape = list(module.weight_shape)
        params = numel + (bias.numel() if isinstance(bias, torch.Tensor) else 0)
        nonzero += int(torch.count_nonzero(bias)) if isinstance(bias, torch.Tensor) else 0
    else:
        weight, mask = getattr(module, "weight", None), getattr(module, "weight_mask", None)
        shape = list(weight.shape) if isinstance(weight, torch.Tensor) else None
        params = sum(p.numel() for _, p in module.named_parameters(recurse=False))
        nonzero = sum(int(torch.count_nonzero(p * mask if k == "weight" and isinstance(mask, torch.Tensor) else p))
                      for k, p in module.named_parameters(recurse=False))
    return {"layer": name or "(model)", "type": type(module).__name__, "shape": shape, "params": params,
            "nonzero": nonzero, "macs": macs["layers"].get(name, {}).get("dense", 0),
            "nonzero_macs": macs["layers"].get(name, {}).get("nonzero", 0),
            "bytes": sum(per_key.get(prefix + k, 0) for k in own),
            "codec": _stored_as(module, own, prefix, header),
            "codecs": {k: header["tensors"][prefix + k]["codec"] for k in own if prefix + k in header["tensors"]}}


def describe_model(path, *, latency: bool = False, batch_size: int = 1, repeats: int = LATENCY_REPEATS,
                   warmup: int = LATENCY_WARMUP, against=None) -> dict:
    """``against``: another .slim file (the baseline) timed interleaved with this one under ``latency``."""
    registry = get_registry()
    loaded = storage.load_model(path, registry)
    other = None
    if against is not None:
        other = storage.load_model(against, registry)
        if list(other.header.get("input_shape") or []) != list(loaded.header["input_shape"]):
            raise UserError(f"--against {against}: input shape {other.header.get('input_shape')} differs from "
                            f"{path}'s {loaded.header['input_shape']}; give the model it was compressed from")
    model, header = loaded.model, loaded.header
    shape = tuple(header["input_shape"])
    macs = count_macs(model, shape, layers=True)
    per_key = stored_bytes(loaded.path, header)
    batch_sizes = sorted({*REPORTED_BATCH_SIZES, int(batch_size)})
    plan = kernel_plan(model, shape, batch_sizes, macs)
    layers = []
    for name, module in model.named_modules():
        has_own = any(True for _ in module.named_parameters(recurse=False)) or \
            any(True for _ in module.named_buffers(recurse=False))
        if not has_own or isinstance(module, nn.Sequential):
            continue
        row = _layer_row(name, module, header, macs, per_key)
        if name in plan:  # which kernel it runs at each batch size, and why
            row["kernels"] = plan[name]
        if isinstance(module, CSRLayer):
            sw = module.sparse_weight
            row["runs_sparse"], row["kernel_reason"] = bool(sw.uses_sparse), sw.reason
        layers.append(row)
    stats = model_stats(model, shape)
    info = {k: header[k] for k in ("model", "input_shape", "num_classes", "data") if k in header}
    dense_bytes = dense_fp32_bytes(model, registry, info=info)
    desc = {"file": str(loaded.path), "model": header.get("model"), "input_shape": list(shape),
            "num_classes": header.get("num_classes"), "data": header.get("data", {}).get("description"),
            "layers": layers, **stats, "size_bytes": loaded.size_bytes, "tensor_bytes": sum(per_key.values()),
            "dense_fp32_bytes": dense_bytes, "ratio_to_dense_fp32": dense_bytes / loaded.size_bytes,
            "batch_sizes": batch_sizes, "integrity": loaded.integrity}
    if isinstance(header.get("baseline_dense_fp32_bytes"), int):  # written by a compress run
        desc["baseline_dense_fp32_bytes"] = header["baseline_dense_fp32_bytes"]
        desc["ratio_to_baseline"] = header["baseline_dense_fp32_bytes"] / loaded.size_bytes
    from slimkit.runtime.engines import engine_advice

    desc["engines"] = engine_advice(desc)  # which engine makes this model faster (slimkit's runtime / ONNX Runtime)
    if latency:
        desc.update(_latency(model, shape, plan, batch_size=batch_size, repeats=repeats, warmup=warmup,
                             against=other.model if other is not None else None))
        if other is not None:
            desc["against"] = str(other.path)
    return desc


def _latency(model, shape, plan: dict, *, batch_size: int, repeats: int, warmup: int, against=None) -> dict:
    """The model timed alone, or, when it has sparse-capable layers, interleaved in one run with
    its dense twin (the same weights as plain Conv2d/Linear) and, for a model not converted to
    CSR, with its --sparse-inference conversion: what the sparse path buys on this machine.
    ``against`` (a baseline model) joins the same interleaved run."""
    timed = {"model": model}
    if against is not None:
        timed["against"] = against
    if plan:
        timed["dense"] = dense_model(model)
        if not any(isinstance(m, CSRLayer) for m in model.modules()):
            from slimkit.nn.sparse import to_sparse_inference

            converted = dense_model(model)
            to_sparse_inference(converted)
            timed["sparse_inference"] = converted
    # slimkit's runtime (what slimkit.load / slimkit run deploy: BatchNorm folded, one compiled
    # graph) joins the same interleaved run, for the model and for its baseline
    from slimkit.runtime import RuntimeModel

    for name, module in [("model", model), ("against", against)]:
        if module is not None:
            compiled = RuntimeModel(module, shape)
            compiled.prepare(batch_size)
            timed[f"runtime_{name}"] = compiled
    lat = measure_latency(timed, shape, batch_size=batch_size, repeats=repeats, warmup=warmup)
    out = {"latency_ms": lat["model"], "latency": {"batch_size": batch_size, "repeats": repeats, "warmup": warmup,
                                                   "threads": torch.get_num_threads(), "device": "cpu",
                                                   "ms": lat},
           "latency_note": latency_note(batch_size=batch_size, repeats=repeats, warmup=warmup, device="cpu",
                                        models=len(timed))}
    if "dense" in lat:
        out["latency_dense_ms"] = lat["dense"]
        out["sparse_speedup"] = lat["dense"] / lat["model"]
    if "sparse_inference" in lat:
        out["latency_sparse_inference_ms"] = lat["sparse_inference"]
    if "against" in lat:
        out["latency_against_ms"] = lat["against"]
        out["speedup_vs_against"] = lat["against"] / lat["model"]
    out["runtime_latency_ms"] = lat["runtime_model"]
    if "runtime_against" in lat:
        out["runtime_against_ms"] = lat["runtime_against"]
        out["runtime_speedup_vs_against"] = lat["runtime_against"] / lat["runtime_model"]
    return out


def _kernel_text(choice: dict) -> str:
    text = f"{choice['kernel']}: {choice['reason']}"
    if "converted" in choice:
        then = choice["converted"]
        text += f"; once converted (--sparse-inference) {then['kernel']}: {then['reason']}"
    return text


def print_description(desc: dict, console) -> None:
    table = Table(title=f"{desc['file']}: {desc['model']}, input {tuple(desc['input_shape'])}, "
                        f"{desc['num_classes']} classes")
    for col in ("layer", "type", "shape", "params", "non-zero", "MACs", "non-zero MACs", "bytes", "stored as"):
        table.add_column(col, justify="left" if col in ("layer", "type", "shape", "stored as") else "right")
    for r in desc["layers"]:
        table.add_row(r["layer"], r["type"], "x".join(map(str, r["shape"])) if r["shape"] else "",
                      f"{r['params']:,}", f"{r['nonzero']:,}", f"{r['macs']:,}", f"{r['nonzero_macs']:,}",
                      f"{r['bytes']:,}", r["codec"])
    table.add_row("total", "", "", f"{desc['params']:,}", f"{desc['nonzero_params']:,}", f"{desc['macs']:,}",
                  f"{desc['nonzero_macs']:,}", f"{desc['tensor_bytes']:,}", "", end_section=True)
    console.print(table)
    kernels = [r for r in desc["layers"] if "kernels" in r]
    if kernels:
        ktable = Table(title="kernel per call (inference, this machine's backend)")
        ktable.add_column("layer")
        for b in desc["batch_sizes"]:
            ktable.add_column(f"batch {b}", overflow="fold")
        for r in kernels:
            ktable.add_row(r["layer"], *(_kernel_text(r["kernels"][f"batch {b}"]) for b in desc["batch_sizes"]))
        console.print(ktable)
    console.print(f"file: {desc['size_bytes']:,} bytes (tensors {desc['tensor_bytes']:,} + header and index "
                  f"{desc['size_bytes'] - desc['tensor_bytes']:,}); dense fp32: {desc['dense_fp32_bytes']:,} bytes; "
                  f"{desc['ratio_to_dense_fp32']:.2f}x smaller; sparsity {100 * desc['sparsity']:.2f} %")
    console.print(f"integrity: {desc['integrity']}")
    if "ratio_to_baseline" in desc and desc["baseline_dense_fp32_bytes"] != desc["dense_fp32_bytes"]:
        console.print(f"the run's baseline, dense fp32: {desc['baseline_dense_fp32_bytes']:,} bytes; "
                      f"{desc['ratio_to_baseline']:.2f}x smaller (compression_ratio in report.json)")
    if desc.get("engines"):
        console.print(f"engines: {desc['engines']}", markup=False)
    if "latency_ms" in desc:
        console.print(f"latency: {desc['latency_ms']:.3f} ms in PyTorch eager ({desc['latency_note']})")
        if "runtime_latency_ms" in desc:
            line = f"slimkit runtime (slimkit.load, slimkit run): {desc['runtime_latency_ms']:.3f} ms"
            if "runtime_against_ms" in desc:
                line += (f"; the baseline in it {desc['runtime_against_ms']:.3f} ms; this model is "
                         f"{desc['runtime_speedup_vs_against']:.2f}x as fast")
            console.print(line)
        if "latency_dense_ms" in desc:
            console.print(f"dense twin (same weights as plain Conv2d/Linear): {desc['latency_dense_ms']:.3f} ms; "
                          f"speed-up of this model over it {desc['sparse_speedup']:.2f}x")
        if "latency_against_ms" in desc:
            console.print(f"against {desc['against']}: {desc['latency_against_ms']:.3f} ms in eager, timed "
                          f"interleaved; this model is {desc['speedup_vs_against']:.2f}x as fast")
        if "latency_sparse_inference_ms" in desc:
            console.print(f"converted with --sparse-inference: {desc['latency_sparse_inference_ms']:.3f} ms; "
                          f"speed-up over the dense twin "
                          f"{desc['latency_dense_ms'] / desc['latency_sparse_inference_ms']:.2f}x")
