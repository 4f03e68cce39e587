"""Which implementation slimkit's ops run: the native kernels or the PyTorch reference.

The decision is made once per process, on first use (an op call, :func:`backend_name`,
:func:`native_available`), never at ``import slimkit``:

1. ``SLIMKIT_KERNELS=reference`` forces the pure-PyTorch reference ops (nothing is
   loaded or built); ``SLIMKIT_KERNELS=native`` forces the native kernels and raises
   :class:`RuntimeError` saying why when they cannot be had. Unset (or ``auto``):
2. ``import slimkit._C``, the extension that ``pip install --no-build-isolation -e .``
   builds from ``csrc/`` (setup.py);
3. otherwise JIT-build the same sources (``csrc/ops.cpp`` and ``csrc/cpu/*.cpp``, plus
   ``csrc/cuda/`` when this torch has CUDA) with :func:`torch.utils.cpp_extension.load`
   into ``~/.cache/slimkit/ext-<hash>`` (``SLIMKIT_EXT_CACHE`` replaces
   ``~/.cache/slimkit``), the hash covering the sources, torch and Python versions and
   flags, so a rebuild happens only when one of them changes. This needs a C++ compiler
   (``$CXX`` or ``c++``), ninja, and the sources, found next to the package
   (``Path(slimkit.__file__).parent.parent / "csrc"``, i.e. a source checkout or
   editable install);
4. otherwise the reference ops, with one :class:`RuntimeWarning` per process that says
   why.

Op modules register what must follow the loading of the library (fake kernels,
autograd formulas) with :func:`on_load`, and ask :func:`use_native` per call whether
the native kernel exists for the tensor's device.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

__all__ = ["backend_name", "native_available", "use_native", "on_load", "load", "csrc_dir", "jit_build_dir"]

ENV_KERNELS = "SLIMKIT_KERNELS"
ENV_CACHE = "SLIMKIT_EXT_CACHE"
#: "1" makes sparse_conv2d / sparse_linear run their CUDA kernels on GPU tensors. By default a
#: GPU runs the cached dense weight on cuDNN / cuBLAS instead: on an H200 every measured layer
#: at 90 % sparsity was faster dense (0.26x-0.69x for the kernels; docs/BENCHMARKS.md, "GPU").
ENV_SPARSE_CUDA = "SLIMKIT_SPARSE_CUDA"
JIT_NAME = "slimkit_C"
JIT_CFLAGS = ["-O3", "-std=c++17", "-fopenmp"]
JIT_LDFLAGS = ["-fopenmp"]
JIT_CUDA_CFLAGS = ["-O3", "--use_fast_math", "-std=c++17"]


@dataclass(frozen=True)
class _State:
    native: bool
    description: str


_lock = threading.RLock()
_state: _State | None = None
_callbacks: list[Callable[[], None]] = []
_callbacks_done: set[int] = set()


class _Unavailable(Exception):
    """The native kernels cannot be had this way; str() says why."""


def _mode() -> str:
    mode = os.environ.get(ENV_KERNELS, "").strip().lower()
    if mode in ("", "auto"):
        return "auto"
    if mode not in ("reference", "native"):
        raise ValueError(f"{ENV_KERNELS}={os.environ[ENV_KERNELS]!r} is not understood: use 'reference', "
                         f"'native', 'auto' or leave it unset")
    return mode


def csrc_dir() -> Path | None:
    """The kernel sources next to the package (source checkout / editable install), or None."""
    csrc = Path(__file__).resolve().parents[2] / "csrc"  # slimkit/ops/backend.py -> the checkout
    return csrc if (csrc / "ops.cpp").is_file() else None


def _cuda_buildable() -> bool:
    from torch.utils import cpp_extension

    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None and torch.cuda.is_available()


def _jit_sources(csrc: Path) -> tuple[list[Path], bool]:
    sources = [csrc / "ops.cpp", *sorted((csrc / "cpu").glob("*.cpp"))]
    with_cuda = _cuda_buildable() and os.environ.get("SLIMKIT_NO_CUDA") != "1"
    if with_cuda:
        sources += sorted((csrc / "cuda").glob("*.cu")) + sorted((csrc / "cuda").glob("*.cpp"))
    return sources, with_cuda


def jit_build_dir(csrc: Path | None = None) -> Path:
    """``<cache>/ext-<hash>``: the hash covers every file under csrc/, torch, Python and the flags."""
    csrc = csrc or csrc_dir()
    if csrc is None:
        raise FileNotFoundError("the kernel sources (csrc/) are not next to the slimkit package")
    sources, with_cuda = _jit_sources(csrc)
    digest = hashlib.sha256()
    for path in sorted(p for p in csrc.rglob("*") if p.is_file() and p.suffix in (".cpp", ".h", ".cu", ".cuh")):
        digest.update(str(path.relative_to(csrc)).encode())
        digest.update(path.read_bytes())
    for part in (torch.__version__, str(torch.version.cuda), sys.version, os.environ.get("CXX", "c++"),
                 " ".join(JIT_CFLAGS + JIT_LDFLAGS), str(with_cuda)):
        digest.update(part.encode())
    root = Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "slimkit")
    return root / f"ext-{digest.hexdigest()[:16]}"


def _jit_build() -> str:
    from torch.utils import cpp_extension

    csrc = csrc_dir()
    if csrc is None:
        raise _Unavailable("no prebuilt slimkit._C and the kernel sources (csrc/) are not next to the package")
    cxx = os.environ.get("CXX", "c++")
    if not cxx.split() or shutil.which(cxx.split()[0]) is None:  # CXX may be "ccache g++"
        raise _Unavailable(f"no prebuilt slimkit._C and no C++ compiler to JIT-build one (CXX={cxx!r} not found)")
    if not cpp_extension.is_ninja_available():
        raise _Unavailable("no prebuilt slimkit._C and no ninja to JIT-build one (pip install ninja)")
    sources, with_cuda = _jit_sources(csrc)
    build_dir = jit_build_dir(csrc)
    build_dir.mkdir(parents=True, exist_ok=True)
    try:
        cpp_extension.load(
            name=JIT_NAME,
            sources=[str(s) for s in sources],
            extra_cflags=JIT_CFLAGS + (["-DSLIMKIT_WITH_CUDA=1"] if with_cuda else []),
            extra_cuda_cflags=JIT_CUDA_CFLAGS,
            extra_ldflags=JIT_LDFLAGS,
            extra_include_paths=[str(csrc)],
            build_directory=str(build_dir),
            with_cuda=with_cuda,
            is_python_module=False,  # a plain library: loading it runs the op registrations
            verbose=os.environ.get("SLIMKIT_JIT_VERBOSE") == "1",
        )
    except Exception as exc:  # compiler errors, linker errors, a failed dlopen
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        library = build_dir / f"{JIT_NAME}.so"
        if isinstance(exc, OSError) and library.is_file():
            try:  # torch hides dlopen's reason (e.g. an undefined symbol); ask for it
                import ctypes

                ctypes.CDLL(str(library))
            except OSError as dl_error:
                first = str(dl_error)
        raise _Unavailable(f"no prebuilt slimkit._C and the JIT build in {build_dir} failed: {first}") from exc
    return f"native (JIT build in {build_dir})"


def _load_native() -> str:
    """Load the kernels (prebuilt, else JIT); returns the description or raises _Unavailable."""
    try:
        import slimkit._C  # noqa: F401  (loading the library registers the ops)

        return "native (prebuilt slimkit._C)"
    except ImportError as exc:
        prebuilt_error = exc
    try:
        return _jit_build()
    except _Unavailable as exc:
        if not isinstance(prebuilt_error, ModuleNotFoundError):
            raise _Unavailable(f"{exc}; importing slimkit._C failed: {prebuilt_error}") from exc
        raise


def _decide(mode: str) -> _State:
    try:
        description = _load_native()
    except _Unavailable as exc:
        if mode == "native":
            raise RuntimeError(f"{ENV_KERNELS}=native but the native kernels are unavailable: {exc}") from None
        warnings.warn(f"slimkit: native kernels unavailable ({exc}); using the pure-PyTorch reference ops, "
                      f"which are slower and use more memory", RuntimeWarning, stacklevel=2)
        return _State(False, f"reference ({exc})")
    return _State(True, description)


def load() -> bool:
    """Decide the backend now (loading or building the kernels if needed); True if native.

    Under ``SLIMKIT_KERNELS=reference`` nothing is loaded and the answer is False; the
    decision is not cached then, so unsetting the variable later still loads the kernels.
    """
    global _state
    mode = _mode()
    if mode == "reference":
        return False
    state = _state
    if state is not None and (state.native or mode != "native"):
        return state.native
    with _lock:
        if _state is None:
            _state = _decide(mode)
            if _state.native:
                _run_callbacks()
        if mode == "native" and not _state.native:
            raise RuntimeError(f"{ENV_KERNELS}=native but the native kernels are unavailable: "
                               f"{_state.description.removeprefix('reference (').removesuffix(')')}")
        return _state.native


def _run_callbacks() -> None:
    for fn in list(_callbacks):
        if id(fn) not in _callbacks_done:
            _callbacks_done.add(id(fn))
            fn()


def on_load(fn: Callable[[], None]) -> Callable[[], None]:
    """Run ``fn`` once the native library is loaded (now, if it already is). Usable as a decorator.

    For what needs the ops to exist: ``torch.library.register_fake``/``register_autograd``.
    """
    with _lock:
        _callbacks.append(fn)
        if _state is not None and _state.native:
            _run_callbacks()
    return fn


def native_available() -> bool:
    """True when the native kernels are loaded and not switched off by ``SLIMKIT_KERNELS=reference``."""
    return load()


def backend_name() -> str:
    """E.g. ``native (prebuilt slimkit._C)``, ``native (JIT build in DIR)``, ``reference (reason)``."""
    if _mode() == "reference":
        return f"reference ({ENV_KERNELS}=reference)"
    load()
    assert _state is not None
    return _state.description


def sparse_kernels_on(tensor: torch.Tensor) -> bool:
    """Whether the sparse inference kernels may run for ``tensor``'s device at all (the CPU:
    always; CUDA: only under ``SLIMKIT_SPARSE_CUDA=1``, see :data:`ENV_SPARSE_CUDA`)."""
    return not tensor.is_cuda or os.environ.get(ENV_SPARSE_CUDA) == "1"


def constant_under_compile(fn: Callable) -> Callable:
    """``torch.compiler.assume_constant_result(fn)`` without importing ``torch._dynamo`` now.

    The official decorator imports torch._dynamo (2-3 s of every slimkit process's start,
    most of ``import slimkit``) only to set one attribute on ``fn``; torch.compile imports
    it anyway when it runs. Once torch._dynamo is loaded the official decorator is used;
    before, the same attribute is set directly (tests/test_backend.py checks that this
    is still exactly what the official one does).
    """
    if "torch._dynamo" in sys.modules:
        return torch.compiler.assume_constant_result(fn)
    fn._dynamo_marked_constant = True
    return fn


_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}


def use_native(tensor: torch.Tensor, op: str | None = None) -> bool:
    """Whether to run the native kernel for ``tensor``: native kernels loaded and one registered
    for its device (for ``op``, e.g. ``"slimkit::kd_loss_forward"``, or for any slimkit op).

    Under torch.compile the answer is taken as a constant of the traced graph."""
    # is_cpu / is_cuda are attribute reads; tensor.device builds a Python object (per call, in hot paths)
    device_type = "cpu" if tensor.is_cpu else "cuda" if tensor.is_cuda else tensor.device.type
    return _native_for_device(device_type, op)


# Answers of _native_for_device by (SLIMKIT_KERNELS, device type, op): asking the dispatcher
# takes microseconds, as long as a small sparse layer's whole kernel; the answer can only
# change with SLIMKIT_KERNELS (or _reset_for_tests).
_answers: dict[tuple, bool] = {}


@constant_under_compile
def _native_for_device(device_type: str, op: str | None) -> bool:
    cache_key = (os.environ.get(ENV_KERNELS), device_type, op)
    answer = _answers.get(cache_key)
    if answer is not None:
        return answer
    answer = native_available()
    if answer:
        key = _DISPATCH_KEYS.get(device_type)
        if key is None:
            answer = False
        elif op is not None:
            answer = torch._C._dispatch_has_kernel_for_dispatch_key(op, key)
        else:
            answer = any(name.startswith("slimkit::")
                         for name in torch._C._dispatch_get_registrations_for_dispatch_key(key))
    _answers[cache_key] = answer
    return answer


def _reset_for_tests() -> None:
    """Forget the decision (a loaded library stays loaded). Tests only."""
    global _state
    with _lock:
        _state = None
        _answers.clear()
