"""Structured-pruning surgery on a :class:`slimkit.nn.depgraph.ChannelGraph`.

:func:`remove_channels` returns a smaller copy of a model without the chosen atoms:
every labelled parameter and buffer is sliced along every dimension by its labels,
each layer that changed is rebuilt at its new size by its rule's resize function and
put in place with :func:`slimkit.nn.replace_layer` (under every name it has, so a
shared layer stays shared); tensors held directly by a module (a class token) are
sliced where they are. The copy is then traced again and every node's shape is
compared with the shape the labels predict, so a forward that hard-codes a size (a
head count, a split) is refused with the node's name instead of giving a model that
crashes or computes something else. The original model is never changed.

:func:`zero_channels` gives the chosen atoms zero effect in place instead (their
producers' weights, biases, normalisation scale and shift become 0): with it, the
exactness of a removal can be checked, and :func:`atom_scores` sums per-entry
scores of labelled tensors by atom (the importance criteria build on it).
"""
from __future__ import annotations

import copy
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn as nn

from slimkit.errors import UserError
from slimkit.nn.depgraph import FIXED, ChannelGraph, Labels, build_graph, describe_node, record, trace
from slimkit.nn import replace_layer

__all__ = ["remove_channels", "zero_channels", "atom_scores", "kept_indices", "expected_shape"]

_PRODUCER_ROLES = ("out", "bias", "scale", "shift", "param")


def _roots(graph: ChannelGraph, atoms: Iterable[int]) -> set:
    return {graph.root(int(a)) for a in atoms}


def kept_indices(graph: ChannelGraph, labels: np.ndarray, removed: set) -> np.ndarray:
    """Positions of ``labels`` that stay when the atoms (roots) in ``removed`` go."""
    roots = graph.roots(labels)
    gone = np.isin(roots, np.fromiter(removed, dtype=np.int64, count=len(removed)))
    return np.nonzero((roots == FIXED) | ~gone)[0].astype(np.int64)


def expected_shape(graph: ChannelGraph, labels, removed: set):
    if isinstance(labels, Labels):
        return tuple(len(kept_indices(graph, lab, removed)) for lab in labels)
    if isinstance(labels, (tuple, list)):
        return type(labels)(expected_shape(graph, lab, removed) for lab in labels)
    return None


def _sliced(graph, rec, removed):
    t = rec.tensor.detach()
    changed = False
    for d, lab in enumerate(rec.labels):
        if lab is None:
            continue
        keep = kept_indices(graph, lab, removed)
        if len(keep) != t.shape[d]:
            t = t.index_select(d, torch.as_tensor(keep, device=t.device))
            changed = True
    return t.clone() if changed else None


def _paths(model: nn.Module) -> dict:
    """id(module) -> every dotted name it is reachable under."""
    paths: dict[int, list] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        paths.setdefault(id(m), []).append(name)
    return paths


def _check_removable(graph: ChannelGraph, removed: set) -> None:
    bad = [a for a in removed if not graph.prunable(a)]
    if bad:
        raise ValueError(f"atoms {sorted(bad)[:5]} are locked or fixed and cannot be removed")
    emptied = removed - graph.restore_minimum(removed)  # a layer left with no channels cannot be built
    if emptied:
        raise ValueError(f"removing atoms {sorted(emptied)[:5]} would leave a dimension with no entries; "
                         "keep at least one atom of it")


