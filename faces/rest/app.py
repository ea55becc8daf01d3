"""The REST face's app factory: `create_app(service, settings)`.

The routes live in `faces/rest/routes/` (one module per route group, each a Blueprint); this module wires them
to one `ApiContext`, adds bearer-key auth, request metrics, CORS, the error mapping and the OpenAPI docs at
/apidocs (/apispec_1.json, generated from the routes' models). Every route gets its request validated by its
models, calls one `TTSService` method and encodes the answer."""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any

from flasgger import Swagger
from flask import Flask, Response, g, request
from flask_cors import CORS

from faces.rest.common import EXPOSED_HEADERS, ApiContext
from faces.rest.errors import register_error_handlers
from faces.rest.openapi import build_spec
from faces.rest.routes import outputs, speech, status, transcriptions, tts, voices
from llasa import __version__
from llasa.config import Settings
from llasa.errors import Unauthorized

logger = logging.getLogger(__name__)


OPEN_PATHS = frozenset({"/health", "/ready", "/apidocs", "/apispec_1.json"})

OPEN_PREFIXES = ("/apidocs/", "/flasgger_static/")


def _register_hooks(app: Flask, ctx: ApiContext) -> None:
    api_key = ctx.settings.api_key.encode()

    @app.before_request
    def _start_and_authorize() -> None:
        g.started = time.perf_counter()
        path = request.path
        if not api_key or request.method == "OPTIONS" or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            return
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        # compare_digest: the time taken must not tell an attacker how much of a guessed key was right.
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key):
            raise Unauthorized("missing or wrong API key; send the header 'Authorization: Bearer <API_KEY>'")

    @app.after_request
    def _count(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
        ctx.metrics.requests.labels(route, request.method, str(response.status_code)).inc()
        if response.status_code >= 400:
            ctx.metrics.errors.labels(route, getattr(g, "error_code", str(response.status_code))).inc()
        started = getattr(g, "started", None)
        if started is not None:
            ctx.metrics.latency.labels(route).observe(time.perf_counter() - started)
        return response


ROUTE_GROUPS = (status.bp, tts.bp, outputs.bp, transcriptions.bp, speech.bp, voices.bp)
"""Each a Blueprint at module level: a handler can be imported and read alone; it finds its ApiContext in
`current_app.extensions` (`faces.rest.common.api_context()`)."""


def create_app(service: Any, settings: Settings) -> Flask:
    """Build the REST app around one TTSService. Starts no thread: the job worker starts with the first job,
    and `serve()` / `RunningServer.start()` start the output cleanup."""
    app = Flask(__name__)
    # '//' in a path must reach the routes (and be refused there as JSON), not be redirected to another URL.
    app.url_map.merge_slashes = False
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    ctx = ApiContext(service, settings)
    app.extensions["llasa_api"] = ctx
    origins = settings.cors_origin_list
    if origins:
        # Opt-in (CORS_ORIGINS): with none configured browsers on other origins get no CORS headers at all.
        CORS(app, origins="*" if "*" in origins else origins, expose_headers=EXPOSED_HEADERS)
    register_error_handlers(app, ctx)
    _register_hooks(app, ctx)
    for blueprint in ROUTE_GROUPS:
        app.register_blueprint(blueprint)
    info = {
        "title": "Llasa TTS REST API",
        "version": __version__,
        "description": (
            "Voice-cloning text-to-speech (Llasa + XCodec2 + faster-whisper). Errors are "
            '{"error": {"code", "message"}}. The /v1 routes follow OpenAI\'s audio API.'
        ),
    }
    # Generated from the routes' @operation records and the models they name (faces/rest/openapi.py).
    spec = build_spec(app, info)
    Swagger(app, template=spec, config={**Swagger.DEFAULT_CONFIG, "openapi": spec["openapi"]})
    return app
