#!/usr/bin/env bash
# Type-checks the GPU build (`--features cuda`) on a machine with no GPU and no CUDA installed,
# so the CUDA path cannot rot unnoticed. It uses the CUDA 13.0 compiler and headers from PyPI
# (scripts/fetch-cuda-toolkit.sh, into the ignored .cache/cuda/) and targets compute capability
# 9.0 (H100/H200) unless CUDA_COMPUTE_CAP is set. Nothing is linked, so no driver (libcuda) or
# cuBLAS is needed; `cargo check` still runs candle-kernels' build script, which compiles its
# kernels with nvcc: minutes the first time, seconds afterwards while target/ keeps
# its output (the toolkit path, CUDA_COMPUTE_CAP and the nvcc version are part of that cache key).
# Extra arguments go to cargo, e.g. `scripts/check-cuda.sh --all-targets`.
set -euo pipefail
cd "$(dirname "$0")/.."

cuda=$(bash scripts/fetch-cuda-toolkit.sh)
export PATH="$cuda/bin:$PATH"
export NVCC="$cuda/bin/nvcc"
# cudarc reads the toolkit version from `nvcc --version` and its root from these variables.
export CUDA_ROOT="$cuda" CUDA_PATH="$cuda" CUDA_HOME="$cuda"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
# candle-kernels compiles its kernels through cudaforge, which runs nvcc on half the CPUs
# unless told: all of them (measured in docs/architecture.md).
export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-$(nproc)}"

cargo check --release --features cuda "$@"
