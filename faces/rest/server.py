"""Serving the REST app with waitress: in the foreground (`serve`) or on a thread (`RunningServer`, main.py)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from flask import Flask

from faces.rest.app import create_app
from faces.rest.common import (
    ApiContext,
)
from llasa.bootstrap import FrontEnd, port_error
from llasa.config import Settings, client_host
from llasa.outputs import cleanup_interval_s as cleanup_interval_s_for

logger = logging.getLogger(__name__)


SERVER_THREADS = 32


class _Janitor:
    """Forgets jobs whose output has expired every `interval_s`, on a daemon thread.

    The files themselves are the service's to delete (`TTSService.start_output_cleanup`, stopped by its
    shutdown()); this only drops the job records that point at them."""

    def __init__(self, ctx: ApiContext, interval_s: float) -> None:
        self.ctx = ctx
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="api-job-expiry", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def run_once(self) -> None:
        try:
            forgotten = self.ctx.jobs.expire()
            if forgotten:
                logger.info("%d expired jobs forgotten", forgotten)
        except Exception:
            logger.exception("job expiry failed; retrying in %.0f s", self.interval_s)

    def _loop(self) -> None:
        self.run_once()
        while not self._stop.wait(self.interval_s):
            self.run_once()


def make_server(
    app: Flask,
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    socket_map: dict[int, Any] | None = None,
) -> Any:
    """A waitress server for `app` (not yet running): one process, SERVER_THREADS threads.

    `channel_request_lookahead` keeps reading each connection while its request runs, which is how waitress
    notices a client that hung up (`environ["waitress.client_disconnected"]`), so its synthesis is cancelled.
    `port=0` picks a free port (see `server.effective_port`); `socket_map` lets the caller close connections.
    """
    from waitress import create_server

    return create_server(
        app,
        map=socket_map,
        host=host or settings.host,
        port=settings.api_port if port is None else port,
        threads=SERVER_THREADS,
        channel_request_lookahead=1,
        ident="llasa-tts",
    )


def serve(
    app: Flask,
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    cleanup_interval_s: float | None = None,
) -> None:
    """Serve `app` with waitress in this thread until interrupted.

    Starts the service's output cleanup (expired files deleted every `cleanup_interval_s`, default from
    OUTPUT_TTL_HOURS; stopped by `service.shutdown()`) and forgets the jobs of expired outputs meanwhile.
    """
    ctx: ApiContext = app.extensions["llasa_api"]
    server = make_server(app, settings, host=host, port=port)
    interval_s = cleanup_interval_s or cleanup_interval_s_for(settings.output_ttl_hours)
    ctx.service.start_output_cleanup(interval_s)
    janitor = _Janitor(ctx, interval_s=interval_s)
    janitor.start()
    logger.info(
        "REST API on http://%s:%s (Swagger UI at /apidocs, %d threads)",
        server.effective_host,
        server.effective_port,
        SERVER_THREADS,
    )
    try:
        server.run()
    finally:
        ctx.shutting_down = True
        janitor.stop()
        ctx.jobs.shutdown()
        server.close()


class RunningServer:
    """The REST app served by waitress on a background thread (main.py, tests, benchmarks).

    `RunningServer(app, settings, host="127.0.0.1", port=0).start()` binds a free port; `.url` is where it
    listens; `.stop()` closes the listener and every open connection, cancels unfinished jobs and stops the
    job expiry timer. `start()` also starts the service's output cleanup (every `cleanup_interval_s`, default
    from OUTPUT_TTL_HOURS), which runs until `service.shutdown()`.
    """

    def __init__(
        self,
        app: Flask,
        settings: Settings,
        *,
        host: str | None = None,
        port: int | None = None,
        cleanup_interval_s: float | None = None,
    ) -> None:
        self.ctx: ApiContext = app.extensions["llasa_api"]
        self._map: dict[int, Any] = {}
        self.server = make_server(app, settings, host=host, port=port, socket_map=self._map)
        self.port = int(self.server.effective_port)
        self.url = f"http://{client_host(str(self.server.effective_host))}:{self.port}"
        self.cleanup_interval_s = cleanup_interval_s or cleanup_interval_s_for(settings.output_ttl_hours)
        self._janitor = _Janitor(self.ctx, interval_s=self.cleanup_interval_s)
        self.thread = threading.Thread(target=self.server.run, name="api-server", daemon=True)

    def start(self) -> RunningServer:
        self.ctx.service.start_output_cleanup(self.cleanup_interval_s)
        self._janitor.start()
        self.thread.start()
        logger.info("REST API on %s (Swagger UI at /apidocs)", self.url)
        return self

    def stop_accepting(self) -> None:
        """Refuse new connections (and answer /ready with 503); requests in flight go on until stop()."""
        from waitress import wasyncore

        self.ctx.shutting_down = True
        # The plain dispatcher close: the listening socket only (the server's own close() also shuts the trigger).
        self._in_loop(lambda: wasyncore.dispatcher.close(self.server))

    def stop(self, timeout_s: float = 5.0) -> None:
        """Close every connection, stop the worker threads, cancel unfinished jobs, stop the job expiry timer
        (the output cleanup is the service's and stops with `service.shutdown()`)."""
        self.ctx.shutting_down = True
        self._janitor.stop()
        self.ctx.jobs.shutdown()

        def close_everything() -> None:
            # The listener, the trigger and every connection: with the map empty the loop ends.
            for dispatcher in list(self._map.values()):
                dispatcher.close()

        # Worker threads first: a request finishing later would pull the trigger after it is closed.
        self.server.task_dispatcher.shutdown(timeout=timeout_s)
        self._in_loop(close_everything)
        self.thread.join(timeout_s)

    def _in_loop(self, action: Callable[[], None]) -> None:
        """Run `action` on the server's loop thread: closing sockets from another thread races its poll()."""
        try:
            self.server.trigger.pull_trigger(action)
        except OSError:
            action()  # the trigger is already closed (server.close() was called): the loop is winding down


def start_in_background(service: Any, settings: Settings, grace_s: float) -> FrontEnd:
    """main.py's starter: the REST API on its own thread over the shared service."""
    app = create_app(service, settings)
    try:
        running = RunningServer(app, settings)  # binds now: a taken port fails here, clearly
    except OSError as exc:
        raise port_error(settings.host, settings.api_port, "API_PORT", exc) from exc
    running.start()
    url = f"http://{client_host(settings.host)}:{settings.api_port}"
    # stop_accepting() closes the listener only (/ready answers 503, requests in flight go on); stop() then closes
    # the remaining connections, cancels unfinished jobs and stops the job expiry timer.
    return FrontEnd("api", "REST API", url, f"{url}/health", running.stop_accepting, running.stop, running.thread)
