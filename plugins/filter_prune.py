"""Structured channel pruning on the channel dependency graph (``filter-prune``).

The model is traced into a :class:`slimkit.nn.depgraph.ChannelGraph`: every channel
that must go together (a conv's filter with the BatchNorm entries, next-layer kernels
and Linear columns that read it; the channels of one residual stream across all its
convs; a concatenation's slices; a depthwise conv's groups; an attention head's rows
of q, k, v and columns of the output projection) is one *atom*, and atoms that share a
dimension form a *group*. Each atom gets an importance, the least important atoms are
removed by :func:`slimkit.nn.channels.remove_channels`, and the smaller network
(plain layers with fewer channels: fewer parameters, fewer multiply-accumulates) is
fine-tuned with ``ctx.train``.

Importance of an atom:

- ``l1`` / ``l2`` with ``norm_over=group`` (the default): DepGraph's group magnitude (Fang
  et al., CVPR 2023) as its authors' Torch-Pruning computes it (``GroupMagnitudeImportance``,
  group_reduction ``mean``): for every weight tensor of the group that holds the atom -- the
  producers' output rows, the consumers' input columns, BatchNorm/GroupNorm/PReLU scales,
  tensors used directly in the forward -- the L1 norm (``l2``: the squared L2 norm) of the
  atom's slice in it, averaged over those tensors. On ResNet-20 and MobileNetV2 these equal
  Torch-Pruning 1.6.1's scores to float32 rounding, group by group. Biases and
  normalisation shifts are not scored (Torch-Pruning's default ``bias=False``): they are
  offsets, one number per channel, not how much of the input a channel carries. Depthwise
  filters are not scored either, as in Torch-Pruning (whose check skips them);
  ``norm_over=group-all`` scores them too. Mean or sum over the tensors rank the same within
  a group whenever all its atoms are held by the same tensors, and the global scope's
  division by the group mean cancels the count; they differ only where atoms of one group
  have different holders (a concatenation's slices), and there the mean compares like with
  like;
- ``l1`` / ``l2`` with ``norm_over=filters``: the L1 / L2 norm of its filters (Li et al.,
  "Pruning Filters for Efficient ConvNets", ICLR 2017): ``sum |W|`` over the output rows
  of every conv/Linear that produces it (filter-prune's scoring before group scoring).

  Why ``group`` is the default (docs/BENCHMARKS.md, "Structured pruning side by side with
  Torch-Pruning", part B; digits, 3 seeds, fine-tuned 3 epochs at <= 50 % MACs, test %):
  MobileNetV2 per-layer group 86.7, group-all 83.5, filters 83.8 (Torch-Pruning 86.6);
  global group 86.3, group-all 86.6, filters 81.7 (Torch-Pruning 86.8); ResNet-20 (no
  depthwise convs) per-layer 97.4 for both scorings, global group 97.7 (the network
  Torch-Pruning prunes, channel for channel), filters 97.8. Fine-tuning there moves a seed by
  up to 3 points when only the dropout masks change, so the steadier evidence is the
  accuracy of the pruned MobileNetV2 before fine-tuning, with re-estimated BatchNorm
  statistics: per-layer group 70.9, group-all 68.2, filters 64.0; global 61.0, 58.0, 35.3.
  With filter norms, global scope kept MobileNetV2's residual streams nearly whole (61 of
  64, 93 of 96 channels) and cut the wide expansions of blocks 11-16 to 55-58 %; group
  scores keep 73 %, 89 % and 61-69 % there (seed 0);
- ``bn-scale``: ``|gamma|`` of its BatchNorm scale (Liu et al., "Learning Efficient
  Convolutional Networks through Network Slimming", ICCV 2017); with ``sparsity > 0``
  the model first trains with the paper's L1 penalty ``sparsity * sum |gamma|`` added
  (its subgradient on the BN scales). Atoms without a BatchNorm are left alone;
- ``taylor``: Molchanov et al., "Importance Estimation for Neural Network Pruning"
  (CVPR 2019), first order: ``(sum_s g_s w_s)^2`` over all parameters ``s`` of the atom,
  averaged over ``taylor_batches`` training batches;
- ``random``: uniform (a control).

``scope=per-layer`` removes ``ratio`` of every group's atoms (rounded half up, at least
one left); ``scope=global`` ranks all atoms together (l1/l2/taylor scores divided by
their group's mean so that layers compare; bn-scale too, unless the model went through
the sparsity training, which is what makes the paper's one raw global threshold work:
without it raw BN scales differ by orders of magnitude between layers and a global
threshold empties whole layers -- MobileNetV2 on digits kept 1 of 1280 head channels and
fell to 17 %, against 84 % for Torch-Pruning, which normalises; docs/BENCHMARKS.md). ``macs`` replaces ``ratio`` by a target: the smallest ratio whose network
has at most ``macs x`` the baseline's multiply-accumulates (found by bisection on
real pruned copies). ``steps > 1`` prunes iteratively, fine-tuning between steps;
``round_to`` (default 8) keeps each group's channel count a multiple of N (a head of
``D`` channels counts ``D``; groups of fewer than 2N channels are left exact). The default
is measured: resnet56 and mobilenetv2 filter-pruned to exact counts (11, 23, 45 channels)
ran 0.78-0.94x the speed of their *unpruned* baselines in ONNX Runtime, whose CPU kernels
block channels by 8; with multiples of 8 they ran 1.7-1.9x faster (docs/BENCHMARKS.md,
issue 11 part C). ``exclude`` leaves layers whose names match the glob patterns alone.

Models the graph cannot follow are refused with one line naming the fx node, before
anything changes. Under distributed training the removed atoms are broadcast from rank 0.
"""
from __future__ import annotations

