"""Helpers shared by the benchmark modules."""
from __future__ import annotations

from typing import Callable


def native_note(tensor, op: str) -> tuple[bool, str]:
    """(whether the native kernel runs for ``tensor``, why not / which backend)."""
    from slimkit.ops import backend

    if backend.use_native(tensor, op):
        return True, ""
    return False, f"unavailable: {backend.backend_name()}"


def compiled(fn: Callable) -> Callable:
    """``torch.compile(fn)`` with static shapes (each benchmark shape gets its own graph)."""
    import torch

    return torch.compile(fn, dynamic=False)
