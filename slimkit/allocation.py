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
other choice of measured levels does so with a smaller predicted loss (uniform
levels included). The loss model treats layers as independent (additive losses), as
every sensitivity method does.

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


def allocate(sens: dict, target: float, layers: dict[str, int] | None = None) -> dict:
    """Levels ``{layer: level}`` meeting ``target`` with the least summed predicted loss.

    ``layers`` (name -> weights) restricts the choice to those layers (default: every
    layer of ``sens``, with its recorded weights); layers of ``layers`` missing from
    ``sens`` are a UserError.
    """
    names = list(layers) if layers is not None else list(sens["layers"])
    index = {n: i for i, n in enumerate(sens["layers"])}
    missing = [n for n in names if n not in index]
    if missing:
        raise UserError(f"the sensitivity results have no entry for layer(s) {', '.join(missing[:5])}; "
                        "they were computed for another model or method")
    weights = [int(layers[n]) if layers is not None else int(sens["weights"][index[n]]) for n in names]
    total = sum(weights)
    drops = predicted_losses(sens)
    levels = list(sens["levels"])
    if total == 0 or target <= 0:
        return _result(names, {n: 0.0 for n in names}, {n: 0.0 for n in names}, weights, target, sens)
    need = removed_count(total, target)
    # choices per layer: (weights removed, loss, level); level 0 removes nothing and loses nothing
    choices = [[(0, 0.0, 0.0)] + [(removed_count(w, lv), drops[index[n]][j], lv) for j, lv in enumerate(levels)]
               for n, w in zip(names, weights)]
    reach = [0] * (len(choices) + 1)  # the most the layers from i on can still remove
    for i in range(len(choices) - 1, -1, -1):
        reach[i] = reach[i + 1] + max(c[0] for c in choices[i])
    if reach[0] < need:
        raise UserError(f"allocation=sensitivity: the measured levels go up to {max(levels):g}, which cannot remove "
                        f"{target:g} of the weights; measure higher levels (slimkit sensitivity --levels ...)")
    # Exact dynamic programming over the Pareto front of (weights removed, loss): a partial
    # choice is kept only if no other removes at least as many weights for no more loss;
    # removals beyond `need` count as `need`; a state that cannot reach `need` is dropped.
    front = [(0, 0.0, ())]
    for i, ch in enumerate(choices):
        best: dict[int, tuple[float, tuple]] = {}
        for removed, loss, picks in front:
            for k, (r, d, _) in enumerate(ch):
                v = min(need, removed + r)
                if v + reach[i + 1] < need:
                    continue
                if v not in best or loss + d < best[v][0] - 1e-12:
                    best[v] = (loss + d, picks + (k,))
        front, lowest = [], math.inf
        for v in sorted(best, reverse=True):
            if best[v][0] < lowest - 1e-12:
                front.append((v, best[v][0], best[v][1]))
                lowest = best[v][0]
    _, _, picks = next(f for f in front if f[0] == need)
    chosen = {n: choices[i][k][2] for i, (n, k) in enumerate(zip(names, picks))}
    losses = {n: choices[i][k][1] for i, (n, k) in enumerate(zip(names, picks))}
    return _result(names, chosen, losses, weights, target, sens)


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
                            f"from one-layer sensitivity on the validation split ({sens['method']}); "
                            "solved exactly as a multiple-choice knapsack.")}


def budgets_for_stage(ctx, model, method, opts: dict, target: float, sensitivity_file: str | None) -> dict:
    """What :meth:`slimkit.api.StageContext.layer_budgets` does: sensitivity (measured on the
    validation split, or read), the knapsack choice, and the record in the stage's report."""
    from slimkit.sensitivity import analyse, candidate_layers, read_sensitivity

    layers = candidate_layers(method, model, opts)
    if sensitivity_file:
        sens = read_sensitivity(sensitivity_file)
        source = str(sensitivity_file)
    else:
        ctx.log(f"{method.name}: measuring sensitivity of {len(layers)} layer(s) x {len(ALLOCATION_LEVELS)} "
                "levels on the validation split (no fine-tuning)")
        sens = analyse(model, method, opts, ALLOCATION_LEVELS, lambda net: ctx.evaluate(net, "val"), dist=ctx.dist)
        source = "measured in this stage"
    result = allocate(sens, target, layers)
    result["sensitivity_source"] = source
    result["sensitivity"] = sens
    ctx.record(allocation=result)
    ctx.log(f"{method.name}: per-layer levels " + ", ".join(f"{n}={lv:g}" for n, lv in result["levels"].items()))
    return result["levels"]
