"""Unstructured magnitude pruning: one-shot, or gradual after Zhu & Gupta (2017).

Every prunable layer (``nn.Conv2d`` / ``nn.Linear``) is replaced by its masked twin
(:func:`slimkit.nn.to_masked`); pruning sets the ``weight_mask`` buffer of those
layers to zero where a weight is removed and zeroes the weight. Biases and
BatchNorm parameters are never pruned.

Which weights go
----------------
A weight's score is its magnitude ``|w|``; weights that are already pruned score
below every live weight, so pruning is always "by magnitude among the remaining
weights" and a mask only ever grows (a pruned weight stays pruned).
To reach a sparsity ``s`` over ``n`` weights exactly, the ``k`` lowest-scoring
weights are removed with ``k = ceil(s * n)`` computed in exact decimal arithmetic
(``Fraction(repr(s))``), so the achieved fraction ``k / n`` is never below ``s``
(``round`` could give less: 0.5 of 5 weights would leave 2.5 -> 2). Ties at the
threshold are broken deterministically: the weight that comes first (layer order,
then row-major index) is pruned first.

``scope="layer"`` prunes every layer to ``s`` on its own; ``scope="global"`` ranks all
prunable weights of the model together (one threshold), so layers end with
different sparsities whose weighted mean is ``s``.

Schedules
---------
``oneshot``: prune to the target once, then fine-tune with ``ctx.train``.

``gradual`` (Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of
pruning for model compression", arXiv:1710.01878, 2017): training runs from the
start with the masks updated every ``Δt`` optimizer steps, ``n`` times, following ::

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n Δt)) ** 3
          for t in {t0, t0 + Δt, ..., t0 + n Δt}

with ``s_i`` the initial and ``s_f`` the final sparsity. Pruning is fast at first,
while many redundant weights are left, and slows down as the network has fewer
weights to give. After ``t0 + n Δt`` the masks are fixed and training goes on so
the network recovers (by default pruning ends at ~70 % of the training steps).

Distributed training
--------------------
Masks are computed from the weights as they stand before a step, which DDP keeps
identical on every rank; even so every rank's masks are then replaced by rank 0's
with ``torch.distributed.broadcast``. Two ranks could otherwise disagree where
weights tie at the threshold or where float reductions differ between devices, and
a single differing mask entry makes the replicas silently diverge (DDP averages
the gradient of a weight that one rank has pruned and another has not).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, Sequence

import torch
import torch.nn as nn

from slimkit import hookimpl
from slimkit.api import Method, Option, TrainCallback
from slimkit.errors import UserError
from slimkit.nn import MaskedMixin, prunable_layers, to_masked

__all__ = [
    "MagnitudePrune", "GradualPruning", "KeepMasks", "GradualSchedule", "zhu_gupta_sparsity",
    "num_to_prune", "magnitude_masks", "sync_masks", "select_layers", "layer_table",
]

#: Fraction of the training steps by which the gradual schedule ends when
#: neither ``prune_steps`` nor ``frequency`` pins it down.
AUTO_END_FRACTION = 0.7
#: Default least number of optimizer steps of the stage when ``epochs`` is unset (see MagnitudePrune.apply).
MIN_STEPS_DEFAULT = 600
#: With ``lr`` unset the stage trains at this fraction of the run's base learning rate (see MagnitudePrune.apply).
LR_FRACTION = 0.5
#: allocation=sensitivity: optimizer steps of short-term fine-tuning given to every
#: one-layer-pruned copy before it is measured (NetAdapt). 0 by measurement: on LeNet-300-100
#: at 95 % (MNIST split, 3 seeds) 50, 100 or 200 steps made the chosen levels worse after the
#: stage's training (95.52-95.58 % against 95.62 % without), since a layer pruned alone
#: recovers far more than it does next to the others (docs/BENCHMARKS.md, issue 13 A).
SENSITIVITY_FINETUNE_STEPS = 0
#: Auto ``frequency``: at most this many mask updates per epoch ...
AUTO_UPDATES_PER_EPOCH = 4
#: ... and at least this many over the schedule when the run is long enough.
AUTO_MIN_UPDATES = 10


# --------------------------------------------------------------------------- masks

def num_to_prune(n: int, sparsity: float) -> int:
    """The number of weights to remove so that at least ``sparsity`` of ``n`` are zero.

    ``ceil(s * n)`` in exact arithmetic on the decimal ``repr(s)`` (0.9 is 9/10, not
    the binary float just above it), so ``k / n >= s`` and 0.9 of 100 is 90, not 91.
    """
    if n <= 0 or sparsity <= 0:
        return 0
    return min(n, math.ceil(Fraction(repr(float(sparsity))) * n))


def _scores(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """|w| as float32, with already-pruned weights at -1 (below every live weight)."""
    score = weight.detach().abs().float()
    return score.masked_fill_(mask == 0, -1.0)


def _keep_smallest_removed(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean keep-mask of a 1-D ``scores`` with exactly its ``k`` smallest entries False.

    Ties at the k-th value are broken by position (the earlier entry is removed first),
    so the result is deterministic and has exactly ``k`` False entries.
    """
    n = scores.numel()
    if k <= 0:
        return torch.ones(n, dtype=torch.bool, device=scores.device)
    if k >= n:
        return torch.zeros(n, dtype=torch.bool, device=scores.device)
    threshold = torch.kthvalue(scores, k).values
    below = scores < threshold
    ties = scores == threshold
    need = k - int(below.sum())  # >= 1: fewer than k lie strictly below the k-th value
    remove = below | (ties & (torch.cumsum(ties, 0) <= need))
    return ~remove


