"""Resolve ``--model``: a zoo name, a ``.slim`` artifact, a TorchScript file, or
``python:package.module:factory`` with ``--weights`` (a state dict).

Loading never unpickles arbitrary objects: state dicts are read with
``torch.load(weights_only=True)`` unless the user passes ``--trust-checkpoint``.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from slimkit import storage
from slimkit.errors import UserError


@dataclass
class ModelSource:
    kind: str  # "zoo", "slim", "torchscript", "python"
    name: str  # zoo name, file path or factory
    options: dict


def classify(spec: str, registry) -> ModelSource:
    if spec.startswith("python:"):
        return ModelSource("python", spec[len("python:"):], {})
    if spec in registry.models:
        return ModelSource("zoo", spec, {})
    path = Path(spec)
    if path.is_dir():
        raise UserError(f"model file {path} is a directory; give a .slim or TorchScript file, a zoo name "
                        f"({', '.join(sorted(registry.models))}) or python:module:factory")
    if path.suffix == ".slim" or (path.exists() and _is_safetensors(path)):
        return ModelSource("slim", str(path), {})
    if path.exists():
        return ModelSource("torchscript", str(path), {})
    if path.suffix in (".pt", ".pth", ".ts", ".jit"):
        raise UserError(f"model file {path} does not exist")
    registry.model_factory(spec)  # raises the "unknown model" error listing valid names
    raise AssertionError("unreachable")


def _is_safetensors(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        return len(head) == 9 and head[8:9] == b"{"
    except OSError:
        return False


def load_python_model(target: str, weights: str | None, input_shape, num_classes, trust: bool) -> nn.Module:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise UserError(f"python model {target!r} must look like python:package.module:factory")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"cannot import model factory {target!r}: {exc}") from None
    try:
        model = factory(tuple(input_shape), int(num_classes))
    except TypeError:
        model = factory()
    if not isinstance(model, nn.Module):
        raise UserError(f"{target} returned {type(model).__name__}, expected a torch.nn.Module")
    if weights:
        model.load_state_dict(load_state_dict(weights, trust))
    return model


def load_state_dict(path: str, trust: bool = False) -> dict:
    p = Path(path)
    if p.is_dir():
        raise UserError(f"weights file {p} is a directory; give a state-dict file (.pt, .pth or .safetensors)")
    if not p.is_file():
        raise UserError(f"weights file {p} does not exist")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(p))
        except Exception as exc:
            raise UserError(f"{p} is not a valid safetensors file: {exc}") from None
    try:
        state = torch.load(p, map_location="cpu", weights_only=not trust)
    except Exception as exc:
        hint = "" if trust else " (only plain tensors load safely; pass --trust-checkpoint if you trust this file)"
        raise UserError(f"cannot load weights from {p}: {type(exc).__name__}{hint}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{p} does not hold a state dict")
    return state


_TS_BUILTINS = {"Conv2d", "Linear", "BatchNorm2d", "BatchNorm1d", "ReLU", "ReLU6", "MaxPool2d", "AvgPool2d",
                "AdaptiveAvgPool2d", "Flatten", "Dropout", "Identity", "Sequential", "Tanh", "Sigmoid"}


def load_torchscript(path: str) -> nn.Module:
    """Rebuild an eager model from a TorchScript file made of torch built-in layers.

    TorchScript keeps each submodule's original class name and attributes; slimkit
    rebuilds Sequential models of built-ins so they can be compressed and saved.
    """
    try:
        scripted = torch.jit.load(path, map_location="cpu")
    except Exception as exc:
        raise UserError(f"{path} is neither a .slim file nor a TorchScript archive: {type(exc).__name__}") from None
    return _from_scripted(scripted, path, "model")


def _from_scripted(sm, path, where) -> nn.Module:
    name = sm.original_name
    if name not in _TS_BUILTINS:
        raise UserError(f"{path}: TorchScript module {where} is a {name}; slimkit rebuilds only models made of "
                        f"{', '.join(sorted(_TS_BUILTINS))} — save a .slim or use python:module:factory instead")
    if name == "Sequential":
        return nn.Sequential(*[_from_scripted(child, path, f"{where}.{n}") for n, child in sm.named_children()])
    state = {k: v for k, v in sm.state_dict().items()}
    if name == "Conv2d":
        w = state["weight"]
        m = nn.Conv2d(w.shape[1] * sm.groups, w.shape[0], tuple(w.shape[2:]), tuple(sm.stride), tuple(sm.padding),
                      tuple(sm.dilation), sm.groups, bias="bias" in state and state["bias"] is not None)
    elif name == "Linear":
        w = state["weight"]
        m = nn.Linear(w.shape[1], w.shape[0], bias="bias" in state)
    elif name in ("BatchNorm2d", "BatchNorm1d"):
        cls = getattr(nn, name)
        m = cls(state["running_mean"].numel(), eps=sm.eps, momentum=sm.momentum)
    elif name == "MaxPool2d":
        m = nn.MaxPool2d(sm.kernel_size, sm.stride, sm.padding, sm.dilation, ceil_mode=sm.ceil_mode)
    elif name == "AvgPool2d":
        m = nn.AvgPool2d(sm.kernel_size, sm.stride, sm.padding)
    elif name == "AdaptiveAvgPool2d":
        m = nn.AdaptiveAvgPool2d(sm.output_size)
    elif name == "Flatten":
        m = nn.Flatten(sm.start_dim, sm.end_dim)
    elif name == "Dropout":
        m = nn.Dropout(sm.p)
    else:
        m = getattr(nn, name)()
    m.load_state_dict(state, strict=True)
    return m


def load_artifact(path: str, registry) -> storage.LoadedModel:
    return storage.load_model(path, registry)
