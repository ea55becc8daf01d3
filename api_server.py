"""REST API of the Llasa TTS service (port 7861): Flask app factory, waitress server, `python api_server.py`.

`create_app(service, settings)` builds the app: the original endpoints (/health, /api/gpu/*, /api/transcribe,
/api/tts with async jobs, /api/outputs), the OpenAI-compatible /v1 routes (api_openai.py), /metrics, Swagger
docs at /apidocs (/apispec_1.json), CORS, bearer-key auth and one JSON error shape, `{"error": {"code",
"message"}}`. Every route decodes the request, calls one `TTSService` method and encodes the answer; the GPU
queue (one synthesis at a time, MAX_QUEUE waiters, 429) is the core's, shared with the UI and MCP.
"""

from __future__ import annotations

import argparse
import hmac
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from flasgger import Swagger
from flask import Flask, Response, g, jsonify, request, send_file
from flask_cors import CORS
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from api_common import (
    EXPOSED_HEADERS,
    ApiContext,
    parse_bool,
    parse_generation_params,
    parse_number,
    parse_sample_rate,
    parse_text,
    public_url,
    read_audio_field,
    read_body,
    synthesis_headers,
)
from llasa import __version__
from llasa.audio import AUDIO_FORMATS, encode_audio, validate_output
from llasa.bootstrap import FrontEnd, client_host, load_settings_or_exit, port_error, run_alone, start_process
from llasa.config import Settings
from llasa.errors import Busy, InvalidInput, TTSError, Unauthorized
from llasa.outputs import FORMAT_EXTENSIONS
from llasa.outputs import cleanup_interval_s as cleanup_interval_s_for
from llasa.types import SAMPLE_RATE, SynthesisRequest, TranscriptionRequest

logger = logging.getLogger(__name__)

#: Routes anyone may call even when API_KEY is set (load balancers and orchestrators probe them; the Swagger
#: UI and spec describe the API and expose no data, and the UI sends the key entered under "Authorize").
OPEN_PATHS = frozenset({"/health", "/ready", "/apidocs", "/apispec_1.json"})
OPEN_PREFIXES = ("/apidocs/", "/flasgger_static/")
#: waitress worker threads: 16 concurrent clients waiting on the GPU queue, streams, jobs polling, docs.
SERVER_THREADS = 32
_EXTENSION_FORMATS = {ext: fmt for fmt, ext in FORMAT_EXTENSIONS.items()}
_SNAKE = re.compile(r"[^a-z0-9]+")

SWAGGER_DEFINITIONS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "description": "stable machine-readable code, e.g. invalid_input"},
                    "message": {"type": "string", "description": "what was wrong and what to do"},
                    "field": {"type": "string", "description": "the offending parameter, when there is one"},
                },
            }
        },
    },
    "SynthesisFacts": {
        "type": "object",
        "properties": {
            "duration_s": {"type": "number"},
            "sample_rate": {"type": "integer"},
            "num_codes": {"type": "integer"},
            "reference_text": {"type": "string"},
            "reference_seconds": {"type": "number"},
            "reference_trimmed": {"type": "boolean"},
            "chunks": {"type": "integer"},
            "timings_s": {"type": "object", "additionalProperties": {"type": "number"}},
            "real_time_factor": {"type": "number"},
            "seed": {"type": "integer"},
            "voice": {"type": "string"},
            "warnings": {"type": "array", "items": {"type": "string"}},
        },
    },
    "TTSJsonResponse": {
        "type": "object",
        "description": "POST /api/tts?response=json: the synthesis facts and where to download the audio",
        "properties": {
            "result": {"$ref": "#/definitions/SynthesisFacts"},
            "output": {"$ref": "#/definitions/Output"},
        },
    },
    "Output": {
        "type": "object",
        "properties": {
            "id": {"type": "string", "example": "0123456789abcdef0123456789abcdef.wav"},
            "url": {"type": "string", "description": "download URL (GET /api/outputs/{output_id})"},
            "format": {"type": "string"},
            "mime_type": {"type": "string"},
            "size_bytes": {"type": "integer"},
        },
    },
    "Job": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "state": {"type": "string", "enum": ["queued", "running", "done", "failed", "cancelled"]},
            "progress": {
                "type": "object",
                "properties": {
                    "chunks_done": {"type": "integer"},
                    "chunks_total": {"type": "integer"},
                    "stage": {"type": "string"},
                    "fraction": {"type": "number"},
                },
            },
            "cancel_requested": {"type": "boolean"},
            "created_at": {"type": "string"},
            "started_at": {"type": "string"},
            "finished_at": {"type": "string"},
            "result": {"$ref": "#/definitions/SynthesisFacts"},
            "output": {"$ref": "#/definitions/Output"},
            "error": {"type": "object"},
        },
    },
    "Transcription": {
        "type": "object",
        "properties": {
            "text": {"type": "string"},
            "language": {"type": "string"},
            "duration_s": {"type": "number"},
            "segments": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "start_s": {"type": "number"},
                        "end_s": {"type": "number"},
                        "text": {"type": "string"},
                    },
                },
            },
        },
    },
    "Voice": {
        "type": "object",
        "description": "OpenAI's audio.voice object plus this service's fields",
        "properties": {
            "id": {"type": "string", "description": "the voice name"},
            "object": {"type": "string", "enum": ["audio.voice"]},
            "type": {"type": "string", "enum": ["audio_sample"]},
            "name": {"type": "string"},
            "created_at": {"type": "integer", "description": "Unix seconds"},
            "created_iso": {"type": "string", "description": "the same time in ISO 8601"},
            "transcript": {"type": "string"},
            "duration_s": {"type": "number"},
            "num_codes": {"type": "integer"},
            "codec_model": {"type": "string"},
            "warnings": {
                "type": "array",
                "items": {"type": "string"},
                "description": "what to check after create/edit, e.g. a transcript redone after a trim",
            },
        },
    },
}


