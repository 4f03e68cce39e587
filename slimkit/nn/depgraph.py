"""The channel dependency graph: which tensor entries must be removed together.

A model is traced with ``torch.fx`` and run once on an example input, recording every
node's shape (and the value of every non-tensor node, such as ``x.size(0)``). Then
every dimension of every tensor gets a *label* per entry: an **atom** id, or ``FIXED``
for entries that pruning never removes (the batch, the model's input, spatial
positions). Atoms are born where parameters create channels (a conv's or Linear's
output channels, each dimension of a parameter used directly through ``get_attr``)
and flow through the graph by the rules of :mod:`slimkit.nn.channel_rules`:

- an elementwise op of two tensors (a residual ``add``, a gating ``mul``) *unifies*
  their labels entry by entry, so both producers lose the same channels;
- ``torch.cat`` puts its inputs' labels side by side (``cat([x, x])`` repeats x's
  atoms, so removing one atom removes both copies), ``split``/``chunk`` slice them;
- ``view``/``reshape``/``flatten`` merge labels (each channel of ``[C, H, W]`` labels
  its ``H*W`` columns of the flattened vector) or split them (``[C] -> [heads, D]``
  unifies the ``D`` atoms of a head, so heads go whole);
- a grouped convolution unifies each group's input and output channels.

Unifying an atom with a ``FIXED`` entry *locks* it: it is never removed (the model's
output classes, a channel a LayerNorm or softmax normalises over, a hard-coded slice).
Atoms are kept in a union-find; the atoms that share any dimension form a
**group** (the channels of one residual stream, of one conv, the heads of one attention).

Every parameter entry is labelled too, so the surgery (:mod:`slimkit.nn.channels`)
slices every weight, bias, running statistic and mask by the same labels.

Anything the rules cannot follow that touches a prunable atom makes
:func:`build_graph` raise a one-line :class:`~slimkit.errors.UserError` naming the
fx node (name and op) and why, before anything is changed.
"""
from __future__ import annotations

import math

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from slimkit.errors import UserError
from slimkit.nn import eval_mode
from slimkit.nn.channel_labels import FIXED, Labels, fixed
from slimkit.nn.channel_rules import all_rules

__all__ = ["FIXED", "Labels", "Atoms", "Call", "ChannelGraph", "Group", "ParamRecord", "build_graph", "describe_node",
           "fixed", "trace", "record"]