import math
from fractions import Fraction

import torch
import torch.nn as nn
import torch.nn.functional as F

import slimkit.models
from slimkit import hookimpl
from slimkit.api import Method, Option, TrainCallback
from slimkit.errors import UserError
from slimkit.nn import eval_mode
from slimkit.nn.channels import atom_scores, remove_channels
from slimkit.nn.depgraph import build_graph, trace

__all__ = ["FilterPrune", "filters_to_remove", "group_names", "importance_scores", "select_atoms", "prune_channels",
           "count_macs", "count_params", "layer_rows"]

IMPORTANCES = ("l1", "l2", "bn-scale", "taylor", "random")
SCOPES = ("per-layer", "global")
NORM_OVER = ("group", "group-all", "filters")
# What a group-norm score reads: every weight that holds the atom. Biases and normalisation shifts are left
# out (as DepGraph's group magnitude does by default): they are offsets, one number per channel, which say
# where an activation sits, not how much of the input it carries, and they are not on the scale of a k x k x C
# weight slice.
_GROUP_ROLES = ("out", "in", "scale", "param")


def filters_to_remove(channels: int, ratio: float) -> int:
    """``round(ratio * channels)`` (half up, exact decimal arithmetic), leaving at least one."""
    m = math.floor(Fraction(repr(float(ratio))) * channels + Fraction(1, 2))
    return max(0, min(m, channels - 1))


def count_params(model: nn.Module) -> int:
    return slimkit.models.count_params(model)


def count_macs(model: nn.Module, input_shape) -> int:
    """Multiply-accumulates of conv and linear layers for one example of ``input_shape``."""
    return slimkit.models.count_macs(model, input_shape)["dense"]


def _example(model: nn.Module, input_shape) -> torch.Tensor:
    ref = next((t for t in model.parameters() if t.is_floating_point()), None)
    return torch.zeros((2, *input_shape), device=ref.device if ref is not None else "cpu",
                       dtype=ref.dtype if ref is not None else torch.float32)


def _patterns(exclude: str) -> list[str]:
    return [p.strip() for p in (exclude or "").split(",") if p.strip()]


def graph_for(model: nn.Module, input_shape, exclude: str = ""):
    graph = build_graph(model, _example(model, input_shape))
    graph.lock_modules(_patterns(exclude))
    return graph


# --------------------------------------------------------------------------- importance

def _other_dims(t: torch.Tensor, d: int):
    return [k for k in range(t.dim()) if k != d]


def _depthwise_weights(model: nn.Module) -> set:
    """ids of the weights of depthwise convs (every filter reads one input channel)."""
    return {id(m.weight) for m in model.modules()
            if isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and m.groups == m.in_channels}


