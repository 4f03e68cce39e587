"""The promise suite: bad input and faults, as a hostile user would try them.

Every case must end in one line on stderr saying what is wrong (exit 2), or one line
for an interrupt (exit 130); no traceback; and the working directory exactly as it
was (nothing half-written, no temporary files, no empty --out). CLI cases run the
real entry point in-process (one torch import for the whole table); interrupts and
crashes that only a separate process can show run as subprocesses. Kernel cases
assert that bad tensors are Python errors, never a crash.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

from conftest import run_slimkit


# ---------------------------------------------------------------------------- helpers
def snapshot(root: Path) -> dict:
    """Every file and directory under ``root`` with its size and modification time."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        # a directory's own mtime changes when a lock file comes and goes; its entries are what count
        out[str(p.relative_to(root))] = (True, 0, 0) if p.is_dir() else (False, st.st_size, st.st_mtime_ns)
    return out


def run_in_process(argv, capsys) -> tuple[int, str]:
    from slimkit.cli import main

    capsys.readouterr()
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


def assert_promise(code: int, stderr: str, expected_code: int, fragments) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == expected_code, (code, stderr)
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    if expected_code == 2:
        assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def write_idx(directory: Path, labels: list[int] | None = None, images: int | None = None,
              magic: int = 2049, image_bytes: bytes | None = None) -> Path:
    """A small MNIST-format pair (t10k only) with the given labels; images are noise."""
    directory.mkdir(parents=True, exist_ok=True)
    labels = labels if labels is not None else [i % 10 for i in range(60)]
    n = len(labels) if images is None else images
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (n, 28, 28), generator=gen, dtype=torch.uint8).numpy().tobytes()
    img = struct.pack(">IIII", 2051, n, 28, 28) + (pixels if image_bytes is None else image_bytes)
    (directory / "t10k-images-idx3-ubyte").write_bytes(img)
    (directory / "t10k-labels-idx1-ubyte").write_bytes(struct.pack(">II", magic, len(labels)) + bytes(labels))
    return directory


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


@dataclass
class Case:
    id: str
    argv: list  # "{ws}" is replaced by the case's working directory
    fragments: tuple = ()
    setup: Callable[[Path], None] | None = None
    code: int = 2
    env: dict = field(default_factory=dict)


def _recipe(body: str):
    return lambda ws: write(ws / "r.toml", body)


def _tiny_slim(ws: Path) -> Path:
    """A real .slim file (an untrained LeNet-300-100 for digits), written by slimkit itself."""
    from slimkit import storage
    from slimkit.plugins import get_registry

    reg = get_registry()
    model = reg.build_model("lenet300", (1, 8, 8), 10)
    info = {"model": "lenet300", "input_shape": [1, 8, 8], "num_classes": 10,
            "data": {"name": "digits", "description": "digits", "mean": [0.0], "std": [1.0]}}
    path = ws / "m.slim"
    storage.save_model(path, model, reg, info=info)
    return path


def _two_slims_other_shapes(ws: Path) -> None:
    """m.slim for 1x8x8 inputs and o.slim for 1x28x28: not a model and its baseline."""
    from slimkit import storage
    from slimkit.plugins import get_registry

    _tiny_slim(ws)
    reg = get_registry()
    info = {"model": "lenet300", "input_shape": [1, 28, 28], "num_classes": 10,
            "data": {"name": "mnist", "description": "mnist", "mean": [0.0], "std": [1.0]}}
    storage.save_model(ws / "o.slim", reg.build_model("lenet300", (1, 28, 28), 10), reg, info=info)


