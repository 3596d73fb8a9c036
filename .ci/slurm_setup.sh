#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, from Debian's packages, for tests/test_slurm.py.
# Idempotent: installs what is missing, rewrites the config only when it changed, starts only the
# daemons that are not running. Needs root; no systemd (daemons run in the background, pid files
# under /run). Controller and node listen on 127.0.0.1 only.
#
#   bash .ci/slurm_setup.sh            # set up (or check) the cluster
#   bash .ci/slurm_setup.sh --stop     # stop the daemons this script started
#
# Fake GPUs: the node advertises VHACK_SLURM_FAKE_GPUS (default 2) `gpu` GRES without device files,
# so the profile's real `--gpus=1` requests are scheduled (and counted) as on a GPU cluster.
# sacct: Debian 12's Slurm (22.05) has no file-based accounting storage (filetxt was removed), and
# slurmdbd needs a MySQL/MariaDB server. With AccountingStorageType=accounting_storage/none, sacct
# asks slurmctld, which lists jobs it still holds: MinJobAge below keeps finished jobs for a day.
set -euo pipefail

[[ $(id -u) == 0 ]] || { echo "slurm_setup: run as root (apt-get, daemons)" >&2; exit 1; }

CONF=/etc/slurm/slurm.conf
GRES_CONF=/etc/slurm/gres.conf
LOG_DIR=/var/log/slurm
FAKE_GPUS=${VHACK_SLURM_FAKE_GPUS:-2}
PARTITION=${VHACK_SLURM_TEST_PARTITION:-debug}
NODE=$(hostname -s)
FAKE_GPU_DIR=/var/lib/slurm/fake-gpus

daemon_pid() {  # pid from a pid file, if that process still runs
    local pid
    [[ -f $1 ]] && pid=$(<"$1") && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

stop_daemon() {  # $1 pid file: stop the process it names (started by this script), wait until gone
    local pid
    if pid=$(daemon_pid "$1"); then
        kill "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        if kill -0 "$pid" 2>/dev/null; then echo "slurm_setup: pid $pid ($1) did not stop" >&2; return 1; fi
    fi
    rm -f "$1"  # a stale slurmctld.pid makes the package's prerm call scancel on a dead controller
}

stop_all() {
    stop_daemon /run/slurmd.pid
    stop_daemon /run/slurmctld.pid
    stop_daemon /run/munge/munged.pid
}

install_packages() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v sbatch >/dev/null && return
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # policy-rc.d (or no init system) keeps the packages' services from starting: we start them below.
    apt-get install -y -qq --no-install-recommends munge slurm-wlm >/dev/null
}

write_if_changed() {  # $1 path, stdin content; prints "changed" when it wrote
    local tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if [[ -f $1 ]] && cmp -s "$tmp" "$1"; then rm -f "$tmp"; return; fi
    install -m 0644 "$tmp" "$1"
    rm -f "$tmp"
    echo changed
}

write_config() {  # prints "changed" when slurm.conf or gres.conf changed
    # The node's real CPUs and memory, as slurmd itself measures them (a mismatch drains the node).
    local cpus mem
    read -r cpus mem < <(slurmd -C | sed -n 's/.*CPUs=\([0-9]*\).*RealMemory=\([0-9]*\).*/\1 \2/p')
    [[ -n $cpus && -n $mem ]] || { echo "slurm_setup: cannot read CPUs/RealMemory from slurmd -C" >&2; exit 1; }
    local gres_line="" node_gres=""
    if (( FAKE_GPUS > 0 )); then
        gres_line="GresTypes=gpu"
        node_gres="Gres=gpu:$FAKE_GPUS"
    fi
    local changed
    changed=$(
        write_if_changed "$CONF" <<EOF
# Written by .ci/slurm_setup.sh: one node on localhost for tests. Not for production.
ClusterName=vhack-test
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
# No cgroups in a container without systemd: track processes by /proc, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# No slurmdbd: sacct asks slurmctld, which forgets a finished job MinJobAge seconds after it ends.
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG_DIR/jobcomp.log
MinJobAge=86400
ReturnToService=2
SchedulerType=sched/backfill
$gres_line
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem $node_gres State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
        if (( FAKE_GPUS > 0 )); then
            # Slurm's gpu GRES needs one file per device; plain files stand in (no CUDA behind them).
            install -d "$FAKE_GPU_DIR"
            local i
            for ((i = 0; i < FAKE_GPUS; i++)); do touch "$FAKE_GPU_DIR/gpu$i"; done
            echo "NodeName=$NODE Name=gpu File=$FAKE_GPU_DIR/gpu[0-$((FAKE_GPUS - 1))]" \
                | write_if_changed "$GRES_CONF"
        else
            rm -f "$GRES_CONF"
        fi
    )
    [[ -z $changed ]] || echo changed
}

start_munge() {
    daemon_pid /run/munge/munged.pid >/dev/null && return
    install -d -o munge -g munge -m 0755 /run/munge
    [[ -s /etc/munge/munge.key ]] || runuser -u munge -- mungekey --create
    runuser -u munge -- munged
}

start_slurm() {
    install -d -o slurm -g slurm -m 0755 "$LOG_DIR" /var/lib/slurm/slurmctld
    install -d -m 0755 /var/lib/slurm/slurmd
    daemon_pid /run/slurmctld.pid >/dev/null || slurmctld
    daemon_pid /run/slurmd.pid >/dev/null || slurmd
}

wait_node_idle() {  # until sinfo lists the node idle (or mixed/allocated: it serves jobs)
    local state=""
    for _ in $(seq 120); do
        state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)
        case $state in
            idle|mixed|allocated) echo "slurm_setup: node $NODE $state"; return 0 ;;
            down*|drain*) scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true ;;
        esac
        sleep 0.5
    done
    echo "slurm_setup: node $NODE not idle after 60 s (state '${state}'); see $LOG_DIR/slurm*.log" >&2
    tail -n 20 "$LOG_DIR"/slurmctld.log "$LOG_DIR"/slurmd.log >&2 || true
    return 1
}

main() {
    if [[ ${1:-} == --stop ]]; then stop_all; return; fi
    local start=$SECONDS
    install_packages
    if [[ -n $(write_config) ]]; then
        echo "slurm_setup: config changed; (re)starting slurmctld and slurmd"
        stop_daemon /run/slurmd.pid
        stop_daemon /run/slurmctld.pid
    fi
    start_munge
    start_slurm
    wait_node_idle
    echo "slurm_setup: ready in $((SECONDS - start)) s"
}

main "$@"
