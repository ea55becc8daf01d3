"""Synthesis: POST /api/tts (audio, JSON, or an async job) and the jobs, GET / DELETE /api/jobs/<id>."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, jsonify, request

from faces.rest.common import (
    ApiContext,
    api_context,
    output_url,
    parse_bool,
    parse_generation_params,
    parse_sample_rate,
    parse_text,
    read_audio_field,
    read_body,
    synthesis_headers,
)
from faces.rest.schemas import Job, TTSJsonResponse, shaped
from llasa.audio import AUDIO_FORMATS, encode_audio, validate_output
from llasa.errors import InvalidInput
from llasa.outputs import FORMAT_EXTENSIONS
from llasa.types import SAMPLE_RATE, SynthesisRequest

logger = logging.getLogger(__name__)

bp = Blueprint("tts", __name__)


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


def _response_mode(value: str | None) -> str:
    mode = (value or "audio").lower()
    if mode not in ("audio", "json"):
        raise InvalidInput(f"response must be 'audio' or 'json', got {value!r}", field="response")
    return mode


# Long only on paper: ~125 of its lines are the Swagger YAML in the docstring; the code is ~35 lines.
@bp.post("/api/tts")
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
    ctx = api_context()
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
        ctx.service.validate_synthesis(synthesis)
        job = ctx.jobs.submit(synthesis, fmt=fmt, sample_rate=sample_rate)
        response = jsonify(shaped(Job, job.to_dict(output_url)))
        response.headers["Location"] = f"/api/jobs/{job.id}"
        return response, 202
    result = ctx.synthesize(synthesis)
    rate = sample_rate or result.sample_rate
    if as_json:
        saved = ctx.service.save_output(result, fmt, sample_rate=sample_rate)
        output = {
            "id": saved.id,
            "url": output_url(saved.id),
            "format": saved.format,
            "mime_type": saved.mime_type,
            "size_bytes": saved.size_bytes,
        }
        return jsonify(shaped(TTSJsonResponse, {"result": result.facts(), "output": output}))
    data = encode_audio(result.audio, result.sample_rate, fmt, target_sample_rate=sample_rate)
    headers = synthesis_headers(result, sample_rate=rate, fmt=fmt)
    headers["Content-Disposition"] = f'inline; filename="speech.{FORMAT_EXTENSIONS[fmt]}"'
    return Response(data, mimetype=AUDIO_FORMATS[fmt], headers=headers)


@bp.get("/api/jobs/<job_id>")
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
    ctx = api_context()
    ctx.jobs.expire()
    return jsonify(shaped(Job, ctx.jobs.get(job_id).to_dict(output_url)))


@bp.delete("/api/jobs/<job_id>")
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
    ctx = api_context()
    return jsonify(shaped(Job, ctx.jobs.cancel(job_id).to_dict(output_url)))
