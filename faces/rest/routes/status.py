"""Status and GPU control: /health, /ready, /metrics, /api/gpu/status|offload|release|timeout."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify

from faces.rest.common import api_context
from faces.rest.errors import error_body
from faces.rest.openapi import JSON, Reply, operation
from faces.rest.request_models import ModelChoiceBody, TimeoutsBody
from faces.rest.schemas import Health, Ready, shaped
from llasa.types import GPUStatus

logger = logging.getLogger(__name__)

bp = Blueprint("status", __name__)

#: What a GPU control answers: what was done, model by model (a model in use is handled when its last request
#: ends, and the answer says so), or the timeouts now in force.
GPU_ACTION = Reply("what was done", {JSON: {"type": "object"}})


@bp.get("/health")
@operation("status", public=True, responses={200: Reply("the service is up", {JSON: Health})})
def health() -> Response:
    """Liveness: service status, version, device and the state of each model (no auth needed)."""
    ctx = api_context()
    info = dict(ctx.service.health())
    info["queue_depth"] = ctx.service.queue_depth
    return jsonify(shaped(Health, info))


@bp.get("/ready")
@operation("status", public=True, responses={200: Reply("ready for requests", {JSON: Ready})}, errors=(503,))
def ready() -> tuple[Response, int]:
    """Readiness: 200 when the service accepts work, 503 while it shuts down or its engine cannot take work.
    With LLASA_ENGINE=vllm the engine cannot take work while no vLLM server answers /health. No auth needed."""
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
    answer = {"ready": True, "queue_depth": ctx.service.queue_depth, "max_queue": ctx.settings.max_queue}
    return jsonify(shaped(Ready, answer)), 200


@bp.get("/api/gpu/status")
@operation("gpu", responses={200: Reply("the GPU manager's status", {JSON: GPUStatus})})
def gpu_status() -> Response:
    """GPU memory and the state of every model (device, bytes, last use, leases, load/reload/offload counts)."""
    ctx = api_context()
    return jsonify(ctx.service.gpu_status().to_dict())


@bp.post("/api/gpu/offload")
@operation("gpu", body=ModelChoiceBody, body_required=False, responses={200: GPU_ACTION}, errors=(400, 404, 415))
def gpu_offload(body: ModelChoiceBody) -> Response:
    """Move one model (or all) from the GPU to CPU RAM; reload is fast.
    An unknown model name is a 404 naming the registered ones."""
    return jsonify(api_context().service.offload(body.model))


@bp.post("/api/gpu/release")
@operation("gpu", body=ModelChoiceBody, body_required=False, responses={200: GPU_ACTION}, errors=(400, 404, 415))
def gpu_release(body: ModelChoiceBody) -> Response:
    """Release one model (or all) entirely, freeing GPU and CPU memory.
    An unknown model name is a 404 naming the registered ones."""
    return jsonify(api_context().service.release(body.model))


@bp.post("/api/gpu/timeout")
@operation(
    "gpu",
    body=TimeoutsBody,
    responses={200: Reply("the timeouts now in force", {JSON: {"type": "object"}})},
    errors=(400, 415),
)
def gpu_timeout(body: TimeoutsBody) -> Response:
    """Set the idle timeout (GPU -> CPU), the evict timeout (CPU -> released) and offload-after-use.
    Give at least one field; the others keep their values."""
    idle = body.idle_timeout_s if body.idle_timeout_s is not None else body.timeout
    timeouts = api_context().service.set_timeouts(
        idle_timeout_s=idle, evict_timeout_s=body.evict_timeout_s, offload_after_use=body.offload_after_use
    )
    return jsonify(timeouts)


@bp.get("/metrics")
@operation("status", responses={200: Reply("Prometheus text exposition format", {"text/plain": {"type": "string"}})})
def metrics() -> Response:
    """Prometheus metrics: requests and errors per route, synthesis time, audio seconds, RTF, queue, models."""
    ctx = api_context()
    return Response(ctx.metrics.render(), mimetype="text/plain", content_type="text/plain; version=0.0.4")
