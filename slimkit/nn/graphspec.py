"""Save a model whose classes slimkit does not know as a ``torch.fx`` graph in JSON, and rebuild it.

A model made only of torch built-ins and registered classes is a spec tree
(:mod:`slimkit.nn.spec`). Any other model (``python:module:factory`` with the user's own
block classes) is traced with ``torch.fx`` in eval mode, keeping every layer slimkit can
describe (:meth:`ModuleRegistry.knows`, containers excepted) as one ``call_module`` node;
the user's code is inlined into calls of torch functions. The architecture is then::

    {"type": "slimkit.graph", "args": {}, "children": {...}, "graph": {"nodes": [...], "attrs": {...}}}

``children`` is the module tree of the traced ``GraphModule`` (spec nodes; the plain
containers fx makes for submodule paths are ``{"type": "Module"}``), ``nodes`` the graph in
order and ``attrs`` the tensors reached through ``get_attr`` that no spec node owns
(their data is in the file's tensors like any other state-dict entry). Loading rebuilds a
``torch.fx.GraphModule``: nothing of the user's code is imported or unpickled, and a
function is looked up only by qualified name inside the allowlist :data:`NAMESPACES`
(and Tensor methods by name, :func:`method_allowed`). docs/format.md has the layout.

Anything the JSON cannot say (a function outside the allowlist, an argument of another
type, a traced value that is not a tensor) is a one-line :class:`UserError` naming the fx
node, raised while describing, so before anything is written.
"""
from __future__ import annotations

import builtins
import functools
import keyword
import math
import operator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from slimkit.errors import UserError
from slimkit.nn import eval_mode
from slimkit.nn.spec import ModuleRegistry

__all__ = ["GRAPH_TYPE", "NAMESPACES", "describe", "build", "is_graph", "function_name", "resolve_function",
           "method_allowed", "trace"]

GRAPH_TYPE = "slimkit.graph"
#: The type of the plain containers fx makes along a submodule path (``layers.0`` of ``layers.0.conv``).
PATH_TYPE = "Module"
_CONTAINERS = (nn.Sequential, nn.ModuleList)
_OPS = ("placeholder", "get_attr", "call_function", "call_method", "call_module", "output")

# Names inside the allowed namespaces that a file may still not call: they touch files,
# global state or run code given to them.
_DENIED = {"load", "save", "from_file", "compile", "vmap", "cond", "while_loop", "manual_seed", "seed",
           "initial_seed", "use_deterministic_algorithms", "call", "export", "get_rng_state"}
_DENIED_METHODS = {"storage", "untyped_storage", "share_memory_", "set_", "data_ptr", "register_hook",
                   "register_post_accumulate_grad_hook", "backward", "apply_", "map_", "map2_", "record_stream",
                   "pin_memory", "numpy", "tolist"}
_BUILTINS = {"getattr", "len", "min", "max", "abs", "int", "float", "bool", "round"}
#: Where a ``call_function`` target may come from, by the prefix of its qualified name. In the
#: torch namespaces only tensor operations count: those torch lists as overridable
#: (``torch.overrides``), which are also the only torch functions fx records.
NAMESPACES = {"torch": torch, "torch.nn.functional": F, "torch.linalg": torch.linalg, "torch.fft": torch.fft,
              "torch.special": torch.special, "torch.Tensor": torch.Tensor, "operator": operator, "math": math,
              "builtins": builtins}
_EXTRA = {"torch._assert": torch._assert}  # what fx itself inserts for `assert` in a traced forward


def method_allowed(name) -> bool:
    """A public ``torch.Tensor`` method that neither runs given code nor touches memory or files."""
    return (isinstance(name, str) and name.isidentifier() and not name.startswith("_")
            and name not in _DENIED_METHODS and callable(getattr(torch.Tensor, name, None)))


def _allowed(namespace: str, name: str):
    """The callable ``namespace.name`` if the allowlist has it, else None."""
    if f"{namespace}.{name}" in _EXTRA:
        return _EXTRA[f"{namespace}.{name}"]
    if namespace not in NAMESPACES or not name.isidentifier() or name.startswith("_") or name in _DENIED \
            or name.startswith(("set_", "use_")):
        return None
    if namespace == "builtins" and name not in _BUILTINS:
        return None
    if namespace == "torch.Tensor" and not method_allowed(name):
        return None
    obj = getattr(NAMESPACES[namespace], name, None)
    if obj is None or not callable(obj) or isinstance(obj, type) and namespace != "builtins":
        return None
    if namespace.startswith("torch") and id(obj) not in _tensor_operations():
        return None
    return obj


