"""The MCP result models (their JSON schemas are the tools' output schemas) and generate_speech's content blocks."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from fastmcp.tools.base import ToolResult
from fastmcp.utilities.types import Audio
from mcp.types import ContentBlock, TextContent
from pydantic import BaseModel, Field

from llasa.config import Settings
from llasa.outputs import SavedOutput
from llasa.types import SynthesisFacts, SynthesisResult

logger = logging.getLogger(__name__)


class SpeechResult(SynthesisFacts):
    """What generate_speech returns (as structured content): the synthesis facts every face shows, plus the file."""

    path: str = Field(description="Absolute path of the saved audio file on the server.")
    url: str = Field(description="Download URL of the file on the REST server (kept for OUTPUT_TTL_HOURS).")
    id: str = Field(description="Output id (the file name under OUTPUT_DIR).")
    format: str
    mime_type: str
    size_bytes: int
    sample_rate: int = Field(description="Sample rate of the saved file (Hz).")
    audio_inline: bool = Field(description="True when the audio itself is also in this result as audio content.")
    captions_path: str | None = Field(
        None, description="Absolute path of the saved captions file on the server (null: no captions asked for)."
    )
    captions_url: str | None = Field(
        None, description="Download URL of the captions file on the REST server (kept for OUTPUT_TTL_HOURS)."
    )


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


def speech_result(
    result: SynthesisResult,
    saved: SavedOutput,
    settings: Settings,
    sample_rate: int | None,
    saved_captions: SavedOutput | None = None,
) -> ToolResult:
    """Structured result + content blocks for generate_speech, per MCP_AUDIO_RETURN."""
    mode = settings.mcp_audio_return
    inline = mode in ("inline", "both") and result.duration_s < settings.mcp_inline_max_seconds
    facts = result.facts() | {"sample_rate": sample_rate or result.sample_rate}
    files = saved.to_dict()
    if saved_captions is not None:
        files |= {"captions_path": str(saved_captions.path), "captions_url": saved_captions.url}
    structured = SpeechResult(**files, **facts, audio_inline=inline)
    summary = structured.model_dump()
    if mode in ("inline", "both") and not inline:
        summary["note"] = (
            f"the audio is {result.duration_s:.1f} s long, over the {settings.mcp_inline_max_seconds:g} s limit "
            "for inline audio (MCP_INLINE_MAX_SECONDS); download it from url"
        )
    content: list[ContentBlock] = []
    if mode == "inline" and inline:
        captions = f" Captions ({structured.caption_format}): {structured.captions_url}" if saved_captions else ""
        warnings = "".join(f" Warning: {warning}" for warning in structured.warnings)
        content.append(
            TextContent(
                type="text",
                text=f"Generated {structured.duration_s:.2f} s of speech ({structured.format}, "
                f"{structured.sample_rate} Hz); the audio follows.{captions}{warnings}",
            )
        )
    else:
        content.append(TextContent(type="text", text=json.dumps(summary, ensure_ascii=False)))
    if inline:
        audio = Audio(data=Path(saved.path).read_bytes(), format=saved.format)
        content.append(audio.to_audio_content(mime_type=saved.mime_type))
    return ToolResult(content=content, structured_content=structured.model_dump())
