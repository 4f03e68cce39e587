#!/usr/bin/env bash
# Builds slimkit._C with its CUDA kernels on a machine without a GPU, for a GPU machine whose
# torch is a known CUDA wheel: against that wheel's headers and libraries, with this machine's
# nvcc and the flags of setup.py. Used to spend no lent-GPU time compiling
# (docs/BENCHMARKS.md, "GPU"); on a machine with a CUDA torch, `pip install
# --no-build-isolation -e .` does the same.
#
# Usage: benchmarks/build_cuda_extension.sh TORCH_WHEEL OUT_DIR   (writes OUT_DIR/_C.abi3.so)
# Environment: CUDA_HOME (default /usr/local/cuda), CUDA_ARCH (default 90), JOBS (default 2).
set -euo pipefail
wheel=$(realpath "$1"); out=$(realpath -m "$2")
src=$(cd "$(dirname "$0")/.." && pwd)/csrc
cuda=${CUDA_HOME:-/usr/local/cuda}; arch=${CUDA_ARCH:-90}
mkdir -p "$out/obj" "$out/wheel"
[ -d "$out/wheel/torch/include" ] || unzip -q -o "$wheel" 'torch/include/*' 'torch/lib/*' -d "$out/wheel"
T=$out/wheel/torch
pyinc=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['include'])")  # limited API: any 3.9+
inc="-I$src -I$T/include -I$T/include/torch/csrc/api/include -I$cuda/include -I$pyinc"
def="-DPy_LIMITED_API=0x03090000 -DSLIMKIT_WITH_CUDA=1 -DTORCH_API_INCLUDE_EXTENSION_H -DTORCH_EXTENSION_NAME=_C -D_GLIBCXX_USE_CXX11_ABI=1"
{
  echo "rule cxx"
  echo "  command = g++ -MMD -MF \$out.d -fPIC -O3 -std=c++17 -fopenmp $def $inc -c \$in -o \$out"
  echo "  depfile = \$out.d"
  echo "rule cu"
  echo "  command = $cuda/bin/nvcc -O3 --use_fast_math -std=c++17 -gencode arch=compute_$arch,code=sm_$arch --compiler-options -fPIC -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ --expt-relaxed-constexpr $def $inc -c \$in -o \$out"
  echo "rule link"
  echo "  command = g++ -shared \$in -o \$out -L$T/lib -L$cuda/lib64 -lc10 -lc10_cuda -ltorch -ltorch_cpu -ltorch_cuda -ltorch_python -lcudart -fopenmp"
  objs=""
  for f in "$src"/*.cpp "$src"/cpu/*.cpp "$src"/cuda/*.cpp; do
    o=$out/obj/$(basename "$(dirname "$f")")_$(basename "$f").o; echo "build $o: cxx $f"; objs="$objs $o"
  done
  for f in "$src"/cuda/*.cu; do o=$out/obj/cu_$(basename "$f").o; echo "build $o: cu $f"; objs="$objs $o"; done
  echo "build $out/_C.abi3.so: link$objs"
} > "$out/build.ninja"
ninja -f "$out/build.ninja" -j "${JOBS:-2}"
echo "built $out/_C.abi3.so"
