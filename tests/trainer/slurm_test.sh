#!/usr/bin/env bash
# tests/trainer/slurm_test.sh — launch/slurm/train.sbatch on a real Slurm (label e2e):
#   1. installs slurmctld, slurmd, slurm-client and munge with apt-get when missing (quietly);
#   2. starts munged, slurmctld and slurmd in a scratch directory (private munge socket, key, state,
#      spool, logs and ports; nothing under /etc is touched), one node named after `hostname -s`, as
#      /work/shared/reference/machine_notes.md describes;
#   3. writes a tiny corpus (kill_resume_test's TinyCorpus writer: HDF5 shards, units.txt, config with
#      EP 2) and submits train.sbatch for a 2-task run; waits (with a timeout) and checks the job
#      COMPLETED with exit 0 and wrote final.h5;
#   4. submits the same run again, sends the batch shell SIGUSR1 once training is under way (what
#      --signal=B:USR1@300 does near the time limit): the ranks checkpoint and exit 75, the script
#      requeues the job, the requeued job resumes with --resume auto and completes; its final.h5 holds
#      the same parameters as the uninterrupted run's (h5diff: exact comparison of every dataset);
#   5. stops the daemons (always: trap), removes the scratch directory unless the test failed.
# Usage: slurm_test.sh <moe-asr binary> <kill_resume_test binary>
# SLURM_TEST_KEEP=1 keeps the scratch directory (it is kept anyway when the test fails).
# Exit 0 pass, 1 fail. Nothing is skipped: a machine where Slurm cannot be installed or started fails.
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cli="$(realpath "${1:?usage: slurm_test.sh <moe-asr binary> <kill_resume_test binary>}")"
corpus_writer="$(realpath "${2:?usage: slurm_test.sh <moe-asr binary> <kill_resume_test binary>}")"
timeout_s="${SLURM_TEST_TIMEOUT_S:-240}"

fail() {
  echo "slurm_test: FAIL: $*" >&2
  failed=1
  exit 1
}
log() { echo "slurm_test: $*"; }

