"""Low-rank decomposition of convolutions into vertical and horizontal filters (Tai et al., ICLR 2016).

C. Tai, T. Xiao, Y. Zhang, X. Wang, W. E. "Convolutional neural networks with low-rank
regularization", ICLR 2016 (arXiv:1511.06067): the closed-form decomposition of its Theorem.

The decomposition
-----------------
A convolution with ``N`` filters ``W_n`` of ``C`` channels and ``kh x kw`` taps
(``weight[n, c, h, w]``, groups=1) is approximated by ``K`` *vertical* filters
``V_k`` (``C`` channels, ``kh x 1``) followed by ``N`` *horizontal* filters ``H_n``
(``K`` channels, ``1 x kw``)::

    W_n^c(h, w)  ~=  sum_{k=1..K}  V_k^c(h) * H_n^k(w)

The paper minimises ``sum_{n,c} || W_n^c - sum_k H_n^k (V_k^c)^T ||_F^2`` and shows the
global optimum is given in closed form by an SVD (its Theorem). Arrange the kernel as
the ``(C kh) x (N kw)`` matrix ::

    M[(c, h), (n, w)] = weight[n, c, h, w]          row c*kh + h, column n*kw + w
                                                    (weight.permute(1, 2, 0, 3).reshape(C*kh, N*kw))

take its SVD ``M = U S Q^T`` (singular values ``s_1 >= s_2 >= ...``) and keep ``K``::

    V_k^c(h) = U[c*kh + h, k] * sqrt(s_k)        -> vertical.weight[k, c, h, 0]
    H_n^k(w) = Q[n*kw + w, k] * sqrt(s_k)        -> horizontal.weight[n, k, 0, w]

``sum_k V_k^c(h) H_n^k(w)`` is then the rank-K truncated SVD ``M_K`` of ``M`` (Eckart-Young),
so the kernel error is ``||M - M_K||_F = sqrt(sum_{i>K} s_i^2)`` and ``K = rank(M)``
(at most ``min(C kh, N kw)``, the *full rank*) reproduces the layer exactly.
The SVD is computed in float64 and the factors cast to the layer's dtype.

Stride, padding and dilation split along the two axes: the vertical conv gets
``stride (sh, 1)``, ``padding (ph, 0)``, ``dilation (dh, 1)``; the horizontal conv gets
``(1, sw)``, ``(0, pw)``, ``(1, dw)``. The vertical conv acts on every input column
alike, so padding the intermediate map along the width (zeros, or reflect / replicate
/ circular copies) equals padding the input first: the composition is the original
convolution exactly at full rank, for every ``padding_mode``. The bias goes on the
horizontal conv. ``padding="same"`` is resolved to numbers where it is symmetric;
grouped convolutions and asymmetric ``"same"`` padding are left as they are.

Linear layers (``layers=linear|all``) are factorised by the truncated SVD
``W = U S V^T`` (``out x in``) into ``first = Linear(in, K)`` with weight
``sqrt(S_K) V_K^T`` and ``second = Linear(K, out)`` with weight ``U_K sqrt(S_K)`` and the
bias. Their full rank is ``min(in, out)``.

Masked layers (``slimkit.nn.MaskedConv2d`` / ``MaskedLinear``, e.g. after ``prune``) are
decomposed from ``weight * mask``; the factors are dense, so the sparsity is not kept
(the layer table says so with ``was_masked``).

Costs (per example; a conv with output ``Ho x Wo`` on an input of width ``Wi``)
-------------------------------------------------------------------------------
parameters: ``C N kh kw`` -> ``K (C kh + N kw)`` (plus the bias ``N``, unchanged).
MACs: ``Ho Wo N C kh kw`` -> ``Ho Wv K C kh + Ho Wo N K kw`` where ``Wv`` is the width of
the vertical conv's output (``Wi`` for stride 1 / "same" padding: the vertical conv is
not strided along the width).
A layer is replaced only when ``K (C kh + N kw) < C N kh kw`` (``K (in + out) < in out``
for Linear); otherwise it is kept and the layer table says why. For a square 3x3
layer (``C = N``) the full rank is ``3C`` and the parameter fraction kept is
``2 K / (3C)``, i.e. ``2 x ratio``: ``ratio=0.2`` keeps 40 % of the weights.

Rank per layer
--------------
``rank_mode=fixed``: ``K = rank`` (clamped to the full rank). ``ratio``: ``K = ceil(ratio x
full rank)`` in exact decimal arithmetic, at least 1. ``energy``: the smallest ``K``
with ``sum_{i<=K} s_i^2 >= energy x sum_i s_i^2`` (compared in float64 with a relative
slack of 1e-12, so that an exact boundary such as 0.8 of 4 + 1 picks ``K = 1``).

Batch normalisation (``bn=true``)
---------------------------------
When the paper trains low-rank *constrained* networks from scratch it relies on batch
normalisation in the factorised layers to make the deeper factorised networks
trainable. Here (decomposition of a trained network, then fine-tuning) it is optional:
``bn=true`` puts a ``BatchNorm2d`` after each horizontal conv, inside
:class:`LowRankConv2d`. A freshly initialised BN would normalise the layer's output
and change what the network computes, so it is initialised to be the identity on the
training data instead: its running mean and
variance are measured on up to :data:`BN_CALIBRATION_EXAMPLES` training examples
(no augmentation) and its affine parameters set to ``weight = sqrt(var + eps)``,
``bias = mean``. In eval mode the BN is then exactly the identity (accuracy before
fine-tuning is unchanged by it); in train mode it normalises with batch statistics,
which are close to the calibrated ones, and fine-tuning learns from there. In VGG-style
networks, where every conv is already followed by a BatchNorm, the extra BN adds
parameters and latency for little benefit, so the default is ``bn=false``.

Pipeline
--------
decompose (closed form) -> measure the approximation (relative Frobenius error of each
kernel and of each layer's response on real inputs; accuracy before fine-tuning) ->
fine-tune with ``ctx.train`` -> record per-layer ranks, parameter and MAC reduction and
latency before/after (timed side by side in one run by :func:`slimkit.measure.measure_latency`).
"""
from __future__ import annotations

