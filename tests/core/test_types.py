"""SynthesisRequest / TranscriptionRequest check their own fields once, when a face builds them."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from llasa.errors import InvalidInput
from llasa.types import (
    DeviceStatus,
    GenerationParams,
    GPUStatus,
    ModelStatus,
    QueueStatus,
    ResidencyPolicy,
    SynthesisRequest,
    TranscriptionRequest,
)


def test_a_request_is_normalised_when_it_is_made() -> None:
    request = SynthesisRequest("  Hello\u3000 world  ", reference_audio=b"RIFF", reference_text=" words ", voice=None)
    assert request.text == "Hello world"
    assert request.reference_text == "words"
    assert SynthesisRequest("Hi", voice="   ").voice is None
    assert request.surface == "core"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"text": "   "}, "text"),
        ({"text": 5}, "text"),
        ({"text": "a <|s_5|> b"}, "text"),
        ({"text": "hi", "reference_text": "a <|eot_id|>", "reference_audio": b"x"}, "reference_text"),
        ({"text": "hi", "voice": "v", "reference_audio": b"x"}, "voice"),
        ({"text": "hi", "voice": "v", "reference_text": "words"}, "reference_text"),
        ({"text": "hi", "reference_text": "words"}, "reference_text"),
        ({"text": "hi", "params": GenerationParams(temperature=9)}, "temperature"),
        ({"text": "hi", "language": 3}, "language"),
    ],
)
def test_a_bad_field_is_refused_with_its_name(fields: dict, field: str) -> None:
    with pytest.raises(InvalidInput) as error:
        SynthesisRequest(**fields)
    assert error.value.field == field


def test_a_surface_is_one_of_the_faces() -> None:
    with pytest.raises(ValueError, match="surface"):
        SynthesisRequest("hi", surface="fax")
    with pytest.raises(ValueError, match="surface"):
        TranscriptionRequest(b"x", surface="fax")
    with pytest.raises(InvalidInput):
        TranscriptionRequest(12)  # type: ignore[arg-type]


def test_gpu_status_is_typed_and_json_ready() -> None:
    model = ModelStatus(
        state="gpu", device="cuda:0", size_bytes=1, leases=1, waiting=0, moving=None, pending=None,
        last_used=None, idle_s=None, loads=1, reloads=0, offloads=0, releases=0, load_failures=0, oom_errors=0,
        last_load_s=0.1, last_reload_s=None, last_offload_s=None, last_release_s=None, last_error=None,
    )  # fmt: skip
    status = GPUStatus(
        device=DeviceStatus(name="cpu", kind="cpu", error="no answer"),
        models={"llasa": model},
        settings=ResidencyPolicy(True, 300.0, 600.0, 1024, 30.0, 5.0, 8),
        queue=QueueStatus(busy=False, depth=0, max_queue=8),
        monitor_running=False,
    )
    assert status.busy  # a lease is held
    wire = status.to_dict()
    assert wire["device"] == {"name": "cpu", "kind": "cpu", "error": "no answer"}
    assert wire["models"]["llasa"] == asdict(model)
