"""Lower a captured graph for one input shape: CSR layers become direct calls of slimkit's kernels.

For an input shape (batch included) every ``SparseConv2d`` / ``SparseLinear`` leaf is
decided once, with the rules its eager ``forward`` applies on every call
(:func:`slimkit.ops.sparse_conv2d`, :func:`slimkit.ops.sparse_linear`):

* it runs the kernel: the node becomes a ``call_function`` of
  ``torch.ops.slimkit.sparse_conv2d`` / ``sparse_linear`` on constant CSR tensors held by
  the graph module (indices as stored, int32: the kernels read int32 and int64 columns
  as they are, and int32 halves the index bytes streamed per call). No Python runs per
  layer once the graph is frozen or
  compiled; in the eager graph the op is called straight, without the module's checks;
* it would run dense (sparsity under the crossover, a tiny output plane, a call under
  the MAC floor, no native kernels): the node becomes a plain ``nn.Conv2d`` /
  ``nn.Linear``, so the dense backend (oneDNN) sees it like any other dense layer.

Before that, convolutions on 1x1 feature maps become linear layers
(:mod:`slimkit.runtime.single_pixel`, exact) and 2x2 max pools three elementwise maxima
(:mod:`slimkit.runtime.pool`, exact); in a graph that calls slimkit's kernels, those pools
then run slimkit's ``max_pool2x2`` with the ReLU before them fused in, and a sparse
convolution whose only user is such a pool becomes one ``sparse_conv2d_relu_pool`` call.

Runs of two or more fully connected layers (``SparseLinear`` or ``nn.Linear``, each
optionally followed by a ReLU, eval-mode Dropout / Identity between them allowed), on a 2-D
input, become one call of ``torch.ops.slimkit.sparse_mlp``: the layers run one after the
other in C++, CSR where the weight is past its sparsity crossover, dense (addmm) otherwise.
At batch 1 an MLP such as LeNet-300-100 is mostly per-layer overhead (a 100 x 10 layer
costs ~8 us as a module call, its arithmetic well under one), so this removes a dispatch
and an output-buffer round trip per layer.

An activation that is the only user of a kernel's output runs in place on it
(``relu_``): one output buffer fewer. It is not fused into the kernel: the kernels of
csrc/ have no activation epilogue (a dense layer's conv + ReLU is fused by oneDNN in
the ``jit`` and ``compile`` backends).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

__all__ = ["LayerPlan", "lower"]


@dataclass
class LayerPlan:
    """How one CSR layer runs at the lowered shape."""
    name: str
    kind: str  # "conv" or "linear"
    path: str  # "sparse kernel" or "dense"
    sparsity: float
    why: str

    def as_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "path": self.path, "sparsity": round(self.sparsity, 4),
                "why": self.why}


_RELUS = (nn.ReLU,)
_RELU_FUNCS = (F.relu, torch.relu)


def _conv_path(layer, in_shape, native: bool) -> tuple[bool, str]:
    """The op's own decision (:meth:`CSRWeight.runs_sparse`) for this input shape, not a copy of it."""
    from slimkit.ops.conv import _conv_out

    sw = layer.sparse_weight
    if not native:
        return False, "native kernels unavailable (reference ops): dense conv2d"
    h, w = in_shape[-2], in_shape[-1]
    positions = (_conv_out(h, layer.kernel_size[0], layer.stride[0], layer.padding[0], layer.dilation[0])
                 * _conv_out(w, layer.kernel_size[1], layer.stride[1], layer.padding[1], layer.dilation[1]))
    if not sw.runs_sparse(positions):
        return False, f"{sw.kernel_reason(positions)}: dense conv2d"
    return True, sw.reason


def _linear_path(layer, in_shape, native: bool) -> tuple[bool, str]:
    sw = layer.sparse_weight
    if not native:
        return False, "native kernels unavailable (reference ops): dense F.linear"
    if len(in_shape) != 2:
        return False, f"{len(in_shape)}-D input: dense F.linear"
    macs = in_shape[0] * in_shape[1] * layer.out_features
    if not sw.runs_sparse(macs):
        return False, f"{sw.kernel_reason(macs)}: dense F.linear"
    return True, sw.reason


def _attr(gm: fx.GraphModule, graph: fx.Graph, name: str, tensor, none_as_empty: bool = False) -> fx.Node | None:
    if tensor is None:
        if not none_as_empty:
            return None
        tensor = torch.empty(0)  # sparse_mlp's "none" (TorchScript cannot trace lists of optional tensors)
    gm.register_buffer(name, tensor.detach().clone())
    return graph.get_attr(name)


