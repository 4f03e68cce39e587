"""slimkit: make trained PyTorch models smaller and faster.

Plugin authors need :data:`hookimpl` (mark your hook functions with it), the
hook specifications in :mod:`slimkit.hookspecs` and the classes in :mod:`slimkit.api`.
"""
import pluggy

__version__ = "0.1.0"

#: Marker for plugin hook implementations: ``@slimkit.hookimpl``.
hookimpl = pluggy.HookimplMarker("slimkit")

__all__ = ["hookimpl", "__version__"]
