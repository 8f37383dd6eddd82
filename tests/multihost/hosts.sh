#!/usr/bin/env bash
# A throw-away cluster of N hosts on this one Linux machine, for the multi-node tests: each host is a network
# namespace (its own address on a bridge made here), a UTS namespace (its own host name) and a mount namespace
# (its own /etc/hosts, /dev/shm and node-local directory), with one slurmd per host, one slurmctld on the first host
# and one munged for all. Started and stopped by explicit commands; nothing is installed or started system-wide,
# the machine's /etc/hosts and network are left as they are: the only addresses are inside the namespaces made here,
# on veth links to a bridge made here that has no address of its own, so nothing leaves them.
# Needs root, `ip` (iproute2), `unshare`/`nsenter` (util-linux) and the SLURM packages
# (apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge).
#
#   tests/multihost/hosts.sh start DIR [N]      # N hosts (default 2): node1..nodeN; prints `export SLURM_CONF=...`
#   tests/multihost/hosts.sh exec DIR HOST CMD  # run CMD on HOST (its network, name and mounts), in this directory
#   tests/multihost/hosts.sh stop DIR           # every process on the hosts, the daemons, links, bridge and files
#
# DIR/shared   is seen by every host (so is the rest of the machine's file tree, e.g. this checkout);
# DIR/local    is node-local: each host sees its own DIR/nodes/HOST/local there (like /tmp or /scratch on a node);
# DIR/bin      sbatch, srun, squeue, scontrol, scancel, sinfo that run on the first host (the "login node"): put it first
#              on PATH, with SLURM_CONF=DIR/slurm.conf, to use the cluster from this machine's own namespace;
# DIR/hosts.env  HOSTS, ADDRS, BRIDGE of the running test bed; DIR/log  the daemons' logs (kept by stop).
set -euo pipefail
cmd=${1:?start|exec|stop}
dir=$(mkdir -p "${2:?directory}" && cd "$2" && pwd)
SUBNET=192.168.213   # the hosts' /24, only inside their namespaces (each bridge is its own wire: test beds side by side
                  # may use the same addresses)

holder() { cat "$dir/run/host-$1.pid" 2>/dev/null; }

on_host() {  # on_host HOST CMD...: CMD inside HOST's namespaces, in the current directory
  local pid
  pid=$(holder "$1")
  if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then echo "hosts.sh: no host $1 running under $dir" >&2; return 3; fi
  shift
  nsenter --target "$pid" --net --uts --mount --wd="$PWD" -- "$@"
}

stop() {
  local pid f ns p link alive killed=()
  # the daemons first (so that slurmd starts no new step), then whatever still runs on a host (job steps, ranks,
  # a torchrun agent a test started), found by the network namespace it is in, then the namespaces' holders
  for f in "$dir/run/slurmctld.pid" "$dir"/run/slurmd-*.pid; do
    if [ -f "$f" ]; then kill "$(cat "$f")" 2>/dev/null || true; fi
  done
  for f in "$dir"/run/host-*.pid; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    if ns=$(readlink "/proc/$pid/ns/net" 2>/dev/null); then
      for p in /proc/[0-9]*; do
        p=${p#/proc/}
        if [ "$p" != "$pid" ] && [ "$(readlink "/proc/$p/ns/net" 2>/dev/null)" = "$ns" ]; then
          if kill -KILL "$p" 2>/dev/null; then killed+=("$p"); fi
        fi
      done
      # the last process of the namespaces: they go, with their veth ends
      if kill -KILL "$pid" 2>/dev/null; then killed+=("$pid"); fi
    fi
    rm -f "$f"
  done
  if [ -f "$dir/run/munged.pid" ]; then
    pid=$(cat "$dir/run/munged.pid")
    if kill "$pid" 2>/dev/null; then killed+=("$pid"); fi
  fi
  for _ in $(seq 1 100); do  # gone (and reaped), not only signalled, when stop returns
    alive=
    for p in "${killed[@]}"; do if [ -e "/proc/$p" ]; then alive=$p; fi; done
    if [ -z "$alive" ]; then break; fi
    sleep 0.1
  done
  if [ -f "$dir/hosts.env" ]; then
    # shellcheck source=/dev/null
    BRIDGE=$(source "$dir/hosts.env" && echo "$BRIDGE")
    for link in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -x "$BRIDGE-[0-9]*"); do
      ip link del "$link" 2>/dev/null || true   # gone with its namespace already, unless a process lingers there
    done
    ip link del "$BRIDGE" 2>/dev/null || true
  fi
  rm -rf "${dir:?}/bin" "$dir/run" "$dir/state" "$dir/spool" "$dir/munge" "$dir/munge.key" "$dir/nodes" "$dir/local" \
    "$dir/hosts.env" "$dir/slurm.conf"
}

