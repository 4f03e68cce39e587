"""Describe a module tree as JSON and rebuild it, without pickle.

A ``.slim`` file stores the architecture as a tree of ``{"type", "args", "children"}``
nodes. ``type`` names a class from an allowlist (torch built-ins below plus classes
registered through the ``register_modules`` hook); ``args`` are the constructor's
JSON-serialisable arguments; ``children`` are rebuilt recursively and replace what
the constructor made, so a method may swap any submodule (a block, a factorized
layer) and the file still describes the model exactly.

A class that moved to another module keeps loading from files that name it by its old
``module.QualName`` when it lists those names in a ``slimkit_type_aliases`` class
attribute (a tuple of strings; read from the class itself, not inherited). Files are
always written with the current name.

A module also declares here how its weight wants to be stored (the storage-hints
protocol, :func:`storage_hints`); :mod:`slimkit.storage` reads it, so layers never
import the storage code.
"""
from __future__ import annotations

import functools
import inspect

import torch.nn as nn

from slimkit.errors import UserError


def serializable(cls):
    """Class decorator: record the constructor arguments so the module can be saved.

    Arguments must be JSON-serialisable (numbers, strings, bools, lists, dicts, None).
    """
    init = cls.__init__
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        arguments.pop("self")
        extra = arguments.pop("kwargs", None) if "kwargs" in signature.parameters else None
        init(self, *args, **kwargs)
        if extra:
            arguments.update(extra)
        # With nested serializable classes the most derived constructor finishes last,
        # so its arguments are the ones that stay.
        object.__setattr__(self, "_spec_args", _jsonable(arguments))

    cls.__init__ = __init__
    cls._slimkit_serializable = True
    return cls


def _jsonable(value):
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"constructor argument {value!r} of type {type(value).__name__} is not JSON-serialisable")


def _conv_args(m):
    return dict(in_channels=m.in_channels, out_channels=m.out_channels, kernel_size=list(m.kernel_size),
                stride=list(m.stride), padding=list(m.padding) if not isinstance(m.padding, str) else m.padding,
                dilation=list(m.dilation), groups=m.groups, bias=m.bias is not None, padding_mode=m.padding_mode)


def _bn_args(m):
    return dict(num_features=m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine,
                track_running_stats=m.track_running_stats)


def _pool_args(m):
    return dict(kernel_size=_jsonable(m.kernel_size), stride=_jsonable(m.stride), padding=_jsonable(m.padding),
                **({"dilation": _jsonable(m.dilation), "ceil_mode": m.ceil_mode} if isinstance(m, nn.MaxPool2d) else
                   {"ceil_mode": m.ceil_mode, "count_include_pad": m.count_include_pad}))


# torch built-ins that may appear in a saved model, with how to read their arguments.
BUILTINS = {
    "Conv2d": (nn.Conv2d, _conv_args),
    "Linear": (nn.Linear, lambda m: dict(in_features=m.in_features, out_features=m.out_features, bias=m.bias is not None)),
    "BatchNorm1d": (nn.BatchNorm1d, _bn_args),
    "BatchNorm2d": (nn.BatchNorm2d, _bn_args),
    "GroupNorm": (nn.GroupNorm, lambda m: dict(num_groups=m.num_groups, num_channels=m.num_channels, eps=m.eps,
                                               affine=m.affine)),
    "LayerNorm": (nn.LayerNorm, lambda m: dict(normalized_shape=list(m.normalized_shape), eps=m.eps,
                                               elementwise_affine=m.elementwise_affine,
                                               bias=getattr(m, "bias", None) is not None)),
    "ReLU": (nn.ReLU, lambda m: dict(inplace=m.inplace)),
    "LeakyReLU": (nn.LeakyReLU, lambda m: dict(negative_slope=m.negative_slope, inplace=m.inplace)),
    "GELU": (nn.GELU, lambda m: dict(approximate=m.approximate)),
    "SiLU": (nn.SiLU, lambda m: dict(inplace=m.inplace)),
    "Hardswish": (nn.Hardswish, lambda m: dict(inplace=m.inplace)),
    "ReLU6": (nn.ReLU6, lambda m: dict(inplace=m.inplace)),
    "Tanh": (nn.Tanh, lambda m: {}),
    "Sigmoid": (nn.Sigmoid, lambda m: {}),
    "Dropout": (nn.Dropout, lambda m: dict(p=m.p, inplace=m.inplace)),
    "MaxPool2d": (nn.MaxPool2d, _pool_args),
    "AvgPool2d": (nn.AvgPool2d, _pool_args),
    "AdaptiveAvgPool2d": (nn.AdaptiveAvgPool2d, lambda m: dict(output_size=_jsonable(m.output_size))),
    "Flatten": (nn.Flatten, lambda m: dict(start_dim=m.start_dim, end_dim=m.end_dim)),
    "Identity": (nn.Identity, lambda m: {}),
    "Sequential": (nn.Sequential, lambda m: {}),
    "ModuleList": (nn.ModuleList, lambda m: {}),
}


