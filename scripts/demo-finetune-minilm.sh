#!/usr/bin/env bash
# A fine-tuning demonstration: the real all-MiniLM-L6-v2 checkpoint (no QA head),
# fine-tuned on the first N questions of the derived SQuAD train set, with dev F1 on a fixed
# subset before and after. CPU-sized; every number it prints is measured.
#
# usage: scripts/demo-finetune-minilm.sh [OUT_DIR] [TRAIN_QUESTIONS] [DEV_QUESTIONS]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-"$root/demo-results/minilm-$(date +%Y%m%d-%H%M%S)"}
n_train=${2:-2000}
n_dev=${3:-500}
shared="$root/../shared/data/squad"
bash "$root/scripts/fetch-minilm.sh"
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
bin="$root/target/release/bertbench"
model="$root/.cache/models/all-MiniLM-L6-v2"
common=(--max-seq-length 256 --doc-stride 96)

"$bin" eval --model "$model" --dataset "$shared/dev-v1.1.json.gz" --limit "$n_dev" \
  "${common[@]}" --output-dir "$out/eval-before"
"$bin" train --model "$model" --train-file "$shared/train-v1.1-derived.json.gz" --limit "$n_train" \
  --epochs 1 --batch-size 16 --learning-rate 1e-4 --warmup-ratio 0.1 --logging-steps 10 --save-steps 0 \
  "${common[@]}" --output-dir "$out/finetuned"
"$bin" eval --model "$out/finetuned" --dataset "$shared/dev-v1.1.json.gz" --limit "$n_dev" \
  "${common[@]}" --output-dir "$out/eval-after"
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
b = json.load(open(f"{out}/eval-before/eval_results.json"))
a = json.load(open(f"{out}/eval-after/eval_results.json"))
s = json.load(open(f"{out}/finetuned/trainer_state.json"))
print(f"dev questions: {b['questions']}; before EM {b['exact_match']:.2f} F1 {b['f1']:.2f}; "
      f"after EM {a['exact_match']:.2f} F1 {a['f1']:.2f}; training {s['global_step']} steps in {s['elapsed_s']:.0f} s")
PY
