#!/usr/bin/env bash
# Benchmark (not a test, not run in CI): bertbench's fp32 CPU inference side by side with
# PyTorch + transformers (eager) and ONNX Runtime (CPU EP), or with --training a training step
# against PyTorch. Sets up the Python environment and the binary, then runs
# scripts/bench_vs_python.py with every argument passed through (see --help there).
#
# usage: scripts/bench-vs-python.sh [--models ...] [--shapes 1x8 8x128 ...] [--rounds N] ...
#   BERTBENCH=path/to/bertbench  use this binary instead of building target/release/bertbench
#   BENCH_VENV=dir               virtualenv to use or create (default .cache/pyenv)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=python-env.sh
source "$root/scripts/python-env.sh"
python_env torch transformers onnxruntime onnx onnxscript safetensors psutil

help=0
for arg in "$@"; do
  case "$arg" in -h|--help) help=1 ;; esac
done
if [ -z "${BERTBENCH:-}" ] && [ "$help" = 0 ]; then
  cargo build --release --quiet --manifest-path "$root/Cargo.toml"
  BERTBENCH="$root/target/release/bertbench"
fi
export BERTBENCH=${BERTBENCH:-}
exec "$venv/bin/python" "$root/scripts/bench_vs_python.py" "$@"
