"""Structured filter pruning by L1 norm (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017).

For every convolution ``i`` with ``C`` output channels, the filters ``F_ij`` (each
``in_channels x kh x kw``) are ranked by ``s_j = sum |F_ij|`` and the ``m`` filters
with the smallest sums are removed, ``m = round(ratio * C)`` (half up, at least one
filter left). Removing filter ``j`` removes output feature map ``j``, so the layers
reading it shrink too: the BatchNorm2d after the conv keeps only the surviving
channels (weight, bias, running mean and variance), the next conv loses the
matching input channels (its kernels for the removed maps), and the first Linear
after the conv stack loses the matching input columns. The network is physically
smaller: plain ``nn.Conv2d`` / ``nn.BatchNorm2d`` / ``nn.Linear`` layers with fewer
channels (masked layers stay masked, their masks sliced the same way), fewer
parameters and fewer multiply-accumulates. It is then fine-tuned with ``ctx.train``
("prune once and retrain", Section 3.4 of the paper).

``strategy`` is the paper's choice of how a layer's filter sums see the layer
before it (Section 3.2): ``independent`` sums every kernel of a filter, including
those for feature maps the previous layer lost; ``greedy`` leaves those kernels out.

Only plain chains of layers are supported (VGG-style: convolutions, BatchNorm,
activations, pooling, dropout, flatten, then linear layers). The forward pass is
traced with ``torch.fx`` and the method refuses a model with residual connections,
concatenations or branches (pruning there needs every branch that meets at a sum to
drop the same channels, which this method does not do), grouped or depthwise
convolutions, or operations between the convolutions whose effect on channels it
cannot tell.

Under distributed training every rank computes the same plan from identical
weights; the kept-filter indices are additionally broadcast from rank 0 so that
ties between equal norms cannot leave ranks with different architectures.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import torch
import torch.fx as fx
import torch.nn as nn

import slimkit.models
from slimkit import hookimpl
from slimkit.api import Method, Option
from slimkit.errors import UserError
from slimkit.nn import MaskedConv2d, MaskedLinear, MaskedMixin

__all__ = ["FilterPrune", "plan_chain", "prune_filters", "filters_to_remove", "count_macs", "count_params"]

# Modules and functions that act on every channel alike (channel count and order kept).
_PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
                 nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Identity,
                 nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d,
                 nn.Dropout, nn.Dropout2d, nn.AlphaDropout, nn.Flatten)
_PASS_NAMES = {"relu", "relu_", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish", "hardswish",
               "hardsigmoid", "hardtanh", "sigmoid", "tanh", "max_pool2d", "_max_pool2d", "avg_pool2d",
               "adaptive_avg_pool2d", "adaptive_max_pool2d", "_adaptive_max_pool2d", "dropout", "dropout2d",
               "flatten", "view", "reshape", "contiguous", "clone", "detach"}
# Elementwise arithmetic keeps channels when the other operand is a plain number.
_SCALAR_OPS = {"add", "sub", "mul", "truediv", "div", "iadd", "imul", "neg", "__add__", "__mul__"}
_SHAPE_QUERIES = {"size", "dim", "numel"}
_SPATIAL_REDUCTIONS = {"mean", "sum", "amax"}
_REFUSE = "filter-prune works on plain sequential conv nets (VGG-style)"


def filters_to_remove(channels: int, ratio: float) -> int:
    """``round(ratio * channels)`` (half up, exact decimal arithmetic), leaving at least one filter."""
    m = math.floor(Fraction(repr(float(ratio))) * channels + Fraction(1, 2))
    return max(0, min(m, channels - 1))


# --------------------------------------------------------------------------- tracing

class _Tracer(fx.Tracer):
    """Keeps conv/linear/BN (masked twins included) as leaves, so they appear as modules."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)) or super().is_leaf_module(m, qualname)


@dataclass
class _Event:
    kind: str  # conv | bn | linear | pass | other
    what: str  # for messages
    name: str | None = None  # qualified module name (conv / bn / linear)


@dataclass
class ConvPlan:
    name: str
    prune: bool  # remove filters of this conv
    bns: list = field(default_factory=list)  # names of the BatchNorm2d layers on its output


@dataclass
class ChainPlan:
    convs: list  # ConvPlan, forward order
    linear: str | None  # the first Linear after the last conv (reads the last conv's maps)


def _describe(node: fx.Node, model: nn.Module) -> str:
    if node.op == "call_module":
        return f"module {node.target!r} ({type(model.get_submodule(node.target)).__name__})"
    name = getattr(node.target, "__name__", str(node.target))
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path, cls = list(stack.values())[-1]
        owner = getattr(cls, "__name__", str(cls))
        return f"operation {name!r} in module {path!r} ({owner})"
    return f"operation {name!r} in the model's forward"


