"""Start-up cost of `python main.py`: time until every port answers, against the import floor, and idle memory.

    python bench/bench_startup.py [--runs 3] [--only ui,api,mcp]

Per run, interleaved so both see the same machine load:
- import floor: a fresh interpreter that only imports the heavy dependencies (torch, transformers, gradio, flask,
  fastmcp, faster_whisper) and exits; wall time from spawn to exit;
- main.py: wall time from spawn until the UI, REST and MCP ports all answer HTTP (polled every 20 ms), then the
  peak and current RSS of the idle process (VmHWM / VmRSS), then SIGTERM and the time to exit.
Goal: main.py's time to ports <= 1.3 x the import floor (no model loads at start-up; the rest is wiring).
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEAVY_IMPORTS = "import torch, transformers, gradio, flask, fastmcp, faster_whisper"
GOAL_RATIO = 1.3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


def clean_env() -> dict[str, str]:
    """The environment without any setting of the service, and LLASA_ENV_FILE="" so that no .env file is read
    (neither the checkout's, which ./start.sh creates, nor one in the working folder)."""
    sys.path.insert(0, str(REPO))
    from llasa.config import ENV_FILE_VARIABLE, Settings

    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    env[ENV_FILE_VARIABLE] = ""
    return env


def time_imports() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", HEAVY_IMPORTS], check=True, capture_output=True)
    return time.perf_counter() - started


def proc_status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def time_main(only: list[str], timeout_s: float, workdir: Path) -> dict[str, float]:
    ports = {"ui": free_port(), "api": free_port(), "mcp": free_port()}
    env = clean_env()
    env.update(
        HOST="127.0.0.1",
        UI_PORT=str(ports["ui"]),
        API_PORT=str(ports["api"]),
        MCP_PORT=str(ports["mcp"]),
        OUTPUT_DIR=str(workdir / "outputs"),
        TEMP_DIR=str(workdir / "temp"),
        VOICES_DIR=str(workdir / "voices"),
    )
    urls = {
        "ui": f"http://127.0.0.1:{ports['ui']}/",
        "api": f"http://127.0.0.1:{ports['api']}/health",
        "mcp": f"http://127.0.0.1:{ports['mcp']}/",
    }
    log_path = workdir / f"main-{time.time_ns()}.log"
    with log_path.open("wb") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "main.py"), "--only", ",".join(only)],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            waiting = set(only)
            deadline = started + timeout_s
            while waiting:
                if proc.poll() is not None:
                    raise RuntimeError(f"main.py exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"ports {sorted(waiting)} not answering after {timeout_s} s")
                waiting = {name for name in waiting if not answers(urls[name])}
                if waiting:
                    time.sleep(0.02)
            ready_s = time.perf_counter() - started
            # Idle: let the start-up's garbage settle (one monitor pass of the GPU manager) before reading RSS.
            time.sleep(2.0)
            peak_kb = proc_status_kb(proc.pid, "VmHWM")
            rss_kb = proc_status_kb(proc.pid, "VmRSS")
            stop_started = time.perf_counter()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=120)
            stop_s = time.perf_counter() - stop_started
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if code != 0:
        raise RuntimeError(f"main.py exited {code} after SIGTERM: {log_path.read_text()[-2000:]}")
    return {"ready_s": ready_s, "peak_mb": peak_kb / 1024, "rss_mb": rss_kb / 1024, "stop_s": stop_s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs of each measurement")
    parser.add_argument("--only", default="ui,api,mcp", help="front ends main.py starts (default: all three)")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="give up on a start after this long")
    args = parser.parse_args()
    only = [part.strip() for part in args.only.split(",") if part.strip()]

    time_imports()  # warm the page cache for both sides: the first import of torch reads ~1 GB from disk
    floors: list[float] = []
    mains: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        for run in range(1, args.runs + 1):
            floors.append(time_imports())
            mains.append(time_main(only, args.timeout_s, Path(tmp)))
            print(
                f"run {run}: imports {floors[-1]:.2f} s, main.py to ports {mains[-1]['ready_s']:.2f} s",
                file=sys.stderr,
            )

    floor = statistics.median(floors)
    ready = statistics.median(m["ready_s"] for m in mains)
    ratio = ready / floor
    ready_runs = ", ".join(f"{m['ready_s']:.2f}" for m in mains)
    rows = [
        ("heavy imports alone (median)", f"{floor:.2f} s  (runs: {', '.join(f'{x:.2f}' for x in floors)})"),
        (
            f"main.py --only {','.join(only)} to all ports answering (median)",
            f"{ready:.2f} s  (runs: {ready_runs})",
        ),
        ("ratio (goal <= 1.3)", f"{ratio:.2f}  {'met' if ratio <= GOAL_RATIO else 'NOT met'}"),
        ("peak RSS at idle (VmHWM, max of runs)", f"{max(m['peak_mb'] for m in mains):.0f} MB"),
        ("RSS at idle (VmRSS, median)", f"{statistics.median(m['rss_mb'] for m in mains):.0f} MB"),
        ("SIGTERM to exit, no model loaded (median)", f"{statistics.median(m['stop_s'] for m in mains):.2f} s"),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"| {'metric'.ljust(width)} | value |")
    print(f"|{'-' * (width + 2)}|-------|")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
