"""Finds plugins through the ``slimkit`` entry-point group and collects what they register.

The engine's own contributions (the model zoo, the built-in data sets, its module
types) are registered here as built-in plugins; every method, including slimkit's
own, arrives through an entry point.

A broken plugin never takes the others (or the CLI) down: importing each plugin and
calling each of its ``register_*`` hooks is guarded, and a failure is recorded on the
plugin's :class:`PluginInfo` (shown by ``slimkit plugins`` and ``slimkit doctor``).
A name two plugins register keeps the first registration (slimkit's own entry points
load before any other distribution's) and the clash is recorded, naming both
distributions. ``SLIMKIT_DISABLE_PLUGINS=name,...`` blocks entry points by name.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

from slimkit import hookspecs
from slimkit.errors import UserError
from slimkit.nn.spec import ModuleRegistry

ENTRY_POINT_GROUP = "slimkit"
BUILTIN_PLUGINS = ("slimkit.models.zoo", "slimkit.data.builtin", "slimkit.nn.builtin", "slimkit.executors")
DISABLE_ENV = "SLIMKIT_DISABLE_PLUGINS"
BUILTIN_DISTRIBUTION = "slimkit"


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
    error: str | None = None  # import or registration failed: nothing of this plugin is used
    disabled: bool = False  # blocked by SLIMKIT_DISABLE_PLUGINS
    conflicts: list[str] = field(default_factory=list)  # registrations refused (name taken, invalid)

    @property
    def status(self) -> str:
        return "disabled" if self.disabled else "failed" if self.error else "loaded"


def disabled_plugin_names(environ=None) -> set[str]:
    """Entry-point names listed in ``SLIMKIT_DISABLE_PLUGINS`` (comma-separated)."""
    value = (os.environ if environ is None else environ).get(DISABLE_ENV, "")
    return {name.strip() for name in value.split(",") if name.strip()}


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class Registry:
    """Methods, models, data sets, module types and sweep executors contributed by all loaded plugins."""

    def __init__(self, pm: pluggy.PluginManager, plugins: list[PluginInfo]):
        self.pm = pm
        self.plugins = plugins
        self.methods: dict[str, Registered] = {}
        self.models: dict[str, Registered] = {}
        self.datasets: dict[str, Registered] = {}
        self.executors: dict[str, Registered] = {}
        self.modules = ModuleRegistry()
        self.channel_rules: list[tuple] = []  # (layer class or op name, propagate, resize)
        self._collect()

    def plugin_info(self, plugin: str) -> PluginInfo:
        info = next((p for p in self.plugins if p.name == plugin), None)
        if info is None:  # registered on the plugin manager directly
            info = PluginInfo(plugin, "?", "?")
            self.plugins.append(info)
        return info

    def problems(self) -> list[str]:
        """One line per failed plugin and per refused registration, naming the distribution."""
        lines = [f"plugin {p.name!r} from {p.distribution} failed and is skipped: {p.error}"
                 for p in self.plugins if p.error]
        return lines + [c for p in self.plugins for c in p.conflicts]

    def _collect(self):
        # Hook implementations come in registration order: built-ins, slimkit's own entry
        # points, then other distributions, so a clash keeps the built-in.
        def method_args(method):
            return [("method", getattr(method, "name", None), method, getattr(method, "summary", ""))]

        def named_args(kind):
            return lambda name, obj, summary="": [(kind, name, obj, summary)]

        hooks = (("register_methods", method_args), ("register_models", named_args("model")),
                 ("register_datasets", named_args("dataset")), ("register_modules", lambda cls: [("module", cls)]),
                 ("register_channel_rules", lambda target, propagate, resize=None: [("rule", target, propagate,
                                                                                       resize)]),
                 ("register_executors", named_args("executor")))
        for hook, to_items in hooks:
            for impl in getattr(self.pm.hook, hook).get_hookimpls():
                pending: list[tuple] = []
                try:  # the plugin's own code runs here; what it registers is kept only if it returns
                    impl.function(register=lambda *a, _to=to_items, **kw: pending.extend(_to(*a, **kw)))
                except Exception as exc:
                    self._fail(impl.plugin_name, f"{hook} raised {_describe(exc)}")
                    continue
                for item in pending:
                    self._add(impl.plugin_name, *item)

    def _fail(self, plugin: str, error: str) -> None:
        """A plugin whose registration raised contributes nothing and receives no events."""
        info = self.plugin_info(plugin)
        info.error = error
        for table in (self.methods, self.models, self.datasets, self.executors):
            for name in [n for n, r in table.items() if r.plugin == plugin]:
                del table[name]
        if self.pm.get_plugin(plugin) is not None:
            self.pm.unregister(name=plugin)
        warnings.warn(f"slimkit: plugin {plugin!r} from {info.distribution} failed and is skipped: {error}",
                      stacklevel=3)

    def _refuse(self, plugin: str, message: str) -> None:
        self.plugin_info(plugin).conflicts.append(message)
        warnings.warn(f"slimkit: {message}", stacklevel=3)

    def _add(self, plugin, kind, *item):
        info = self.plugin_info(plugin)
        if info.error:  # an earlier hook of this plugin failed
            return
        if kind == "rule":  # channel rules of the dependency graph (slimkit.nn.depgraph)
            self.channel_rules.append(tuple(item))
            return
        if kind == "module":
            try:
                self.modules.register(item[0])
            except (TypeError, ValueError) as exc:
                self._refuse(plugin, f"plugin {plugin!r} from {info.distribution}: module type not registered: {exc}")
            return
        name, obj, summary = item
        table = {"method": self.methods, "model": self.models, "dataset": self.datasets,
                 "executor": self.executors}[kind]
        if not name or not isinstance(name, str):
            self._refuse(plugin, f"plugin {plugin!r} from {info.distribution} registered a {kind} without a name")
        elif name in table:
            first = self.plugin_info(table[name].plugin)
            self._refuse(plugin, f"{kind} {name!r} from plugin {plugin!r} ({info.distribution}) is ignored: "
                                 f"plugin {first.name!r} ({first.distribution}) registered it first")
        else:
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

    def executor(self, spec: str):
        """The sweep executor for ``NAME[:ARGUMENT]`` (``local``, ``local:4``, ``ray:HOST:PORT``)."""
        name, _, argument = spec.partition(":")
        if name not in self.executors:
            raise UserError(f"--executor {spec}: unknown executor {name!r}; available executors: "
                            f"{', '.join(sorted(self.executors)) or '(none)'}")
        return self.executors[name].obj(argument or None)

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


def _entry_points() -> list:
    """The group's entry points, each once, slimkit's own distribution first (so that its
    built-in methods win a name clash whatever the order of sys.path)."""
    seen, found = set(), []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        key = (ep.name, ep.value)
        if key not in seen:  # the same distribution seen twice on sys.path
            seen.add(key)
            found.append(ep)
    return sorted(found, key=lambda ep: getattr(ep.dist, "name", None) != BUILTIN_DISTRIBUTION)


def load_registry(extra_plugins=()) -> Registry:
    """Load built-ins and entry points; ``extra_plugins`` are registered too (for tests and
    programs that use slimkit as a library)."""
    pm = pluggy.PluginManager("slimkit")
    pm.add_hookspecs(hookspecs)
    infos: list[PluginInfo] = []
    for modname in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(modname), name=modname)
        infos.append(PluginInfo(modname, "slimkit (built in)", _version("slimkit")))
    disabled = disabled_plugin_names()
    for ep in _entry_points():
        info = PluginInfo(ep.name, ep.dist.name if ep.dist else "?", ep.dist.version if ep.dist else "?")
        infos.append(info)
        if ep.name in disabled:
            info.disabled = True
            continue
        step = "import"
        try:  # a broken plugin must not take the others down
            plugin = ep.load()
            step = "registration"
            pm.register(plugin, name=ep.name)
        except Exception as exc:
            info.error = f"{step} failed: {_describe(exc)}"
            warnings.warn(f"slimkit: plugin {ep.name!r} from {info.distribution} failed to load and is skipped: "
                          f"{_describe(exc)}", stacklevel=2)
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
