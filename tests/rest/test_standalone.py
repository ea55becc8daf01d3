"""`python api_server.py` runs the REST API alone and ends cleanly on SIGTERM, releasing its models."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_api_server_alone_serves_and_exits_zero_on_sigterm(tiny_models: Path, tmp_path: Path) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "LLASA_ENV_FILE": "",  # none of the checkout's .env
        "LLASA_MODEL": str(tiny_models / "llasa"),
        "XCODEC2_MODEL": str(tiny_models / "xcodec2"),
        "WHISPER_MODEL": str(tiny_models / "whisper"),
        "WHISPER_MAX_NEW_TOKENS": "24",
        "DEVICE": "cpu",
        "OUTPUT_DIR": str(tmp_path / "outputs"),
        "TEMP_DIR": str(tmp_path / "temp"),
        "VOICES_DIR": str(tmp_path / "voices"),
        "PYTHONUNBUFFERED": "1",
    }
    log_path = tmp_path / "api.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "api_server.py", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, log_path.read_text()
            try:
                if requests.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "the REST API did not answer within 120 s"
            time.sleep(0.1)
        response = requests.post(
            f"{base}/api/tts", json={"text": "Alone.", "max_audio_seconds": 0.2, "seed": 1}, timeout=300
        )
        assert response.status_code == 200
        assert response.content[:4] == b"RIFF"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    log_text = log_path.read_text()
    assert "llasa released" in log_text, log_text[-3000:]
    assert "xcodec2 released" in log_text
