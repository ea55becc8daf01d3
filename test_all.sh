#!/usr/bin/env bash
# The one test command (README and .ci/run both call it). It installs everything the tests need into a
# reusable virtualenv outside the checkout, then runs ruff (lint + format check) and the whole pytest suite.
# Exits non-zero on any failure. Extra arguments go to pytest (e.g. ./test_all.sh -k gpu_manager -x).
set -euo pipefail

repo_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$repo_dir"

cache_root=${LLASA_CACHE_DIR:-$HOME/.cache/llasa-tts}
venv_dir=${LLASA_VENV:-$cache_root/venv-py311}
python_bin=${PYTHON:-}
if [ -z "$python_bin" ]; then
  for candidate in python3.11 python3.12 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then python_bin=$candidate; break; fi
  done
fi
mkdir -p "$cache_root"

log() { printf '\n== %s\n' "$*"; }

# 1. Python dependencies: one virtualenv, updated in place whenever the requirement files change.
wanted_stamp=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -c1-16)
if [ ! -x "$venv_dir/bin/python" ]; then
  log "creating virtualenv $venv_dir with $python_bin"
  "$python_bin" -m venv "$venv_dir"
fi
if [ "$(cat "$venv_dir/.requirements-stamp" 2>/dev/null || true)" != "$wanted_stamp" ]; then
  log "installing requirements-dev.txt into $venv_dir (first run takes a few minutes)"
  install_log=$cache_root/pip-install.log
  if ! "$venv_dir/bin/python" -m pip install --disable-pip-version-check -q -r requirements-dev.txt \
      >"$install_log" 2>&1; then
    grep -v 'WARNING: Location' "$install_log" | tail -n 40
    echo "pip install failed; full log in $install_log" >&2
    exit 1
  fi
  echo "$wanted_stamp" >"$venv_dir/.requirements-stamp"
fi
export PATH="$venv_dir/bin:$PATH"

# 2. System tools the tests drive: headless Chromium for the browser test, and a CJK font so its screenshots
#    show the Chinese UI as text (Debian packages).
if ! command -v chromium >/dev/null 2>&1 || ! fc-list 2>/dev/null | grep -qi wqy; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing chromium and fonts-wqy-zenhei (apt)"
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-wqy-zenhei >/dev/null 2>&1 ||
      echo "warning: could not install chromium; browser tests will fail" >&2
  else
    echo "warning: chromium missing and not root; browser tests will fail" >&2
  fi
fi

# 3. Lint and format.
log "ruff check"
ruff check .
log "ruff format --check"
ruff format --check .

# 4. The test suite. Tiny checkpoints are built once and cached under $cache_root (see tests/conftest.py).
log "pytest"
export LLASA_CACHE_DIR=$cache_root
python -m pytest -q "$@"