# ---- 1. packages -----------------------------------------------------------------------------------
need=()
for p in slurmctld slurmd slurm-client munge hdf5-tools; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if ((${#need[@]})); then
  log "installing ${need[*]}"
  sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  if ! $sudo apt-get install -y -qq "${need[@]}" >/tmp/slurm_test_apt.log 2>&1; then
    $sudo apt-get update -qq >>/tmp/slurm_test_apt.log 2>&1
    $sudo apt-get install -y -qq "${need[@]}" >>/tmp/slurm_test_apt.log 2>&1 ||
      { tail -n 20 /tmp/slurm_test_apt.log >&2; echo "slurm_test: FAIL: apt-get could not install ${need[*]}" >&2; exit 1; }
  fi
fi
for b in munged slurmctld slurmd sbatch scontrol squeue h5diff mpirun; do
  command -v "$b" >/dev/null || { echo "slurm_test: FAIL: $b not found after installing" >&2; exit 1; }
done

# ---- 2. daemons in a scratch directory --------------------------------------------------------------
S="$(mktemp -d /tmp/moeasr_slurm_test.XXXXXX)"
chmod 700 "$S"
failed=0
cleanup() {
  local rc=$?
  for pidfile in "$S/slurmd.pid" "$S/slurmctld.pid" "$S/munged.pid"; do
    if [[ -s "$pidfile" ]]; then
      pid=$(cat "$pidfile")
      kill "$pid" 2>/dev/null
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null
    fi
  done
  if ((failed || rc != 0)) || [[ -n "${SLURM_TEST_KEEP:-}" ]]; then
    echo "slurm_test: scratch directory kept: $S" >&2
    for f in "$S"/slurmctld.log "$S"/slurmd.log "$S"/work/*.out; do
      [[ -f "$f" ]] && { echo "==== $f (last 30 lines)" >&2; tail -n 30 "$f" >&2; }
    done
  else
    rm -rf "$S"
  fi
}
trap cleanup EXIT

node="$(hostname -s)"
cpus="$(nproc)"
# Free TCP ports for this cluster (so a system Slurm, if any, is left alone).
read -r port_ctld port_d < <(python3 -c 'import socket
s=[socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])')

mkdir -p "$S/munge" "$S/state" "$S/spool" "$S/work"
head -c 1024 /dev/urandom >"$S/munge/munge.key"
chmod 400 "$S/munge/munge.key"
munged --force --key-file="$S/munge/munge.key" --socket="$S/munge/munge.socket" \
  --pid-file="$S/munged.pid" --log-file="$S/munged.log" --seed-file="$S/munge/munged.seed" 2>"$S/munged.err" ||
  fail "munged did not start: $(cat "$S/munged.err")"

cat >"$S/slurm.conf" <<EOF
# A one-node cluster for tests/trainer/slurm_test.sh.
ClusterName=moeasrtest
SlurmctldHost=$node
SlurmctldPort=$port_ctld
SlurmdPort=$port_d
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$S/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$S/state
SlurmdSpoolDir=$S/spool
SlurmctldPidFile=$S/slurmctld.pid
SlurmdPidFile=$S/slurmd.pid
SlurmctldLogFile=$S/slurmctld.log
SlurmdLogFile=$S/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$node CPUs=$cpus State=UNKNOWN
PartitionName=test Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
export SLURM_CONF="$S/slurm.conf"
slurmctld -f "$SLURM_CONF" >"$S/slurmctld.err" 2>&1 || fail "slurmctld did not start: $(cat "$S/slurmctld.err")"
slurmd -f "$SLURM_CONF" >"$S/slurmd.err" 2>&1 || fail "slurmd did not start: $(cat "$S/slurmd.err")"
for _ in $(seq 150); do
  state=$(sinfo -h -N -o '%t' 2>/dev/null | head -n 1)
  [[ "$state" == idle* ]] && break
  sleep 0.2
done
[[ "$state" == idle* ]] || fail "the node never became idle (sinfo state '$state')"
log "slurm up: node $node ($cpus CPUs), ports $port_ctld/$port_d, scratch $S"

# ---- 3. tiny corpus and the uninterrupted job ---------------------------------------------------------
MOEASR_TINY_CORPUS_DIR="$S/corpus" "$corpus_writer" --gtest_filter='TinyCorpus.*' >"$S/corpus.log" 2>&1 ||
  fail "the corpus writer failed: $(tail -n 20 "$S/corpus.log")"
export MOEASR_BIN="$cli" MOEASR_ROOT="$repo"
train_args=(--config "$S/corpus/conf.yaml" --train_data "$S/corpus/train.jsonl" --cv_data "$S/corpus/cv.jsonl"
  --override_config "max_epoch 30" --override_config "save_interval 10" --override_config "log_interval 2")

# job_field <id> <Field>: a field of `scontrol show job`.
job_field() { scontrol show job "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1; }

# wait_done <id> <seconds>: until the job is COMPLETED/FAILED/...; nudges (once) a requeued job whose
# begin time Slurm pushed into the future. Prints the final state. The nudge is to now+3 s, not now:
# Slurm revokes the previous run's job credential at the requeue, and a relaunch within the same second
# is refused by slurmd ("Job credential revoked").
wait_done() {
  local id=$1 deadline=$((SECONDS + $2)) st reason nudged=0
  while ((SECONDS < deadline)); do
    st=$(job_field "$id" JobState)
    reason=$(job_field "$id" Reason)
    case "$st" in
      COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY | BOOT_FAIL | DEADLINE) echo "$st"; return 0 ;;
      PENDING)
        if [[ "$reason" == BeginTime ]] && ((!nudged)); then
          scontrol update JobId="$id" StartTime=now+3 >/dev/null 2>&1
          nudged=1
        fi
        ;;
    esac
    sleep 0.5
  done
  echo "TIMEOUT_WAITING($st)"
}

cd "$S/work" || fail "no work dir"
id_ref=$(sbatch --parsable --nodes=1 --ntasks=2 --ntasks-per-node=2 --time=10 --job-name=ref \
  "$repo/launch/slurm/train.sbatch" "${train_args[@]}" --model_dir "$S/exp_ref") || fail "sbatch refused the job"
log "submitted the uninterrupted job $id_ref"
st=$(wait_done "$id_ref" "$timeout_s")
[[ "$st" == COMPLETED ]] || fail "job $id_ref ended $st: $(tail -n 30 "$S/work/ref-$id_ref.out" 2>/dev/null)"
[[ "$(job_field "$id_ref" ExitCode)" == 0:0 ]] || fail "job $id_ref exit code $(job_field "$id_ref" ExitCode)"
[[ -f "$S/exp_ref/final.h5" ]] || fail "job $id_ref wrote no final.h5"
grep -q "training finished: step 180" "$S/exp_ref/log/train.rank000.log" ||
  fail "job $id_ref did not train 180 steps: $(tail -n 5 "$S/exp_ref/log/train.rank000.log")"
log "job $id_ref COMPLETED, 180 steps"

# ---- 4. a preempted, requeued job ----------------------------------------------------------------------
id=$(sbatch --parsable --nodes=1 --ntasks=2 --ntasks-per-node=2 --time=10 --job-name=pre \
  "$repo/launch/slurm/train.sbatch" "${train_args[@]}" --model_dir "$S/exp_pre") || fail "sbatch refused the job"
log "submitted job $id; SIGUSR1 to its batch shell once it passes step 20"
deadline=$((SECONDS + timeout_s))
signalled=0
while ((SECONDS < deadline)); do
  step=$(grep -o 'TRAIN | epoch [0-9]* step [0-9]*' "$S/exp_pre/log/train.rank000.log" 2>/dev/null | tail -n 1 | awk '{print $NF}')
  if [[ -n "$step" ]] && ((step >= 20)); then
    scancel --batch --signal=USR1 "$id" || fail "scancel --signal USR1 failed"
    signalled=1
    break
  fi
  [[ "$(job_field "$id" JobState)" == COMPLETED ]] && break
  sleep 0.05
done
((signalled)) || fail "job $id never reached step 20 before finishing or timing out"
log "signalled job $id at step $step"
# The requeue: restart count 1, then the job completes.
for _ in $(seq 600); do
  restarts=$(job_field "$id" Restarts)
  [[ "${restarts:-0}" -ge 1 ]] && break
  [[ "$(job_field "$id" JobState)" =~ ^(COMPLETED|FAILED|CANCELLED)$ ]] && break
  sleep 0.1
done
[[ "${restarts:-0}" -ge 1 ]] || fail "job $id was not requeued (state $(job_field "$id" JobState)): $(tail -n 20 "$S/work/pre-$id.out")"
st=$(wait_done "$id" "$timeout_s")
[[ "$st" == COMPLETED ]] || fail "requeued job $id ended $st: $(tail -n 30 "$S/work/pre-$id.out")"
out="$S/work/pre-$id.out"
grep -q "preempted, checkpoint written; requeueing" "$out" || fail "no requeue message in $out"
grep -q "restart 1" "$out" || fail "the job did not run a second time: $(cat "$out")"
grep -q "resumed from" "$S/exp_pre/log/train.rank000.log" || fail "the requeued run did not resume from a checkpoint"
grep -q "training finished: step 180" "$S/exp_pre/log/train.rank000.log" || fail "the requeued run did not reach step 180"
h5diff -q "$S/exp_ref/final.h5" "$S/exp_pre/final.h5" ||
  fail "final parameters differ between the uninterrupted and the preempted+requeued job: $(h5diff "$S/exp_ref/final.h5" "$S/exp_pre/final.h5" | head -n 5)"
log "job $id: preempted at step $step, requeued (restarts $restarts), resumed, COMPLETED; final.h5 identical to job $id_ref's"
log "PASS"
