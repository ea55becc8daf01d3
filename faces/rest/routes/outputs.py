"""Downloads of generated audio: GET /api/outputs/<id> (kept for OUTPUT_TTL_HOURS)."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, send_file

from faces.rest.common import api_context
from faces.rest.openapi import AUDIO_CONTENT, Reply, operation
from llasa.audio import AUDIO_FORMATS
from llasa.outputs import FORMAT_EXTENSIONS

logger = logging.getLogger(__name__)

bp = Blueprint("outputs", __name__)


_EXTENSION_FORMATS = {ext: fmt for fmt, ext in FORMAT_EXTENSIONS.items()}


@bp.get("/api/outputs/<path:output_id>")
@operation(
    "speech",
    path={"output_id": "<32 hex digits>.<ext> from a json or job response"},
    responses={200: Reply("the audio file", AUDIO_CONTENT)},
    errors=(404,),
)
def download_output(output_id: str) -> Response:
    """Download a generated audio file (kept for OUTPUT_TTL_HOURS); ids never lead out of OUTPUT_DIR."""
    ctx = api_context()
    path = ctx.service.output_path(output_id)
    fmt = _EXTENSION_FORMATS.get(path.suffix.lstrip("."), "wav")
    return send_file(path, mimetype=AUDIO_FORMATS.get(fmt), download_name=path.name, conditional=True)
