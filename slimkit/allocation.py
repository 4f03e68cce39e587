"""Per-layer budgets from sensitivity curves: ``--set allocation=sensitivity``.

Given, for every layer ``i`` with ``n_i`` weights, the validation accuracy ``a_i(L)``
measured with that layer alone compressed to level ``L`` (:mod:`slimkit.sensitivity`),
choose one level per layer so that at least the fraction ``T`` of all the weights is
removed, ``sum_i L_i n_i >= T sum_i n_i``, with the smallest summed predicted accuracy
loss ``sum_i d_i(L_i)``, ``d_i(L) = a_0 - a_i(L)`` (``a_0`` the uncompressed accuracy).

This is the selection step of AIMET's greedy compression-ratio selection (Qualcomm
AIMET, "Greedy Compression Ratio Selection", docs; the per-layer curves of Han et al.
2015 and Li et al. 2017), which picks per-layer ratios from the same curves by a
greedy search over an accuracy threshold. Here the choice is solved *exactly* as a
multiple-choice knapsack (Sinha & Zoltners, "The multiple-choice knapsack problem",
Operations Research 27(3), 1979) by dynamic programming over the Pareto front of
(weights removed, summed loss), with the exact counts a level removes
(``ceil(L n_i)``), so the choice removes at least ``ceil(T sum n_i)`` weights and no
other choice of candidate levels does so with a smaller predicted loss (uniform
levels included). The candidates are the measured levels and a grid between them
(every 0.01 up to the highest measured level), each with its loss interpolated
linearly between the measured levels around it: a layer is not forced to a measured
level, so a high target can be met by balanced levels rather than by whichever
lopsided combination of measured levels happens to add up. The loss model treats layers as independent (additive losses), as
every sensitivity method does.

When the budget is not a weight count but a cost that is not additive over layers
(``filter-prune``'s multiply-accumulates: removing a layer's output channels also
shrinks the next layer's input), :func:`allocate_greedy` is AIMET's greedy selection
itself: for an accuracy-loss threshold ``t`` every layer takes the highest level whose
predicted loss is at most ``t`` (the curve interpolated linearly between measured
levels, so a layer is not held back to the level below by the measurement grid), and
a bisection on ``t`` finds the smallest threshold whose network, counted for real by
the caller, meets the budget.

Two adjustments keep the choice robust to noise in the measurements: a measured
accuracy gain counts as no loss (``d >= 0``), and a curve is made non-decreasing in the
level (``d_i(L)`` is the largest drop measured at or below ``L``), so the program cannot
prefer a higher level for a lucky evaluation. Level 0 (the layer left as it is) is
always a choice.
"""
from __future__ import annotations

import math
from fractions import Fraction

from slimkit.errors import UserError

#: Levels measured when the stage computes the sensitivity itself: the defaults of
#: ``slimkit sensitivity`` and a finer high end, because a high global target (0.95)
#: can be met only when some layers go above it.
ALLOCATION_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99)

#: Step of the levels the knapsack may choose between measured ones. With measured levels
#: alone the feasible choices are few and lopsided: on LeNet-300-100 at 0.95, fc1 (88 % of
#: the weights) had to sit at 0.95 or 0.97, 4,700 weights apart, so the rest had to be
#: made up by pruning fc2 to 0.97 or fc3 to 0.8 (docs/BENCHMARKS.md).
ALLOCATION_GRID = 0.01


def predicted_losses(sens: dict) -> list[list[float]]:
    """``d_i(L)`` per layer and level: drops clamped at 0 and made non-decreasing in the level."""
    order = sorted(range(len(sens["levels"])), key=lambda j: sens["levels"][j])
    out = []
    for row in sens["accuracy"]:
        drops = [0.0] * len(row)
        worst = 0.0
        for j in order:
            worst = max(worst, sens["baseline_accuracy"] - row[j])
            drops[j] = worst
        out.append(drops)
    return out


