"""The OpenAI-compatible catalogue: GET /v1/models and the voice library under /v1/audio/voices."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, jsonify, send_file

from faces.rest.common import (
    api_context,
    parse_bool,
    parse_text,
    read_audio_field,
    read_body,
)
from faces.rest.schemas import Voice, shaped
from llasa.audio import AUDIO_FORMATS

logger = logging.getLogger(__name__)

bp = Blueprint("voices", __name__)


SPEECH_MODEL_IDS = ("llasa", "tts-1", "tts-1-hd", "gpt-4o-mini-tts")


TRANSCRIPTION_MODEL_IDS = ("whisper-1",)


def _unix_seconds(iso: object) -> int:
    """An ISO 8601 time as Unix seconds (OpenAI's `created_at`); 0 when the stored value cannot be read."""
    try:
        moment = datetime.fromisoformat(str(iso))
    except ValueError:
        return 0
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # the library stores UTC
    return int(moment.timestamp())


def _voice_object(info: Any) -> dict[str, Any]:
    """A saved voice shaped like OpenAI's `audio.voice` (id, object, type, name, created_at as Unix seconds),
    plus this service's fields: transcript, duration_s, num_codes, codec_model, created_iso and warnings."""
    data = info.to_dict()
    created_iso = data.pop("created_at")
    voice = {
        "id": info.name,
        "object": "audio.voice",
        "type": "audio_sample",
        "created_at": _unix_seconds(created_iso),
        "created_iso": created_iso,
        **data,
    }
    return shaped(Voice, voice)


@bp.get("/v1/models")
def models() -> Response:
    """Model ids this server accepts (OpenAI-compatible); every speech id uses the configured Llasa.
    ---
    tags: [openai]
    responses:
      200:
        description: a list of models
        schema:
          type: object
          properties:
            object: {type: string, example: list}
            data:
              type: array
              items:
                type: object
                properties:
                  id: {type: string}
                  object: {type: string}
                  created: {type: integer}
                  owned_by: {type: string}
                  root: {type: string}
      401:
        description: missing or wrong API key
        schema: {$ref: '#/definitions/Error'}
    """
    ctx = api_context()
    data = [
        {"id": mid, "object": "model", "created": 0, "owned_by": "llasa-tts", "root": ctx.settings.llasa_model}
        for mid in SPEECH_MODEL_IDS
    ] + [
        {"id": mid, "object": "model", "created": 0, "owned_by": "llasa-tts", "root": ctx.settings.whisper_model}
        for mid in TRANSCRIPTION_MODEL_IDS
    ]
    return jsonify({"object": "list", "data": data})


@bp.get("/v1/audio/voices")
def list_voices() -> Response:
    """List the saved voices (shared with the web UI and MCP).
    ---
    tags: [voices]
    responses:
      200:
        description: the voices
        schema:
          type: object
          properties:
            object: {type: string, example: list}
            data: {type: array, items: {$ref: '#/definitions/Voice'}}
      401:
        description: missing or wrong API key
        schema: {$ref: '#/definitions/Error'}
    """
    ctx = api_context()
    return jsonify({"object": "list", "data": [_voice_object(v) for v in ctx.service.list_voices()]})


@bp.post("/v1/audio/voices")
def create_voice() -> tuple[Response, int]:
    """Save a voice from an audio sample: trimmed 16 kHz reference, transcript (given or transcribed), codes.
    A JSON body works too, with `audio_sample` as base64 text or a data: URL (same fields, same limits).
    ---
    tags: [voices]
    consumes: [multipart/form-data, application/json]
    parameters:
      - in: formData
        name: name
        type: string
        required: true
        description: 1-64 letters, digits, spaces, _ - . (the voice id)
      - in: formData
        name: audio_sample
        type: file
        required: true
        description: the reference recording (0.5 s or more); in a JSON body, base64 text or a data URL
      - in: formData
        name: transcript
        type: string
        required: false
        description: its words (transcribed when omitted)
      - {in: formData, name: overwrite, type: boolean, required: false, description: 'replace a voice of that name'}
    responses:
      201:
        description: the saved voice
        schema: {$ref: '#/definitions/Voice'}
      400:
        description: bad name, missing or too short audio, no speech recognised
        schema: {$ref: '#/definitions/Error'}
      401:
        description: missing or wrong API key
        schema: {$ref: '#/definitions/Error'}
      409:
        description: a voice of that name exists (send overwrite=true to replace it)
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
    """
    ctx = api_context()
    fields, files = read_body()
    name = parse_text(fields.get("name"), "name", required=True)
    audio = read_audio_field(fields, files, "audio_sample", ctx.settings, required=True)
    info = ctx.service.create_voice(
        name,
        audio,
        parse_text(fields.get("transcript"), "transcript"),
        overwrite=parse_bool(fields.get("overwrite"), "overwrite"),
    )
    return jsonify(_voice_object(info)), 201


voice_id_param = """
    parameters:
      - {in: path, name: voice_id, type: string, required: true, description: the voice name}
    """


@bp.get("/v1/audio/voices/<voice_id>")
def get_voice(voice_id: str) -> Response:
    ctx = api_context()
    return jsonify(_voice_object(ctx.service.get_voice(voice_id)))


get_voice.__doc__ = (
    "One saved voice: name, transcript, duration, codes, creation time.\n    ---\n    tags: [voices]"
    + voice_id_param
    + """responses:
      200:
        description: the voice
        schema: {$ref: '#/definitions/Voice'}
      400:
        description: a name that cannot be a voice (path tricks)
        schema: {$ref: '#/definitions/Error'}
      401:
        description: missing or wrong API key
        schema: {$ref: '#/definitions/Error'}
      404:
        description: unknown voice
        schema: {$ref: '#/definitions/Error'}
    """
)


@bp.get("/v1/audio/voices/<voice_id>/audio")
def get_voice_audio(voice_id: str) -> Response:
    ctx = api_context()
    path = ctx.service.voice_audio_path(voice_id)
    return send_file(path, mimetype=AUDIO_FORMATS["wav"], download_name=f"{voice_id}.wav", conditional=True)


get_voice_audio.__doc__ = (
    "The saved voice's reference recording (16 kHz mono WAV), for previews.\n    ---\n    tags: [voices]\n"
    "    produces: [audio/wav, application/json]"
    + voice_id_param
    + """responses:
      200:
        description: the reference audio
        schema: {type: string, format: binary}
      400:
        description: a name that cannot be a voice (path tricks)
        schema: {$ref: '#/definitions/Error'}
      401:
        description: missing or wrong API key
        schema: {$ref: '#/definitions/Error'}
      404:
        description: unknown voice
        schema: {$ref: '#/definitions/Error'}
    """
)


@bp.patch("/v1/audio/voices/<voice_id>")
def update_voice(voice_id: str) -> Response:
    ctx = api_context()
    fields, _files = read_body()
    transcript = parse_text(fields.get("transcript"), "transcript", required=True)
    return jsonify(_voice_object(ctx.service.update_voice(voice_id, transcript)))


update_voice.__doc__ = (
    "Edit a saved voice's transcript (it must match the reference audio word for word); no model work."
    "\n    ---\n    tags: [voices]\n    consumes: [application/json, multipart/form-data]"
    + voice_id_param
    + """  - in: body
        name: body
        required: true
        schema:
          type: object
          required: [transcript]
          properties:
            transcript: {type: string, description: the words spoken in the voice's reference audio}
    responses:
      200:
        description: the voice with its new transcript
        schema: {$ref: '#/definitions/Voice'}
      400:
        description: missing or empty transcript, a name that cannot be a voice, or invalid JSON
        schema: {$ref: '#/definitions/Error'}
      401:
        description: missing or wrong API key
        schema: {$ref: '#/definitions/Error'}
      404:
        description: unknown voice
        schema: {$ref: '#/definitions/Error'}
      415:
        description: a body that is neither JSON nor a form
        schema: {$ref: '#/definitions/Error'}
    """
)


@bp.delete("/v1/audio/voices/<voice_id>")
def delete_voice(voice_id: str) -> Response:
    ctx = api_context()
    ctx.service.delete_voice(voice_id)
    return jsonify({"id": voice_id, "object": "audio.voice.deleted", "deleted": True})


delete_voice.__doc__ = (
    "Delete a saved voice.\n    ---\n    tags: [voices]"
    + voice_id_param
    + """responses:
      200:
        description: deleted
        schema:
          type: object
          properties:
            id: {type: string}
            object: {type: string, enum: [audio.voice.deleted]}
            deleted: {type: boolean}
      400:
        description: a name that cannot be a voice (path tricks)
        schema: {$ref: '#/definitions/Error'}
      401:
        description: missing or wrong API key
        schema: {$ref: '#/definitions/Error'}
      404:
        description: unknown voice
        schema: {$ref: '#/definitions/Error'}
    """
)
