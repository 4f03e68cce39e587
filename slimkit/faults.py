"""Test seams for faults that cannot be staged from outside: an interrupt at a chosen point.

``SLIMKIT_FAULT=interrupt@NAME`` makes the process send itself SIGINT when it reaches
the point ``NAME`` (``start-up``, ``final-write``, ...), exactly as a user pressing
Ctrl-C there would. The promise tests use it; in normal use the variable is unset and
:func:`point` costs one dictionary lookup.
"""
from __future__ import annotations

import os
import signal


def point(name: str) -> None:
    """Mark a place where a fault can be injected (see the module docstring)."""
    fault = os.environ.get("SLIMKIT_FAULT")
    if fault and fault == f"interrupt@{name}":
        os.kill(os.getpid(), signal.SIGINT)
