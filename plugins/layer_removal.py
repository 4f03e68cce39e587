"""Layer removal by zero density or at random, then distillation from the original network.

Seed: W. Tan, B. Sheehan, J. Yap (Stanford CS230, 2018), zero-density and random layer
pruning: the layers whose weights are mostly near zero contribute least, so they are
removed whole and the shallower student is trained from the original model with
knowledge distillation.

Which layers can go
-------------------
A layer may be removed only where the network stays well-formed without it, i.e. where
its output has exactly the shape of its input:

* a convolution that is a child of an ``nn.Sequential`` (so the forward simply skips it),
  with ``in_channels == out_channels``, stride 1 and "same" padding
  (``padding = dilation * (k - 1) / 2``, odd kernels). It is removed together with the
  ``BatchNorm2d`` that directly follows it (same channel count) and the activation that
  directly follows that (in a VGG block: ``convI``, ``bnI``, ``reluI``);
* a residual :class:`slimkit.models.resnet.BasicBlock` whose shortcut is ``nn.Identity``
  (slimkit's ResNets use a 1x1 projection only where the shape changes, so every other
  block qualifies); it is replaced by ``nn.Identity``. The block computes
  ``relu(F(x) + x)`` and its input is already a ReLU output, so without it the next layer
  sees ``x``.

Convs that change channels or resolution (the first conv of a VGG stage, strided
convs, projection shortcuts), classifiers and stems are never removed. A model with
nothing removable is refused by :meth:`LayerRemoval.check` before any training.

Ranking (``rank``)
------------------
``zero-density``: a candidate's zero density is the fraction of its conv weights with
``|w| < threshold`` (a masked conv counts ``weight * mask``, so pruned weights are zeros;
a residual block pools the weights of its two convs). The ``count`` candidates with the
highest density are removed (ties: the earlier layer). ``threshold`` is absolute and
defaults to 0.01: trained conv weights of the zoo's nets are spread with standard
deviations of roughly 0.02-0.1 (Kaiming fan-out initialisation, ``sqrt(2 / (9 C_out))``,
then weight decay), so 0.01 marks the weights that are an order of magnitude below a
typical one. Wider layers have smaller weights and so higher densities at a fixed
threshold, as in the seed's experiments.

``random``: ``count`` candidates drawn uniformly without replacement with
``random.Random(ctx.seed)``: the same seed removes the same layers.

Training
--------
``pipe_weights=true``: the student keeps the teacher's weights for every layer it keeps.
``pipe_weights=false``: every kept layer is re-initialised (``reset_parameters()`` of
every module that has one: PyTorch's default initialisation; BatchNorm running
statistics reset). Either way the student then trains with Hinton knowledge
distillation from the original model (``ctx.teacher``)::

    loss = lambda * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - lambda) * CE(z_s, y)

computed by :func:`slimkit.ops.kd_loss` with ``alpha = lambda``.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from slimkit import hookimpl
from slimkit.api import Method, Option
from slimkit.errors import UserError
from slimkit.models import count_macs, count_params
from slimkit.models.resnet import BasicBlock
from slimkit.measure import epochs_to_fraction
from slimkit.nn import effective_weight

__all__ = ["LayerRemoval", "Candidate", "find_removable", "zero_density", "choose", "remove"]

_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
                nn.Hardswish, nn.Hardtanh, nn.Tanh, nn.Sigmoid, nn.PReLU)
_REMOVABLE = ("removable layers are stride-1 'same' convolutions with equal input and output channels inside an "
              "nn.Sequential (with their BatchNorm and activation), and residual BasicBlocks with an identity "
              "shortcut")


@dataclass
class Candidate:
    """A layer that can be removed: ``name`` (qualified), ``kind`` ('conv' or 'residual-block'),
    ``parent`` (qualified name of the module holding it), ``children`` (child names removed from
    ``parent``, or replaced by nn.Identity for a residual block), ``convs`` (the weights that rank it)."""

    name: str
    kind: str
    parent: str
    children: list
    convs: list = field(repr=False)
    shape: list = field(default_factory=list)
    index: int = 0  # forward order among the candidates


def _shape_preserving(conv: nn.Conv2d) -> bool:
    if conv.in_channels != conv.out_channels or tuple(conv.stride) != (1, 1):
        return False
    if isinstance(conv.padding, str):
        return conv.padding == "same"
    return all(k % 2 == 1 and p == d * (k - 1) // 2
               for k, d, p in zip(conv.kernel_size, conv.dilation, conv.padding))


def find_removable(model: nn.Module) -> list[Candidate]:
    """Every layer whose removal keeps the network well-formed (module docstring), in forward order."""
    found: list[Candidate] = []
    for parent_name, parent in model.named_modules():
        prefix = f"{parent_name}." if parent_name else ""
        if type(parent) is nn.Sequential:
            children = list(parent.named_children())
            for i, (name, child) in enumerate(children):
                if not (isinstance(child, nn.Conv2d) and _shape_preserving(child)):
                    continue
                removed = [name]
                j = i + 1
                if j < len(children) and isinstance(children[j][1], nn.BatchNorm2d) \
                        and children[j][1].num_features == child.out_channels:
                    removed.append(children[j][0])
                    j += 1
                if j < len(children) and isinstance(children[j][1], _ACTIVATIONS):
                    removed.append(children[j][0])
                found.append(Candidate(prefix + name, "conv", parent_name, removed, [child],
                                       list(child.weight.shape)))
        for name, child in parent.named_children():
            if isinstance(child, BasicBlock) and isinstance(child.shortcut, nn.Identity) \
                    and _shape_preserving(child.conv1) and _shape_preserving(child.conv2):
                found.append(Candidate(prefix + name, "residual-block", parent_name, [name],
                                       [child.conv1, child.conv2],
                                       [child.conv1.in_channels, child.conv2.out_channels]))
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    found.sort(key=lambda c: order[c.name])
    for i, c in enumerate(found):
        c.index = i
    return found


@torch.no_grad()
def zero_density(candidate: Candidate, threshold: float) -> float:
    """Fraction of the candidate's conv weights with ``|w| < threshold`` (masked weights count as 0)."""
    small = total = 0
    for conv in candidate.convs:
        w = effective_weight(conv)
        small += int((w.abs() < threshold).sum())
        total += w.numel()
    return small / total if total else 0.0