def _target_name(node: fx.Node) -> str:
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")


def _is_shape_query(node: fx.Node) -> bool:
    if node.op == "call_method" and node.target in _SHAPE_QUERIES:
        return True
    return (node.op == "call_function" and _target_name(node) == "getattr"
            and len(node.args) > 1 and node.args[1] in ("shape", "ndim"))


def _classify(node: fx.Node, model: nn.Module) -> _Event:
    what = _describe(node, model)
    if node.op == "call_module":
        m = model.get_submodule(node.target)
        if type(m) in (nn.Conv2d, MaskedConv2d):
            return _Event("conv", what, node.target)
        if type(m) is nn.BatchNorm2d:
            return _Event("bn", what, node.target)
        if type(m) in (nn.Linear, MaskedLinear):
            return _Event("linear", what, node.target)
        if isinstance(m, _PASS_MODULES) or (type(m) is nn.PReLU and m.num_parameters == 1):
            return _Event("pass", what)
        return _Event("other", what)
    if node.op in ("call_function", "call_method"):
        name = _target_name(node)
        if name in _PASS_NAMES:
            return _Event("pass", what)
        if name in _SCALAR_OPS and all(not isinstance(a, fx.Node) for a in node.args[1:]) \
                and isinstance(node.args[0], fx.Node):
            return _Event("pass", what)
        if name in _SPATIAL_REDUCTIONS:  # e.g. x.mean((2, 3)): global pooling keeps the channels
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            dims = (dims,) if isinstance(dims, int) else dims
            if isinstance(dims, (tuple, list)) and dims and all(d in (2, 3, -1, -2) for d in dims):
                return _Event("pass", what)
    return _Event("other", what)


def _trace_chain(model: nn.Module) -> list[_Event]:
    """The forward pass as a list of layers/operations, refusing anything that is not a chain."""
    try:
        graph = _Tracer().trace(model)
    except Exception as exc:  # data-dependent control flow and the like
        raise UserError(f"filter-prune cannot trace the model's forward pass with torch.fx "
                        f"({type(exc).__name__}: {exc}); {_REFUSE}") from None
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise UserError(f"filter-prune: the model's forward takes {len(inputs)} inputs; {_REFUSE} with one input")
    chain = {inputs[0]}
    events: list[_Event] = []
    seen_modules: set[str] = set()
    for node in graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        feeding = [a for a in node.all_input_nodes if a in chain]
        if not feeding or _is_shape_query(node):
            continue
        if len(feeding) > 1:
            raise UserError(f"filter-prune: {_describe(node, model)} combines {len(feeding)} activations "
                            f"(a residual connection, concatenation or branch merge); {_REFUSE} without "
                            "residual connections, where removing a layer's filters affects only the next layer")
        chain.add(node)
        event = _classify(node, model)
        if event.name is not None:
            if event.name in seen_modules:
                raise UserError(f"filter-prune: {event.what} is used more than once in the forward pass; "
                                f"{_REFUSE} where every layer runs once")
            seen_modules.add(event.name)
        events.append(event)
    for node in chain:
        users = [u for u in node.users if (u in chain or u.op == "output") and not _is_shape_query(u)]
        if len(users) > 1:
            raise UserError(f"filter-prune: the output of {_describe(node, model) if node.op != 'placeholder' else 'the input'} "
                            f"feeds {len(users)} branches; {_REFUSE} without branches or residual connections")
    return events


