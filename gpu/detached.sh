#!/bin/bash
# A run longer than one device call (gpu/README.md): start it in its own session, so that it
# outlives the call, then wait for it in calls that follow each other within the warm time.
#   bash gpu/detached.sh start LOG CMD...      start CMD detached; stdout and stderr to LOG
#   bash gpu/detached.sh wait LOG SECONDS      wait until CMD ends or SECONDS pass; print LOG's tail
# wait exits 0 once CMD has ended with status 0, 1 when it ended otherwise, 3 while it still runs.
set -euo pipefail
usage() { echo "usage: detached.sh start LOG CMD... | wait LOG SECONDS" >&2; exit 2; }
[ $# -ge 2 ] || usage
verb=$1 log=$2; shift 2
case $verb in
  start)
    [ $# -ge 1 ] || usage
    [ ! -e "$log" ] || { echo "detached.sh: $log exists: one run per log" >&2; exit 2; }
    mkdir -p "$(dirname "$log")"
    setsid nohup bash -c '"$@"; echo $? > "$0.rc"' "$log" "$@" > "$log" 2>&1 < /dev/null &
    echo "started: $* (log $log)" ;;
  wait)
    [ $# -eq 1 ] || usage
    [ -e "$log" ] || { echo "detached.sh: $log: no such run" >&2; exit 2; }
    end=$(( $(date +%s) + $1 ))
    while [ ! -e "$log.rc" ] && [ "$(date +%s)" -lt $end ]; do sleep 1; done
    tail -n 40 "$log"
    [ -e "$log.rc" ] || { echo "detached.sh: still running"; exit 3; }
    rc=$(cat "$log.rc"); echo "detached.sh: ended with status $rc"; [ "$rc" = 0 ] || exit 1 ;;
  *) usage ;;
esac
