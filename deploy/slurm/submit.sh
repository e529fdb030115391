#!/usr/bin/env bash
# Submits a sharded bertbench run to Slurm: the job array deploy/slurm/bench-array.sbatch (one
# shard per task) and deploy/slurm/merge-report.sbatch, which waits for every task to succeed
# (--dependency=afterok) and then merges the shards and writes the report.
#
# Usage: deploy/slurm/submit.sh [SBATCH OPTIONS FOR THE ARRAY...]
#   e.g. BENCH_ARGS="--preset cpu-quick" deploy/slurm/submit.sh --array=1-8 --cpus-per-task=8
# Environment:
#   BERTBENCH   the binary every node runs (default: bertbench on PATH); a path is made absolute
#   BENCH_ARGS  extra `bertbench bench` flags for every shard
#   RESULTS     results folder on shared storage (default: ./bench-results/<array job id>)
#   LOGS        folder for the jobs' output (default: $RESULTS/logs, or ./bench-results/logs)
# Run it from a folder on shared storage: the jobs start there and write results below it.
# Prints the job ids and where the results and logs go.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
die() { echo "submit.sh: error: $*" >&2; exit 1; }
if [[ ${1:-} == -h || ${1:-} == --help ]]; then sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0; fi
command -v sbatch >/dev/null || die "sbatch not found: run this on a Slurm login node"

if [[ ${BERTBENCH:-bertbench} == */* ]]; then
  BERTBENCH=$(realpath -- "$BERTBENCH")
  [[ -x $BERTBENCH ]] || die "BERTBENCH=$BERTBENCH is not an executable file"
fi
export BERTBENCH=${BERTBENCH:-bertbench} BENCH_ARGS=${BENCH_ARGS:-}
unset BENCH_SHARD # every task of the array numbers itself (--shard auto)
if [[ -n ${RESULTS:-} ]]; then RESULTS=$(realpath -m -- "$RESULTS"); export RESULTS; fi
logs=$(realpath -m -- "${LOGS:-${RESULTS:-bench-results}/logs}")
mkdir -p "$logs"

# --parsable prints "id" or "id;cluster". The jobs get this environment (--export=ALL). The
# array is held until its default results folder is known to be new: job ids can repeat
# (a cluster's state reset), and --resume would continue an older run's shards.
array_id=$(sbatch --parsable --hold --export=ALL --output="$logs/%x-%A_%a.out" "$@" \
  "$here/bench-array.sbatch")
array_id=${array_id%%;*}
[[ $array_id =~ ^[0-9]+$ ]] || die "sbatch returned no job id"
if [[ -z ${RESULTS:-} ]]; then
  RESULTS=$PWD/bench-results/$array_id
  if [[ -e $RESULTS ]]; then
    scancel "$array_id"
    die "$RESULTS already exists (a job id used again?): move it away, or set RESULTS"
  fi
  export RESULTS
fi
mkdir -p "$RESULTS"
# Released even when it cannot start now (scontrol says why), as sbatch without --hold would.
scontrol release "$array_id" || echo "submit.sh: warning: job $array_id may not start (above)" >&2
merge_id=$(sbatch --parsable --export=ALL --output="$logs/%x-%j.out" \
  --dependency="afterok:$array_id" --kill-on-invalid-dep=yes "$here/merge-report.sbatch")
merge_id=${merge_id%%;*}
[[ $merge_id =~ ^[0-9]+$ ]] || die "sbatch returned no job id for the merge job (array $array_id is submitted)"

echo "bench array job: $array_id"
echo "merge/report job: $merge_id (starts when every task of $array_id has succeeded)"
echo "results: $RESULTS"
echo "report: $RESULTS/report"
echo "logs: $logs"
echo "watch: squeue -j $array_id,$merge_id"