def _corrupt_slim(how: str):
    def setup(ws: Path):
        path = _tiny_slim(ws)
        data = bytearray(path.read_bytes())
        if how == "truncated":
            data = data[: len(data) // 2]
        elif how == "flipped":  # one byte inside the last tensor's data
            data[-5] ^= 0x40
        elif how == "header":
            data[8:20] = b"\x00" * 12
        path.write_bytes(bytes(data))
    return setup


def _held_lock(ws: Path):
    from slimkit.rundir import OutLock

    _held_lock.lock = OutLock(ws / "out", "compress").acquire()  # released in the test's finally


def _interrupted_run(ws: Path):
    """An --out whose .work holds the settings of a run with prune.sparsity=0.5."""
    from slimkit.pipeline import Run, RunConfig
    from slimkit.rundir import check_resume_settings

    run = Run(RunConfig(out=str(ws / "out"), epochs=1, baseline_epochs=1, latency=False, quiet=True),
              option_pairs=[("sparsity", "0.5")])
    check_resume_settings(run.work, run.settings(), resume=False)


def _mnist_labels(values):
    return lambda ws: write_idx(ws / "idx", labels=values)


TEN = [i % 10 for i in range(60)]
W = ["--out", "{ws}/out"]  # every compress case names its own --out

CLI_CASES = [
    # ---- names
    Case("unknown-method", ["compress", "--method", "prnue", *W], ("unknown method 'prnue'", "prune")),
    Case("unknown-model", ["compress", "--model", "lenet9000", *W], ("unknown model 'lenet9000'", "lenet300")),
    Case("unknown-dataset", ["compress", "--data", "imagenet:/x", *W], ("unknown dataset 'imagenet'", "digits")),
    Case("unknown-option", ["compress", "--set", "colour=blue", *W], ("colour", "sparsity")),
    Case("option-without-value", ["compress", "--set", "novalue", *W], ("KEY=VALUE",)),
    Case("option-of-method-not-in-chain", ["compress", "--set", "lowrank.rank=3", *W], ("lowrank", "chain")),
    Case("method-twice", ["compress", "--method", "prune", "--method", "prune", *W], ("twice",)),
    Case("unknown-command", ["compres"], ("compres",)),
    Case("unknown-flag", ["compress", "--sparsity", "0.5"], ("--sparsity",)),
    # ---- option values: ranges, choices, NaN and infinity
    Case("sparsity-out-of-range", ["compress", "--set", "sparsity=1.5", *W], ("prune.sparsity", "1.5")),
    Case("sparsity-negative", ["compress", "--set", "sparsity=-0.1", *W], ("prune.sparsity",)),
    Case("sparsity-nan", ["compress", "--set", "sparsity=nan", *W], ("prune.sparsity", "finite")),
    Case("sparsity-inf", ["compress", "--set", "sparsity=inf", *W], ("prune.sparsity", "finite")),
    Case("sparsity-not-a-number", ["compress", "--set", "sparsity=lots", *W], ("prune.sparsity", "float")),
    Case("schedule-bad-choice", ["compress", "--set", "schedule=sometimes", *W], ("schedule", "gradual")),
    Case("temperature-nan", ["compress", "--method", "distill", "--set", "temperature=nan", *W],
         ("temperature", "finite")),
    Case("bool-option-garbage", ["compress", "--set", "global=perhaps", *W], ("global",)),
    # ---- run flags
    Case("epochs-negative", ["compress", "--epochs", "-1", *W], ("--epochs",)),
    Case("epochs-not-int", ["compress", "--epochs", "many", *W], ("--epochs",)),
    Case("lr-zero", ["compress", "--lr", "0", *W], ("--lr",)),
    Case("lr-nan", ["compress", "--lr", "nan", *W], ("--lr", "finite")),
    Case("lr-inf", ["compress", "--lr", "inf", *W], ("--lr", "finite")),
    Case("batch-size-zero", ["compress", "--batch-size", "0", *W], ("--batch-size",)),
    Case("batch-size-beyond-train-split", ["compress", "--batch-size", "100000", *W],
         ("--batch-size 100000", "training split")),
    Case("optimizer-unknown", ["compress", "--optimizer", "rmsprop", *W], ("rmsprop", "sgd")),
    Case("seed-negative", ["compress", "--seed", "-1", *W], ("--seed",)),
    Case("weights-for-zoo-model", ["compress", "--weights", "{ws}/w.pt", *W], ("--weights", "python:module:factory"),
         setup=lambda ws: torch.save({"a": torch.zeros(1)}, ws / "w.pt")),
    Case("model-opt-unknown", ["compress", "--model", "vgg11", "--model-opt", "colour=3", *W], ("vgg11",)),
    # ---- model files
    Case("model-dir", ["compress", "--model", "{ws}", *W], ("is a directory",)),
    Case("model-missing-pt", ["compress", "--model", "{ws}/none.pt", *W], ("does not exist",)),
    Case("model-python-missing-module", ["compress", "--model", "python:no_such_mod:f", *W], ("no_such_mod",)),
    Case("model-python-bad-form", ["compress", "--model", "python:justamodule", *W], ("python:package.module:factory",)),
    Case("model-torchscript-garbage", ["compress", "--model", "{ws}/m.pt", *W], ("m.pt",),
         setup=lambda ws: write(ws / "m.pt", b"PK\x03\x04 definitely not a zip")),
    Case("teacher-not-a-file", ["compress", "--method", "distill", "--teacher", "lenet300", *W], ("--teacher",)),
    Case("slim-garbage", ["info", "{ws}/m.slim"], ("m.slim",), setup=lambda ws: write(ws / "m.slim", b"\x10" + b"\0" * 7 + b"{nope")),
    Case("slim-garbage-evaluate", ["evaluate", "{ws}/m.slim"], ("m.slim",),
         setup=lambda ws: write(ws / "m.slim", b"\x10" + b"\0" * 7 + b"{nope")),
    Case("slim-garbage-as-model", ["compress", "--model", "{ws}/m.slim", *W], ("m.slim",),
         setup=lambda ws: write(ws / "m.slim", b"\x10" + b"\0" * 7 + b"{nope")),
    Case("slim-missing", ["evaluate", "{ws}/none.slim"], ("does not exist",)),
    Case("slim-missing-info", ["info", "{ws}/none.slim"], ("does not exist",)),
    Case("slim-is-dir", ["info", "{ws}/d.slim"], ("d.slim",), setup=lambda ws: (ws / "d.slim").mkdir()),
    Case("slim-truncated", ["evaluate", "{ws}/m.slim"], ("m.slim",), setup=_corrupt_slim("truncated")),
    Case("slim-header-zeroed", ["info", "{ws}/m.slim"], ("m.slim",), setup=_corrupt_slim("header")),
    Case("slim-flipped-tensor-byte", ["evaluate", "{ws}/m.slim"], ("m.slim",), setup=_corrupt_slim("flipped")),
    Case("slim-as-model-wrong-data", ["compress", "--model", "{ws}/m.slim", "--data", "mnist:{ws}/idx", *W],
         ("classes",), setup=lambda ws: (_tiny_slim(ws), write_idx(ws / "idx", labels=[i % 10 for i in range(200)]))),
    # ---- data files
    Case("mnist-missing-dir", ["compress", "--data", "mnist:{ws}/nowhere", *W], ("nowhere",)),
    Case("mnist-empty-dir", ["compress", "--data", "mnist:{ws}/empty", *W], ("no IDX files",),
         setup=lambda ws: (ws / "empty").mkdir()),
    Case("mnist-label-255", ["compress", "--data", "mnist:{ws}/idx", *W], ("255", "mnist:DIR@K"),
         setup=_mnist_labels(TEN[:-1] + [255])),
    Case("mnist-label-beyond-declared", ["compress", "--data", "mnist:{ws}/idx@5", *W], ("outside 0..4",),
         setup=_mnist_labels(TEN)),
    Case("mnist-bad-class-count", ["compress", "--data", "mnist:{ws}/idx@none", *W], ("class count",),
         setup=_mnist_labels(TEN)),
    Case("mnist-bad-magic", ["compress", "--data", "mnist:{ws}/idx", *W], ("idx",),
         setup=lambda ws: write_idx(ws / "idx", magic=1234)),
    Case("mnist-truncated-images", ["compress", "--data", "mnist:{ws}/idx", *W], ("idx",),
         setup=lambda ws: write_idx(ws / "idx", image_bytes=b"\0" * 100)),
    Case("mnist-count-mismatch", ["compress", "--data", "mnist:{ws}/idx", *W], ("labels",),
         setup=lambda ws: write_idx(ws / "idx", images=50)),
    Case("synthetic-bad-spec", ["compress", "--data", "synthetic:banana", *W], ("synthetic",)),
    Case("folder-without-dir", ["compress", "--data", "folder:", *W], ("folder",)),
    # ---- recipes
    Case("recipe-missing", ["compress", "--recipe", "{ws}/none.toml", *W], ("does not exist",)),
    Case("recipe-bad-toml", ["compress", "--recipe", "{ws}/r.toml", *W], ("not valid TOML",), setup=_recipe("epochs = = 3")),
    Case("recipe-unknown-key", ["compress", "--recipe", "{ws}/r.toml", *W], ("colour",), setup=_recipe("colour = 3\n")),
    Case("recipe-epochs-string", ["compress", "--recipe", "{ws}/r.toml", *W], ("epochs", "integer"),
         setup=_recipe('epochs = "many"\n')),
    Case("recipe-batch-size-float", ["compress", "--recipe", "{ws}/r.toml", *W], ("batch-size", "integer"),
         setup=_recipe("batch_size = 1e20\n")),
    Case("recipe-lr-inf", ["compress", "--recipe", "{ws}/r.toml", *W], ("--lr", "finite"), setup=_recipe("lr = inf\n")),
    Case("recipe-sparsity-nan", ["compress", "--recipe", "{ws}/r.toml", *W], ("sparsity", "finite"),
         setup=_recipe('[[stage]]\nmethod = "prune"\nsparsity = nan\n')),
    Case("recipe-empty-stage-list", ["compress", "--recipe", "{ws}/r.toml", *W], ("stage = []",), setup=_recipe("stage = []\n")),
    Case("recipe-stage-without-method", ["compress", "--recipe", "{ws}/r.toml", *W], ("method",),
         setup=_recipe("[[stage]]\nsparsity = 0.5\n")),
    Case("recipe-and-method-flag", ["compress", "--recipe", "{ws}/r.toml", "--method", "prune", *W], ("not both",),
         setup=_recipe('[[stage]]\nmethod = "prune"\n')),
    Case("recipe-model-options-not-table", ["compress", "--recipe", "{ws}/r.toml", *W], ("model_options",),
         setup=_recipe("model_options = 3\n")),
    # ---- output locations, locks, resume
    Case("out-is-a-file", ["compress", "--out", "{ws}/f"], ("--out",), setup=lambda ws: write(ws / "f", "x")),
    Case("out-under-a-file", ["compress", "--out", "{ws}/f/sub"], ("--out",), setup=lambda ws: write(ws / "f", "x")),
    Case("out-locked", ["compress", *W], ("in use", f"pid {os.getpid()}"), setup=_held_lock),
    Case("resume-changed-option", ["compress", "--set", "sparsity=0.95", "--epochs", "1", "--baseline-epochs", "1",
                                   "--resume", "--no-latency", *W], ("sparsity was 0.5, now 0.95",), setup=_interrupted_run),
    Case("export-bad-format", ["export", "{ws}/m.slim", "--format", "png", "--out", "{ws}/m.png"], ("png",),
         setup=lambda ws: _tiny_slim(ws)),
    Case("export-under-a-file", ["export", "{ws}/m.slim", "--format", "torchscript", "--out", "{ws}/f/m.pt"], (),
         setup=lambda ws: (_tiny_slim(ws), write(ws / "f", "x"))),
    # ---- a full disk (the atomic writer's seam: ENOSPC after N bytes of any one file)
    Case("disk-full-at-first-write", ["compress", "--epochs", "1", "--baseline-epochs", "1", "--no-latency", "--quiet", *W],
         ("no space left on device",), env={"SLIMKIT_FAULT_ENOSPC_AFTER": "0"}),
    Case("disk-full-in-checkpoint", ["compress", "--epochs", "1", "--baseline-epochs", "1", "--no-latency", "--quiet", *W],
         ("no space left on device",), env={"SLIMKIT_FAULT_ENOSPC_AFTER": "20000"}),
    Case("disk-full-in-export", ["export", "{ws}/m.slim", "--format", "torchscript", "--out", "{ws}/e/m.pt"],
         ("no space left on device", "m.pt"), env={"SLIMKIT_FAULT_ENOSPC_AFTER": "1000"},
         setup=lambda ws: (_tiny_slim(ws), (ws / "e").mkdir())),
    Case("collapse-threshold-nan", ["compress", "--collapse-threshold", "nan", *W], ("--collapse-threshold",)),
    Case("sweep-unknown-executor", ["sweep", "{ws}/g.toml", "--executor", "bogus"], ("unknown executor",),
         setup=lambda ws: write(ws / "g.toml", f'models = ["lenet300"]\ndata = ["digits"]\nout = "{ws}/sw"\n')),
    Case("sweep-executor-zero-workers", ["sweep", "{ws}/g.toml", "--executor", "local:0"], ("local:0",),
         setup=lambda ws: write(ws / "g.toml", f'models = ["lenet300"]\ndata = ["digits"]\nout = "{ws}/sw"\n')),
    Case("report-not-a-run", ["report", "{ws}"], ("no report.json",)),
    Case("sensitivity-unknown-method", ["sensitivity", "--method", "bogus", "--out", "{ws}/s"], ("unknown method",)),
    Case("run-missing-model", ["run", "{ws}/none.slim"], ("does not exist",)),
    Case("sweep-missing-grid", ["sweep", "{ws}/none.toml"], ("none.toml",)),
    Case("sweep-bad-grid", ["sweep", "{ws}/g.toml"], ("g.toml",), setup=lambda ws: write(ws / "g.toml", "model = 3\n")),
    Case("model-python-unsavable-graph", ["compress", "--model", f"python:{__name__}:OffAllowlist", "--epochs", "1", *W],
         ("fx node 'off_allowlist_gate'", "allowlist")),
    Case("bench-kernels-unknown-device", ["bench", "kernels", "--device", "tpu", "--quick"], ("--device", "cpu or cuda")),
    Case("info-against-without-latency", ["info", "{ws}/m.slim", "--against", "{ws}/m.slim"],
         ("--against needs --latency",), setup=_tiny_slim),
    Case("info-against-other-shape", ["info", "{ws}/m.slim", "--latency", "--against", "{ws}/o.slim"],
         ("--against", "input shape", "[1, 28, 28]"), setup=_two_slims_other_shapes),
    Case("info-against-missing", ["info", "{ws}/m.slim", "--latency", "--against", "{ws}/none.slim"],
         ("does not exist",), setup=_tiny_slim),
    Case("bench-models-baseline-unknown-name", ["bench", "models", "--model", "a={ws}/m.slim", "--baseline",
                                                "b={ws}/m.slim"], ("--baseline 'b=", "--model names (a)"), setup=_tiny_slim),
    Case("bench-models-baseline-other-shape", ["bench", "models", "--model", "a={ws}/m.slim", "--baseline",
                                               "a={ws}/o.slim", "--threads", "1", "--batch", "1", "--rounds", "1"],
         ("--baseline", "input shape"), setup=_two_slims_other_shapes),
    Case("sensitivity-negative-finetune-steps", ["sensitivity", "--finetune-steps", "-1", "--out", "{ws}/s"],
         ("--finetune-steps",)),
] + ([] if torch.cuda.is_available() else [
    Case("bench-kernels-cuda-without-gpu", ["bench", "kernels", "--device", "cuda", "--quick"], ("no CUDA device",)),
])


def off_allowlist_gate(x):
    return x * (x > 0)


torch.fx.wrap("off_allowlist_gate")  # fx records the call itself: a function a .slim graph may not name


class OffAllowlist(torch.nn.Module):
    """A user model slimkit cannot save as a graph: it must be refused before any training."""

    def __init__(self, input_shape=None, num_classes=10):
        super().__init__()
        self.fc = torch.nn.Linear(64, num_classes)

    def forward(self, x):
        return self.fc(off_allowlist_gate(torch.flatten(x, 1)))


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_cli_promise(case: Case, tmp_path, capsys, monkeypatch):
    ws = tmp_path / "ws"
    ws.mkdir()
    monkeypatch.chdir(ws)
    if case.setup is not None:
        case.setup(ws)
    for key, value in case.env.items():  # after the set-up, whose files are not under test
        monkeypatch.setenv(key, value)
    before = snapshot(ws)
    try:
        code, err = run_in_process([a.replace("{ws}", str(ws)) for a in case.argv], capsys)
        after = snapshot(ws)
    finally:
        lock = getattr(_held_lock, "lock", None)
        if lock is not None:
            lock.release()
            _held_lock.lock = None
    assert_promise(code, err, case.code, case.fragments)
    assert after == before, {k: after.get(k) for k in set(after) ^ set(before)}


# ---------------------------------------------------------------------------- kernels
def _csr(out_f, in_f, bad_col=False):
    row_ptr = torch.tensor([0, 1] + [1] * (out_f - 1), dtype=torch.int64)
    col_idx = torch.tensor([in_f + 5 if bad_col else 0], dtype=torch.int64)
    return row_ptr, col_idx, torch.ones(1)


KERNEL_CASES = {
    "kd-shape-mismatch": lambda ops: ops.kd_loss(torch.randn(4, 10), torch.randn(4, 9), torch.zeros(4, dtype=torch.long)),
    "kd-float-labels": lambda ops: ops.kd_loss(torch.randn(4, 10), torch.randn(4, 10), torch.zeros(4)),
    "kd-label-out-of-range": lambda ops: ops.kd_loss(torch.randn(4, 10), torch.randn(4, 10), torch.full((4,), 10)),
    "kd-temperature-zero": lambda ops: ops.kd_loss(torch.randn(4, 10), torch.randn(4, 10), None, 0.0),
    "kd-1d-input": lambda ops: ops.kd_loss(torch.randn(10), torch.randn(10), None),
    "gmm-mismatched-components": lambda ops: ops.gmm_prior(torch.randn(50), torch.randn(3), torch.randn(4), torch.randn(3)),
    "gmm-int-weights": lambda ops: ops.gmm_prior(torch.arange(5), torch.randn(3), torch.randn(3), torch.randn(3)),
    "masked-conv-mask-shape": lambda ops: ops.masked_conv2d(torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3),
                                                            torch.ones(4, 3, 2, 2)),
    "masked-conv-channels": lambda ops: ops.masked_conv2d(torch.randn(1, 2, 8, 8), torch.randn(4, 3, 3, 3),
                                                          torch.ones(4, 3, 3, 3)),
    "sparse-conv-stride-zero": lambda ops: torch.ops.slimkit.sparse_conv2d(
        torch.randn(1, 1, 8, 8), *_csr(2, 9), [2, 1, 3, 3], None, [0, 0], [0, 0], [1, 1]),
    "sparse-conv-dilation-zero": lambda ops: torch.ops.slimkit.sparse_conv2d(
        torch.randn(1, 1, 8, 8), *_csr(2, 9), [2, 1, 3, 3], None, [1, 1], [0, 0], [0, 0]),
    "sparse-conv-bad-column": lambda ops: torch.ops.slimkit.sparse_conv2d(
        torch.randn(1, 1, 8, 8), *_csr(2, 9, bad_col=True), [2, 1, 3, 3], None, [1, 1], [0, 0], [1, 1]),
    "sparse-conv-wrong-channels": lambda ops: torch.ops.slimkit.sparse_conv2d(
        torch.randn(1, 3, 8, 8), *_csr(2, 9), [2, 1, 3, 3], None, [1, 1], [0, 0], [1, 1]),
    "sparse-linear-wrong-features": lambda ops: torch.ops.slimkit.sparse_linear(
        torch.randn(2, 7), *_csr(3, 5), [3, 5], None),
    "sparse-linear-bad-column": lambda ops: torch.ops.slimkit.sparse_linear(
        torch.randn(2, 5), *_csr(3, 5, bad_col=True), [3, 5], None),
    "sparse-linear-int-input": lambda ops: torch.ops.slimkit.sparse_linear(
        torch.ones(2, 5, dtype=torch.int32), *_csr(3, 5), [3, 5], None),
    "sparse-mlp-wrong-features": lambda ops: torch.ops.slimkit.sparse_mlp(
        torch.randn(2, 7), *[[t] for t in _csr(3, 5)], [torch.empty(0)], [3, 5], [torch.empty(0)], [1]),
    "sparse-mlp-lists-of-other-lengths": lambda ops: torch.ops.slimkit.sparse_mlp(
        torch.randn(2, 5), *[[t] for t in _csr(3, 5)], [torch.empty(0)], [3, 5, 2, 3], [torch.empty(0)], [1, 0]),
}


