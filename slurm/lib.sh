# shellcheck shell=bash
# Shared by slurm/*.sbatch (sourced, not run): logging, input checks, the node list and rank
# environment, the CPU/GPU choice, and the signal -> checkpoint -> requeue protocol.
#
# Protocol: SLURM sends USR1 to the batch script (--signal=B:USR1@<grace>) before the time limit or
# on preemption. The script forwards it to the ranks; `ds-distil` commands stop at a safe point
# (distill: after the current step and a complete checkpoint) and exit 75 (EX_TEMPFAIL). The script
# then calls `scontrol requeue`; the requeued job runs the same command, which continues from where
# it stopped. Any other failure ends the job with its status and is never requeued.

EXIT_PREEMPTED=75
SIGNALLED=

log() { echo "[$(date +%T)] ${JOB_LABEL:-ds-distil} job ${SLURM_JOB_ID:-?} (restart ${SLURM_RESTART_COUNT:-0}): $*"; }
fail() { log "error: $*"; exit 2; }

require_config() {  # require_config PATH: a run config that exists
  [ -f "$1" ] || fail "config $1 does not exist; set CONFIG=path/to/run.yaml (relative to $PWD)"
}

require_writable_dir() {  # require_writable_dir DIR VARIABLE
  if ! { mkdir -p "$1" 2>/dev/null && [ -w "$1" ] && touch "$1/.write-test" 2>/dev/null && rm -f "$1/.write-test"; }; then
    fail "cannot write to $1 ($2); set $2 to a directory on a file system every node sees and you can write"
  fi
}

# expand_nodes: HOSTS (array) from SLURM_JOB_NODELIST; TASKS_PER_HOST (array) from SLURM_TASKS_PER_NODE
# ("2(x3),1" = 2,2,2,1); RANKS, their sum; MASTER_ADDR/MASTER_PORT for torch.distributed's rendezvous.
# All from the allocation this run of the script got: a job submitted with --nodes=MIN-MAX, or requeued and
# given other resources, may get another count on each start (SLURM_NTASKS keeps the first submission's
# value across a requeue), and `ds-distil distill --resume` continues on whatever it is.
expand_nodes() {
  local list
  # scontrol prints "Invalid hostlist: ..." and exits 0 on some bad lists, and turns others ("n[1-")
  # into nonsense ("n]"): every line must be a host name, one per allocated node.
  if ! list=$(scontrol show hostnames "${SLURM_JOB_NODELIST:-}" 2>&1) || [ -z "$list" ] \
    || grep -qvE '^[A-Za-z0-9][A-Za-z0-9._-]*$' <<<"$list"; then
    fail "cannot expand the nodelist '${SLURM_JOB_NODELIST:-}' into host names (\`scontrol show hostnames\` says: $(head -c 200 <<<"$list" | tr '\n' ' ')); is this running inside a SLURM allocation?"
  fi
  mapfile -t HOSTS <<<"$list"
  if [ -n "${SLURM_JOB_NUM_NODES:-}" ] && [ "${#HOSTS[@]}" -ne "$SLURM_JOB_NUM_NODES" ]; then
    fail "the nodelist '$SLURM_JOB_NODELIST' expands to ${#HOSTS[@]} host(s) but SLURM_JOB_NUM_NODES=$SLURM_JOB_NUM_NODES"
  fi
  TASKS_PER_HOST=()
  local part count times i parts
  IFS=, read -ra parts <<<"${SLURM_TASKS_PER_NODE:-1}"
  for part in "${parts[@]}"; do
    if [[ $part =~ ^([0-9]+)\(x([0-9]+)\)$ ]]; then count=${BASH_REMATCH[1]} times=${BASH_REMATCH[2]}
    elif [[ $part =~ ^[0-9]+$ ]]; then count=$part times=1
    else fail "cannot read SLURM_TASKS_PER_NODE='${SLURM_TASKS_PER_NODE:-}'"; fi
    for ((i = 0; i < times; i++)); do TASKS_PER_HOST+=("$count"); done
  done
  [ "${#TASKS_PER_HOST[@]}" -eq "${#HOSTS[@]}" ] \
    || fail "SLURM_TASKS_PER_NODE='${SLURM_TASKS_PER_NODE:-}' does not match the ${#HOSTS[@]} node(s) of '$SLURM_JOB_NODELIST'"
  RANKS=0
  for count in "${TASKS_PER_HOST[@]}"; do RANKS=$((RANKS + count)); done
  # from the allocation, never from the submitting shell (sbatch exports its environment)
  export MASTER_ADDR=${HOSTS[0]}
  export MASTER_PORT=$((20000 + ${SLURM_JOB_ID:-0} % 20000))
}