def choose(candidates: list[Candidate], count: int, rank: str, threshold: float, seed: int) -> list[Candidate]:
    """The ``count`` candidates to remove, in forward order."""
    if count > len(candidates):
        raise UserError(f"option layer-removal.count={count} is out of range: only {len(candidates)} layer(s) can "
                        f"be removed ({', '.join(c.name for c in candidates)})")
    if rank == "zero-density":
        ranked = sorted(candidates, key=lambda c: (-zero_density(c, threshold), c.index))
        chosen = ranked[:count]
    elif rank == "random":
        chosen = random.Random(seed).sample(candidates, count)
    else:
        raise ValueError(f"unknown rank {rank!r}")
    return sorted(chosen, key=lambda c: c.index)


def remove(model: nn.Module, chosen: list[Candidate]) -> None:
    """Remove the chosen layers from ``model`` in place."""
    for c in chosen:
        parent = model.get_submodule(c.parent) if c.parent else model
        if c.kind == "conv":
            for child in c.children:
                del parent._modules[child]
        else:
            parent._modules[c.children[0]] = nn.Identity()


def _reinitialise(model: nn.Module) -> int:
    n = 0
    for m in model.modules():
        if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
            m.reset_parameters()
            n += 1
    return n


class LayerRemoval(Method):
    name = "layer-removal"
    summary = "Remove whole same-shape layers (most near-zero weights, or random), then distil from the original."
    paper = ("W. Tan, B. Sheehan, J. Yap. Zero-density and random layer pruning. Stanford CS230 project report, "
             "2018; with G. Hinton, O. Vinyals, J. Dean. Distilling the Knowledge in a Neural Network. 2015.")
    options = [
        Option("count", int, 1, "number of layers to remove", min=1),
        Option("rank", str, "zero-density", "which layers: zero-density (most weights with |w| < threshold) or "
               "random (seeded by the run's seed)", choices=("zero-density", "random")),
        Option("threshold", float, 1e-2, "a weight with |w| below this counts as zero (absolute)", min=0.0),
        Option("pipe_weights", bool, True, "true: kept layers keep the teacher's weights; false: re-initialise them"),
        Option("lambda", float, 0.5, "weight of the teacher: loss = lambda*T^2*KL + (1-lambda)*CE",
               min=0.0, max=1.0),
        Option("temperature", float, 4.0, "distillation temperature T", min=0.01),
    ]

    def _candidates(self, model) -> list[Candidate]:
        candidates = find_removable(model)
        if not candidates:
            raise UserError(f"layer-removal: no layer of {type(model).__name__} can be removed while keeping the "
                            f"network well-formed; {_REMOVABLE}")
        return candidates

    def check(self, model, opts: dict) -> None:
        candidates = self._candidates(model)
        if opts["count"] > len(candidates):
            raise UserError(f"option layer-removal.count={opts['count']} is out of range: only {len(candidates)} "
                            f"layer(s) of {type(model).__name__} can be removed "
                            f"({', '.join(c.name for c in candidates)})")

    def apply(self, model, ctx, opts: dict):
        from slimkit.ops import kd_loss

        if ctx.teacher is None:
            raise UserError("layer-removal distils from the original network, but the stage has no teacher")
        candidates = self._candidates(model)
        densities = {c.name: zero_density(c, opts["threshold"]) for c in candidates}
        chosen = choose(candidates, opts["count"], opts["rank"], opts["threshold"], ctx.seed)
        input_shape = tuple(ctx.data.input_shape)
        params_before, macs_before = count_params(model), count_macs(model, input_shape)["dense"]
        remove(model, chosen)
        params_after, macs_after = count_params(model), count_macs(model, input_shape)["dense"]
        removed = [{"name": c.name, "kind": c.kind, "modules": [f"{c.parent}.{n}" if c.parent else n
                                                                 for n in c.children],
                    "shape": c.shape, "zero_density": densities[c.name]} for c in chosen]
        ctx.log("layer-removal: removed " + ", ".join(f"{r['name']} (zero density {r['zero_density']:.3f})"
                                                      for r in removed)
                + f"; params {params_before} -> {params_after}")
        if not opts["pipe_weights"]:
            _reinitialise(model)
        extra = {"val_accuracy_before_training": ctx.evaluate(model, "val")}
        teacher, temperature, lam = ctx.teacher, opts["temperature"], opts["lambda"]

        def loss(net, inputs, targets):
            logits = net(inputs)
            with torch.no_grad():
                teacher_logits = teacher(inputs)
            return kd_loss(logits, teacher_logits, targets, temperature, alpha=lam), logits

        epochs = ctx.epochs if opts["epochs"] is None else opts["epochs"]
        history = ctx.train(model, epochs=epochs, lr=opts["lr"], loss=loss)
        accuracies = [h.get("val_accuracy") for h in history]
        ctx.record(rank=opts["rank"], threshold=opts["threshold"], pipe_weights=opts["pipe_weights"],
                   removed=removed, candidates=[{"name": c.name, "kind": c.kind, "zero_density": densities[c.name]}
                                                for c in candidates],
                   params_before=params_before, params_after=params_after, macs_before=macs_before,
                   macs_after=macs_after, accuracy_per_epoch=accuracies,
                   train_loss_per_epoch=[h.get("train_loss") for h in history],
                   epochs_to_95=epochs_to_fraction(accuracies), **extra)
        return model


@hookimpl
def register_methods(register):
    register(LayerRemoval())
