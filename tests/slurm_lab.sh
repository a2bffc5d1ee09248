#!/usr/bin/env bash
# A throw-away single-node SLURM cluster for the launcher tests (Debian, root, no systemd).
#   tests/slurm_lab.sh start LAB_DIR   install if needed, start munge, MariaDB, slurmdbd,
#                                      slurmctld, slurmd; wait until the node is idle
#   tests/slurm_lab.sh stop LAB_DIR    stop every daemon this script started, by pid
# Settings that work in containers without cgroups: linuxproc / task none, cons_tres with
# per-CPU memory (else one job owns the node), short cred_expire and scheduler intervals
# (requeue → running in seconds), accounting through slurmdbd (submitit needs sacct after a
# cancel, or its result() waits forever).
set -euo pipefail
cmd=${1:?start|stop}; lab=${2:?lab directory}
mkdir -p "$lab"/{state,spool,log,pids}
pidfile() { echo "$lab/pids/$1.pid"; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2; shift 2
  for _ in $(seq $((limit * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "slurm_lab: $what not up after ${limit}s (logs in $lab/log)" >&2; return 1
}

stop() {
  for name in slurmd slurmctld slurmdbd mariadbd munged; do
    f=$(pidfile $name)
    [ -s "$f" ] || continue
    pid=$(cat "$f")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$f"
  done
}

start() {
  [ "$(id -u)" = 0 ] || { echo "slurm_lab: needs root" >&2; exit 3; }
  if ! command -v slurmctld >/dev/null || ! command -v slurmdbd >/dev/null || ! command -v mariadbd >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends \
        munge slurmctld slurmd slurm-client slurmdbd mariadb-server; } >"$lab/log/apt.log" 2>&1 \
      || { echo "slurm_lab: cannot install SLURM packages (see $lab/log/apt.log)" >&2; exit 3; }
  fi
  host=$(hostname -s)
  mem=$(free -m | awk '/^Mem:/{print $2}')
  cpus=$(nproc)

  # munge
  [ -s /etc/munge/munge.key ] || { mungekey -c -k /etc/munge/munge.key; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
  install -d -o munge -g munge -m 755 /run/munge
  if ! (munge -n | unmunge) >/dev/null 2>&1; then   # a munged already running is not ours to stop
    runuser -u munge -- /usr/sbin/munged
    wait_for 10 munge bash -c "munge -n | unmunge"
    cp /run/munge/munged.pid "$(pidfile munged)"
  fi

  # MariaDB + slurmdbd (accounting)
  [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql >"$lab/log/mariadb-install.log" 2>&1
  install -d -o mysql -g mysql /run/mysqld
  if ! mariadb -e 'select 1' >/dev/null 2>&1; then
    setsid /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 --pid-file=/run/mysqld/ttt-lab.pid \
      >"$lab/log/mariadb.log" 2>&1 </dev/null &
    wait_for 30 MariaDB mariadb -e 'select 1'
    cp /run/mysqld/ttt-lab.pid "$(pidfile mariadbd)"
  fi
  mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'ttt-lab';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
  cat >/etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
LogFile=$lab/log/slurmdbd.log
PidFile=$(pidfile slurmdbd)
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=ttt-lab
StorageLoc=slurm_acct_db
EOF
  chmod 600 /etc/slurm/slurmdbd.conf
  slurmdbd
  wait_for 30 slurmdbd bash -c "echo > /dev/tcp/127.0.0.1/6819"

  # A new cluster name per lab: accounting records of earlier labs in the same MariaDB (same job
  # ids, other states) must never be mistaken for this lab's jobs.
  cluster="ttt$(date +%s | tail -c 7)$$"
  cat >/etc/slurm/slurm.conf <<EOF
ClusterName=$cluster
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=5
StateSaveLocation=$lab/state
SlurmdSpoolDir=$lab/spool
SlurmctldPidFile=$(pidfile slurmctld)
SlurmdPidFile=$(pidfile slurmd)
SlurmctldLogFile=$lab/log/slurmctld.log
SlurmdLogFile=$lab/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,bf_interval=1,sched_interval=2
MinJobAge=300
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$((mem - 2048)) State=UNKNOWN
PartitionName=ttt Nodes=$host Default=YES MaxTime=60 State=UP
EOF
  slurmctld
  slurmd
  wait_for 60 "an idle node" bash -c "sinfo -h -o %T | grep -q idle"
  echo "slurm_lab: up (partition ttt, $cpus CPUs); logs in $lab/log"
}

case $cmd in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop LAB_DIR" >&2; exit 2 ;;
esac