write_hostfile() {  # write_hostfile FILE: DeepSpeed's format, "host slots=N", for the deepspeed launcher
  local i
  for i in "${!HOSTS[@]}"; do echo "${HOSTS[$i]} slots=${TASKS_PER_HOST[$i]}"; done >"$1"
}

# choose_device: DEVICE=auto|gpu|cpu and GPUS_PER_NODE (default: what SLURM allocated, else none)
# against the GPUs that torch sees on this node. Sets DEVICE to gpu or cpu; with cpu, GPUs are hidden.
choose_device() {
  local seen max_tasks=0 t
  seen=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null) \
    || fail "cannot import torch with PYTHON=$PYTHON; activate the environment (or set PYTHON) before sbatch"
  for t in "${TASKS_PER_HOST[@]}"; do ((t > max_tasks)) && max_tasks=$t; done
  local asked=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-0}}
  [[ $asked =~ ^[0-9]+$ ]] || fail "GPUS_PER_NODE='$asked' is not a number"
  if ((asked > seen)); then
    fail "asked for $asked GPU(s) per node but torch sees $seen on $(hostname) (CUDA_VISIBLE_DEVICES='${CUDA_VISIBLE_DEVICES:-}'); lower --gpus-per-node / GPUS_PER_NODE to $seen or submit to a partition whose nodes have $asked (and a CUDA build of torch)"
  fi
  case ${DEVICE:=auto} in
    auto) if ((seen > 0)); then DEVICE=gpu; else DEVICE=cpu; fi ;;
    gpu) ((seen > 0)) || fail "DEVICE=gpu but torch sees no GPU on $(hostname); ask SLURM for GPUs (--gpus-per-node) or set DEVICE=cpu" ;;
    cpu) ;;
    *) fail "DEVICE='$DEVICE' is not one of auto, gpu, cpu" ;;
  esac
  if [ "$DEVICE" = gpu ] && ((max_tasks > seen)); then
    fail "$max_tasks ranks on a node but $seen GPU(s) there; use --ntasks-per-node=$seen (one rank per GPU)"
  fi
  if [ "$DEVICE" = cpu ]; then export CUDA_VISIBLE_DEVICES=; fi
}

# run_ranks CMD...: one srun task per rank with RANK/WORLD_SIZE/LOCAL_RANK from SLURM, in the
# background; USR1/TERM to this script are forwarded to the ranks. Sets STATUS to their exit status.
run_ranks() {
  if [ -n "$SIGNALLED" ]; then STATUS=$EXIT_PREEMPTED; return; fi  # signalled between two runs: start none
  # shellcheck disable=SC2016  # the variables expand in each task, not here
  srun --ntasks="$RANKS" --kill-on-bad-exit=1 "${SRUN_ARGS[@]}" bash -c \
    'export RANK=$SLURM_PROCID WORLD_SIZE=$SLURM_NTASKS LOCAL_RANK=$SLURM_LOCALID; exec "$@"' rank "$@" &
  RANKS_PID=$!
  STATUS=0
  while true; do
    wait "$RANKS_PID"; STATUS=$?
    kill -0 "$RANKS_PID" 2>/dev/null || break  # `wait` returns early when a trapped signal arrives
  done
  RANKS_PID=
}

# shellcheck disable=SC2317  # called by the traps
on_signal() {
  if [ -n "$SIGNALLED" ]; then log "got $1 again: the ranks are already stopping"; else log "got $1: asking the ranks to stop at a safe point"; fi
  SIGNALLED=$1
  if [ -n "${RANKS_PID:-}" ]; then kill -USR1 "$RANKS_PID" 2>/dev/null; fi
}
trap 'on_signal USR1' USR1
trap 'on_signal TERM' TERM
SRUN_ARGS=()

# requeue_if_preempted: after run_ranks. Exit 75 (or a failure after we asked them to stop) ->
# `scontrol requeue` and end this run of the script; otherwise return.
requeue_if_preempted() {
  if [ "$STATUS" -eq "$EXIT_PREEMPTED" ] || { [ -n "$SIGNALLED" ] && [ "$STATUS" -ne 0 ]; }; then
    log "ranks stopped (status $STATUS) after ${SIGNALLED:-a signal}; requeueing"
    scontrol requeue "$SLURM_JOB_ID" || fail "scontrol requeue $SLURM_JOB_ID failed; resubmit the same command by hand"
    exit 0
  fi
}