import copy
import math
from fractions import Fraction
from typing import Sequence

import torch
import torch.nn as nn

from slimkit import hookimpl
from slimkit.api import Method, Option
from slimkit.errors import UserError
from slimkit.measure import measure_latency
from slimkit.models import count_macs, count_params
from slimkit.nn import (LowRankConv2d, LowRankLinear, MaskedConv2d, MaskedLinear, effective_weight, eval_mode,
                        forward_hooks, replace_layer)
from slimkit.ops.conv import as_pair

__all__ = [
    "LowRankConv2d", "LowRankLinear", "LowRank", "conv_matrix", "decompose_conv", "decompose_linear",
    "choose_rank", "singular_values", "conv_lowrank_params", "linear_lowrank_params", "full_rank",
    "resolve_padding", "select_layers", "calibrate_bn",
]

#: Training examples used to set the running statistics of inserted BatchNorms (bn=true).
BN_CALIBRATION_EXAMPLES = 1024
#: Training examples whose layer inputs measure each layer's response error.
RESPONSE_EXAMPLES = 256
#: Relative slack of the energy test (float64 rounding at exact boundaries).
ENERGY_SLACK = 1e-12

_CONV_TYPES = (nn.Conv2d, MaskedConv2d)
_LINEAR_TYPES = (nn.Linear, MaskedLinear)


# --------------------------------------------------------------------------- closed form

def conv_matrix(weight: torch.Tensor) -> torch.Tensor:
    """The ``(C kh) x (N kw)`` matrix ``M[c*kh + h, n*kw + w] = weight[n, c, h, w]`` of the Theorem."""
    n, c, kh, kw = weight.shape
    return weight.permute(1, 2, 0, 3).reshape(c * kh, n * kw)


def full_rank(layer: nn.Module) -> int:
    """``min(C kh, N kw)`` for a conv, ``min(in, out)`` for a linear layer."""
    if isinstance(layer, nn.Conv2d):
        kh, kw = layer.kernel_size
        return min(layer.in_channels * kh, layer.out_channels * kw)
    return min(layer.in_features, layer.out_features)


