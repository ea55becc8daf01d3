#!/usr/bin/env bash
# The one test command (README and .ci/run both call it). It installs everything the tests need into a
# reusable virtualenv outside the checkout, then runs ruff (lint + format check) and the whole pytest suite.
# Exits non-zero on any failure. Extra arguments go to pytest (e.g. ./test_all.sh -k gpu_manager -x).
set -euo pipefail

repo_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$repo_dir"

# shellcheck source=scripts/venv.sh
source "$repo_dir/scripts/venv.sh"

log() { printf '\n== %s\n' "$*"; }

# 1. Python dependencies: one virtualenv outside the checkout (shared with ./start.sh --local), updated in place
#    whenever the requirement files change (see scripts/venv.sh).
llasa_ensure_venv "$repo_dir" || exit 1
cache_root=$LLASA_CACHE_ROOT
export PATH="$LLASA_VENV_DIR/bin:$PATH"

#    vLLM's CPU build in a second virtualenv, for the LLASA_ENGINE=vllm tests against a real vLLM server.
# shellcheck source=scripts/vllm_venv.sh
source "$repo_dir/scripts/vllm_venv.sh"
llasa_ensure_vllm_venv "$repo_dir" || exit 1

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

# 3. schemathesis, for the property-based run against the REST spec (tests/rest/test_schemathesis.py), in a
#    virtualenv of its own beside the service's: its pins need not match the service's. Keyed by its version.
schemathesis_version=4.32.5
schemathesis_venv=$cache_root/schemathesis-$schemathesis_version
if [ ! -x "$schemathesis_venv/bin/schemathesis" ]; then
  log "installing schemathesis $schemathesis_version into $schemathesis_venv"
  python_bin=$(llasa_find_python) || exit 1
  if ! "$python_bin" -m venv "$schemathesis_venv" ||
    ! "$schemathesis_venv/bin/pip" install -q "schemathesis==$schemathesis_version"; then
    echo "error: could not install schemathesis into $schemathesis_venv" >&2
    exit 1
  fi
fi
export LLASA_SCHEMATHESIS=$schemathesis_venv/bin/schemathesis

# 4. Lint and format.
log "ruff check"
ruff check .
log "ruff format --check"
ruff format --check .

# 5. The test suite. Tiny checkpoints are built once and cached under $cache_root (see tests/conftest.py).
log "pytest"
export LLASA_CACHE_DIR=$cache_root
python -m pytest -q "$@"
