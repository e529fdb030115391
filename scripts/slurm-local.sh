#!/usr/bin/env bash
# A single-node Slurm cluster on 127.0.0.1 from Debian's packages (slurm-wlm, munge), to run
# deploy/slurm/ end to end on one machine. Installs the packages if missing, writes
# /etc/slurm/slurm.conf (this node's CPUs and memory from `slurmd -C`; no cgroups, no
# accounting database; finished jobs are logged to /var/log/slurm/jobcomp.log), starts munged,
# slurmctld and slurmd as plain daemons (no systemd) and waits for the node to be idle.
# Re-running reuses a cluster that is already up. Needs root (Debian or Ubuntu).
#
# Usage: scripts/slurm-local.sh [--submit] [--bertbench PATH] [--bench-args ARGS] [-- SBATCH OPTIONS...]
#        scripts/slurm-local.sh --stop
#   --submit           also run deploy/slurm/submit.sh from the repository root (results in
#                      bench-results/<array job id>), wait for the array and the merge/report
#                      job, print the time taken and the tail of their logs; exit non-zero if
#                      any job failed
#   --bertbench PATH   the binary the jobs run (default: $BERTBENCH, else target/release/bertbench)
#   --bench-args ARGS  `bertbench bench` flags for every shard (default: $BENCH_ARGS, else
#                      "--preset cpu-quick")
#   -- OPTIONS         sbatch options for the array (default: --cpus-per-task=1)
#   --stop             stop slurmctld, slurmd and munged
# Timing on a 2-core container: install ~20 s, start ~2 s, a trivial 4-task array + merge ~10 s.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
conf=/etc/slurm/slurm.conf
marker="# Written by bertbench's scripts/slurm-local.sh"
jobcomp=/var/log/slurm/jobcomp.log
die() { echo "slurm-local.sh: error: $*" >&2; exit 1; }
log() { echo "slurm-local.sh: $*"; }

submit=false stop=false sbatch_args=()
bertbench=${BERTBENCH:-$repo/target/release/bertbench}
bench_args=${BENCH_ARGS:---preset cpu-quick}
while (($#)); do
  case $1 in
    --submit) submit=true ;;
    --stop) stop=true ;;
    --bertbench) bertbench=${2:?--bertbench needs a path}; shift ;;
    --bench-args) bench_args=${2?--bench-args needs a value}; shift ;;
    --) shift; sbatch_args=("$@"); break ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
((EUID == 0)) || die "run as root: it installs packages and starts system daemons"

running() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

if $stop; then
  if running /run/slurmctld.pid; then scontrol shutdown >/dev/null; fi
  if running /run/slurmd.pid; then kill "$(cat /run/slurmd.pid)"; fi
  if running /run/munge/munged.pid; then kill "$(cat /run/munge/munged.pid)"; fi
  for _ in $(seq 20); do
    running /run/slurmctld.pid || running /run/slurmd.pid || running /run/munge/munged.pid || break
    sleep 0.5
  done
  log "stopped"
  exit 0
fi

t0=$SECONDS
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  log "installing slurm-wlm and munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q slurm-wlm munge >/dev/null ||
    { apt-get update -q >/dev/null && apt-get install -y -q slurm-wlm munge >/dev/null; } ||
    die "apt-get install slurm-wlm munge failed"
  log "installed in $((SECONDS - t0)) s"
fi

# munge: the key (Debian's package usually makes it), its run folder, the daemon.
[[ -f /etc/munge/munge.key ]] || mungekey --create
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
install -d -o munge -g munge -m 755 /run/munge
if ! running /run/munge/munged.pid; then
  runuser -u munge -- munged || die "munged did not start: see /var/log/munge/munged.log"
fi
munge -n | unmunge >/dev/null || die "munge does not work: see /var/log/munge/munged.log"

# slurm.conf: written while slurmctld is down, and only over a file this script wrote.
node=$(hostname -s)
if ! running /run/slurmctld.pid; then
  if [[ -f $conf ]] && ! grep -qF "$marker" "$conf"; then
    die "$conf exists and was not written by this script: move it away first"
  fi
  hw=$(slurmd -C | head -n 1 | sed 's/^NodeName=[^ ]* //')
  install -d -o slurm -g slurm /var/spool/slurmctld /var/log/slurm
  install -d /var/spool/slurmd
  cat >"$conf" <<EOF
