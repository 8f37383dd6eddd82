#!/usr/bin/env bash
# A throw-away single-node SLURM for the tests: munge + slurmctld + slurmd under one directory,
# started by explicit commands and stopped by their pids. Nothing is installed or started system-wide
# (install the packages first: apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge).
#
#   tests/slurm/cluster.sh start DIR   # prints `export SLURM_CONF=DIR/slurm.conf` once the node is idle
#   tests/slurm/cluster.sh stop DIR
set -euo pipefail
cmd=${1:?start|stop}
dir=$(mkdir -p "${2:?directory}" && cd "$2" && pwd)

stop() {
  for name in slurmd slurmctld munged; do
    if [ -f "$dir/run/$name.pid" ]; then
      kill "$(cat "$dir/run/$name.pid")" 2>/dev/null || true
      rm -f "$dir/run/$name.pid"
    fi
  done
}

if [ "$cmd" = stop ]; then stop; exit 0; fi
[ "$cmd" = start ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }
for exe in munged mungekey slurmctld slurmd sinfo; do
  command -v "$exe" >/dev/null || { echo "cluster.sh: $exe not found; apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge" >&2; exit 3; }
done

host=$(hostname)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 2048 ))
# the machine's cores: nproc obeys OMP_NUM_THREADS (1 under `make test`'s workers), and a node of 1 CPU
# would leave every 2-task job pending
cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
# free ports, so that a second cluster (or a real one) on this machine does not collide
read -r ctl_port d_port < <(python3 -c 'import socket
ps = [socket.socket() for _ in range(2)]
[p.bind(("127.0.0.1", 0)) for p in ps]
print(*[p.getsockname()[1] for p in ps])')
mkdir -p "$dir"/{state,spool,log,run,munge}
chmod 755 "$dir/munge"   # munged refuses a socket directory others can write to
[ -f "$dir/munge.key" ] || mungekey --create --keyfile="$dir/munge.key" >/dev/null 2>&1
chmod 400 "$dir/munge.key"
munged --force --key-file="$dir/munge.key" --socket="$dir/munge/munge.socket" --pid-file="$dir/run/munged.pid" \
  --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munged.seed"

cat > "$dir/slurm.conf" <<CONF
ClusterName=dsdistil-test
SlurmctldPort=$ctl_port
SlurmdPort=$d_port
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=10
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=bf_interval=1,sched_interval=2
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF

export SLURM_CONF="$dir/slurm.conf"
setsid slurmctld -D -f "$SLURM_CONF" >>"$dir/log/slurmctld.out" 2>&1 < /dev/null &
echo $! > "$dir/run/slurmctld.pid"
setsid slurmd -D -f "$SLURM_CONF" >>"$dir/log/slurmd.out" 2>&1 < /dev/null &
echo $! > "$dir/run/slurmd.pid"
for _ in $(seq 1 100); do
  if sinfo -h -o %T 2>/dev/null | grep -q idle; then
    echo "export SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  sleep 0.2
done
echo "cluster.sh: the node did not become idle; see $dir/log" >&2
stop
exit 1
