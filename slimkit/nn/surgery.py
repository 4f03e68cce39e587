"""Model surgery: putting a layer in another's place, and reading a layer's effective weight.

Every method that rewrites a model (low-rank factorisation, quantisation, sparse
inference, filter and layer removal) uses these, so a model is changed one way:

* :func:`replace_layer` swaps a submodule by its dotted name, keeping its position;
* :func:`effective_weight` is the weight a layer computes with: ``weight * weight_mask``
  for a masked layer (any module with a ``weight_mask`` tensor of the weight's shape:
  slimkit's masked and quantised layers, ``torch.nn.utils.prune``), else ``weight``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["replace_layer", "effective_weight"]


def replace_layer(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` in place of the submodule called ``name`` (a dotted path from
    ``model.named_modules()``), keeping its position among its parent's children."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if child not in parent._modules:  # get_submodule's message, not a silently added child
        raise AttributeError(f"{type(parent).__name__} has no submodule {child!r} (replacing {name!r})")
    parent._modules[child] = new


def effective_weight(module: nn.Module) -> torch.Tensor:
    """``module.weight * module.weight_mask`` when the module carries a pruning mask of the
    weight's shape, else ``module.weight`` itself (differentiable; detach it to read values).

    slimkit's masked layers keep pruned weights exactly zero outside a training step, so
    the product matters inside one, for files from elsewhere, and for masks set by hand.
    """
    weight = module.weight
    mask = getattr(module, "weight_mask", None)
    if isinstance(mask, torch.Tensor) and mask.shape == weight.shape:
        return weight * mask
    return weight
