"""slimkit.ops.backend: the choice between native kernels and the reference ops.

Order under test: SLIMKIT_KERNELS forces; else the prebuilt slimkit._C; else a JIT
build; else the reference with exactly one warning. Subprocesses hide slimkit._C
(``sys.modules["slimkit._C"] = None`` makes its import fail) to reach the later steps.
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from slimkit.ops import backend, gmm_prior, kd_loss
from slimkit.ops.gmm import gmm_prior_reference
from slimkit.ops.kd import kd_loss_reference

REPO = Path(__file__).resolve().parents[1]


def run_python(code: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    if "SLIMKIT_KERNELS" not in (env or {}):
        full_env.pop("SLIMKIT_KERNELS", None)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=full_env, cwd=REPO, timeout=timeout)
    return proc


def last_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# Runs kd_loss / gmm_prior a few times and reports the backend, the warnings and the errors vs the reference.
PROBE = """
import json, sys, warnings
{hide}
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import torch
    from slimkit.ops import backend, kd_loss, gmm_prior
    from slimkit.ops.kd import kd_loss_reference
    from slimkit.ops.gmm import gmm_prior_reference
    s, t = torch.randn(6, 37, dtype=torch.float64), torch.randn(6, 37, dtype=torch.float64)
    y = torch.randint(0, 37, (6,))
    w, m, lv, mix = torch.randn(50, dtype=torch.float64), torch.randn(3, dtype=torch.float64), \\
        torch.randn(3, dtype=torch.float64) - 2, torch.randn(3, dtype=torch.float64)
    kd_err = max(abs(kd_loss(s, t, y).item() - kd_loss_reference(s, t, y).item()) for _ in range(3))
    gmm_err = max(abs(gmm_prior(w, m, lv, mix).item() - gmm_prior_reference(w, m, lv, mix).item()) for _ in range(2))
    native_grad = "slimkit" in type(kd_loss(s.requires_grad_(), t, y).grad_fn).__name__
print(json.dumps({{"backend": backend.backend_name(), "native": backend.native_available(),
                  "native_grad": native_grad, "kd_err": kd_err, "gmm_err": gmm_err,
                  "warnings": [str(x.message) for x in caught if issubclass(x.category, RuntimeWarning)]}}))
"""
HIDE_PREBUILT = 'sys.modules["slimkit._C"] = None  # hide the prebuilt extension'


def test_prebuilt_is_used_by_default(monkeypatch):
    monkeypatch.delenv("SLIMKIT_KERNELS", raising=False)
    assert backend.native_available()
    assert backend.backend_name().startswith("native (")
    assert backend.use_native(torch.zeros(1))
    assert backend.use_native(torch.zeros(1), "slimkit::kd_loss_forward")
    assert not backend.use_native(torch.zeros(1, device="meta"))


def test_reference_forced(monkeypatch):
    monkeypatch.setenv("SLIMKIT_KERNELS", "reference")
    assert backend.backend_name() == "reference (SLIMKIT_KERNELS=reference)"
    assert not backend.native_available()
    assert not backend.use_native(torch.zeros(1), "slimkit::kd_loss_forward")
    s = torch.randn(4, 9, requires_grad=True)
    t = torch.randn(4, 9)
    loss = kd_loss(s, t)
    assert "slimkit" not in type(loss.grad_fn).__name__  # the reference's autograd graph
    assert loss.item() == kd_loss_reference(s, t).item()
    w, m, lv, mix = torch.randn(20), torch.randn(2), torch.randn(2), torch.randn(2)
    assert gmm_prior(w, m, lv, mix).item() == gmm_prior_reference(w, m, lv, mix).item()
    # not cached: dropping the variable brings the native kernels back
    monkeypatch.delenv("SLIMKIT_KERNELS")
    assert "slimkit" in type(kd_loss(s, t).grad_fn).__name__


def test_native_forced_and_bad_value(monkeypatch):
    monkeypatch.setenv("SLIMKIT_KERNELS", "native")
    assert backend.native_available()
    monkeypatch.setenv("SLIMKIT_KERNELS", "fast")
    with pytest.raises(ValueError, match="'reference', 'native'"):
        backend.native_available()


def test_import_builds_and_loads_nothing():
    proc = run_python("""
        import json, sys, torch
        import slimkit, slimkit.ops, slimkit.ops.backend, slimkit.bench
        print(json.dumps({"loaded": "slimkit._C" in sys.modules,
                          "ops": [n for n in ("kd_loss_forward", "gmm_prior_forward")
                                  if hasattr(torch.ops.slimkit, n)]}))
    """)
    assert last_json(proc) == {"loaded": False, "ops": []}


def test_no_compiler_no_prebuilt_falls_back_with_one_warning(tmp_path):
    env = {"CXX": "/nonexistent", "SLIMKIT_EXT_CACHE": str(tmp_path)}
    out = last_json(run_python(PROBE.format(hide=HIDE_PREBUILT), env=env))
    assert out["backend"].startswith("reference (") and "/nonexistent" in out["backend"]
    assert not out["native"] and not out["native_grad"]
    assert out["kd_err"] < 1e-12 and out["gmm_err"] < 1e-9
    assert len(out["warnings"]) == 1, out["warnings"]
    assert "native kernels unavailable" in out["warnings"][0] and "CXX='/nonexistent'" in out["warnings"][0]
    # ... and forcing native there is a clear error, not a silent fallback
    proc = run_python(PROBE.format(hide=HIDE_PREBUILT), env={**env, "SLIMKIT_KERNELS": "native"})
    assert proc.returncode != 0
    assert "SLIMKIT_KERNELS=native but the native kernels are unavailable" in proc.stderr
    assert "no C++ compiler" in proc.stderr


@pytest.mark.slow  # compiles the whole extension: the fast suite compiles nothing
def test_jit_build_when_no_prebuilt():
    """The JIT path for real: builds csrc/ into a cache under build/ (kept between runs, so only the first
    run of a source version compiles: ~2 min on 2 idle cores with MAX_JOBS=1) and loads it."""
    cache = REPO / "build" / "test-jit-ext"
    env = {"SLIMKIT_EXT_CACHE": str(cache), "MAX_JOBS": "1"}
    out = last_json(run_python(PROBE.format(hide=HIDE_PREBUILT), env=env, timeout=900))
    current = Path(out["backend"].removeprefix("native (JIT build in ").removesuffix(")"))
    for old in cache.glob("ext-*"):  # builds of earlier source versions
        if old != current:
            shutil.rmtree(old, ignore_errors=True)
    assert out["backend"].startswith(f"native (JIT build in {cache}"), out["backend"]
    assert out["native"] and out["native_grad"]
    assert out["kd_err"] < 1e-12 and out["gmm_err"] < 1e-9
    assert out["warnings"] == []


def _cpu_supports(isa: str) -> bool:
    order = ["DEFAULT", "AVX2", "AVX512"]
    have = torch.backends.cpu.get_cpu_capability()
    return have in order and order.index(have) >= order.index(isa.upper())


ISA_PROBE = """
import json, torch
from slimkit.ops import backend, kd_loss, gmm_prior
assert backend.load(), backend.backend_name()
from slimkit.ops.kd import kd_loss_reference
from slimkit.ops.gmm import gmm_prior_reference
errs = []
for N, C in [(1, 1), (3, 15), (2, 17), (5, 100), (2, 1000)]:
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        s, t = torch.randn(N, C).to(dtype), torch.randn(N, C).to(dtype)
        y = torch.randint(0, C, (N,))
        ref = kd_loss_reference(s.double(), t.double(), y, 3.0, 0.5).item()
        errs.append(abs(kd_loss(s, t, y, 3.0, 0.5).item() - ref) / max(1.0, abs(ref)))
for N, K in [(1, 1), (17, 3), (1000, 16), (33, 64)]:
    args = [torch.randn(N), torch.randn(K), torch.randn(K) - 2, torch.randn(K)]
    ref = gmm_prior_reference(*[a.double() for a in args]).item()
    errs.append(abs(gmm_prior(*args).item() - ref) / max(1.0, abs(ref)))
print(json.dumps({"isa": torch.ops.slimkit.kd_gmm_cpu_isa(), "max_err": max(errs)}))
"""


@pytest.mark.parametrize("isa,name", [("default", "base"), ("avx2", "avx2"), ("avx512", "avx512")])
def test_every_compiled_isa_matches_reference(isa, name):
    if not _cpu_supports(isa):
        pytest.skip(f"this CPU has no {isa}")
    out = last_json(run_python(ISA_PROBE, env={"ATEN_CPU_CAPABILITY": isa}))
    assert out["isa"] == name
    assert out["max_err"] < 5e-6, out


@pytest.mark.slow  # compiles the ISA units
@pytest.mark.parametrize("isa", ["avx2", "avx512"])
def test_isa_objects_share_no_linker_names(isa, tmp_path):
    """Every symbol an ISA-specific file defines is in its own namespace, so the linker can never hand
    AVX-512 code (say, an inline c10 helper) to a caller on a CPU without it (see isa_unit.h)."""
    cxx = shutil.which(os.environ.get("CXX", "c++"))
    assert cxx and shutil.which("nm"), "needs a C++ compiler and nm (binutils)"
    from torch.utils.cpp_extension import include_paths

    obj = tmp_path / f"{isa}.o"
    cmd = [cxx, "-c", str(REPO / "csrc" / "cpu" / f"isa_{isa}.cpp"), "-o", str(obj), "-O1", "-std=c++17",
           "-fPIC", "-w", f"-I{REPO / 'csrc'}", *[f"-I{p}" for p in include_paths()]]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    symbols = subprocess.run(["nm", "-C", "--defined-only", str(obj)], check=True, capture_output=True,
                             text=True).stdout.splitlines()
    # "addr TYPE name": T/W/V/u are the global definitions the linker may merge across objects
    exported = [parts[2] for parts in (line.split(" ", 2) for line in symbols)
                if len(parts) == 3 and parts[1] in {"T", "W", "V", "u"}]
    for kernel in ("kd_forward", "gmm_backward", "sparse_tiles", "sparse_gather_rows"):  # every op's kernels
        assert any(f"slimkit::cpu::{isa}::{kernel}" in s for s in exported), (kernel, exported[:20])
    own = (f"slimkit::cpu::{isa}::", f"at::vec::{isa.upper()}::")
    foreign = [s for s in exported if not any(o in s for o in own)]
    assert foreign == [], foreign


def test_constant_under_compile_marks_what_torch_marks():
    """slimkit sets the attribute that torch.compiler.assume_constant_result sets, without
    importing torch._dynamo at import time; if torch changes what its decorator does, this fails."""
    import torch

    def ours():
        return 1

    def official():
        return 1

    with pytest.MonkeyPatch.context() as mp:
        mp.delitem(sys.modules, "torch._dynamo", raising=False)  # take the lazy branch
        marked = backend.constant_under_compile(ours)
    torch.compiler.assume_constant_result(official)
    ours_attrs = {k: v for k, v in vars(marked).items()}
    assert ours_attrs == {k: v for k, v in vars(official).items()} == {"_dynamo_marked_constant": True}


def test_importing_slimkit_does_not_import_dynamo():
    import subprocess

    code = "import sys, slimkit.pipeline, slimkit.cli; print('torch._dynamo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