def _norm_scores(graph, power: int, over: str = "group") -> dict:
    """``over="filters"``: the L1 / L2 norm of the atom's output rows, summed over its producers (Li et al.).
    ``over="group-all"``: DepGraph's group magnitude, the mean over every weight tensor of the group that holds
    the atom (producers' output rows, consumers' input columns, normalisation scales, directly used tensors) of
    the L1 norm / squared L2 norm of the atom's slice in it; ``over="group"``: the same without depthwise
    filters (as Torch-Pruning scores; see the module docstring)."""
    def entry(t, d):
        a = t.abs().double() if power == 1 else t.double().pow(2)
        return a.sum(dim=_other_dims(t, d)) if t.dim() > 1 else a
    if over in ("group", "group-all"):
        skip = _depthwise_weights(graph.model) if over == "group" else set()
        return atom_scores(graph, entry, roles=_GROUP_ROLES, mean=True,
                           tensor_of=lambda rec: None if id(rec.tensor) in skip else rec.tensor.detach())
    if over != "filters":
        raise ValueError(f"unknown norm_over {over!r}")
    scores = atom_scores(graph, entry, roles=("out",))
    return scores if power == 1 else {a: math.sqrt(v) for a, v in scores.items()}


def _bn_scores(graph) -> dict:
    bn_tensors = {id(m.weight) for m in graph.model.modules()
                  if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None}
    return atom_scores(graph, lambda t, d: t.abs().double(), roles=("scale",),
                       tensor_of=lambda rec: rec.tensor.detach() if id(rec.tensor) in bn_tensors else None)


def _taylor_scores(graph, data, batches: int, batch_size: int, seed: int) -> dict:
    """Molchanov et al. 2019: per batch (sum over the atom's parameters of grad * weight)^2, averaged."""
    model = graph.model
    device = next(model.parameters()).device
    total: dict[int, float] = {}
    n = 0
    with eval_mode(model):  # gradients of the deployed function; BN statistics stay as they are
        for x, y in data.batches("train", batch_size, shuffle=True, seed=seed, augment=False):
            if n >= batches:
                break
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x.to(device)), y.to(device)).backward()

            def entry(t, d):
                return t.double().sum(dim=_other_dims(t, d)) if t.dim() > 1 else t.double()

            per = atom_scores(graph, entry, roles=("out", "in", "bias", "scale", "shift", "param"),
                              tensor_of=lambda rec: (rec.tensor.grad * rec.tensor).detach()
                              if rec.tensor.grad is not None else None)
            for a, v in per.items():
                total[a] = total.get(a, 0.0) + v * v
            n += 1
    model.zero_grad(set_to_none=True)
    return {a: v / max(n, 1) for a, v in total.items()}


def importance_scores(graph, importance: str, *, data=None, taylor_batches: int = 8, batch_size: int = 64,
                      seed: int = 0, norm_over: str = "group") -> dict:
    """``{atom root: score}`` for the graph's prunable atoms (higher = more important);
    ``norm_over`` (l1, l2): ``group`` or ``filters``, see :func:`_norm_scores`."""
    if importance == "l1":
        return _norm_scores(graph, 1, norm_over)
    if importance == "l2":
        return _norm_scores(graph, 2, norm_over)
    if importance == "bn-scale":
        return _bn_scores(graph)
    if importance == "taylor":
        if data is None:
            raise ValueError("taylor importance needs data")
        return _taylor_scores(graph, data, taylor_batches, batch_size, seed)
    if importance == "random":
        g = torch.Generator().manual_seed(seed)
        atoms = [a for grp in graph.groups for a in grp.atoms]
        return dict(zip(atoms, torch.rand(len(atoms), generator=g, dtype=torch.float64).tolist()))
    raise ValueError(f"unknown importance {importance!r}")


# --------------------------------------------------------------------------- selection

