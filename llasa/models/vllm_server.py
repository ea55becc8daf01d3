"""A vLLM server on this machine as a model the GPU manager manages ("vllm"): offload = sleep, reload = wake up.

vLLM's sleep mode (`--enable-sleep-mode`, endpoints under `VLLM_SERVER_DEV_MODE=1`): `POST /sleep?level=1` moves
the weights to CPU RAM and drops the KV cache, `POST /wake_up` brings them back, `GET /is_sleeping` says which.
So the manager's moves map onto it: its idle timers and its LRU eviction for XCodec2 and Whisper put the server to
sleep, and the next sequence wakes it (the backend holds a lease on "vllm" while it has sequences in flight, so a
sleep never aborts a running request: vLLM's default sleep mode would). The reservation the server takes when
awake (`--gpu-memory-utilization` / `--kv-cache-memory-bytes`) is VLLM_GPU_MEMORY_GB: the size the manager
counts for it, and what a wake must find free.

Managed only when VLLM_MANAGED says so: `auto` (the default) manages one server whose URL is on this host
(loopback or this machine's name); `true` forces it (a vLLM container beside the service on the same GPUs, as in the
compose profile); `false` never. A remote vLLM is the operator's business: the engine status says "not managed".
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from urllib.parse import urlparse

import requests

from llasa.config import Settings
from llasa.errors import ModelUnavailable

logger = logging.getLogger(__name__)

VLLM = "vllm"
#: Seconds a sleep or wake may take: level-1 sleep copies the weights to CPU RAM (an 8B in bf16: a few seconds).
MOVE_TIMEOUT_S = 120.0


def vllm_urls(settings: Settings) -> list[str]:
    return [url.strip().rstrip("/") for url in settings.vllm_url.split(",") if url.strip()]


def is_local_url(url: str) -> bool:
    """Whether `url`'s host is this machine: loopback, or this host's name or one of its addresses."""
    host = urlparse(url).hostname or ""
    if host in {"localhost", socket.gethostname(), socket.getfqdn()}:
        return True
    try:
        if ipaddress.ip_address(host).is_loopback:
            return True
    except ValueError:
        pass
    try:
        mine = {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
    except OSError:
        return False
    return host in mine


def vllm_managed(settings: Settings) -> tuple[bool, str]:
    """Whether the GPU manager manages the vLLM server, and why (the engine status shows the reason)."""
    urls = vllm_urls(settings)
    refusals = (
        (settings.llasa_engine != "vllm", "LLASA_ENGINE is not vllm"),
        (settings.vllm_managed == "false", "VLLM_MANAGED=false"),
        (not urls, "VLLM_URL is empty"),
        (len(urls) > 1, "several replicas in VLLM_URL: each is managed where it runs"),
    )
    for refused, reason in refusals:
        if refused:
            return False, reason
    if settings.vllm_managed == "true":
        return True, "VLLM_MANAGED=true"
    if is_local_url(urls[0]):
        return True, f"{urls[0]} is on this host"
    return False, f"{urls[0]} is not on this host (set VLLM_MANAGED=true if it shares this machine's GPUs)"


class VLLMServerModel:
    """The `ManagedModel` for one vLLM server: `sleep()` / `wake_up()` are the manager's offload and reload."""

    def __init__(
        self,
        url: str,
        reserved_bytes: int,
        *,
        timeout_s: float = MOVE_TIMEOUT_S,
        drain_timeout_s: float = 10.0,
        session_factory: Callable[[], requests.Session] = requests.Session,
    ) -> None:
        self.url = url.rstrip("/")
        self.reserved_bytes = reserved_bytes
        self._drain_timeout_s = drain_timeout_s
        self._timeout_s = timeout_s
        self._session_factory = session_factory
        self.sleeps = 0
        self.wakes = 0

    # --- ManagedModel --------------------------------------------------------------------------------------------

    def move_to(self, device: str) -> None:
        """ "cpu" = sleep, anything else = wake up (a GPU manager's reload)."""
        if device == "cpu":
            self.sleep()
        else:
            self.wake_up()

    def size_bytes(self) -> int:
        return self.reserved_bytes

    def close(self) -> None:
        """Release = sleep (when it may): the server is not this process's to stop, and level 2 would discard its
        weights."""
        try:
            self.sleep()
        except RuntimeError as e:
            logger.warning("vLLM at %s left awake: %s", self.url, e)

    # --- the server's sleep mode ---------------------------------------------------------------------------------

    def sleep(self) -> None:
        """`POST /sleep?level=1`, never with a sequence in flight. A server that does not answer holds no memory of
        ours: that is logged and counted as asleep (its next wake fails, and with it that request, with a 503)."""
        started = time.perf_counter()
        try:
            # This service's sequences hold a lease, so the manager never gets here while one runs; the server's own
            # count also covers other clients' requests, which vLLM's default sleep mode would abort.
            self._wait_until_idle()
            self._post("/sleep", params={"level": "1"})
        except requests.RequestException as e:
            logger.warning("vLLM at %s did not answer /sleep (%s); counting it as asleep", self.url, e)
            return
        self.sleeps += 1
        logger.info("vLLM at %s put to sleep in %.2f s", self.url, time.perf_counter() - started)

    def wake_up(self) -> None:
        """`POST /wake_up` (a no-op for an awake server); ModelUnavailable naming the engine when it cannot."""
        started = time.perf_counter()
        try:
            self._post("/wake_up")
        except requests.RequestException as e:
            raise ModelUnavailable(
                f"the Llasa engine (vLLM at {self.url}) could not be woken up ({e}); it may be starting or "
                "restarting: try again shortly, or check VLLM_URL and the vLLM server's log"
            ) from e
        self.wakes += 1
        logger.info("vLLM at %s woken up in %.2f s", self.url, time.perf_counter() - started)

    def is_sleeping(self) -> bool | None:
        return server_is_sleeping(self.url)

    def _wait_until_idle(self) -> None:
        """Wait up to `drain_timeout_s` for the server's running and waiting requests to reach 0: a sequence this
        service just cancelled is still being aborted there for a moment. RuntimeError if they do not."""
        deadline = time.monotonic() + self._drain_timeout_s
        while (in_flight := self.requests_in_flight()) > 0:
            if time.monotonic() >= deadline:
                raise RuntimeError(f"{in_flight:.0f} requests are running or waiting there; not putting it to sleep")
            time.sleep(0.1)

    def requests_in_flight(self) -> float:
        """Requests running or waiting on the server, from its /metrics (every client's, not only ours)."""
        with self._session_factory() as session:
            response = session.get(f"{self.url}/metrics", timeout=5)
        response.raise_for_status()
        names = ("vllm:num_requests_running", "vllm:num_requests_waiting")
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in response.text.splitlines()
            if line.startswith(names) and line.split("{", 1)[0].split(" ", 1)[0] in names
        )

    def _post(self, path: str, params: dict[str, str] | None = None) -> None:
        with self._session_factory() as session:
            response = session.post(f"{self.url}{path}", params=params, timeout=(3.0, self._timeout_s))
        if response.status_code == 404:
            raise requests.HTTPError(
                f"{path} is not served: start vLLM with VLLM_SERVER_DEV_MODE=1 (and --enable-sleep-mode on a GPU)"
            )
        response.raise_for_status()


def server_is_sleeping(url: str, timeout_s: float = 2.0) -> bool | None:
    """The server's own answer to `GET /is_sleeping`; None when it does not answer (down, or no dev mode)."""
    try:
        response = requests.get(f"{url.rstrip('/')}/is_sleeping", timeout=timeout_s)
        response.raise_for_status()
        return bool(response.json()["is_sleeping"])
    except (requests.RequestException, KeyError, TypeError, ValueError):
        return None


def reserved_bytes(settings: Settings, total_device_bytes: int) -> int:
    """What the server takes when awake: VLLM_GPU_MEMORY_GB, else its --gpu-memory-utilization share of the card."""
    if settings.vllm_gpu_memory_gb > 0:
        return int(settings.vllm_gpu_memory_gb * 1e9)
    return int(settings.vllm_gpu_memory_utilization * total_device_bytes)


def load_vllm_server(settings: Settings, reserved: int) -> VLLMServerModel:
    """The "vllm" model: wakes the server if it sleeps, so a load fails now, with the engine named."""
    (url,) = vllm_urls(settings)
    model = VLLMServerModel(url, reserved)
    model.wake_up()
    return model
