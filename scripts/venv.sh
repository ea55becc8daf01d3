# shellcheck shell=bash
# The project's one local virtualenv, shared by test_all.sh and start.sh --local (source this file, then call
# llasa_ensure_venv REPO_DIR). It lives outside the checkout ($LLASA_CACHE_DIR, default ~/.cache/llasa-tts) and is
# updated in place whenever requirements.txt or requirements-dev.txt change (stamped by their hash), so a fresh
# clone, CI and the launcher all reuse one install.
#
# Sets: LLASA_CACHE_ROOT, LLASA_VENV_DIR (the virtualenv), LLASA_VENV_PYTHON (its python).
# Honours: LLASA_CACHE_DIR, LLASA_VENV (another virtualenv folder), PYTHON (interpreter to create it with).

llasa_venv_log() { printf '\n== %s\n' "$*" >&2; }

# Prints the first Python >= 3.11 found (PYTHON wins), or fails with a message.
llasa_find_python() {
  local candidate
  for candidate in ${PYTHON:-} python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      printf '%s\n' "$candidate"
      return 0
    fi
  done
  echo "error: no Python 3.11 or newer found; install python3.11 (with its venv module) or set PYTHON" >&2
  return 1
}

# The stamp the virtualenv must carry: a hash of the requirement files requirements-dev.txt pulls in.
llasa_requirements_stamp() {
  local repo_dir=$1
  cat "$repo_dir/requirements.txt" "$repo_dir/requirements-tiny.txt" "$repo_dir/requirements-dev.txt" |
    sha256sum | cut -c1-16
}

# Creates the virtualenv if needed and (re)installs requirements-dev.txt (runtime + test tools) when the stamp
# differs. Returns non-zero, with the tail of pip's log, when installation fails.
llasa_ensure_venv() {
  local repo_dir=$1 python_bin wanted_stamp install_log
  LLASA_CACHE_ROOT=${LLASA_CACHE_DIR:-$HOME/.cache/llasa-tts}
  LLASA_VENV_DIR=${LLASA_VENV:-$LLASA_CACHE_ROOT/venv-py311}
  LLASA_VENV_PYTHON=$LLASA_VENV_DIR/bin/python
  mkdir -p "$LLASA_CACHE_ROOT"
  wanted_stamp=$(llasa_requirements_stamp "$repo_dir")
  if [ ! -x "$LLASA_VENV_PYTHON" ]; then
    python_bin=$(llasa_find_python) || return 1
    llasa_venv_log "creating virtualenv $LLASA_VENV_DIR with $python_bin"
    "$python_bin" -m venv "$LLASA_VENV_DIR" || {
      echo "error: could not create $LLASA_VENV_DIR (on Debian/Ubuntu: apt-get install python3.11-venv)" >&2
      return 1
    }
  fi
  if [ "$(cat "$LLASA_VENV_DIR/.requirements-stamp" 2>/dev/null || true)" != "$wanted_stamp" ]; then
    llasa_venv_log "installing requirements-dev.txt into $LLASA_VENV_DIR (first run takes a few minutes)"
    install_log=$LLASA_CACHE_ROOT/pip-install.log
    if ! (cd "$repo_dir" && "$LLASA_VENV_PYTHON" -m pip install --disable-pip-version-check -q \
      -r requirements-dev.txt) >"$install_log" 2>&1; then
      grep -v 'WARNING: Location' "$install_log" | tail -n 40 >&2
      echo "error: pip install failed; full log in $install_log" >&2
      return 1
    fi
    echo "$wanted_stamp" >"$LLASA_VENV_DIR/.requirements-stamp"
  fi
  export LLASA_CACHE_ROOT LLASA_VENV_DIR LLASA_VENV_PYTHON
}

# True when the virtualenv exists and carries the current stamp (nothing to install); no side effects.
llasa_venv_is_current() {
  local repo_dir=$1 venv_dir
  venv_dir=${LLASA_VENV:-${LLASA_CACHE_DIR:-$HOME/.cache/llasa-tts}/venv-py311}
  [ -x "$venv_dir/bin/python" ] &&
    [ "$(cat "$venv_dir/.requirements-stamp" 2>/dev/null || true)" = "$(llasa_requirements_stamp "$repo_dir")" ]
}