def _error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if field:
        error["field"] = field
    return {"error": error}


def _register_error_handlers(app: Flask, ctx: ApiContext) -> None:
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
        return jsonify(_error_body("payload_too_large", message)), 413

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
        response = jsonify(_error_body(code, message))
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
        return jsonify(_error_body("internal_error", message)), 500


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


def _tts_request(ctx: ApiContext, fields: dict[str, Any], files: dict[str, Any], endpoint: str) -> SynthesisRequest:
    """The SynthesisRequest of /api/tts fields (multipart or JSON)."""
    reference = read_audio_field(fields, files, "reference_audio", ctx.settings)
    return SynthesisRequest(
        text=parse_text(fields.get("text"), "text", required=True),
        reference_audio=reference,
        reference_text=parse_text(fields.get("reference_text"), "reference_text"),
        voice=parse_text(fields.get("voice"), "voice"),
        language=parse_text(fields.get("language"), "language"),
        params=parse_generation_params(fields),
        surface="rest",
        endpoint=endpoint,
    )


def _audio_format(value: object, field: str = "format", default: str = "wav") -> str:
    fmt = default if value in (None, "") else value
    if not isinstance(fmt, str) or fmt.lower() not in AUDIO_FORMATS:
        raise InvalidInput(f"{field} {value!r} is not supported; use one of {', '.join(AUDIO_FORMATS)}", field=field)
    return fmt.lower()