$marker: a single-node cluster on 127.0.0.1.
ClusterName=local
SlurmctldHost=$node(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# No cgroups in a container: track processes through /proc, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
# No accounting database (sacct does not work); finished jobs are logged here instead.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$jobcomp
NodeName=$node $hw NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  t1=$SECONDS
  slurmctld || die "slurmctld did not start: see /var/log/slurm/slurmctld.log"
fi
if ! running /run/slurmd.pid; then
  t1=${t1:-$SECONDS}
  slurmd || die "slurmd did not start: see /var/log/slurm/slurmd.log"
fi

state=
for _ in $(seq 60); do
  state=$(sinfo -h -n "$node" -o %T 2>/dev/null || true)
  case $state in
    idle | mixed | allocated | completing) break ;;
    down* | drain*) scontrol update NodeName="$node" State=RESUME || true ;;
  esac
  sleep 1
done
[[ $state =~ ^(idle|mixed|allocated|completing)$ ]] ||
  die "node $node is '${state:-not reported}' after 60 s: see /var/log/slurm/slurmd.log and slurmctld.log"
if [[ -n ${t1:-} ]]; then log "cluster started in $((SECONDS - t1)) s"; fi
log "cluster up: node $node $state ($(sinfo -h -n "$node" -o '%c CPUs, %m MB')), partition local"
$submit || exit 0

# --submit: the deploy/slurm recipe, as a user would run it.
[[ $bertbench == */* ]] && bertbench=$(realpath -m -- "$bertbench")
[[ -x $bertbench ]] || die "no bertbench binary at $bertbench (build it, or pass --bertbench PATH)"
((${#sbatch_args[@]})) || sbatch_args=(--cpus-per-task=1)
cd "$repo"
start=$SECONDS
out=$(BERTBENCH=$bertbench BENCH_ARGS=$bench_args deploy/slurm/submit.sh "${sbatch_args[@]}")
echo "$out"
array_id=$(sed -n 's/^bench array job: //p' <<<"$out")
merge_id=$(sed -n 's/^merge\/report job: \([0-9]*\).*/\1/p' <<<"$out")
results=$(sed -n 's/^results: //p' <<<"$out")
logs=$(sed -n 's/^logs: //p' <<<"$out")
[[ -n $array_id && -n $merge_id ]] || die "could not read the job ids from submit.sh's output"

# squeue forgets a job once it ends; a merge job whose dependency fails is cancelled
# (--kill-on-invalid-dep=yes), so both leave the queue either way.
# A job that can never start (more CPUs per task than the node has) waits forever: stop it.
while squeue -h -j "$array_id,$merge_id" 2>/dev/null | grep -q .; do
  why=$(squeue -h -t PD -j "$array_id,$merge_id" -o %r 2>/dev/null | grep -E -m1 \
    'PartitionConfig|BadConstraints|PartitionNodeLimit|NeverSatisfied' || true)
  if [[ -n $why ]]; then
    scancel "$array_id" "$merge_id"
    die "the jobs cannot run here ($why): see the sbatch options, e.g. -- --cpus-per-task=1"
  fi
  sleep 2
done
log "jobs $array_id and $merge_id finished after $((SECONDS - start)) s"

for f in "$logs"/*-"$array_id"_*.out "$logs"/*-"$merge_id".out; do
  [[ -f $f ]] || continue
  echo "==> $f <=="
  tail -n 8 "$f"
done

# The last record of each task (a requeued task has several) and of the merge job.
sleep 1
states=$(grep -E "^JobId=$merge_id | ArrayJobId=$array_id " "$jobcomp" |
  sed -E 's/.*JobState=([A-Z_]+).*ArrayTaskId=([0-9]+).*/task \2 \1/; s/^JobId=[0-9]+ .*JobState=([A-Z_]+).*/merge job \1/' |
  awk '{last[$1 " " $2] = $NF} END {for (k in last) print k, last[k]}' | sort -V)
echo "$states"
if [[ -z $states ]] || grep -qv ' COMPLETED$' <<<"$states" || ! grep -q '^merge job COMPLETED$' <<<"$states"; then
  die "a job did not complete (see the logs above and in $logs)"
fi
log "all done: report in $results/report"
