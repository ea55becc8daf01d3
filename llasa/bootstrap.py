"""How a process runs the service: logging, settings, the service build, signals, shutdown.

Every entry point goes through here: `main.py` (all faces over one service, `Launcher`), and `api_server.py`,
`app.py`, `mcp_server.py` run alone (`run_alone`). So logging is configured once, the process's one GPU manager
gets its idle monitor, outputs expire on one interval, and SIGTERM ends every one of them the same way: the
listeners close, running requests get a grace period, every model is released.

A face plugs in as a starter: `(service, settings, grace_s) -> FrontEnd`, a running server and how to stop it.
This module imports no face and no web framework; the entry points hand the starters in.
"""

from __future__ import annotations

import logging
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
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from llasa.config import Settings
    from llasa.service import TTSService

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Environment variables huggingface_hub reads at import; .env values are exported so they take effect, and empty
# ones are removed (an empty HF_ENDPOINT would otherwise become the hub URL "").
HUB_VARIABLES = {"hf_token": "HF_TOKEN", "hf_endpoint": "HF_ENDPOINT", "hf_home": "HF_HOME"}
# Loggers that narrate every HTTP request at INFO (gradio polls its own server while starting).
NOISY_LOGGERS = ("httpx", "uvicorn.access")


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


Starter = Callable[["TTSService", "Settings", float], FrontEnd]
"""Starts one face on its own thread over the shared service: (service, settings, grace_s) -> FrontEnd."""


# --------------------------------------------------------------------------------------------------------------
# Settings and logging


def load_settings_or_exit() -> Settings:
    """Settings from the environment and .env (LLASA_ENV_FILE); an invalid value prints a plain message, exit 2."""
    from pydantic import ValidationError

    from llasa.config import load_settings

    try:
        return load_settings()
    except ValidationError as exc:
        # Logging is not configured yet (LOG_LEVEL itself may be the bad value): say it plainly and stop.
        print(f"invalid configuration (environment or .env; see .env.example):\n{exc}", file=sys.stderr)
        raise SystemExit(2) from exc


def configure_logging(level: str, *, stream: TextIO | None = None) -> None:
    """The process's one logging set-up (stderr: in MCP's stdio mode stdout carries the protocol)."""
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=stream or sys.stderr, force=True)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def export_hub_settings(settings: Settings) -> None:
    """Make HF_TOKEN / HF_ENDPOINT / HF_HOME from Settings (and so from .env) visible to huggingface_hub."""
    for field_name, variable in HUB_VARIABLES.items():
        value = str(getattr(settings, field_name, "") or "")
        if value:
            os.environ[variable] = value
        else:
            os.environ.pop(variable, None)


def start_process(settings: Settings) -> None:
    """What every entry point does first, once settings are read: logging, then the hub variables."""
    configure_logging(settings.log_level)
    export_hub_settings(settings)


# --------------------------------------------------------------------------------------------------------------
# The service


def build_service(settings: Settings) -> TTSService:
    """The process's TTSService over the process's one GPU manager, its idle monitor and output cleanup running."""
    from llasa.gpu import get_gpu_manager
    from llasa.service import TTSService

    manager = get_gpu_manager(settings)
    service = TTSService(settings, manager=manager)
    manager.start_monitor()
    service.start_output_cleanup()  # OUTPUT_TTL_HOURS, for the outputs of every face
    logger.info("service ready on %s (models load on first use)", manager.device)
    return service


def run_alone(settings: Settings, serve: Callable[[TTSService], None], *, label: str) -> None:
    """Run one face alone in the foreground: build the service, `serve(service)`, release every model at the end.

    SIGTERM (docker stop, stop.sh) ends like Ctrl-C: SystemExit unwinds the face's server loop and the models are
    released on the way out.
    """

    def exit_cleanly(signum: int, _frame: FrameType | None) -> None:
        logger.info("%s received: shutting the %s down", signal.Signals(signum).name, label)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, exit_cleanly)
    service = build_service(settings)
    try:
        serve(service)
    finally:
        service.shutdown()


# --------------------------------------------------------------------------------------------------------------
# Sockets and URLs


def port_error(host: str, port: int, variable: str, exc: OSError) -> StartupError:
    return StartupError(
        f"cannot listen on {host}:{port} ({variable}): {exc.strerror or exc}; stop whatever uses the port "
        f"or set another {variable}"
    )


def bind(host: str, port: int, variable: str) -> socket.socket:
    """A listening socket, bound now in the main thread so that a port in use is a clear start-up error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise port_error(host, port, variable, exc) from exc
    sock.listen(128)
    sock.set_inheritable(False)
    return sock


def run_logged(name: str, target: Callable[[], None]) -> None:
    """A server thread's body: an error ends the thread with a log line (the launcher notices the dead thread)."""
    try:
        target()
    except Exception:
        logger.exception("%s server stopped with an error", name)


def answers(url: str) -> bool:
    """True when an HTTP server answers at `url` (any status: 401, 406 ... still mean it is up)."""
    try:
        with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - our own http:// URL
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


# --------------------------------------------------------------------------------------------------------------
# Several faces in one process


class Launcher:
    """Owns the service and the front ends: `start()`, `wait()` for a signal, then `shutdown()`.

    SIGTERM or SIGINT: the listeners close (no new requests), running requests get `grace_s` seconds to finish,
    then every model is released (each release is logged). A second signal skips the wait.
    """

    def __init__(
        self,
        settings: Settings,
        starters: Sequence[Starter],
        *,
        grace_s: float,
        ready_timeout_s: float,
    ) -> None:
        self.settings = settings
        self.starters = list(starters)
        self.grace_s = grace_s
        self.ready_timeout_s = ready_timeout_s
        self.service: Any = None
        self.fronts: list[FrontEnd] = []
        self.stop_requested = threading.Event()
        self.hurry = threading.Event()

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

    def run(self) -> int:
        """Start, wait for a signal, shut down. Exit code: 0 after a signal, 1 when a front end failed."""
        self.install_signal_handlers()
        code = 0
        try:
            self.start()
            code = self.wait()
        except StartupError as exc:
            logger.error("%s", exc)  # the message is the whole story; a traceback would hide it
            code = 1
        finally:
            self.shutdown()
        return code

    def start(self) -> None:
        started_s = time.monotonic()
        self.service = build_service(self.settings)
        for starter in self.starters:
            self.fronts.append(starter(self.service, self.settings, self.grace_s))
        self._wait_until_answering(started_s)

    def _wait_until_answering(self, started_s: float) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        waiting = list(self.fronts)
        while waiting:
            waiting = [front for front in waiting if not answers(front.probe_url)]
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

    def wait(self) -> int:
        """Block until a signal (exit 0) or until a server thread dies on its own (exit 1)."""
        while not self.stop_requested.wait(0.5):
            for front in self.fronts:
                if front.thread is not None and not front.thread.is_alive():
                    logger.error("%s server stopped unexpectedly; shutting the process down", front.label)
                    return 1
        return 0

    def _busy(self) -> bool:
        return self.service.gpu_status().busy

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
        models = self.service.gpu_status().models
        states = ", ".join(f"{name} {info.state}" for name, info in models.items())
        logger.info("shutdown complete, every model released (%s)", states or "no models")