case $cmd in
  stop) stop; exit 0 ;;
  exec) host=${3:?host}; shift 3; on_host "$host" "$@"; exit $? ;;
  start) ;;
  *) echo "usage: $0 start DIR [N] | exec DIR HOST CMD... | stop DIR" >&2; exit 2 ;;
esac

n=${3:-2}
[[ $n =~ ^[1-9][0-9]?$ ]] || { echo "hosts.sh: N='$n' is not a number of hosts (1-99)" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "hosts.sh: needs root (network, UTS and mount namespaces, a bridge)" >&2; exit 3; }
for exe in ip unshare nsenter munged mungekey slurmctld slurmd sinfo; do
  command -v "$exe" >/dev/null || { echo "hosts.sh: $exe not found; apt-get install -y --no-install-recommends iproute2 util-linux slurmctld slurmd slurm-client munge" >&2; exit 3; }
done
[ ! -f "$dir/hosts.env" ] || { echo "hosts.sh: a test bed runs under $dir already; stop it first" >&2; exit 2; }
trap 'echo "hosts.sh: start failed; see $dir/log" >&2; stop' ERR

# names of the links in the machine's namespace (15 characters at most), unique to this directory
id=$(echo -n "$dir" | md5sum | cut -c1-6)
BRIDGE=dsd$id
HOSTS=() ADDRS=()
for i in $(seq 1 "$n"); do HOSTS+=("node$i"); ADDRS+=("$SUBNET.$i"); done
mkdir -p "$dir"/{run,state,spool,log,munge,shared,local}
cat > "$dir/hosts.env" <<ENV
HOSTS="${HOSTS[*]}"
ADDRS="${ADDRS[*]}"
BRIDGE=$BRIDGE
ENV

ip link add "$BRIDGE" type bridge
ip link set "$BRIDGE" up
# CPUs each node offers SLURM (HOSTS_CPUS; default: the machine's cores, which every node shares)
cpus=${HOSTS_CPUS:-$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)}
mem=$(( ($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 2048) / n ))
nodes=""
for i in "${!HOSTS[@]}"; do
  h=${HOSTS[$i]} a=${ADDRS[$i]}
  mkdir -p "$dir/nodes/$h/local" "$dir/spool/$h"
  { echo "127.0.0.1 localhost"; echo "::1 localhost ip6-localhost ip6-loopback"
    for j in "${!HOSTS[@]}"; do echo "${ADDRS[$j]} ${HOSTS[$j]}"; done; } > "$dir/nodes/$h/hosts"
  # the namespaces' holder: sets the host up from inside, then sleeps until stop kills it
  # shellcheck disable=SC2016  # $1 and $2 expand inside the holder
  setsid unshare --net --uts --mount --propagation private -- bash -c '
    set -e
    hostname "$1"
    mount --bind "$2/nodes/$1/hosts" /etc/hosts
    mount -t tmpfs -o size=2g,mode=1777 "shm-$1" /dev/shm
    mount --bind "$2/nodes/$1/local" "$2/local"
    touch "$2/run/host-$1.ready"
    exec sleep infinity' host "$h" "$dir" < /dev/null >> "$dir/log/host-$h.log" 2>&1 &
  echo $! > "$dir/run/host-$h.pid"
  for _ in $(seq 1 50); do [ -f "$dir/run/host-$h.ready" ] && break; sleep 0.1; done
  [ -f "$dir/run/host-$h.ready" ] || { echo "hosts.sh: host $h did not come up; see $dir/log/host-$h.log" >&2; false; }
  pid=$(holder "$h")
  ip link add "$BRIDGE-$i" type veth peer name eth0 netns "$pid"
  ip link set "$BRIDGE-$i" master "$BRIDGE"
  ip link set "$BRIDGE-$i" up
  nsenter --target "$pid" --net -- sh -c "ip link set lo up && ip addr add $a/24 dev eth0 && ip link set eth0 up"
  nodes+="NodeName=$h NodeAddr=$a CPUs=$cpus RealMemory=$mem State=UNKNOWN"$'\n'
