"""Transcription: POST /api/transcribe and the OpenAI-compatible POST /v1/audio/transcriptions."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, jsonify

from faces.rest.common import (
    api_context,
    parse_text,
    read_audio_field,
    read_body,
)
from faces.rest.schemas import Transcription, shaped
from llasa.errors import InvalidInput
from llasa.types import TranscriptionRequest, TranscriptionResult

logger = logging.getLogger(__name__)

bp = Blueprint("transcriptions", __name__)


TRANSCRIPTION_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")


def _timestamp(seconds: float, separator: str) -> str:
    millis = round(max(0.0, seconds) * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def format_subtitles(result: TranscriptionResult, fmt: str) -> str:
    """SRT or WebVTT cues from the transcription's segments (one cue for the whole text if there are none)."""
    segments = result.segments
    cues = [(s.start_s, s.end_s, s.text.strip()) for s in segments] or [(0.0, result.duration_s, result.text.strip())]
    separator = "," if fmt == "srt" else "."
    lines = [] if fmt == "srt" else ["WEBVTT", ""]
    for index, (start, end, text) in enumerate(cues, start=1):
        if fmt == "srt":
            lines.append(str(index))
        lines += [f"{_timestamp(start, separator)} --> {_timestamp(end, separator)}", text, ""]
    return "\n".join(lines)


def _verbose_json(result: TranscriptionResult) -> dict[str, Any]:
    return {
        "task": "transcribe",
        "language": result.language,
        "duration": result.duration_s,
        "text": result.text,
        "segments": [
            {
                "id": index,
                "seek": 0,
                "start": segment.start_s,
                "end": segment.end_s,
                "text": segment.text,
                # faster-whisper's per-segment scores are not part of the core's result; neutral values keep
                # clients that read these fields working.
                "tokens": [],
                "temperature": 0.0,
                "avg_logprob": 0.0,
                "compression_ratio": 1.0,
                "no_speech_prob": 0.0,
            }
            for index, segment in enumerate(result.segments)
        ],
    }


@bp.post("/api/transcribe")
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
    ctx = api_context()
    fields, files = read_body()
    audio = read_audio_field(fields, files, "audio", ctx.settings, required=True)
    language = parse_text(fields.get("language"), "language")
    result = ctx.service.transcribe(TranscriptionRequest(audio, language, surface="rest", endpoint="transcribe"))
    return jsonify(shaped(Transcription, result.to_dict()))


@bp.post("/v1/audio/transcriptions")
def transcriptions() -> Response:
    """Transcribe audio (OpenAI-compatible): json, text, srt, vtt or verbose_json.
    A JSON body works too, with `file` as base64 text or a data: URL (same fields, same limits).
    ---
    tags: [openai]
    consumes: [multipart/form-data, application/json]
    parameters:
      - in: formData
        name: file
        type: file
        required: true
        description: audio file (wav, flac, mp3, ogg, m4a, webm); in a JSON body, base64 text or a data URL
      - in: formData
        name: model
        type: string
        required: false
        description: whisper-1 or any id; the configured Whisper is used
      - in: formData
        name: language
        type: string
        required: false
        description: ISO-639-1 code such as en or zh; omit to detect
      - in: formData
        name: response_format
        type: string
        enum: [json, text, srt, vtt, verbose_json]
        required: false
      - {in: formData, name: prompt, type: string, required: false, description: accepted and ignored}
      - {in: formData, name: temperature, type: number, required: false, description: accepted and ignored}
    responses:
      200:
        description: 'the transcript: {"text"} for json, plain text for text/srt/vtt, segments for verbose_json'
        schema: {type: object, properties: {text: {type: string}}}
      400:
        description: missing file, bad language or response_format
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
    ctx = api_context()
    fields, files = read_body()
    fmt = fields.get("response_format") or "json"
    if fmt not in TRANSCRIPTION_FORMATS:
        raise InvalidInput(
            f"response_format {fmt!r} is not supported; use one of {', '.join(TRANSCRIPTION_FORMATS)}",
            field="response_format",
        )
    audio = read_audio_field(fields, files, "file", ctx.settings, required=True)
    language = parse_text(fields.get("language"), "language")
    result = ctx.service.transcribe(
        TranscriptionRequest(audio, language, surface="rest", endpoint="openai_transcriptions")
    )
    if fmt == "json":
        return jsonify({"text": result.text})
    if fmt == "verbose_json":
        return jsonify(_verbose_json(result))
    body = result.text if fmt == "text" else format_subtitles(result, fmt)
    mimetype = {"text": "text/plain", "srt": "application/x-subrip", "vtt": "text/vtt"}[fmt]
    return Response(body, mimetype=mimetype)
