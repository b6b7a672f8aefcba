#!/usr/bin/env bash
# launch/mpirun.sh — starts a moe-asr command on one or more nodes with Open MPI's mpirun: one rank per
# GPU (or per CPU socket/core group on CPU nodes), the environment of launch/env.sh on every rank,
# signals forwarded so that a preemption reaches the ranks, and the last lines of every rank's log
# printed when the job fails.
#
#   launch/mpirun.sh [--hosts n1,n2 | --hostfile FILE] [--ranks_per_node N] [--np N] [--] COMMAND...
#
#   # 2 nodes x 8 GPUs:
#   launch/mpirun.sh --hosts node1,node2 --ranks_per_node 8 -- \
#       build/cli/moe-asr train --config conf/moe.yaml --train_data data/train/manifest.jsonl \
#       --cv_data data/dev/manifest.jsonl --model_dir exp/moe --resume auto
#   # this machine, 2 ranks:
#   launch/mpirun.sh --np 2 -- build/cli/moe-asr train ...
#   # inside a Slurm allocation (sbatch/salloc): no hosts needed, mpirun reads the allocation
#   launch/mpirun.sh -- build/cli/moe-asr train ...
#
# Without --np the rank count is (number of hosts) x ranks_per_node, or the Slurm allocation's task
# count. Extra mpirun options: MPIRUN_ARGS="--mca btl_tcp_if_include eth0" launch/mpirun.sh ...
#
# Signals: SIGUSR1 and SIGTERM sent to this script reach every rank as SIGUSR1 (moe-asr train then
# finishes its step, writes a checkpoint and exits with 75); a second SIGTERM is passed on as SIGTERM.
# Exit code: mpirun's (0 done, 75 preempted and checkpointed: rerun with --resume auto, else failed).
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=launch/env.sh
source "$here/env.sh"

hosts="" hostfile="" ppn="" np=""
while (($#)); do
  case "$1" in
    --hosts) hosts="$2"; shift 2 ;;
    --hostfile) hostfile="$2"; shift 2 ;;
    --ranks_per_node | --ranks-per-node) ppn="$2"; shift 2 ;;
    --np | -np | -n) np="$2"; shift 2 ;;
    --) shift; break ;;
    -h | --help) sed -n '2,26p' "$0"; exit 0 ;;
    -*) echo "mpirun.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) break ;;
  esac
done
if (($# == 0)); then
  echo "mpirun.sh: no command given (see --help)" >&2
  exit 2
fi

args=(--bind-to none)
if [[ -n "$hosts" ]]; then
  n_hosts=$(tr ',' '\n' <<<"$hosts" | grep -c .)
  ppn="${ppn:-1}"
  host_list=$(tr ',' '\n' <<<"$hosts" | sed "s/\$/:$ppn/" | paste -sd, -)
  args+=(--host "$host_list")
  np="${np:-$((n_hosts * ppn))}"
elif [[ -n "$hostfile" ]]; then
  args+=(--hostfile "$hostfile")
fi
if [[ -n "$ppn" ]]; then args+=(--map-by "ppr:$ppn:node"); fi
if [[ -n "$np" ]]; then args+=(-np "$np"); fi
# More ranks than cores (CPU tests on small machines) needs --oversubscribe.
if [[ -z "${SLURM_JOB_ID:-}" && -z "$hosts$hostfile" && -n "$np" ]] && ((np > $(nproc))); then
  args+=(--oversubscribe)
fi
for v in "${MOEASR_ENV_VARS[@]}"; do
  if [[ -n "${!v+x}" ]]; then args+=(-x "$v"); fi
done
# shellcheck disable=SC2206
extra=(${MPIRUN_ARGS:-})

echo "mpirun.sh: mpirun ${args[*]} ${extra[*]} $*" >&2
mpirun "${args[@]}" "${extra[@]}" "$@" &
child=$!
terms=0
# shellcheck disable=SC2317  # trap handlers
on_usr1() { kill -USR1 "$child" 2>/dev/null; }
# shellcheck disable=SC2317
on_term() {
  terms=$((terms + 1))
  if ((terms == 1)); then kill -USR1 "$child" 2>/dev/null; else kill -TERM "$child" 2>/dev/null; fi
}
trap on_usr1 USR1
trap on_term TERM
# `wait` returns early (status > 128) when a trapped signal arrives: wait again until mpirun is gone.
while true; do
  wait "$child"
  rc=$?
  if ! kill -0 "$child" 2>/dev/null; then break; fi
done

if ((rc != 0 && rc != 75)); then
  # The model directory, to show the end of every rank's log (ESPnet's launcher prints the last lines).
  model_dir=""
  prev=""
  for a in "$@"; do
    if [[ "$prev" == "--model_dir" || "$prev" == "--model-dir" ]]; then model_dir="$a"; fi
    case "$a" in --model_dir=* | --model-dir=*) model_dir="${a#*=}" ;; esac
    prev="$a"
  done
  if [[ -n "$model_dir" && -d "$model_dir/log" ]]; then
    for f in "$model_dir"/log/train.rank*.log; do
      [[ -f "$f" ]] || continue
      echo "==== last lines of $f" >&2
      tail -n 20 "$f" >&2
    done
  fi
  echo "mpirun.sh: the job failed (exit $rc)" >&2
fi
exit "$rc"