def _to_kernel_call(gm, node, layer, kind, index: int) -> fx.Node:
    graph = gm.graph
    prefix = f"_csr{index}"
    with graph.inserting_before(node):
        rp = _attr(gm, graph, prefix + "_row_ptr", layer.row_ptr)
        ci = _attr(gm, graph, prefix + "_col_idx", layer.col_idx)
        vals = _attr(gm, graph, prefix + "_values", layer.values)
        bias = _attr(gm, graph, prefix + "_bias", layer._buffers.get("bias"))
        shape = [int(s) for s in layer.weight_shape]
        if kind == "conv":
            call = graph.call_function(torch.ops.slimkit.sparse_conv2d.default,
                                       (node.args[0], rp, ci, vals, shape, bias, list(layer.stride),
                                        list(layer.padding), list(layer.dilation)))
        else:
            x = graph.call_method("contiguous", (node.args[0],))
            call = graph.call_function(torch.ops.slimkit.sparse_linear.default, (x, rp, ci, vals, shape, bias))
    node.replace_all_uses_with(call)
    graph.erase_node(node)
    return call


def _relu_in_place(gm: fx.GraphModule, producer: fx.Node) -> bool:
    """Run the lone ReLU after ``producer`` in place on the kernel's output."""
    if len(producer.users) != 1:
        return False
    user = next(iter(producer.users))
    if not _is_relu(dict(gm.named_modules()), user) or user.kwargs.get("inplace") or user.args[0] is not producer:
        return False
    with gm.graph.inserting_before(user):
        new = gm.graph.call_function(torch.relu_, (producer,))
    user.replace_all_uses_with(new)
    gm.graph.erase_node(user)
    return True


_PASS_THROUGH = (nn.Dropout, nn.Identity)  # identities in eval mode, between the layers of a chain


def _fc_layer(modules: dict, node: fx.Node):
    """The fully connected layer ``node`` calls (a SparseLinear or a plain nn.Linear), else None."""
    from slimkit.nn.sparse import SparseLinear

    if node.op != "call_module":
        return None
    layer = modules.get(node.target)
    return layer if isinstance(layer, SparseLinear) or type(layer) is nn.Linear else None


def _is_relu(modules: dict, node: fx.Node) -> bool:
    return ((node.op == "call_module" and type(modules.get(node.target)) in _RELUS)
            or (node.op == "call_function" and node.target in _RELU_FUNCS)
            or (node.op == "call_method" and node.target == "relu"))


def _only_user(node: fx.Node, modules: dict, skip=()) -> fx.Node | None:
    """The single node that consumes ``node`` as its first argument (stepping over ``skip``), or None."""
    while True:
        users = list(node.users)
        if (len(users) != 1 or not users[0].args or users[0].args[0] is not node or len(users[0].args) != 1
                or set(users[0].kwargs) - {"inplace"}):
            return None
        user = users[0]
        if user.op == "call_module" and isinstance(modules.get(user.target), skip):
            node = user
            continue
        return user


def _fc_chains(gm: fx.GraphModule, modules: dict) -> list[list[tuple]]:
    """Maximal runs of >= 2 fully connected layers on 2-D float inputs: ``[(layer node, relu node or
    None, [pass-through nodes]), ...]``; every intermediate value has that chain as its only user."""
    chains, seen = [], set()
    for node in gm.graph.nodes:
        if node in seen or _fc_layer(modules, node) is None or not isinstance(node.args[0], fx.Node):
            continue
        meta = node.args[0].meta.get("tensor_meta")
        if meta is None or len(meta.shape) != 2 or meta.dtype not in (torch.float32, torch.float64) or node.kwargs:
            continue
        chain, cur = [], node
        while cur is not None and _fc_layer(modules, cur) is not None and cur not in seen:
            nxt = _only_user(cur, modules, _PASS_THROUGH)
            relu = nxt if nxt is not None and _is_relu(modules, nxt) else None
            tail = relu or cur
            chain.append((cur, relu))
            seen.add(cur)
            cur = _only_user(tail, modules, _PASS_THROUGH) if relu is not None else nxt
        if len(chain) >= 2:
            chains.append(chain)
    return chains