def singular_values(layer: nn.Module) -> torch.Tensor:
    """Singular values (float64, descending) of the layer's kernel matrix (weight * mask)."""
    w = effective_weight(layer).detach().double().cpu()
    mat = conv_matrix(w) if w.dim() == 4 else w
    return torch.linalg.svdvals(mat)


def conv_lowrank_params(c: int, n: int, kh: int, kw: int, k: int) -> tuple[int, int]:
    """(weights before, weights after) of decomposing a ``C -> N``, ``kh x kw`` conv at rank ``K``."""
    return c * n * kh * kw, k * (c * kh + n * kw)


def linear_lowrank_params(inp: int, out: int, k: int) -> tuple[int, int]:
    return inp * out, k * (inp + out)


def _lowrank_weights(layer: nn.Module, k: int) -> tuple[int, int]:
    if isinstance(layer, nn.Conv2d):
        kh, kw = layer.kernel_size
        return conv_lowrank_params(layer.in_channels, layer.out_channels, kh, kw, k)
    return linear_lowrank_params(layer.in_features, layer.out_features, k)


def choose_rank(sigma: torch.Tensor, mode: str, *, rank: int | None = None, ratio: float | None = None,
                energy: float | None = None, full: int | None = None) -> int:
    """K for singular values ``sigma`` (descending) under ``mode`` (fixed | ratio | energy); see the module doc."""
    full = int(full if full is not None else sigma.numel())
    if full < 1:
        raise ValueError("a layer with no singular values has no rank to choose")
    if mode == "fixed":
        if rank is None or rank < 1:
            raise ValueError("rank_mode=fixed needs rank >= 1")
        return min(int(rank), full)
    if mode == "ratio":
        if ratio is None or not 0 < ratio <= 1:
            raise ValueError(f"ratio must be in (0, 1], got {ratio!r}")
        return max(1, min(full, math.ceil(Fraction(repr(float(ratio))) * full)))
    if mode == "energy":
        if energy is None or not 0 < energy <= 1:
            raise ValueError(f"energy must be in (0, 1], got {energy!r}")
        sq = sigma.double() ** 2
        total = float(sq.sum())
        if total == 0.0:
            return 1  # an all-zero kernel: one (zero) component represents it exactly
        cum = torch.cumsum(sq, 0)
        need = energy * total * (1.0 - ENERGY_SLACK)
        hits = (cum >= need).nonzero()
        k = int(hits[0]) + 1 if hits.numel() else sq.numel()
        return min(k, full)
    raise ValueError(f"unknown rank_mode {mode!r}: expected fixed, ratio or energy")


