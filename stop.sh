#!/usr/bin/env bash
# Stop the Llasa TTS service started by ./start.sh, whichever way it runs (local process or Docker container).
# SIGTERM first, so the service stops taking requests, lets running ones finish and releases every model; after
# STOP_TIMEOUT_S seconds (default 60) whatever is left is killed. No process of the service is left behind.
set -euo pipefail

repo_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
run_dir=${LLASA_RUN_DIR:-$repo_dir/logs}
pid_file=$run_dir/llasa-tts.pid
timeout_s=${STOP_TIMEOUT_S:-60}

say() { printf '%s\n' "$*"; }

# True while any live process of the process group PGID exists (zombies, already exited, do not count).
group_alive() {
  if command -v ps >/dev/null 2>&1; then
    ps -e -o pgid= -o stat= | awk -v group="$1" '$1 == group && $2 !~ /^Z/ { found = 1 } END { exit !found }'
  else
    kill -0 -- "-$1" 2>/dev/null
  fi
}

# Stops the local service: SIGTERM to main.py, a bounded wait for its whole process group, then SIGKILL.
stop_local() {
  local pid deadline
  pid=$(cat "$pid_file" 2>/dev/null || true)
  if ! [[ "$pid" =~ ^[0-9]+$ ]]; then
    rm -f "$pid_file"
    return 1
  fi
  # A stale pid file may name an unrelated process that reused the pid: only stop our main.py.
  if ! kill -0 "$pid" 2>/dev/null || ! tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'main\.py'; then
    say "removing a stale pid file ($pid_file: process $pid is not the service)"
    rm -f "$pid_file"
    return 1
  fi
  say "stopping the local service (pid $pid): finishing running requests, releasing models..."
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + timeout_s))
  # start.sh runs the service with setsid, so its pid is also its process group id.
  while group_alive "$pid" && [ "$SECONDS" -lt "$deadline" ]; do
    sleep 0.2
  done
  if group_alive "$pid"; then
    say "still running after ${timeout_s} s: killing it (SIGKILL)"
    kill -KILL -- "-$pid" 2>/dev/null || true
    deadline=$((SECONDS + 10))
    while group_alive "$pid" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
  fi
  rm -f "$pid_file"
  say "stopped."
}

compose() { docker compose --project-directory "$repo_dir" -f "$repo_dir/docker-compose.yml" "$@"; }

# Stops the container (docker compose sends SIGTERM, waits, then SIGKILL) when one is running.
stop_docker() {
  command -v docker >/dev/null 2>&1 || return 1
  docker info >/dev/null 2>&1 || return 1
  docker compose version >/dev/null 2>&1 || return 1
  [ -n "$(compose ps -q 2>/dev/null)" ] || return 1
  say "stopping the container (up to ${timeout_s} s to finish running requests)..."
  compose down --timeout "$timeout_s"
  say "stopped."
}

main() {
  case "${1:-}" in
  -h | --help)
    sed -n '2,4p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    return 0
    ;;
  "") ;;
  *)
    printf 'error: unknown option: %s (./stop.sh takes none)\n' "$1" >&2
    return 1
    ;;
  esac
  local stopped=0
  if [ -f "$pid_file" ] && stop_local; then stopped=1; fi
  if stop_docker; then stopped=1; fi
  if [ "$stopped" = 0 ]; then
    say "nothing to stop: the service is not running."
  fi
}

main "$@"
