"""One JSON error shape for every failure, `{"error": {"code", "message"}}`: the REST face's error mapping."""

from __future__ import annotations

import logging
import math
import re
import uuid
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from faces.rest.common import (
    ApiContext,
)
from llasa.errors import Busy, TTSError, Unauthorized

logger = logging.getLogger(__name__)


_SNAKE = re.compile(r"[^a-z0-9]+")


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if field:
        error["field"] = field
    return {"error": error}


def register_error_handlers(app: Flask, ctx: ApiContext) -> None:
    settings = ctx.settings

    @app.errorhandler(TTSError)
    def _tts_error(error: TTSError) -> tuple[Response, int]:
        g.error_code = error.code
        response = jsonify(error.to_dict())
        if isinstance(error, Busy):
            response.headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_s)))
        if isinstance(error, Unauthorized):
            response.headers["WWW-Authenticate"] = 'Bearer realm="llasa-tts"'
        if error.status_code >= 500:
            logger.warning("%s %s -> %d %s: %s", request.method, request.path, error.status_code, error.code, error)
        return response, error.status_code

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(_error: RequestEntityTooLarge) -> tuple[Response, int]:
        g.error_code = "payload_too_large"
        message = (
            f"the request body is larger than the upload limit of {settings.max_upload_mb:g} MiB (MAX_UPLOAD_MB); "
            "send a shorter or more compressed audio file"
        )
        return jsonify(error_body("payload_too_large", message)), 413

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> tuple[Response, int]:
        status = error.code or 500
        code = _SNAKE.sub("_", (error.name or "error").lower()).strip("_")
        g.error_code = code
        message = error.description or error.name
        if status == 404:
            message = f"no route {request.method} {request.path}; see /apidocs for the API"
        elif status == 405:
            allowed = ", ".join(sorted(error.valid_methods or [])) if hasattr(error, "valid_methods") else ""
            message = f"{request.method} is not allowed on {request.path}" + (f"; use {allowed}" if allowed else "")
        response = jsonify(error_body(code, message))
        allow = error.get_response().headers.get("Allow")
        if allow:
            response.headers["Allow"] = allow
        return response, status

    @app.errorhandler(Exception)
    def _internal_error(error: Exception) -> tuple[Response, int]:
        # A bug: the trace goes to the log under an id the client can quote; the client sees no internals.
        incident = uuid.uuid4().hex[:12]
        logger.error("unhandled error in %s %s [incident %s]", request.method, request.path, incident, exc_info=error)
        g.error_code = "internal_error"
        message = f"internal server error (incident {incident}); the server log has the details"
        return jsonify(error_body("internal_error", message)), 500
