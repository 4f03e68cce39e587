"""Builds slimkit._C, the native kernels in csrc/.

The extension is built when torch can be imported in the build environment, which
is why slimkit installs with `pip install --no-build-isolation -e .`: an isolated
build would fetch a different torch and break the ABI. CPU sources always build;
CUDA sources build when this torch has CUDA and nvcc is found. Without torch (or
with SLIMKIT_NO_EXTENSION=1) the package installs pure-Python and slimkit JIT-builds
the kernels on first use, or falls back to the reference ops with one warning.
"""
import glob
import os

from setuptools import setup


def extension_modules():
    if os.environ.get("SLIMKIT_NO_EXTENSION") == "1":
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        return [], {}
    here = os.path.dirname(os.path.abspath(__file__))
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    cxx = ["-O3", "-std=c++17", "-fopenmp"] if os.name != "nt" else ["/O2"]
    extra = {"cxx": cxx}
    ext_cls = cpp_extension.CppExtension
    define = [("Py_LIMITED_API", "0x03090000")]
    use_cuda = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if use_cuda and os.environ.get("SLIMKIT_NO_CUDA") != "1":
        # *.cu: plain CUDA kernels; *.cpp: their TORCH_LIBRARY_IMPL glue (needs torch's CUDA headers).
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")) + glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
        extra["nvcc"] = ["-O3", "--use_fast_math", "-std=c++17"]
        ext_cls = cpp_extension.CUDAExtension
        define.append(("SLIMKIT_WITH_CUDA", "1"))
    ext = ext_cls(
        "slimkit._C",
        sources,
        include_dirs=[os.path.join(here, "csrc")],
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"] if os.name != "nt" else [],
        define_macros=define,
        py_limited_api=True,
    )
    return [ext], {"build_ext": cpp_extension.BuildExtension}


ext_modules, cmdclass = extension_modules()
setup(
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options={"bdist_wheel": {"py_limited_api": "cp39"}} if ext_modules else {},
)