def _pareto_dp(choices, need: int) -> list[int]:
    """Index of the chosen option per layer: the least summed loss among choices removing
    at least ``need`` (exact), by dynamic programming over the Pareto front of (weights
    removed, loss). A partial choice is kept only if no other removes at least as many
    weights for no more loss; removals beyond ``need`` count as ``need``; a state that
    cannot reach ``need`` is dropped. Vectorised with numpy, one layer at a time."""
    import numpy as np

    removed = [np.array([c[0] for c in ch], dtype=np.int64) for ch in choices]
    loss = [np.array([c[1] for c in ch], dtype=np.float64) for ch in choices]
    reach = [0] * (len(choices) + 1)  # the most the layers from i on can still remove
    for i in range(len(choices) - 1, -1, -1):
        reach[i] = reach[i + 1] + int(removed[i].max())
    front_v, front_d = np.zeros(1, dtype=np.int64), np.zeros(1)
    back = []  # per layer: (parent state, option) of every kept state
    for i in range(len(choices)):
        v = np.minimum(need, front_v[:, None] + removed[i][None, :]).ravel()
        d = (front_d[:, None] + loss[i][None, :]).ravel()
        ok = np.nonzero(v + reach[i + 1] >= need)[0]
        order = ok[np.lexsort((d[ok], -v[ok]))]  # most removed first, then least loss
        dd = d[order]
        best_before = np.concatenate(([np.inf], np.minimum.accumulate(dd)[:-1]))
        keep = order[dd < best_before - 1e-12]
        back.append((keep // len(choices[i]), keep % len(choices[i])))
        front_v, front_d = v[keep], d[keep]
    state = int(np.nonzero(front_v == need)[0][np.argmin(front_d[front_v == need])])
    picks = []
    for parent, option in reversed(back):
        picks.append(int(option[state]))
        state = int(parent[state])
    return picks[::-1]


def _layer_index(sens: dict, names) -> dict[str, int]:
    """``{layer: row of sens}``; a UserError naming the layers ``sens`` lacks."""
    index = {n: i for i, n in enumerate(sens["layers"])}
    missing = [n for n in names if n not in index]
    if missing:
        raise UserError(f"the sensitivity results have no entry for layer(s) {', '.join(missing[:5])}; "
                        "they were computed for another model or method")
    return index


def candidate_levels(levels, grid: float | None) -> list[float]:
    """The measured levels and every multiple of ``grid`` up to the highest of them (None: measured only)."""
    top = max(levels)
    extra = [] if not grid else [round(k * grid, 6) for k in range(1, int(top / grid + 1e-9) + 1)]
    return sorted({float(lv) for lv in levels} | {lv for lv in extra if 0 < lv <= top})


def allocate(sens: dict, target: float, layers: dict[str, int] | None = None, grid: float | None = ALLOCATION_GRID) -> dict:
    """Levels ``{layer: level}`` meeting ``target`` with the least summed predicted loss.

    ``layers`` (name -> weights) restricts the choice to those layers (default: every
    layer of ``sens``, with its recorded weights); layers of ``layers`` missing from
    ``sens`` are a UserError. ``grid``: besides the measured levels, every multiple of
    ``grid`` up to the highest measured level is a choice, its predicted loss interpolated
    linearly between the measured levels around it (None: the measured levels only).
    """
    names = list(layers) if layers is not None else list(sens["layers"])
    index = _layer_index(sens, names)
    weights = [int(layers[n]) if layers is not None else int(sens["weights"][index[n]]) for n in names]
    total = sum(weights)
    drops = predicted_losses(sens)
    levels = list(sens["levels"])
    if total == 0 or target <= 0:
        return _result(names, {n: 0.0 for n in names}, {n: 0.0 for n in names}, weights, target, sens)
    need = removed_count(total, target)
    options = candidate_levels(levels, grid)
    # choices per layer: (weights removed, loss, level); level 0 removes nothing and loses nothing
    choices = [[(0, 0.0, 0.0)] + [(removed_count(w, lv), interpolated_drop(levels, drops[index[n]], lv), lv)
                                  for lv in options]
               for n, w in zip(names, weights)]
    if sum(max(c[0] for c in ch) for ch in choices) < need:
        raise UserError(f"allocation=sensitivity: the measured levels go up to {max(levels):g}, which cannot remove "
                        f"{target:g} of the weights; measure higher levels (slimkit sensitivity --levels ...)")
    picks = _pareto_dp(choices, need)
    chosen = {n: choices[i][k][2] for i, (n, k) in enumerate(zip(names, picks))}
    losses = {n: choices[i][k][1] for i, (n, k) in enumerate(zip(names, picks))}
    return _result(names, chosen, losses, weights, target, sens)


def highest_level_within(levels: list[float], drops: list[float], threshold: float) -> float:
    """The highest level whose predicted loss is at most ``threshold`` on the curve through
    (0, 0) and the measured ``(level, drop)`` points, linear between them (``drops`` non-decreasing)."""
    points = [(0.0, 0.0)] + sorted(zip(levels, drops))
    best = 0.0
    for (l0, d0), (l1, d1) in zip(points, points[1:]):
        if d1 <= threshold:
            best = l1
        elif d0 <= threshold:  # the threshold is crossed inside this segment
            return l0 + (l1 - l0) * (threshold - d0) / (d1 - d0)
        else:
            break
    return best


def allocate_greedy(sens: dict, reached, layers: list[str] | None = None, iterations: int = 20) -> dict:
    """AIMET's greedy compression-ratio selection for a budget counted by ``reached(levels) -> bool``
    (``{layer: level}`` meets the budget; more compression never un-meets it).

    Bisection on the accuracy-loss threshold ``t``: every layer at
    :func:`highest_level_within` ``t``; returns the levels at the smallest ``t`` found
    whose levels meet the budget. A UserError when even the highest measured levels do not.
    """
    names = list(layers) if layers is not None else list(sens["layers"])
    index = _layer_index(sens, names)
    drops = predicted_losses(sens)
    levels = list(sens["levels"])

    def at(t):
        return {n: highest_level_within(levels, drops[index[n]], t) for n in names}

    hi = max(max(drops[index[n]]) for n in names)
    if not reached(at(hi)):
        raise UserError(f"allocation=sensitivity: even every layer at its highest measured level "
                        f"({max(levels):g}) misses the budget; measure higher levels or ask for less")
    lo = 0.0
    if reached(at(lo)):
        hi = lo
    else:
        for _ in range(iterations):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if reached(at(mid)) else (mid, hi)
    chosen = at(hi)
    losses = {n: float(interpolated_drop(levels, drops[index[n]], chosen[n])) for n in names}
    return {"strategy": "greedy compression-ratio selection (AIMET): bisection on the per-layer loss threshold",
            "threshold": hi, "levels": chosen, "predicted_loss": losses,
            "predicted_total_loss": sum(losses.values()),
            "description": (f"Every layer at the highest level whose predicted accuracy loss (one-layer "
                            f"sensitivity on the validation split, {sens['method']}, interpolated between "
                            f"levels) is at most {100 * hi:.2f} pt, the smallest such threshold that meets "
                            "the budget (AIMET's greedy selection).")}


def interpolated_drop(levels, drops, level: float) -> float:
    """``d(level)`` on the curve through (0, 0) and the measured ``(level, drop)`` points, linear between them."""
    points = [(0.0, 0.0)] + sorted(zip(levels, drops))
    for (l0, d0), (l1, d1) in zip(points, points[1:]):
        if l0 <= level <= l1:
            return d0 + (d1 - d0) * (level - l0) / (l1 - l0) if l1 > l0 else d1
    return points[-1][1]


def removed_count(n: int, level: float) -> int:
    """Weights removed from ``n`` at ``level``: ``ceil(level x n)`` in exact decimal arithmetic,
    the count ``prune`` removes (slimkit_plugins.prune.num_to_prune)."""
    if n <= 0 or level <= 0:
        return 0
    return min(n, math.ceil(Fraction(repr(float(level))) * n))


def _result(names, chosen, losses, weights, target, sens) -> dict:
    removed = sum(lv * w for lv, w in zip(chosen.values(), weights))
    total = sum(weights)
    return {"strategy": "multiple-choice knapsack (dynamic programming) over measured levels",
            "target": target, "levels": chosen, "predicted_loss": losses,
            "predicted_total_loss": sum(losses.values()), "planned_fraction": removed / total if total else 0.0,
            "description": (f"Per-layer levels removing at least {target:g} of the {total:,} weights with the "
                            f"smallest summed predicted accuracy loss ({100 * sum(losses.values()):.2f} pt), "
                            f"from one-layer sensitivity on the validation split ({sens['method']}"
                            + (f", each copy fine-tuned for {sens['finetune_steps']} steps"
                               if sens.get("finetune_steps") else "") + "); "
                            "solved exactly as a multiple-choice knapsack.")}


def budgets_for_stage(ctx, model, method, opts: dict, target: float, sensitivity_file: str | None,
                      reached=None, *, finetune_steps: int = 0, finetune_lr: float | None = None) -> dict:
    """What :meth:`slimkit.api.StageContext.layer_budgets` does: sensitivity (measured on the
    validation split, each copy first fine-tuned for ``finetune_steps`` steps when > 0, or
    read), the choice (the knapsack over weights, or with ``reached`` the greedy selection
    for another budget), and the record in the stage's report."""
    from slimkit.sensitivity import analyse, candidate_layers, read_sensitivity

    layers = candidate_layers(method, model, opts)
    if sensitivity_file:
        sens = read_sensitivity(sensitivity_file)
        source = str(sensitivity_file)
    else:
        tuned = (f"each copy fine-tuned for {finetune_steps} steps first (NetAdapt)" if finetune_steps > 0
                 else "no fine-tuning")
        ctx.log(f"{method.name}: measuring sensitivity of {len(layers)} layer(s) x {len(ALLOCATION_LEVELS)} "
                f"levels on the validation split ({tuned})")
        finetune = (lambda net: ctx.short_finetune(net, finetune_steps, finetune_lr)) if finetune_steps > 0 else None
        sens = analyse(model, method, opts, ALLOCATION_LEVELS, lambda net: ctx.evaluate(net, "val"), dist=ctx.dist,
                       finetune=finetune)
        sens["finetune_steps"] = max(0, int(finetune_steps))
        source = "measured in this stage"
    result = allocate(sens, target, layers) if reached is None else allocate_greedy(sens, reached, list(layers))
    result["sensitivity_source"] = source
    result["sensitivity"] = sens
    ctx.record(allocation=result)
    ctx.log(f"{method.name}: per-layer levels " + ", ".join(f"{n}={lv:g}" for n, lv in result["levels"].items()))
    return result["levels"]
