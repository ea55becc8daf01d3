"""The OpenAPI (Swagger 2.0) spec served at /apispec_1.json and shown at /apidocs."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


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
