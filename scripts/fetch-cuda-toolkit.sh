#!/usr/bin/env bash
# Fetches a CUDA compiler and headers (no driver, no GPU needed) from NVIDIA's PyPI wheels, so
# `cargo check --features cuda` can run on a machine without CUDA installed (see
# scripts/check-cuda.sh). All five wheels are one release, CUDA 13.0: a newer nvvm beside an
# older ptxas fails with "Unsupported .version", cudarc 0.19.10 (Cargo.lock) accepts toolkits up to
# 13.4 only, and the cu12 nvcc wheel carries no `nvcc` binary. Wheels are downloaded with pip (no
# dependencies), checked against the hashes below and unpacked into the ignored folder
# .cache/cuda/13.0; the toolkit root is .cache/cuda/13.0/nvidia/cu13 (bin/nvcc, include/, lib/).
# Idempotent: does nothing when that folder is complete for this exact set of wheels.
# Prints the toolkit root on stdout.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/.cache/cuda/13.0"
wheels="$root/.cache/wheels"
toolkit="$dest/nvidia/cu13"
export PIP_ROOT_USER_ACTION=ignore  # CI runs as root; pip's warning is noise here

# name==version sha256-of-the-manylinux-x86_64-wheel
pins="
nvidia-cuda-nvcc==13.0.88 56fe502eb77625a12f25172caa3cdddb4e4c8ba2c8c17dba44b164761b380f03
nvidia-cuda-runtime==13.0.96 7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548
nvidia-cuda-cccl==13.0.85 e0da7ad981f3a8aff08241b5bfc1af868742a63e2762f53a5171c492ef242649
nvidia-nvvm==13.0.88 c5f41ffeb6466944a026dfa5317d7d85355c119bbec279205d22f1869d1054e0
nvidia-cuda-crt==13.0.88 2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4
"
stamp_want=$(echo "$pins" | sha256sum | cut -d' ' -f1)

if [ -x "$toolkit/bin/nvcc" ] && [ "$(cat "$dest/.complete" 2>/dev/null)" = "$stamp_want" ]; then
  echo "$toolkit"
  exit 0
fi

mkdir -p "$wheels"
specs=$(echo "$pins" | awk 'NF { print $1 }')
# shellcheck disable=SC2086  # one argument per pin
python3 -m pip download --quiet --no-deps --disable-pip-version-check \
  --only-binary=:all: --platform manylinux2014_x86_64 --python-version 3.11 \
  --dest "$wheels" $specs >&2
files=()
while read -r spec sha; do
  [ -n "$spec" ] || continue
  name=${spec%%==*}
  version=${spec##*==}
  wheel=$(ls "$wheels/${name//-/_}-$version-"*.whl | head -n 1)
  echo "$sha  $wheel" | sha256sum -c --quiet -
  files+=("$wheel")
done <<<"$pins"

tmp="$root/.cache/cuda/.tmp.$$"
trap 'rm -rf "$tmp"' EXIT
rm -rf "$tmp"
# pip unpacks the wheels as they are (keeping nvcc, ptxas, cicc executable); nothing is
# installed outside $tmp and no index is consulted.
python3 -m pip install --quiet --no-deps --no-index --disable-pip-version-check \
  --no-warn-script-location --target "$tmp" "${files[@]}" >&2
"$tmp/nvidia/cu13/bin/nvcc" --version | grep -q 'release 13.0,'
echo "$stamp_want" >"$tmp/.complete"
rm -rf "$dest"
mv "$tmp" "$dest"
echo "CUDA 13.0 toolkit (nvcc, headers) ready in $toolkit" >&2
echo "$toolkit"
