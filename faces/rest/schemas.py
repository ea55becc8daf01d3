"""The REST face's response models: pydantic models that shape the JSON answers and generate the spec.

Each route names its answers' models in its `@operation` (faces/rest/openapi.py), which puts their JSON schemas
into /apispec_1.json; the route passes its answer through `shaped()` with the same model, so the documented
schema and the answer come from one place and cannot drift.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llasa.types import SynthesisFacts


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(_Model):
    code: str = Field(description="stable machine-readable code, e.g. invalid_input")
    message: str = Field(description="what was wrong and what to do")
    field: str | None = Field(default=None, description="the offending parameter, when there is one")


class Error(_Model):
    """Every failure: `{"error": {"code", "message"}}` with the right status."""

    error: ErrorDetail


class Output(_Model):
    """A generated file kept for download (GET /api/outputs/{output_id}) for OUTPUT_TTL_HOURS."""

    id: str = Field(examples=["0123456789abcdef0123456789abcdef.wav"])
    url: str = Field(description="download URL (GET /api/outputs/{output_id})")
    format: str
    mime_type: str
    size_bytes: int


class TTSJsonResponse(_Model):
    """POST /api/tts?response=json: the synthesis facts and where to download the audio."""

    result: SynthesisFacts
    output: Output


class JobProgress(_Model):
    chunks_done: int
    chunks_total: int
    stage: str
    fraction: float


class JobError(_Model):
    code: str
    message: str
    status: int


class Job(_Model):
    """An asynchronous synthesis (POST /api/tts?async=true)."""

    id: str
    state: Literal["queued", "running", "done", "failed", "cancelled"]
    progress: JobProgress
    cancel_requested: bool
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    result: SynthesisFacts | None
    output: Output | None
    error: JobError | None


class Segment(_Model):
    start_s: float
    end_s: float
    text: str


class Transcription(_Model):
    text: str
    language: str
    duration_s: float
    segments: list[Segment]


class Voice(_Model):
    """OpenAI's audio.voice object plus this service's fields."""

    id: str = Field(description="the voice name")
    object: Literal["audio.voice"]
    type: Literal["audio_sample"]
    name: str
    created_at: int = Field(description="Unix seconds")
    created_iso: str = Field(description="the same time in ISO 8601")
    transcript: str
    duration_s: float
    num_codes: int
    codec_model: str
    warnings: list[str] = Field(description="what to check after create/edit, e.g. a transcript redone after a trim")


class Health(_Model):
    """GET /health."""

    status: str = Field(examples=["ok"])
    version: str
    device: str
    models: dict[str, str] = Field(description="the state of each model: unloaded, loading, gpu or cpu")
    queue_depth: int


class Ready(_Model):
    """GET /ready while the service accepts work."""

    ready: bool
    queue_depth: int
    max_queue: int


class ModelCard(_Model):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    root: str = Field(description="the checkpoint that serves it")


class ModelList(_Model):
    """GET /v1/models."""

    object: Literal["list"]
    data: list[ModelCard]


class VoiceList(_Model):
    """GET /v1/audio/voices."""

    object: Literal["list"]
    data: list[Voice]


class VoiceDeleted(_Model):
    """DELETE /v1/audio/voices/{voice_id}."""

    id: str
    object: Literal["audio.voice.deleted"]
    deleted: bool


class SpeechEvent(BaseModel):
    """One server-sent event of POST /v1/audio/speech with stream_format=sse, as an event-stream reader sees it."""

    event: str | None = Field(None, description="not sent (readers call it 'message')")
    data: str = Field(
        description=(
            'JSON: {"type": "speech.audio.delta", "audio": <base64 chunk>}; with verify or captions, after each '
            'chunk\'s audio {"type": "speech.chunk.checked", "chunk_index", "attempts", "kept_attempt", "problems", '
            '"transcript", "error_rate", "words"?: [{"word", "start_s", "end_s"}]}; then {"type": '
            '"speech.audio.done", "duration_s", "captions"?, "caption_format"?, "warnings"?}, or {"type": "error", '
            '"error": {"code", "message"}} when it fails after the first chunk'
        )
    )


class VerboseSegment(_Model):
    """A segment of verbose_json, in OpenAI's shape (the scores are neutral: the core does not keep them)."""

    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


class OpenAITranscription(_Model):
    """POST /v1/audio/transcriptions: {"text"} for json; every field for verbose_json."""

    task: Literal["transcribe"] | None = None
    language: str | None = None
    duration: float | None = None
    text: str
    segments: list[VerboseSegment] | None = None


def shaped(model: type[BaseModel], data: dict[str, Any], *, exclude_unset: bool = False) -> dict[str, Any]:
    """`data` checked against `model` and dumped back: an answer that does not match its schema is a bug (500).

    `exclude_unset` leaves out the optional fields `data` does not have, instead of sending them as null."""
    return model.model_validate(data).model_dump(mode="json", exclude_unset=exclude_unset)
