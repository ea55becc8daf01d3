"""main.py as a real process on the tiny checkpoints: start-up, a clear error for a taken port, and shutdown.

Under SIGTERM the launcher must stop taking requests, let the running one finish, release every model (logged)
and exit 0. The UI is left out here (`--only api,mcp`) to keep the file fast; tests/e2e/test_scripts.py runs all three.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from fastmcp import Client

from llasa.config import Settings

REPO = Path(__file__).resolve().parents[2]
READY_LINE = "Llasa TTS is up in"
START_TIMEOUT_S = 240.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.05)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class MainProcess:
    """`python main.py ...` in its own folder, logging to a file.

    LLASA_ENV_FILE="" keeps every .env file out (the checkout's, which ./start.sh creates, and the working
    folder's), so only the environment given here configures the process. The working folder holds a .env with
    API_KEY set on purpose: the SIGTERM test's requests without a key prove that no .env file leaks in.
    """

    def __init__(self, tmp_path: Path, tiny_models: Path, args: list[str], **overrides: str) -> None:
        self.ports = {name: int(overrides.pop(name, 0)) or free_port() for name in ("UI_PORT", "API_PORT", "MCP_PORT")}
        env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
        (tmp_path / ".env").write_text("API_KEY=from-a-stray-env-file\n")
        env["LLASA_ENV_FILE"] = ""
        env.update(
            HOST="127.0.0.1",
            DEVICE="cpu",
            LLASA_MODEL=str(tiny_models / "llasa"),
            XCODEC2_MODEL=str(tiny_models / "xcodec2"),
            WHISPER_MODEL=str(tiny_models / "whisper"),
            OUTPUT_DIR=str(tmp_path / "outputs"),
            TEMP_DIR=str(tmp_path / "temp"),
            VOICES_DIR=str(tmp_path / "voices"),
            GPU_MONITOR_INTERVAL="0.5",
            **{name: str(port) for name, port in self.ports.items()},
            **overrides,
        )
        self.log_path = tmp_path / "main.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "main.py"), *args],
            cwd=tmp_path,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.ports['API_PORT']}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"main.py exited with {self.proc.returncode}:\n{self.log()}")
            return READY_LINE in self.log()

        wait_for(ready, START_TIMEOUT_S, "main.py to report its URLs")

    def wait_exit(self, timeout_s: float = 120.0) -> int:
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"main.py did not exit within {timeout_s} s:\n{self.log()}") from None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@pytest.fixture
def launch(tmp_path: Path, tiny_models: Path) -> Iterator[Callable[..., MainProcess]]:
    started: list[MainProcess] = []

    def start(*args: str, **overrides: str) -> MainProcess:
        process = MainProcess(tmp_path, tiny_models, list(args), **overrides)
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()


def test_unknown_front_end_is_refused() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "main.py"), "--only", "ui,fax"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "--only takes a comma-separated subset of ui, api, mcp; got 'ui,fax'" in result.stderr


def test_an_invalid_setting_is_a_clear_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    env_file = tmp_path / "bad.env"
    env_file.write_text("MAX_QUEUE=lots\n")
    result = subprocess.run(
        [sys.executable, str(REPO / "main.py")],
        cwd=tmp_path,
        env={**env, "UI_PORT": "99999", "LLASA_ENV_FILE": str(env_file)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "invalid configuration (environment or .env; see .env.example)" in result.stderr
    assert "ui_port" in result.stderr
    assert "max_queue" in result.stderr


def test_the_env_file_named_by_llasa_env_file_configures_the_service(
    launch: Callable[..., MainProcess], tmp_path: Path
) -> None:
    """main.py reads settings through load_settings(): the file LLASA_ENV_FILE names is used (here: API_KEY)."""
    env_file = tmp_path / "chosen.env"
    env_file.write_text("API_KEY=secret\n")
    process = launch("--only", "api", LLASA_ENV_FILE=str(env_file))
    process.wait_ready()
    status = f"{process.api}/api/gpu/status"
    assert requests.get(status, timeout=10).status_code == 401
    assert requests.get(status, headers={"Authorization": "Bearer secret"}, timeout=10).status_code == 200


def test_a_taken_port_is_a_clear_error(launch: Callable[..., MainProcess]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        process = launch("--only", "api", API_PORT=str(port))
        assert process.wait_exit() == 1
    log = process.log()
    assert f"cannot listen on 127.0.0.1:{port} (API_PORT)" in log
    assert "set another API_PORT" in log
    assert "shutdown complete" in log


def test_sigterm_finishes_the_running_request_then_releases_every_model(
    launch: Callable[..., MainProcess],
) -> None:
    process = launch("--only", "api,mcp", "--grace-s", "120")
    process.wait_ready()
    log = process.log()
    assert f"REST API: {process.api}" in log
    assert f"MCP: http://127.0.0.1:{process.ports['MCP_PORT']}/mcp" in log
    # Started with no model loaded.
    health = requests.get(f"{process.api}/health", timeout=10).json()
    assert set(health["models"].values()) == {"unloaded"}

    # One synthesis through MCP loads the models (and shows MCP shares the service).
    async def call_mcp() -> dict:
        async with Client(f"http://127.0.0.1:{process.ports['MCP_PORT']}/mcp") as client:
            result = await client.call_tool("generate_speech", {"text": "Hi.", "max_audio_seconds": 0.5, "seed": 3})
            return result.structured_content

    first = asyncio.run(call_mcp())
    assert first["duration_s"] > 0

    # A longer REST synthesis is running when SIGTERM arrives: it must complete with its audio.
    answer: dict[str, requests.Response] = {}

    def synthesize() -> None:
        answer["response"] = requests.post(
            f"{process.api}/api/tts",
            data={"text": "A sentence that takes the tiny model a little while.", "max_audio_seconds": 2, "seed": 1},
            timeout=300,
        )

    request_thread = threading.Thread(target=synthesize)
    request_thread.start()

    def gpu_busy() -> bool:
        return requests.get(f"{process.api}/api/gpu/status", timeout=10).json()["queue"]["busy"]

    wait_for(gpu_busy, 60, "the synthesis to take the GPU slot")
    process.proc.send_signal(signal.SIGTERM)
    # No new connections once the signal is handled, even while the running request finishes.
    wait_for(lambda: not port_open(process.ports["API_PORT"]), 30, "the REST listener to close")
    request_thread.join(timeout=300)
    response = answer["response"]
    assert response.status_code == 200, response.text
    assert response.content[:4] == b"RIFF"
    assert float(response.headers["X-Audio-Duration-S"]) > 0

    assert process.wait_exit() == 0
    log = process.log()
    assert "SIGTERM received: shutting down" in log
    assert "waiting up to 120 s for running requests to finish" in log
    for model in ("llasa", "xcodec2"):
        assert f"{model} released" in log, log
    assert "shutdown complete, every model released (llasa unloaded, xcodec2 unloaded, whisper unloaded)" in log