@torch.no_grad()
def remove_channels(model: nn.Module, graph: ChannelGraph, atoms: Iterable[int], example, *,
                    check: bool = True) -> nn.Module:
    """A copy of ``model`` without ``atoms`` (ids from ``graph``, which was built on ``model``).

    ``check=False`` skips the re-trace (for trial copies that are measured and thrown
    away; call :func:`verify` on the one that is kept)."""
    removed = _roots(graph, atoms)
    _check_removable(graph, removed)
    memo: dict = {}
    new_model = copy.deepcopy(model, memo)
    paths = _paths(new_model)
    # New tensors, one per labelled tensor (shared tensors stay shared).
    per_module: dict[str, dict] = {}
    for rec in graph.params.values():
        t = _sliced(graph, rec, removed)
        if t is None:
            continue
        old = memo.get(id(rec.tensor), rec.tensor)
        new = nn.Parameter(t, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else t
        for module_name, attr in rec.holders:
            per_module.setdefault(module_name, {})[attr] = new
    for module_name, tensors in per_module.items():
        old = new_model.get_submodule(module_name)
        resize = graph.rules.resize(old)
        if resize is None:  # a tensor used directly in a forward: slice it where it is
            for attr, t in tensors.items():
                (old._parameters if attr in old._parameters else old._buffers)[attr] = t
            continue
        current = {k: v for k, v in list(old._parameters.items()) + list(old._buffers.items()) if v is not None}
        # The new layer's random init is overwritten: leave the RNG as it was, so that what follows (dropout
        # in fine-tuning) does not depend on how many layers or trial copies were rebuilt.
        with torch.random.fork_rng(devices=[]):
            fresh = resize(old, {**current, **tensors})
        if fresh is not old:
            _install(fresh, old, tensors)
            for path in paths.get(id(old), [module_name]):
                replace_layer(new_model, path, fresh)
        else:
            for attr, t in tensors.items():
                (old._parameters if attr in old._parameters else old._buffers)[attr] = t
    if check:
        verify(new_model, graph, removed, example)
    return new_model


def _install(new: nn.Module, old: nn.Module, tensors: dict) -> None:
    ref = next((t for t in list(old.parameters(recurse=False)) + list(old.buffers(recurse=False))
                if t.is_floating_point()), None)
    if ref is not None:
        new.to(device=ref.device, dtype=ref.dtype)
    new.train(old.training)
    for name, p in old._parameters.items():
        new._parameters[name] = tensors.get(name, p)
    for name, b in old._buffers.items():
        new._buffers[name] = tensors.get(name, b)


def verify(new_model: nn.Module, graph: ChannelGraph, removed: set, example) -> None:
    """Trace the pruned copy and compare every node's shape with what the labels predict."""
    gm = trace(new_model, graph.rules)
    nodes = {n.name: n for n in gm.graph.nodes}
    try:
        rec = record(gm, example)
    except Exception as exc:
        raise UserError(f"the pruned model does not run ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                        "its forward fixes a size that pruning changes, so nothing was pruned") from None
    for n in gm.graph.nodes:
        if n.op == "output":
            continue
        if n.name not in graph.node_labels:
            raise UserError(f"the pruned model traces differently ({describe_node(n)} is new); nothing was pruned")
        want = expected_shape(graph, graph.node_labels[n.name], removed)
        got = rec.shapes.get(n)
        if want is not None and got != want:
            raise UserError(f"after pruning, {describe_node(nodes[n.name])} has shape {got} where the channel graph "
                            f"expects {want}: the forward fixes a size that pruning changes (e.g. a hard-coded "
                            "head count); nothing was pruned")


@torch.no_grad()
def zero_channels(graph: ChannelGraph, atoms: Iterable[int]) -> None:
    """Give ``atoms`` zero effect in the graph's model, in place: zero their entries in every
    producer weight (output rows), bias, normalisation scale and shift, and directly used tensor."""
    removed = _roots(graph, atoms)
    for rec in graph.params.values():
        for d, (lab, role) in enumerate(zip(rec.labels, rec.roles)):
            if lab is None or role not in _PRODUCER_ROLES:
                continue
            hit = [i for i, r in enumerate(graph.roots(lab).tolist()) if r in removed]
            if hit:
                rec.tensor.index_fill_(d, torch.as_tensor(hit, device=rec.tensor.device), 0)


def atom_scores(graph: ChannelGraph, entry_score: Callable[[torch.Tensor, int], torch.Tensor],
                roles: Iterable[str], tensor_of: Callable | None = None, mean: bool = False) -> dict:
    """Sum ``entry_score(tensor, dim)`` (one value per entry of ``dim``) over every labelled
    dimension whose role is in ``roles``, by atom root. ``tensor_of(record)`` may substitute
    the tensor scored (e.g. its gradient product); returns ``{root: score}``. ``mean=True``
    divides each atom's sum by the number of labelled dimensions (tensor, dim) that hold it:
    the mean over the tensors of its group of the atom's whole slice in each."""
    roles = set(roles)
    scores: dict[int, float] = {}
    holders: dict[int, int] = {}
    for rec in graph.params.values():
        for d, (lab, role) in enumerate(zip(rec.labels, rec.roles)):
            if lab is None or role not in roles:
                continue
            t = tensor_of(rec) if tensor_of is not None else rec.tensor.detach()
            if t is None:
                continue
            values = entry_score(t, d).double().cpu().tolist()
            roots = graph.roots(lab)
            for r, v in zip(roots.tolist(), values):
                if r != FIXED and graph.prunable(r):
                    scores[r] = scores.get(r, 0.0) + v
            for r in np.unique(roots).tolist():
                holders[r] = holders.get(r, 0) + 1
    return {a: v / holders[a] for a, v in scores.items()} if mean else scores


__all__ += ["verify", "build_graph"]
