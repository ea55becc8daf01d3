#!/usr/bin/env bash
# Start the Llasa TTS service: web UI, REST API and MCP server in one process.
#
#   ./start.sh            Docker (GPU with the most free memory), or a local virtualenv when Docker is missing
#   ./start.sh --local    run in the local virtualenv (background process, pid file + log file), never Docker
#   ./start.sh --demo     use tiny random checkpoints (no GPU, no download; the audio is noise)
#   ./start.sh --check    check the environment and configuration, start nothing
#   ./start.sh --no-build Docker without building: use the image already there (offline hosts, docker load)
#   ./start.sh --engine vllm|transformers  Docker: the Llasa LM in a vLLM container beside the service (compose
#                         profile `vllm`), or the embedded engine; remembered in .env until changed
#   ./stop.sh             stop whichever is running
#
# Environment: GPU_ID (which GPU; default: the most free memory), UI_PORT / API_PORT / MCP_PORT / HOST (override
# .env), START_TIMEOUT_S (how long to wait for the three ports, default 300), DOCKER_RUNTIME=runc (Docker on the
# CPU; also read from .env), DEMO_MODELS_DIR (where --local --demo writes the tiny checkpoints), LLASA_RUN_DIR (local pid + log,
# default ./logs), LLASA_VENV / LLASA_CACHE_DIR / PYTHON (the local virtualenv, see scripts/venv.sh).
set -euo pipefail

repo_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/venv.sh
source "$repo_dir/scripts/venv.sh"

env_file=$repo_dir/.env
env_example=$repo_dir/.env.example
run_dir=${LLASA_RUN_DIR:-$repo_dir/logs}
pid_file=$run_dir/llasa-tts.pid
log_file=$run_dir/llasa-tts.log
demo_env_file=$repo_dir/.env.demo