@functools.lru_cache(maxsize=None)
def _tensor_operations() -> frozenset:
    """ids of the functions and Tensor methods torch lists as overridable tensor operations."""
    from torch.overrides import get_overridable_functions

    return frozenset(id(fn) for fns in get_overridable_functions().values() for fn in fns)


_NAMES: dict[int, str] = {}


def function_name(fn) -> str | None:
    """The qualified name a file gives ``fn`` (``torch.cat``, ``operator.add``), or None off the allowlist."""
    if not _NAMES:
        for name, obj in _EXTRA.items():
            _NAMES[id(obj)] = name
        for namespace, ns in NAMESPACES.items():
            for attr in (sorted(_BUILTINS) if namespace == "builtins" else dir(ns)):
                obj = _allowed(namespace, attr)
                if obj is not None:
                    _NAMES.setdefault(id(obj), f"{namespace}.{attr}")
    return _NAMES.get(id(fn))


def resolve_function(qualified) -> object | None:
    """The allowlisted callable named ``qualified``; None when the allowlist has no such name."""
    if not isinstance(qualified, str) or "." not in qualified:
        return None
    namespace, _, name = qualified.rpartition(".")
    return _allowed(namespace, name)


def is_graph(arch) -> bool:
    return isinstance(arch, dict) and arch.get("type") == GRAPH_TYPE


# --------------------------------------------------------------------------- describe

class _Tracer(fx.Tracer):
    """Keeps every layer a spec node can describe as one ``call_module``; inlines the rest."""

    def __init__(self, modules: ModuleRegistry):
        super().__init__()
        self.registry = modules

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if type(m) in _CONTAINERS:
            return False
        return all(self.registry.knows(type(sub)) for sub in m.modules())


def _class_name(model) -> str:
    if isinstance(model, fx.GraphModule):  # a model loaded from a graph file: its class is made by fx
        return f"a torch.fx GraphModule ({type(model).__name__})"
    cls = type(model)
    return f"{cls.__module__}.{cls.__qualname__}"


def trace(model: nn.Module, modules: ModuleRegistry) -> fx.GraphModule:
    """``model`` as a GraphModule whose ``call_module`` nodes are layers ``modules`` describes.

    Traced in eval mode: what the user's own code decides from ``self.training`` is fixed to
    inference (layers kept as modules, BatchNorm and Dropout included, still switch)."""
    try:
        with eval_mode(model):
            graph = _Tracer(modules).trace(model)
    except Exception as exc:  # data-dependent control flow, unsupported Python, ...
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise UserError(f"cannot save a model containing {_class_name(model)}: slimkit saves such models as a "
                        f"torch.fx graph, and tracing failed ({type(exc).__name__}: {first})") from None
    gm = fx.GraphModule(model, graph, "SlimGraph")
    gm.training = model.training  # only the root's flag: the layers are the model's own, shared
    return gm


def describe(model: nn.Module, modules: ModuleRegistry) -> tuple[nn.Module, dict]:
    """``(model to save, architecture)``: the spec tree when every class is known, else the traced
    graph (the model to save is then the GraphModule: its state dict is what the file holds)."""
    if all(modules.knows(type(m)) for m in model.modules()):
        return model, modules.spec(model)
    gm = trace(model, modules)
    return gm, _graph_spec(gm, modules, _class_name(model))


def _tree(module: nn.Module, modules: ModuleRegistry) -> dict:
    if type(module) is nn.Module:  # a container fx made for a submodule path
        return {"type": PATH_TYPE, "args": {},
                "children": {n: _tree(c, modules) for n, c in module.named_children()}}
    return modules.spec(module)


def _owner(root: nn.Module, target: str):
    *path, field = target.split(".")
    module = root
    for part in path:
        module = getattr(module, part)
    return module, field


