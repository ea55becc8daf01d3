"""Transcription: POST /api/transcribe and the OpenAI-compatible POST /v1/audio/transcriptions."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, jsonify

from faces.rest.common import api_context
from faces.rest.openapi import JSON, Reply, operation
from faces.rest.request_models import TranscribeBody, TranscriptionsBody
from faces.rest.schemas import OpenAITranscription, Transcription, shaped
from llasa.types import TranscriptionRequest, TranscriptionResult

logger = logging.getLogger(__name__)

bp = Blueprint("transcriptions", __name__)

#: What a transcription may fail with: a bad field, an upload too big, unreadable audio, a busy or broken GPU.
TRANSCRIPTION_ERRORS = (400, 413, 415, 429, 499, 500, 503)


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
@operation(
    "speech",
    body=TranscribeBody,
    responses={200: Reply("the transcript with its segments", {JSON: Transcription})},
    errors=TRANSCRIPTION_ERRORS,
)
def transcribe(body: TranscribeBody) -> Response:
    """Transcribe speech in an uploaded audio file with faster-whisper.
    A JSON body works too, with `audio` as base64 text or a data: URL (same fields, same limits)."""
    ctx = api_context()
    transcription = TranscriptionRequest(body.audio, body.language, surface="rest", endpoint="transcribe")
    return jsonify(shaped(Transcription, ctx.service.transcribe(transcription).to_dict()))


@bp.post("/v1/audio/transcriptions")
@operation(
    "openai",
    body=TranscriptionsBody,
    responses={
        200: Reply(
            'the transcript: {"text"} for json, segments too for verbose_json, plain text for text, srt and vtt',
            {
                JSON: OpenAITranscription,
                "text/plain": {"type": "string"},
                "application/x-subrip": {"type": "string"},
                "text/vtt": {"type": "string"},
            },
        )
    },
    errors=TRANSCRIPTION_ERRORS,
)
def transcriptions(body: TranscriptionsBody) -> Response:
    """Transcribe audio (OpenAI-compatible): json, text, srt, vtt or verbose_json.
    A JSON body works too, with `file` as base64 text or a data: URL (same fields, same limits)."""
    ctx = api_context()
    transcription = TranscriptionRequest(body.file, body.language, surface="rest", endpoint="openai_transcriptions")
    result = ctx.service.transcribe(transcription)
    fmt = body.response_format
    if fmt == "json":
        return jsonify(shaped(OpenAITranscription, {"text": result.text}, exclude_unset=True))
    if fmt == "verbose_json":
        return jsonify(shaped(OpenAITranscription, _verbose_json(result), exclude_unset=True))
    text = result.text if fmt == "text" else format_subtitles(result, fmt)
    mimetype = {"text": "text/plain", "srt": "application/x-subrip", "vtt": "text/vtt"}[fmt]
    return Response(text, mimetype=mimetype)