say() { printf '%s\n' "$*"; }
info() { printf '  %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# --- configuration -------------------------------------------------------------------------------------------

# The value the service will see for NAME: the environment first, then .env, then DEFAULT (pydantic-settings'
# order). Quotes around a .env value are dropped.
config_value() {
  local name=$1 default=$2 line value
  if [ -n "${!name+x}" ]; then
    printf '%s\n' "${!name}"
    return 0
  fi
  if [ -f "$env_file" ]; then
    line=$(grep -E "^[[:space:]]*${name}=" "$env_file" | tail -n 1 || true)
    if [ -n "$line" ]; then
      value=${line#*=}
      value=${value%\"}
      value=${value#\"}
      value=${value%\'}
      value=${value#\'}
      printf '%s\n' "$value"
      return 0
    fi
  fi
  printf '%s\n' "$default"
}

# Sets NAME=VALUE in .env: replaces the existing line (keeping every other line as it is) or appends one.
set_env_value() {
  local name=$1 value=$2 tmp
  tmp=$(mktemp "$env_file.XXXXXX")
  if grep -qE "^${name}=" "$env_file"; then
    awk -v name="$name" -v value="$value" \
      'index($0, name "=") == 1 { print name "=" value; next } { print }' "$env_file" >"$tmp"
  else
    cat "$env_file" >"$tmp"
    printf '%s=%s\n' "$name" "$value" >>"$tmp"
  fi
  mv "$tmp" "$env_file"
}

ensure_env_file() {
  if [ ! -f "$env_file" ]; then
    cp "$env_example" "$env_file"
    say "created .env from .env.example (edit it to change ports, models, timeouts; see the comments)"
  fi
}

# Host name to print in URLs: the bind address, or 127.0.0.1 when the servers listen on every interface.
url_host() {
  local host
  host=$(config_value HOST 0.0.0.0)
  case "$host" in
  0.0.0.0 | "" | "::") printf '127.0.0.1\n' ;;
  *) printf '%s\n' "$host" ;;
  esac
}

# --- GPUs ----------------------------------------------------------------------------------------------------

# Prints "index used_mib free_mib" per GPU. Fails (with the reason on stderr) when nvidia-smi is missing,
# fails, or finds no GPU.
list_gpus() {
  local output status=0 index used free
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "nvidia-smi not found (no NVIDIA driver on this machine)" >&2
    return 1
  fi
  output=$(nvidia-smi --query-gpu=index,memory.used,memory.free --format=csv,noheader,nounits 2>&1) || status=$?
  if [ "$status" -ne 0 ]; then
    echo "nvidia-smi failed (exit $status): $(printf '%s' "$output" | head -n 1)" >&2
    return 1
  fi
  local count=0
  while IFS=', ' read -r index used free; do
    [ -z "$index" ] && continue
    if ! [[ "$index" =~ ^[0-9]+$ && "$used" =~ ^[0-9]+$ && "$free" =~ ^[0-9]+$ ]]; then
      echo "nvidia-smi printed something unexpected: $index, $used, $free" >&2
      return 1
    fi
    printf '%s %s %s\n' "$index" "$used" "$free"
    count=$((count + 1))
  done <<<"$output"
  if [ "$count" -eq 0 ]; then
    echo "nvidia-smi found no GPU" >&2
    return 1
  fi
}

# Prints the GPU to use: GPU_ID when set (checked against the list when there is one), otherwise the GPU with the
# most free memory (the lowest index on a tie). Fails with a message when there is no GPU to use.
choose_gpu() {
  local gpus best="" best_free=-1 index used free
  if ! gpus=$(list_gpus); then
    if [ -n "${GPU_ID:-}" ]; then
      echo "GPU_ID=$GPU_ID is set but no GPU can be listed" >&2
    fi
    return 1
  fi
  while read -r index used free; do
    printf '  GPU %s: %s MiB used, %s MiB free\n' "$index" "$used" "$free" >&2
  done <<<"$gpus"
  if [ -n "${GPU_ID:-}" ]; then
    if [[ "$GPU_ID" =~ ^[0-9]+$ ]] && ! awk -v id="$GPU_ID" '$1 == id { found = 1 } END { exit !found }' <<<"$gpus"; then
      echo "GPU_ID=$GPU_ID does not exist; this machine has GPU(s) $(awk '{print $1}' <<<"$gpus" | paste -sd, -)" >&2
      return 1
    fi
    echo "  using GPU_ID=$GPU_ID (set in the environment)" >&2
    printf '%s\n' "$GPU_ID"
    return 0
  fi
  while read -r index used free; do
    if [ "$free" -gt "$best_free" ]; then
      best=$index
      best_free=$free
    fi
  done <<<"$gpus"
  echo "  using GPU $best (most free memory: $best_free MiB; set GPU_ID to choose another)" >&2
  printf '%s\n' "$best"
}

# --- Docker --------------------------------------------------------------------------------------------------

docker_problem=""
# True when Docker can be used: client, daemon and the Compose plugin. Otherwise docker_problem says why.
docker_usable() {
  if ! command -v docker >/dev/null 2>&1; then
    docker_problem="Docker is not installed (https://docs.docker.com/engine/install/)"
    return 1
  fi
  if ! docker info >/dev/null 2>&1; then
    docker_problem="the Docker daemon is not reachable (is it running? may this user use it? try: docker info)"
    return 1
  fi
  if ! docker compose version >/dev/null 2>&1; then
    docker_problem="Docker Compose v2 is missing (install the docker-compose-plugin package)"
    return 1
  fi
}

docker_has_nvidia_runtime() {
  docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q '"nvidia"'
}

compose() { docker compose --project-directory "$repo_dir" -f "$repo_dir/docker-compose.yml" "$@"; }

# --- waiting -------------------------------------------------------------------------------------------------

# HTTP status of URL ("000" when nothing answers). Without curl, a minimal HTTP/1.0 GET over bash's /dev/tcp.
http_status() {
  local url=$1 rest hostport path line code
  if command -v curl >/dev/null 2>&1; then
    curl -s -o /dev/null -w '%{http_code}' --max-time 3 "$url" 2>/dev/null || true
    return 0
  fi
  rest=${url#http://}
  hostport=${rest%%/*}
  path=/${rest#*/}
  [ "$rest" = "$hostport" ] && path=/
  # shellcheck disable=SC2016 # the inner script expands its own positional parameters
  line=$(timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2" && printf "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n" "$3" "$1" >&3 &&
    head -n 1 <&3' _ "${hostport%:*}" "${hostport##*:}" "$path" 2>/dev/null) || true
  code=$(printf '%s' "$line" | awk '/^HTTP\// { print $2 }')
  printf '%s\n' "${code:-000}"
}

# Polls until /health answers 200 and the UI and MCP ports answer at all, or START_TIMEOUT_S passes. A second
# argument names a pid that must stay alive (local mode). The MCP port is probed at / (a 404), as main.py does:
# a request to /mcp itself would open an MCP session on every poll.
wait_until_ready() {
  local host=$1 pid=${2:-} timeout_s=${START_TIMEOUT_S:-300} deadline
  local api ui mcp
  deadline=$((SECONDS + timeout_s))
  api=$(config_value API_PORT 7861)
  ui=$(config_value UI_PORT 7860)
  mcp=$(config_value MCP_PORT 7862)
  say "waiting for the service to answer (up to ${timeout_s} s)..."
  while [ "$SECONDS" -lt "$deadline" ]; do
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      return 2
    fi
    if [ "$(http_status "http://$host:$api/health")" = 200 ] &&
      [ "$(http_status "http://$host:$ui/")" != 000 ] &&
      [ "$(http_status "http://$host:$mcp/")" != 000 ]; then
      return 0
    fi
    sleep 1
  done
  return 1
}

print_summary() {
  local mode=$1 host api ui mcp
  host=$(url_host)
  api=$(config_value API_PORT 7861)
  ui=$(config_value UI_PORT 7860)
  mcp=$(config_value MCP_PORT 7862)
  say ""
  say "Llasa TTS is running ($mode)."
  info "Web UI:    http://$host:$ui"
  info "REST API:  http://$host:$api   (Swagger UI: http://$host:$api/apidocs)"
  info "MCP:       http://$host:$mcp/mcp"
  say ""
  say "Everyday commands:"
  if [ "$mode" = docker ]; then
    info "logs:    docker compose logs -f"
    info "status:  docker compose ps; curl http://$host:$api/api/gpu/status"
  else
    info "logs:    tail -f $log_file"
    info "status:  curl http://$host:$api/api/gpu/status"
  fi
  info "stop:    ./stop.sh"
  info "try it:  curl -X POST http://$host:$api/api/tts -F text='Hello there.' -o hello.wav"
}

check_ports_free() {
  local name port
  for name in UI_PORT API_PORT MCP_PORT; do
    port=$(config_value "$name" "")
    [ -z "$port" ] && continue
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "port $port ($name) is already in use; stop what uses it or set another $name in .env" >&2
      return 1
    fi
  done
}

container_folders=(models_cache outputs temp voices demo_models)

make_folders() {
  (cd "$repo_dir" && mkdir -p "${container_folders[@]}")
}

# Writes the user and group the container runs as (docker-compose.yml's LLASA_UID / LLASA_GID): the caller's,
# so the files in the mounted folders stay theirs, but never root: run as root, start.sh uses 1000:1000 (the
# image's user) and gives it the folders.
set_container_user() {
  local uid gid
  uid=$(id -u)
  gid=$(id -g)
  if [ "$uid" = 0 ]; then
    uid=1000
    gid=1000
    say "running as root: the container runs as $uid:$gid instead, which now owns ${container_folders[*]}"
    (cd "$repo_dir" && chown -R "$uid:$gid" "${container_folders[@]}") || die "could not chown the folders to $uid:$gid"
  fi
  set_env_value LLASA_UID "$uid"
  set_env_value LLASA_GID "$gid"
}

# Warns when nvidia-smi lists a GPU but torch in the local virtualenv cannot use it (typically: the torch wheel
# is a CUDA 13 build, which needs an NVIDIA driver >= 580), so that nobody waits for a GPU that is not used.
warn_if_torch_lacks_the_gpu() {
  local python_bin=$1 gpu=$2 torch_cuda driver
  if torch_cuda=$(CUDA_VISIBLE_DEVICES=$gpu "$python_bin" -c \
    'import sys, torch; print(torch.version.cuda or "none"); sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null); then
    return 0
  fi
  driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1 || true)
  warn "GPU $gpu is listed by nvidia-smi, but torch in the local virtualenv cannot use it
  (torch.cuda.is_available() is False; torch is built for CUDA ${torch_cuda:-unknown}, the driver is ${driver:-unknown}):
  the service will run on the CPU, which is slow with the real checkpoints.
  torch's CUDA 13 builds need an NVIDIA driver >= 580: update the driver, or use Docker (./start.sh without
  --local), whose image uses CUDA 12 builds that run on drivers >= 525.60."
}

# --- demo checkpoints ----------------------------------------------------------------------------------------

demo_stamp() {
  cat "$repo_dir"/tools/*.py "$repo_dir"/tools/chat_templates/* | sha256sum | cut -c1-16
}

# Builds the tiny checkpoints into DIR with PYTHON unless DIR already holds the ones the current tools write.
build_demo_models() {
  local python_bin=$1 dir=$2 stamp
  stamp=$(demo_stamp)
  if [ "$(cat "$dir/.tiny-models-stamp" 2>/dev/null || true)" = "$stamp" ]; then
    say "tiny demo checkpoints already in $dir"
    return 0
  fi
  say "building tiny demo checkpoints into $dir (about a minute)..."
  mkdir -p "$dir"
  (cd "$repo_dir" && "$python_bin" tools/make_tiny_models.py "$dir") || die "could not build the demo checkpoints"
  echo "$stamp" >"$dir/.tiny-models-stamp"
}

# --- the two modes -------------------------------------------------------------------------------------------

local_pid() {
  local pid
  pid=$(cat "$pid_file" 2>/dev/null || true)
  if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null &&
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'main\.py'; then
    printf '%s\n' "$pid"
    return 0
  fi
  return 1
}

start_local() {
  local demo=$1 pid gpu status=0
  if pid=$(local_pid); then
    say "already running locally (pid $pid); ./stop.sh stops it"
    print_summary local
    return 0
  fi
  ensure_env_file
  make_folders
  if gpu=$(choose_gpu); then
    export CUDA_VISIBLE_DEVICES=$gpu
  else
    say "no usable NVIDIA GPU: the models will run on the CPU (slow with the real checkpoints)"
  fi
  check_ports_free || exit 1
  llasa_ensure_venv "$repo_dir" || die "the local virtualenv could not be prepared (see above)"
  if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
    warn_if_torch_lacks_the_gpu "$LLASA_VENV_PYTHON" "$CUDA_VISIBLE_DEVICES"
  fi
  if [ "$demo" = 1 ]; then
    local dir=${DEMO_MODELS_DIR:-$repo_dir/demo_models}
    build_demo_models "$LLASA_VENV_PYTHON" "$dir"
    # The environment beats .env, so the demo never edits the user's model settings.
    export LLASA_MODEL=$dir/llasa XCODEC2_MODEL=$dir/xcodec2 WHISPER_MODEL=$dir/whisper
  fi
  mkdir -p "$run_dir"
  say "starting locally with $LLASA_VENV_PYTHON (log: $log_file)"
  # setsid: the service gets its own session and process group, so stop.sh can reach every process it started,
  # and closing this terminal does not stop it.
  (cd "$repo_dir" && exec setsid "$LLASA_VENV_PYTHON" main.py </dev/null >>"$log_file" 2>&1) &
  pid=$!
  echo "$pid" >"$pid_file"
  wait_until_ready "$(url_host)" "$pid" || status=$?
  if [ "$status" -ne 0 ]; then
    tail -n 30 "$log_file" >&2 || true
    if [ "$status" -eq 2 ]; then
      rm -f "$pid_file"
      die "the service exited during start-up (last lines of $log_file above)"
    fi
    die "the service did not answer within ${START_TIMEOUT_S:-300} s; it is still starting or stuck (pid $pid). See $log_file; ./stop.sh stops it"
  fi
  print_summary local
}

# Writes the engine choice into .env, where both Compose (COMPOSE_PROFILES) and the service read it: vllm = the
# profile's vLLM container at http://vllm:8000, on this machine's GPUs, so the service's GPU manager manages it.
set_engine() {
  case "$1" in
  vllm)
    set_env_value LLASA_ENGINE vllm
    set_env_value VLLM_URL http://vllm:8000
    set_env_value VLLM_MANAGED true
    set_env_value COMPOSE_PROFILES vllm
    ;;
  transformers)
    set_env_value LLASA_ENGINE transformers
    set_env_value COMPOSE_PROFILES ""
    ;;
  *) die "unknown engine: $1 (use --engine vllm or --engine transformers)" ;;
  esac
}

start_docker() {
  local demo=$1 build=$2 gpu status=0 runtime
  ensure_env_file
  make_folders
  if [ -n "${engine:-}" ]; then
    set_engine "$engine"
    say "engine: $engine (written to .env)"
  fi
  # Compose reads COMPOSE_PROFILES from the environment before .env: pass the value .env now has.
  COMPOSE_PROFILES=$(config_value COMPOSE_PROFILES "")
  export COMPOSE_PROFILES
  runtime=$(config_value DOCKER_RUNTIME nvidia)
  if gpu=$(choose_gpu); then
    if [ "$runtime" != nvidia ]; then
      warn "DOCKER_RUNTIME=$runtime (environment or .env): the container will not use the GPU; remove it from .env to use the GPU"
    elif ! docker_has_nvidia_runtime; then
      die "Docker has no NVIDIA runtime. Install the NVIDIA Container Toolkit, then run
  sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker
(https://docs.nvidia.com/datacenter/cloud-native/container-toolkit/latest/install-guide.html).
Or run on the CPU: DOCKER_RUNTIME=runc ./start.sh, or ./start.sh --local"
    fi
    set_env_value NVIDIA_VISIBLE_DEVICES "$gpu"
  else
    say "no usable NVIDIA GPU: the container will run on the CPU (slow with the real checkpoints)"
    # In .env too, so that a later `docker compose up` by hand also runs without the NVIDIA runtime.
    set_env_value DOCKER_RUNTIME runc
    runtime=runc
  fi
  # Compose reads DOCKER_RUNTIME from the environment before .env: pass the value chosen here.
  export DOCKER_RUNTIME=$runtime
  set_container_user
  if [ -n "$(compose ps -q 2>/dev/null || true)" ]; then
    # Its own ports are taken by the running container; `up -d` recreates it where the configuration changed.
    say "the container is already running: updating it"
  else
    check_ports_free || exit 1
  fi
  local up_args=(up -d)
  if [ "$build" = 1 ]; then
    say "building the image (the first build downloads several GB)..."
    compose build || die "docker compose build failed (see above)"
  else
    say "--no-build: using the image already there (image tag: $(config_value LLASA_IMAGE_TAG latest))"
    up_args+=(--no-build)
  fi
  if [ "$demo" = 1 ]; then
    if [ "$(cat "$repo_dir/demo_models/.tiny-models-stamp" 2>/dev/null || true)" != "$(demo_stamp)" ]; then
      say "building tiny demo checkpoints in the image..."
      compose run --rm --no-deps llasa-tts python tools/make_tiny_models.py /app/demo_models ||
        die "could not build the demo checkpoints"
      demo_stamp >"$repo_dir/demo_models/.tiny-models-stamp"
    fi
    printf '%s\n' "# written by ./start.sh --demo; a normal ./start.sh removes it" \
      "LLASA_MODEL=/app/demo_models/llasa" "XCODEC2_MODEL=/app/demo_models/xcodec2" \
      "WHISPER_MODEL=/app/demo_models/whisper" >"$demo_env_file"
  else
    rm -f "$demo_env_file"
  fi
  compose "${up_args[@]}" || die "docker compose up failed (see above)"
  wait_until_ready "$(url_host)" || status=$?
  if [ "$status" -ne 0 ]; then
    compose logs --tail 30 >&2 || true
    die "the container did not answer within ${START_TIMEOUT_S:-300} s (docker compose logs -f shows why)"
  fi
  print_summary docker
}

# --- --check -------------------------------------------------------------------------------------------------

run_check() {
  local local_mode=$1 failures=0 gpu
  say "Checking the environment (nothing is started)..."
  for file in .env.example docker-compose.yml Dockerfile requirements.txt main.py; do
    [ -f "$repo_dir/$file" ] || {
      info "MISSING  $file (is this a complete checkout?)"
      failures=$((failures + 1))
    }
  done
  if [ -f "$env_file" ]; then info "ok       .env exists"; else info "note     no .env yet: start.sh will copy .env.example"; fi

  say "GPU:"
  if gpu=$(choose_gpu 2>&1 >/dev/null); then
    printf '%s\n' "$gpu"
  else
    printf '%s\n' "$gpu" | sed 's/^/  /'
    if [ -n "${GPU_ID:-}" ]; then failures=$((failures + 1)); else info "note     the service will run on the CPU"; fi
  fi

  say "Docker:"
  if [ "$local_mode" = 1 ]; then
    info "skipped  (--local)"
  elif docker_usable; then
    info "ok       docker $(docker version --format '{{.Server.Version}}' 2>/dev/null), $(docker compose version --short 2>/dev/null)"
    if docker_has_nvidia_runtime; then info "ok       NVIDIA runtime"; else info "MISSING  NVIDIA runtime (nvidia-container-toolkit); the container could only use the CPU"; fi
    if compose config -q; then info "ok       docker-compose.yml is valid"; else
      info "BAD      docker-compose.yml (see above)"
      failures=$((failures + 1))
    fi
  else
    info "missing  $docker_problem: start.sh will run the service in a local virtualenv"
  fi

  say "Local virtualenv:"
  local venv=${LLASA_VENV:-${LLASA_CACHE_DIR:-$HOME/.cache/llasa-tts}/venv-py311}
  if llasa_venv_is_current "$repo_dir"; then
    info "ok       $venv is up to date"
    local env_arg=()
    [ -f "$env_file" ] && env_arg=(--env-file "$env_file")
    if (cd "$repo_dir" && "$venv/bin/python" - "${env_arg[@]}" <<'PY'); then
import sys
from pathlib import Path

from llasa.config import Settings

env_file = Path(sys.argv[2]) if len(sys.argv) > 2 else None
settings = Settings(_env_file=env_file)
print(f"  ok       configuration is valid (models: {settings.llasa_model}, {settings.xcodec2_model}, "
      f"{settings.whisper_model}; device {settings.device})")
PY
      :
    else
      info "BAD      the configuration does not validate (see the message above; fix .env)"
      failures=$((failures + 1))
    fi
  elif python_bin=$(llasa_find_python 2>/dev/null); then
    info "note     $venv will be created or updated with $python_bin on the first local start"
  else
    info "MISSING  Python 3.11+ (needed to run without Docker)"
    [ "$local_mode" = 1 ] && failures=$((failures + 1))
  fi

  say "Ports:"
  if check_ports_free; then info "ok       $(config_value UI_PORT 7860), $(config_value API_PORT 7861), $(config_value MCP_PORT 7862) are free"; else
    if local_pid >/dev/null; then info "note     the service already runs locally (pid $(local_pid))"; else failures=$((failures + 1)); fi
  fi

  if [ "$failures" -eq 0 ]; then
    say "All checks passed."
    return 0
  fi
  say "$failures check(s) failed."
  return 1
}

# --- main ----------------------------------------------------------------------------------------------------

usage() { sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

main() {
  local local_mode=0 demo=0 check=0 build=1
  engine=""
  while [ $# -gt 0 ]; do
    case "$1" in
    --engine)
      [ $# -ge 2 ] || die "--engine needs a value: vllm or transformers"
      engine=$2
      shift
      ;;
    --engine=*) engine=${1#--engine=} ;;
    --local) local_mode=1 ;;
    --demo) demo=1 ;;
    --check) check=1 ;;
    --no-build) build=0 ;;
    -h | --help)
      usage
      return 0
      ;;
    *) die "unknown option: $1 (see ./start.sh --help)" ;;
    esac
    shift
  done
  cd "$repo_dir"
  if [ "$check" = 1 ]; then
    run_check "$local_mode"
    return
  fi
  case "$engine" in
  "" | vllm | transformers) ;;
  *) die "unknown engine: $engine (use --engine vllm or --engine transformers)" ;;
  esac
  if [ "$engine" = vllm ] && { [ "$local_mode" = 1 ] || ! docker_usable; }; then
    die "--engine vllm runs vLLM's server container (compose profile vllm) and needs Docker; without Docker start a
vLLM server yourself and set LLASA_ENGINE=vllm and VLLM_URL in .env (docs/scaling.md)"
  fi
  if [ "$local_mode" = 1 ]; then
    start_local "$demo"
  elif docker_usable; then
    start_docker "$demo" "$build"
  else
    say "$docker_problem: running the service directly in a local virtualenv instead."
    start_local "$demo"
  fi
}

# Sourcing this file (the tests do) defines the functions without running anything.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi
