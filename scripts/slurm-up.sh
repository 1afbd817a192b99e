#!/usr/bin/env bash
# Start a one-node Slurm on this machine (munge, slurmctld, slurmd), for `lcdask run --cluster
# slurm` tests, idempotently. Installs Debian's slurm-wlm and munge when missing (root or sudo).
#
# Usage: scripts/slurm-up.sh [STATE_DIR]     (default: /tmp/lcdask-slurm)
# Prints "slurm-up: ready" and exits 0 once `sinfo` shows the node idle; exits 1 with the reason
# otherwise (no apt-get, no root, a daemon that will not start). Stop it: scripts/slurm-down.sh.
set -euo pipefail

state=${1:-/tmp/lcdask-slurm}
say() { echo "slurm-up: $*" >&2; }

if [[ $(id -u) -eq 0 ]]; then SUDO=(); elif command -v sudo >/dev/null 2>&1; then SUDO=(sudo); else
    say "needs root or sudo"; exit 1
fi

if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
    if ! command -v apt-get >/dev/null 2>&1; then
        say "slurm-wlm and munge are not installed and apt-get is not here"; exit 1
    fi
    say "installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" apt-get install -y -qq slurm-wlm munge >/dev/null
fi

# munge: the key the package made, or one made now; the daemon once
if [[ ! -s /etc/munge/munge.key ]]; then
    "${SUDO[@]}" mungekey --create --force
    "${SUDO[@]}" chown munge:munge /etc/munge/munge.key
fi
if ! munge -n >/dev/null 2>&1; then
    "${SUDO[@]}" mkdir -p /run/munge
    "${SUDO[@]}" chown munge:munge /run/munge
    "${SUDO[@]}" -u munge /usr/sbin/munged --force 2>/dev/null \
        || "${SUDO[@]}" /usr/sbin/munged --force
    for _ in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n >/dev/null 2>&1 || { say "munged did not start"; exit 1; }
fi

# slurm.conf for this node: its CPUs and memory as slurmd sees them
node=$(hostname -s)
hw=$(slurmd -C | head -1)
cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
memory=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
mkdir -p "$state"/{ctld,d,log}
conf=$(mktemp)
cat >"$conf" <<EOF
# written by lcdask's scripts/slurm-up.sh: a one-node cluster for tests
ClusterName=lcdask
SlurmctldHost=$node
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/d
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=30
KillWait=5
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$state/log/jobs.txt
NodeName=$node CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
if ! cmp -s "$conf" /etc/slurm/slurm.conf 2>/dev/null; then
    "${SUDO[@]}" cp "$conf" /etc/slurm/slurm.conf
    fresh=1
fi
rm -f "$conf"

running() { [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
if [[ -n ${fresh:-} ]]; then  # a new configuration: restart what runs
    for pid in "$state"/slurmd.pid "$state"/slurmctld.pid; do
        running "$pid" && "${SUDO[@]}" kill "$(cat "$pid")" && sleep 1
    done
fi
running "$state"/slurmctld.pid || "${SUDO[@]}" /usr/sbin/slurmctld -i
running "$state"/slurmd.pid || "${SUDO[@]}" /usr/sbin/slurmd

for _ in $(seq 100); do
    if sinfo -h -N -o "%T" 2>/dev/null | grep -qE "^(idle|mixed|allocated)"; then
        echo "slurm-up: ready ($node, $cpus CPUs, $memory MB; logs in $state/log)"
        exit 0
    fi
    scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
    sleep 0.3
done
say "the node did not become idle: $(sinfo -h -N -o '%T %E' 2>&1 | head -1)"
say "see $state/log/slurmctld.log and $state/log/slurmd.log"
exit 1
