#!/usr/bin/env bash
# Stop the one-node Slurm that scripts/slurm-up.sh started (its state directory is kept).
# Usage: scripts/slurm-down.sh [STATE_DIR]     (default: /tmp/lcdask-slurm)
set -uo pipefail
state=${1:-/tmp/lcdask-slurm}
if [[ $(id -u) -eq 0 ]]; then SUDO=(); else SUDO=(sudo); fi
scancel --user="$(id -un)" 2>/dev/null
for pid in "$state"/slurmd.pid "$state"/slurmctld.pid; do
    [[ -s $pid ]] && "${SUDO[@]}" kill "$(cat "$pid")" 2>/dev/null
done
echo "slurm-down: stopped"
