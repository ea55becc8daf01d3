"""A real vLLM server (vLLM's CPU build, its own virtualenv) on the tiny Llasa checkpoint, for the tests (and, with
`device="cuda"`, the GPU build for `bench/bench_vllm.py --device cuda`).

`./test_all.sh` installs vLLM into a second virtualenv (`scripts/vllm_venv.sh`) and exports LLASA_VLLM_PYTHON;
tests that need a server skip with that instruction when it is not set.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[2]
PLUGINS = REPO / "vllm_plugins"
VLLM_PYTHON = os.environ.get("LLASA_VLLM_PYTHON", "")
#: The logits processor for vLLM's V1 model runner, the one its CPU build uses.
CPU_LOGITS_PROCESSOR = "llasa_logits:SpeechOnlyLogitsProcessor"
#: The one for Model Runner V2, the GPU build's default (as the compose profile names it).
GPU_LOGITS_PROCESSOR = "llasa_logits:SpeechOnlyLogitsProcessorV2"
START_DEADLINE_S = 300.0
TEST_NICE = 19


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class VLLMServer:
    """`python -m vllm.entrypoints.openai.api_server` on 127.0.0.1, started and stopped by the tests."""

    def __init__(
        self,
        model_dir: Path,
        log_path: Path,
        port: int | None = None,
        *,
        prefix_caching: bool = True,
        nice: int = TEST_NICE,
        device: str = "cpu",
        extra_args: Sequence[str] = (),
    ) -> None:
        """`nice`: the CPU priority it runs at once healthy (every process and thread of it; it starts at normal
        priority, since starting takes ~30 s of CPU). The tests' default, 19, means that on a busy machine the
        server never outruns the test's own client threads, so a test that acts on a stream's first codes (cancels
        it, freezes or kills the server) acts long before the server could have finished. A benchmark comparing it
        with the embedded engine passes 0.

        `device="cuda"`: the GPU build as production runs it (CUDA graphs, sleep mode, Model Runner V2's logits
        processor) instead of the CPU build's eager mode and KV-cache space. `extra_args` go on the command line
        (e.g. `--load-format dummy`, `--gpu-memory-utilization 0.5`)."""
        self.model_dir = model_dir
        self.log_path = log_path
        self.port = port or free_port()
        self.prefix_caching = prefix_caching
        self.nice = nice
        self.device = device
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> VLLMServer:
        cpu = self.device == "cpu"
        env = {
            **os.environ,
            "PYTHONPATH": str(PLUGINS),
            "VLLM_SERVER_DEV_MODE": "1",  # /sleep, /wake_up, /is_sleeping
            "VLLM_NO_USAGE_STATS": "1",
            "VLLM_DO_NOT_TRACK": "1",
            "HF_HUB_OFFLINE": "1",
        }
        if cpu:
            env["VLLM_CPU_KVCACHE_SPACE"] = "1"  # GiB of KV cache: plenty for the tiny model
            env.pop("OMP_NUM_THREADS", None)  # vLLM's CPU backend binds its own threads
        command = [
            VLLM_PYTHON,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dtype",
            "bfloat16",
            "--max-model-len",
            "2048",
            "--enable-prefix-caching" if self.prefix_caching else "--no-enable-prefix-caching",
            "--logits-processors",
            CPU_LOGITS_PROCESSOR if cpu else GPU_LOGITS_PROCESSOR,
            *(["--enforce-eager"] if cpu else ["--enable-sleep-mode"]),
            *self.extra_args,
        ]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, process_group=0)
        log.close()
        return self

    def wait_healthy(self, deadline_s: float = START_DEADLINE_S) -> None:
        """Wait for /health, then lower the server's priority to `nice`."""
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    if self.nice and self.process is not None:
                        os.setpriority(os.PRIO_PGRP, self.process.pid, self.nice)
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"vLLM did not answer /health within {deadline_s:.0f} s:\n{self.log_tail()}")

    def freeze(self) -> None:
        """SIGSTOP the whole process group: connections stay open and nothing answers or advances (a hung server)
        until it is killed."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGSTOP)

    def kill(self) -> None:
        """SIGKILL the whole process group (the API server and its engine core), as a crash would."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            self.kill()
        self.process = None

    def metric(self, name: str) -> float:
        """Sum of a Prometheus metric's samples on /metrics (e.g. vllm:num_requests_running)."""
        text = requests.get(f"{self.url}/metrics", timeout=5).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name) and not line.startswith("#") and line[len(name)] in "{ "
        )

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@contextlib.contextmanager
def serving(model_dir: Path, log_path: Path, **options: Any) -> Iterator[VLLMServer]:
    """A started server, healthy, stopped on the way out (`options`: VLLMServer's keywords)."""
    server = VLLMServer(model_dir, log_path, **options).start()
    try:
        server.wait_healthy()
        yield server
    finally:
        server.stop()
