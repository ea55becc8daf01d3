"""The REST face's response models: pydantic models that shape the JSON answers and generate the spec.

`definitions()` turns them into the `definitions` of /apispec_1.json, so the documented schema and the answer
come from one place and cannot drift. The spec is Swagger 2.0 (flasgger's format for the YAML in the route
docstrings), which has no `null` type: an optional field becomes its type plus `x-nullable: true`, the extension
Swagger 2.0 tools (schemathesis among them) read for it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from llasa.types import GPUStatus, SynthesisFacts


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


MODELS: tuple[type[BaseModel], ...] = (Error, SynthesisFacts, Output, TTSJsonResponse, Job, Transcription, Voice)


def shaped(model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """`data` checked against `model` and dumped back: an answer that does not match its schema is a bug (500)."""
    return model.model_validate(data).model_dump(mode="json")


def definitions() -> dict[str, Any]:
    """The Swagger 2.0 `definitions` of every response model (and the typed GPU status), from pydantic."""
    found: dict[str, Any] = {}
    schemas = [(model.__name__, model.model_json_schema(ref_template="#/definitions/{model}")) for model in MODELS]
    gpu = TypeAdapter(GPUStatus).json_schema(ref_template="#/definitions/{model}")
    schemas.append(("GPUStatus", gpu))
    for name, schema in schemas:
        for inner_name, inner in schema.pop("$defs", {}).items():
            found[inner_name] = _swagger2(inner)
        found[name] = _swagger2(schema)
    return found


def _swagger2(schema: Any) -> Any:
    """JSON Schema (pydantic) -> Swagger 2.0's subset: `anyOf [X, null]` -> X + x-nullable, `const` -> enum."""
    if isinstance(schema, list):
        return [_swagger2(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    # A null default is what "optional" already says; Swagger 2.0 validators would read it against the type.
    out = {
        key: _swagger2(value)
        for key, value in schema.items()
        if key not in ("title", "examples") and not (key == "default" and value is None)
    }
    if schema.get("examples"):
        out["example"] = schema["examples"][0]
    options = out.get("anyOf")
    if options is not None:
        kept = [option for option in options if option.get("type") != "null"]
        if len(kept) == 1 and len(kept) < len(options):
            del out["anyOf"]
            inner = kept[0]
            if "$ref" in inner:
                # Swagger 2.0 ignores siblings of $ref: wrap it so the nullable flag counts.
                out["allOf"] = [inner]
            else:
                out.update(inner)
            out["x-nullable"] = True
    if "const" in out:
        out["enum"] = [out.pop("const")]
    return out
