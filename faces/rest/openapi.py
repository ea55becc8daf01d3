"""The REST spec (OpenAPI 3.0, served by flasgger at /apispec_1.json and shown at /apidocs), built from the models.

Every route carries one `@operation(...)`: its tags, its query and body models (faces/rest/request_models.py),
the media types its body may come in, its answers and the error statuses it can give. The same record does both
jobs, so the spec cannot drift from the code:
- at request time the decorator validates the query and the body with those models and passes the handler the
  validated `query=` / `body=` (a refusal is a 400 naming the field);
- `build_spec(app)` turns every route's record into the spec: parameters and request bodies are the models' JSON
  schemas, answers refer to the response models of faces/rest/schemas.py, and the error answers are written once
  (`ERRORS`) and referred to by status.

The summary is the first line of the handler's docstring, the description the rest. pydantic writes JSON Schema
(2020-12); `openapi_schema()` turns it into OpenAPI 3.0's dialect (the one the Swagger UI bundled with flasgger
reads): `nullable` instead of a null type, `example` instead of `examples`, boolean exclusive bounds.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, request
from pydantic import BaseModel, TypeAdapter

from faces.inputs import AudioInput
from faces.rest.common import api_context, read_body
from faces.rest.request_models import RequestModel, validate_request
from faces.rest.schemas import Error
from llasa.audio import AUDIO_FORMATS

JSON = "application/json"
MULTIPART = "multipart/form-data"
URLENCODED = "application/x-www-form-urlencoded"
#: A body as JSON or as a form in either encoding (audio as a file part, or base64 text).
FORM_OR_JSON = (MULTIPART, URLENCODED, JSON)
BINARY = {"type": "string", "format": "binary"}
#: Every audio content type an answer may have.
AUDIO_CONTENT = dict.fromkeys(AUDIO_FORMATS.values(), BINARY)

_REF_PREFIX = "#/components/schemas/"

#: The error answers, written once: each is `{"error": {"code", "message", "field"?}}` (schemas.Error).
ERRORS: dict[int, tuple[str, str]] = {
    400: ("InvalidInput", "a bad parameter or body (the error names the field), or input the service cannot use"),
    401: ("Unauthorized", "missing or wrong API key"),
    404: ("NotFound", "an unknown voice, job, output or model (the error says which)"),
    409: ("Conflict", "a voice of that name exists (send overwrite=true), or the job has already finished"),
    413: ("PayloadTooLarge", "the upload is over MAX_UPLOAD_MB"),
    415: ("UnsupportedMediaType", "unreadable audio, or a body in a content type this route does not read"),
    429: ("QueueFull", "MAX_QUEUE requests already wait for the GPU (see Retry-After)"),
    499: ("ClientClosedRequest", "the client disconnected and its work was stopped"),
    500: ("InternalError", "the model produced nothing usable, or an internal error (the message has an incident id)"),
    503: ("Unavailable", "the GPU stayed busy too long (with Retry-After), a model cannot load, or not ready"),
}

#: The facts of a synthesis beside its audio (faces.rest.common.synthesis_headers).
SYNTHESIS_HEADERS = {
    "X-Audio-Duration-S": ({"type": "number"}, "audio length in seconds"),
    "X-Sample-Rate": ({"type": "integer"}, "sample rate of the body"),
    "X-Seed": ({"type": "integer"}, "the seed used (repeat it to get the same audio)"),
    "X-Reference-Text": ({"type": "string"}, "transcript the model was conditioned on (percent-encoded UTF-8)"),
    "X-Timings-S": ({"type": "string"}, "JSON seconds per stage: load, transcribe, encode, generate, decode, total"),
    "X-Real-Time-Factor": ({"type": "number"}, "wall time over audio time"),
    "X-Takes": ({"type": "string"}, "takes each chunk needed, comma-separated (1 = the first passed)"),
    "X-Captions-URL": ({"type": "string"}, "with captions: where to download them (GET /api/outputs/<id>)"),
}

#: A schema of an answer: a model (or a dataclass pydantic reads), or a raw OpenAPI schema.
Schema = type | Mapping[str, Any]


@dataclass(frozen=True)
class Reply:
    """One documented answer: its description, its body per content type, its headers."""

    description: str
    content: Mapping[str, Schema] = field(default_factory=dict)
    headers: Mapping[str, tuple[Mapping[str, Any], str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Operation:
    """What `build_spec` documents about a route and what its decorator checks."""

    tags: tuple[str, ...]
    responses: Mapping[int, Reply]
    errors: tuple[int, ...] = ()
    query: type[RequestModel] | None = None
    body: type[RequestModel] | None = None
    media: tuple[str, ...] = FORM_OR_JSON
    body_required: bool = True
    path: Mapping[str, str] = field(default_factory=dict)
    """Description of each path parameter."""
    public: bool = False
    """No API key needed."""


def operation(
    *tags: str,
    responses: Mapping[int, Reply],
    errors: tuple[int, ...] = (),
    query: type[RequestModel] | None = None,
    body: type[RequestModel] | None = None,
    media: tuple[str, ...] = FORM_OR_JSON,
    body_required: bool = True,
    path: Mapping[str, str] | None = None,
    public: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Document a route and validate its request: the handler gets `query=` and `body=`, validated models.

    Goes under the route decorator (`@bp.post(...)` above it), so that Flask registers the validating handler.
    """
    op = Operation(
        tags=tags,
        responses=responses,
        errors=errors,
        query=query,
        body=body,
        media=media,
        body_required=body_required,
        path=path or {},
        public=public,
    )

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def handler(**kwargs: Any) -> Any:
            limit = api_context().settings.max_upload_bytes
            if op.query is not None:
                kwargs["query"] = validate_request(op.query, request.args.to_dict(), max_upload_bytes=limit)
            if op.body is not None:
                kwargs["body"] = validate_request(op.body, _body_fields(op.body, op.media), max_upload_bytes=limit)
            return view(**kwargs)

        handler.operation = op  # type: ignore[attr-defined]
        return handler

    return decorate


