"""Helpers shared by the REST front end's modules: reading a body, response headers, disconnect detection.

Nothing here imports torch or the models; it only turns HTTP requests into arguments for `TTSService` and
its answers back into HTTP.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import urllib.parse
from collections.abc import Mapping
from typing import Any

from flask import Request, current_app, request
from werkzeug.datastructures import FileStorage

from llasa.config import Settings
from llasa.errors import InvalidInput, TTSError
from llasa.quality.captions import render_captions
from llasa.quality.transcript import TimedWord
from llasa.text import join_texts
from llasa.types import SynthesisRequest, SynthesisResult

logger = logging.getLogger(__name__)


class UnsupportedMediaType(TTSError):
    """A request body in a content type the route does not read (HTTP 415)."""

    status_code = 415
    code = "unsupported_media_type"


def read_body(accepted: tuple[str, ...], req: Request | None = None) -> tuple[dict[str, Any], dict[str, FileStorage]]:
    """Return (fields, files) of a body in one of the `accepted` media types; an empty body gives empty dicts.

    JSON comes as application/json (or a +json type), forms as multipart/form-data or
    application/x-www-form-urlencoded. Raises UnsupportedMediaType for a type not accepted and InvalidInput for
    JSON that does not parse or is not an object.
    """
    req = req or request
    mimetype = req.mimetype or ""
    kind = "application/json" if mimetype.endswith("+json") else mimetype
    if not mimetype and not req.get_data(cache=True):
        return {}, {}
    if kind not in accepted:
        raise UnsupportedMediaType(
            f"content type {mimetype or 'none'!r} is not accepted here; send {' or '.join(accepted)}"
        )
    if kind == "application/json":
        raw = req.get_data(cache=True)
        if not raw.strip():
            return {}, {}
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise InvalidInput(f"the request body is not valid JSON ({e}); send a JSON object", field="body") from e
        if not isinstance(body, dict):
            raise InvalidInput('the JSON body must be an object such as {"text": "..."}', field="body")
        return body, {}
    fields = {key: req.form.get(key) for key in req.form}
    return fields, {key: req.files[key] for key in req.files}


def header_text(value: str) -> str:
    """Percent-encode text for an HTTP header (headers are Latin-1; transcripts may be Chinese)."""
    return urllib.parse.quote(value, safe=" ,.;:!?'-_()")


def synthesis_headers(result: SynthesisResult, *, sample_rate: int, fmt: str) -> dict[str, str]:
    """The facts of a synthesis as X- headers beside the audio body."""
    facts = result.facts()
    headers = {
        "X-Audio-Duration-S": f"{result.duration_s:.3f}",
        "X-Sample-Rate": str(sample_rate),
        "X-Audio-Format": fmt,
        "X-Num-Codes": str(result.num_codes),
        "X-Chunks": str(result.chunks),
        "X-Seed": "" if result.seed is None else str(result.seed),
        "X-Voice": header_text(result.voice or ""),
        "X-Reference-Text": header_text(result.reference_text),
        "X-Reference-Seconds": f"{result.reference_seconds:.3f}",
        "X-Reference-Trimmed": "true" if result.reference_trimmed else "false",
        "X-Timings-S": json.dumps(facts["timings_s"], separators=(",", ":")),
        "X-Real-Time-Factor": f"{result.real_time_factor:.4f}",
    }
    if result.warnings:
        headers["X-Warnings"] = header_text(" | ".join(result.warnings))
    return headers


def captions_headers(ctx: ApiContext, result: SynthesisResult, *, speed: float = 1.0) -> dict[str, str]:
    """With captions asked for: they are kept as a file beside the audio, X-Captions-URL says where; and every
    chunk's takes (X-Takes: "1,3" = chunk 2 needed three). `speed` (OpenAI's tempo change) rescales the times."""
    headers = {"X-Takes": ",".join(str(report.attempts) for report in result.chunk_reports)}
    captions = captions_at_speed(result, speed)
    if captions is not None and result.caption_format is not None:
        saved = ctx.service.outputs.save_captions(captions, result.caption_format)
        headers["X-Captions-URL"] = output_url(saved.id)
    return headers


def captions_at_speed(result: SynthesisResult, speed: float) -> str | None:
    """The result's captions for its audio played `speed` times faster (OpenAI's `speed`: same pitch, new tempo)."""
    if result.captions is None or result.caption_format is None or speed == 1.0 or result.words is None:
        return result.captions
    words = [TimedWord(w.word, round(w.start_s / speed, 3), round(w.end_s / speed, 3)) for w in result.words]
    text = functools.reduce(join_texts, [report.text for report in result.chunk_reports])
    return render_captions(result.caption_format, text, words)


#: Headers a browser page may read from a cross-origin response (flask-cors `expose_headers`).
EXPOSED_HEADERS = [
    "X-Audio-Duration-S",
    "X-Sample-Rate",
    "X-Audio-Format",
    "X-Num-Codes",
    "X-Chunks",
    "X-Seed",
    "X-Voice",
    "X-Reference-Text",
    "X-Reference-Seconds",
    "X-Reference-Trimmed",
    "X-Timings-S",
    "X-Real-Time-Factor",
    "X-Warnings",
    "X-Takes",
    "X-Captions-URL",
    "X-Output-Id",
    "Retry-After",
    "Location",
    "Content-Disposition",
]


def public_url(settings: Settings, path: str) -> str:
    """An absolute URL for `path`: PUBLIC_BASE_URL when set, else the address this request came in on."""
    if settings.public_base_url:
        return settings.public_base_url + path
    return request.host_url.rstrip("/") + path


def api_context() -> ApiContext:
    """The ApiContext of the app serving the current request (set by `create_app`)."""
    return current_app.extensions["llasa_api"]


def output_url(output_id: str) -> str:
    """Where a client downloads a generated file (GET /api/outputs/<id>)."""
    return public_url(api_context().settings, f"/api/outputs/{output_id}")


class DisconnectWatch:
    """Sets `cancel` as soon as the HTTP client goes away, so its synthesis stops instead of running on.

    waitress reports a closed connection through `environ["waitress.client_disconnected"]` when it runs with
    `channel_request_lookahead > 0` (see `make_server`). Under another server the watch does nothing and a
    stream stops at its next write instead (the response generator is closed).
    """

    def __init__(self, environ: Mapping[str, Any], cancel: threading.Event, *, interval_s: float = 0.2) -> None:
        self._check = environ.get("waitress.client_disconnected")
        self.cancel = cancel
        self.interval_s = interval_s
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self.disconnected = False

    def start(self) -> DisconnectWatch:
        if self._check is not None and self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="api-disconnect-watch", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._done.set()

    def _watch(self) -> None:
        while not self._done.wait(self.interval_s):
            try:
                gone = bool(self._check())
            except Exception:
                logger.debug("client_disconnected check failed", exc_info=True)
                return
            if gone:
                self.disconnected = True
                logger.info("client disconnected; cancelling its synthesis")
                self.cancel.set()
                return

    def __enter__(self) -> DisconnectWatch:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class ApiContext:
    """What every route needs: the service, the settings, the job runner and the metrics of one app."""

    def __init__(self, service: Any, settings: Settings) -> None:
        from faces.rest.jobs import JobRunner
        from faces.rest.metrics import ApiMetrics

        self.service = service
        self.settings = settings
        self.jobs = JobRunner(
            service,
            ttl_s=settings.output_ttl_hours * 3600,
            max_unfinished=settings.max_queue + 1,
        )
        self.metrics = ApiMetrics(self.jobs.counts, service_registry=service.metrics.registry)
        self.shutting_down = False

    def synthesize(self, synthesis: SynthesisRequest) -> SynthesisResult:
        """Run one synthesis for the current request; a client that disconnects cancels it."""
        cancel = threading.Event()
        with DisconnectWatch(request.environ, cancel):
            return self.service.synthesize(synthesis, cancel=cancel)
