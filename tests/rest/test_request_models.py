"""The REST request models: they validate every request, and the spec's request side is theirs, so it cannot drift.

- For every route, the parameters and request bodies in /apispec_1.json are the JSON schemas of the models its
  `@operation` validates with (the same record the handler runs behind), and no route docstring holds YAML.
- Every constraint the spec states is enforced: for every body and query field, a value the spec rules out
  (wrong type, out of range, not one of the choices) is answered 400 with that field named, over real HTTP,
  as JSON and as a form.
- Form values are coerced as before ("0.7" -> 0.7, "true" -> True; blank = not given).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import pytest
import requests
from conftest import tiny_settings
from flask import Flask

from api_server import RunningServer, create_app
from faces.rest.audio import STREAM_FORMATS
from faces.rest.openapi import ERRORS, MULTIPART, model_schema, multipart_schema, operation_of, query_parameters
from faces.rest.request_models import (
    AudioFormat,
    OpenAIFormat,
    SpeechBody,
    TimeoutsBody,
    TTSBody,
    TTSQuery,
    VoiceCreateBody,
    VoiceRef,
    validate_request,
)
from llasa.audio import AUDIO_FORMATS
from llasa.errors import InvalidInput, PayloadTooLarge
from llasa.service import TTSService

TIMEOUT_S = 120
LIMIT = 1024 * 1024
#: A valid value for each required field the sweep below does not test: a string, or base64 for audio.
VALID_TEXT = "hi"
VALID_BASE64 = "UklGRg=="  # decodes fine; nothing reads it as audio before the refused field stops the request


@pytest.fixture(scope="module")
def served(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Flask]]:
    settings = tiny_settings(tiny_models, tmp_path_factory.mktemp("request-models"), max_audio_seconds=0.2)
    service = TTSService(settings)
    app = create_app(service, settings)
    running = RunningServer(app, settings, host="127.0.0.1", port=0).start()
    try:
        yield running.url, app
    finally:
        running.stop()
        service.shutdown()


def operations(app: Flask) -> Iterator[tuple[str, str, Any]]:
    """(path as in the spec, method, the route's @operation) for every documented route."""
    for rule in app.url_map.iter_rules():
        op = operation_of(app.view_functions[rule.endpoint])
        if op is None:
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield path, method.lower(), op


# --- the spec is the models -------------------------------------------------------------------------------------


def test_the_spec_request_side_is_the_models_json_schema(served: tuple[str, Flask]) -> None:
    url, app = served
    spec = requests.get(url + "/apispec_1.json", timeout=TIMEOUT_S).json()
    schemas = spec["components"]["schemas"]
    bodies = 0
    for path, method, op in operations(app):
        documented = spec["paths"][path][method]
        query = [p for p in documented.get("parameters", []) if p["in"] == "query"]
        if op.query is None:
            assert not query, (path, method)
        else:
            assert query == query_parameters(op.query)
            pydantic_names = {f.alias or name for name, f in op.query.model_fields.items()}
            assert {p["name"] for p in query} == pydantic_names
        if op.body is None:
            assert "requestBody" not in documented, (path, method)
            continue
        bodies += 1
        content = documented["requestBody"]["content"]
        assert tuple(content) == op.media
        name = op.body.__name__
        assert schemas[name] == model_schema(op.body)
        # The same fields, the same required ones, as pydantic has them.
        assert set(schemas[name]["properties"]) == set(op.body.model_fields)
        required = {n for n, f in op.body.model_fields.items() if f.is_required()}
        assert set(schemas[name].get("required", ())) == required
        for media, entry in content.items():
            if media == MULTIPART and op.body.audio_fields():
                assert entry["schema"] == multipart_schema(op.body)
                for field in op.body.audio_fields():  # a file part in a form, base64 text in JSON
                    assert entry["schema"]["properties"][field]["format"] == "binary"
                    assert schemas[name]["properties"][field]["format"] == "byte"  # base64
            else:
                assert entry["schema"] == {"$ref": f"#/components/schemas/{name}"}
    assert bodies == 9


def test_no_route_docstring_holds_hand_written_yaml(served: tuple[str, Flask]) -> None:
    _, app = served
    for path, method, _op in operations(app):
        rule = next(r for r in app.url_map.iter_rules() if re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", r.rule) == path)
        doc = app.view_functions[rule.endpoint].__doc__ or ""
        assert "---" not in doc, f"{method} {path}: the spec is generated; its docstring is prose only"
        assert "responses:" not in doc
        assert "parameters:" not in doc


def test_error_answers_are_written_once(served: tuple[str, Flask]) -> None:
    url, _ = served
    spec = requests.get(url + "/apispec_1.json", timeout=TIMEOUT_S).json()
    shared = spec["components"]["responses"]
    assert set(shared) == {name for name, _ in ERRORS.values()}
    for item in spec["paths"].values():
        for documented in item.values():
            for status, answer in documented["responses"].items():
                if int(status) >= 400:
                    assert answer == {"$ref": f"#/components/responses/{ERRORS[int(status)][0]}"}
            public = documented.get("security") == []
            assert ("401" in documented["responses"]) is not public


# --- what the spec rules out is refused ------------------------------------------------------------------------


def refused_values(schema: dict[str, Any]) -> list[tuple[Any, str]]:
    """Values the property's schema rules out, each with its spelling in a form ('' = cannot be sent in a form)."""
    found: list[tuple[Any, str]] = []
    kinds = {option.get("type") for option in schema.get("anyOf", [schema])}
    if "enum" in schema:
        found.append(("no-such-choice", "no-such-choice"))
    if kinds & {"number", "integer"}:
        found += [("many", "many"), (True, "")]
        for bound, step in (("minimum", -1), ("maximum", 1)):
            if bound in schema:
                found.append((schema[bound] + step, str(schema[bound] + step)))
    if "integer" in kinds:
        found.append((2.5, "2.5"))
    if "boolean" in kinds:
        found.append(("maybe", "maybe"))
    if kinds <= {"string", None}:
        found.append((42, ""))
    return found


def valid_body(schema: dict[str, Any]) -> dict[str, Any]:
    body = {}
    for name in schema.get("required", ()):
        body[name] = VALID_BASE64 if name in ("audio", "file", "audio_sample") else VALID_TEXT
    return body


def test_every_value_the_spec_rules_out_is_a_400_naming_its_field(served: tuple[str, Flask]) -> None:
    url, app = served
    spec = requests.get(url + "/apispec_1.json", timeout=TIMEOUT_S).json()
    schemas = spec["components"]["schemas"]
    checked = 0
    for path, method, op in operations(app):
        target = url + path.replace("{job_id}", "0" * 32).replace("{voice_id}", "ghost")
        if op.body is not None:
            schema = schemas[op.body.__name__]
            for field, prop in schema["properties"].items():
                for value, form_value in refused_values(prop):
                    body = {**valid_body(schema), field: value}
                    answer = requests.request(method, target, json=body, timeout=TIMEOUT_S)
                    assert answer.status_code == 400, (path, field, value, answer.text)
                    assert answer.json()["error"]["field"] == field, (path, field, value, answer.text)
                    checked += 1
                    if form_value and "application/x-www-form-urlencoded" in op.media:
                        form = {**valid_body(schema), field: form_value}
                        answer = requests.request(method, target, data=form, timeout=TIMEOUT_S)
                        assert answer.status_code == 400, (path, field, form_value, answer.text)
                        assert answer.json()["error"]["field"] == field, (path, field, form_value, answer.text)
        if op.query is not None:
            for parameter in query_parameters(op.query):
                for value, form_value in refused_values(parameter["schema"]):
                    if not form_value:
                        continue
                    body = valid_body(schemas[op.body.__name__]) if op.body is not None else None
                    answer = requests.request(
                        method, target, params={parameter["name"]: form_value}, json=body, timeout=TIMEOUT_S
                    )
                    assert answer.status_code == 400, (path, parameter["name"], value, answer.text)
                    assert answer.json()["error"]["field"] == parameter["name"]
                    checked += 1
    assert checked > 60


def test_a_refusal_says_what_was_wrong(served: tuple[str, Flask]) -> None:
    url, _ = served
    hot = requests.post(url + "/api/tts", json={"text": "hi", "temperature": "hot"}, timeout=TIMEOUT_S).json()
    assert hot["error"]["message"].startswith("temperature 'hot' is not accepted: input should be a valid number")
    missing = requests.post(url + "/v1/audio/speech", json={"voice": "alloy"}, timeout=TIMEOUT_S).json()
    assert missing["error"] == {
        "code": "invalid_input",
        "message": "input is missing; this field is required (see /apidocs)",
        "field": "input",
    }
    voice = requests.post(url + "/v1/audio/speech", json={"input": "hi", "voice": 42}, timeout=TIMEOUT_S).json()
    assert "a valid string; or" in voice["error"]["message"]  # a name, or {"id": ...}
    seed = requests.post(url + "/api/tts", json={"text": "hi", "seed": True}, timeout=TIMEOUT_S).json()
    assert seed["error"]["field"] == "seed"
    assert "not true or false" in seed["error"]["message"]


def test_bodies_in_undocumented_media_types_are_415(served: tuple[str, Flask]) -> None:
    url, _ = served
    # /v1/audio/speech reads JSON only (as OpenAI's); the other routes read forms too.
    form = requests.post(url + "/v1/audio/speech", data={"input": "hi"}, timeout=TIMEOUT_S)
    assert form.status_code == 415, form.text
    assert "application/json" in form.json()["error"]["message"]
    upload = requests.post(url + "/v1/audio/speech", files={"input": ("x.txt", b"hi")}, timeout=TIMEOUT_S)
    assert upload.status_code == 415
    text = requests.post(
        url + "/api/gpu/offload", data="model=llasa", headers={"Content-Type": "text/plain"}, timeout=TIMEOUT_S
    )
    assert text.status_code == 415
    assert "multipart/form-data" in text.json()["error"]["message"]
    # curl -d sends a url-encoded form: the GPU controls read it.
    assert requests.post(url + "/api/gpu/offload", data={"model": "llasa"}, timeout=TIMEOUT_S).status_code == 200


# --- the models alone -------------------------------------------------------------------------------------------


def test_form_text_is_coerced_and_blank_means_not_given() -> None:
    form = {
        "text": "Hello.",
        "temperature": "0.7",
        "top_k": "40",
        "seed": "3.0",
        "format": "MP3",
        "sample_rate": "24000",
        "voice": "",
        "max_audio_seconds": "",
    }
    body = validate_request(TTSBody, form, max_upload_bytes=LIMIT)
    assert (body.temperature, body.top_k, body.seed) == (0.7, 40, 3)
    assert (body.format, body.sample_rate, body.voice, body.reference_audio) == ("mp3", 24000, None, None)
    assert body.generation_params().max_audio_seconds is None
    query = validate_request(TTSQuery, {"async": "true", "response": "JSON"}, max_upload_bytes=LIMIT)
    assert (query.run_async, query.response) == (True, "json")
    assert validate_request(TTSQuery, {"async": ""}, max_upload_bytes=LIMIT).run_async is False
    voice = validate_request(
        VoiceCreateBody, {"name": "x", "audio_sample": VALID_BASE64, "overwrite": "yes"}, max_upload_bytes=LIMIT
    )
    assert (voice.overwrite, voice.audio_sample) == (True, b"RIFF")
    timeouts = validate_request(TimeoutsBody, {"evict_timeout_s": None, "timeout": "30"}, max_upload_bytes=LIMIT)
    assert (timeouts.evict_timeout_s, timeouts.timeout) == (None, 30.0)
    speech = validate_request(SpeechBody, {"input": "hi", "voice": {"id": "narrator"}}, max_upload_bytes=LIMIT)
    assert speech.voice == VoiceRef(id="narrator")


def test_audio_fields_use_the_one_reader_and_its_limit() -> None:
    with pytest.raises(InvalidInput) as not_text:
        validate_request(TTSBody, {"text": "hi", "reference_audio": 7}, max_upload_bytes=LIMIT)
    assert not_text.value.field == "reference_audio"
    with pytest.raises(PayloadTooLarge, match="MAX_UPLOAD_MB"):
        validate_request(TTSBody, {"text": "hi", "reference_audio": "A" * 4000}, max_upload_bytes=1000)
    url_safe = validate_request(TTSBody, {"text": "hi", "reference_audio": "-_-_"}, max_upload_bytes=LIMIT)
    assert url_safe.reference_audio == b"\xfb\xff\xbf"
    with pytest.raises(RuntimeError, match="validate_request"):
        TTSBody.model_validate({"text": "hi", "reference_audio": "AAAA"})


def test_the_format_choices_are_the_encoders() -> None:
    assert get_args(AudioFormat) == tuple(AUDIO_FORMATS)  # /api/tts: every format the core encodes
    assert set(get_args(OpenAIFormat)) == set(STREAM_FORMATS)  # /v1/audio/speech: every one that also streams
