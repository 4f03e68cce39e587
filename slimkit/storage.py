"""The ``.slim`` artifact: a safetensors file whose metadata holds a JSON header.

Nothing is pickled. The header (metadata key ``slimkit``) holds the architecture as a
module spec (see :mod:`slimkit.nn.spec`), the input shape, classes, normalisation and
one entry per state-dict tensor naming the codec that stored it:

``dense``   the tensor as is (float32 unless the model is half precision).
``masked``  a pruned weight: the kept values in order, plus the mask packed 1 bit per
            weight. The mask buffer itself is not stored; it is decoded from the bits.

Codecs are looked up by name in :data:`CODECS`; decoding is exact (bit for bit), and a
file whose header disagrees with its tensors is refused with a clear error before any
large allocation.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from slimkit.errors import UserError

FORMAT = "slimkit"
VERSION = 1
MAX_ELEMENTS = 2**34  # refuse headers describing absurd tensors before allocating


@dataclass
class Codec:
    """How one tensor is stored. ``encode(tensor, extra) -> (tensors, meta)``;
    ``decode(tensors, meta, shape, dtype) -> tensor``. ``extra`` carries helper data
    (e.g. the mask of a pruned weight)."""

    name: str
    encode: Callable
    decode: Callable


def _encode_dense(tensor, extra):
    return {"data": tensor.contiguous()}, {}


def _decode_dense(tensors, meta, shape, dtype):
    data = tensors["data"]
    if tuple(data.shape) != tuple(shape):
        raise ValueError(f"stored shape {tuple(data.shape)} differs from the header's {tuple(shape)}")
    return data.to(dtype)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    bits = np.packbits(mask.reshape(-1).to(torch.uint8).cpu().numpy())
    return torch.from_numpy(bits)


def unpack_bits(packed: torch.Tensor, count: int) -> torch.Tensor:
    if packed.dtype != torch.uint8 or packed.numel() != (count + 7) // 8:
        raise ValueError(f"mask bitmap has {packed.numel()} bytes, expected {(count + 7) // 8}")
    return torch.from_numpy(np.unpackbits(packed.numpy(), count=count).astype(bool))


def _encode_masked(tensor, extra):
    mask = extra["mask"].bool()
    return {"values": tensor[mask].contiguous(), "bits": pack_bits(mask)}, {}


def _decode_masked(tensors, meta, shape, dtype):
    count = math.prod(shape)
    mask = unpack_bits(tensors["bits"], count)
    values = tensors["values"]
    kept = int(mask.sum())
    if values.numel() != kept:
        raise ValueError(f"{values.numel()} stored values for {kept} kept weights")
    out = torch.zeros(count, dtype=values.dtype)
    out[mask] = values.reshape(-1)
    return out.reshape(shape).to(dtype)


CODECS: dict[str, Codec] = {
    "dense": Codec("dense", _encode_dense, _decode_dense),
    "masked": Codec("masked", _encode_masked, _decode_masked),
}


def register_codec(codec: Codec) -> None:
    if codec.name in CODECS and CODECS[codec.name] is not codec:
        raise ValueError(f"codec {codec.name!r} registered twice")
    CODECS[codec.name] = codec


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
           "int64": torch.int64, "int32": torch.int32, "uint8": torch.uint8, "bool": torch.bool, "int8": torch.int8}


def default_plan(model: torch.nn.Module) -> dict[str, tuple[str, dict]]:
    """Codec per state-dict key: masked weights sparse, masks omitted, the rest dense."""
    plan: dict[str, tuple[str, dict]] = {}
    for mod_name, module in model.named_modules():
        mask = getattr(module, "weight_mask", None)
        if isinstance(mask, torch.Tensor):
            prefix = f"{mod_name}." if mod_name else ""
            plan[prefix + "weight"] = ("masked", {"mask": mask})
            plan[prefix + "weight_mask"] = ("from_mask", {"of": prefix + "weight"})
    return plan


def save_model(path, model: torch.nn.Module, registry, *, info: dict, plan: dict | None = None) -> int:
    """Write ``model`` to ``path`` atomically; returns the size in bytes of the written file.

    ``info`` goes into the header (model name, input_shape, num_classes, data, ...).
    ``plan`` maps state-dict keys to ``(codec, extra)``; the default stores pruned
    weights sparse. Keys whose codec is ``from_mask`` are rebuilt from the weight's mask.
    """
    path = Path(path)
    plan = {**default_plan(model), **(plan or {})}
    arch = registry.modules.spec(model)
    tensors: dict[str, torch.Tensor] = {}
    entries: dict[str, dict] = {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu()
        codec_name, extra = plan.get(key, ("dense", {}))
        entry = {"codec": codec_name, "shape": list(value.shape), "dtype": _dtype_name(value.dtype)}
        if codec_name == "from_mask":
            entry["of"] = extra["of"]
        else:
            codec = CODECS[codec_name]
            extra = {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in extra.items()}
            parts, meta = codec.encode(value, extra)
            entry["meta"] = meta
            entry["parts"] = sorted(parts)
            for part, tensor in parts.items():
                tensors[f"{key}::{part}"] = tensor.contiguous()
        entries[key] = entry
    header = {"format": FORMAT, "version": VERSION, "architecture": arch, "tensors": entries, **info}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"slimkit": json.dumps(header, separators=(",", ":"))})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path.stat().st_size


@dataclass
class LoadedModel:
    model: torch.nn.Module
    header: dict
    size_bytes: int
    path: Path


def read_header(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file {path} does not exist; expected a .slim file written by slimkit")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises several types for damaged files
        raise UserError(f"{path} is not a valid .slim file (damaged or not safetensors): {exc}") from None
    if "slimkit" not in meta:
        raise UserError(f"{path} is a safetensors file without a slimkit header; expected a .slim file written by slimkit")
    try:
        header = json.loads(meta["slimkit"])
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} has a corrupt slimkit header: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise UserError(f"{path} has a header that is not slimkit's format")
    if header.get("version") != VERSION:
        raise UserError(f"{path} is format version {header.get('version')}; this slimkit reads version {VERSION}")
    return header


def load_model(path, registry) -> LoadedModel:
    """Rebuild the model in ``path``; every check fails with a :class:`UserError`."""
    path = Path(path)
    header = read_header(path)
    where = str(path)
    try:
        model = registry.modules.build(header["architecture"])
        entries = header["tensors"]
        if not isinstance(entries, dict):
            raise ValueError("'tensors' must be an object")
        state: dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt") as f:
            stored = set(f.keys())
            for key, entry in entries.items():
                shape = [int(s) for s in entry["shape"]]
                if any(s < 0 for s in shape) or math.prod(shape) > MAX_ELEMENTS:
                    raise ValueError(f"tensor {key} has an impossible shape {shape}")
                dtype = _DTYPES.get(entry["dtype"])
                if dtype is None:
                    raise ValueError(f"tensor {key} has unknown dtype {entry['dtype']!r}")
                if entry["codec"] == "from_mask":
                    continue
                codec = CODECS.get(entry["codec"])
                if codec is None:
                    raise ValueError(f"tensor {key} uses unknown codec {entry['codec']!r} (known: {', '.join(CODECS)})")
                parts = {}
                for part in entry["parts"]:
                    name = f"{key}::{part}"
                    if name not in stored:
                        raise ValueError(f"tensor part {name} is missing")
                    parts[part] = f.get_tensor(name)
                state[key] = codec.decode(parts, entry.get("meta", {}), shape, dtype)
            for key, entry in entries.items():
                if entry["codec"] == "from_mask":
                    source = entry["of"]
                    if entries.get(source, {}).get("codec") != "masked":
                        raise ValueError(f"mask {key} refers to {source}, which is not stored masked")
                    src_entry = entries[source]
                    mask = unpack_bits(f.get_tensor(f"{source}::bits"), math.prod(src_entry["shape"]))
                    state[key] = mask.reshape(entry["shape"]).to(_DTYPES[entry["dtype"]])
        model.load_state_dict(state, strict=True)
    except UserError as exc:
        if where in str(exc):
            raise
        raise UserError(f"{where}: {exc}") from None
    except Exception as exc:
        raise UserError(f"{where} is damaged or inconsistent: {type(exc).__name__}: {exc}") from None
    model.eval()
    return LoadedModel(model, header, path.stat().st_size, path)
