"""How channels flow through each layer type and op, and how a layer is rebuilt smaller.

A *propagation rule* gets a :class:`slimkit.nn.depgraph.Call` (the node's inputs as
:class:`~slimkit.nn.depgraph.Labels`, its output shape) and returns the output's labels,
labelling the layer's parameters on the way (``call.param``). A *resize* function gets
the old layer and its new (sliced) tensors by name and returns a layer of the new size;
the surgery then puts the tensors into it. Plugins add rules for their own layer types
through the ``register_channel_rules`` hook: ``register(ModuleClass, propagate, resize)``
for a layer, ``register("op_name", propagate)`` for a function or method.

Rules lock what they cannot shrink exactly: dimensions that a LayerNorm, softmax or
mean normalises over (a removed zero channel would still count in the statistics), and
sizes the forward hard-codes (``split`` by constant sizes, ``narrow``, partial slices).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch.nn as nn

from slimkit.nn.channel_ops import dim_index, reshape_rule, same_rule, spatial_rule, register_ops
from slimkit.nn.channel_labels import Labels, fixed
from slimkit.nn.masked import MaskedConv2d, MaskedLinear

__all__ = ["RuleSet", "builtin_rules", "all_rules"]


# --------------------------------------------------------------------------- module rules

def _conv(call) -> Labels:
    m, x = call.module, call.args[0]
    cdim = len(x) - len(m.kernel_size) - 1
    out = call.fresh(m.out_channels)
    g = m.groups
    if g == 1:
        call.param("weight", 1, x[cdim], "in")
    else:  # a group's input and output channels go together (a depthwise conv: channel c -> c)
        ipg, opg = m.in_channels // g, m.out_channels // g
        for k in range(g):
            root = call.atoms.union_all(np.concatenate([x[cdim][k * ipg:(k + 1) * ipg], out[k * opg:(k + 1) * opg]]))
            out[k * opg:(k + 1) * opg] = root
        call.param("weight", 1, fixed(ipg), "in")
    out = call.param("weight", 0, out, "out")
    call.param("bias", 0, out, "bias")
    if isinstance(m, MaskedConv2d):
        call.param("weight_mask", 0, out, "stat")
        call.param("weight_mask", 1, x[cdim] if g == 1 else fixed(m.in_channels // g), "stat")
    shape = call.shape
    return Labels([*(x[d].copy() for d in range(cdim)), out, *(fixed(s) for s in shape[cdim + 1:])])


def _conv_resize(old, t):
    w = t["weight"]
    groups = 1 if old.groups == 1 else w.shape[0] // (old.out_channels // old.groups)
    args = (w.shape[1] * groups, w.shape[0], old.kernel_size, old.stride, old.padding, old.dilation, groups,
            old.bias is not None)
    if type(old) is MaskedConv2d:
        return MaskedConv2d(*args)
    return type(old)(*args, padding_mode=old.padding_mode)


def _linear(call) -> Labels:
    m, x = call.module, call.args[0]
    call.param("weight", 1, x[-1], "in")
    out = call.param("weight", 0, call.fresh(m.out_features), "out")
    call.param("bias", 0, out, "bias")
    if isinstance(m, MaskedLinear):
        call.param("weight_mask", 0, out, "stat")
        call.param("weight_mask", 1, x[-1], "stat")
    return Labels([*(lab.copy() for lab in x[:-1]), out])


def _linear_resize(old, t):
    w = t["weight"]
    return type(old)(w.shape[1], w.shape[0], old.bias is not None)


def _batchnorm(call) -> Labels:
    x = call.args[0]
    cdim = 1 if len(x) > 1 else 0
    lab = x[cdim]
    for name, role in (("weight", "scale"), ("bias", "shift"), ("running_mean", "stat"), ("running_var", "stat")):
        lab = call.param(name, 0, lab, role)
    return Labels([*x[:cdim], lab, *x[cdim + 1:]])


def _batchnorm_resize(old, t):
    n = next(v.shape[0] for k, v in t.items() if k != "num_batches_tracked")
    return type(old)(n, old.eps, old.momentum, old.affine, old.track_running_stats)


def _layernorm(call) -> Labels:
    x, m = call.args[0], call.module
    k = len(m.normalized_shape)
    for d in range(k):  # statistics over these dims: a zero channel still counts, so none is removed
        call.atoms.lock(x[len(x) - k + d])
        call.param("weight", d, x[len(x) - k + d], "scale")
        call.param("bias", d, x[len(x) - k + d], "shift")
    return Labels(lab.copy() for lab in x)


def _groupnorm(call) -> Labels:
    x, m = call.args[0], call.module
    lab = x[1].copy()
    if not m.affine:  # nothing to resize would keep num_groups right: leave the channels alone
        call.atoms.lock(lab)
        return Labels(v.copy() for v in x)
    per = m.num_channels // m.num_groups
    for k in range(m.num_groups):  # statistics per group: only whole groups can go
        lab[k * per:(k + 1) * per] = call.atoms.union_all(lab[k * per:(k + 1) * per])
    lab = call.param("weight", 0, lab, "scale")
    lab = call.param("bias", 0, lab, "shift")
    return Labels([x[0], lab, *x[2:]])


def _groupnorm_resize(old, t):
    n = t["weight"].shape[0]
    return nn.GroupNorm(n // (old.num_channels // old.num_groups), n, old.eps, old.affine)


def _prelu(call) -> Labels:
    x, m = call.args[0], call.module
    if m.num_parameters > 1:
        lab = call.param("weight", 0, x[1], "scale")
        return Labels([x[0], lab, *x[2:]])
    return Labels(v.copy() for v in x)


def _prelu_resize(old, t):
    return nn.PReLU(t["weight"].shape[0])


def _softmax_module(call) -> Labels:
    x = call.args[0]
    d = call.module.dim if call.module.dim is not None else len(x) - 1
    call.atoms.lock(x[dim_index(d, len(x))])
    return Labels(v.copy() for v in x)


_UNARY_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
                  nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Identity, nn.Dropout,
                  nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_POOL_MODULES = {nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3, nn.AvgPool1d: 1, nn.AvgPool2d: 2,
                 nn.AvgPool3d: 3, nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3,
                 nn.AdaptiveMaxPool1d: 1, nn.AdaptiveMaxPool2d: 2, nn.AdaptiveMaxPool3d: 3, nn.LPPool1d: 1,
                 nn.LPPool2d: 2, nn.Upsample: None}
_TRUSTED_MODULES = ("torch", "_operator", "operator", "builtins", "math")


class RuleSet:
    """Module rules (by exact class) and function/method rules (by name)."""

    def __init__(self):
        self.modules: dict[type, tuple[Callable, Callable]] = {}
        self.functions: dict[str, Callable] = {}
        self.get_attr = None  # set by register_ops

    def register(self, target, propagate: Callable, resize: Callable | None = None) -> None:
        if isinstance(target, type) and issubclass(target, nn.Module):
            if resize is None:
                raise TypeError(f"a channel rule for {target.__qualname__} needs a resize function")
            self.modules[target] = (propagate, resize)
        elif isinstance(target, str):
            self.functions[target] = propagate
        else:
            raise TypeError(f"register a channel rule for an nn.Module subclass or an op name, not {target!r}")

    def module_types(self):
        return tuple(self.modules)

    def find(self, node, module):
        if node.op == "call_module":
            entry = self.modules.get(type(module))
            return entry[0] if entry else None
        if node.op == "call_method":
            return self.functions.get(node.target)
        if node.op == "call_function":
            owner = getattr(node.target, "__module__", None) or "builtins"
            if not owner.split(".")[0] in _TRUSTED_MODULES:
                return None
            return self.functions.get(getattr(node.target, "__name__", ""))
        return None

    def resize(self, module):
        entry = self.modules.get(type(module))
        return entry[1] if entry else None


def builtin_rules() -> RuleSet:
    rules = RuleSet()
    for cls in (nn.Conv1d, nn.Conv2d, nn.Conv3d, MaskedConv2d):
        rules.register(cls, _conv, _conv_resize)
    for cls in (nn.Linear, MaskedLinear):
        rules.register(cls, _linear, _linear_resize)
    for cls in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        rules.register(cls, _batchnorm, _batchnorm_resize)
    rules.register(nn.LayerNorm, _layernorm, lambda old, t: old)
    rules.register(nn.GroupNorm, _groupnorm, _groupnorm_resize)
    rules.register(nn.PReLU, _prelu, _prelu_resize)
    for cls in _UNARY_MODULES:
        rules.register(cls, same_rule, lambda old, t: old)
    for cls, k in _POOL_MODULES.items():
        rules.register(cls, spatial_rule(k), lambda old, t: old)
    for cls in (nn.Softmax, nn.LogSoftmax):
        rules.register(cls, _softmax_module, lambda old, t: old)
    for cls in (nn.Flatten, nn.Unflatten):
        rules.register(cls, reshape_rule, lambda old, t: old)
    register_ops(rules)
    return rules


def all_rules() -> RuleSet:
    """The built-in rules plus those plugins register through ``register_channel_rules``."""
    from slimkit.plugins import get_registry

    rules = builtin_rules()
    for target, propagate, resize in getattr(get_registry(), "channel_rules", ()):
        rules.register(target, propagate, resize)
    return rules