def plan_chain(model: nn.Module, keep_last_conv: bool = False) -> ChainPlan:
    """Which convs lose filters, which BatchNorms follow them and which Linear reads the last one.

    Raises :class:`UserError` (saying why) for models this method cannot resize.
    """
    events = _trace_chain(model)
    convs = [i for i, e in enumerate(events) if e.kind == "conv"]
    if not convs:
        raise UserError(f"filter-prune: the model has no nn.Conv2d layers to remove filters from; {_REFUSE}")
    for i in convs:
        conv = model.get_submodule(events[i].name)
        if conv.groups != 1:
            raise UserError(f"filter-prune: {events[i].what} is a grouped/depthwise convolution (groups="
                            f"{conv.groups}), whose input and output channels are tied; {_REFUSE} of ordinary convs")
    linear = next((i for i in range(convs[-1] + 1, len(events)) if events[i].kind == "linear"), None)
    end = linear if linear is not None else len(events)
    plans: list[ConvPlan] = []
    for i in range(convs[0], end):
        e = events[i]
        if e.kind == "conv":
            plans.append(ConvPlan(e.name, prune=True))
        elif e.kind == "bn":
            bn, conv = model.get_submodule(e.name), model.get_submodule(plans[-1].name)
            if bn.num_features != conv.out_channels:
                raise UserError(f"filter-prune: {e.what} has {bn.num_features} features but follows a conv with "
                                f"{conv.out_channels} output channels; {_REFUSE}")
            plans[-1].bns.append(e.name)
        elif e.kind != "pass":
            raise UserError(f"filter-prune: {e.what} sits between the convolutions and the classifier, and "
                            f"filter-prune cannot tell how it uses channels; {_REFUSE} (conv, BatchNorm2d, "
                            "activations, pooling, dropout, flatten, then Linear)")
    if linear is None or keep_last_conv:
        # Without a Linear after it, the last conv's channels are the model's output.
        plans[-1].prune = False
    lin_name = events[linear].name if linear is not None else None
    if lin_name is not None:
        lin, last = model.get_submodule(lin_name), model.get_submodule(plans[-1].name)
        if lin.in_features % last.out_channels:
            raise UserError(f"filter-prune: {events[linear].what} has {lin.in_features} inputs, not a multiple of "
                            f"the {last.out_channels} channels of the last conv; {_REFUSE}")
    return ChainPlan(plans, lin_name)


# --------------------------------------------------------------------------- surgery

def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    parent._modules[leaf] = new


def _like(new: nn.Module, old: nn.Module) -> nn.Module:
    ref = old.weight if getattr(old, "weight", None) is not None else next(old.buffers())
    new.to(device=ref.device, dtype=ref.dtype)
    new.train(old.training)
    for (pname, p), (_, q) in zip(new.named_parameters(), old.named_parameters()):
        p.requires_grad_(q.requires_grad)
    return new


@torch.no_grad()
def _new_conv(old: nn.Conv2d, keep_in, keep_out) -> nn.Conv2d:
    w = old.weight
    mask = old.weight_mask if isinstance(old, MaskedMixin) else None
    if keep_in is not None:
        w = w[:, keep_in]
        mask = mask[:, keep_in] if mask is not None else None
    if keep_out is not None:
        w = w[keep_out]
        mask = mask[keep_out] if mask is not None else None
    args = (w.shape[1], w.shape[0], old.kernel_size, old.stride, old.padding, old.dilation, 1, old.bias is not None)
    new = MaskedConv2d(*args) if isinstance(old, MaskedConv2d) else nn.Conv2d(*args, padding_mode=old.padding_mode)
    _like(new, old)
    new.weight.copy_(w)
    if old.bias is not None:
        new.bias.copy_(old.bias if keep_out is None else old.bias[keep_out])
    if mask is not None:
        new.weight_mask.copy_(mask)
    return new


@torch.no_grad()
def _new_bn(old: nn.BatchNorm2d, keep) -> nn.BatchNorm2d:
    new = _like(nn.BatchNorm2d(len(keep), old.eps, old.momentum, old.affine, old.track_running_stats), old)
    if old.affine:
        new.weight.copy_(old.weight[keep])
        new.bias.copy_(old.bias[keep])
    if old.track_running_stats:
        new.running_mean.copy_(old.running_mean[keep])
        new.running_var.copy_(old.running_var[keep])
        new.num_batches_tracked.copy_(old.num_batches_tracked)
    return new


@torch.no_grad()
def _new_linear(old: nn.Linear, cols) -> nn.Linear:
    cls = MaskedLinear if isinstance(old, MaskedLinear) else nn.Linear
    new = _like(cls(len(cols), old.out_features, old.bias is not None), old)
    new.weight.copy_(old.weight[:, cols])
    if old.bias is not None:
        new.bias.copy_(old.bias)
    if isinstance(old, MaskedLinear):
        new.weight_mask.copy_(old.weight_mask[:, cols])
    return new