def _round_keep(keep: int, n: int, step: int) -> int:
    """``keep`` atoms rounded up to a multiple of ``step`` (at most ``n``)."""
    if step > 1 and keep % step:
        keep = min(n, -(-keep // step) * step)
    return keep


def rounding_steps(graph, round_to: int) -> dict:
    """``{group index: atom step}`` so that a group keeps a multiple of ``round_to`` *channels*:
    an attention head of 16 channels is one step at round_to=8, a filter one eighth of one.
    Groups of fewer than ``2 * round_to`` channels are left exact: they fit one or two SIMD
    blocks whatever their count, and rounding would stop them being pruned at all."""
    steps = {}
    for g in graph.groups:
        width = graph.channels_per_atom(g)
        if round_to > 1 and len(g.atoms) * width >= 2 * round_to:
            steps[g.index] = round_to // math.gcd(round_to, width)
    return steps


def group_names(graph) -> list[str]:
    """One name per group of ``graph``: the layer whose output rows (filters) hold its channels,
    e.g. ``features.3``; ``group<i>`` when no layer's output holds them (made unique)."""
    names, seen = [], set()
    for g in graph.groups:
        name = next((holders[0][0] for rec, d in g.params for holders in [rec.holders]
                     if rec.roles[d] == "out"), f"group{g.index}")
        if name in seen:
            name = f"{name}#{g.index}"
        seen.add(name)
        names.append(name)
    return names


def select_atoms(graph, scores: dict, ratio: float, scope: str = "per-layer", round_to: int = 1,
                 normalize: bool = True, group_ratios: dict | None = None) -> set:
    """The atoms to remove: the lowest-scored ``ratio`` of every group (per-layer) or of all (global).
    ``group_ratios`` (per-layer only): ``{group index: ratio}`` replacing ``ratio`` for those groups."""
    indexed = [(g.index, [a for a in g.atoms if a in scores]) for g in graph.groups]
    indexed = [(i, g) for i, g in indexed if len(g) > 1]
    steps = rounding_steps(graph, round_to)
    remove: set = set()
    if group_ratios is not None and scope != "per-layer":
        raise ValueError("per-group ratios need scope='per-layer'")
    if scope == "per-layer":
        for gi, atoms in indexed:
            r = ratio if group_ratios is None else group_ratios.get(gi, 0.0)
            keep = _round_keep(len(atoms) - filters_to_remove(len(atoms), r), len(atoms), steps.get(gi, 1))
            ranked = sorted(atoms, key=lambda a: (scores[a], a))
            remove.update(ranked[:len(atoms) - keep])
    else:
        ranked = []
        for _, atoms in indexed:
            mean = sum(scores[a] for a in atoms) / len(atoms)
            scale = mean if normalize and mean > 0 else 1.0
            ranked.extend((scores[a] / scale, a) for a in atoms)
        ranked.sort()
        total = len(ranked)
        remove = {a for _, a in ranked[:filters_to_remove(total, ratio) if total > 1 else 0]}
        for gi, atoms in indexed:  # at least one atom per group, and multiples of the group's step
            gone = sorted((a for a in atoms if a in remove), key=lambda a: (-scores[a], a))
            keep = _round_keep(max(1, len(atoms) - len(gone)), len(atoms), steps.get(gi, 1))
            for a in gone[:keep - (len(atoms) - len(gone))]:
                remove.discard(a)
    return graph.restore_minimum(remove, score=lambda a: scores.get(a, 0.0))


def _broadcast(remove: set, graph) -> set:
    import torch.distributed as dist

    atoms = sorted(a for g in graph.groups for a in g.atoms)
    flags = torch.tensor([a in remove for a in atoms], dtype=torch.uint8)
    if dist.get_backend() == "nccl":
        flags = flags.cuda()
    dist.broadcast(flags, src=0)
    return {a for a, f in zip(atoms, flags.cpu().tolist()) if f}


def prune_channels(model: nn.Module, input_shape, *, ratio: float = 0.5, importance: str = "l1",
                   scope: str = "per-layer", round_to: int = 1, exclude: str = "", scores: dict | None = None,
                   graph=None, sync: bool = False, check: bool = True, group_ratios: dict | None = None,
                   sparsity_trained: bool = False, **score_kwargs) -> nn.Module:
    """A pruned copy of ``model`` without the lowest-importance ``ratio`` of its channels
    (``group_ratios``: ``{group index: ratio}`` instead, per-layer scope). With global scope,
    scores are divided by their group's mean, except bn-scale on a ``sparsity_trained`` model
    (Network Slimming's raw threshold; see the module docstring)."""
    graph = graph or graph_for(model, input_shape, exclude)
    if scores is None:
        scores = importance_scores(graph, importance, **score_kwargs)
    remove = select_atoms(graph, scores, ratio, scope, round_to,
                          normalize=not (importance == "bn-scale" and sparsity_trained), group_ratios=group_ratios)
    if sync:
        remove = _broadcast(remove, graph)
    if not remove:
        return model
    return remove_channels(model, graph, remove, _example(model, input_shape), check=check)


def prune_to_macs(model, input_shape, target: float, **kwargs) -> tuple[nn.Module, float]:
    """Bisection on the ratio: the least pruning with MACs <= ``target`` (absolute); returns (model, ratio)."""
    graph = graph_for(model, input_shape, kwargs.pop("exclude", ""))
    scores = kwargs.pop("scores", None) or importance_scores(
        graph, kwargs.get("importance", "l1"), **{k: v for k, v in kwargs.items() if k in
                                                  ("data", "taylor_batches", "batch_size", "seed", "norm_over")})
    kw = {k: v for k, v in kwargs.items() if k in ("importance", "scope", "round_to")}
    sync = kwargs.get("sync", False)
    lo, hi = 0.0, 0.95
    kw["sync"] = False  # trials are local; the chosen ratio is pruned once more below, in sync

    def macs_at(ratio):
        return count_macs(prune_channels(model, input_shape, ratio=ratio, graph=graph, scores=scores, check=False,
                                         **kw), input_shape)

    if macs_at(hi) <= target:
        for _ in range(10):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if macs_at(mid) <= target else (mid, hi)
    kw["sync"] = sync
    return prune_channels(model, input_shape, ratio=hi, graph=graph, scores=scores, **kw), hi


def layer_rows(before: nn.Module, after: nn.Module) -> list[dict]:
    """Per conv/Linear layer: channels (features) in and out, before and after."""
    rows = []
    new = dict(after.named_modules())
    for name, m in before.named_modules():
        if not isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) or name not in new:
            continue
        n = new[name]
        conv = isinstance(m, nn.modules.conv._ConvNd)
        i, o = ("in_channels", "out_channels") if conv else ("in_features", "out_features")
        rows.append({"name": name, "type": "conv" if conv else "linear",
                     "in_before": getattr(m, i), "in_after": getattr(n, i),
                     "out_before": getattr(m, o), "out_after": getattr(n, o)})
    return rows


# --------------------------------------------------------------------------- method

class _BNSparsity(TrainCallback):
    """Network Slimming's sparsity training: adds ``lam * sign(gamma)`` to every BN scale's gradient."""

    def __init__(self, lam: float):
        self.lam = lam

    def after_backward(self, model, step: int) -> None:
        with torch.no_grad():
            for m in model.modules():
                grad = m.weight.grad if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None else None
                if grad is not None:
                    grad.add_(torch.sign(m.weight), alpha=self.lam)


class FilterPrune(Method):
    name = "filter-prune"
    summary = ("Remove whole channels, heads and groups by importance on a channel dependency graph "
               "(residuals, concatenations, depthwise convs, attention): a physically smaller, faster net.")
    paper = ("H. Li et al. Pruning Filters for Efficient ConvNets. ICLR 2017; Z. Liu et al. Learning Efficient "
             "Convolutional Networks through Network Slimming. ICCV 2017; P. Molchanov et al. Importance Estimation "
             "for Neural Network Pruning. CVPR 2019; G. Fang et al. DepGraph: Towards Any Structural Pruning. "
             "CVPR 2023.")
    options = [
        Option("ratio", float, 0.5, "fraction of the channels removed (of every group with scope=per-layer, of "
               "all with scope=global; round(ratio x channels), at least one left)", min=0.0, max=0.95),
        Option("macs", float, None, "prune until MACs <= macs x the baseline's (replaces ratio; unset = use ratio)",
               min=0.05, max=1.0),
        Option("importance", str, "l1", "channel importance: l1 / l2 weight norm (norm_over), bn-scale |gamma| "
               "(Network Slimming), taylor first order (Molchanov et al. 2019), random", choices=IMPORTANCES),
        Option("norm_over", str, "group", "l1 / l2: the weights scored. group = every weight tensor holding the "
               "channel except depthwise filters, reduced by their mean (DepGraph's group magnitude as "
               "Torch-Pruning computes it: output rows, consumers' input columns, BatchNorm scales; squared "
               "L2); group-all = with depthwise filters; filters = the producers' output rows only (Li et al.)",
               choices=NORM_OVER),
        Option("scope", str, "per-layer", "rank channels within each group (per-layer) or across all (global)",
               choices=SCOPES),
        Option("steps", int, 1, "prune in this many steps, fine-tuning after each", min=1, max=20),
        Option("round_to", int, 8, "keep every group's channel count a multiple of this (heads count their "
               "channels; groups under 2x this are left exact); CPU engines block channels by 8 or 16 and ran "
               "odd counts slower than the unpruned model; 1 = exact counts", min=1, max=256),
        Option("exclude", str, "", "comma-separated glob patterns of layer names to leave alone "
               "(e.g. 'stem.*,features.0.*')"),
        Option("taylor_batches", int, 8, "training batches the taylor importance is averaged over", min=1, max=10000),
        Option("sparsity", float, 0.0, "bn-scale only: L1 penalty on BatchNorm scales during a sparsity-training "
               "phase before pruning (Network Slimming's lambda, e.g. 1e-4; 0 = no phase)", min=0.0, max=0.1),
        Option("sparsity_epochs", int, None, "epochs of the sparsity-training phase (unset = the run's epochs)",
               min=1),
        Option("epochs", int, None, "fine-tuning epochs after each pruning step (unset = the run's epochs)", min=0),
        Option("lr", float, None, "fine-tuning learning rate (unset = the run's)", min=0.0),
        Option("allocation", str, "uniform", "uniform: every group loses the same fraction (or one global "
               "ranking); sensitivity (with macs, per-layer scope, one step): per-group ratios from a one-group "
               "sensitivity analysis, AIMET's greedy selection of the least loss threshold meeting `macs` "
               "(slimkit.allocation)", choices=("uniform", "sensitivity")),
        Option("sensitivity", str, None, "allocation=sensitivity: read the sensitivity from this "
               "sensitivity.json (slimkit sensitivity --method filter-prune) instead of measuring it"),
    ]

    def _graph(self, model, opts: dict):
        shape = getattr(model, "_spec_args", {}).get("input_shape")
        if shape is None:
            raise UserError("filter-prune: the model's input shape is unknown; sensitivity needs a slimkit model")
        return graph_for(model, tuple(shape), opts.get("exclude", "")), tuple(shape)

    def sensitivity_layers(self, model, opts: dict) -> dict[str, int]:
        """Every group of two or more channels, named by the layer whose filters hold them;
        the weight count is that of the filters (a level is a fraction of the channels)."""
        graph, _ = self._graph(model, opts)
        return {name: sum(rec.tensor.numel() for rec, d in g.params if rec.roles[d] == "out")
                for name, g in zip(group_names(graph), graph.groups) if len(g.atoms) > 1}

    def compress_layer(self, model, layer: str, level: float, opts: dict):
        graph, shape = self._graph(model, opts)
        index = dict(zip(group_names(graph), range(len(graph.groups))))
        if layer not in index:
            raise UserError(f"filter-prune: the model has no channel group {layer!r}")
        return prune_channels(model, shape, importance=opts.get("importance", "l1"), graph=graph,
                              norm_over=opts.get("norm_over", "group"), group_ratios={index[layer]: level})

    def check(self, model, opts: dict) -> None:
        shape = getattr(model, "_spec_args", {}).get("input_shape")
        if shape is None:  # no example input before the data is known: at least the trace must work
            trace(model)
            return
        if opts.get("allocation", "uniform") == "sensitivity":
            if opts.get("macs") is None or opts.get("scope", "per-layer") != "per-layer" or opts.get("steps", 1) != 1:
                raise UserError("filter-prune: allocation=sensitivity chooses a ratio per group for the `macs` "
                                "budget; it needs macs=..., scope=per-layer and steps=1")
            if opts.get("importance") in ("taylor", "bn-scale"):
                raise UserError(f"filter-prune: allocation=sensitivity compresses one group at a time without "
                                f"data or training; use importance l1, l2 or random, not {opts['importance']}")
        if opts.get("sensitivity") and opts.get("allocation", "uniform") != "sensitivity":
            raise UserError("filter-prune: sensitivity=FILE is used only with allocation=sensitivity")
        graph = graph_for(model, tuple(shape), opts.get("exclude", ""))
        if not graph.groups:
            raise UserError("filter-prune: the model has no channels that can be removed (every channel reaches "
                            "the output, a LayerNorm/softmax, a fixed size, or an excluded layer)")

    def apply(self, model, ctx, opts: dict):
        shape = tuple(ctx.data.input_shape)
        original = model
        params_before, macs_before = count_params(model), count_macs(model, shape)
        graph = graph_for(model, shape, opts["exclude"])
        if not graph.groups:
            raise UserError("filter-prune: the model has no channels that can be removed")
        extra: dict = {}
        epochs = ctx.epochs if opts["epochs"] is None else opts["epochs"]
        if opts["importance"] == "bn-scale" and opts["sparsity"] > 0:
            ctx.log(f"filter-prune: sparsity training, L1 {opts['sparsity']} on BatchNorm scales")
            ctx.train(model, epochs=opts["sparsity_epochs"] or ctx.epochs, lr=opts["lr"],
                      callbacks=[_BNSparsity(opts["sparsity"])], label="filter-prune sparsity")
        score_kw = dict(data=ctx.data, taylor_batches=opts["taylor_batches"], batch_size=ctx.batch_size,
                        seed=ctx.seed, norm_over=opts["norm_over"])
        kw = dict(importance=opts["importance"], scope=opts["scope"], round_to=opts["round_to"],
                  sync=ctx.dist.enabled, sparsity_trained=opts["importance"] == "bn-scale" and opts["sparsity"] > 0)
        steps = opts["steps"]
        ratios = []
        for step in range(1, steps + 1):
            if opts["allocation"] == "sensitivity":
                model, ratios = self._prune_allocated(model, ctx, opts, graph, shape, macs_before * opts["macs"])
                extra["group_ratios"] = ratios
            elif opts["macs"] is not None:
                target = macs_before * opts["macs"] ** (step / steps)
                model, r = prune_to_macs(model, shape, target, exclude=opts["exclude"], **kw, **score_kw)
                ratios.append(r)
            else:
                # every step keeps the same share of what is left, (1 - ratio) over all steps
                step_ratio = 1 - (1 - opts["ratio"]) ** (1 / steps)
                model = prune_channels(model, shape, ratio=step_ratio, exclude=opts["exclude"], **kw, **score_kw)
            ctx.log(f"filter-prune step {step}/{steps}: MACs {count_macs(model, shape) / macs_before:.1%} "
                    f"of the baseline, params {count_params(model) / params_before:.1%}")
            if epochs > 0:
                if step == steps:
                    extra["val_accuracy_before_finetune"] = ctx.evaluate(model, "val")
                ctx.train(model, epochs=epochs, lr=opts["lr"])
        params_after, macs_after = count_params(model), count_macs(model, shape)
        ctx.log(f"filter-prune: params {params_before} -> {params_after} ({params_after / params_before:.1%}), "
                f"MACs {macs_before} -> {macs_after} ({macs_after / macs_before:.1%})")
        if opts["macs"] is not None:
            extra["ratios"] = ratios if opts["allocation"] == "uniform" else []
            extra["macs_target_reached"] = macs_after <= opts["macs"] * macs_before
        ctx.record(ratio=opts["ratio"], macs_target=opts["macs"], importance=opts["importance"], scope=opts["scope"],
                   norm_over=opts["norm_over"] if opts["importance"] in ("l1", "l2") else None,
                   steps=steps, layers=layer_rows(original, model), groups=len(graph.groups),
                   params_before=params_before, params_after=params_after,
                   macs_before=macs_before, macs_after=macs_after, **extra)
        return model

    def _prune_allocated(self, model, ctx, opts, graph, shape, target_macs: float):
        """Per-group ratios (sensitivity + greedy selection, counted on real pruned copies), then pruned."""
        self.check(model, opts)
        index = dict(zip(group_names(graph), range(len(graph.groups))))
        scores = importance_scores(graph, opts["importance"], seed=ctx.seed, norm_over=opts["norm_over"])

        def pruned(levels):
            return prune_channels(model, shape, graph=graph, scores=scores, round_to=opts["round_to"], check=False,
                                  group_ratios={index[n]: lv for n, lv in levels.items()})

        def reached(levels) -> bool:
            return count_macs(pruned(levels), shape) <= target_macs

        levels = ctx.layer_budgets(model, self, opts, opts["macs"], sensitivity_file=opts["sensitivity"],
                                   reached=reached)
        return prune_channels(model, shape, graph=graph, scores=scores, round_to=opts["round_to"],
                              sync=ctx.dist.enabled, group_ratios={index[n]: lv for n, lv in levels.items()}), levels


@hookimpl
def register_methods(register):
    register(FilterPrune())
