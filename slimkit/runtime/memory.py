"""Keep freed activation memory in the process heap while the runtime serves (glibc).

Every call of a built graph allocates its activations afresh. glibc's malloc serves a block
over its mmap threshold (128 KiB at first, raised adaptively up to 32 MiB) with a fresh
``mmap`` and returns it with ``munmap`` when freed, so a large activation's pages are
faulted in and zeroed by the kernel on every call; and when the free memory at the top of
the heap passes the trim threshold it goes back to the system too. ONNX Runtime and
DeepSparse keep an arena and never pay this. On VGG-11 x0.5 at batch 64 (1 thread, 6.4 MB
largest activation) the page faults took about 1 ms of a 14-15 ms forward (perf:
``clear_page_erms``, ``exc_page_fault``), and the median fell from 15.6 to 14.1 ms with the
two thresholds raised.

:func:`keep_freed_memory` raises both once per process when the first runtime model is built:
blocks up to 32 MiB (glibc's largest mmap threshold) come from the heap, and up to 256 MiB of
free heap stays mapped. The cost is memory not returned to the system after a burst, which
is what an inference arena does anyway. ``SLIMKIT_RUNTIME_MALLOC=0`` leaves malloc alone; on
a system without glibc nothing changes. The setting applies to the whole process (the
baselines of ``slimkit bench models``, run in the same process, have it too).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

__all__ = ["keep_freed_memory", "ENV", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

ENV = "SLIMKIT_RUNTIME_MALLOC"
MMAP_THRESHOLD = 32 << 20  # glibc's HEAP_MAX / 2 on 64-bit: the largest value mallopt accepts
TRIM_THRESHOLD = 256 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # <malloc.h>

_lock = threading.Lock()
_state: dict | None = None


def keep_freed_memory() -> dict:
    """Raise glibc's mmap and trim thresholds (once per process); returns what was done, for reports."""
    global _state
    with _lock:
        if _state is not None:
            return _state
        if os.environ.get(ENV, "1") == "0":
            _state = {"malloc": f"unchanged ({ENV}=0)"}
            return _state
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):
            _state = {"malloc": "unchanged (no glibc mallopt on this system)"}
            return _state
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        _state = {"malloc": (f"glibc mmap threshold {MMAP_THRESHOLD >> 20} MiB, trim threshold "
                             f"{TRIM_THRESHOLD >> 20} MiB (freed activations stay in the heap)") if ok
                  else "unchanged (mallopt refused the thresholds)"}
        return _state
