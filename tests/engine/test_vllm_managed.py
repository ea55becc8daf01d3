"""Which vLLM server the GPU manager manages (VLLM_MANAGED, a URL on this host or not), what the status says about
it, and what its reservation is. The sleep / wake-up sequence against a real server is in test_vllm_service.py."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest

from llasa.config import Settings
from llasa.engine.types import SamplingParams
from llasa.engine.vllm_backend import VLLMBackend
from llasa.errors import ModelUnavailable
from llasa.models.vllm_server import is_local_url, reserved_bytes, vllm_managed
from llasa.prompt import SpeechTokenIds
from llasa.service import TTSService


@pytest.mark.parametrize(
    ("url", "managed", "expected"),
    [
        ("http://127.0.0.1:8000", "auto", (True, "on this host")),
        ("http://localhost:8000", "auto", (True, "on this host")),
        (f"http://{socket.gethostname()}:8000", "auto", (True, "on this host")),
        ("http://192.0.2.10:8000", "auto", (False, "not on this host")),
        ("http://192.0.2.10:8000", "true", (True, "VLLM_MANAGED=true")),
        ("http://127.0.0.1:8000", "false", (False, "VLLM_MANAGED=false")),
        ("http://127.0.0.1:8000,http://127.0.0.1:8001", "auto", (False, "several replicas")),
        ("", "true", (False, "VLLM_URL is empty")),
    ],
)
def test_which_server_is_managed(
    make_settings: Callable[..., Settings], url: str, managed: str, expected: tuple[bool, str]
) -> None:
    got, reason = vllm_managed(make_settings(llasa_engine="vllm", vllm_url=url, vllm_managed=managed))
    assert got is expected[0]
    assert expected[1] in reason


def test_the_embedded_engine_manages_no_server(make_settings: Callable[..., Settings]) -> None:
    assert vllm_managed(make_settings(vllm_url="http://127.0.0.1:8000"))[0] is False
    assert not is_local_url("http://192.0.2.10:8000")


def test_a_remote_server_is_not_registered_and_the_status_says_so(make_settings: Callable[..., Settings]) -> None:
    service = TTSService(make_settings(llasa_engine="vllm", vllm_url="http://192.0.2.10:8000"))
    try:
        assert "vllm" not in service.manager.model_names
        engine = service.gpu_status().engine
        assert engine.managed is False
        assert "not on this host" in engine.managed_reason
        assert engine.sleeping is None
    finally:
        service.shutdown()


def test_a_local_server_is_registered_unloaded_until_first_use(make_settings: Callable[..., Settings]) -> None:
    service = TTSService(make_settings(llasa_engine="vllm", vllm_url="http://127.0.0.1:9"))
    try:
        assert service.manager.state_of("vllm") == "unloaded"
        assert service.gpu_status().engine.managed is True
    finally:
        service.shutdown()


def test_the_reservation_comes_from_the_settings(make_settings: Callable[..., Settings]) -> None:
    assert reserved_bytes(make_settings(vllm_gpu_memory_gb=20), 80 * 10**9) == 20 * 10**9
    assert reserved_bytes(make_settings(vllm_gpu_memory_utilization=0.5), 80 * 10**9) == 40 * 10**9


def test_a_server_that_cannot_wake_refuses_the_submission() -> None:
    """The lease is taken by submit(): a managed server that cannot be woken up fails the submission at once with
    the manager's error, and nothing is left running."""
    attempts: list[str] = []

    class Unwakeable:
        def __enter__(self) -> None:
            attempts.append("wake")
            raise ModelUnavailable("the Llasa engine (vLLM at http://127.0.0.1:9) could not be woken up")

        def __exit__(self, *exc_info: object) -> None:
            raise AssertionError("a lease that was never taken was ended")

    backend = VLLMBackend(["http://127.0.0.1:9"], SpeechTokenIds(10, 11, 100), lease=Unwakeable)
    try:
        with pytest.raises(ModelUnavailable, match="could not be woken up"):
            backend.submit([1, 2, 3], SamplingParams(seed=1, max_new_tokens=5))
        assert attempts == ["wake"]
        assert backend.stats().running == 0
        # whether the server is up is the manager's to say (its reload failed); a later submission asks again
        with pytest.raises(ModelUnavailable):
            backend.submit([1, 2, 3], SamplingParams(seed=1, max_new_tokens=5))
        assert attempts == ["wake", "wake"]
    finally:
        backend.shutdown()
