"""``slimkit export``: a .slim model as a plain TorchScript or ONNX file for deployment.

The exported network is the *decoded dense* model: a deep copy of the loaded model in
which masked layers become plain ``nn.Conv2d`` / ``nn.Linear`` holding ``weight * mask``
(:func:`slimkit.nn.to_plain`) and inference-only sparse convolutions
(``SparseConv2d``, ``SparseLinear``) become plain ``nn.Conv2d`` / ``nn.Linear`` again, in eval mode.
Factorised layers (e.g. ``lowrank``'s vertical/horizontal convolutions) are kept as
they are: they are ordinary convolutions and the saving they bring is real in any runtime.

Formats
-------
``torchscript``: ``torch.jit.trace`` of the model on a batch of the input shape recorded
in the file (``torch.jit.script`` is not used: plugin modules need not be scriptable).
``onnx``: ``torch.onnx.export`` with the ``torch.export``-based exporter (PyTorch's
default since 2.9; it needs the ``onnx`` and ``onnxscript`` packages), input ``input``
and output ``logits`` with a dynamic batch dimension, weights inside the one file.

Both need nothing downloaded at run time; ONNX needs the optional extra
``pip install 'slimkit[export]'`` (onnx, onnxscript, onnxruntime). Without it, the export
ends with one line naming the extra.

Checks and atomic writes
------------------------
The file is written under a temporary name in the destination directory, loaded back
and run on a random batch (a batch size other than the one traced, so that a graph
that baked the batch size in fails), compared with the eager model (``|a - b| <=
atol + rtol |b|`` with ``atol = rtol = 1e-5``), and only then renamed to its final
name. TorchScript is loaded back with ``torch.jit.load``; ONNX is checked with
``onnx.checker`` and run with onnxruntime where that is installed (the result says
whether it was). A failed check leaves no file behind.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from slimkit import atomic
from slimkit.errors import UserError
from slimkit.nn import CSRLayer, replace_layer, to_plain

FORMATS = ("onnx", "torchscript")
EXTRA_HINT = "pip install 'slimkit[export]'"
#: Outputs of the exported model must match the eager model within atol + rtol * |eager|.
ATOL = 1e-5
RTOL = 1e-5
#: Batch sizes used to trace and to check (different, so a baked-in batch size is caught).
TRACE_BATCH = 2
CHECK_BATCH = 3


@dataclass
class ExportResult:
    path: str
    format: str
    input_shape: list
    bytes: int
    max_abs_diff: float | None = None
    verified_with: str | None = None
    notes: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"path": self.path, "format": self.format, "input_shape": self.input_shape, "bytes": self.bytes,
                "max_abs_diff": self.max_abs_diff, "verified_with": self.verified_with, "notes": self.notes}


def _densify_sparse(model: nn.Module) -> int:
    """Replace the CSR inference layers (``SparseConv2d``, ``SparseLinear``) by their plain dense
    twins, in place; returns how many."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, CSRLayer):
                replace_layer(parent, name, child.to_dense_module())
                count += 1
    return count


