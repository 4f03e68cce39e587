"""slimkit: make trained PyTorch models smaller and faster.

Plugin authors need :data:`hookimpl` (mark your hook functions with it), the
hook specifications in :mod:`slimkit.hookspecs` and the classes in :mod:`slimkit.api`.
"""
import pluggy

__version__ = "0.1.0"

#: Marker for plugin hook implementations: ``@slimkit.hookimpl``.
hookimpl = pluggy.HookimplMarker("slimkit")



def load(path, **options):
    """Load a ``.slim`` file as a runnable compiled model (:class:`slimkit.runtime.RuntimeModel`):
    ``y = slimkit.load("model.slim")(x)``. Options: ``backend``, ``candidates``, ``remeasure``."""
    from slimkit.runtime import load as runtime_load

    return runtime_load(path, **options)


__all__ = ["hookimpl", "__version__", "load"]
