"""What the channel dependency graph writes on tensors: per dimension, an int64 array with
one label per entry, an atom id (entries removed together) or :data:`FIXED` (never removed).
Shared by the graph (depgraph.py) and its rules (channel_ops.py, channel_rules.py)."""
from __future__ import annotations

import numpy as np

#: The label of an entry that is never removed.
FIXED = -1


def fixed(n: int) -> np.ndarray:
    """``n`` labels, all :data:`FIXED`."""
    return np.full(int(n), FIXED, dtype=np.int64)


class Labels(tuple):
    """The labels of one tensor: an int64 array per dimension (atom ids or FIXED)."""
