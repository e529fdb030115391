#!/usr/bin/env bash
# Sourced by the side-by-side scripts (bench-vs-python.sh, accuracy-vs-transformers.sh): makes
# sure the shared Python environment exists and has the given packages, installing what is
# missing from PyPI. Sets $venv.
#   usage: source scripts/python-env.sh; python_env torch transformers ...
#   BENCH_VENV=dir   virtualenv to use or create (default .cache/pyenv)
python_env() {
  local root
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  venv=${BENCH_VENV:-"$root/.cache/pyenv"}
  if [ ! -x "$venv/bin/python" ]; then
    echo "creating the Python environment in $venv (a few GB)..." >&2
    python3 -m venv "$venv"
  fi
  local missing=()
  for pkg in "$@"; do
    "$venv/bin/python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('${pkg//-/_}') is None)" \
      || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    "$venv/bin/pip" install --quiet "${missing[@]}"
  fi
}
