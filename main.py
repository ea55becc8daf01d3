"""The launcher: one process, one TTSService, three front ends.

    python main.py                      # web UI (UI_PORT), REST API (API_PORT) and MCP server (MCP_PORT)
    python main.py --only api,mcp       # a subset

Order of things: Settings -> logging (configured once, here) -> one TTSService around the process's one GPU
manager (its idle monitor started) -> the REST API (waitress) and the MCP server (uvicorn) on their own threads
-> the Gradio UI, launched from the main thread, which then waits for a signal. No model is loaded at start-up:
each loads on its first request. Once every chosen port answers, the three URLs are logged.

SIGTERM or SIGINT: the listeners close (no new requests), running requests get `--grace-s` seconds to finish,
then every model is released (each release is logged) and the process exits 0. A second signal skips the wait.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

logger = logging.getLogger("main")

FRONT_ENDS = ("ui", "api", "mcp")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Environment variables huggingface_hub reads at import; .env values are exported so they take effect, and empty
# ones are removed (an empty HF_ENDPOINT would otherwise become the hub URL "").
HUB_VARIABLES = {"hf_token": "HF_TOKEN", "hf_endpoint": "HF_ENDPOINT", "hf_home": "HF_HOME"}


class StartupError(RuntimeError):
    """A front end could not start (a port in use, a bad setting); the message says what to do."""


@dataclass
class FrontEnd:
    """One running server: how to reach it and how to stop it, in two steps.

    `stop_accepting` closes the listener (running requests go on); `finish` closes what is left, after the drain.
    """

    name: str
    label: str
    url: str
    probe_url: str
    stop_accepting: Callable[[], None]
    finish: Callable[[], None]
    thread: threading.Thread | None = None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Llasa TTS: web UI, REST API and MCP server in one process, sharing one GPU manager."
    )
    parser.add_argument(
        "--only",
        default=",".join(FRONT_ENDS),
        help="comma-separated front ends to run: ui, api, mcp (default: all three)",
    )
    parser.add_argument(
        "--grace-s",
        type=float,
        default=30.0,
        help="on SIGTERM/SIGINT, seconds running requests may take to finish before models are released",
    )
    parser.add_argument(
        "--ready-timeout-s",
        type=float,
        default=120.0,
        help="seconds to wait for every chosen port to answer before giving up with exit code 1",
    )
    args = parser.parse_args(argv)
    chosen = [part.strip().lower() for part in args.only.split(",") if part.strip()]
    unknown = sorted(set(chosen) - set(FRONT_ENDS))
    if unknown or not chosen:
        parser.error(f"--only takes a comma-separated subset of ui, api, mcp; got {args.only!r}")
    args.only = [name for name in FRONT_ENDS if name in chosen]
    return args


def configure_logging(level: str) -> None:
    """The process's one logging set-up: every module logs through `logging.getLogger(__name__)`."""
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr, force=True)
    # Request lines are the REST/MCP servers' business at DEBUG; at INFO they drown the model lifecycle lines.
    for noisy in ("httpx", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def export_hub_settings(settings: Any) -> None:
    """Make HF_TOKEN / HF_ENDPOINT / HF_HOME from Settings (and so from .env) visible to huggingface_hub."""
    for field_name, variable in HUB_VARIABLES.items():
        value = str(getattr(settings, field_name, "") or "")
        if value:
            os.environ[variable] = value
        else:
            os.environ.pop(variable, None)


def _client_host(host: str) -> str:
    """Where this machine reaches a server bound to `host`."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def _port_error(host: str, port: int, variable: str, exc: OSError) -> StartupError:
    return StartupError(
        f"cannot listen on {host}:{port} ({variable}): {exc.strerror or exc}; stop whatever uses the port "
        f"or set another {variable}"
    )


def _bind(host: str, port: int, variable: str) -> socket.socket:
    """A listening socket, bound now in the main thread so that a port in use is a clear start-up error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise _port_error(host, port, variable, exc) from exc
    sock.listen(128)
    sock.set_inheritable(False)
    return sock


def _run_logged(name: str, target: Callable[[], None]) -> None:
    try:
        target()
    except Exception:
        logger.exception("%s server stopped with an error", name)


def start_api(service: Any, settings: Any, grace_s: float) -> FrontEnd:
    import api_server

    app = api_server.create_app(service, settings)
    try:
        running = api_server.RunningServer(app, settings)  # binds now: a taken port fails here, clearly
    except OSError as exc:
        raise _port_error(settings.host, settings.api_port, "API_PORT", exc) from exc
    running.start()

    url = f"http://{_client_host(settings.host)}:{settings.api_port}"
    # stop_accepting() closes the listener only (/ready answers 503, requests in flight go on); stop() then closes
    # the remaining connections, cancels unfinished jobs and stops the cleanup timer.
    return FrontEnd("api", "REST API", url, f"{url}/health", running.stop_accepting, running.stop, running.thread)


def start_mcp(service: Any, settings: Any, grace_s: float) -> FrontEnd:
    import mcp_server

    sock = _bind(settings.host, settings.mcp_port, "MCP_PORT")
    mcp = mcp_server.create_mcp(service, settings)
    server = mcp_server.create_http_server(mcp, settings)
    # After should_exit, uvicorn closes the listener and gives open requests (a tool call's synthesis) this long.
    server.config.timeout_graceful_shutdown = max(1, math.ceil(grace_s))
    thread = threading.Thread(
        target=_run_logged, args=("MCP", lambda: server.run(sockets=[sock])), name="mcp", daemon=True
    )
    thread.start()

    def stop_accepting() -> None:
        server.should_exit = True

    def finish() -> None:
        thread.join(timeout=5)

    base = f"http://{_client_host(settings.host)}:{settings.mcp_port}"
    # Probed at / (a 404): a request to /mcp itself would open and close an MCP session just to check the port.
    return FrontEnd("mcp", "MCP", f"{base}{mcp_server.MCP_PATH}", f"{base}/", stop_accepting, finish, thread)


def start_ui(service: Any, settings: Any, grace_s: float) -> FrontEnd:
    import app as ui_app

    _bind(settings.host, settings.ui_port, "UI_PORT").close()
    blocks = ui_app.create_ui(service, settings)
    ui_app.launch_ui(blocks, settings, prevent_thread_lock=True)
    server = blocks.server  # gradio's uvicorn server, on its own thread

    def stop_accepting() -> None:
        # The listener closes; the open event streams stay, so a running synthesis still reaches its browser.
        server.config.timeout_graceful_shutdown = max(1, math.ceil(grace_s))
        server.should_exit = True

    url = f"http://{_client_host(settings.host)}:{settings.ui_port}"
    return FrontEnd("ui", "Web UI", url, f"{url}/", stop_accepting, blocks.close, getattr(server, "thread", None))


STARTERS: dict[str, Callable[[Any, Any, float], FrontEnd]] = {"api": start_api, "mcp": start_mcp, "ui": start_ui}


def _answers(url: str) -> bool:
    """True when an HTTP server answers at `url` (any status: 401, 406 ... still mean it is up)."""
    try:
        with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - our own http:// URL
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


class Launcher:
    """Owns the service and the front ends: `start()`, `wait()` for a signal, then `shutdown()`."""

    def __init__(self, settings: Any, only: Sequence[str], *, grace_s: float, ready_timeout_s: float) -> None:
        self.settings = settings
        self.only = list(only)
        self.grace_s = grace_s
        self.ready_timeout_s = ready_timeout_s
        self.service: Any = None
        self.fronts: list[FrontEnd] = []
        self.stop_requested = threading.Event()
        self.hurry = threading.Event()

    # --- signals -------------------------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.stop_requested.is_set():
            logger.warning("%s again: not waiting for running requests any longer", name)
            self.hurry.set()
            return
        logger.info("%s received: shutting down", name)
        self.stop_requested.set()

    # --- start ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        from gpu_manager import get_gpu_manager
        from llasa.service import TTSService

        started_s = time.monotonic()
        manager = get_gpu_manager(self.settings)
        self.service = TTSService(self.settings, manager=manager)
        manager.start_monitor()
        self.service.start_output_cleanup()  # OUTPUT_TTL_HOURS, for outputs of every front end
        logger.info("service ready on %s (models load on first use)", manager.device)
        # REST and MCP first (threads), the UI last: Gradio's launch returns once its server runs.
        for name in sorted(self.only, key=("api", "mcp", "ui").index):
            self.fronts.append(STARTERS[name](self.service, self.settings, self.grace_s))
        self._wait_until_answering(started_s)

    def _wait_until_answering(self, started_s: float) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        waiting = list(self.fronts)
        while waiting:
            waiting = [front for front in waiting if not _answers(front.probe_url)]
            if not waiting:
                break
            dead = [front.label for front in waiting if front.thread is not None and not front.thread.is_alive()]
            if dead:
                raise StartupError(f"{', '.join(dead)} stopped during start-up (see the error above)")
            if time.monotonic() > deadline:
                names = ", ".join(f"{front.label} ({front.probe_url})" for front in waiting)
                raise StartupError(f"not answering after {self.ready_timeout_s:.0f} s: {names}")
            if self.stop_requested.wait(0.1):
                return
        logger.info(
            "Llasa TTS is up in %.1f s: %s",
            time.monotonic() - started_s,
            "  ".join(f"{front.label}: {front.url}" for front in self.fronts),
        )

    # --- run and stop --------------------------------------------------------------------------------------

    def wait(self) -> int:
        """Block until a signal (exit 0) or until a server thread dies on its own (exit 1)."""
        while not self.stop_requested.wait(0.5):
            for front in self.fronts:
                if front.thread is not None and not front.thread.is_alive():
                    logger.error("%s server stopped unexpectedly; shutting the process down", front.label)
                    return 1
        return 0

    def _busy(self) -> bool:
        status = self.service.gpu_status()
        queue = status.get("queue", {})
        leases = sum(int(model.get("leases", 0) or 0) for model in status.get("models", {}).values())
        return bool(queue.get("busy")) or int(queue.get("depth", 0) or 0) > 0 or leases > 0

    def shutdown(self) -> None:
        """Stop taking requests, give running ones `grace_s` to finish, release every model."""
        for front in self.fronts:
            try:
                front.stop_accepting()
            except Exception:
                logger.exception("closing the %s listener failed", front.label)
        if self.service is None:
            return
        deadline = time.monotonic() + self.grace_s
        if self._busy():
            logger.info("waiting up to %.0f s for running requests to finish", self.grace_s)
            while self._busy() and time.monotonic() < deadline and not self.hurry.wait(0.1):
                pass
            if self._busy():
                logger.warning("requests still running after the grace period; releasing the models anyway")
        for front in self.fronts:
            try:
                front.finish()
            except Exception:
                logger.exception("stopping the %s failed", front.label)
        self.service.shutdown()
        models = self.service.gpu_status().get("models", {})
        states = ", ".join(f"{name} {info.get('state')}" for name, info in models.items())
        logger.info("shutdown complete, every model released (%s)", states or "no models")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from pydantic import ValidationError

    from llasa.config import load_settings

    try:
        # LLASA_ENV_FILE chooses the .env file(s): unset = the checkout's .env then ./.env, "" = none.
        settings = load_settings()
    except ValidationError as exc:
        # Logging is not configured yet (LOG_LEVEL itself may be the bad value): say it plainly and stop.
        print(f"invalid configuration (environment or .env; see .env.example):\n{exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    export_hub_settings(settings)
    launcher = Launcher(settings, args.only, grace_s=args.grace_s, ready_timeout_s=args.ready_timeout_s)
    launcher.install_signal_handlers()
    code = 0
    try:
        launcher.start()
        code = launcher.wait()
    except StartupError as exc:
        logger.error("%s", exc)  # the message is the whole story; a traceback would hide it
        code = 1
    finally:
        launcher.shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