def _fuse_fc_chain(gm: fx.GraphModule, modules: dict, chain: list[tuple], index: int) -> list[LayerPlan]:
    """Replace ``chain`` by one ``sparse_mlp`` call; the plans of its CSR layers."""
    from slimkit.nn.sparse import SparseLinear

    graph, plans = gm.graph, []
    row_ptrs, col_idxs, values, dense, biases, shapes, relus = [], [], [], [], [], [], []
    first = chain[0][0]
    with graph.inserting_before(first):
        for j, (node, relu) in enumerate(chain):
            layer, prefix = modules[node.target], f"_mlp{index}_{j}"
            csr = isinstance(layer, SparseLinear) and layer.sparse_weight.uses_sparse
            if csr:
                sw = layer.sparse_weight
                row_ptrs.append(_attr(gm, graph, prefix + "_row_ptr", sw.row_ptr))
                col_idxs.append(_attr(gm, graph, prefix + "_col_idx", sw.col_idx))
                values.append(_attr(gm, graph, prefix + "_values", sw.values))
                dense.append(_attr(gm, graph, prefix + "_weight", None, none_as_empty=True))
                bias = layer._buffers.get("bias")
            else:
                plain = layer.to_dense_module() if isinstance(layer, SparseLinear) else layer
                for name, target in (("_row_ptr", row_ptrs), ("_col_idx", col_idxs), ("_values", values)):
                    target.append(_attr(gm, graph, prefix + name, None, none_as_empty=True))
                dense.append(_attr(gm, graph, prefix + "_weight", plain.weight))
                bias = plain.bias
            if isinstance(layer, SparseLinear):
                sw = layer.sparse_weight
                plans.append(LayerPlan(node.target, "linear", "sparse kernel" if csr else "dense", sw.sparsity,
                                       (sw.reason if csr else f"sparsity {sw.sparsity:.1%} < {sw.min_sparsity:.0%}: "
                                        "dense addmm") + f"; fused into sparse_mlp call {index}"))
            biases.append(_attr(gm, graph, prefix + "_bias", bias, none_as_empty=True))
            shapes += [int(layer.out_features), int(layer.in_features)]
            relus.append(1 if relu is not None else 0)
        x = graph.call_method("contiguous", (first.args[0],))
        call = graph.call_function(torch.ops.slimkit.sparse_mlp.default,
                                   (x, row_ptrs, col_idxs, values, dense, shapes, biases, relus))
    last = chain[-1][1] or chain[-1][0]
    last.replace_all_uses_with(call)
    # erase from the end: each node then has no users left (pass-throughs go with dead-code elimination)
    for node, relu in reversed(chain):
        for n in ([relu] if relu is not None else []) + [node]:
            for user in list(n.users):
                if user.op == "call_module" and isinstance(modules.get(user.target), _PASS_THROUGH):
                    user.replace_all_uses_with(n)
                    graph.erase_node(user)
            graph.erase_node(n)
    return plans


def lower(captured: fx.GraphModule, example: torch.Tensor, native: bool) -> tuple[fx.GraphModule, list[LayerPlan]]:
    """A copy of ``captured`` lowered for ``example``'s shape, and one :class:`LayerPlan` per CSR layer."""
    from slimkit.nn.sparse import SparseConv2d
    from slimkit.nn.sparse import CSRLayer

    from slimkit.ops import backend as ops_backend
    from slimkit.runtime.pool import fast_max_pools, fuse_conv_pools, native_pools
    from slimkit.runtime.single_pixel import convs_on_single_pixels

    gm = copy.deepcopy(captured)
    ShapeProp(gm).propagate(example)
    fast_max_pools(gm)
    if convs_on_single_pixels(gm):
        ShapeProp(gm).propagate(example)
    modules = dict(gm.named_modules())
    plans: list[LayerPlan] = []
    if native and ops_backend.use_native(example, "slimkit::sparse_mlp"):
        for i, chain in enumerate(_fc_chains(gm, modules)):
            plans += _fuse_fc_chain(gm, modules, chain, i)
    index = 0
    csr_nodes = [(node, tuple(node.args[0].meta["tensor_meta"].shape)) for node in gm.graph.nodes
                 if node.op == "call_module" and isinstance(modules.get(node.target), CSRLayer)]
    for node, in_shape in csr_nodes:  # shapes read first: the rewrites below add nodes without them
        layer = modules[node.target]
        kind = "conv" if isinstance(layer, SparseConv2d) else "linear"
        sparse, why = (_conv_path if kind == "conv" else _linear_path)(layer, in_shape, native)
        plans.append(LayerPlan(node.target, kind, "sparse kernel" if sparse else "dense", layer.sparse_weight.sparsity,
                               why))
        if sparse:
            call = _to_kernel_call(gm, node, layer, kind, index)
            index += 1
            _relu_in_place(gm, call)
            parent, _, name = node.target.rpartition(".")
            delattr(gm.get_submodule(parent) if parent else gm, name)
        else:
            dense = layer.to_dense_module().eval()
            parent, _, name = node.target.rpartition(".")
            setattr(gm.get_submodule(parent) if parent else gm, name, dense)
    # Pools fused with their ReLU into slimkit's kernel, where the graph already runs slimkit's
    # kernels (a graph of ATen ops alone stays exportable for the onnxruntime backend).
    if (index and native and example.dtype in (torch.float32, torch.float64)
            and ops_backend.use_native(example, "slimkit::max_pool2x2")):
        native_pools(gm)
        if ops_backend.use_native(example, "slimkit::sparse_conv2d_relu_pool"):
            fuse_conv_pools(gm)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    for p in gm.parameters():
        p.requires_grad_(False)
    return gm.eval(), plans