done

chmod 755 "$dir/munge"   # munged refuses a socket directory others can write to
mungekey --create --keyfile="$dir/munge.key" >/dev/null 2>&1
chmod 400 "$dir/munge.key"
# one munged for every host: its socket is a file, which every mount namespace here sees
munged --force --key-file="$dir/munge.key" --socket="$dir/munge/munge.socket" --pid-file="$dir/run/munged.pid" \
  --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munged.seed"

cat > "$dir/slurm.conf" <<CONF
ClusterName=dsdistil-multihost
SlurmctldHost=${HOSTS[0]}(${ADDRS[0]})
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=10
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
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
# the nodes offer HOSTS_CPUS, which may be more than the cores they share
SlurmdParameters=config_overrides
${nodes}PartitionName=debug Nodes=$(IFS=,; echo "${HOSTS[*]}") Default=YES MaxTime=INFINITE State=UP
CONF

mkdir -p "$dir/bin"
for tool in sbatch srun squeue scontrol scancel sinfo; do
  printf '#!/bin/sh\n# %s on the first host of the test bed %s\nexec bash %q exec %q %s %q "$@"\n' \
    "$tool" "$dir" "$(cd "$(dirname "$0")" && pwd)/$(basename "$0")" "$dir" "${HOSTS[0]}" "$(command -v "$tool")" > "$dir/bin/$tool"
  chmod 755 "$dir/bin/$tool"
done

export SLURM_CONF="$dir/slurm.conf"
spawn() {  # spawn HOST NAME CMD...: a daemon on HOST in a session of its own; its pid in DIR/run/NAME.pid
  local h=$1 name=$2
  shift 2
  # nsenter and setsid exec what they run: $! is the daemon's own pid
  nsenter --target "$(holder "$h")" --net --uts --mount --wd="$dir" -- setsid "$@" >>"$dir/log/$name.out" 2>&1 < /dev/null &
  echo $! > "$dir/run/$name.pid"
}
spawn "${HOSTS[0]}" slurmctld slurmctld -D -f "$SLURM_CONF"
for h in "${HOSTS[@]}"; do spawn "$h" "slurmd-$h" slurmd -D -f "$SLURM_CONF"; done
for _ in $(seq 1 150); do
  if [ "$(on_host "${HOSTS[0]}" sinfo -h -o %T -t idle -N 2>/dev/null | grep -c idle)" -eq "$n" ]; then
    trap - ERR
    echo "export SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  sleep 0.2
done
echo "hosts.sh: the $n nodes did not all become idle; see $dir/log (if they cannot reach node1: is bridged traffic" \
  "filtered by iptables? /proc/sys/net/bridge/bridge-nf-call-iptables = 1 with a FORWARD policy of DROP, as Docker sets it)" >&2
stop
exit 1