def _body_fields(model: type[RequestModel], media: tuple[str, ...]) -> dict[str, Any]:
    """The body's fields for `model`; an audio field becomes the `AudioInput` (file part or text) it reads."""
    fields, files = read_body(media)
    data: dict[str, Any] = dict(fields)
    for name in model.audio_fields():
        upload = files.get(name)
        data[name] = AudioInput(upload=upload.read() if upload is not None else None, base64_text=fields.get(name))
    return data


def operation_of(view: Callable[..., Any]) -> Operation | None:
    """The `@operation` record of a view function, or None for a route that has none (flasgger's own)."""
    return getattr(view, "operation", None)


# --- the spec ---------------------------------------------------------------------------------------------------


def build_spec(app: Flask, info: Mapping[str, Any]) -> dict[str, Any]:
    """The OpenAPI 3.0 document of every `@operation` route of `app` (call it once the routes are registered)."""
    components = _Components()
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        view = app.view_functions[rule.endpoint]
        op = operation_of(view)
        if op is None:
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation_spec(view, op, rule.arguments, components)
    return {
        "openapi": "3.0.3",
        "info": dict(info),
        "paths": paths,
        "components": {
            "schemas": components.schemas,
            "responses": {
                name: _reply_spec(Reply(description, {JSON: Error}), components)
                for name, description in ERRORS.values()
            },
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the server's API_KEY (needed when it sets one; the docs load without it)",
                }
            },
        },
        "security": [{"bearer": []}],
    }


def _operation_spec(
    view: Callable[..., Any], op: Operation, path_names: frozenset[str] | set[str], components: _Components
) -> dict[str, Any]:
    summary, _, description = (inspect.getdoc(view) or "").partition("\n")
    spec: dict[str, Any] = {"tags": list(op.tags), "summary": summary.strip()}
    if description.strip():
        spec["description"] = description.strip()
    parameters = [_parameter(name, "path", {"type": "string"}, op.path.get(name), True) for name in sorted(path_names)]
    if op.query is not None:
        parameters += query_parameters(op.query)
    if parameters:
        spec["parameters"] = parameters
    if op.body is not None:
        named = components.ref(op.body)
        spec["requestBody"] = {
            "required": op.body_required,
            "content": {
                media: {"schema": multipart_schema(op.body) if media == MULTIPART and op.body.audio_fields() else named}
                for media in op.media
            },
        }
    responses: dict[str, Any] = {str(status): _reply_spec(reply, components) for status, reply in op.responses.items()}
    statuses = op.errors if op.public else (401, *op.errors)
    for status in sorted(statuses):
        responses[str(status)] = {"$ref": f"#/components/responses/{ERRORS[status][0]}"}
    spec["responses"] = responses
    if op.public:
        spec["security"] = []
    return spec


