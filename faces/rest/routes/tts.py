"""Synthesis: POST /api/tts (audio, JSON, or an async job) and the jobs, GET / DELETE /api/jobs/<id>."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify

from faces.rest.common import api_context, captions_headers, output_url, synthesis_headers
from faces.rest.openapi import AUDIO_CONTENT, JSON, SYNTHESIS_HEADERS, Reply, operation
from faces.rest.request_models import TTSBody, TTSQuery
from faces.rest.schemas import Job, TTSJsonResponse, shaped
from llasa.audio import AUDIO_FORMATS, encode_audio
from llasa.outputs import FORMAT_EXTENSIONS
from llasa.types import SynthesisRequest

logger = logging.getLogger(__name__)

bp = Blueprint("tts", __name__)

JOB_ID = {"job_id": "id from POST /api/tts?async=true"}


@bp.post("/api/tts")
@operation(
    "speech",
    query=TTSQuery,
    body=TTSBody,
    responses={
        200: Reply(
            "the audio with its facts in X- headers, or with response=json the facts and a download URL",
            {**AUDIO_CONTENT, JSON: TTSJsonResponse},
            SYNTHESIS_HEADERS,
        ),
        202: Reply("job accepted (async=true); poll the Location", {JSON: Job}),
    },
    errors=(400, 404, 413, 415, 429, 499, 500, 503),
)
def tts(query: TTSQuery, body: TTSBody) -> Response | tuple[Response, int]:
    """Synthesise speech, cloning the voice of a reference clip or a saved voice.
    Send a form (reference_audio as a file) or JSON (reference_audio as base64 text or a data: URL).
    Returns the audio itself with X- headers (duration, sample rate, transcript used, timings; with captions,
    X-Captions-URL); with ?response=json the same facts (captions inline) and a download URL instead; with
    ?async=true a job (202). verify and captions: docs/quality.md."""
    ctx = api_context()
    synthesis = SynthesisRequest(
        text=body.text,
        reference_audio=body.reference_audio,
        reference_text=body.reference_text,
        voice=body.voice,
        language=body.language,
        params=body.generation_params(),
        surface="rest",
        endpoint="tts_job" if query.run_async else "tts",
        verify=body.verify,
        captions=body.captions,
    )
    fmt, sample_rate = body.format, body.sample_rate
    if query.run_async:
        # A bad request must get its 4xx now, not become a failed job.
        ctx.service.validate_synthesis(synthesis)
        job = ctx.jobs.submit(synthesis, fmt=fmt, sample_rate=sample_rate)
        response = jsonify(shaped(Job, job.to_dict(output_url)))
        response.headers["Location"] = f"/api/jobs/{job.id}"
        return response, 202
    result = ctx.synthesize(synthesis)
    if query.response == "json":
        saved = ctx.service.save_output(result, fmt, sample_rate=sample_rate)
        output = {
            "id": saved.id,
            "url": output_url(saved.id),
            "format": saved.format,
            "mime_type": saved.mime_type,
            "size_bytes": saved.size_bytes,
        }
        return jsonify(shaped(TTSJsonResponse, {"result": result.facts(), "output": output}))
    data = encode_audio(result.audio, result.sample_rate, fmt, target_sample_rate=sample_rate)
    headers = synthesis_headers(result, sample_rate=sample_rate or result.sample_rate, fmt=fmt)
    headers.update(captions_headers(ctx, result))
    headers["Content-Disposition"] = f'inline; filename="speech.{FORMAT_EXTENSIONS[fmt]}"'
    return Response(data, mimetype=AUDIO_FORMATS[fmt], headers=headers)


@bp.get("/api/jobs/<job_id>")
@operation("jobs", path=JOB_ID, responses={200: Reply("the job", {JSON: Job})}, errors=(404,))
def get_job(job_id: str) -> Response:
    """State, progress and (when done) the result and download URL of an asynchronous synthesis job."""
    ctx = api_context()
    ctx.jobs.expire()
    return jsonify(shaped(Job, ctx.jobs.get(job_id).to_dict(output_url)))


@bp.delete("/api/jobs/<job_id>")
@operation(
    "jobs",
    path=JOB_ID,
    responses={200: Reply("the job after the request (cancelled, or cancel_requested while it stops)", {JSON: Job})},
    errors=(404, 409),
)
def cancel_job(job_id: str) -> Response:
    """Cancel a queued or running job (a running one stops at its next step and ends 'cancelled')."""
    ctx = api_context()
    return jsonify(shaped(Job, ctx.jobs.cancel(job_id).to_dict(output_url)))