def resolve_padding(conv: nn.Conv2d) -> tuple[int, int] | None:
    """Numeric (ph, pw) of ``conv``; None for an asymmetric ``padding='same'``."""
    if not isinstance(conv.padding, str):
        return tuple(as_pair(conv.padding, "padding"))
    if conv.padding == "valid":
        return 0, 0
    pads = []
    for k, d in zip(conv.kernel_size, conv.dilation):
        total = d * (k - 1)
        if total % 2:
            return None
        pads.append(total // 2)
    return pads[0], pads[1]


@torch.no_grad()
def decompose_conv(conv: nn.Conv2d, rank: int, *, bn: bool = False) -> LowRankConv2d:
    """The closed-form rank-``rank`` :class:`LowRankConv2d` of ``conv`` (the paper's Theorem)."""
    if conv.groups != 1:
        raise ValueError(f"grouped convolution (groups={conv.groups}) is not decomposed")
    padding = resolve_padding(conv)
    if padding is None:
        raise ValueError("asymmetric padding='same' (even kernel extent) cannot be split into two convs")
    w = effective_weight(conv).detach()
    n, c, kh, kw = w.shape
    full = min(c * kh, n * kw)
    k = int(rank)
    if not 1 <= k <= full:
        raise ValueError(f"rank {k} is outside [1, {full}] for a {c}->{n} {kh}x{kw} conv")
    u, s, vh = torch.linalg.svd(conv_matrix(w.double().cpu()), full_matrices=False)
    root = s[:k].sqrt()
    vertical = (u[:, :k] * root).reshape(c, kh, k).permute(2, 0, 1).unsqueeze(-1)  # [K, C, kh, 1]
    horizontal = (vh[:k].T * root).reshape(n, kw, k).permute(0, 2, 1).unsqueeze(2)  # [N, K, 1, kw]
    new = LowRankConv2d(c, n, [kh, kw], k, list(conv.stride), list(padding), list(conv.dilation),
                        conv.bias is not None, conv.padding_mode, bn)
    new.to(device=conv.weight.device, dtype=conv.weight.dtype)
    new.vertical.weight.copy_(vertical)
    new.horizontal.weight.copy_(horizontal)
    if conv.bias is not None:
        new.horizontal.bias.copy_(conv.bias)
    if bn:  # identity in eval mode until calibrate_bn sets the data's statistics
        new.bn.weight.fill_(math.sqrt(1.0 + new.bn.eps))
    return new


@torch.no_grad()
def decompose_linear(linear: nn.Linear, rank: int) -> LowRankLinear:
    """The truncated-SVD rank-``rank`` :class:`LowRankLinear` of ``linear``."""
    w = effective_weight(linear).detach()
    out, inp = w.shape
    k = int(rank)
    if not 1 <= k <= min(inp, out):
        raise ValueError(f"rank {k} is outside [1, {min(inp, out)}] for a {inp}->{out} linear layer")
    u, s, vh = torch.linalg.svd(w.double().cpu(), full_matrices=False)
    root = s[:k].sqrt()
    new = LowRankLinear(inp, out, k, linear.bias is not None)
    new.to(device=linear.weight.device, dtype=linear.weight.dtype)
    new.first.weight.copy_(root[:, None] * vh[:k])
    new.second.weight.copy_(u[:, :k] * root)
    if linear.bias is not None:
        new.second.bias.copy_(linear.bias)
    return new


# --------------------------------------------------------------------------- selection

def _inside_lowrank(name: str, lowrank_names: Sequence[str]) -> bool:
    return any(name.startswith(p + ".") for p in lowrank_names)


def select_layers(model: nn.Module, layers: str = "conv", skip_first: bool = True) -> list[dict]:
    """Every conv / linear layer of ``model`` with whether it may be decomposed and, if not, why.

    Rows: ``name``, ``module``, ``kind`` (conv | linear), ``eligible`` (bool), ``reason``.
    ``skip_first`` leaves out the model's first conv (in module order) when it reads
    the image (``in_channels <= 3``): with so few input channels it has little to gain.
    """
    if layers not in ("conv", "linear", "all"):
        raise ValueError(f"layers must be conv, linear or all, not {layers!r}")
    lowrank_names = [n for n, m in model.named_modules() if isinstance(m, (LowRankConv2d, LowRankLinear))]
    rows, first_conv_seen = [], False
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        kind = "conv" if isinstance(m, nn.Conv2d) else "linear"
        is_first_conv = kind == "conv" and not first_conv_seen
        first_conv_seen = first_conv_seen or kind == "conv"
        reason = ""
        if _inside_lowrank(name, lowrank_names):
            reason = "already part of a low-rank layer"
        elif type(m) not in _CONV_TYPES + _LINEAR_TYPES:
            reason = f"{type(m).__name__} is not a plain or masked Conv2d/Linear"
        elif layers != "all" and kind != layers:
            reason = f"layers={layers}"
        elif kind == "conv" and m.groups != 1:
            reason = f"grouped convolution (groups={m.groups})"
        elif kind == "conv" and resolve_padding(m) is None:
            reason = "asymmetric padding='same'"
        elif is_first_conv and skip_first and m.in_channels <= 3:
            reason = f"first conv on the {m.in_channels}-channel input (skip_first)"
        rows.append({"name": name, "module": m, "kind": kind, "eligible": not reason, "reason": reason})
    return rows


def _plan_rank(layer: nn.Module, opts: dict, sigma: torch.Tensor | None = None) -> int:
    mode = opts["rank_mode"]
    if mode == "energy" and sigma is None:
        sigma = singular_values(layer)
    return choose_rank(sigma if sigma is not None else torch.empty(0), mode, rank=opts.get("rank"),
                       ratio=opts.get("ratio"), energy=opts.get("energy"), full=full_rank(layer))


# --------------------------------------------------------------------------- measurements

@torch.no_grad()
def calibrate_bn(model: nn.Module, modules: Sequence[LowRankConv2d], batches) -> int:
    """Set each module's ``bn`` to the identity on the data: running stats from ``batches``,
    ``weight = sqrt(var + eps)``, ``bias = mean``. Returns the number of examples seen."""
    sums = {id(m): None for m in modules}
    count = {id(m): 0 for m in modules}
    handles = []

    def hook(owner):
        def fn(module, inputs, output):
            y = output.detach().double()
            flat = y.transpose(0, 1).reshape(y.shape[1], -1)
            s = torch.stack([flat.sum(1), (flat ** 2).sum(1)])
            sums[id(owner)] = s if sums[id(owner)] is None else sums[id(owner)] + s
            count[id(owner)] += flat.shape[1]
        return fn

    for m in modules:
        handles.append(m.horizontal.register_forward_hook(hook(m)))
    seen = 0
    try:
        with eval_mode(model):
            for x in batches:
                model(x)
                seen += x.shape[0]
    finally:
        for h in handles:
            h.remove()
    for m in modules:
        if count[id(m)] == 0:
            continue
        s = sums[id(m)] / count[id(m)]
        mean, var = s[0], (s[1] - s[0] ** 2).clamp_min(0.0)
        bn = m.bn
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        bn.weight.copy_((var + bn.eps).sqrt())
        bn.bias.copy_(mean)
    return seen


def _data_batches(ctx, n: int, batch_size: int | None = None):
    """Up to ``n`` training examples in batches, unshuffled and unaugmented, on ctx.device."""
    left = n
    for x, _ in ctx.data.batches("train", min(batch_size or ctx.batch_size, n), shuffle=False, augment=False):
        if left <= 0:
            break
        x = x[:left]
        left -= x.shape[0]
        yield x.to(ctx.device)


@torch.no_grad()
def _capture_inputs(model: nn.Module, names: Sequence[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    found: dict[str, torch.Tensor] = {}

    def keep_input(name):
        def hook(module, inputs, output):  # returns None: a hook's return value would replace the output
            found.setdefault(name, inputs[0].detach())
        return hook

    with forward_hooks([(model.get_submodule(name), keep_input(name)) for name in names]), eval_mode(model):
        model(x)
    return found


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b||_F / ||b||_F in float64 (0 when both are 0)."""
    a, b = a.double(), b.double()
    den = float(torch.linalg.norm(b))
    num = float(torch.linalg.norm(a - b))
    return num / den if den > 0 else (0.0 if num == 0 else float("inf"))


def _conv_params(model: nn.Module) -> int:
    return sum(p.numel() for m in model.modules() if isinstance(m, nn.Conv2d) for p in m.parameters(recurse=False))


def _linear_params(model: nn.Module) -> int:
    return sum(p.numel() for m in model.modules() if isinstance(m, nn.Linear) for p in m.parameters(recurse=False))


# --------------------------------------------------------------------------- method

class LowRank(Method):
    name = "lowrank"
    summary = ("Low-rank decomposition: each k x k conv -> vertical k x 1 + horizontal 1 x k convs in closed form "
               "(Tai et al. 2016), linear layers by truncated SVD; then fine-tune.")
    paper = ("C. Tai, T. Xiao, Y. Zhang, X. Wang, W. E. Convolutional neural networks with low-rank regularization. "
             "ICLR 2016 (arXiv:1511.06067).")
    options = [
        Option("rank_mode", str, "ratio", "how K is chosen per layer: fixed (rank), ratio (of the full rank "
               "min(C kh, N kw)), energy (smallest K keeping that fraction of sum sigma^2)",
               choices=("fixed", "ratio", "energy")),
        Option("rank", int, None, "rank_mode=fixed: K for every layer (clamped to its full rank)", min=1),
        Option("ratio", float, 0.2, "rank_mode=ratio: K = ceil(ratio x full rank); a square 3x3 layer keeps "
               "2 x ratio of its weights", min=0.001, max=1.0),
        Option("energy", float, 0.95, "rank_mode=energy: fraction of the squared singular values to keep",
               min=0.001, max=1.0),
        Option("layers", str, "conv", "which layers to decompose", choices=("conv", "linear", "all")),
        Option("skip_first", bool, True, "keep the first conv (on the 1-3 channel image) as it is"),
        Option("bn", bool, False, "add a BatchNorm2d after each horizontal conv, initialised to the identity "
               "on the training data (see the method's documentation)"),
    ]

    def sensitivity_layers(self, model, opts: dict) -> dict[str, int]:
        rows = select_layers(model, opts.get("layers", "conv"), opts.get("skip_first", True))
        return {r["name"]: r["module"].weight.numel() for r in rows if r["eligible"]}

    def compress_layer(self, model, layer: str, level: float, opts: dict):
        """Decompose ``layer`` alone at rank ``K = ceil((1 - level) x full rank)`` (level: the
        fraction of the rank removed), without BatchNorm or fine-tuning."""
        row = next((r for r in select_layers(model, opts.get("layers", "conv"), opts.get("skip_first", True))
                    if r["name"] == layer and r["eligible"]), None)
        if row is None:
            raise UserError(f"lowrank: layer {layer!r} cannot be decomposed in this model")
        m = row["module"]
        k = choose_rank(torch.empty(0), "ratio", ratio=max(1.0 - level, 1e-6), full=full_rank(m))
        new = decompose_conv(m, k) if row["kind"] == "conv" else decompose_linear(m, k)
        new.train(m.training)
        parent_name, _, child = layer.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
        return model

    def check(self, model, opts: dict) -> None:
        rows = select_layers(model, opts.get("layers", "conv"), opts.get("skip_first", True))
        eligible = [r for r in rows if r["eligible"]]
        if not eligible:
            why = "; ".join(f"{r['name']}: {r['reason']}" for r in rows[:6]) or "it has no Conv2d or Linear layer"
            raise UserError(f"lowrank: no layer of this model can be decomposed with layers="
                            f"{opts.get('layers', 'conv')} skip_first={opts.get('skip_first', True)} ({why})")
        mode = opts.get("rank_mode", "ratio")
        if mode == "fixed" and opts.get("rank") is None:
            raise UserError("lowrank: rank_mode=fixed needs rank=K (e.g. --set lowrank.rank=16)")
        if mode in ("fixed", "ratio"):
            full_opts = {"rank_mode": mode, "rank": opts.get("rank"), "ratio": opts.get("ratio", 0.2),
                         "energy": opts.get("energy", 0.95)}
            saving = []
            for r in eligible:
                k = _plan_rank(r["module"], full_opts)
                before, after = _lowrank_weights(r["module"], k)
                saving.append(after < before)
            if not any(saving):
                what = f"rank={opts.get('rank')}" if mode == "fixed" else f"ratio={opts.get('ratio', 0.2)}"
                raise UserError(f"lowrank: {what} saves no parameters in any of the {len(eligible)} eligible "
                                "layer(s) (K (C kh + N kw) must be below C N kh kw); choose a smaller rank")

    def apply(self, model, ctx, opts: dict):
        self.check(model, opts)
        shape = tuple(ctx.data.input_shape)
        before_model = copy.deepcopy(model)
        before_macs = count_macs(model, shape, layers=True)
        rows = select_layers(model, opts["layers"], opts["skip_first"])
        targets = [r for r in rows if r["eligible"]]

        # Inputs of every target layer on real data, for the response error.
        response_x = next(iter(_data_batches(ctx, RESPONSE_EXAMPLES, RESPONSE_EXAMPLES)), None)
        inputs = _capture_inputs(model, [r["name"] for r in targets], response_x) if response_x is not None else {}

        table, replaced, new_convs = [], [], []
        for r in rows:
            m, name = r["module"], r["name"]
            row = {"name": name, "kind": r["kind"], "shape": list(m.weight.shape), "full_rank": full_rank(m),
                   "was_masked": isinstance(m, (MaskedConv2d, MaskedLinear)), "replaced": False,
                   "params_before": sum(p.numel() for p in m.parameters(recurse=False))}
            if not r["eligible"]:
                table.append({**row, "reason": r["reason"]})
                continue
            sigma = singular_values(m)
            k = _plan_rank(m, opts, sigma)
            w_before, w_after = _lowrank_weights(m, k)
            sq = sigma ** 2
            total = float(sq.sum())
            row.update(rank=k, energy_kept=float(sq[:k].sum()) / total if total > 0 else 1.0)
            if w_after >= w_before:
                form = "K (C kh + N kw)" if r["kind"] == "conv" else "K (in + out)"
                table.append({**row, "reason": f"rank {k} saves no parameters: {form} = {w_after} >= "
                                               f"{w_before} weights"})
                continue
            new = decompose_conv(m, k, bn=opts["bn"]) if r["kind"] == "conv" else decompose_linear(m, k)
            eff = effective_weight(m).detach()
            approx = new.dense_weight()
            row["kernel_rel_error"] = _rel(conv_matrix(approx) if approx.dim() == 4 else approx,
                                           conv_matrix(eff) if eff.dim() == 4 else eff)
            if name in inputs:
                with torch.no_grad():
                    new.eval()
                    m_was = m.training
                    m.eval()
                    row["response_rel_error"] = _rel(new(inputs[name]), m(inputs[name]))
                    m.train(m_was)
            new.train(m.training)
            replace_layer(model, name, new)
            replaced.append(name)
            if opts["bn"] and isinstance(new, LowRankConv2d):
                new_convs.append(new)
            row.update(replaced=True, params_after=count_params(new), reason="")
            table.append(row)

        if not replaced:
            raise UserError("lowrank: no layer would get fewer parameters at the chosen ranks "
                            f"(rank_mode={opts['rank_mode']}); lower the energy / ratio / rank")
        bn_examples = calibrate_bn(model, new_convs, _data_batches(ctx, BN_CALIBRATION_EXAMPLES)) if new_convs else 0
        inputs.clear()

        after_macs = count_macs(model, shape, layers=True)
        for row in table:
            if row["replaced"]:
                row["macs_before"] = before_macs["layers"].get(row["name"], {}).get("dense", 0)
                row["macs_after"] = sum(v["dense"] for n, v in after_macs["layers"].items()
                                        if n.startswith(row["name"] + "."))
        epochs = ctx.epochs if opts["epochs"] is None else opts["epochs"]
        extra = {"val_accuracy_before_finetune": ctx.evaluate(model, "val") if ctx.data.size("val") else None,
                 "test_accuracy_before_finetune": ctx.evaluate(model, "test")}
        ctx.log(f"lowrank: decomposed {len(replaced)} of {len(rows)} conv/linear layers; test accuracy before "
                f"fine-tuning {100 * extra['test_accuracy_before_finetune']:.2f} %; fine-tuning {epochs} epoch(s)")
        if epochs > 0:
            ctx.train(model, epochs=epochs, lr=opts["lr"])

        latency = measure_latency({"before": before_model, "after": model}, shape, device=ctx.device)
        cp_before, cp_after = _conv_params(before_model), _conv_params(model)
        p_before, p_after = count_params(before_model), count_params(model)
        ctx.record(
            rank_mode=opts["rank_mode"], layers_decomposed=len(replaced), bn=opts["bn"],
            bn_calibration_examples=bn_examples,
            params_before=p_before, params_after=p_after, params_reduction=p_before / p_after,
            conv_params_before=cp_before, conv_params_after=cp_after,
            conv_params_reduction=cp_before / cp_after if cp_after else None,
            linear_params_before=_linear_params(before_model), linear_params_after=_linear_params(model),
            macs_before=before_macs["dense"], macs_after=after_macs["dense"],
            macs_reduction=before_macs["dense"] / after_macs["dense"] if after_macs["dense"] else None,
            latency_ms_before=latency["before"], latency_ms_after=latency["after"],
            latency_speedup=latency["before"] / latency["after"],
            latency_note=(f"median of 50 forward passes at batch 1 after 10 warm-up, before and after timed "
                          f"interleaved in one run, {torch.get_num_threads()} threads, {ctx.device}"),
            response_examples=RESPONSE_EXAMPLES if response_x is None else int(response_x.shape[0]),
            layers=table, **extra,
        )
        ctx.log(f"lowrank: conv parameters {cp_before:,} -> {cp_after:,} ({cp_before / max(cp_after, 1):.2f}x), "
                f"MACs {before_macs['dense']:,} -> {after_macs['dense']:,}, latency {latency['before']:.3f} -> "
                f"{latency['after']:.3f} ms")
        return model


@hookimpl
def register_methods(register):
    register(LowRank())
