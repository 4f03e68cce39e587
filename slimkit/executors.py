"""The built-in sweep executors, registered as a built-in plugin (``register_executors``).

Kept apart from :mod:`slimkit.sweep.executors` (the executors themselves) so that loading the
plugin registry, which every command does, imports neither the sweep package nor matplotlib.
"""
from __future__ import annotations

from slimkit import hookimpl
from slimkit.errors import UserError


def make_executor(argument: str | None, kind: str):
    from slimkit.sweep.executors import LocalExecutor, ProcessExecutor, RayExecutor

    if kind == "ray":
        return RayExecutor(argument)
    if argument is None:
        return LocalExecutor()
    try:
        workers = int(argument)
    except ValueError:
        workers = 0
    if workers < 1:
        raise UserError(f"--executor local:{argument}: expected a number of worker processes, e.g. local:4")
    return ProcessExecutor(workers)


@hookimpl
def register_executors(register):
    register("local", lambda argument: make_executor(argument, "local"),
             "this machine: in this process (local) or N worker processes (local:N)")
    register("ray", lambda argument: make_executor(argument, "ray"),
             "a Ray cluster (ray:ADDRESS, default ray.init()); needs slimkit[ray]")
