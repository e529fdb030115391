#!/usr/bin/env bash
# Accuracy check (not a test, not run in CI): bertbench's `eval` and `train` side by side with
# transformers + PyTorch on the same checkpoint, windows and data order. Sets up the Python
# environment (shared with bench-vs-python.sh), the binary and the probe example, then runs
# scripts/accuracy_vs_transformers.py with every argument passed through (see --help there).
#
# usage: scripts/accuracy-vs-transformers.sh [--steps 300] [--seeds 1 2] [--dev-questions 500] ...
#        scripts/accuracy-vs-transformers.sh --eval-only CHECKPOINT_DIR [--dev-questions N]
#   BENCH_VENV=dir   virtualenv to use or create (default .cache/pyenv)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=python-env.sh
source "$root/scripts/python-env.sh"
python_env torch transformers safetensors matplotlib onnxruntime onnx onnxscript psutil

help=0
for arg in "$@"; do
  case "$arg" in -h|--help) help=1 ;; esac
done
if [ "$help" = 0 ]; then
  bash "$root/scripts/fetch-minilm.sh"
  cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin bertbench --example accuracy_probe
fi
export BERTBENCH="$root/target/release/bertbench"
export BERTBENCH_PROBE="$root/target/release/examples/accuracy_probe"
exec "$venv/bin/python" "$root/scripts/accuracy_vs_transformers.py" "$@"
