"""The storage plan: which codec stores each state-dict tensor, read from the modules.

The modules declare it through the storage-hints protocol of :mod:`slimkit.nn.spec`
(buffers ``weight_codebook`` / ``weight_scale`` / ``weight_mask`` and the hints dict);
this module turns that into ``{key: (codec, extra)}``. docs/format.md, "How a model
asks for a codec", gives the rules. A module whose weights do not match its declaration
(a value not in its codebook) is stored losslessly the generic way with a warning,
never approximately.
"""
from __future__ import annotations

import warnings

import torch

from slimkit.nn.grids import codebook_indices, int8_codes
from slimkit.nn.spec import storage_hints
from slimkit.storage.codecs import DERIVED, encode_tensor, index_bits_for

__all__ = ["storage_hints", "default_plan", "stored_bytes"]


def _buffer(module, name, like=None):
    value = module._buffers.get(name)
    if not isinstance(value, torch.Tensor):
        return None
    if like is not None and value.shape != like.shape:
        return None
    return value


def _derive(plan: dict, prefix: str, buffer: str, part: str, masked: bool) -> dict:
    """Add to ``plan`` that ``buffer`` is part ``part`` of the weight's entry, and the mask
    (when there is one) the weight's kept positions; both are stored inside the weight."""
    wkey = prefix + "weight"
    plan[prefix + buffer] = ("from_part", {"of": wkey, "part": part})
    if masked:
        plan[prefix + "weight_mask"] = ("from_mask", {"of": wkey})
    return plan


def _module_plan(prefix: str, module: torch.nn.Module) -> dict:
    weight = module._parameters.get("weight")
    if weight is None:
        weight = module._buffers.get("weight")
    if not isinstance(weight, torch.Tensor):
        return {}
    wkey = prefix + "weight"
    mask = _buffer(module, "weight_mask", weight)
    codebook = _buffer(module, "weight_codebook")
    scale = _buffer(module, "weight_scale")
    hints = storage_hints(module)
    plan: dict = {}
    pruned = mask is not None and bool((mask == 0).any())
    w = weight.detach().cpu()
    if codebook is not None:
        try:
            cb = codebook.detach().cpu()
            if cb.dim() != 1 or not 1 <= cb.numel() <= 256 or cb.dtype != torch.float32:
                raise ValueError("weight_codebook must be a float32 vector of 1 to 256 entries")
            extra = {"codebook": cb, "index_bits": hints.get("index_bits"),
                     "huffman": bool(hints.get("huffman", True))}
            index_bits_for(extra, cb)
            if pruned:
                keep = mask.detach().cpu() != 0
                if bool((w[~keep] != 0).any()):
                    raise ValueError("pruned weights are not zero")
                codebook_indices(w[keep], cb)
                plan[wkey] = ("csr", {**extra, "mask": mask, "pos_bits": hints.get("pos_bits") or 0})
            else:
                codebook_indices(w, cb)
                plan[wkey] = ("codebook", extra)
            return _derive(plan, prefix, "weight_codebook", "codebook", mask is not None)
        except ValueError as exc:
            warnings.warn(f"slimkit: {wkey} declares a codebook it does not follow ({exc}); stored without it",
                          stacklevel=3)
    if scale is not None:
        try:
            if pruned and bool((w[mask.detach().cpu() == 0] != 0).any()):
                raise ValueError("pruned weights are not zero")
            int8_codes(w, scale)
            plan[wkey] = ("int8", {"scale": scale, "mask": mask})
            return _derive(plan, prefix, "weight_scale", "scale", mask is not None)
        except ValueError as exc:
            warnings.warn(f"slimkit: {wkey} declares an int8 grid it does not follow ({exc}); stored without it",
                          stacklevel=3)
    if mask is not None:
        if hints.get("codec") == "csr":
            plan[wkey] = ("csr", {"mask": mask, "pos_bits": hints.get("pos_bits") or 0,
                                  "huffman": bool(hints.get("huffman", False))})
        else:
            plan[wkey] = ("masked", {"mask": mask})
        plan[prefix + "weight_mask"] = ("from_mask", {"of": wkey})
    elif hints.get("codec") == "csr":
        plan[wkey] = ("csr", {"pos_bits": hints.get("pos_bits") or 0, "huffman": bool(hints.get("huffman", False))})
    return plan


def default_plan(model: torch.nn.Module) -> dict[str, tuple[str, dict]]:
    """Codec per state-dict key, read from the modules (the convention in the module docstring):
    codebook weights as indices (``csr`` when pruned, else ``codebook``), int8-grid weights as
    ``int8``, other masked weights ``masked``; masks, codebooks and scales derived; the rest dense."""
    plan: dict[str, tuple[str, dict]] = {}
    for mod_name, module in model.named_modules():
        plan.update(_module_plan(f"{mod_name}." if mod_name else "", module))
    return plan


def stored_bytes(model: torch.nn.Module, key: str) -> int:
    """Bytes of tensor data the ``.slim`` writer stores for state-dict ``key`` (all its parts),
    with the codec :func:`default_plan` picks for it; 0 for a derived key (a mask or codebook
    stored inside its weight's entry). Encodes the tensor to count."""
    codec, extra = default_plan(model).get(key, ("dense", {}))
    if codec in DERIVED:
        return 0
    parts, _ = encode_tensor(model.state_dict()[key], codec, extra)
    return sum(p.numel() * p.element_size() for p in parts.values())