def _register_core_routes(app: Flask, ctx: ApiContext) -> None:
    service, settings = ctx.service, ctx.settings

    def output_url(output_id: str) -> str:
        return public_url(settings, f"/api/outputs/{output_id}")

    @app.get("/health")
    def health() -> Response:
        """Liveness: service status, version, device and the state of each model (no auth needed).
        ---
        tags: [status]
        security: []
        responses:
          200:
            description: the service is up
            schema:
              type: object
              properties:
                status: {type: string, example: ok}
                version: {type: string}
                device: {type: string}
                models: {type: object, additionalProperties: {type: string}}
                queue_depth: {type: integer}
        """
        info = dict(service.health())
        info["queue_depth"] = service.queue_depth
        return jsonify(info)

    @app.get("/ready")
    def ready() -> tuple[Response, int]:
        """Readiness: 200 when the service accepts work, 503 while it shuts down (no auth needed).
        ---
        tags: [status]
        security: []
        responses:
          200:
            description: ready for requests
            schema:
              type: object
              properties:
                ready: {type: boolean}
                queue_depth: {type: integer}
                max_queue: {type: integer}
          503:
            description: shutting down or the service cannot report its health
            schema: {$ref: '#/definitions/Error'}
        """
        if ctx.shutting_down:
            return jsonify(_error_body("not_ready", "the server is shutting down")), 503
        try:
            status = service.health().get("status")
        except Exception:
            logger.warning("readiness probe: service health failed", exc_info=True)
            status = "error"
        if status != "ok":
            return jsonify(_error_body("not_ready", f"the service reports status {status!r}")), 503
        return jsonify({"ready": True, "queue_depth": service.queue_depth, "max_queue": settings.max_queue}), 200

    @app.get("/api/gpu/status")
    def gpu_status() -> Response:
        """GPU memory and the state of every model (device, bytes, last use, leases, load/reload/offload counts).
        ---
        tags: [gpu]
        responses:
          200:
            description: the GPU manager's status
            schema:
              type: object
              properties:
                device: {type: object}
                models: {type: object}
                settings: {type: object}
          401:
            description: missing or wrong API key
            schema: {$ref: '#/definitions/Error'}
        """
        return jsonify(service.gpu_status().to_dict())

    def _model_name(fields: dict[str, Any]) -> str | None:
        # An unknown name is the GPU manager's NotFound (404), with the same message MCP gives.
        return parse_text(fields.get("model"), "model")

    gpu_action_doc = """
        ---
        tags: [gpu]
        consumes: [application/json]
        parameters:
          - in: body
            name: body
            required: false
            description: '{"model": "llasa"} for one model; an empty body or {} for all'
            schema:
              type: object
              properties:
                model: {type: string, enum: [llasa, xcodec2, whisper]}
        responses:
          200:
            description: what was done; a model in use is handled when its last request ends (the result says so)
            schema: {type: object}
          400:
            description: invalid JSON
            schema: {$ref: '#/definitions/Error'}
          401:
            description: missing or wrong API key
            schema: {$ref: '#/definitions/Error'}
          404:
            description: no model of that name is registered
            schema: {$ref: '#/definitions/Error'}
          415:
            description: body that is not JSON
            schema: {$ref: '#/definitions/Error'}
        """

    @app.post("/api/gpu/offload")
    def gpu_offload() -> Response:
        fields, _files = read_body()
        return jsonify(service.offload(_model_name(fields)))

    gpu_offload.__doc__ = "Move one model (or all) from the GPU to CPU RAM; reload is fast.\n" + gpu_action_doc

    @app.post("/api/gpu/release")
    def gpu_release() -> Response:
        fields, _files = read_body()
        return jsonify(service.release(_model_name(fields)))

    gpu_release.__doc__ = "Release one model (or all) entirely, freeing GPU and CPU memory.\n" + gpu_action_doc

    @app.post("/api/gpu/timeout")
    def gpu_timeout() -> Response:
        """Set the idle timeout (GPU -> CPU), the evict timeout (CPU -> released) and offload-after-use.
        ---
        tags: [gpu]
        consumes: [application/json]
        parameters:
          - in: body
            name: body
            required: true
            schema:
              type: object
              properties:
                idle_timeout_s:
                  type: number
                  description: seconds idle on the GPU before offload (0 = at once, -1 = never)
                evict_timeout_s:
                  type: number
                  description: seconds idle in CPU RAM before release (0 = at once, -1 = never)
                offload_after_use: {type: boolean, description: 'offload as soon as the last request ends'}
                timeout: {type: number, description: 'older name for idle_timeout_s'}
        responses:
          200:
            description: the timeouts now in force
            schema: {type: object}
          400:
            description: no field given, or a value out of range (the error names the field)
            schema: {$ref: '#/definitions/Error'}
          401:
            description: missing or wrong API key
            schema: {$ref: '#/definitions/Error'}
          415:
            description: body that is not JSON
            schema: {$ref: '#/definitions/Error'}
        """
        fields, _files = read_body()
        idle = parse_number(fields.get("idle_timeout_s", fields.get("timeout")), "idle_timeout_s")
        evict = parse_number(fields.get("evict_timeout_s"), "evict_timeout_s")
        after_use = fields.get("offload_after_use")
        after_use = None if after_use is None else parse_bool(after_use, "offload_after_use")
        return jsonify(service.set_timeouts(idle_timeout_s=idle, evict_timeout_s=evict, offload_after_use=after_use))

    @app.post("/api/transcribe")
    def transcribe() -> Response:
        """Transcribe speech in an uploaded audio file with faster-whisper.
        A JSON body works too, with `audio` as base64 text or a data: URL (same fields, same limits).
        ---
        tags: [speech]
        consumes: [multipart/form-data, application/json]
        parameters:
          - in: formData
            name: audio
            type: file
            required: true
            description: audio file (wav, flac, mp3, ogg/opus, m4a, webm); in a JSON body, base64 text or a data URL
          - in: formData
            name: language
            type: string
            required: false
            description: language code such as en or zh; omit or auto to detect
        responses:
          200:
            description: the transcript with its segments
            schema: {$ref: '#/definitions/Transcription'}
          400:
            description: missing audio, bad language code, or audio too short
            schema: {$ref: '#/definitions/Error'}
          401:
            description: missing or wrong API key
            schema: {$ref: '#/definitions/Error'}
          413:
            description: upload over MAX_UPLOAD_MB
            schema: {$ref: '#/definitions/Error'}
          415:
            description: unreadable audio, or a body that is not multipart
            schema: {$ref: '#/definitions/Error'}
          429:
            description: too many requests wait for the GPU (see Retry-After)
            schema: {$ref: '#/definitions/Error'}
          503:
            description: the GPU stayed busy too long, or a model cannot be loaded
            schema: {$ref: '#/definitions/Error'}
        """
        fields, files = read_body()
        audio = read_audio_field(fields, files, "audio", settings, required=True)
        language = parse_text(fields.get("language"), "language")
        result = service.transcribe(TranscriptionRequest(audio, language, surface="rest", endpoint="transcribe"))
        return jsonify(result.to_dict())

    @app.post("/api/tts")
    def tts() -> Response | tuple[Response, int]:
        """Synthesise speech, cloning the voice of a reference clip or a saved voice.
        Send multipart/form-data (reference_audio as a file) or JSON (reference_audio as base64 text).
        Returns the audio itself with X- headers (duration, sample rate, transcript used, timings);
        with ?response=json the same facts and a download URL instead (200 body:
        {"result": SynthesisFacts, "output": Output}, see definitions/TTSJsonResponse); with ?async=true a job (202).
        A JSON body takes the same fields as the form below, with reference_audio as base64 text or a data: URL.
        ---
        tags: [speech]
        consumes: [multipart/form-data, application/x-www-form-urlencoded, application/json]
        produces: [audio/wav, audio/flac, audio/mpeg, audio/ogg, audio/aac, audio/pcm, application/json]
        parameters:
          - in: query
            name: async
            type: boolean
            required: false
            description: true = answer 202 with a job id at once
          - in: query
            name: response
            type: string
            enum: [audio, json]
            required: false
            description: json = facts and a download URL instead of the audio
          - in: formData
            name: text
            type: string
            required: true
            description: the words to speak (Chinese or English; at most MAX_TEXT_CHARS)
          - in: formData
            name: reference_audio
            type: file
            required: false
            description: voice to clone (0.5 s or more; trimmed to MAX_REFERENCE_SECONDS); JSON body, base64 text
          - in: formData
            name: reference_text
            type: string
            required: false
            description: transcript of the reference (transcribed when omitted)
          - in: formData
            name: voice
            type: string
            required: false
            description: a saved voice name instead of reference_audio
          - in: formData
            name: language
            type: string
            required: false
            description: language of the reference for transcription (en, zh, auto)
          - in: formData
            name: temperature
            type: number
            required: false
            description: sampling temperature (0, 2]; default 0.8
          - in: formData
            name: top_p
            type: number
            required: false
            description: nucleus sampling (0, 1]; default 1.0
          - in: formData
            name: top_k
            type: integer
            required: false
            description: top-k sampling, 0 = off; default 50
          - {in: formData, name: repetition_penalty, type: number, required: false, description: '0.5..2; default 1.0'}
          - in: formData
            name: max_audio_seconds
            type: number
            required: false
            description: upper bound on audio per text chunk (s)
          - in: formData
            name: seed
            type: integer
            required: false
            description: same seed + same input = same audio
          - in: formData
            name: format
            type: string
            enum: [wav, flac, mp3, opus, aac, pcm]
            required: false
            description: output format; default wav
          - in: formData
            name: sample_rate
            type: integer
            enum: [8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000]
            required: false
            description: output rate in Hz, default 16000; opus takes only 8000, 12000, 16000, 24000 or 48000 (else 400)
        responses:
          200:
            description: the audio (or, with response=json, its facts and download URL)
            schema: {type: string, format: binary}
            headers:
              X-Audio-Duration-S: {type: number, description: audio length in seconds}
              X-Sample-Rate: {type: integer, description: sample rate of the body}
              X-Seed: {type: integer, description: the seed used (repeat it to get the same audio)}
              X-Reference-Text:
                type: string
                description: transcript the model was conditioned on (percent-encoded UTF-8)
              X-Timings-S:
                type: string
                description: 'JSON seconds per stage: transcribe, encode, generate, decode, total'
              X-Real-Time-Factor: {type: number, description: wall time over audio time}
          202:
            description: job accepted (async=true); poll the Location
            schema: {$ref: '#/definitions/Job'}
          400:
            description: a bad parameter (the error names the field), empty or too long text, too short reference
            schema: {$ref: '#/definitions/Error'}
          401:
            description: missing or wrong API key
            schema: {$ref: '#/definitions/Error'}
          404:
            description: unknown saved voice
            schema: {$ref: '#/definitions/Error'}
          413:
            description: upload over MAX_UPLOAD_MB
            schema: {$ref: '#/definitions/Error'}
          415:
            description: unreadable reference audio, or an unsupported body type
            schema: {$ref: '#/definitions/Error'}
          429:
            description: MAX_QUEUE requests already wait for the GPU (see Retry-After)
            schema: {$ref: '#/definitions/Error'}
          499:
            description: the client disconnected and the synthesis was stopped
            schema: {$ref: '#/definitions/Error'}
          500:
            description: the model produced nothing usable, or an internal error
            schema: {$ref: '#/definitions/Error'}
          503:
            description: GPU busy too long (busy, with Retry-After), or a model cannot load (model_unavailable)
            schema: {$ref: '#/definitions/Error'}
        """
        fields, files = read_body()
        is_async = parse_bool(request.args.get("async"), "async")
        as_json = _response_mode(request.args.get("response")) == "json"
        fmt = _audio_format(fields.get("format"))
        sample_rate = parse_sample_rate(fields.get("sample_rate"))
        # The format/rate pair is checked before any GPU work: a 400 now, not after a synthesis (or a failed job).
        validate_output(fmt, sample_rate or SAMPLE_RATE)
        synthesis = _tts_request(ctx, fields, files, "tts_job" if is_async else "tts")
        if is_async:
            # A bad request must get its 4xx now, not become a failed job.
            service.validate_synthesis(synthesis)
            job = ctx.jobs.submit(synthesis, fmt=fmt, sample_rate=sample_rate)
            response = jsonify(job.to_dict(output_url))
            response.headers["Location"] = f"/api/jobs/{job.id}"
            return response, 202
        result = ctx.synthesize(synthesis)
        rate = sample_rate or result.sample_rate
        if as_json:
            saved = service.save_output(result, fmt, sample_rate=sample_rate)
            output = {
                "id": saved.id,
                "url": output_url(saved.id),
                "format": saved.format,
                "mime_type": saved.mime_type,
                "size_bytes": saved.size_bytes,
            }
            return jsonify({"result": result.facts(), "output": output})
        data = encode_audio(result.audio, result.sample_rate, fmt, target_sample_rate=sample_rate)
        headers = synthesis_headers(result, sample_rate=rate, fmt=fmt)
        headers["Content-Disposition"] = f'inline; filename="speech.{FORMAT_EXTENSIONS[fmt]}"'
        return Response(data, mimetype=AUDIO_FORMATS[fmt], headers=headers)

    @app.get("/api/jobs/<job_id>")
    def get_job(job_id: str) -> Response:
        """State, progress and (when done) the result and download URL of an asynchronous synthesis job.
        ---
        tags: [jobs]
        parameters:
          - {in: path, name: job_id, type: string, required: true, description: 'id from POST /api/tts?async=true'}
        responses:
          200:
            description: the job
            schema: {$ref: '#/definitions/Job'}
          401:
            description: missing or wrong API key
            schema: {$ref: '#/definitions/Error'}
          404:
            description: unknown or expired job
            schema: {$ref: '#/definitions/Error'}
        """
        ctx.jobs.expire()
        return jsonify(ctx.jobs.get(job_id).to_dict(output_url))

    @app.delete("/api/jobs/<job_id>")
    def cancel_job(job_id: str) -> Response:
        """Cancel a queued or running job (a running one stops at its next step and ends 'cancelled').
        ---
        tags: [jobs]
        parameters:
          - {in: path, name: job_id, type: string, required: true, description: 'id from POST /api/tts?async=true'}
        responses:
          200:
            description: the job after the request (cancelled, or cancel_requested while it stops)
            schema: {$ref: '#/definitions/Job'}
          401:
            description: missing or wrong API key
            schema: {$ref: '#/definitions/Error'}
          404:
            description: unknown or expired job
            schema: {$ref: '#/definitions/Error'}
          409:
            description: the job has already finished
            schema: {$ref: '#/definitions/Error'}
        """
        return jsonify(ctx.jobs.cancel(job_id).to_dict(output_url))

    @app.get("/api/outputs/<path:output_id>")
    def download_output(output_id: str) -> Response:
        """Download a generated audio file (kept for OUTPUT_TTL_HOURS).
        ---
        tags: [speech]
        produces: [audio/wav, audio/flac, audio/mpeg, audio/ogg, audio/aac, audio/pcm]
        parameters:
          - in: path
            name: output_id
            type: string
            required: true
            description: <32 hex digits>.<ext> from a json or job response
        responses:
          200:
            description: the audio file
            schema: {type: string, format: binary}
          401:
            description: missing or wrong API key
            schema: {$ref: '#/definitions/Error'}
          404:
            description: unknown, expired or malformed id (ids never leave OUTPUT_DIR)
            schema: {$ref: '#/definitions/Error'}
        """
        path = service.output_path(output_id)
        fmt = _EXTENSION_FORMATS.get(path.suffix.lstrip("."), "wav")
        return send_file(path, mimetype=AUDIO_FORMATS.get(fmt), download_name=path.name, conditional=True)

    @app.get("/metrics")
    def metrics() -> Response:
        """Prometheus metrics: requests and errors per route, synthesis time, audio seconds, RTF, queue, models.
        ---
        tags: [status]
        produces: [text/plain]
        responses:
          200:
            description: Prometheus text exposition format
            schema: {type: string}
          401:
            description: missing or wrong API key
            schema: {$ref: '#/definitions/Error'}
        """
        return Response(ctx.metrics.render(), mimetype="text/plain", content_type="text/plain; version=0.0.4")


