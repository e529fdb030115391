#!/usr/bin/env bash
# Benchmark (not a test, not run in CI): `bertbench serve` against transformers' QA pipeline
# behind FastAPI on PyTorch and on ONNX Runtime, driven open-loop by oha at a ladder of rates.
# Sets up its own Python environment (transformers 4.x: 5 removed the QA pipeline), oha (from
# crates.io) and the binary, then runs scripts/serve_vs_python.py with every argument passed
# through (see --help there).
#
# usage: scripts/serve-vs-python.sh [--models distilbert-base-uncased bert-base-uncased] \
#            [--precision fp32|int8] [--questions 200] [--duration 15s] [--p99-bound 300] ...
#   BERTBENCH=path/to/bertbench  use this binary instead of building target/release/bertbench
#   OHA=path/to/oha              use this oha instead of installing it into .cache/oha
#   SERVE_VENV=dir               virtualenv to use or create (default .cache/serve-pyenv)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${SERVE_VENV:-"$root/.cache/serve-pyenv"}
if [ ! -x "$venv/bin/python" ]; then
  echo "creating the Python environment in $venv (a few GB)..." >&2
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import sys, transformers, torch, fastapi, uvicorn, onnxruntime, onnx; sys.exit(int(transformers.__version__.split('.')[0]) != 4)" 2>/dev/null; then
  "$venv/bin/pip" install --quiet "transformers>=4.40,<5" torch fastapi uvicorn \
    onnxruntime onnx safetensors
fi
help=0
for arg in "$@"; do
  case "$arg" in -h|--help) help=1 ;; esac
done
if [ "$help" = 0 ]; then
  if [ -z "${BERTBENCH:-}" ]; then
    cargo build --release --quiet --manifest-path "$root/Cargo.toml"
    BERTBENCH="$root/target/release/bertbench"
  fi
  if [ -z "${OHA:-}" ]; then
    OHA="$root/.cache/oha/bin/oha"
    if [ ! -x "$OHA" ]; then
      echo "installing oha from crates.io into .cache/oha (a few minutes)..." >&2
      cargo install --quiet --locked --root "$root/.cache/oha" oha
    fi
  fi
fi
export BERTBENCH=${BERTBENCH:-} OHA=${OHA:-}
exec "$venv/bin/python" "$root/scripts/serve_vs_python.py" "$@"
