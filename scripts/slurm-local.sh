#!/usr/bin/env bash
# A real Slurm cluster on this one machine, for tests and CI (docs/slurm.md, "A real cluster for
# the tests").
#
#   scripts/slurm-local.sh start    install if needed, start munge + accounting + slurmctld + one slurmd
#                                   per node, wait until every node is up. Idempotent: a running,
#                                   healthy cluster with an unchanged config returns at once.
#                                   Converges from whatever an earlier set-up left, saying what it
#                                   changed: MariaDB's `slurm` user is reset to login by unix socket,
#                                   another cluster's state in StateSaveLocation is moved aside.
#                                   A daemon that does not come up stops it with the daemon's log
#                                   lines from this start (the last 30) and the reason.
#   scripts/slurm-local.sh stop     stop what `start` started (by pidfile), munged/MariaDB only if
#                                   `start` started them. Idempotent. Job state is kept on disk;
#                                   running jobs are not cancelled (scancel them first if needed).
#   scripts/slurm-local.sh status   print sinfo/squeue; exit 0 if the cluster is up, 1 if not.
#
# Needs root for start/stop (apt-get, daemons, /etc/slurm). No systemd: daemons are started by hand
# and outlive this shell, so CI should run `stop` when it ends.
#
# Cluster: nodes node1..nodeN (N = $FGRPO_SLURM_NODES, default 2), all 127.0.0.1 with their own slurmd
# port, $FGRPO_SLURM_CPUS CPUs each (default 2; may exceed the real cores: config_overrides).
# Partitions: `debug` (default, PriorityTier=1, preempted with PreemptMode=REQUEUE, GraceTime=20)
# and `urgent` (PriorityTier=10, never preempted); what a preempted or requeued job receives and
# when, and why accounting (slurmdbd + MariaDB) is on: docs/slurm.md.
# FGRPO_SLURM_ACCOUNTING=0 skips slurmdbd/MariaDB (then only `sacct -c` works).
# FGRPO_SLURM_WAIT_S (default 60): how long each daemon, then the nodes, may take to come up.
set -euo pipefail

NODES=${FGRPO_SLURM_NODES:-2}
CPUS=${FGRPO_SLURM_CPUS:-2}
ACCOUNTING=${FGRPO_SLURM_ACCOUNTING:-1}
CLUSTER=fgrpo
RUN=/run/fgrpo-slurm          # our pidfiles and "we started it" markers
LOGDIR=/var/log/slurm
CONF=/etc/slurm/slurm.conf
STATE=/var/spool/slurmctld          # StateSaveLocation
DBDCONF=/etc/slurm/slurmdbd.conf
MYSQL_SOCK=/run/mysqld/mysqld.sock
MYSQL_PID=/run/mysqld/mysqld.pid   # mariadbd writes it after dropping to the mysql user
NODE_PORT0=17000                   # node i listens on NODE_PORT0+i
WAIT_S=${FGRPO_SLURM_WAIT_S:-60}
TAIL_LINES=30                      # log lines shown when a daemon fails
declare -A LOG_FROM=()             # log file -> its size before this start launched its daemon

log() { echo "slurm-local: $*"; }
die() { echo "slurm-local: ERROR: $*" >&2; exit 1; }

node_names() { local i; for ((i = 1; i <= NODES; i++)); do echo "node$i"; done; }
node_list() { if ((NODES == 1)); then echo node1; else echo "node[1-$NODES]"; fi; }

# pid_alive PIDFILE NAME: the pidfile names a live process whose command is NAME. Zombies count
# as dead: PID 1 here may not reap, so a killed daemon can linger as a zombie that kill -0 accepts.
pid_alive() {
  local f=$1 name=$2 pid stat
  [[ -s $f ]] || return 1
  pid=$(tr -dc 0-9 <"$f")
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 1
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  [[ $stat == "$pid ($name) "* && $stat != "$pid ($name) Z"* && $stat != "$pid ($name) X"* ]]
}

