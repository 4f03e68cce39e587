"""Model surgery: putting a layer in another's place, and reading a layer's effective weight.

Every method that rewrites a model (low-rank factorisation, quantisation, sparse
inference, filter and layer removal) uses these, so a model is changed one way:

* :func:`replace_layer` swaps a submodule by its dotted name, keeping its position;
* :func:`effective_weight` is the weight a layer computes with: ``weight * weight_mask``
  for a masked layer (any module with a ``weight_mask`` tensor of the weight's shape:
  slimkit's masked and quantised layers, ``torch.nn.utils.prune``), else ``weight``;
* :func:`capture` reads one layer's output on an input (hints, feature matching);
* :func:`forward_hooks` holds forward hooks on some modules for the length of a block.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from slimkit.errors import UserError

__all__ = ["replace_layer", "effective_weight", "capture", "forward_hooks"]


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


class _Stop(Exception):
    """Raised by a capture hook to end a forward pass at the captured layer."""


def capture(model: nn.Module, layer: str, x: torch.Tensor, stop: bool = True) -> torch.Tensor:
    """The output of ``model``'s submodule ``layer`` on input ``x`` (a forward hook).

    With ``stop`` the forward pass ends at that layer (the hook raises an exception
    that is caught here), so the layers after it neither run nor update BatchNorm
    statistics.
    """
    module = model.get_submodule(layer)
    box = {}

    def grab(_module, _inputs, output):
        box["out"] = output
        if stop:
            raise _Stop

    with forward_hooks([(module, grab)]):
        try:
            model(x)
        except _Stop:
            pass
    if "out" not in box:
        raise UserError(f"layer {layer!r} of {type(model).__name__} did not run in the forward pass")
    out = box["out"]
    if not isinstance(out, torch.Tensor):
        raise UserError(f"layer {layer!r} of {type(model).__name__} returns {type(out).__name__}, "
                        f"not a tensor; pick a layer with a tensor output")
    return out


@contextlib.contextmanager
def forward_hooks(pairs):
    """Register ``module.register_forward_hook(fn)`` for every ``(module, fn)`` in ``pairs`` for
    the length of the ``with`` block, and remove them however the block ends."""
    handles = [module.register_forward_hook(fn) for module, fn in pairs]
    try:
        yield handles
    finally:
        for handle in handles:
            handle.remove()