class Atoms:
    """Union-find over atom ids with a lock flag (a locked atom is never removed)."""

    def __init__(self):
        self.parent: list[int] = []
        self.locked: list[bool] = []
        self.unions = 0  # bumped by every merge, so cached root tables know when they are stale

    def fresh(self, n: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        self.locked.extend([False] * n)
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, a: int) -> int:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:
            self.parent[a], a = root, self.parent[a]
        return root

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            self.locked[ra] = self.locked[ra] or self.locked[rb]
            self.unions += 1
        return ra

    def lock(self, labels) -> None:
        for a in np.unique(np.asarray(labels)):
            if a != FIXED:
                self.locked[self.find(int(a))] = True

    def is_locked(self, a: int) -> bool:
        return self.locked[self.find(a)]

    def unify(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Entry i of ``x`` and of ``y`` are one channel; returns the merged labels."""
        if x.shape != y.shape:
            raise ValueError(f"cannot unify labels of sizes {x.shape} and {y.shape}")
        out = x.copy()
        for i, (a, b) in enumerate(zip(x.tolist(), y.tolist())):
            if a == b:
                continue
            if a == FIXED:
                self.lock([b])
                out[i] = b
            elif b == FIXED:
                self.lock([a])
            else:
                out[i] = self.union(a, b)
        return out

    def union_all(self, labels: np.ndarray) -> int:
        """Make every entry of ``labels`` one atom (a FIXED entry locks it); FIXED if all are."""
        atoms = [int(a) for a in np.unique(labels) if a != FIXED]
        if not atoms:
            return FIXED
        root = atoms[0]
        for a in atoms[1:]:
            root = self.union(root, a)
        if (labels == FIXED).any():
            self.lock([root])
        return self.find(root)


@dataclass
class ParamRecord:
    """Labels of one parameter or buffer: ``labels[d]`` per dimension ``d``.

    ``role`` says what the tensor is to its layer: ``out`` (a weight's output rows: the
    filters), ``in`` (input columns), ``bias``, ``scale`` (a normalisation's weight),
    ``shift`` (its bias), ``stat`` (running statistics, masks) or ``param`` (a tensor
    used directly in the forward). ``holders`` are ``(module name, attribute)`` pairs.
    """

    tensor: torch.Tensor
    holders: list
    labels: list
    roles: list  # role per dimension (None: the dimension has no channel meaning)


class Call:
    """What a rule sees of one fx node: its module, arguments (labels for tensors,
    concrete values for the rest), shapes, and the graph it adds atoms to."""

    def __init__(self, graph: "ChannelGraph", node: fx.Node, args, kwargs, arg_shapes, kwarg_shapes, shape, value):
        self.graph, self.node = graph, node
        self.args, self.kwargs = args, kwargs
        self.arg_shapes, self.kwarg_shapes = arg_shapes, kwarg_shapes
        self.shape = shape  # output shape (tuple of ints) or a structure of shapes
        self.value = value  # the output's concrete value when it is not a tensor
        self.atoms = graph.atoms
        self.module = graph.model.get_submodule(node.target) if node.op == "call_module" else None

    def arg(self, i: int, name: str, default=None):
        if len(self.args) > i:
            return self.args[i]
        return self.kwargs.get(name, default)

    def arg_shape(self, i: int, name: str):
        if len(self.args) > i:
            return self.arg_shapes[i]
        return self.kwarg_shapes.get(name)

    def fresh(self, n: int) -> np.ndarray:
        return self.atoms.fresh(n)

    def param(self, name: str, dim: int, labels: np.ndarray, role: str) -> np.ndarray:
        """Label dimension ``dim`` of the module's parameter/buffer ``name``; returns the merged labels."""
        return self.graph.label_param(self.module, self.node.target, name, dim, labels, role)

    def fail(self, why: str):
        raise UserError(f"cannot follow channels through {describe_node(self.node)}: {why}")


def describe_node(node: fx.Node) -> str:
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return f"fx node {node.name!r} ({node.op} {target})"


def _shape_of(value):
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, (tuple, list)) and any(isinstance(v, torch.Tensor) for v in value):
        return type(value)(_shape_of(v) for v in value)
    return None


class _Recorder(fx.Interpreter):
    """Runs the traced graph once, keeping every node's shape and every non-tensor value."""

    def __init__(self, gm):
        super().__init__(gm)
        self.shapes: dict[fx.Node, Any] = {}
        self.values: dict[fx.Node, Any] = {}

    def run_node(self, n):
        result = super().run_node(n)
        shape = _shape_of(result)
        self.shapes[n] = shape
        if shape is None:
            self.values[n] = result
        return result


class _Tracer(fx.Tracer):
    def __init__(self, leaf_types):
        super().__init__()
        self.leaf_types = tuple(leaf_types)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return type(m) in self.leaf_types or super().is_leaf_module(m, qualname)


@dataclass
class Group:
    """Atoms that share a dimension somewhere; ``atoms`` are root ids, sorted."""

    index: int
    atoms: list
    params: list = field(default_factory=list)  # (ParamRecord, dim) pairs that hold these atoms


class ChannelGraph:
    """The traced model's channel labels; see the module docstring. Build with :func:`build_graph`."""

    def __init__(self, model: nn.Module, rules):
        self.model = model
        self.rules = rules
        self.atoms = Atoms()
        self.params: dict[int, ParamRecord] = {}  # id(tensor) -> record
        self.node_labels: dict[str, Any] = {}  # node name -> labels (tuple of arrays per dim) or structure
        self.node_shapes: dict[str, Any] = {}
        self.unknown: list = []  # (node, labels of its inputs) for ops no rule covers
        self.groups: list[Group] = []
        self.gm: fx.GraphModule | None = None

    # ---------------------------------------------------------------- used by rules
    def label_param(self, module, module_name, name, dim, labels, role) -> np.ndarray:
        tensor = getattr(module, name)
        if tensor is None:
            return labels
        rec = self.params.get(id(tensor))
        if rec is None:
            rec = ParamRecord(tensor, [(module_name, name)], [None] * tensor.dim(), [None] * tensor.dim())
            self.params[id(tensor)] = rec
        elif (module_name, name) not in rec.holders:
            rec.holders.append((module_name, name))
        labels = np.asarray(labels, dtype=np.int64)
        if rec.labels[dim] is not None:  # a module used twice, or a tensor shared by two modules
            labels = self.atoms.unify(rec.labels[dim], labels)
        rec.labels[dim] = labels
        rec.roles[dim] = rec.roles[dim] or role
        return labels

    # ---------------------------------------------------------------- queries
    def root(self, a: int) -> int:
        return a if a == FIXED else self.atoms.find(a)

    def roots(self, labels: np.ndarray) -> np.ndarray:
        """The root of every entry of ``labels`` (FIXED stays FIXED), through a cached table."""
        key = (self.atoms.unions, len(self.atoms.parent))
        if getattr(self, "_table_key", None) != key:
            self._table = np.array([self.atoms.find(a) for a in range(len(self.atoms.parent))], dtype=np.int64)
            self._table_key = key
        labels = np.asarray(labels, dtype=np.int64)
        out = labels.copy()
        hit = labels != FIXED
        out[hit] = self._table[labels[hit]]
        return out

    def prunable(self, a: int) -> bool:
        return a != FIXED and not self.atoms.is_locked(a)

    def lock_modules(self, patterns) -> list[str]:
        """Leave the layers whose names match any glob in ``patterns`` as they are; returns their names."""
        hit: set = set()
        for rec in self.params.values():
            names = [m for m, _ in rec.holders if any(fnmatch.fnmatchcase(m, p) for p in patterns)]
            if names:
                hit.update(names)
                for labels in rec.labels:
                    if labels is not None:
                        self.atoms.lock(labels)
        self._make_groups()
        return sorted(hit)

    def label_arrays(self):
        """Every labelled dimension: node outputs and parameters."""
        def walk(v):
            if isinstance(v, Labels):
                yield from v
            elif isinstance(v, (tuple, list)):
                for x in v:
                    yield from walk(x)
        for v in self.node_labels.values():
            yield from walk(v)
        for rec in self.params.values():
            yield from (lab for lab in rec.labels if lab is not None)

    def _make_groups(self) -> None:
        atoms = self.atoms
        link: dict[int, int] = {}

        def find(a):
            while link[a] != a:
                link[a] = link[link[a]]
                a = link[a]
            return a

        for arr in self.label_arrays():
            roots = [int(r) for r in np.unique(self.roots(arr)) if r != FIXED and not atoms.locked[r]]
            for r in roots:
                link.setdefault(r, r)
            for r in roots[1:]:
                ra, rb = find(roots[0]), find(r)
                if ra != rb:
                    link[max(ra, rb)] = min(ra, rb)
        members: dict[int, list] = {}
        for r in link:
            members.setdefault(find(r), []).append(r)
        self.groups = [Group(i, sorted(m)) for i, m in enumerate(sorted(members.values(), key=min))]
        where = {a: g for g in self.groups for a in g.atoms}
        for rec in self.params.values():
            for d, lab in enumerate(rec.labels):
                if lab is None:
                    continue
                gs = {where[int(r)].index for r in np.unique(self.roots(lab)) if int(r) in where}
                for gi in gs:
                    self.groups[gi].params.append((rec, d))

    def channels_per_atom(self, group: Group) -> int:
        """How many channels one of ``group``'s atoms stands for: 1 for a conv filter, ``D`` for an
        attention head of ``D`` channels (the fewest entries an atom has in any of the group's
        parameter dimensions; a conv flattened into a Linear has H*W columns there, but one
        output row in the conv). The gcd over the group's atoms."""
        width, members = 0, set(group.atoms)
        for rec, d in group.params:
            roots = self.roots(rec.labels[d])
            values, counts = np.unique(roots[roots != FIXED], return_counts=True)
            for a, c in zip(values.tolist(), counts.tolist()):
                if a in members:
                    width = math.gcd(width, int(c)) if width else int(c)
        return width or 1

    def restore_minimum(self, remove: set, score: Callable[[int], float] | None = None) -> set:
        """Take atoms out of ``remove`` so that every dimension keeps at least one entry."""
        remove = set(remove)
        for arr in self.label_arrays():
            roots = self.roots(arr)
            if (roots == FIXED).any() or not all(int(r) in remove for r in np.unique(roots)):
                continue
            candidates = sorted({int(r) for r in roots})
            best = max(candidates, key=score) if score else candidates[0]
            remove.discard(best)
        return remove


def _map(value, fn):
    if isinstance(value, fx.Node):
        return fn(value)
    if isinstance(value, (tuple, list)):
        return type(value)(_map(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: _map(v, fn) for k, v in value.items()}
    if isinstance(value, slice):
        return slice(_map(value.start, fn), _map(value.stop, fn), _map(value.step, fn))
    return value


def _has_atoms(value) -> list:
    found = []

    def walk(v):
        if isinstance(v, np.ndarray):
            found.extend(int(a) for a in np.unique(v) if a != FIXED)
        elif isinstance(v, (tuple, list)):
            for x in v:
                walk(x)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
    walk(value)
    return found


def _fixed_like(shape):
    if shape is None:
        return None
    if isinstance(shape, tuple) and all(isinstance(s, int) for s in shape):
        return Labels(fixed(s) for s in shape)
    return type(shape)(_fixed_like(s) for s in shape)


def _input_tuple(example):
    return example if isinstance(example, tuple) else (example,)


def trace(model: nn.Module, rules=None) -> fx.GraphModule:
    """``torch.fx`` trace keeping every layer with a module rule as one node."""
    rules = rules or all_rules()
    try:
        graph = _Tracer(rules.module_types()).trace(model)
    except Exception as exc:  # data-dependent control flow and the like
        raise UserError(f"cannot trace the model's forward pass with torch.fx ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}); structured pruning needs a traceable model")
    return fx.GraphModule(model, graph)


@torch.no_grad()
def record(gm: fx.GraphModule, example) -> _Recorder:
    rec = _Recorder(gm)
    with eval_mode(gm):
        rec.run(*_input_tuple(example))
    return rec


def build_graph(model: nn.Module, example, *, rules=None, strict: bool = True) -> ChannelGraph:
    """Trace ``model`` on ``example`` (a batch, or a tuple of inputs) and label every channel.

    With ``strict`` (the default), an op no rule covers that receives a prunable atom
    raises :class:`UserError`; otherwise its atoms are locked (left alone).
    """
    rules = rules or all_rules()
    gm = trace(model, rules)
    try:
        rec = record(gm, example)
    except Exception as exc:
        raise UserError(f"the model does not run on an example input of shape "
                        f"{[tuple(t.shape) for t in _input_tuple(example)]} ({type(exc).__name__}: "
                        f"{(str(exc).splitlines() or [''])[0]})") from None
    graph = ChannelGraph(model, rules)
    graph.gm = gm
    env: dict[fx.Node, Any] = {}
    for node in gm.graph.nodes:
        shape = rec.shapes.get(node)
        graph.node_shapes[node.name] = shape
        if node.op == "placeholder":
            env[node] = _fixed_like(shape)
        elif node.op == "output":
            graph.atoms.lock(_has_atoms(_map(node.args, lambda n: env.get(n))))
            continue
        else:
            env[node] = _propagate(graph, node, env, rec, shape)
        graph.node_labels[node.name] = env[node]
    unknown = [(node, atoms) for node, atoms in graph.unknown if any(graph.prunable(a) for a in atoms)]
    if unknown:
        node, _ = unknown[0]
        if strict:
            raise UserError(f"cannot prune the model: no channel rule for {describe_node(node)}, which receives "
                            "prunable channels (leave its producers alone with exclude=..., or register a rule "
                            "through the register_channel_rules hook)")
        for _, atoms in unknown:
            graph.atoms.lock(atoms)
    graph._make_groups()
    return graph


def _propagate(graph: ChannelGraph, node: fx.Node, env, rec: _Recorder, shape):
    if shape is None:  # a non-tensor value (a size, a shape tuple): nothing to label
        return None
    labels_of = lambda n: env.get(n) if rec.shapes.get(n) is not None else rec.values.get(n)  # noqa: E731
    shape_of = lambda n: rec.shapes.get(n)  # noqa: E731
    args, kwargs = _map(node.args, labels_of), _map(node.kwargs, labels_of)
    arg_shapes, kwarg_shapes = _map(node.args, shape_of), _map(node.kwargs, shape_of)
    call = Call(graph, node, args, kwargs, arg_shapes, kwarg_shapes, shape, rec.values.get(node))
    if node.op == "get_attr":
        return graph.rules.get_attr(call)
    rule = graph.rules.find(node, call.module)
    if rule is None:
        incoming = _has_atoms((args, kwargs))
        if incoming:
            graph.unknown.append((node, incoming))
        return _fixed_like(shape)
    try:
        out = rule(call)
        _check_sizes(node, out, shape)
    except UserError:
        raise
    except Exception as exc:  # a call the rule does not understand (unusual arguments): refuse, never guess
        raise UserError(f"cannot follow channels through {describe_node(node)}: its rule failed "
                        f"({type(exc).__name__}: {(str(exc).splitlines() or [''])[0]})") from None
    return out


def _check_sizes(node, labels, shape):
    if isinstance(shape, tuple) and all(isinstance(s, int) for s in shape):
        ok = isinstance(labels, Labels) and len(labels) == len(shape) and all(
            isinstance(lab, np.ndarray) and lab.shape == (s,) for lab, s in zip(labels, shape))
        if not ok:
            raise ValueError(f"channel rule for {describe_node(node)} returned labels that do not match "
                                 f"its output shape {shape}")
    elif isinstance(shape, (tuple, list)):
        for lab, s in zip(labels, shape):
            _check_sizes(node, lab, s)