def _graph_spec(gm: fx.GraphModule, modules: ModuleRegistry, what: str) -> dict:
    nodes, attrs = [], {}
    for node in gm.graph.nodes:
        def refuse(why):
            target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", node.target)
            raise UserError(f"cannot save a model containing {what} as a graph: fx node {node.name!r} "
                            f"({node.op} {target}) {why}")

        entry = {"name": node.name, "op": node.op}
        if node.op == "call_function":
            name = function_name(node.target)
            if name is None:
                module = getattr(node.target, "__module__", None) or "?"
                refuse(f"calls {module}.{getattr(node.target, '__qualname__', node.target)}, which is not on the "
                       "allowlist of a .slim file (torch.*, torch.nn.functional.*, torch.Tensor methods, operator.*, "
                       "math.*, getattr/len/min/max/abs/int/float/bool/round)")
            if name == "builtins.getattr" and not (len(node.args) == 2 and isinstance(node.args[1], str)
                                                   and not node.args[1].startswith("_")):
                refuse("reads a private or computed attribute")
            entry["target"] = name
        elif node.op == "call_method":
            if not method_allowed(node.target):
                refuse(f"calls method {node.target!r}, which is not an allowed torch.Tensor method")
            entry["target"] = node.target
        elif node.op == "get_attr":
            owner, field = _owner(gm, node.target)
            value = getattr(owner, field)
            if not isinstance(value, torch.Tensor):
                refuse(f"reads a {type(value).__name__}, not a tensor")
            if owner is gm or type(owner) is nn.Module:  # no spec node owns it
                attrs[node.target] = {"kind": "parameter" if isinstance(value, nn.Parameter) else "buffer",
                                      "shape": list(value.shape), "dtype": str(value.dtype).replace("torch.", ""),
                                      **({"requires_grad": value.requires_grad}
                                         if isinstance(value, nn.Parameter) else {})}
            entry["target"] = node.target
        else:
            entry["target"] = node.target
        try:
            entry["args"] = [_encode(a) for a in node.args]
            entry["kwargs"] = {k: _encode(v) for k, v in node.kwargs.items()}
        except TypeError as exc:
            refuse(f"has an argument slimkit cannot write: {exc}")
        nodes.append(entry)
    return {"type": GRAPH_TYPE, "args": {}, "children": {n: _tree(c, modules) for n, c in gm.named_children()},
            "graph": {"nodes": nodes, "attrs": attrs}}


def _encode(value):
    """JSON for an fx argument: plain JSON for numbers, strings, bools, None and lists; a one-key
    object for everything else (``node``, ``tuple``, ``dict``, ``slice``, ``dtype``, ``device``,
    ``float`` for inf/nan, ``ellipsis``)."""
    if isinstance(value, fx.Node):
        return {"node": value.name}
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, tuple):
        return {"tuple": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("a dict with keys that are not strings")
        return {"dict": {k: _encode(v) for k, v in value.items()}}
    if isinstance(value, slice):
        return {"slice": [_encode(value.start), _encode(value.stop), _encode(value.step)]}
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).replace("torch.", "")}
    if isinstance(value, torch.device):
        return {"device": str(value)}
    if value is Ellipsis:
        return {"ellipsis": True}
    raise TypeError(f"a {type(value).__module__}.{type(value).__qualname__}")


# --------------------------------------------------------------------------- build

def _decode(value, nodes: dict, where: str):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_decode(v, nodes, where) for v in value]
    if not isinstance(value, dict) or len(value) != 1:
        raise ValueError(f"{where}: an argument is not in the graph format")
    (kind, body), = value.items()
    if kind == "node":
        if body not in nodes:
            raise ValueError(f"{where} uses node {body!r} before it is defined")
        return nodes[body]
    if kind == "tuple" and isinstance(body, list):
        return tuple(_decode(v, nodes, where) for v in body)
    if kind == "dict" and isinstance(body, dict):
        return {k: _decode(v, nodes, where) for k, v in body.items()}
    if kind == "slice" and isinstance(body, list) and len(body) == 3:
        return slice(*(_decode(v, nodes, where) for v in body))
    if kind == "dtype" and isinstance(getattr(torch, str(body), None), torch.dtype):
        return getattr(torch, body)
    if kind == "device" and isinstance(body, str):
        return torch.device(body)
    if kind == "float" and body in ("inf", "-inf", "nan"):
        return float(body)
    if kind == "ellipsis" and body is True:
        return Ellipsis
    raise ValueError(f"{where}: unknown argument kind {kind!r}")


def _build_tree(spec, modules: ModuleRegistry, path: str) -> nn.Module:
    if isinstance(spec, dict) and spec.get("type") == PATH_TYPE:
        children = spec.get("children", {})
        if not isinstance(children, dict):
            raise UserError(f"corrupt architecture in model file at {path}: 'children' must be an object")
        module = nn.Module()
        for name, child in children.items():
            module._modules[name] = _build_tree(child, modules, f"{path}.{name}")
        return module
    return modules.build(spec, path)


def _walk(root: nn.Module, target: str, where: str):
    """The module owning ``target`` (a dotted path) and the last name; ValueError if the path is not modules."""
    parts = target.split(".") if isinstance(target, str) else [""]
    if not all((p.isidentifier() or p.isdigit()) and not p.startswith("__") for p in parts):
        raise ValueError(f"{where}: target {target!r} is not a submodule path")
    module = root
    for part in parts[:-1]:
        module = module._modules.get(part)
        if module is None:
            raise ValueError(f"{where}: target {target!r} names a submodule the architecture does not have")
    return module, parts[-1]


