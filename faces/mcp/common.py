"""What every MCP tool module shares: annotations, argument types, the tool decorator, the error mapping."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Annotated, Any

from fastmcp import FastMCP
from fastmcp.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field

from faces.inputs import read_audio_input
from llasa.audio import AUDIO_FORMATS
from llasa.config import Settings
from llasa.errors import TTSError
from llasa.quality.captions import CAPTION_FORMATS
from llasa.types import MANAGEABLE_MODEL_NAMES, MAX_SEED

logger = logging.getLogger(__name__)


READ_ONLY = ToolAnnotations(read_only_hint=True, open_world_hint=False)

READ_ONLY_IDEMPOTENT = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)

ADDITIVE = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False)

ADDITIVE_IDEMPOTENT = ToolAnnotations(
    read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False
)

DESTRUCTIVE = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=False)


def _schema(**keywords: Any) -> Any:
    return Field(json_schema_extra=keywords)


Temperature = Annotated[float | None, _schema(exclusiveMinimum=0, maximum=2)]

TopP = Annotated[float | None, _schema(exclusiveMinimum=0, maximum=1)]

TopK = Annotated[int | None, _schema(minimum=0, maximum=65536)]

RepetitionPenalty = Annotated[float | None, _schema(minimum=0.5, maximum=2)]

MaxAudioSeconds = Annotated[float | None, _schema(exclusiveMinimum=0, maximum=300)]

Seed = Annotated[int | None, _schema(minimum=0, maximum=MAX_SEED)]

OutputFormat = Annotated[str, _schema(enum=list(AUDIO_FORMATS))]

CaptionFormat = Annotated[str | None, _schema(enum=[*CAPTION_FORMATS, None])]

OutputSampleRate = Annotated[int | None, _schema(minimum=8000, maximum=192000)]

TimeoutSeconds = Annotated[float | None, _schema(minimum=-1)]

ModelName = Annotated[str | None, _schema(enum=[*MANAGEABLE_MODEL_NAMES, None])]

DOC_SETTINGS = (
    "max_text_chars",
    "max_upload_mb",
    "max_reference_seconds",
    "max_audio_seconds",
    "default_temperature",
    "default_top_p",
    "default_top_k",
    "default_repetition_penalty",
    "gpu_idle_timeout",
    "model_evict_timeout",
    "gpu_offload_after_use",
    "quality_retries",
    "verify_default",
    "verify_max_cer",
)


@contextlib.contextmanager
def tool_errors(tool: str) -> Iterator[None]:
    """Map the service's errors to tool errors with the same message REST gives; mask anything else."""
    try:
        yield
    except ToolError:
        raise
    except TTSError as e:
        # The caller's mistake (4xx) is routine; a busy or broken server (5xx) is worth a warning.
        level = logging.INFO if e.status_code < 500 else logging.WARNING
        logger.log(level, "%s refused (%s): %s", tool, e.code, e.message)
        # FastMCP logs every ToolError again; ours above already says what happened.
        raise ToolError(e.message, log_level=logging.DEBUG) from e
    except Exception as e:
        logger.exception("%s failed unexpectedly", tool)
        raise ToolError(
            f"{tool} failed because of an internal error; the server log has the details", log_level=logging.DEBUG
        ) from e


ToolDecorator = Callable[..., Callable[[Callable[..., Any]], Any]]
"""`@tool(annotations=...)`: registers a function as a tool on the server being built, its docstring filled in
with the settings in force (`tool_decorator`)."""


def _doc_value(value: Any) -> Any:
    """A setting as a docstring quotes it: booleans as the assistant sends them (true / false)."""
    return str(value).lower() if isinstance(value, bool) else value


def tool_decorator(mcp: FastMCP, settings: Settings) -> ToolDecorator:
    """Docstrings quote this server's own limits and defaults, so the assistant reads the values in force.
    (An explicit list: a docstring must never be able to quote API_KEY or HF_TOKEN.)"""
    doc_values = {name: _doc_value(getattr(settings, name)) for name in DOC_SETTINGS} | {
        "allowed_dirs": ", ".join(str(d) for d in settings.allowed_dirs)
    }

    def tool(**kwargs: Any) -> Callable[[Callable[..., Any]], Any]:
        def register(fn: Callable[..., Any]) -> Any:
            fn.__doc__ = (fn.__doc__ or "").format(**doc_values)
            return mcp.tool(fn, **kwargs)

        return register

    return tool


def read_audio(
    settings: Settings, path: str | None, data: str | None, path_field: str, data_field: str, *, required: bool
) -> bytes | None:
    """One audio argument given as a path in MCP_ALLOWED_DIRS or as base64 (`faces.inputs`, the reader REST
    uses too)."""
    return read_audio_input(
        path,
        data,
        allowed_dirs=settings.allowed_dirs,
        max_bytes=settings.max_upload_bytes,
        path_field=path_field,
        base64_field=data_field,
        required=required,
    )
