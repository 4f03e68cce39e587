"""Finds plugins through the ``slimkit`` entry-point group and collects what they register.

The engine's own contributions (the model zoo, the built-in data sets, its module
types) are registered here as built-in plugins; every method, including slimkit's
own, arrives through an entry point.
"""
from __future__ import annotations

import importlib.metadata
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import pluggy

from slimkit import hookspecs
from slimkit.errors import UserError
from slimkit.nn.spec import ModuleRegistry

ENTRY_POINT_GROUP = "slimkit"
BUILTIN_PLUGINS = ("slimkit.models.zoo", "slimkit.data.builtin", "slimkit.nn.builtin")


@dataclass
class Registered:
    name: str
    obj: Any
    summary: str
    plugin: str


@dataclass
class PluginInfo:
    name: str
    distribution: str
    version: str
    error: str | None = None


class Registry:
    """Methods, models, data sets and module types contributed by all loaded plugins."""

    def __init__(self, pm: pluggy.PluginManager, plugins: list[PluginInfo]):
        self.pm = pm
        self.plugins = plugins
        self.methods: dict[str, Registered] = {}
        self.models: dict[str, Registered] = {}
        self.datasets: dict[str, Registered] = {}
        self.modules = ModuleRegistry()
        self.channel_rules: list[tuple] = []  # (layer class or op name, propagate, resize)
        self._collect()

    def _collect(self):
        for impl in self.pm.hook.register_methods.get_hookimpls():
            def register(method, _plugin=impl.plugin_name):
                self._add(self.methods, "method", method.name, method, method.summary, _plugin)
            impl.function(register=register)
        for impl in self.pm.hook.register_models.get_hookimpls():
            def register(name, factory, summary="", _plugin=impl.plugin_name):
                self._add(self.models, "model", name, factory, summary, _plugin)
            impl.function(register=register)
        for impl in self.pm.hook.register_datasets.get_hookimpls():
            def register(name, loader, summary="", _plugin=impl.plugin_name):
                self._add(self.datasets, "dataset", name, loader, summary, _plugin)
            impl.function(register=register)
        self.pm.hook.register_modules(register=self.modules.register)

        def register_rule(target, propagate, resize=None):
            self.channel_rules.append((target, propagate, resize))
        self.pm.hook.register_channel_rules(register=register_rule)

    @staticmethod
    def _add(table, kind, name, obj, summary, plugin):
        if not name or not isinstance(name, str):
            raise ValueError(f"plugin {plugin} registered a {kind} without a name")
        if name in table:
            raise ValueError(f"{kind} {name!r} is registered by both {table[name].plugin} and {plugin}")
        table[name] = Registered(name, obj, summary, plugin)

    def method(self, name: str):
        if name not in self.methods:
            raise UserError(f"unknown method {name!r}; available methods: {', '.join(sorted(self.methods)) or '(none)'}")
        return self.methods[name].obj

    def model_factory(self, name: str) -> Callable:
        if name not in self.models:
            raise UserError(f"unknown model {name!r}; available models: {', '.join(sorted(self.models))}"
                            " (or a path to a .slim / TorchScript file, or python:module:factory)")
        return self.models[name].obj

    def build_model(self, name: str, input_shape, num_classes: int, **options):
        factory = self.model_factory(name)
        try:
            return factory(tuple(input_shape), int(num_classes), **options)
        except TypeError as exc:
            raise UserError(f"cannot build model {name!r} with options {options}: {exc}") from None

    def dataset_loader(self, name: str):
        if name not in self.datasets:
            raise UserError(f"unknown dataset {name!r}; available datasets: {', '.join(sorted(self.datasets))}")
        return self.datasets[name].obj

    def emit(self, hook: str, **kwargs) -> None:
        getattr(self.pm.hook, hook)(**kwargs)


_REGISTRY: Registry | None = None


def get_registry(refresh: bool = False) -> Registry:
    """The process-wide registry, loading entry points on first use."""
    global _REGISTRY
    if _REGISTRY is None or refresh:
        _REGISTRY = load_registry()
    return _REGISTRY


def set_registry(registry: Registry | None) -> None:
    """Use ``registry`` for this process (None: load again from entry points on next use)."""
    global _REGISTRY
    _REGISTRY = registry


def load_registry(extra_plugins=()) -> Registry:
    """Load built-ins and entry points; ``extra_plugins`` are registered too (for tests and
    programs that use slimkit as a library)."""
    pm = pluggy.PluginManager("slimkit")
    pm.add_hookspecs(hookspecs)
    infos: list[PluginInfo] = []
    import importlib

    for modname in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(modname), name=modname)
        infos.append(PluginInfo(modname, "slimkit (built in)", _version("slimkit")))
    seen = set()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else "?"
        key = (ep.name, ep.value)
        if key in seen:  # the same distribution seen twice on sys.path
            continue
        seen.add(key)
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
            infos.append(PluginInfo(ep.name, dist, ep.dist.version if ep.dist else "?"))
        except Exception as exc:  # a broken plugin must not take the others down
            warnings.warn(f"slimkit: plugin {ep.name!r} from {dist} failed to load and is skipped: "
                          f"{type(exc).__name__}: {exc}", stacklevel=2)
            infos.append(PluginInfo(ep.name, dist, ep.dist.version if ep.dist else "?", error=str(exc)))
    for plugin in extra_plugins:
        name = getattr(plugin, "__name__", None) or type(plugin).__name__
        pm.register(plugin, name=name)
        infos.append(PluginInfo(name, "(registered in-process)", "?"))
    return Registry(pm, infos)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"
