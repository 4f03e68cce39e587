"""Quantised layers: weight-shared (codebook) and int8 masked layers, and helpers to make them.

These are layer *types*, not algorithms: whichever method decides the codebook or the
scales (k-means weight sharing in the ``quantize`` plugin, the mixture prior of ``sws``,
a third-party method), the result is stored and loaded the same way, so the types live
in the engine and are registered by it (``slimkit.nn.builtin``) whichever plugins are
installed.

* :class:`QuantizedLinear` / :class:`QuantizedConv2d`: a masked layer whose kept weights
  are exactly values of a float32 ``weight_codebook`` buffer (1-256 entries). The
  ``.slim`` writer stores the weight as codebook indices (``codebook``, or ``csr`` with
  relative positions when the mask removes anything), Huffman coded when ``huffman``
  is on. The constructor arguments ``index_bits``, ``pos_bits`` and ``huffman`` are the
  storage hints (:attr:`slimkit_storage`), so they survive saving and loading.
* :class:`Int8Linear` / :class:`Int8Conv2d`: a masked layer whose weight is
  ``q * weight_scale[c]`` with integer ``|q| <= 127`` per output channel ``c``; stored
  with the ``int8`` codec.

docs/format.md describes the storage convention these layers follow.

Type names: a ``.slim`` file names these classes ``slimkit.nn.quantized.<Class>``.
Before they moved into the engine they lived in the ``quantize`` plugin, and files
written then name them ``slimkit_plugins.quantize.<Class>``; each class lists that
name in ``slimkit_type_aliases``, so those files still load.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from slimkit.nn.grids import min_index_bits
from slimkit.nn.masked import MaskedConv2d, MaskedLinear, MaskedMixin, prunable_layers
from slimkit.nn.spec import serializable

__all__ = [
    "CodebookMixin", "Int8Mixin", "QuantizedLinear", "QuantizedConv2d", "Int8Linear", "Int8Conv2d",
    "QUANTIZED_MODULES", "quantized_twin", "quantizable_layers", "codebook_layers",
]

_OLD_MODULE = "slimkit_plugins.quantize"  # where these classes lived before; old files name them so


# --------------------------------------------------------------------------- layers

class CodebookMixin:
    """A masked layer whose kept weights are exactly ``weight_codebook`` values."""

    weight: torch.Tensor
    weight_mask: torch.Tensor
    weight_codebook: torch.Tensor

    def _init_codebook(self, num_codes: int, index_bits: int, pos_bits: int, huffman: bool):
        if not 1 <= num_codes <= 256:
            raise ValueError(f"num_codes={num_codes}; expected 1 to 256")
        if index_bits and not min_index_bits(num_codes) <= index_bits <= 8:
            raise ValueError(f"index_bits={index_bits} cannot index {num_codes} codes")
        if pos_bits and not 1 <= pos_bits <= 8:
            raise ValueError(f"pos_bits={pos_bits}; expected 1 to 8 (0 = the smallest)")
        self.register_buffer("weight_codebook", torch.zeros(num_codes))
        self._storage = {"index_bits": index_bits or min_index_bits(num_codes), "pos_bits": pos_bits,
                         "huffman": bool(huffman)}

    @property
    def slimkit_storage(self) -> dict:
        """Storage hints (the protocol of :func:`slimkit.nn.spec.storage_hints`)."""
        return dict(self._storage)

    @torch.no_grad()
    def zero_pruned(self) -> None:
        self.weight.masked_fill_(self.weight_mask == 0, 0.0)  # +0.0, not the -0.0 that w * 0 gives

    @torch.no_grad()
    def set_codes(self, codebook: torch.Tensor, index: torch.Tensor, keep: torch.Tensor) -> None:
        """Set ``weight = codebook[index]`` where ``keep``, exactly 0 elsewhere; mask = keep."""
        self.weight_codebook.copy_(codebook.to(self.weight_codebook))
        values = self.weight_codebook[index.reshape(-1).long()].reshape(self.weight.shape)
        keep = keep.reshape(self.weight.shape).bool()
        self.weight.copy_(torch.where(keep, values.to(self.weight.dtype), torch.zeros_like(self.weight)))
        self.weight_mask.copy_(keep.to(self.weight_mask.dtype))


@serializable
class QuantizedLinear(CodebookMixin, MaskedLinear):
    """A :class:`~slimkit.nn.MaskedLinear` whose kept weights are codebook values."""

    slimkit_type_aliases = (f"{_OLD_MODULE}.QuantizedLinear",)

    def __init__(self, in_features, out_features, bias=True, num_codes=32, index_bits=0, pos_bits=0, huffman=True):
        super().__init__(in_features, out_features, bias)
        self._init_codebook(num_codes, index_bits, pos_bits, huffman)


@serializable
class QuantizedConv2d(CodebookMixin, MaskedConv2d):
    """A :class:`~slimkit.nn.MaskedConv2d` whose kept weights are codebook values."""

    slimkit_type_aliases = (f"{_OLD_MODULE}.QuantizedConv2d",)

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True,
                 num_codes=256, index_bits=0, pos_bits=0, huffman=True):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self._init_codebook(num_codes, index_bits, pos_bits, huffman)


class Int8Mixin:
    """A masked layer whose weight is ``q * weight_scale`` (one scale per output channel, int8 ``q``)."""

    weight: torch.Tensor
    weight_mask: torch.Tensor
    weight_scale: torch.Tensor

    def _init_scale(self, channels: int):
        self.register_buffer("weight_scale", torch.ones(channels))

    @torch.no_grad()
    def zero_pruned(self) -> None:
        self.weight.masked_fill_(self.weight_mask == 0, 0.0)


@serializable
class Int8Linear(Int8Mixin, MaskedLinear):
    """A :class:`~slimkit.nn.MaskedLinear` whose weight is ``q * weight_scale`` with int8 ``q``."""

    slimkit_type_aliases = (f"{_OLD_MODULE}.Int8Linear",)

    def __init__(self, in_features, out_features, bias=True):
        super().__init__(in_features, out_features, bias)
        self._init_scale(out_features)


@serializable
class Int8Conv2d(Int8Mixin, MaskedConv2d):
    """A :class:`~slimkit.nn.MaskedConv2d` whose weight is ``q * weight_scale`` with int8 ``q``."""

    slimkit_type_aliases = (f"{_OLD_MODULE}.Int8Conv2d",)

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self._init_scale(out_channels)


#: The module types of this file, registered by the engine (``slimkit.nn.builtin``).
QUANTIZED_MODULES = (QuantizedLinear, QuantizedConv2d, Int8Linear, Int8Conv2d)


# --------------------------------------------------------------------------- helpers

def quantized_twin(layer: nn.Module, kind: str, **kwargs) -> nn.Module:
    """A quantised copy of the masked conv/linear ``layer``: the same shape and
    hyper-parameters, on the same device and dtype, with its weight, bias and mask copied.

    ``kind="codebook"`` gives a :class:`QuantizedConv2d` / :class:`QuantizedLinear`
    (``kwargs``: ``num_codes``, ``index_bits``, ``pos_bits``, ``huffman``); its codebook is
    still zeros, so set it (and the weights) with ``set_codes``. ``kind="int8"`` gives an
    :class:`Int8Conv2d` / :class:`Int8Linear` whose ``weight_scale`` is still ones. The
    original ``layer`` is left as it is; put the twin in the model with :func:`slimkit.nn.replace_layer`.
    """
    if kind not in ("codebook", "int8"):
        raise ValueError(f"kind must be 'codebook' or 'int8', not {kind!r}")
    if isinstance(layer, nn.Conv2d):
        cls = QuantizedConv2d if kind == "codebook" else Int8Conv2d
        padding = layer.padding if isinstance(layer.padding, str) else list(layer.padding)
        new = cls(layer.in_channels, layer.out_channels, list(layer.kernel_size), list(layer.stride),
                  padding, list(layer.dilation), layer.groups, layer.bias is not None, **kwargs)
    else:
        cls = QuantizedLinear if kind == "codebook" else Int8Linear
        new = cls(layer.in_features, layer.out_features, layer.bias is not None, **kwargs)
    new.to(device=layer.weight.device, dtype=layer.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(layer.weight)
        new.weight_mask.copy_(layer.weight_mask)
        if layer.bias is not None:
            new.bias.copy_(layer.bias)
    return new


def quantizable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every conv/linear layer that can be quantised: the masked layers
    and plain ``nn.Conv2d`` / ``nn.Linear`` (other subclasses of those are left out)."""
    return [(n, m) for n, m in prunable_layers(model)
            if isinstance(m, MaskedMixin) or type(m) in (nn.Conv2d, nn.Linear)]


def codebook_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every weight-shared layer (:class:`CodebookMixin`: QuantizedLinear,
    QuantizedConv2d) in ``model``, in ``named_modules()`` order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, CodebookMixin)]

