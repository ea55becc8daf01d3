"""Status and GPU control: /health, /ready, /metrics, /api/gpu/status|offload|release|timeout."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, jsonify

from faces.rest.common import (
    api_context,
    parse_bool,
    parse_number,
    parse_text,
    read_body,
)
from faces.rest.errors import error_body

logger = logging.getLogger(__name__)

bp = Blueprint("status", __name__)


@bp.get("/health")
def health() -> Response:
    """Liveness: service status, version, device and the state of each model (no auth needed).
    ---
    tags: [status]
    security: []
    responses:
      200:
        description: the service is up
        schema:
          type: object
          properties:
            status: {type: string, example: ok}
            version: {type: string}
            device: {type: string}
            models: {type: object, additionalProperties: {type: string}}
            queue_depth: {type: integer}
    """
    ctx = api_context()
    info = dict(ctx.service.health())
    info["queue_depth"] = ctx.service.queue_depth
    return jsonify(info)


@bp.get("/ready")
def ready() -> tuple[Response, int]:
    """Readiness: 200 when the service accepts work; 503 while it shuts down or its engine cannot take work (with
    LLASA_ENGINE=vllm: no vLLM server answers /health). No auth needed.
    ---
    tags: [status]
    security: []
    responses:
      200:
        description: ready for requests
        schema:
          type: object
          properties:
            ready: {type: boolean}
            queue_depth: {type: integer}
            max_queue: {type: integer}
      503:
        description: shutting down, the service cannot report its health, or the engine cannot take work
        schema: {$ref: '#/definitions/Error'}
    """
    ctx = api_context()
    if ctx.shutting_down:
        return jsonify(error_body("not_ready", "the server is shutting down")), 503
    try:
        status = ctx.service.health().get("status")
    except Exception:
        logger.warning("readiness probe: the service health failed", exc_info=True)
        status = "error"
    if status != "ok":
        return jsonify(error_body("not_ready", f"the service reports status {status!r}")), 503
    engine = ctx.service.engine_readiness()
    if not engine.ready:
        errors = "; ".join(f"{r['url']}: {r['last_error'] or 'unreachable'}" for r in engine.replicas)
        message = f"the Llasa engine ({engine.backend}) cannot take work: no server answers ({errors})"
        return jsonify(error_body("not_ready", message)), 503
    return jsonify({"ready": True, "queue_depth": ctx.service.queue_depth, "max_queue": ctx.settings.max_queue}), 200


@bp.get("/api/gpu/status")
def gpu_status() -> Response:
    """GPU memory and the state of every model (device, bytes, last use, leases, load/reload/offload counts).
    ---
    tags: [gpu]
    responses:
      200:
        description: the GPU manager's status (the typed `llasa.types.GPUStatus`)
        schema: {$ref: '#/definitions/GPUStatus'}
      401:
        description: missing or wrong API key
        schema: {$ref: '#/definitions/Error'}
    """
    ctx = api_context()
    return jsonify(ctx.service.gpu_status().to_dict())


def _model_name(fields: dict[str, Any]) -> str | None:
    # An unknown name is the GPU manager's NotFound (404), with the same message MCP gives.
    return parse_text(fields.get("model"), "model")


gpu_action_doc = """
    ---
    tags: [gpu]
    consumes: [application/json]
    parameters:
      - in: body
        name: body
        required: false
        description: '{"model": "llasa"} for one model; an empty body or {} for all'
        schema:
          type: object
          properties:
            model: {type: string, enum: [llasa, xcodec2, whisper]}
    responses:
      200:
        description: what was done; a model in use is handled when its last request ends (the result says so)
        schema: {type: object}
      400:
        description: invalid JSON
        schema: {$ref: '#/definitions/Error'}
      401:
        description: missing or wrong API key
        schema: {$ref: '#/definitions/Error'}
      404:
        description: no model of that name is registered
        schema: {$ref: '#/definitions/Error'}
      415:
        description: body that is not JSON
        schema: {$ref: '#/definitions/Error'}
    """


@bp.post("/api/gpu/offload")
def gpu_offload() -> Response:
    ctx = api_context()
    fields, _files = read_body()
    return jsonify(ctx.service.offload(_model_name(fields)))


gpu_offload.__doc__ = "Move one model (or all) from the GPU to CPU RAM; reload is fast.\n" + gpu_action_doc


@bp.post("/api/gpu/release")
def gpu_release() -> Response:
    ctx = api_context()
    fields, _files = read_body()
    return jsonify(ctx.service.release(_model_name(fields)))


gpu_release.__doc__ = "Release one model (or all) entirely, freeing GPU and CPU memory.\n" + gpu_action_doc


@bp.post("/api/gpu/timeout")
def gpu_timeout() -> Response:
    """Set the idle timeout (GPU -> CPU), the evict timeout (CPU -> released) and offload-after-use.
    ---
    tags: [gpu]
    consumes: [application/json]
    parameters:
      - in: body
        name: body
        required: true
        schema:
          type: object
          properties:
            idle_timeout_s:
              type: number
              description: seconds idle on the GPU before offload (0 = at once, -1 = never)
            evict_timeout_s:
              type: number
              description: seconds idle in CPU RAM before release (0 = at once, -1 = never)
            offload_after_use: {type: boolean, description: 'offload as soon as the last request ends'}
            timeout: {type: number, description: 'older name for idle_timeout_s'}
    responses:
      200:
        description: the timeouts now in force
        schema: {type: object}
      400:
        description: no field given, or a value out of range (the error names the field)
        schema: {$ref: '#/definitions/Error'}
      401:
        description: missing or wrong API key
        schema: {$ref: '#/definitions/Error'}
      415:
        description: body that is not JSON
        schema: {$ref: '#/definitions/Error'}
    """
    ctx = api_context()
    fields, _files = read_body()
    idle = parse_number(fields.get("idle_timeout_s", fields.get("timeout")), "idle_timeout_s")
    evict = parse_number(fields.get("evict_timeout_s"), "evict_timeout_s")
    after_use = fields.get("offload_after_use")
    after_use = None if after_use is None else parse_bool(after_use, "offload_after_use")
    return jsonify(ctx.service.set_timeouts(idle_timeout_s=idle, evict_timeout_s=evict, offload_after_use=after_use))


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus metrics: requests and errors per route, synthesis time, audio seconds, RTF, queue, models.
    ---
    tags: [status]
    produces: [text/plain, application/json]
    responses:
      200:
        description: Prometheus text exposition format
        schema: {type: string}
      401:
        description: missing or wrong API key
        schema: {$ref: '#/definitions/Error'}
    """
    ctx = api_context()
    return Response(ctx.metrics.render(), mimetype="text/plain", content_type="text/plain; version=0.0.4")