@torch.no_grad()
def magnitude_masks(layers: Sequence[nn.Module], sparsity: float | Sequence[float],
                    scope: str = "layer") -> list[torch.Tensor]:
    """New keep-masks (bool, shaped like each weight) pruning ``layers`` to ``sparsity`` by |w|.

    ``layers`` are masked layers (:class:`slimkit.nn.MaskedMixin`). Already-pruned
    weights are ranked lowest and stay pruned, so when the layers already hold more
    than ``sparsity`` zeros nothing is revived: the result is ``old & new``.
    ``sparsity`` may be one value per layer (``scope="layer"`` only: per-layer budgets).
    """
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', not {scope!r}")
    per_layer = _per_layer(sparsity, len(layers))
    if scope == "global" and len(set(per_layer)) > 1:
        raise ValueError("per-layer sparsities need scope='layer'")
    scores = [_scores(m.weight, m.weight_mask) for m in layers]
    if scope == "layer":
        keeps = [_keep_smallest_removed(s.reshape(-1), num_to_prune(s.numel(), sp))
                 for s, sp in zip(scores, per_layer)]
    else:
        flat = torch.cat([s.reshape(-1) for s in scores])
        keep = _keep_smallest_removed(flat, num_to_prune(flat.numel(), per_layer[0] if per_layer else 0.0))
        keeps = list(torch.split(keep, [s.numel() for s in scores]))
    return [k.view_as(m.weight) & (m.weight_mask != 0) for k, m in zip(keeps, layers)]


def _per_layer(sparsity: float | Sequence[float], n: int) -> list[float]:
    """One sparsity per layer from a single value or a sequence of ``n`` values."""
    if isinstance(sparsity, (int, float)):
        return [float(sparsity)] * n
    values = [float(v) for v in sparsity]
    if len(values) != n:
        raise ValueError(f"{len(values)} sparsities for {n} layers")
    return values


