#!/usr/bin/env bash
# Benchmark (not a test): the study's three models served under load, MLPerf-style, through
# bertbench's batching server: SingleStream (p90 latency), Offline (samples/s) and Server (the
# highest Poisson rate whose p90 latency meets a bound), with queries from the SQuAD dev set.
# Random weights (speed does not depend on them), the bert-base-uncased vocabulary from a
# tokenizer folder, the built-in price of a 2-vCPU cloud instance for the cost line. Prints a
# Markdown table; run it on an idle machine (about 15 minutes on 2 cores).
#
# usage: scripts/loadgen-models.sh DEV_JSON TOKENIZER_DIR [OUTPUT_DIR] [extra loadgen flags...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dev=${1:?usage: loadgen-models.sh DEV_JSON TOKENIZER_DIR [OUTPUT_DIR] [flags...]}
tok=${2:?usage: loadgen-models.sh DEV_JSON TOKENIZER_DIR [OUTPUT_DIR] [flags...]}
out=${3:-"$root/loadgen-results/models-$(date +%Y%m%d-%H%M%S)"}
shift 3 || shift $#
bin=${BERTBENCH:-}
if [ -z "$bin" ]; then
  cargo build --release --quiet --manifest-path "$root/Cargo.toml"
  bin="$root/target/release/bertbench"
fi
# Run lengths for a 2-core CPU (MLPerf's are --mlperf-durations): 15 s and 64 queries per run
# (enough for a 99%-confidence bound on the 90th percentile, which needs 44), 128 for Offline.
common=(--random-init --tokenizer "$tok" --dataset "$dev" --min-duration 15s
        --prices builtin --machine hf-aws-intel-spr-x2)
for model in bert-base-uncased distilbert-base-uncased squeezebert/squeezebert-uncased; do
  dir="$out/${model##*/}"
  "$bin" loadgen --model "$model" "${common[@]}" --scenario single-stream --min-query-count 64 \
    --output-dir "$dir/single-stream" "$@" >/dev/null
  "$bin" loadgen --model "$model" "${common[@]}" --scenario offline --min-query-count 128 \
    --output-dir "$dir/offline" "$@" >/dev/null
  "$bin" loadgen --model "$model" "${common[@]}" --scenario server --min-query-count 64 \
    --percentile 90 --target-latency 500ms --search-tolerance 0.1 --max-runs 8 \
    --output-dir "$dir/server" "$@" >/dev/null
done
python3 - "$out" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
rows = {}
for p in sorted(out.glob("*/*/loadgen.json")):
    r = json.loads(p.read_text())
    rows.setdefault(p.parent.parent.name, {})[r["scenario"]] = r
first = next(iter(next(iter(rows.values())).values()))
print(f"Machine: {first['setup']['cpu']}, {first['setup']['threads']} threads, "
      f"{first['setup']['isa']} kernels; bertbench {first['git_commit'][:7]}, {first['date'][:16]}.\n")
print("| model | SingleStream p90 ms (queries) | Offline samples/s | Server max QPS, p90 <= 500 ms "
      "(runs) | p90 at that rate ms | $ per million questions at that rate |")
print("|---|---:|---:|---:|---:|---:|")
for model, s in rows.items():
    ss, off, sv = s["single-stream"], s["offline"], s["server"]
    best = sv["metric"]
    at = [x for x in sv["runs"] if x["target_qps"] == best]
    p90 = f"{at[0]['latency']['p90_ms']:.0f}" if at else "-"
    cost = f"{sv['cost']['usd_per_million_questions']:.2f}" if sv.get("cost") else "-"
    print(f"| {model} | {ss['metric']:.0f} ({ss['runs'][0]['queries']}) | {off['metric']:.2f} | "
          f"{best if best is None else f'{best:.2f}'} ({len(sv['runs'])}) | {p90} | {cost} |")
PY
echo "folders: $out"
