#!/usr/bin/env bash
# Compiles the CUDA build of the embeddings server,
#   cargo build --locked --features cuda -p modalkit-examples --bin embeddings
# on a machine with no GPU and no CUDA toolkit: NVIDIA's compiler, headers
# and libraries come from PyPI wheels installed into .venv-cuda. Run it
# before every release (it is not part of CI) to catch code that only breaks
# with `--features cuda`.
#
# Time: the first run downloads about 0.65 GB of wheels (1.2 GB installed,
# a minute or two); later runs reuse .venv-cuda (about 30 s to check it and
# remake the links). nvcc takes about 2 minutes of CPU for candle's kernels
# (sm_90, 2 cores); the rest is the Rust build of the workspace with candle's
# `cuda` feature, as long as a normal build of the same crates, and only what
# changed is rebuilt on later runs (target/ is shared with other builds).
#
# Usage:
#   scripts/build-cuda.sh [extra cargo build args, e.g. --release]
#   scripts/build-cuda.sh setup    toolchain only; prints the exports to use
#                                  it by hand (e.g. for `cargo test -F cuda`)
# Env: CUDA_COMPUTE_CAP   GPU architecture the kernels are built for
#                         (default 90 = H100/H200; 80 = A100, 86 = A10G)
#      NVCC_CCBIN         host compiler for nvcc (default: g++ on PATH)
# Full log: target/cuda-build.log.
#
# Which CUDA: 13.4. PyPI has no CUDA 12 nvcc (the nvidia-cuda-nvcc-cu12
# wheels hold only ptxas and libnvvm); CUDA 13 ships the whole compiler as
# wheels. cudarc 0.19.10 (pulled in by candle-core's `cuda` feature) knows
# CUDA up to 13.4 and reads the version from `nvcc --version`, so the pins
# below must stay at 13.4.x or lower until cudarc is upgraded.
# deploy/Dockerfile.cuda builds on the nvidia/cuda images of the same
# release (CUDA_TOOLKIT below; deploy/tests checks that its CUDA_VERSION is
# this one).
#
# What the build needs, from the crates' build scripts:
# - nvcc on PATH (bindgen_cuda runs `nvcc --ptx` and `nvcc -c` for
#   candle-kernels, cudarc runs `nvcc --version`), a host g++, CUDA_COMPUTE_CAP
#   (else bindgen_cuda runs nvidia-smi), and CUDA_PATH/CUDA_ROOT pointing at a
#   folder with include/cuda.h.
# - At link time, because candle-core turns on cudarc's `dynamic-linking`:
#   libcuda, libnvrtc, libcurand, libcublas, libcublasLt (cudarc) and libcudart
#   (candle-kernels), under the unversioned names libX.so, in CUDA_ROOT/lib64
#   or CUDA_ROOT/lib64/stubs. The wheels ship libX.so.N only, so symlinks are
#   made. libcuda is the driver and no wheel has it: a stub libcuda.so
#   (soname libcuda.so.1) is generated that defines every cu* function
#   cudarc's bindings name, each returning CUDA_ERROR_UNKNOWN. It exists
#   only for the linker, in lib64/stubs, never on a library path.
#
# The binary built here runs only where there is a GPU with a real NVIDIA
# driver (libcuda.so.1) recent enough for CUDA 13.4: candle's kernels are
# PTX 9.4, which the driver compiles when the binary starts, and an older
# driver rejects it. It also needs the CUDA 13 libraries libcudart.so.13,
# libcublas.so.13, libcublasLt.so.13, libnvrtc.so.13 and libcurand.so.10
# (e.g. .venv-cuda/cuda/lib64 on LD_LIBRARY_PATH, or a CUDA 13 runtime
# image). It needs nothing from the stub. The build itself needs no
# LD_LIBRARY_PATH: no build script loads a CUDA library.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

venv=$root/.venv-cuda
cuda=$venv/cuda
# One CUDA release, as PyPI's cuda-toolkit==13.4.3 pins it.
CUDA_TOOLKIT=13.4.3
wheels=(
  nvidia-cuda-nvcc==13.4.92      # nvcc, cudafe++, ptxas, fatbinary, nvlink
  nvidia-nvvm==13.4.92           # cicc and libdevice, nvcc's device compiler
  nvidia-cuda-crt==13.4.92       # include/crt, nvcc's own headers
  nvidia-cuda-runtime==13.4.92   # cuda.h, cuda_runtime.h, cuda_fp16/bf16/fp8.h, libcudart
  nvidia-cuda-cccl==13.3.4.3.1   # include/cccl: thrust, cub, libcu++ (cuda/std/...)
  nvidia-cuda-nvrtc==13.4.92     # libnvrtc
  nvidia-cublas==13.8.0.4        # libcublas, libcublasLt
  nvidia-curand==10.4.4.72       # libcurand
)