def query_parameters(model: type[RequestModel]) -> list[dict[str, Any]]:
    """The query parameters a model reads: one per field, its schema the field's."""
    schema = model_schema(model)
    required = set(schema.get("required", ()))
    return [
        _parameter(
            name,
            "query",
            {key: value for key, value in prop.items() if key != "description"},
            prop.get("description"),
            name in required,
        )
        for name, prop in schema["properties"].items()
    ]


def _parameter(name: str, where: str, schema: dict[str, Any], description: str | None, required: bool) -> dict:
    parameter = {"name": name, "in": where, "required": required, "schema": schema}
    if description:
        parameter["description"] = description
    return parameter


def multipart_schema(model: type[RequestModel]) -> dict[str, Any]:
    """A body's schema as multipart/form-data: the model's, with its audio fields as file parts."""
    schema = model_schema(model)
    properties = dict(schema["properties"])
    for name in model.audio_fields():
        properties[name] = {**BINARY, "description": properties[name].get("description", "audio file")}
    return {**schema, "properties": properties}


def model_schema(model: Schema) -> dict[str, Any]:
    """The OpenAPI schema of a model (or a dataclass) without its nested definitions, which refer to components."""
    if isinstance(model, Mapping):
        return dict(model)
    found = _json_schema(model)
    found.pop("$defs", None)
    return _own_fields_first(model, openapi_schema(found))


def _json_schema(model: type) -> dict[str, Any]:
    if isinstance(model, type) and issubclass(model, BaseModel):
        return model.model_json_schema(ref_template=_REF_PREFIX + "{model}")
    return TypeAdapter(model).json_schema(ref_template=_REF_PREFIX + "{model}")


def _own_fields_first(model: type, schema: dict[str, Any]) -> dict[str, Any]:
    """A request model's own fields before those it inherits (the text to speak before the sampling knobs)."""
    if not (isinstance(model, type) and issubclass(model, BaseModel)) or "properties" not in schema:
        return schema
    own = [name for name in model.__annotations__ if name in model.model_fields]
    keys = [model.model_fields[name].alias or name for name in own]
    properties = schema["properties"]
    ordered = {key: properties[key] for key in [*keys, *properties] if key in properties}
    return {**schema, "properties": ordered}


class _Components:
    """The named schemas of the spec, filled as operations refer to models."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}

    def ref(self, model: Schema) -> dict[str, Any]:
        if isinstance(model, Mapping):
            return dict(model)
        for name, inner in _json_schema(model).get("$defs", {}).items():
            self._add(name, openapi_schema(inner))
        self._add(model.__name__, model_schema(model))
        return {"$ref": _REF_PREFIX + model.__name__}

    def _add(self, name: str, schema: dict[str, Any]) -> None:
        if self.schemas.setdefault(name, schema) != schema:
            raise ValueError(f"two different models are both named {name}; rename one")


def _reply_spec(reply: Reply, components: _Components) -> dict[str, Any]:
    spec: dict[str, Any] = {"description": reply.description}
    if reply.headers:
        spec["headers"] = {
            name: {"schema": dict(schema), "description": description}
            for name, (schema, description) in reply.headers.items()
        }
    if reply.content:
        spec["content"] = {media: {"schema": components.ref(schema)} for media, schema in reply.content.items()}
    return spec


def openapi_schema(schema: Any) -> Any:
    """JSON Schema (pydantic) -> OpenAPI 3.0's dialect: `anyOf [X, null]` -> X + nullable, `const` -> enum,
    numeric exclusive bounds -> boolean ones, `examples` -> `example`; titles and null defaults go."""
    if isinstance(schema, list):
        return [openapi_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    # A null default is what "optional" already says; a title repeats the property's name.
    out = {
        key: openapi_schema(value)
        for key, value in schema.items()
        if key not in ("title", "examples") and not (key == "default" and value is None)
    }
    if schema.get("examples"):
        out["example"] = schema["examples"][0]
    if "const" in out:
        out["enum"] = [out.pop("const")]
    for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(bound), int | float) and not isinstance(out[bound], bool):
            out[limit] = out.pop(bound)
            out[bound] = True
    options = out.get("anyOf")
    if options is not None:
        kept = [option for option in options if option.get("type") != "null"]
        if len(kept) < len(options):
            out["nullable"] = True
            if len(kept) == 1:
                del out["anyOf"]
                out = {**kept[0], **out}
            else:
                out["anyOf"] = kept
    if "$ref" in out and len(out) > 1:
        # OpenAPI 3.0 ignores the siblings of a $ref: wrap it so that nullable and description count.
        out = {"allOf": [{"$ref": out.pop("$ref")}], **out}
    return out
