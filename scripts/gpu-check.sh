#!/usr/bin/env bash
# The GPU check (docs/gpu.md), in two halves, because the GPU machines this project borrows
# have no network and about 15 minutes in all.
#
# Here (no GPU needed):
#   scripts/gpu-check.sh prepare [DIR]        build `--release --features cuda` (CUDA 13.0 nvcc and
#                                             headers from PyPI, scripts/fetch-cuda-toolkit.sh;
#                                             CUDA_COMPUTE_CAP=90 unless set) and gather into DIR
#                                             (default .cache/gpu-check, ignored) everything the
#                                             other half needs: the binary (gzipped), the
#                                             parity fixtures, a slice of the dev set, the
#                                             vocabulary, scripts/gpu_check.py and, for a
#                                             machine without one, a stub libcurand
#                                             (scripts/cuda-stubs.py). Copy DIR over whole.
#   scripts/gpu-check.sh prepare --cpu [DIR]  the same with the CPU build, for a dry run here
# There (the GPU machine, PyTorch and transformers installed):
#   python3 DIR/gpu_check.py OUT [--device cuda:0] [--budget-s 480]
#   (here, the dry run: python3 DIR/gpu_check.py OUT --device cpu --quick)
#
#   SHARED=dir   the shared data (default ../shared beside the checkout)
#   QUESTIONS=n  questions in the dev slice (default 200)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
shared=${SHARED:-$root/../shared}
questions=${QUESTIONS:-200}

[ "${1:-}" = prepare ] || { sed -n '2,21p' "$0" >&2; exit 2; }
shift
cpu=0
if [ "${1:-}" = --cpu ]; then cpu=1; shift; fi
dir=${1:-$root/.cache/gpu-check}

for f in "$shared/fixtures/parity/index.json" "$shared/data/squad/dev-v1.1.json.gz" \
         "$shared/vocab/bert-base-uncased-vocab.txt"; do
  [ -f "$f" ] || { echo "missing $f (set SHARED=dir)" >&2; exit 2; }
done

if [ "$cpu" = 1 ]; then
  cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin bertbench
  target=$root/target/release
else
  cuda=$(bash "$root/scripts/fetch-cuda-toolkit.sh")
  export PATH="$cuda/bin:$PATH" NVCC="$cuda/bin/nvcc"
  export CUDA_ROOT="$cuda" CUDA_PATH="$cuda" CUDA_HOME="$cuda"
  export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
  # candle-kernels compiles its kernels through cudaforge, which runs nvcc on half the CPUs
  # unless told: all of them (measured in docs/architecture.md).
  export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-$(nproc)}"
  # Its own target folder: the CUDA build does not evict the CPU one.
  export CARGO_TARGET_DIR="$root/target/cuda"
  # Link against stubs of the CUDA libraries (scripts/cuda-stubs.py): the binary records their
  # sonames and the GPU machine's real libraries are found by them at start-up. `cargo rustc`
  # gives the stubs' folder to the final link only, so no dependency is rebuilt for it.
  cudarc=$(cargo metadata --format-version 1 --locked --features cuda --manifest-path "$root/Cargo.toml" |
    python3 -c 'import json, os, sys
print(next(os.path.dirname(p["manifest_path"]) for p in json.load(sys.stdin)["packages"]
           if p["name"] == "cudarc"))')
  stubs=$(python3 "$root/scripts/cuda-stubs.py" "$cudarc" "$root/.cache/cuda/stubs")
  # candle-kernels' MoE kernels link the CUDA runtime: the toolkit's real one (its soname,
  # libcudart.so.13, is what PyTorch's nvidia-cuda-runtime wheel provides there).
  ln -sf "$cuda/lib/libcudart.so.13" "$stubs/libcudart.so"
  cargo rustc --release --features cuda --manifest-path "$root/Cargo.toml" --bin bertbench \
    -- -L "native=$stubs"
  target=$CARGO_TARGET_DIR/release
fi

rm -rf "$dir"
mkdir -p "$dir/fixtures"
# Stripped and gzipped (gpu_check.py unpacks it): the CUDA build embeds candle's kernels, 65 MB
# stripped, beyond what travels to the GPU machine; 18 MB gzipped.
strip -o "$dir/bertbench.tmp" "$target/bertbench"
gzip -6 -c "$dir/bertbench.tmp" >"$dir/bertbench.gz"
rm "$dir/bertbench.tmp"
cp -r "$shared/fixtures/parity" "$dir/fixtures/parity"
chmod -R u+w "$dir"  # the shared copies are read-only; a later prepare removes this folder
# The fixtures' pytorch_model.bin duplicate their safetensors: transformers reads either.
find "$dir/fixtures/parity" -name pytorch_model.bin -delete
cp "$shared/vocab/bert-base-uncased-vocab.txt" "$dir/vocab.txt"
chmod u+w "$dir/vocab.txt"
cp "$root/scripts/gpu_check.py" "$dir/gpu_check.py"
if [ "$cpu" = 0 ]; then
  # Put on the loader's path there only when the machine has no libcuRAND (gpu_check.py).
  mkdir -p "$dir/curand-stub"
  cp "$stubs/libcurand.so.10" "$dir/curand-stub/"
fi
python3 - "$shared/data/squad/dev-v1.1.json.gz" "$dir/dev-slice.json" "$questions" <<'EOF'
import gzip, json, sys
src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = json.load(gzip.open(src))
out, left = [], n
for article in data["data"]:
    paragraphs = []
    for p in article["paragraphs"]:
        qas = p["qas"][:left]
        if qas:
            paragraphs.append({"context": p["context"], "qas": qas})
            left -= len(qas)
        if left == 0:
            break
    if paragraphs:
        out.append({"title": article["title"], "paragraphs": paragraphs})
    if left == 0:
        break
json.dump({"version": data["version"], "data": out}, open(dst, "w"))
EOF
size=$(du -sm "$dir" | cut -f1)
echo "gathered $dir (${size} MiB): copy it over whole, then run" >&2
echo "  python3 $(basename "$dir")/gpu_check.py OUT --device cuda:0" >&2
if [ "$size" -gt 60 ]; then echo "warning: more than 60 MiB" >&2; fi
echo "$dir"