def _add_attrs(root: nn.Module, attrs) -> None:
    if not isinstance(attrs, dict):
        raise ValueError("the graph's 'attrs' must be an object")
    for target, info in attrs.items():
        where = f"graph attribute {target!r}"
        owner, field = _walk(root, target, where)
        if type(owner) is not nn.Module or field in owner._parameters or field in owner._buffers \
                or field in owner._modules:
            raise ValueError(f"{where} is not on a plain container, or is defined twice")
        if not isinstance(info, dict) or info.get("kind") not in ("parameter", "buffer"):
            raise ValueError(f"{where} must be a parameter or a buffer")
        dtype, shape = getattr(torch, str(info.get("dtype")), None), info.get("shape")
        if not isinstance(dtype, torch.dtype) or not isinstance(shape, list) or \
                not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s for s in shape):
            raise ValueError(f"{where} has a bad dtype or shape")
        tensor = torch.empty(shape, dtype=dtype)
        if info["kind"] == "parameter":
            owner.register_parameter(field, nn.Parameter(tensor, requires_grad=bool(info.get("requires_grad", True))))
        else:
            owner.register_buffer(field, tensor)


def build(arch: dict, modules: ModuleRegistry) -> nn.Module:
    """The model an architecture describes: a spec tree, or a GraphModule rebuilt from its graph.

    A malformed graph raises ValueError (the container names the file); an unknown type in
    the module tree raises the registry's UserError."""
    if not is_graph(arch):
        return modules.build(arch)
    children, graph_spec = arch.get("children", {}), arch.get("graph")
    if not isinstance(children, dict) or not isinstance(graph_spec, dict) or \
            not isinstance(graph_spec.get("nodes"), list):
        raise ValueError("the graph architecture needs 'children' and a 'graph' with 'nodes'")
    root = nn.Module()
    for name, child in children.items():
        root._modules[name] = _build_tree(child, modules, f"model.{name}")
    _add_attrs(root, graph_spec.get("attrs", {}))
    graph = fx.Graph()
    nodes: dict[str, fx.Node] = {}
    outputs = 0
    for entry in graph_spec["nodes"]:
        if not isinstance(entry, dict):
            raise ValueError("a graph node must be an object")
        name, op, target = entry.get("name"), entry.get("op"), entry.get("target")
        where = f"graph node {name!r} ({op} {target})"
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name) or name in nodes:
            raise ValueError(f"{where}: the name is not a fresh identifier")
        if op not in _OPS:
            raise ValueError(f"{where}: unknown op")
        args, kwargs = entry.get("args", []), entry.get("kwargs", {})
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise ValueError(f"{where}: args must be a list and kwargs an object")
        args = tuple(_decode(a, nodes, where) for a in args)
        kwargs = {str(k): _decode(v, nodes, where) for k, v in kwargs.items()}
        if op == "call_function":
            fn = resolve_function(target)
            if fn is None:
                raise ValueError(f"{where}: the function is not on slimkit's allowlist")
            if fn is getattr and not (len(args) == 2 and isinstance(args[1], str) and not args[1].startswith("_")):
                raise ValueError(f"{where}: getattr may only read a public attribute by name")
            target = fn
        elif op == "call_method":
            if not method_allowed(target):
                raise ValueError(f"{where}: not an allowed torch.Tensor method")
        elif op in ("call_module", "get_attr"):
            owner, field = _walk(root, target, where)
            # the module's own tables, never getattr: a name in the file runs no property
            value = owner._modules.get(field) if op == "call_module" else \
                owner._parameters.get(field, owner._buffers.get(field))
            if op == "call_module" and value is None or op == "get_attr" and not isinstance(value, torch.Tensor):
                raise ValueError(f"{where}: the target is not a {'module' if op == 'call_module' else 'tensor'} "
                                 "of the architecture")
        elif op == "placeholder":
            if not isinstance(target, str) or not target.isidentifier() or keyword.iskeyword(target):
                raise ValueError(f"{where}: the input's name is not an identifier")
        else:
            outputs += 1
        nodes[name] = graph.create_node(op, target, args, kwargs, name=name)
    if outputs != 1:
        raise ValueError(f"the graph has {outputs} output nodes, expected one")
    try:
        graph.lint()
        return fx.GraphModule(root, graph, "SlimGraph")
    except Exception as exc:
        raise ValueError(f"the graph does not form a model: {type(exc).__name__}: {exc}") from None