def dense_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every masked / sparse layer decoded to a plain dense one, in eval mode."""
    plain = copy.deepcopy(model)
    to_plain(plain)
    _densify_sparse(plain)
    plain.eval()
    for p in plain.parameters():
        p.requires_grad_(False)
    return plain


def _close(got: torch.Tensor, want: torch.Tensor) -> tuple[bool, float]:
    got, want = got.double(), want.double()
    if got.shape != want.shape:
        return False, float("inf")
    diff = (got - want).abs()
    ok = bool((diff <= ATOL + RTOL * want.abs()).all())
    return ok, float(diff.max()) if diff.numel() else 0.0


def _reference(model: nn.Module, shape, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, *shape), generator=g)
    with torch.no_grad():
        y = model(x)
    if not isinstance(y, torch.Tensor):
        raise UserError(f"export: the model returns {type(y).__name__}, not one tensor; only single-output "
                        "models can be exported")
    return x, y


def _tmp_path(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the mode a plain open() would
    return Path(tmp)


def _export_torchscript(model: nn.Module, shape, result: ExportResult) -> bytes:
    """The traced model serialised in memory: torch.jit.save's C++ writer aborts the whole
    process on a full disk, so it never writes a file; the caller writes the bytes."""
    import warnings

    example, _ = _reference(model, shape, TRACE_BATCH, seed=1)
    with warnings.catch_warnings():
        # torch >= 2.10 marks torch.jit deprecated in favour of torch.export; TorchScript is what was asked for
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        try:
            with torch.no_grad():
                traced = torch.jit.trace(model, (example,), check_trace=False)
            buffer = io.BytesIO()
            torch.jit.save(traced, buffer)
        except Exception as exc:  # tracing raises many types for unsupported code
            raise UserError(f"export: TorchScript tracing failed: {type(exc).__name__}: {exc}") from None
        data = buffer.getvalue()
        loaded = torch.jit.load(io.BytesIO(data), map_location="cpu")
    loaded.eval()
    x, want = _reference(model, shape, CHECK_BATCH)
    with torch.no_grad():
        got = loaded(x)
    ok, diff = _close(got, want)
    result.max_abs_diff, result.verified_with = diff, "torch.jit.load"
    if not ok:
        raise UserError(f"export: the TorchScript model loaded back differs from the model (max |diff| {diff:.3g} "
                        f"> {ATOL:g} + {RTOL:g} |y|); nothing written")
    return data


def _require(module: str, what: str):
    try:
        return __import__(module)
    except ImportError:
        raise UserError(f"export: {what} needs the Python package {module!r}; install the export extra: "
                        f"{EXTRA_HINT}") from None


def torchscript_onnx(model: nn.Module, example: torch.Tensor, out, *, opset: int | None = None,
                     dynamic_batch: bool = False) -> None:
    """``model`` written as ONNX to ``out`` (a path or a binary buffer) by PyTorch's TorchScript
    exporter, traced on ``example``: the quick in-memory export the runtime's ``onnxruntime``
    backend builds on, and the one that reads back in engines pinned to an old onnx (DeepSparse
    1.8). ``slimkit export`` itself uses the dynamo exporter and checks the file."""
    import warnings

    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    try:
        quiet.setLevel(logging.ERROR)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), out if isinstance(out, io.BytesIO) else str(out), dynamo=False,
                              opset_version=opset, input_names=["input"], output_names=["logits"],
                              dynamic_axes=axes)
    finally:
        quiet.setLevel(level)


def ort_session(model_onnx, threads: int):
    """An ONNX Runtime CPU session of ``model_onnx`` (a path or the file's bytes) with ``threads``
    intra-op threads, one inter-op thread, sequential execution and every graph optimisation."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    source = model_onnx if isinstance(model_onnx, bytes) else str(model_onnx)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _export_onnx(model: nn.Module, shape, tmp: Path, result: ExportResult, opset: int | None) -> None:
    import warnings

    onnx = _require("onnx", "--format onnx")
    _require("onnxscript", "--format onnx (PyTorch's torch.export-based ONNX exporter)")
    example, _ = _reference(model, shape, TRACE_BATCH, seed=1)
    batch = torch.export.Dim("batch", min=1)
    quiet = logging.getLogger("torch.onnx")  # e.g. "torchvision is not installed. Skipping torchvision::nms"
    level = quiet.level
    try:
        quiet.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(tmp), dynamo=True, input_names=["input"],
                              output_names=["logits"], dynamic_shapes=({0: batch},), external_data=False,
                              opset_version=opset, verbose=False, report=False)
    except UserError:
        raise
    except Exception as exc:  # the exporter raises many types for unsupported code
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UserError(f"export: ONNX export failed: {type(exc).__name__}: {first}") from None
    finally:
        quiet.setLevel(level)
    try:
        onnx.checker.check_model(str(tmp), full_check=True)
    except Exception as exc:
        raise UserError(f"export: the ONNX file fails onnx.checker: {exc}") from None
    try:
        import onnxruntime as ort
    except ImportError:
        result.notes.append(f"not run: onnxruntime is not installed ({EXTRA_HINT}); onnx.checker passed")
        result.verified_with = "onnx.checker"
        return
    session = ort_session(tmp, min(torch.get_num_threads(), 4))
    x, want = _reference(model, shape, CHECK_BATCH)
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    ok, diff = _close(got, want)
    result.max_abs_diff, result.verified_with = diff, f"onnxruntime {ort.__version__}"
    if not ok:
        raise UserError(f"export: onnxruntime's output differs from the model (max |diff| {diff:.3g} > "
                        f"{ATOL:g} + {RTOL:g} |y|); nothing written")


def export_model(model: nn.Module, input_shape, fmt: str, out, *, opset: int | None = None) -> ExportResult:
    """Export ``model`` (any module taking one ``[B, *input_shape]`` tensor) to ``out`` in ``fmt``.

    The model is decoded to dense first (:func:`dense_model`), the file checked as the
    module documentation says, and written atomically. Returns an :class:`ExportResult`.
    """
    if fmt not in FORMATS:
        raise UserError(f"export: --format {fmt!r} is invalid: expected one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and out.is_dir():
        raise UserError(f"export: --out {out} is a directory; give a file name")
    shape = [int(s) for s in input_shape]
    plain = dense_model(model).to("cpu").float()
    result = ExportResult(path=str(out), format=fmt, input_shape=shape, bytes=0)
    if fmt == "torchscript":
        result.bytes = atomic.write_bytes(out, _export_torchscript(plain, shape, result))
        return result
    # The ONNX exporter writes its file from Python, so a full disk is an OSError here: the
    # temporary file in the destination directory goes, and the error becomes one line.
    try:
        tmp = _tmp_path(out)
    except OSError as exc:
        raise atomic.user_error(exc, out, "choose another --out") from None
    try:
        _export_onnx(plain, shape, tmp, result, opset)
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise atomic.user_error(exc, out, "choose another --out") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    result.bytes = out.stat().st_size
    return result


def export_file(model_file, fmt: str, out, *, opset: int | None = None) -> ExportResult:
    """Load a .slim file and export it (see :func:`export_model`)."""
    from slimkit import storage
    from slimkit.plugins import get_registry

    loaded = storage.load_model(model_file, get_registry())
    shape = loaded.header.get("input_shape")
    if not shape:
        raise UserError(f"{model_file} records no input_shape; cannot build an example input to export with")
    if Path(out).resolve() == Path(model_file).resolve():
        raise UserError(f"export: --out {out} is the model file itself; give another name")
    return export_model(loaded.model, shape, fmt, out, opset=opset)