def sync_masks(masks: list[torch.Tensor]) -> list[torch.Tensor]:
    """Replace ``masks`` by rank 0's (one ``torch.distributed.broadcast`` of all of them).

    Called only when ``ctx.dist.enabled``; every rank must call it at the same point.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("slimkit prune: ctx.dist.enabled but torch.distributed is not initialised")
    flat = torch.cat([m.reshape(-1) for m in masks]).to(torch.uint8)
    dist.broadcast(flat, src=0)
    parts = torch.split(flat, [m.numel() for m in masks])
    return [p.view_as(m).bool() for p, m in zip(parts, masks)]


@torch.no_grad()
def _set_masks(layers: Sequence[nn.Module], keeps: Sequence[torch.Tensor]) -> None:
    for m, keep in zip(layers, keeps):
        m.set_mask(keep)  # copies into weight_mask and zeroes the pruned weights


@torch.no_grad()
def _zero_pruned(layers: Sequence[nn.Module]) -> None:
    for m in layers:
        m.weight.mul_(m.weight_mask)


@torch.no_grad()
def _count(layers: Sequence[nn.Module]) -> tuple[int, int]:
    """(zeros, total) over the effective weights ``weight * mask`` of ``layers``."""
    zeros = total = 0
    for m in layers:
        zeros += int(((m.weight == 0) | (m.weight_mask == 0)).sum())
        total += m.weight.numel()
    return zeros, total


def _sparsity(layers: Sequence[nn.Module]) -> float:
    zeros, total = _count(layers)
    return zeros / total if total else 0.0


def _reached(layers: Sequence[nn.Module], sparsity: float | Sequence[float], scope: str) -> bool:
    """Whether ``layers`` hold at least the zeros that pruning to ``sparsity`` in ``scope`` makes."""
    if scope == "global":
        zeros, total = _count(layers)
        return zeros >= num_to_prune(total, sparsity)
    return all(_count([m])[0] >= num_to_prune(m.weight.numel(), sp)
               for m, sp in zip(layers, _per_layer(sparsity, len(layers))))


# --------------------------------------------------------------------------- layers

def _convertible(m: nn.Module) -> bool:
    return isinstance(m, MaskedMixin) or type(m) in (nn.Conv2d, nn.Linear)


def select_layers(model: nn.Module, keep_first: bool = False, keep_last: bool = False):
    """``(prunable, targets)``: every (name, layer) that can carry a mask, and those to prune.

    Layers are in definition order (the forward order of slimkit's zoo models);
    ``keep_first``/``keep_last`` leave the first/last of them dense.
    """
    prunable = [(n, m) for n, m in prunable_layers(model) if _convertible(m)]
    targets = list(prunable)
    if keep_last and targets:
        targets = targets[:-1]
    if keep_first and targets:
        targets = targets[1:]
    return prunable, targets


@torch.no_grad()
def layer_table(prunable, targets) -> list[dict]:
    """Per-layer rows: name, shape, params, zeros, sparsity, pruned (a target or kept dense)."""
    target_names = {n for n, _ in targets}
    rows = []
    for name, m in prunable:
        zeros, total = _count([m]) if isinstance(m, MaskedMixin) else (int((m.weight == 0).sum()), m.weight.numel())
        rows.append({"name": name, "shape": list(m.weight.shape), "params": total, "zeros": zeros,
                     "sparsity": zeros / total if total else 0.0, "pruned": name in target_names})
    return rows


# --------------------------------------------------------------------------- schedule

def zhu_gupta_sparsity(t: float, s_i: float, s_f: float, t0: int, dt: int, n: int) -> float:
    """Zhu & Gupta's s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n Δt))^3, with t clipped to [t0, t0 + nΔt]."""
    span = n * dt
    progress = min(max((t - t0) / span, 0.0), 1.0) if span > 0 else 1.0
    return s_f + (s_i - s_f) * (1.0 - progress) ** 3


@dataclass
class GradualSchedule:
    """The pruning steps ``t0, t0 + Δt, ..., t0 + nΔt`` and their sparsities."""

    initial: float
    final: float
    t0: int
    dt: int
    n: int
    total_steps: int
    steps: list = field(init=False)

    def __post_init__(self):
        self.steps = [(self.t0 + j * self.dt, self.value(self.t0 + j * self.dt)) for j in range(self.n + 1)]
        self._index = {t: s for t, s in self.steps}

    @property
    def end(self) -> int:
        return self.t0 + self.n * self.dt

    def value(self, t: int) -> float:
        if t >= self.end:
            return self.final  # exactly s_f, not s_f + (s_i - s_f) * 0.0 ** 3 rounding
        return zhu_gupta_sparsity(t, self.initial, self.final, self.t0, self.dt, self.n)

    def prune_at(self, t: int) -> float | None:
        """The sparsity to prune to at step ``t``, or None if ``t`` is not a pruning step."""
        return self._index.get(t)

    def current(self, t: int) -> float:
        """The scheduled sparsity in force at step ``t`` (that of the last pruning step <= t)."""
        if t < self.t0:
            return 0.0
        last = min(self.t0 + ((t - self.t0) // self.dt) * self.dt, self.end)
        return self._index[last]

    @classmethod
    def plan(cls, initial: float, final: float, total_steps: int, epochs: int,
             prune_steps: int = 0, frequency: int | None = None, t0: int = 0) -> "GradualSchedule":
        """Choose Δt and n for a run of ``total_steps`` optimizer steps over ``epochs`` epochs.

        ``prune_steps`` (n, 0 = auto) and ``frequency`` (Δt, None = auto) as given by
        the user. Auto: pruning ends at ~70 % of the steps; Δt gives at most
        4 updates an epoch and, where the run is long enough, at least 10 updates.
        The last pruning step must fall inside the run.
        """
        if total_steps < 2:
            raise UserError(f"prune: schedule=gradual needs at least 2 training steps, this run has "
                            f"{total_steps}; train longer or use schedule=oneshot")
        last = total_steps - 1  # steps are numbered 0 .. total_steps - 1
        horizon = min(max(int(AUTO_END_FRACTION * total_steps) - t0, 1), last - t0)
        per_epoch = max(1, total_steps // max(1, epochs))
        if frequency is None:
            if prune_steps:
                frequency = max(1, horizon // prune_steps)
            else:
                frequency = max(1, min(math.ceil(per_epoch / AUTO_UPDATES_PER_EPOCH), horizon // AUTO_MIN_UPDATES))
        if not prune_steps:
            prune_steps = max(1, horizon // frequency)
        if t0 + prune_steps * frequency > last:
            raise UserError(
                f"prune: prune_steps={prune_steps} x frequency={frequency} = {prune_steps * frequency} steps "
                f"does not fit into this run's {total_steps} training steps; lower them (0 / unset = auto) "
                f"or train longer")
        return cls(initial, final, t0, frequency, prune_steps, total_steps)

    def describe(self) -> dict:
        return {"t0": self.t0, "frequency": self.dt, "prune_steps": self.n, "end_step": self.end,
                "total_steps": self.total_steps, "initial_sparsity": self.initial,
                "final_sparsity": self.final, "steps": [[t, s] for t, s in self.steps]}


# --------------------------------------------------------------------------- callbacks

class KeepMasks(TrainCallback):
    """Keeps pruned weights exactly zero during fine-tuning and reports sparsity per epoch.

    The engine zeroes masked weights after every step too; this callback does not
    rely on it (momentum and weight decay would otherwise move pruned weights).
    """

    def __init__(self, layers: Sequence[nn.Module], target: float):
        self.layers = list(layers)
        self.target = target

    def target_now(self) -> float:
        return self.target

    def after_step(self, model, step: int) -> None:
        _zero_pruned(self.layers)

    def on_epoch_end(self, model, epoch: int, metrics: dict) -> None:
        metrics["sparsity"] = _sparsity(self.layers)
        metrics["target_sparsity"] = self.target_now()


class GradualPruning(KeepMasks):
    """Zhu & Gupta's gradual magnitude pruning as a training callback.

    At ``on_train_begin`` it plans the schedule from the run's ``total_steps``
    (:meth:`GradualSchedule.plan`); before each optimizer step ``t`` that is a
    pruning step it prunes (by magnitude among the remaining weights, masks only
    grow) to ``s_t``; after every step it zeroes the pruned weights again; at the end
    of every epoch it adds ``sparsity`` (achieved) and ``target_sparsity`` (``s_t`` in
    force) to the epoch's metrics, and ``checkpoint_ok=False`` until the last pruning
    step has run, so that the engine's restore of the best epoch can only pick an
    epoch at the final sparsity. ``step`` is the engine's global optimizer step
    (0-based, continued on ``--resume``), so a resumed run picks up the schedule
    where it stopped.
    """

    def __init__(self, layers: Sequence[nn.Module], *, final: float, initial: float = 0.0, scope: str = "layer",
                 epochs: int = 1, prune_steps: int = 0, frequency: int | None = None, sync: bool = False,
                 log: Callable[[str], None] | None = None, per_layer: Sequence[float] | None = None):
        super().__init__(layers, final)
        # Per-layer budgets: layer i follows the schedule scaled to its own final level,
        # s_t * f_i / s_f, so every layer ends exactly at f_i when the schedule ends.
        self.per_layer = list(per_layer) if per_layer is not None else None
        self.initial, self.final, self.scope = initial, final, scope
        self.epochs, self.prune_steps, self.frequency = epochs, prune_steps, frequency
        self.sync = sync
        self.log = log
        self.schedule: GradualSchedule | None = None
        self.t = 0
        self.history: list[tuple[int, float, float]] = []  # (step, scheduled, achieved)

    def on_train_begin(self, model, total_steps: int) -> None:
        self.schedule = GradualSchedule.plan(self.initial, self.final, total_steps, self.epochs,
                                             self.prune_steps, self.frequency)
        self.t = 0
        if self.log:
            s = self.schedule
            self.log(f"prune: gradual {s.initial:g} -> {s.final:g} over steps {s.t0}..{s.end} "
                     f"(every {s.dt} steps, {s.n} updates, {s.total_steps} steps in all)")

    def prune_to(self, sparsity: float) -> None:
        if self.per_layer is not None:
            scale = sparsity / self.final if self.final > 0 else 0.0
            sparsity = [min(f, f * scale) for f in self.per_layer]
        keeps = magnitude_masks(self.layers, sparsity, self.scope)
        if self.sync:
            keeps = sync_masks(keeps)
        _set_masks(self.layers, keeps)

    def on_step_begin(self, model, step: int) -> None:
        target = self.schedule.prune_at(step)
        if target is not None:
            self.prune_to(target)
            self.history.append((step, target, _sparsity(self.layers)))

    def after_step(self, model, step: int) -> None:
        _zero_pruned(self.layers)
        self.t = step + 1  # steps done

    @property
    def finished(self) -> bool:
        """Whether the last pruning step has run."""
        return self.schedule is not None and self.t > self.schedule.end

    def target_now(self) -> float:
        return self.schedule.current(max(self.t - 1, 0))

    def on_epoch_end(self, model, epoch: int, metrics: dict) -> None:
        super().on_epoch_end(model, epoch, metrics)
        if not self.finished:
            metrics["checkpoint_ok"] = False  # not at the final sparsity yet: never restore this epoch


# --------------------------------------------------------------------------- method

class MagnitudePrune(Method):
    name = "prune"
    summary = "Unstructured magnitude pruning, one-shot or gradual (Zhu & Gupta 2017), to an exact sparsity."
    paper = ("M. Zhu, S. Gupta. To prune, or not to prune: exploring the efficacy of pruning for model "
             "compression. arXiv:1710.01878, 2017 (gradual); S. Han et al. Learning both Weights and "
             "Connections for Efficient Neural Networks. NeurIPS 2015 (one-shot magnitude pruning + retraining).")
    common_unset = {"epochs": "the run's --epochs; without --epochs, the default 10 raised to reach min_steps "
                              "optimizer steps on this data set",
                    "lr": "half the run's base rate: 0.05 with SGD, 5e-4 with Adam"}
    options = [
        Option("sparsity", float, 0.9, "final fraction of zeros among the pruned layers' weights "
               "(at least this: ceil(sparsity x weights) are removed)", min=0.0, max=0.999999),
        Option("schedule", str, "gradual", "oneshot: prune once then fine-tune; gradual: raise the sparsity "
               "during training along Zhu & Gupta's cubic schedule", choices=("oneshot", "gradual")),
        Option("scope", str, "layer", "layer: every layer gets the same sparsity; global: one magnitude "
               "threshold over all pruned layers", choices=("layer", "global")),
        Option("keep_first", bool, False, "leave the first conv/linear layer dense"),
        Option("keep_last", bool, False, "leave the last conv/linear layer (usually the classifier) dense"),
        Option("initial_sparsity", float, 0.0, "gradual: sparsity s_i at the first pruning step",
               min=0.0, max=0.999999),
        Option("prune_steps", int, 0, "gradual: number n of mask updates after the first (0 = auto: "
               "pruning ends at ~70% of the training steps)", min=0),
        Option("frequency", int, None, "gradual: optimizer steps Δt between mask updates (unset = auto: "
               "up to 4 an epoch, at least 10 in all where the run allows)", min=1),
        Option("min_steps", int, MIN_STEPS_DEFAULT, "when neither this epochs option nor --epochs is given: "
               "train at least this many optimizer steps (the schedule prunes over ~70% of them and the "
               "network recovers in the rest), i.e. ceil(min_steps / steps per epoch) epochs", min=0),
        Option("allocation", str, "uniform", "uniform: every layer gets `sparsity` (or one global threshold); "
               "sensitivity: per-layer sparsities from a one-layer sensitivity analysis that remove at least "
               "`sparsity` of the weights with the least predicted accuracy loss (slimkit.allocation)",
               choices=("uniform", "sensitivity")),
        Option("sensitivity", str, None, "allocation=sensitivity: read the sensitivity from this "
               "sensitivity.json (slimkit sensitivity --method prune) instead of measuring it"),
        Option("sensitivity_finetune_steps", int, SENSITIVITY_FINETUNE_STEPS, "allocation=sensitivity: "
               "fine-tune every one-layer-pruned copy for this many optimizer steps at the stage's rate "
               "before measuring it (NetAdapt's short-term fine-tuning; 0 = accuracy right after pruning)",
               min=0),
    ]

    def sensitivity_layers(self, model, opts: dict) -> dict[str, int]:
        _, targets = select_layers(model, opts.get("keep_first", False), opts.get("keep_last", False))
        return {name: m.weight.numel() for name, m in targets}

    def compress_layer(self, model, layer: str, level: float, opts: dict):
        model = to_masked(model)
        module = dict(prunable_layers(model)).get(layer)
        if not isinstance(module, MaskedMixin):
            raise UserError(f"prune: the model has no prunable layer {layer!r}")
        _set_masks([module], magnitude_masks([module], level))
        return model

    def check(self, model, opts: dict) -> None:
        if opts.get("allocation", "uniform") == "sensitivity" and opts.get("scope", "layer") == "global":
            raise UserError("prune: allocation=sensitivity chooses a sparsity per layer; it needs scope=layer")
        if opts.get("sensitivity") and opts.get("allocation", "uniform") != "sensitivity":
            raise UserError("prune: sensitivity=FILE is used only with allocation=sensitivity")
        prunable, targets = select_layers(model, opts.get("keep_first", False), opts.get("keep_last", False))
        if not prunable:
            raise UserError("prune: the model has no prunable layers (nn.Conv2d or nn.Linear); "
                            "magnitude pruning has nothing to remove")
        if not targets:
            raise UserError(f"prune: keep_first/keep_last leave none of the model's {len(prunable)} prunable "
                            "layer(s) to prune")
        if opts.get("initial_sparsity", 0.0) > opts.get("sparsity", 0.9):
            raise UserError(f"prune: initial_sparsity={opts['initial_sparsity']} is above "
                            f"sparsity={opts['sparsity']}; the gradual schedule only ever adds zeros")

    def apply(self, model, ctx, opts: dict):
        self.check(model, opts)
        skipped = [n for n, m in prunable_layers(model) if not _convertible(m)]
        if skipped:
            ctx.log(f"prune: {len(skipped)} layer(s) of unsupported subclasses stay dense: {', '.join(skipped)}")
        model = to_masked(model)
        prunable, targets = select_layers(model, opts["keep_first"], opts["keep_last"])
        layers = [m for _, m in targets]
        # Pruning 90 % of LeNet-300-100 on digits (21 steps an epoch) in the run's 10 epochs at
        # the engine's fine-tuning rate (a fifth of the base rate) lost 3 points; 30 epochs at
        # half the base rate lose about 0.5 (docs/BENCHMARKS.md, "The default job"). The
        # schedule needs steps, not epochs: the epochs grow on small data sets only.
        epochs = ctx.stage_epochs(opts["epochs"], opts["min_steps"])
        if opts["epochs"] is None and epochs > ctx.epochs:
            ctx.log(f"prune: {epochs} epoch(s) instead of the run's {ctx.epochs}, to train min_steps="
                    f"{opts['min_steps']} optimizer steps ({ctx.steps_per_epoch()} an epoch)")
        lr = opts["lr"] if opts["lr"] is not None else LR_FRACTION * ctx.base_lr
        sparsity, sync = opts["sparsity"], ctx.dist.enabled
        extra: dict = {}
        per_layer = None
        if opts["allocation"] == "sensitivity":
            budgets = ctx.layer_budgets(model, self, opts, sparsity, sensitivity_file=opts["sensitivity"],
                                        finetune_steps=opts["sensitivity_finetune_steps"], finetune_lr=lr)
            per_layer = [budgets[name] for name, _ in targets]
        goal = per_layer if per_layer is not None else sparsity  # what every mask update prunes to

        if opts["schedule"] == "oneshot":
            keeps = magnitude_masks(layers, goal, opts["scope"])
            if sync:
                keeps = sync_masks(keeps)
            _set_masks(layers, keeps)
            ctx.log(f"prune: one-shot to {_sparsity(layers):.4f} sparsity ({opts['scope']} scope); "
                    f"fine-tuning {epochs} epoch(s)")
            if epochs > 0:
                extra["val_accuracy_before_finetune"] = ctx.evaluate(model, "val")
                ctx.train(model, epochs=epochs, lr=lr, callbacks=[KeepMasks(layers, sparsity)])
        else:
            if epochs < 1:
                raise UserError("prune: schedule=gradual prunes during training and needs epochs >= 1; "
                                "use schedule=oneshot to prune without training")
            callback = GradualPruning(layers, final=sparsity, initial=opts["initial_sparsity"],
                                      scope=opts["scope"], epochs=epochs, prune_steps=opts["prune_steps"],
                                      frequency=opts["frequency"], sync=sync, log=ctx.log, per_layer=per_layer)
            ctx.train(model, epochs=epochs, lr=lr, callbacks=[callback])
            if callback.schedule is not None:  # None when --resume found this training already finished
                extra["schedule_details"] = callback.schedule.describe()

        # The stage must end at the target. The callbacks mark epochs before the end of
        # the schedule as not restorable; should the loop still hand back weights from
        # before the last pruning step, masks are completed here and the stage says so.
        if not _reached(layers, goal, opts["scope"]):
            ctx.log("prune: WARNING the trained model is less sparse than the target (the training loop "
                    "restored weights from before the end of pruning); pruning it to the target now")
            keeps = magnitude_masks(layers, goal, opts["scope"])
            if sync:
                keeps = sync_masks(keeps)
            _set_masks(layers, keeps)
            extra["masks_completed_after_training"] = True
        _zero_pruned(layers)

        table = layer_table(prunable, targets)
        zeros, total = _count(layers)
        all_zeros = sum(r["zeros"] for r in table)
        all_params = sum(r["params"] for r in table)
        ctx.record(
            schedule=opts["schedule"], scope=opts["scope"], target_sparsity=sparsity, epochs=epochs, lr=lr,
            sparsity=zeros / total, zeros=zeros, prunable_params=total,
            overall_sparsity=all_zeros / all_params if all_params else 0.0,
            layers=table, **extra,
        )
        ctx.log(f"prune: {zeros}/{total} weights are zero ({zeros / total:.4f}; target {sparsity})")
        return model


@hookimpl
def register_methods(register):
    register(MagnitudePrune())
