"""The OpenAI-compatible catalogue: GET /v1/models and the voice library under /v1/audio/voices."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, jsonify, send_file

from faces.rest.common import api_context
from faces.rest.openapi import JSON, Reply, operation
from faces.rest.request_models import VoiceCreateBody, VoiceUpdateBody
from faces.rest.schemas import ModelList, Voice, VoiceDeleted, VoiceList, shaped
from llasa.audio import AUDIO_FORMATS

logger = logging.getLogger(__name__)

bp = Blueprint("voices", __name__)

VOICE_ID = {"voice_id": "the voice name"}


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
@operation("openai", responses={200: Reply("a list of models", {JSON: ModelList})})
def models() -> Response:
    """Model ids this server accepts (OpenAI-compatible); every speech id uses the configured Llasa."""
    ctx = api_context()
    data = [
        {"id": mid, "object": "model", "created": 0, "owned_by": "llasa-tts", "root": ctx.settings.llasa_model}
        for mid in SPEECH_MODEL_IDS
    ] + [
        {"id": mid, "object": "model", "created": 0, "owned_by": "llasa-tts", "root": ctx.settings.whisper_model}
        for mid in TRANSCRIPTION_MODEL_IDS
    ]
    return jsonify(shaped(ModelList, {"object": "list", "data": data}))


@bp.get("/v1/audio/voices")
@operation("voices", responses={200: Reply("the voices", {JSON: VoiceList})})
def list_voices() -> Response:
    """List the saved voices (shared with the web UI and MCP)."""
    ctx = api_context()
    return jsonify(shaped(VoiceList, {"object": "list", "data": [_voice_object(v) for v in ctx.service.list_voices()]}))


@bp.post("/v1/audio/voices")
@operation(
    "voices",
    body=VoiceCreateBody,
    responses={201: Reply("the saved voice", {JSON: Voice})},
    errors=(400, 409, 413, 415, 429, 499, 500, 503),
)
def create_voice(body: VoiceCreateBody) -> tuple[Response, int]:
    """Save a voice from an audio sample: trimmed 16 kHz reference, transcript (given or transcribed), codes.
    A JSON body works too, with `audio_sample` as base64 text or a data: URL (same fields, same limits)."""
    ctx = api_context()
    info = ctx.service.create_voice(body.name, body.audio_sample, body.transcript, overwrite=body.overwrite)
    return jsonify(_voice_object(info)), 201


@bp.get("/v1/audio/voices/<voice_id>")
@operation("voices", path=VOICE_ID, responses={200: Reply("the voice", {JSON: Voice})}, errors=(400, 404))
def get_voice(voice_id: str) -> Response:
    """One saved voice: name, transcript, duration, codes, creation time."""
    ctx = api_context()
    return jsonify(_voice_object(ctx.service.get_voice(voice_id)))


@bp.get("/v1/audio/voices/<voice_id>/audio")
@operation(
    "voices",
    path=VOICE_ID,
    responses={200: Reply("the reference audio", {AUDIO_FORMATS["wav"]: {"type": "string", "format": "binary"}})},
    errors=(400, 404),
)
def get_voice_audio(voice_id: str) -> Response:
    """The saved voice's reference recording (16 kHz mono WAV), for previews."""
    ctx = api_context()
    path = ctx.service.voice_audio_path(voice_id)
    return send_file(path, mimetype=AUDIO_FORMATS["wav"], download_name=f"{voice_id}.wav", conditional=True)


@bp.patch("/v1/audio/voices/<voice_id>")
@operation(
    "voices",
    path=VOICE_ID,
    body=VoiceUpdateBody,
    responses={200: Reply("the voice with its new transcript", {JSON: Voice})},
    errors=(400, 404, 415),
)
def update_voice(voice_id: str, body: VoiceUpdateBody) -> Response:
    """Edit a saved voice's transcript (it must match the reference audio word for word); no model work."""
    ctx = api_context()
    return jsonify(_voice_object(ctx.service.update_voice(voice_id, body.transcript)))


@bp.delete("/v1/audio/voices/<voice_id>")
@operation("voices", path=VOICE_ID, responses={200: Reply("deleted", {JSON: VoiceDeleted})}, errors=(400, 404))
def delete_voice(voice_id: str) -> Response:
    """Delete a saved voice."""
    ctx = api_context()
    ctx.service.delete_voice(voice_id)
    return jsonify(shaped(VoiceDeleted, {"id": voice_id, "object": "audio.voice.deleted", "deleted": True}))