def _keep_filters(norms: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices (ascending) of the ``keep`` largest norms; equal norms keep the lower index."""
    order = torch.argsort(norms, descending=True, stable=True)
    return order[:keep].sort().values


@torch.no_grad()
def prune_filters(model: nn.Module, ratio: float, keep_last_conv: bool = False, strategy: str = "independent",
                  sync: bool = False) -> list[dict]:
    """Remove ``ratio`` of the filters of every conv by L1 norm, in place; returns per-layer rows."""
    if strategy not in ("independent", "greedy"):
        raise ValueError(f"strategy must be 'independent' or 'greedy', not {strategy!r}")
    plan = plan_chain(model, keep_last_conv)
    rows = []
    keep_prev = None  # surviving output channels of the previous conv (None = all)
    for cp in plan.convs:
        conv = model.get_submodule(cp.name)
        keep_out = None
        if cp.prune:
            weight = conv.weight * conv.weight_mask if isinstance(conv, MaskedMixin) else conv.weight
            if strategy == "greedy" and keep_prev is not None:
                weight = weight[:, keep_prev]  # kernels of removed maps do not count
            norms = weight.detach().abs().float().sum(dim=(1, 2, 3))
            n_keep = conv.out_channels - filters_to_remove(conv.out_channels, ratio)
            keep_out = _keep_filters(norms, n_keep)
            if sync:
                import torch.distributed as dist

                dist.broadcast(keep_out, src=0)
        new = _new_conv(conv, keep_prev, keep_out)
        _replace(model, cp.name, new)
        rows.append({"name": cp.name, "type": "conv", "out_channels_before": conv.out_channels,
                     "out_channels_after": new.out_channels, "in_channels_before": conv.in_channels,
                     "in_channels_after": new.in_channels, "pruned": cp.prune})
        for bn_name in cp.bns:
            if keep_out is not None:
                _replace(model, bn_name, _new_bn(model.get_submodule(bn_name), keep_out))
        keep_prev = keep_out
        old_channels = conv.out_channels
    if plan.linear is not None and keep_prev is not None:
        lin = model.get_submodule(plan.linear)
        spatial = lin.in_features // old_channels  # positions per channel after flatten (channel-major)
        cols = (keep_prev[:, None] * spatial + torch.arange(spatial, device=keep_prev.device)).reshape(-1)
        new = _new_linear(lin, cols)
        _replace(model, plan.linear, new)
        rows.append({"name": plan.linear, "type": "linear", "in_features_before": lin.in_features,
                     "in_features_after": new.in_features})
    return rows


# --------------------------------------------------------------------------- measures

def count_params(model: nn.Module) -> int:
    return slimkit.models.count_params(model)


def count_macs(model: nn.Module, input_shape) -> int:
    """Multiply-accumulates of conv and linear layers for one example of ``input_shape``."""
    return slimkit.models.count_macs(model, input_shape)["dense"]


# --------------------------------------------------------------------------- method

class FilterPrune(Method):
    name = "filter-prune"
    summary = "Remove the conv filters with the smallest L1 norms (Li et al. 2017): a physically smaller, faster net."
    paper = ("H. Li, A. Kadav, I. Durdanovic, H. Samet, H. P. Graf. Pruning Filters for Efficient ConvNets. "
             "ICLR 2017.")
    options = [
        Option("ratio", float, 0.5, "fraction of the filters removed from every conv layer "
               "(round(ratio x filters), at least one left)", min=0.0, max=0.95),
        Option("keep_last_conv", bool, False, "leave the last conv layer's filters as they are"),
        Option("strategy", str, "independent", "how a layer's filter norms treat kernels of maps the layer "
               "before lost: independent counts them, greedy does not (Li et al. Section 3.2)",
               choices=("independent", "greedy")),
        Option("epochs", int, None, "fine-tuning epochs after pruning (unset = the run's epochs)", min=0),
        Option("lr", float, None, "fine-tuning learning rate (unset = the run's)", min=0.0),
    ]

    def check(self, model, opts: dict) -> None:
        plan_chain(model, opts.get("keep_last_conv", False))

    def apply(self, model, ctx, opts: dict):
        input_shape = tuple(ctx.data.input_shape)
        params_before, macs_before = count_params(model), count_macs(model, input_shape)
        rows = prune_filters(model, opts["ratio"], opts["keep_last_conv"], opts["strategy"], sync=ctx.dist.enabled)
        params_after, macs_after = count_params(model), count_macs(model, input_shape)
        ctx.log(f"filter-prune: params {params_before} -> {params_after} ({params_after / params_before:.1%}), "
                f"MACs {macs_before} -> {macs_after} ({macs_after / macs_before:.1%})")
        epochs = ctx.epochs if opts["epochs"] is None else opts["epochs"]
        extra = {}
        if epochs > 0:
            extra["val_accuracy_before_finetune"] = ctx.evaluate(model, "val")
            ctx.train(model, epochs=epochs, lr=opts["lr"])
        ctx.record(ratio=opts["ratio"], strategy=opts["strategy"], layers=rows,
                   params_before=params_before, params_after=params_after,
                   macs_before=macs_before, macs_after=macs_after, **extra)
        return model


@hookimpl
def register_methods(register):
    register(FilterPrune())