# running PID: exists and is not a zombie.
running() { [[ -r /proc/$1/stat ]] && ! grep -qE '^[0-9]+ \(.*\) [ZX] ' "/proc/$1/stat" 2>/dev/null; }

# kill_pidfiles PIDFILE NAME [PIDFILE NAME ...]: SIGTERM to all at once, wait up to 15 s for all,
# then SIGKILL what is left. Quiet for those not running.
kill_pidfiles() {
  local pids=() pid i alive
  while (($# >= 2)); do
    if pid_alive "$1" "$2"; then
      pid=$(tr -dc 0-9 <"$1"); pids+=("$pid")
      log "stopping $2 (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
    fi
    rm -f "$1"; shift 2
  done
  ((${#pids[@]})) || return 0
  for ((i = 0; i < 150; i++)); do
    alive=0; for pid in "${pids[@]}"; do running "$pid" && alive=1; done
    ((alive)) || return 0
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    running "$pid" && { log "pid $pid did not stop in 15 s: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; }
  done
  return 0
}

# ---------------------------------------------------------------- failing daemons
# log_size FILE: its size in bytes (0 if absent): where the lines of a daemon launched now begin.
log_size() { stat -c %s "$1" 2>/dev/null || echo 0; }

# log_excerpt FILE FROM: a header and the last TAIL_LINES lines FILE got after byte FROM, or its
# last lines if it got none (a daemon may fail before it opens its log; it then says so on stderr).
log_excerpt() {
  local file=$1 from=$2 lines=""
  if [[ ! -f $file ]]; then echo "----- $file does not exist"; return 0; fi
  lines=$(tail -c +"$((from + 1))" "$file" | tail -n "$TAIL_LINES") || true
  if [[ -n $lines ]]; then
    echo "----- $file: the lines of this start (last $TAIL_LINES)"
  else
    lines=$(tail -n "$TAIL_LINES" "$file") || true
    echo "----- $file: nothing new since this start; its last $TAIL_LINES lines"
  fi
  printf '%s\n-----\n' "$lines"
}

# daemon_failed NAME FILE FROM REASON: print NAME's log excerpt and stop, with REASON and the
# excerpt's last fatal or error line (timestamp dropped).
daemon_failed() {
  local name=$1 file=$2 from=$3 reason=$4 excerpt cause
  excerpt=$(log_excerpt "$file" "$from")
  printf '%s\n' "$excerpt" >&2
  cause=$(grep -v '^-----' <<<"$excerpt" | grep -iE 'fatal|error' | tail -n 1 | sed -E 's/^\[[^]]*\] //') || true
  die "$name $reason${cause:+: $cause} (log: $file)"
}

# launch LABEL FILE COMMAND...: run a daemon's start command (it forks into the background), its
# log being FILE; stop with that log if the command fails.
launch() {
  local label=$1 file=$2 rc=0
  shift 2
  LOG_FROM[$file]=$(log_size "$file")
  log "starting $label"
  "$@" 9>&- || rc=$?
  ((rc == 0)) || daemon_failed "$label" "$file" "${LOG_FROM[$file]}" "exited at start (status $rc)"
}

# await LABEL FILE ALIVE CHECK: wait up to WAIT_S for the command CHECK to succeed; stop with the
# daemon's log if ALIVE fails first (after 2 s: a pidfile appears a moment after the launch).
await() {
  local label=$1 file=$2 alive=$3 check=$4 t0=$SECONDS tries=0
  until $check; do
    if ((tries >= 20)) && ! $alive; then daemon_failed "$label" "$file" "${LOG_FROM[$file]:-0}" "died after it started"; fi
    ((SECONDS - t0 < WAIT_S)) || daemon_failed "$label" "$file" "${LOG_FROM[$file]:-0}" "did not answer in $WAIT_S s"
    sleep 0.1
    tries=$((tries + 1))
  done
}

# ---------------------------------------------------------------- health
ctld_up() { scontrol ping 2>/dev/null | grep -q 'is UP'; }

# All nodes registered and usable (idle/mixed/allocated/completing, no "*" = not responding).
nodes_up() {
  local states
  states=$(sinfo -h -N -o '%N %t' 2>/dev/null | sort -u) || return 1
  [[ -n $states ]] || return 1
  [[ $(wc -l <<<"$states") -ge $NODES ]] || return 1
  ! grep -qvE ' (idle|mix|alloc|comp)$' <<<"$states"
}

daemons_alive() {
  local n
  pid_alive "$RUN/slurmctld.pid" slurmctld || return 1
  for n in $(node_names); do pid_alive "$RUN/slurmd-$n.pid" slurmd || return 1; done
  if [[ $ACCOUNTING == 1 ]]; then pid_alive "$RUN/slurmdbd.pid" slurmdbd || return 1; fi
  return 0
}

# ---------------------------------------------------------------- install
install_packages() {
  local pkgs=(slurmctld slurmd slurm-client munge) need=() p
  [[ $ACCOUNTING == 1 ]] && pkgs+=(slurmdbd mariadb-server)
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
  done
  ((${#need[@]} == 0)) && return 0
  log "installing ${need[*]} (apt-get)"
  apt-get update -qq
  # postinst says "policy-rc.d denied execution of start": expected, we start daemons ourselves.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

# ---------------------------------------------------------------- config
write_slurm_conf() {
  local host n i
  host=$(hostname -s)
  {
    cat <<EOF
# Written by scripts/slurm-local.sh: a test cluster on one machine. Edits are overwritten.
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job may only start again after cred_expire seconds (default 120, minimum 5).
AuthInfo=cred_expire=10
SlurmctldPort=6817
StateSaveLocation=$STATE
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
MailProg=/bin/true
# Several slurmd on one host may declare more CPUs than the machine has.
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
# Finished jobs leave squeue/scontrol soon; their history is in sacct.
MinJobAge=10
KillWait=10
InactiveLimit=0
Waittime=0
JobRequeue=1
# Preemption: a job in a higher PriorityTier partition requeues jobs of lower tiers.
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
# The preempted job first gets its --signal (e.g. --signal=B:USR2@60) -- 22.05 has no PreemptParameters.
SlurmctldParameters=preempt_send_user_signal
JobCompType=jobcomp/filetxt
JobCompLoc=$LOGDIR/jobcomp.log
JobAcctGatherType=jobacct_gather/none
EOF
    if [[ $ACCOUNTING == 1 ]]; then
      cat <<EOF
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
EOF
    else
      echo "AccountingStorageType=accounting_storage/none"
    fi
    for ((i = 1; i <= NODES; i++)); do
      echo "NodeName=node$i NodeAddr=127.0.0.1 NodeHostname=node$i Port=$((NODE_PORT0 + i)) CPUs=$CPUS RealMemory=1024 State=UNKNOWN"
    done
    cat <<EOF
PartitionName=debug Nodes=$(node_list) Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=20
PartitionName=urgent Nodes=$(node_list) MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
EOF
  } >"$1"
}

write_slurmdbd_conf() {
  cat >"$1" <<EOF
# Written by scripts/slurm-local.sh. MariaDB login by unix socket as OS user slurm (no password).
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=slurm
LogFile=$LOGDIR/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
EOF
}

# ---------------------------------------------------------------- daemons
# Liveness and readiness checks for await (no arguments).
munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
munged_alive() { pid_alive /run/munge/munged.pid munged; }
mysql_up() { mariadb-admin --socket="$MYSQL_SOCK" ping >/dev/null 2>&1; }
mariadbd_alive() { running "$MARIADBD_LAUNCHED"; }
dbd_answers() { sacctmgr -n -P list cluster >/dev/null 2>&1; }
dbd_alive() { pid_alive "$RUN/slurmdbd.pid" slurmdbd; }
ctld_alive() { pid_alive "$RUN/slurmctld.pid" slurmctld; }

start_munge() {
  munge_works && return 0
  [[ -s /etc/munge/munge.key ]] || { log "creating munge key"; mungekey --create --keyfile=/etc/munge/munge.key; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
  install -d -o munge -g munge -m 755 /run/munge
  install -d -o munge -g munge -m 700 /var/log/munge /var/lib/munge
  launch munged /var/log/munge/munged.log runuser -u munge -- /usr/sbin/munged --force
  touch "$RUN/munged.ours"
  await munged /var/log/munge/munged.log munged_alive munge_works
}

start_mariadb() {
  mysql_up && return 0
  local file=$LOGDIR/mariadb.log
  install -d -o mysql -g mysql -m 755 /run/mysqld
  touch "$file"; chown mysql:mysql "$file"
  LOG_FROM[$file]=$(log_size "$file")
  log "starting MariaDB"
  setsid /usr/sbin/mariadbd --user=mysql --datadir=/var/lib/mysql --socket="$MYSQL_SOCK" \
    --pid-file="$MYSQL_PID" --bind-address=127.0.0.1 --log-error="$file" \
    --innodb-buffer-pool-size=1G --innodb-lock-wait-timeout=900 </dev/null >/dev/null 2>&1 9>&- &
  MARIADBD_LAUNCHED=$!   # setsid execs mariadbd (a background job is no group leader): its pid
  touch "$RUN/mariadb.ours"
  await MariaDB "$file" mariadbd_alive mysql_up
}

# The account slurmdbd logs in with (slurmdbd.conf): OS user slurm by unix socket, all rights on
# its database. Set on every start: another Slurm set-up may have left a `slurm` user with a
# password, and CREATE USER IF NOT EXISTS would keep it (slurmdbd: "Access denied").
converge_mariadb_user() {
  local before after
  before=$(mariadb --socket="$MYSQL_SOCK" -u root -N -B -e "SHOW GRANTS FOR 'slurm'@'localhost'" 2>/dev/null) || before=""
  mariadb --socket="$MYSQL_SOCK" -u root <<'EOF' || die "could not set up MariaDB's user slurm as MariaDB's root (login by unix socket): see the error above"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED VIA unix_socket;
ALTER USER 'slurm'@'localhost' IDENTIFIED VIA unix_socket;
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF
  after=$(mariadb --socket="$MYSQL_SOCK" -u root -N -B -e "SHOW GRANTS FOR 'slurm'@'localhost'")
  if [[ -z $before ]]; then
    log "created MariaDB user 'slurm'@'localhost' (login by unix socket, all rights on slurm_acct_db)"
  elif [[ $before != "$after" ]]; then
    log "reset MariaDB user 'slurm'@'localhost' to login by unix socket with all rights on slurm_acct_db (it had another authentication or fewer rights, e.g. from another Slurm set-up)"
  fi
}

start_slurmdbd() {
  dbd_alive || launch slurmdbd "$LOGDIR/slurmdbd.log" slurmdbd
  await slurmdbd "$LOGDIR/slurmdbd.log" dbd_alive dbd_answers
  if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    log "registering cluster $CLUSTER in the accounting database"
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
  fi
}

# foreign_cluster DIR: print the cluster name DIR's state files belong to and succeed if it is not
# ours (slurmctld then stops with "CLUSTER NAME MISMATCH").
foreign_cluster() {
  local name
  [[ -s $1/clustername ]] || return 1
  name=$(tr -d '[:space:]' <"$1/clustername")
  [[ -n $name && $name != "$CLUSTER" ]] || return 1
  echo "$name"
}

# This is a private test cluster: another cluster's state (an earlier set-up with another
# ClusterName) is moved aside, not deleted, and slurmctld starts afresh (job ids from 1 again).
move_foreign_state() {
  local other backup
  other=$(foreign_cluster "$STATE") || return 0
  backup="$STATE.cluster-${other//[^A-Za-z0-9_.-]/_}.$(date +%Y%m%d-%H%M%S)"
  mv "$STATE" "$backup"
  install -d -o slurm -g slurm -m 755 "$STATE"
  log "moved the state of cluster $other from $STATE to $backup (slurmctld refuses another cluster's state; job ids start at 1 again)"
}

start_slurmctld() {
  if ! ctld_alive; then
    move_foreign_state
    launch slurmctld "$LOGDIR/slurmctld.log" slurmctld
  fi
  await slurmctld "$LOGDIR/slurmctld.log" ctld_alive ctld_up
}

start_slurmds() {
  local n
  for n in $(node_names); do
    pid_alive "$RUN/slurmd-$n.pid" slurmd && continue
    launch "slurmd -N $n" "$LOGDIR/slurmd-$n.log" slurmd -N "$n"
  done
}

# fail_nodes: the nodes did not all come up in time: show slurmctld's log and that of each node
# not up (a dead slurmd first), and stop.
fail_nodes() {
  local n file states
  states=$(sinfo -h -N -o '%N %t' 2>/dev/null | sort -u) || true
  for n in $(node_names); do
    file=$LOGDIR/slurmd-$n.log
    pid_alive "$RUN/slurmd-$n.pid" slurmd || daemon_failed "slurmd -N $n" "$file" "${LOG_FROM[$file]:-0}" "died after it started"
  done
  log_excerpt "$LOGDIR/slurmctld.log" "${LOG_FROM[$LOGDIR/slurmctld.log]:-0}" >&2
  for n in $(node_names); do
    grep -qE "^$n (idle|mix|alloc|comp)$" <<<"$states" || log_excerpt "$LOGDIR/slurmd-$n.log" "${LOG_FROM[$LOGDIR/slurmd-$n.log]:-0}" >&2
  done
  die "nodes not up after ${WAIT_S} s (sinfo: $(paste -sd, - <<<"$states"); logs above)"
}

wait_nodes() {
  local t0=$SECONDS resumed=0 bad n
  while ((SECONDS - t0 < WAIT_S)); do
    if ctld_up && nodes_up; then return 0; fi
    if ((SECONDS - t0 >= 2)); then   # a slurmd that died will not come: say so now
      for n in $(node_names); do
        pid_alive "$RUN/slurmd-$n.pid" slurmd || daemon_failed "slurmd -N $n" "$LOGDIR/slurmd-$n.log" "${LOG_FROM[$LOGDIR/slurmd-$n.log]:-0}" "died after it started"
      done
    fi
    # A node left down/drained by an earlier run (e.g. "Kill task failed") while its slurmd is up: resume it.
    if ((resumed == 0 && SECONDS - t0 >= 3)) && ctld_up; then
      bad=$(sinfo -h -N -o '%N %t' 2>/dev/null | awk '$2 ~ /^(down|drain|drng|fail)$/ {print $1}' | sort -u | paste -sd, -)
      if [[ -n $bad ]]; then log "resuming $bad"; scontrol update nodename="$bad" state=resume || true; resumed=1; fi
    fi
    sleep 0.2
  done
  fail_nodes
}

stop_slurm_daemons() {
  local f args=()
  for f in "$RUN"/slurmd-*.pid; do [[ -e $f ]] && args+=("$f" slurmd); done
  kill_pidfiles "${args[@]}" "$RUN/slurmctld.pid" slurmctld
  kill_pidfiles "$RUN/slurmdbd.pid" slurmdbd   # after slurmctld, which sends it its last records
}

# ---------------------------------------------------------------- subcommands
cmd_start() {
  [[ $(id -u) == 0 ]] || die "start needs root"
  local t0=$SECONDS
  install -d -m 755 "$RUN"
  # Two concurrent `start`s: the second waits here, then finds the cluster running. Daemons are
  # started with 9>&- so that they do not inherit (and hold) the lock.
  exec 9>"$RUN/.lock"; flock 9
  install_packages
  chown slurm:slurm "$RUN"   # slurmctld/slurmdbd write their pidfiles here as user slurm

  local tmp changed=0
  tmp=$(mktemp)
  write_slurm_conf "$tmp"
  cmp -s "$tmp" "$CONF" || changed=1
  if ((changed == 0)) && daemons_alive && ctld_up && nodes_up; then
    rm -f "$tmp"
    log "already running ($(node_list), partitions debug urgent)"
    return 0
  fi
  if ((changed == 1)); then   # daemons started with another config: restart them (jobs survive)
    compgen -G "$RUN/slurm*.pid" >/dev/null && log "slurm.conf changed: restarting the Slurm daemons"
    stop_slurm_daemons
  fi
  install -d -m 755 /etc/slurm
  ((changed == 1)) && log "writing $CONF"
  install -m 644 "$tmp" "$CONF"; rm -f "$tmp"

  # Node names resolve to 127.0.0.1, so the first node name works as a rendezvous address.
  local n
  for n in $(node_names); do
    grep -qE "^[^#]*[[:space:]]$n([[:space:]]|\$)" /etc/hosts && continue
    log "adding $n to /etc/hosts"
    echo "127.0.0.1 $n  # fgrpo slurm-local" >>/etc/hosts
  done
  install -d -o slurm -g slurm -m 755 "$STATE" "$LOGDIR"
  for n in $(node_names); do install -d -m 755 "/var/spool/slurmd/$n"; done
  touch "$LOGDIR/jobcomp.log"; chown slurm:slurm "$LOGDIR/jobcomp.log"

  start_munge
  if [[ $ACCOUNTING == 1 ]]; then
    tmp=$(mktemp); write_slurmdbd_conf "$tmp"
    cmp -s "$tmp" "$DBDCONF" || { log "writing $DBDCONF"; install -o slurm -g slurm -m 600 "$tmp" "$DBDCONF"; kill_pidfiles "$RUN/slurmdbd.pid" slurmdbd; }
    rm -f "$tmp"
    start_mariadb
    converge_mariadb_user
    start_slurmdbd
  fi
  start_slurmctld
  start_slurmds
  wait_nodes
  log "up in $((SECONDS - t0)) s: $(node_list) x $CPUS CPUs, partitions debug (default) urgent"
}

cmd_stop() {
  [[ $(id -u) == 0 ]] || die "stop needs root"
  [[ -d $RUN ]] || { log "not running"; return 0; }
  stop_slurm_daemons
  local args=()   # MariaDB and munged only if `start` started them
  [[ -e $RUN/mariadb.ours ]] && args+=("$MYSQL_PID" mariadbd)
  [[ -e $RUN/munged.ours ]] && args+=(/run/munge/munged.pid munged)
  kill_pidfiles "${args[@]}"
  rm -f "$RUN/mariadb.ours" "$RUN/munged.ours"
  log "stopped"
}

cmd_status() {
  if ! command -v sinfo >/dev/null; then echo "slurm-local: not installed"; return 1; fi
  if ! ctld_up; then echo "slurm-local: slurmctld not answering"; return 1; fi
  sinfo
  squeue
  local f dead=()   # daemons whose pidfile `start` left but that died (slurmctld notices only after SlurmdTimeout)
  for f in "$RUN"/slurmctld.pid "$RUN"/slurmdbd.pid "$RUN"/slurmd-*.pid; do
    [[ -e $f ]] || continue
    local name; name=$(basename "$f" .pid); name=${name%%-*}
    pid_alive "$f" "$name" || dead+=("$(basename "$f" .pid)")
  done
  if ((${#dead[@]})); then echo "slurm-local: not running: ${dead[*]} (run start again)"; return 1; fi
  if nodes_up; then return 0; fi
  echo "slurm-local: not all nodes are up"
  return 1
}

main() {
  case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
  esac
}

# Sourced (the tests call its functions), it only defines them.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then main "$@"; fi
