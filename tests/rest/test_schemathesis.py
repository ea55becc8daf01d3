"""Property-based run of schemathesis against the live REST server and the spec it serves (/apispec_1.json).

schemathesis lives in its own virtualenv (its pins need not match the service's): ./test_all.sh installs it and
passes its path in LLASA_SCHEMATHESIS. A bounded number of examples per operation keeps the run short; the run
must find no server error and no answer that disagrees with the spec (status code, content type, headers, body
schema). The spec is generated from the routes' request and response models (faces/rest/openapi.py), so this
also checks those models against what the server really does.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import tiny_settings

from api_server import RunningServer, create_app
from llasa.service import TTSService

SCHEMATHESIS_VERSION = "4.32.5"
EXAMPLES_PER_OPERATION = 10
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)


def schemathesis_command() -> Path:
    given = os.environ.get("LLASA_SCHEMATHESIS")
    if given:
        return Path(given)
    cache = Path(os.environ.get("LLASA_CACHE_DIR", Path.home() / ".cache" / "llasa-tts"))
    return cache / f"schemathesis-{SCHEMATHESIS_VERSION}" / "bin" / "schemathesis"


@pytest.fixture(scope="module")
def server(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = tiny_settings(tiny_models, tmp_path_factory.mktemp("schemathesis"), max_audio_seconds=0.2)
    service = TTSService(settings)
    running = RunningServer(create_app(service, settings), settings, host="127.0.0.1", port=0).start()
    try:
        yield running.url
    finally:
        running.stop()
        service.shutdown()


def test_the_live_server_conforms_to_its_spec(server: str, tmp_path: Path) -> None:
    command = schemathesis_command()
    if not command.exists():
        pytest.fail(f"schemathesis is not installed at {command}; run ./test_all.sh (it installs it)")
    args = [
        str(command),
        "run",
        f"{server}/apispec_1.json",
        "--url",
        server,
        "--max-examples",
        str(EXAMPLES_PER_OPERATION),
        "--phases",
        "examples,coverage,fuzzing",
        "--checks",
        ",".join(CHECKS),
        "--request-timeout",
        "120",
        "--seed",
        "1",
        "--no-color",
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    assert " passed" in output, output[-3000:]
    assert "unique failure" not in output, output[-6000:]
