"""Downloads of generated audio: GET /api/outputs/<id> (kept for OUTPUT_TTL_HOURS)."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, send_file

from faces.rest.common import api_context
from faces.rest.openapi import AUDIO_CONTENT, Reply, operation
from llasa.audio import AUDIO_FORMATS
from llasa.outputs import CAPTION_MIME_TYPES, FORMAT_EXTENSIONS

logger = logging.getLogger(__name__)

bp = Blueprint("outputs", __name__)


_EXTENSION_FORMATS = {ext: fmt for fmt, ext in FORMAT_EXTENSIONS.items()}


@bp.get("/api/outputs/<path:output_id>")
@operation(
    "speech",
    path={"output_id": "<32 hex digits>.<ext> from a json or job response"},
    responses={
        200: Reply(
            "the audio file (or captions: srt, vtt, json)",
            {**AUDIO_CONTENT, **{mime: {"type": "string"} for mime in CAPTION_MIME_TYPES.values()}},
        )
    },
    errors=(404,),
)
def download_output(output_id: str) -> Response:
    """Download a generated audio or captions file (kept for OUTPUT_TTL_HOURS); ids never lead out of
    OUTPUT_DIR."""
    ctx = api_context()
    path = ctx.service.output_path(output_id)
    extension = path.suffix.lstrip(".")
    mimetype = CAPTION_MIME_TYPES.get(extension) or AUDIO_FORMATS.get(_EXTENSION_FORMATS.get(extension, "wav"))
    return send_file(path, mimetype=mimetype, download_name=path.name, conditional=True)
