"""The MCP result models (their JSON schemas are the tools' output schemas) and generate_speech's content blocks."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from fastmcp.tools.base import ToolResult
from fastmcp.utilities.types import Audio
from mcp.types import ContentBlock, TextContent
from pydantic import BaseModel, Field

from llasa.config import Settings

logger = logging.getLogger(__name__)


class SpeechResult(BaseModel):
    """What generate_speech returns (as structured content)."""

    path: str = Field(description="Absolute path of the saved audio file on the server.")
    url: str = Field(description="Download URL of the file on the REST server (kept for OUTPUT_TTL_HOURS).")
    id: str = Field(description="Output id (the file name under OUTPUT_DIR).")
    format: str
    mime_type: str
    size_bytes: int
    duration_s: float
    sample_rate: int = Field(description="Sample rate of the saved file (Hz).")
    reference_text: str = Field(description="Transcript of the reference the voice was cloned from ('' if none).")
    voice: str | None = Field(description="Saved voice used, if any.")
    seed: int | None = Field(description="Seed used; pass it again to repeat the result.")
    chunks: int = Field(description="Number of text chunks synthesised one after another.")
    num_codes: int = Field(description="Speech codes generated (50 per second of audio).")
    reference_seconds: float
    reference_trimmed: bool
    timings_s: dict[str, float] = Field(description="Wall time per stage (transcribe, encode, generate, decode).")
    real_time_factor: float
    warnings: list[str] = Field(description="Things to tell the user, e.g. that the reference was trimmed.")
    audio_inline: bool = Field(description="True when the audio itself is also in this result as audio content.")


class VoiceEntry(BaseModel):
    """One saved voice."""

    name: str
    transcript: str
    duration_s: float
    num_codes: int
    created_at: str
    codec_model: str = ""
    warnings: list[str] = Field(
        default_factory=list,
        description="Things to tell the user about this voice, e.g. that its recording was trimmed and "
        "re-transcribed (check the transcript and fix it with update_voice).",
    )


class VoiceList(BaseModel):
    voices: list[VoiceEntry]
    count: int


def speech_result(result: Any, saved: Any, settings: Settings, sample_rate: int | None) -> ToolResult:
    """Structured result + content blocks for generate_speech, per MCP_AUDIO_RETURN."""
    facts = result.facts()
    mode = settings.mcp_audio_return
    inline = mode in ("inline", "both") and result.duration_s < settings.mcp_inline_max_seconds
    structured = SpeechResult(
        **saved.to_dict(),
        duration_s=facts["duration_s"],
        sample_rate=sample_rate or result.sample_rate,
        reference_text=facts["reference_text"],
        voice=facts["voice"],
        seed=facts["seed"],
        chunks=facts["chunks"],
        num_codes=facts["num_codes"],
        reference_seconds=facts["reference_seconds"],
        reference_trimmed=facts["reference_trimmed"],
        timings_s=facts["timings_s"],
        real_time_factor=facts["real_time_factor"],
        warnings=facts.get("warnings", []),
        audio_inline=inline,
    )
    summary = structured.model_dump()
    if mode in ("inline", "both") and not inline:
        summary["note"] = (
            f"the audio is {result.duration_s:.1f} s long, over the {settings.mcp_inline_max_seconds:g} s limit "
            "for inline audio (MCP_INLINE_MAX_SECONDS); download it from url"
        )
    content: list[ContentBlock] = []
    if mode == "inline" and inline:
        content.append(
            TextContent(
                type="text",
                text=f"Generated {structured.duration_s:.2f} s of speech ({structured.format}, "
                f"{structured.sample_rate} Hz); the audio follows.",
            )
        )
    else:
        content.append(TextContent(type="text", text=json.dumps(summary, ensure_ascii=False)))
    if inline:
        audio = Audio(data=Path(saved.path).read_bytes(), format=saved.format)
        content.append(audio.to_audio_content(mime_type=saved.mime_type))
    return ToolResult(content=content, structured_content=structured.model_dump())