@pytest.mark.parametrize("name", sorted(KERNEL_CASES))
def test_kernel_promise(name):
    from slimkit import ops
    from slimkit.ops import backend

    if not backend.native_available():
        pytest.skip("the native kernels are not built here")
    with pytest.raises((RuntimeError, ValueError, TypeError, IndexError)) as err:
        KERNEL_CASES[name](ops)
    assert str(err.value).strip(), "the error must say what is wrong"


# ---------------------------------------------------------------------------- interrupts
@pytest.mark.parametrize("point,args", [
    ("start-up", ["methods"]),
    ("final-write", ["compress", "--epochs", "1", "--baseline-epochs", "1", "--no-latency", "--quiet"]),
])
def test_interrupt_promise(point, args, tmp_path):
    """Ctrl-C (a real SIGINT, sent by the process to itself at the chosen point): one line, exit 130,
    and no partial output: the work directory is cleaned up only by a later run, but --out holds no
    half-written file, no report and no temporary file."""
    ws = tmp_path / "ws"
    ws.mkdir()
    before = snapshot(ws)
    proc = run_slimkit(*args, "--out", ws / "out" if args[0] == "compress" else None, cwd=ws,
                       env={"SLIMKIT_FAULT": f"interrupt@{point}"}) if args[0] == "compress" else \
        run_slimkit(*args, cwd=ws, env={"SLIMKIT_FAULT": f"interrupt@{point}"})
    assert_promise(proc.returncode, proc.stderr, 130, ("interrupted",))
    if point == "start-up":
        assert snapshot(ws) == before
    else:
        out = ws / "out"
        published = sorted(p.name for p in out.iterdir() if p.name != ".work") if out.exists() else []
        assert published == [], published  # nothing was moved into --out
        leftovers = [p for p in ws.rglob("*.tmp")]
        assert leftovers == [], leftovers


def test_corrupt_checkpoint_on_resume_is_one_line(tmp_path, capsys, monkeypatch):
    """A resume whose checkpoint is damaged says which file and what to do; the file is kept
    (it is the user's to delete), and nothing half-written or temporary is left."""
    ws = tmp_path / "ws"
    ws.mkdir()
    monkeypatch.chdir(ws)
    _interrupted_run(ws)
    checkpoints = ws / "out" / ".work" / "checkpoints"
    checkpoints.mkdir(parents=True)
    for label in ("baseline-0", "prune-0"):  # whichever stage resumes first meets a damaged file
        write(checkpoints / f"{label}.pt", b"PK\x03\x04 truncated zip")
    code, err = run_in_process(["compress", "--set", "sparsity=0.5", "--epochs", "1", "--baseline-epochs", "1",
                                "--resume", "--no-latency", "--quiet", "--out", ws / "out"], capsys)
    assert_promise(code, err, 2, ("checkpoint", "unreadable", "without --resume"))
    assert (checkpoints / "prune-0.pt").read_bytes() == b"PK\x03\x04 truncated zip"
    assert not list(ws.rglob("*.tmp")) and not (ws / "out" / "report.json").exists()