# --- 1. the wheels -----------------------------------------------------------
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check "${wheels[@]}"
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')
cu13=$site/nvidia/cu13   # every CUDA 13 wheel unpacks into this one tree
for f in bin/nvcc nvvm/bin/cicc include/cuda.h include/cuda_runtime.h include/cccl/thrust; do
  [ -e "$cu13/$f" ] || { echo "build-cuda: $cu13/$f missing after pip install" >&2; exit 1; }
done

# --- 2. a CUDA_ROOT made of links into the wheels ----------------------------
# bin, include, nvvm and lib point at the wheels' tree, so nvcc finds its
# headers, cicc and libdevice through its nvcc.profile either way it resolves
# its own path. lib64 holds the unversioned names that the linker needs.
mkdir -p "$cuda/lib64/stubs"
for d in bin include nvvm lib; do
  ln -sfn "$cu13/$d" "$cuda/$d"
done
for lib in "$cu13"/lib/lib*.so.*; do
  name=$(basename "$lib")
  ln -sfn "$lib" "$cuda/lib64/$name"          # libcublasLt.so.13 etc., for NEEDED entries
  ln -sfn "$lib" "$cuda/lib64/${name%%.so.*}.so"
done

# The driver stub. Its symbol list: every function declared by cuda.h (legacy
# ABI names included) plus every cu* function in the driver bindings of each
# cudarc version in Cargo.lock, read from the crate files `cargo fetch` keeps.
cargo fetch --locked --target "$(rustc -vV | sed -n 's/^host: //p')" >/dev/null
stub_dir=$(mktemp -d)
trap 'rm -rf "$stub_dir"' EXIT
printf '#define __CUDA_API_VERSION_INTERNAL 1\n#include <cuda.h>\n' \
  | cc -E -P -I"$cuda/include" -x c - \
  | tr -s ' \n' ' ' | grep -oE '\bcu[A-Z][A-Za-z0-9_]* *\(' | tr -d ' (' > "$stub_dir/names"
cargo_home=${CARGO_HOME:-$HOME/.cargo}
found=0
while read -r v; do
  for crate in "$cargo_home"/registry/cache/*/"cudarc-$v.crate"; do
    [ -f "$crate" ] || continue
    tar -xzOf "$crate" "cudarc-$v/src/driver/sys/mod.rs" \
      | grep -oE 'pub unsafe fn cu[A-Z][A-Za-z0-9_]*' | awk '{ print $4 }' >> "$stub_dir/names"
    found=1
    break
  done
done < <(awk '/^name = "cudarc"$/ { getline; gsub(/"/, "", $3); print $3 }' Cargo.lock)
[ "$found" = 1 ] || echo "build-cuda: no cudarc crate in $cargo_home/registry/cache; libcuda stub made from cuda.h only" >&2
sort -u "$stub_dir/names" | awk '{ printf "int %s(void) { return 999; }\n", $1 }' > "$stub_dir/cuda_stub.c"
cc -shared -fPIC -o "$cuda/lib64/stubs/libcuda.so" -Wl,-soname,libcuda.so.1 "$stub_dir/cuda_stub.c"

# --- 3. the environment the build scripts read -------------------------------
export CUDA_ROOT=$cuda CUDA_PATH=$cuda CUDA_HOME=$cuda CUDA_TOOLKIT_ROOT_DIR=$cuda
unset CUDNN_LIB CUDARC_CUDA_VERSION   # both would override what is set up here
export PATH=$cuda/bin:$PATH
export LIBRARY_PATH=$cuda/lib64:$cuda/lib64/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
nvcc --version | sed -n 4p

if [ "${1:-}" = setup ]; then
  cat <<EOF
export CUDA_ROOT=$cuda CUDA_PATH=$cuda CUDA_HOME=$cuda CUDA_TOOLKIT_ROOT_DIR=$cuda
export PATH=$cuda/bin:\$PATH
export LIBRARY_PATH=$LIBRARY_PATH
export CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP
EOF
  exit 0
fi

# --- 4. the build ------------------------------------------------------------
target_dir=${CARGO_TARGET_DIR:-$root/target}
mkdir -p "$target_dir"
log=$target_dir/cuda-build.log
set +e
cargo build --locked --features cuda -p modalkit-examples --bin embeddings "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
echo "--- last lines of $log ---"
tail -n 15 "$log"
if [ "$status" -eq 0 ]; then
  echo "build-cuda: OK (CUDA 13.4, sm_$CUDA_COMPUTE_CAP)"
else
  echo "build-cuda: cargo build failed (exit $status); full log in $log" >&2
fi
exit "$status"