def _response_mode(value: str | None) -> str:
    mode = (value or "audio").lower()
    if mode not in ("audio", "json"):
        raise InvalidInput(f"response must be 'audio' or 'json', got {value!r}", field="response")
    return mode


def create_app(service: Any, settings: Settings) -> Flask:
    """Build the REST app around one TTSService. Starts no thread: the job worker starts with the first job,
    and `serve()` / `RunningServer.start()` start the output cleanup."""
    from api_openai import register_openai_routes

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
    _register_error_handlers(app, ctx)
    _register_hooks(app, ctx)
    _register_core_routes(app, ctx)
    register_openai_routes(app, ctx)
    template = {
        "swagger": "2.0",
        "info": {
            "title": "Llasa TTS REST API",
            "version": __version__,
            "description": (
                "Voice-cloning text-to-speech (Llasa + XCodec2 + faster-whisper). Errors are "
                '{"error": {"code", "message"}}. The /v1 routes follow OpenAI\'s audio API.'
            ),
        },
        "securityDefinitions": {
            "bearer": {
                "type": "apiKey",
                "name": "Authorization",
                "in": "header",
                "description": (
                    "Type 'Bearer <API_KEY>' (needed when the server sets API_KEY; the docs themselves load without it)"
                ),
            }
        },
        "security": [{"bearer": []}],
        "definitions": SWAGGER_DEFINITIONS,
    }
    Swagger(app, template=template)
    return app


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


def main(argv: list[str] | None = None) -> None:
    """`python api_server.py`: the REST API alone (Settings -> logging -> TTSService -> waitress)."""
    parser = argparse.ArgumentParser(description="Llasa TTS REST API (Flask + waitress)")
    parser.add_argument("--host", help="address to bind (default: HOST)")
    parser.add_argument("--port", type=int, help="port (default: API_PORT)")
    args = parser.parse_args(argv)
    settings = load_settings_or_exit()
    start_process(settings)
    run_alone(
        settings,
        lambda service: serve(create_app(service, settings), settings, host=args.host, port=args.port),
        label="REST API",
    )


if __name__ == "__main__":
    main()
