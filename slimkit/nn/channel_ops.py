"""Channel rules of functions and tensor methods (``torch.cat``, ``view``, ``x + y``, ``@``...)
and the label algebra they share with the layer rules: broadcasting, and merging or
splitting dimensions in a reshape. See :mod:`slimkit.nn.channel_rules` for the layers
and :mod:`slimkit.nn.depgraph` for what labels and atoms are.
"""
from __future__ import annotations

import math

import numpy as np
import torch.nn as nn

from slimkit.nn.channel_labels import FIXED, Labels, fixed

__all__ = ["broadcast", "reshape_labels", "register_ops", "is_labels", "dim_index", "reshape_rule", "same_rule",
           "spatial_rule"]


def is_labels(v) -> bool:
    return isinstance(v, Labels)


def dim_index(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


# --------------------------------------------------------------------------- generic helpers

def broadcast(call, operands, out_shape) -> Labels:
    """Labels of a broadcasting elementwise op: full-size operands unify; a size-1 operand's atom is locked."""
    atoms = call.atoms
    out = [None] * len(out_shape)
    for labels, shape in operands:
        offset = len(out_shape) - len(shape)
        for d, lab in enumerate(labels):
            k = d + offset
            if shape[d] == out_shape[k]:
                out[k] = lab.copy() if out[k] is None else atoms.unify(out[k], lab)
            else:  # broadcast from size 1: its one entry is used by every output entry
                atoms.lock(lab)
    return Labels(o if o is not None else fixed(s) for o, s in zip(out, out_shape))


def _merge(atoms, labels, shape) -> np.ndarray:
    """Flatten several dims into one: entry labels come from the outermost labelled dim."""
    labelled = [i for i, lab in enumerate(labels) if (lab != FIXED).any()]
    size = math.prod(shape)
    if not labelled:
        return fixed(size)
    for i in labelled[1:]:  # one entry can carry one atom only: inner labelled dims stay whole
        atoms.lock(labels[i])
    k = labelled[0]
    view = [1] * len(shape)
    view[k] = shape[k]
    return np.broadcast_to(labels[k].reshape(view), tuple(shape)).reshape(-1).copy()


def _split(atoms, flat: np.ndarray, shape, pinned=()) -> list:
    """Unflatten one dim into several. One dim carries the atoms: the outermost non-trivial
    one whose size the forward does not pin (a literal in ``view``); the entries that
    share an index along it become one atom (a head of ``[heads, D]`` goes whole; with the
    group count pinned, ``[groups, C/G]`` of a channel shuffle keeps every group alike)."""
    out = [fixed(s) for s in shape]
    if not (flat != FIXED).any():
        return out
    free = [i for i, s in enumerate(shape) if s > 1 and i not in pinned]
    if not free:  # every size is written into the forward
        atoms.lock(flat)
        return out
    k = free[0]
    rows = np.moveaxis(flat.reshape(shape), k, 0).reshape(shape[k], -1)
    out[k] = np.array([atoms.union_all(row) for row in rows], dtype=np.int64)
    return out


def reshape_labels(atoms, labels, in_shape, out_shape, pinned=()) -> Labels:
    """Labels after view/reshape/flatten/squeeze, matched through runs of equal products;
    ``pinned``: output dims whose size the forward writes as a literal."""
    in_shape, out_shape = tuple(in_shape), tuple(out_shape)
    out: list = [None] * len(out_shape)
    i = j = 0
    while i < len(in_shape) or j < len(out_shape):
        if i < len(in_shape) and in_shape[i] == 1:
            atoms.lock(labels[i])
            i += 1
            continue
        if j < len(out_shape) and out_shape[j] == 1:
            out[j] = fixed(1)
            j += 1
            continue
        if i >= len(in_shape) or j >= len(out_shape):
            raise ValueError(f"cannot match shapes {in_shape} and {out_shape}")
        i0, j0, pi, pj = i, j, in_shape[i], out_shape[j]
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj:
                pi *= in_shape[i]
                i += 1
            else:
                pj *= out_shape[j]
                j += 1
        if i - i0 == 1 and j - j0 == 1:
            out[j0] = labels[i0].copy()
            continue
        flat = _merge(atoms, labels[i0:i], in_shape[i0:i])
        out[j0:j] = _split(atoms, flat, out_shape[j0:j], {d - j0 for d in pinned if j0 <= d < j})
    return Labels(out)


# --------------------------------------------------------------------------- shared by layer rules

def same_rule(call) -> Labels:
    x = next(a for a in call.args if is_labels(a))
    return Labels(v.copy() for v in x)


def spatial_rule(k: int | None):
    """Pooling / resampling over the last ``k`` dims (None: all after batch and channel)."""
    def rule(call) -> Labels:
        x = call.args[0]
        n = len(call.shape) - 2 if k is None else k
        lead = len(call.shape) - n
        return Labels([*(x[d].copy() for d in range(lead)), *(fixed(s) for s in call.shape[lead:])])
    return rule


def _pinned(call) -> set:
    """Output dims of a view/reshape/unflatten whose size is a literal of the forward (not -1,
    not computed from a tensor's size): pruning must not change them."""
    node, name = call.node, call.node.target if isinstance(call.node.target, str) else call.node.target.__name__
    if call.module is not None:
        return set(range(len(call.shape))) if isinstance(call.module, nn.Unflatten) else set()
    if name in ("view", "reshape"):
        sizes = node.args[1:]
        if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
            sizes = sizes[0]
        if "shape" in node.kwargs:
            sizes = node.kwargs["shape"]
        return {d for d, s in enumerate(sizes) if isinstance(s, int) and s != -1}
    if name == "unflatten":
        dim = dim_index(call.arg(1, "dim"), len(call.arg_shapes[0]))
        sizes = node.args[2] if len(node.args) > 2 else node.kwargs.get("sizes", ())
        return {dim + d for d, s in enumerate(sizes) if isinstance(s, int) and s != -1}
    return set()


def reshape_rule(call) -> Labels:
    x = next(a for a in call.args if is_labels(a))
    shape = next(s for a, s in zip(call.args, call.arg_shapes) if is_labels(a))
    return reshape_labels(call.atoms, x, shape, call.shape, _pinned(call))


# --------------------------------------------------------------------------- function / method rules


def _elementwise(call) -> Labels:
    operands = [(a, s) for a, s in zip(call.args, call.arg_shapes) if is_labels(a)]
    operands += [(v, call.kwarg_shapes[k]) for k, v in call.kwargs.items() if is_labels(v)]
    return broadcast(call, operands, call.shape)


def _cat(call) -> Labels:
    tensors, shapes = call.arg(0, "tensors"), call.arg_shape(0, "tensors")
    if tensors is None:
        tensors, shapes = call.kwargs.get("tensors"), call.kwarg_shapes.get("tensors")
    pairs = [(t, s) for t, s in zip(tensors, shapes) if not (len(s) == 1 and s[0] == 0)]
    ndim = len(call.shape)
    dim = dim_index(call.arg(1, "dim", 0), ndim)
    out = []
    for d in range(ndim):
        if d == dim:
            out.append(np.concatenate([t[d] for t, _ in pairs]))
        else:
            lab = pairs[0][0][d].copy()
            for t, _ in pairs[1:]:
                lab = call.atoms.unify(lab, t[d])
            out.append(lab)
    return Labels(out)


def _stack(call) -> Labels:
    tensors = call.arg(0, "tensors")
    ndim = len(call.shape)
    dim = dim_index(call.arg(1, "dim", 0), ndim)
    base = [v.copy() for v in tensors[0]]
    for t in tensors[1:]:
        base = [call.atoms.unify(a, b) for a, b in zip(base, t)]
    return Labels([*base[:dim], fixed(call.shape[dim]), *base[dim:]])


def _pieces(call, name: str):
    x, shape = call.args[0], call.arg_shapes[0]
    dim_default = 0
    if name == "chunk":
        dim = call.arg(2, "dim", dim_default)
    elif name == "unbind":
        dim = call.arg(1, "dim", 0)
    else:
        dim = call.arg(2, "dim", dim_default)
    dim = dim_index(dim, len(x))
    lab = x[dim]
    sizes = [s[dim] if name != "unbind" else 1 for s in call.shape]
    equal = name == "chunk" and len(set(sizes)) == 1 and sum(sizes) == shape[dim]
    if equal:  # chunk(n) of a pruned tensor halves it again: every piece must lose the same positions
        size = sizes[0]
        merged = lab[:size].copy()
        for k in range(1, len(sizes)):
            merged = call.atoms.unify(merged, lab[k * size:(k + 1) * size])
        lab = np.concatenate([merged] * len(sizes))
    else:  # sizes written into the forward: the dim keeps its size
        call.atoms.lock(lab)
    outs, start = [], 0
    for s, size in zip(call.shape, sizes):
        piece = lab[start:start + size]
        start += size
        if name == "unbind":
            outs.append(Labels([*x[:dim], *x[dim + 1:]]))
        else:
            outs.append(Labels([*x[:dim], piece.copy(), *x[dim + 1:]]))
    return type(call.shape)(outs)


def _narrow(call) -> Labels:
    x = call.args[0]
    dim = dim_index(call.arg(1, "dim"), len(x))
    start, length = call.arg(2, "start"), call.arg(3, "length")
    call.atoms.lock(x[dim])
    return Labels([*x[:dim], x[dim][start:start + length].copy(), *x[dim + 1:]])


def _getitem(call):
    base, index = call.args[0], call.args[1]
    if isinstance(base, (tuple, list)) and not is_labels(base):  # an element of split/chunk's result
        return base[index]
    shape = call.arg_shapes[0]
    index = index if isinstance(index, tuple) else (index,)
    if any(is_labels(i) or not isinstance(i, (int, slice, type(None), type(Ellipsis))) for i in index):
        if any((lab != FIXED).any() for lab in base):
            call.fail("indexing with a tensor or a list")
        return Labels(fixed(s) for s in call.shape)
    used = sum(1 for i in index if i is not None and i is not Ellipsis)
    expanded = []
    for i in index:
        expanded.extend([slice(None)] * (len(base) - used) if i is Ellipsis else [i])
    expanded.extend([slice(None)] * (len(base) - sum(1 for i in expanded if i is not None)))
    out, d = [], 0
    for i in expanded:
        if i is None:
            out.append(fixed(1))
            continue
        lab, size = base[d], shape[d]
        d += 1
        if isinstance(i, slice) and i.step in (None, 1) and i.start in (None, 0) and (i.stop is None or i.stop >= size):
            out.append(lab.copy())
            continue
        call.atoms.lock(lab)  # a fixed part of the dim: its size is written into the forward
        if isinstance(i, slice):
            out.append(lab[i].copy())
    return Labels(out)


def _permute(call) -> Labels:
    x = call.args[0]
    name = call.node.target if isinstance(call.node.target, str) else call.node.target.__name__
    n = len(x)
    if name in ("transpose", "swapaxes", "swapdims"):
        a, b = dim_index(call.arg(1, "dim0"), n), dim_index(call.arg(2, "dim1"), n)
        perm = list(range(n))
        perm[a], perm[b] = b, a
    elif name == "t":
        perm = list(range(n))[::-1]
    elif name == "movedim":
        src, dst = dim_index(call.arg(1, "source"), n), dim_index(call.arg(2, "destination"), n)
        perm = [d for d in range(n) if d != src]
        perm.insert(dst, src)
    else:
        dims = call.args[1:] if len(call.args) > 2 or isinstance(call.arg(1, "dims"), int) else call.arg(1, "dims")
        perm = [dim_index(d, n) for d in dims]
    return Labels(x[p].copy() for p in perm)


def _expand(call) -> Labels:
    x, shape = call.args[0], call.arg_shapes[0]
    return broadcast(call, [(x, shape)], call.shape)


def _repeat(call) -> Labels:
    x, out_shape = call.args[0], call.shape
    lead = len(out_shape) - len(x)
    padded = [fixed(1)] * lead + list(x)
    return Labels(np.tile(lab, s // len(lab)) for lab, s in zip(padded, out_shape))


def _reduction(name: str):
    exact = name in ("sum", "nansum")  # a removed zero channel adds nothing to a sum; a mean would count it

    def rule(call):
        x = call.args[0]
        dims = call.arg(1, "dim")
        keep = call.arg(2, "keepdim", False)
        if is_labels(dims):  # torch.max(a, b): elementwise
            return _elementwise(call)
        dims = list(range(len(x))) if dims is None else [dims] if isinstance(dims, int) else list(dims)
        dims = {dim_index(d, len(x)) for d in dims}
        out = []
        for d, lab in enumerate(x):
            if d in dims:
                if not exact:
                    call.atoms.lock(lab)
                if keep:
                    out.append(fixed(1))
            else:
                out.append(lab.copy())
        labels = Labels(out)
        if isinstance(call.shape, tuple) and call.shape and not isinstance(call.shape[0], int):
            return type(call.shape)(Labels(v.copy() for v in labels) for _ in call.shape)  # (values, indices)
        return labels
    return rule


def _softmax(call) -> Labels:
    x = call.args[0]
    call.atoms.lock(x[dim_index(call.arg(1, "dim"), len(x))])
    return Labels(v.copy() for v in x)


def _matmul(call) -> Labels:
    (a, sa), (b, sb) = [(v, s) for v, s in zip(call.args, call.arg_shapes) if is_labels(v)][:2]
    if len(a) < 2 or len(b) < 2:
        if any((lab != FIXED).any() for lab in (*a, *b)):
            call.fail("a matrix product with a 1-D operand")
        return Labels(fixed(s) for s in call.shape)
    call.atoms.unify(a[-1], b[-2])  # the contracted dimension
    batch_shape = call.shape[:-2]
    batch = broadcast(call, [(Labels(a[:-2]), sa[:-2]), (Labels(b[:-2]), sb[:-2])], batch_shape)
    return Labels([*batch, a[-2].copy(), b[-1].copy()])


def _flinear(call) -> Labels:
    x, w, b = call.arg(0, "input"), call.arg(1, "weight"), call.arg(2, "bias")
    call.atoms.unify(x[-1], w[1])
    out = w[0]
    if is_labels(b):
        out = call.atoms.unify(out, b[0])
    return Labels([*(v.copy() for v in x[:-1]), out.copy()])


def _flayer_norm(call) -> Labels:
    x, shape = call.arg(0, "input"), call.arg(1, "normalized_shape")
    k = len(shape)
    for d in range(k):
        call.atoms.lock(x[len(x) - k + d])
    for i, name in ((2, "weight"), (3, "bias")):
        p = call.arg(i, name)
        if is_labels(p):
            call.atoms.lock(np.concatenate(list(p)))
    return Labels(v.copy() for v in x)


def _sdpa(call) -> Labels:
    q, k, v = call.args[0], call.args[1], call.args[2]
    call.atoms.lock(q[-1])  # the default scale is 1/sqrt(E): E must keep its size
    call.atoms.unify(q[-1], k[-1])
    call.atoms.lock(k[-2])
    call.atoms.unify(k[-2], v[-2])
    batch = broadcast(call, [(Labels(t[:-2]), s[:-2]) for t, s in zip((q, k, v), call.arg_shapes[:3])],
                      call.shape[:-2])
    return Labels([*batch, q[-2].copy(), v[-1].copy()])


def _get_attr(call):
    if call.shape is None or not isinstance(call.shape[0] if call.shape else 0, int):
        return None
    owner, _, name = call.node.target.rpartition(".")
    module = call.graph.model.get_submodule(owner) if owner else call.graph.model
    labels = []
    for d, size in enumerate(call.shape):
        labels.append(call.graph.label_param(module, owner, name, d, call.fresh(size), "param"))
    return Labels(labels)


_UNARY = ("relu", "relu_", "relu6", "gelu", "silu", "sigmoid", "sigmoid_", "tanh", "tanh_", "hardswish", "hardsigmoid",
          "hardtanh", "leaky_relu", "elu", "selu", "celu", "mish", "softplus", "dropout", "dropout1d", "dropout2d",
          "alpha_dropout", "contiguous", "clone", "detach", "float", "double", "half", "to", "type", "type_as", "abs",
          "neg", "exp", "log", "sqrt", "rsqrt", "square", "erf", "clamp", "clamp_", "clip", "sign", "cpu", "cuda",
          "requires_grad_", "masked_fill", "zeros_like", "ones_like", "full_like", "empty_like", "rand_like",
          "randn_like")  # *_like: a new tensor laid out like its input shrinks with it
_ELEMENTWISE = ("add", "sub", "mul", "truediv", "div", "floordiv", "iadd", "isub", "imul", "itruediv", "add_", "sub_",
                "mul_", "div_", "pow", "maximum", "minimum", "where", "rsub", "radd", "rmul", "eq", "ne", "lt", "gt",
                "le", "ge", "addcmul", "lerp")
_RESHAPE = ("view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as")
_PERMUTE = ("permute", "transpose", "swapaxes", "swapdims", "t", "movedim")
_REDUCE = ("sum", "nansum", "mean", "amax", "amin", "max", "min", "std", "var", "norm", "logsumexp", "prod")
_FUNCTIONAL_POOL = {"max_pool1d": 1, "max_pool2d": 2, "max_pool3d": 3, "avg_pool1d": 1, "avg_pool2d": 2,
                    "avg_pool3d": 3, "adaptive_avg_pool1d": 1, "adaptive_avg_pool2d": 2, "adaptive_avg_pool3d": 3,
                    "adaptive_max_pool1d": 1, "adaptive_max_pool2d": 2, "_adaptive_max_pool2d": 2,
                    "_max_pool2d": 2, "interpolate": None, "upsample": None, "lp_pool2d": 2}


def register_ops(rules) -> None:
    """Add the function and method rules to a :class:`slimkit.nn.channel_rules.RuleSet`."""
    rules.get_attr = _get_attr
    for name in _UNARY:
        rules.register(name, same_rule)
    for name in _ELEMENTWISE:
        rules.register(name, _elementwise)
    for name in _RESHAPE:
        rules.register(name, reshape_rule)
    for name in _PERMUTE:
        rules.register(name, _permute)
    for name in _REDUCE:
        rules.register(name, _reduction(name))
    for name, k in _FUNCTIONAL_POOL.items():
        rules.register(name, spatial_rule(k))
    for name in ("cat", "concat", "concatenate"):
        rules.register(name, _cat)
    rules.register("stack", _stack)
    for name in ("split", "chunk", "unbind", "tensor_split"):
        rules.register(name, lambda call, _n=name: _pieces(call, _n))
    rules.register("narrow", _narrow)
    rules.register("getitem", _getitem)
    for name in ("expand", "expand_as", "broadcast_to"):
        rules.register(name, _expand)
    rules.register("repeat", _repeat)
    for name in ("softmax", "log_softmax"):
        rules.register(name, _softmax)
    for name in ("matmul", "bmm", "mm"):
        rules.register(name, _matmul)
    rules.register("linear", _flinear)
    rules.register("layer_norm", _flayer_norm)
    rules.register("scaled_dot_product_attention", _sdpa)