class ModuleRegistry:
    """The allowlist of module classes a ``.slim`` file may name.

    A class is known by :func:`type_name` and, for reading only, by the former names in
    its own ``slimkit_type_aliases`` attribute (see the module docstring).
    """

    def __init__(self):
        self._classes: dict[str, type] = {}
        self._aliases: dict[str, str] = {}  # former type name -> current type name

    def register(self, cls) -> None:
        if not getattr(cls, "_slimkit_serializable", False):
            raise TypeError(f"{cls.__qualname__} must be decorated with @slimkit.nn.serializable to be registered")
        key = type_name(cls)
        if key in self._classes and self._classes[key] is not cls:
            raise ValueError(f"module type {key!r} is registered twice")
        if key in self._aliases:
            raise ValueError(f"module type {key!r} is already an alias of {self._aliases[key]!r}")
        aliases = vars(cls).get("slimkit_type_aliases", ())
        if isinstance(aliases, str) or not all(isinstance(a, str) for a in aliases):
            raise TypeError(f"{cls.__qualname__}.slimkit_type_aliases must be a tuple of type names")
        for alias in aliases:
            if alias in self._classes or alias in BUILTINS or self._aliases.get(alias, key) != key:
                raise ValueError(f"module type name {alias!r} (an alias of {key!r}) is registered twice")
        self._classes[key] = cls
        self._aliases.update((alias, key) for alias in aliases)

    def names(self):
        """The type names a file is written with (aliases are not listed)."""
        return sorted(set(BUILTINS) | set(self._classes))

    def knows(self, cls) -> bool:
        """Whether instances of ``cls`` are described by a spec node (a torch built-in above or a
        registered class); anything else is saved through :mod:`slimkit.nn.graphspec`."""
        key = type_name(cls)
        if key in self._classes:
            return self._classes[key] is cls
        return key in BUILTINS and BUILTINS[key][0] is cls

    def resolve(self, key: str) -> str:
        """The current type name for ``key`` (``key`` itself unless it is a registered alias)."""
        return key if key in self._classes else self._aliases.get(key, key)

    def spec(self, module: nn.Module) -> dict:
        cls = type(module)
        key = type_name(cls)
        if getattr(cls, "_slimkit_serializable", False) and key in self._classes:
            args = module._spec_args
        elif key in BUILTINS and BUILTINS[key][0] is cls:
            args = BUILTINS[key][1](module)
        else:
            raise UserError(f"cannot save a model containing {cls.__module__}.{cls.__qualname__}: "
                            "register it with the register_modules hook and @slimkit.nn.serializable")
        children = {name: self.spec(child) for name, child in module.named_children()}
        return {"type": key, "args": args, "children": children}

    def build(self, spec: dict, path: str = "model") -> nn.Module:
        if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
            raise UserError(f"corrupt architecture in model file at {path}: expected an object with a 'type'")
        key = self.resolve(spec["type"])
        if key in self._classes:
            cls = self._classes[key]
        elif key in BUILTINS:
            cls = BUILTINS[key][0]
        else:
            raise UserError(f"model file names unknown module type {key!r} at {path}; "
                            "is the plugin that provides it installed? (`slimkit plugins`)")
        args = spec.get("args", {})
        if not isinstance(args, dict):
            raise UserError(f"corrupt architecture in model file at {path}: 'args' must be an object")
        try:
            module = cls(**args)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise UserError(f"cannot rebuild {key} at {path} from the model file: {exc}") from None
        children = spec.get("children", {})
        if not isinstance(children, dict):
            raise UserError(f"corrupt architecture in model file at {path}: 'children' must be an object")
        for name in list(module._modules):
            if name not in children:
                del module._modules[name]
        for name, child in children.items():
            module._modules[name] = self.build(child, f"{path}.{name}")
        return module


def type_name(cls) -> str:
    """The name a file uses for a class: the bare name for torch built-ins, else module.QualName."""
    if cls.__module__.startswith("torch.nn"):
        return cls.__name__
    return f"{cls.__module__}.{cls.__qualname__}"


# --------------------------------------------------------------------------- storage hints
#
# How a module asks the ``.slim`` writer for a codec (docs/format.md, "How a model asks
# for a codec"). For a module with a ``weight``, the buffers say what is true of it:
#
# * ``weight_codebook`` (float32, 1-256 entries): every kept weight is exactly one of its
#   entries; stored as codebook indices (``csr`` when a ``weight_mask`` removes anything,
#   else ``codebook``).
# * ``weight_scale`` (float32, one per output channel): ``weight == q * scale`` with integer
#   ``|q| <= 127``; stored as ``int8``.
# * ``weight_mask`` alone: ``masked`` (``csr`` with fp32 values when the hints ask for it).
#
# and the hints (attribute :data:`STORAGE_HINTS`, a dict) say how to encode it.

#: The attribute a module exposes its storage hints through. A property computed from
#: constructor arguments survives saving and loading; a plain instance attribute only
#: lasts while the model is in memory.
STORAGE_HINTS = "slimkit_storage"
#: The hints the writer reads: ``codec`` (``"csr"`` or ``"masked"``, for masked weights
#: without a codebook), ``index_bits`` (1-8; default the fewest bits that index the
#: codebook), ``pos_bits`` (1-8; 0 or absent = try all and keep the smallest) and
#: ``huffman`` (bool; default True for codebook weights, False for fp32 ``csr``).
STORAGE_HINT_KEYS = ("codec", "index_bits", "pos_bits", "huffman")


def storage_hints(module: nn.Module) -> dict:
    """A copy of ``module``'s storage hints (the :data:`STORAGE_HINTS` dict), or {}."""
    hints = getattr(module, STORAGE_HINTS, None)
    return dict(hints) if isinstance(hints, dict) else {}
