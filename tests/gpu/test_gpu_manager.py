"""The GPU manager's state machine, timeouts, manual moves, failures, admission and OOM recovery.

Deterministic: an injected clock and direct calls of the monitor's single pass (`run_monitor_once`), no sleeps.
Models are real small torch modules behind `PinnedWeights`; the loaders count their calls. Threads, the GPU slot
and RAM are in the sibling files.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import gpu_manager
import llasa.gpu.manager
from gpu_manager import (
    DeviceMemory,
    GPUResourceManager,
    ManagedModel,
    ModelState,
    MultiModelGPUManager,
    PinnedWeights,
    get_gpu_manager,
)
from llasa.config import Settings
from llasa.errors import InvalidInput, ModelUnavailable, NotFound, TTSError

REPO = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class TrackedModel:
    """A real tiny torch model that records every move and how it was used."""

    def __init__(self, name: str, device: str, *, size_bytes: int | None = None) -> None:
        self.name = name
        self.module = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
        self.weights = PinnedWeights(self.module.to(device))
        self._size_bytes = size_bytes
        self.moves: list[str] = []
        self.closed = False
        self.fail_next_move: BaseException | None = None

    def move_to(self, device: str) -> None:
        self.moves.append(device)
        if self.fail_next_move is not None:
            exc, self.fail_next_move = self.fail_next_move, None
            raise exc
        self.weights.move_to(device)

    def size_bytes(self) -> int:
        return self._size_bytes if self._size_bytes is not None else self.weights.size_bytes()

    def close(self) -> None:
        self.closed = True
        self.weights.close()

    def forward(self) -> torch.Tensor:
        assert not self.closed, f"{self.name} used after close()"
        return self.module(torch.ones(1, 8))


class CountingLoader:
    """Loader that builds a TrackedModel and counts calls; can be told to fail."""

    def __init__(self, name: str, *, size_bytes: int | None = None) -> None:
        self.name = name
        self.size_bytes = size_bytes
        self.calls = 0
        self.fail_with: list[BaseException] = []
        self.models: list[TrackedModel] = []

    def __call__(self, device: str) -> ManagedModel:
        self.calls += 1
        if self.fail_with:
            raise self.fail_with.pop(0)
        model = TrackedModel(self.name, device, size_bytes=self.size_bytes)
        self.models.append(model)
        return model


def make_manager(clock: FakeClock | None = None, **overrides: Any) -> MultiModelGPUManager:
    memory_probe = overrides.pop("memory_probe", None)
    # One job slot unless a test asks for more: the queue tests below are about jobs that must wait.
    overrides.setdefault("max_batch_sequences", 1)
    settings = Settings(_env_file=None, device="cpu", **overrides)
    return MultiModelGPUManager(settings, clock=clock or FakeClock(), memory_probe=memory_probe, collect_garbage=False)


def state(manager: MultiModelGPUManager, name: str) -> str:
    return manager.status()["models"][name]["state"]


# ------------------------------------------------------------------------------------------------ state machine


def test_lazy_load_then_offload_after_use_then_reload() -> None:
    manager = make_manager()
    loader = CountingLoader("llasa")
    manager.register_model("llasa", loader)
    assert state(manager, "llasa") == "unloaded"
    assert loader.calls == 0

    with manager.use("llasa") as model:
        assert isinstance(model, TrackedModel)
        assert state(manager, "llasa") == "gpu"
        assert manager.status()["models"]["llasa"]["leases"] == 1
        assert model.forward().shape == (1, 4)
    # GPU_OFFLOAD_AFTER_USE=true (the default): offloaded as the lease ends.
    row = manager.status()["models"]["llasa"]
    assert (row["state"], row["device"], row["leases"]) == ("cpu", "cpu", 0)
    assert (row["loads"], row["offloads"], row["reloads"]) == (1, 1, 0)
    assert model.moves == ["cpu"]

    with manager.use("llasa") as again:
        assert again is model
        assert state(manager, "llasa") == "gpu"
    row = manager.status()["models"]["llasa"]
    assert (row["loads"], row["reloads"], row["offloads"]) == (1, 1, 2)
    assert loader.calls == 1
    assert row["size_bytes"] == model.size_bytes() > 0
    for key in ("last_load_s", "last_reload_s", "last_offload_s"):
        assert row[key] is not None
        assert row[key] >= 0


def test_release_returns_to_unloaded_and_next_use_loads_again() -> None:
    manager = make_manager()
    loader = CountingLoader("codec")
    manager.register_model("codec", loader)
    with manager.use("codec"):
        pass
    assert manager.release("codec") == {"action": "release", "models": {"codec": "released"}}
    assert state(manager, "codec") == "unloaded"
    assert loader.models[0].closed
    # PinnedWeights.close() empties the tensors, so a stray reference to the module holds no weights.
    assert all(p.numel() == 0 for p in loader.models[0].module.parameters())
    with manager.use("codec") as model:
        assert model is loader.models[1]
    assert loader.calls == 2
    assert manager.status()["models"]["codec"]["loads"] == 2


def test_state_during_load_is_loading() -> None:
    manager = make_manager()
    seen: list[str] = []

    def loader(device: str) -> ManagedModel:
        seen.append(state(manager, "m"))
        return TrackedModel("m", device)

    manager.register_model("m", loader)
    with manager.use("m"):
        pass
    assert seen == ["loading"]


# ------------------------------------------------------------------------------------------------ timeouts


def test_idle_timeout_n_offloads_only_after_n_seconds() -> None:
    clock = FakeClock()
    manager = make_manager(clock, gpu_offload_after_use=False, gpu_idle_timeout=10, model_evict_timeout=-1)
    manager.register_model("m", CountingLoader("m"))
    with manager.use("m"):
        pass
    assert state(manager, "m") == "gpu"
    clock.advance(9.5)
    assert manager.run_monitor_once() == []
    assert state(manager, "m") == "gpu"
    assert manager.status()["models"]["m"]["idle_s"] == pytest.approx(9.5)
    clock.advance(0.5)
    assert manager.run_monitor_once() == [("m", "offload")]
    assert state(manager, "m") == "cpu"


def test_idle_timeout_zero_offloads_at_once() -> None:
    manager = make_manager(gpu_offload_after_use=False, gpu_idle_timeout=0, model_evict_timeout=-1)
    manager.register_model("m", CountingLoader("m"))
    with manager.use("m"):
        assert state(manager, "m") == "gpu"
    assert state(manager, "m") == "cpu"  # no monitor pass needed


def test_idle_timeout_minus_one_never_offloads() -> None:
    clock = FakeClock()
    manager = make_manager(clock, gpu_offload_after_use=False, gpu_idle_timeout=-1, model_evict_timeout=0)
    manager.register_model("m", CountingLoader("m"))
    with manager.use("m"):
        pass
    clock.advance(10**9)
    assert manager.run_monitor_once() == []
    assert state(manager, "m") == "gpu"


def test_evict_timeout_n_releases_after_n_seconds_in_ram() -> None:
    clock = FakeClock()
    manager = make_manager(clock, model_evict_timeout=60)
    loader = CountingLoader("m")
    manager.register_model("m", loader)
    with manager.use("m"):
        pass
    assert state(manager, "m") == "cpu"
    clock.advance(59)
    assert manager.run_monitor_once() == []
    clock.advance(1)
    assert manager.run_monitor_once() == [("m", "release")]
    assert state(manager, "m") == "unloaded"
    assert loader.models[0].closed


def test_evict_timeout_counts_from_arrival_in_ram() -> None:
    clock = FakeClock()
    manager = make_manager(clock, gpu_offload_after_use=False, gpu_idle_timeout=100, model_evict_timeout=50)
    manager.register_model("m", CountingLoader("m"))
    with manager.use("m"):
        pass
    clock.advance(100)
    assert manager.run_monitor_once() == [("m", "offload")]
    clock.advance(49)  # idle 149 s in all, but only 49 s in RAM
    assert manager.run_monitor_once() == []
    clock.advance(1)
    assert manager.run_monitor_once() == [("m", "release")]


def test_evict_timeout_zero_releases_right_after_offload() -> None:
    manager = make_manager(model_evict_timeout=0)
    loader = CountingLoader("m")
    manager.register_model("m", loader)
    with manager.use("m"):
        pass
    row = manager.status()["models"]["m"]
    assert (row["state"], row["offloads"], row["releases"]) == ("unloaded", 1, 1)


def test_evict_timeout_minus_one_keeps_model_in_ram() -> None:
    clock = FakeClock()
    manager = make_manager(clock, model_evict_timeout=-1)
    manager.register_model("m", CountingLoader("m"))
    with manager.use("m"):
        pass
    clock.advance(10**9)
    assert manager.run_monitor_once() == []
    assert state(manager, "m") == "cpu"


def test_monitor_never_touches_a_leased_model() -> None:
    clock = FakeClock()
    manager = make_manager(clock, gpu_offload_after_use=False, gpu_idle_timeout=0.001, model_evict_timeout=0)
    manager.register_model("m", CountingLoader("m"))
    with manager.use("m") as model:
        clock.advance(10**6)
        assert manager.run_monitor_once() == []
        assert state(manager, "m") == "gpu"
        assert model.moves == []
    # The lease ended long after the timeout: idle time counts from the end of the lease.
    assert state(manager, "m") == "gpu"
    clock.advance(0.001)
    assert manager.run_monitor_once() == [("m", "offload")]
    assert state(manager, "m") == "unloaded"  # evict timeout 0 follows the offload at once


def test_set_timeouts_applies_at_once_and_validates() -> None:
    clock = FakeClock()
    manager = make_manager(clock, gpu_offload_after_use=False, gpu_idle_timeout=600, model_evict_timeout=-1)
    manager.register_model("m", CountingLoader("m"))
    with manager.use("m"):
        pass
    answer = manager.set_timeouts(idle_timeout_s=0)
    assert answer["idle_timeout_s"] == 0
    assert state(manager, "m") == "cpu"
    answer = manager.set_timeouts(evict_timeout_s=0, offload_after_use=True)
    assert (answer["evict_timeout_s"], answer["offload_after_use"]) == (0, True)
    assert state(manager, "m") == "unloaded"
    assert manager.status()["settings"] == answer
    with pytest.raises(InvalidInput) as info:
        manager.set_timeouts(idle_timeout_s=-2)
    assert info.value.field == "idle_timeout_s"
    assert "-1 (never)" in info.value.message
    with pytest.raises(InvalidInput):
        manager.set_timeouts(evict_timeout_s=float("nan"))


# ------------------------------------------------------------------------------------------------ jobs


def test_gpu_slot_job_keeps_a_model_between_two_uses() -> None:
    manager = make_manager()  # offload after use
    loader = CountingLoader("codec")
    manager.register_model("codec", loader)
    with manager.gpu_slot():
        with manager.use("codec"):  # encode the reference
            pass
        assert state(manager, "codec") == "gpu"
        assert manager.run_monitor_once() == []  # nor does the monitor take it mid-job
        with manager.use("codec"):  # decode the result
            pass
        assert state(manager, "codec") == "gpu"
    row = manager.status()["models"]["codec"]
    assert (row["state"], row["loads"], row["reloads"], row["offloads"]) == ("cpu", 1, 0, 1)


def test_gpu_slot_job_keeps_a_model_between_two_uses_despite_the_idle_timeout() -> None:
    """Issue 3: the codec waits out a slow Llasa load between encode and decode without bouncing CPU<->GPU."""
    clock = FakeClock()
    manager = make_manager(clock, gpu_offload_after_use=False, gpu_idle_timeout=5, model_evict_timeout=-1)
    manager.register_model("codec", CountingLoader("codec"))
    manager.register_model("whisper", CountingLoader("whisper"))
    with manager.use("whisper"):  # used before the job, not by it
        pass
    with manager.gpu_slot():
        with manager.use("codec"):  # encode the reference
            pass
        clock.advance(6)  # Llasa takes seconds to load
        # The idle timer still applies to a model the job did not use, never to one it did.
        assert manager.run_monitor_once() == [("whisper", "offload")]
        assert state(manager, "codec") == "gpu"
        with manager.use("codec"):  # decode the result
            pass
    row = manager.status()["models"]["codec"]
    assert (row["state"], row["loads"], row["reloads"], row["offloads"]) == ("gpu", 1, 0, 0)
    # After the job the normal timer applies again, counted from the last use.
    clock.advance(4.9)
    assert manager.run_monitor_once() == []
    clock.advance(0.1)
    assert manager.run_monitor_once() == [("codec", "offload")]


def test_gpu_slot_job_keeps_a_model_it_used_in_ram_despite_the_evict_timeout() -> None:
    """A job's model moved to RAM mid-job (to make room) is reloaded for its second use, not loaded again."""
    clock = FakeClock()
    manager = make_manager(clock, gpu_offload_after_use=False, gpu_idle_timeout=-1, model_evict_timeout=5)
    loader = CountingLoader("codec")
    manager.register_model("codec", loader)
    with manager.gpu_slot():
        with manager.use("codec"):
            pass
        assert manager.offload("codec") == {"action": "offload", "models": {"codec": "offloaded"}}
        clock.advance(6)
        assert manager.run_monitor_once() == []
        with manager.use("codec"):
            pass
    row = manager.status()["models"]["codec"]
    assert (row["loads"], row["reloads"], row["releases"], loader.calls) == (1, 1, 0, 1)


def test_job_end_offloads_but_leaves_timed_releases_to_the_monitor() -> None:
    clock = FakeClock()
    manager = make_manager(clock, model_evict_timeout=10)
    manager.register_model("llasa", CountingLoader("llasa"))
    manager.register_model("whisper", CountingLoader("whisper"))
    with manager.use("whisper"):
        pass
    clock.advance(20)  # whisper is due for release
    with manager.gpu_slot(), manager.use("llasa"):
        pass
    assert state(manager, "llasa") == "cpu"  # offload after use, at the end of the job
    assert state(manager, "whisper") == "cpu"  # not released in the request's own thread
    assert manager.run_monitor_once() == [("whisper", "release")]


def test_gpu_slot_is_reentrant_in_its_thread() -> None:
    manager = make_manager()
    manager.register_model("m", CountingLoader("m"))
    with manager.gpu_slot(), manager.gpu_slot(), manager.use("m"):
        pass
    assert state(manager, "m") == "cpu"
    assert manager.status()["queue"] == {"busy": False, "depth": 0, "max_queue": 16, "running": 0, "slots": 1}


# ------------------------------------------------------------------------------------------------ manual moves


def test_manual_offload_of_busy_model_is_deferred_to_last_lease_end() -> None:
    manager = make_manager(gpu_offload_after_use=False, gpu_idle_timeout=-1, model_evict_timeout=-1)
    manager.register_model("m", CountingLoader("m"))
    with manager.use("m") as first, manager.use("m") as second:
        assert first is second
        assert manager.offload("m") == {"action": "offload", "models": {"m": "deferred"}}
        assert manager.status()["models"]["m"]["pending"] == "offload"
        assert first.moves == []
        with manager.use("m"):
            pass
        assert state(manager, "m") == "gpu"  # two leases still held
    row = manager.status()["models"]["m"]
    assert (row["state"], row["pending"], row["offloads"]) == ("cpu", None, 1)


def test_manual_release_of_busy_model_is_deferred_and_wins_over_offload() -> None:
    manager = make_manager(gpu_offload_after_use=False, gpu_idle_timeout=-1, model_evict_timeout=-1)
    handle = manager.register_model("m", CountingLoader("m"))
    with manager.use("m") as model:
        assert handle.force_release() == {"action": "release", "models": {"m": "deferred"}}
        assert handle.force_offload()["models"] == {"m": "deferred"}
        assert handle.get_status()["pending"] == "release"
        assert not model.closed
    assert model.closed
    assert state(manager, "m") == "unloaded"


def test_manual_moves_of_idle_models_and_all() -> None:
    manager = make_manager(gpu_offload_after_use=False, gpu_idle_timeout=-1, model_evict_timeout=-1)
    for name in ("a", "b", "c"):
        manager.register_model(name, CountingLoader(name))
    with manager.use("a"):
        pass
    with manager.use("b"):
        pass
    manager.offload("b")
    assert manager.offload() == {
        "action": "offload",
        "models": {"a": "offloaded", "b": "already on cpu", "c": "not loaded"},
    }
    assert manager.offload_all()["models"]["a"] == "already on cpu"
    assert manager.release_all() == {
        "action": "release",
        "models": {"a": "released", "b": "released", "c": "not loaded"},
    }
    assert {row["state"] for row in manager.status()["models"].values()} == {"unloaded"}


def test_unknown_model_is_not_found() -> None:
    manager = make_manager()
    manager.register_model("llasa", CountingLoader("llasa"))
    with pytest.raises(NotFound, match=r"'whisper'.*registered: llasa"), manager.use("whisper"):
        pass
    with pytest.raises(NotFound):
        manager.offload("whisper")
    with pytest.raises(ValueError, match="already registered"):
        manager.register_model("llasa", CountingLoader("llasa"))


# ------------------------------------------------------------------------------------------------ per-model face


def test_resource_manager_get_model_holds_a_lease_until_released() -> None:
    manager = make_manager()
    handle = manager.register_model("m", CountingLoader("m"))
    assert isinstance(handle, GPUResourceManager)
    model = handle.get_model()
    assert handle.state is ModelState.GPU
    assert handle.get_status()["leases"] == 1
    assert manager.run_monitor_once() == []
    handle.release_lease()
    assert handle.state is ModelState.CPU
    again = manager.model("m").get_model()
    assert again is model
    manager.model("m").done()
    with pytest.raises(RuntimeError, match="without a lease"):
        handle.release_lease()
    with handle.use() as used:
        assert used is model


# ------------------------------------------------------------------------------------------------ failures


def test_failed_load_leaves_model_unloaded_and_next_use_retries() -> None:
    manager = make_manager()
    loader = CountingLoader("llasa")
    loader.fail_with.append(OSError("no such file: /models/llasa/model.safetensors"))
    manager.register_model("llasa", loader)
    with pytest.raises(ModelUnavailable) as info, manager.use("llasa"):
        pass
    assert isinstance(info.value.__cause__, OSError)
    assert "llasa could not be loaded" in info.value.message
    assert "model.safetensors" in info.value.message
    row = manager.status()["models"]["llasa"]
    assert (row["state"], row["leases"], row["waiting"], row["load_failures"]) == ("unloaded", 0, 0, 1)
    assert "no such file" in row["last_error"]

    with manager.use("llasa") as model:
        assert model.forward().shape == (1, 4)
    assert loader.calls == 2
    row = manager.status()["models"]["llasa"]
    assert (row["loads"], row["last_error"]) == (1, None)


def test_loader_tts_error_passes_through_unchanged() -> None:
    manager = make_manager()
    loader = CountingLoader("m")
    loader.fail_with.append(ModelUnavailable("download failed: hub unreachable; set HF_ENDPOINT"))
    manager.register_model("m", loader)
    with pytest.raises(ModelUnavailable, match="hub unreachable"), manager.use("m"):
        pass


def test_failed_reload_goes_back_to_cpu_and_next_use_reloads() -> None:
    manager = make_manager()
    loader = CountingLoader("m")
    manager.register_model("m", loader)
    with manager.use("m"):
        pass
    model = loader.models[0]
    model.fail_next_move = RuntimeError("CUDA error: an illegal memory access")
    with pytest.raises(ModelUnavailable, match="could not be reloaded"), manager.use("m"):
        pass
    row = manager.status()["models"]["m"]
    assert (row["state"], row["reloads"], row["load_failures"]) == ("cpu", 0, 1)
    with manager.use("m") as again:
        assert again is model
    assert manager.status()["models"]["m"]["reloads"] == 1
    assert loader.calls == 1


def test_exception_in_body_ends_the_lease() -> None:
    manager = make_manager()
    manager.register_model("m", CountingLoader("m"))
    with pytest.raises(KeyError), manager.use("m"):
        raise KeyError("boom")
    row = manager.status()["models"]["m"]
    assert (row["state"], row["leases"]) == ("cpu", 0)


# ------------------------------------------------------------------------------------------------ OOM


def test_oom_in_lease_frees_idle_models_and_retries_once() -> None:
    manager = make_manager(gpu_offload_after_use=False, gpu_idle_timeout=-1, model_evict_timeout=-1)
    manager.register_model("llasa", CountingLoader("llasa"))
    manager.register_model("codec", CountingLoader("codec"))
    with manager.use("codec"):
        pass
    assert state(manager, "codec") == "gpu"
    calls: list[str] = []

    def generate(model: ManagedModel) -> str:
        calls.append(state(manager, "codec"))
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return "codes"

    assert manager.run_with_oom_retry("llasa", generate) == "codes"
    assert calls == ["gpu", "cpu"]  # the idle codec was moved out before the retry
    rows = manager.status()["models"]
    assert (rows["llasa"]["oom_errors"], rows["llasa"]["leases"], rows["llasa"]["state"]) == (1, 0, "gpu")
    assert "out of memory" in rows["llasa"]["last_error"]


def test_second_oom_becomes_model_unavailable() -> None:
    manager = make_manager()
    manager.register_model("llasa", CountingLoader("llasa"))
    attempts = 0

    def generate(model: ManagedModel) -> None:
        nonlocal attempts
        attempts += 1
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(ModelUnavailable, match="out of GPU memory twice") as info:
        manager.run_with_oom_retry("llasa", generate)
    assert isinstance(info.value.__cause__, torch.OutOfMemoryError)
    assert info.value.status_code == 503
    assert attempts == 2
    row = manager.status()["models"]["llasa"]
    assert (row["oom_errors"], row["leases"]) == (2, 0)


def test_oom_in_loader_frees_idle_models_and_loads_again_once() -> None:
    manager = make_manager(gpu_offload_after_use=False, gpu_idle_timeout=-1, model_evict_timeout=-1)
    loader = CountingLoader("llasa")
    manager.register_model("llasa", loader)
    manager.register_model("codec", CountingLoader("codec"))
    with manager.use("codec"):
        pass
    codec_at_load: list[str] = []

    def load_llasa(device: str) -> ManagedModel:
        codec_at_load.append(state(manager, "codec"))
        return loader(device)

    manager._entries["llasa"].loader = load_llasa  # record what was resident at each try
    loader.fail_with.append(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 16.00 GiB"))
    with manager.use("llasa") as model:
        assert model.forward().shape == (1, 4)
    assert codec_at_load == ["gpu", "cpu"]  # the idle codec was moved out before the second try
    rows = manager.status()["models"]
    llasa = rows["llasa"]
    assert (llasa["state"], llasa["loads"], llasa["load_failures"], llasa["oom_errors"]) == ("gpu", 1, 0, 1)
    assert (llasa["leases"], llasa["waiting"], llasa["moving"], loader.calls) == (0, 0, None, 2)
    assert (rows["codec"]["state"], rows["codec"]["offloads"]) == ("cpu", 1)


def test_oom_in_reload_frees_idle_models_and_reloads_again_once() -> None:
    manager = make_manager(gpu_offload_after_use=False, gpu_idle_timeout=-1, model_evict_timeout=-1)
    manager.register_model("llasa", CountingLoader("llasa"))
    manager.register_model("codec", CountingLoader("codec"))
    with manager.use("llasa") as llasa:
        pass
    manager.offload("llasa")
    with manager.use("codec"):
        pass
    # CTranslate2 (faster-whisper) reports it as a RuntimeError with this text.
    llasa.fail_next_move = RuntimeError("CUDA failed with error out of memory")
    with manager.use("llasa") as again:
        assert again is llasa
        assert again.forward().shape == (1, 4)
    assert llasa.moves == ["cpu", "cpu", "cpu", "cpu"]  # offload, failed reload, back to RAM, reload (no-ops here)
    rows = manager.status()["models"]
    row = rows["llasa"]
    assert (row["state"], row["reloads"], row["load_failures"], row["oom_errors"]) == ("gpu", 1, 0, 1)
    assert (rows["codec"]["state"], rows["codec"]["offloads"]) == ("cpu", 1)


def test_oom_in_reload_that_cannot_go_back_to_ram_releases_the_model() -> None:
    manager = make_manager()
    loader = CountingLoader("llasa")
    manager.register_model("llasa", loader)
    with manager.use("llasa") as llasa:
        pass
    assert state(manager, "llasa") == "cpu"
    llasa.fail_next_move = torch.OutOfMemoryError("CUDA out of memory")
    real_move = llasa.move_to
    moves_to_ram_failing = 2  # the undo before the retry, then the failure path's own try

    def move_to(device: str) -> None:
        nonlocal moves_to_ram_failing
        if llasa.fail_next_move is None and device == "cpu" and moves_to_ram_failing:
            moves_to_ram_failing -= 1
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        real_move(device)

    llasa.move_to = move_to  # type: ignore[method-assign]
    with pytest.raises(ModelUnavailable, match="could not be moved back to CPU RAM") as info, manager.use("llasa"):
        pass
    assert isinstance(info.value.__cause__, RuntimeError)
    row = manager.status()["models"]["llasa"]
    assert (row["state"], row["load_failures"], row["oom_errors"], row["moving"]) == ("unloaded", 1, 1, None)
    assert llasa.closed
    with manager.use("llasa") as fresh:  # the next request loads it from disk
        assert fresh is not llasa
    assert loader.calls == 2


def test_second_oom_in_loader_becomes_model_unavailable_with_what_to_do() -> None:
    manager = make_manager(gpu_offload_after_use=False, gpu_idle_timeout=-1, model_evict_timeout=-1)
    loader = CountingLoader("llasa")
    manager.register_model("llasa", loader, estimated_bytes=16_100_000_000)
    manager.register_model("codec", CountingLoader("codec"))
    with manager.use("codec"):
        pass
    loader.fail_with += [torch.OutOfMemoryError("CUDA out of memory"), torch.OutOfMemoryError("CUDA out of memory")]
    with pytest.raises(ModelUnavailable) as info, manager.use("llasa"):
        pass
    message = info.value.message
    assert "llasa ran out of memory on cpu while being loaded (16.1 GB), twice" in message
    assert "offloaded: codec" in message
    assert "Retry when the running requests finish, or free GPU memory used by other programs" in message
    assert info.value.status_code == 503
    assert isinstance(info.value.__cause__, torch.OutOfMemoryError)
    row = manager.status()["models"]["llasa"]
    assert (row["state"], row["load_failures"], row["oom_errors"], loader.calls) == ("unloaded", 1, 2, 2)
    assert (row["leases"], row["waiting"], row["moving"]) == (0, 0, None)
    with manager.use("llasa") as model:  # the next request tries again
        assert model.forward().shape == (1, 4)
    assert loader.calls == 3


def test_ctranslate2_style_oom_is_recognised_and_other_errors_are_not_retried() -> None:
    assert gpu_manager.is_out_of_memory(RuntimeError("CUDA failed with error out of memory"))
    assert not gpu_manager.is_out_of_memory(RuntimeError("shape mismatch"))
    assert not gpu_manager.is_out_of_memory(MemoryError())
    manager = make_manager()
    manager.register_model("m", CountingLoader("m"))
    attempts = 0

    def broken(model: ManagedModel) -> None:
        nonlocal attempts
        attempts += 1
        raise ValueError("not an OOM")

    with pytest.raises(ValueError, match="not an OOM"):
        manager.run_with_oom_retry("m", broken)
    assert attempts == 1


def test_plain_use_lets_oom_propagate_and_counts_it() -> None:
    manager = make_manager()
    manager.register_model("m", CountingLoader("m"))
    with pytest.raises(torch.OutOfMemoryError), manager.use("m"):
        raise torch.OutOfMemoryError("CUDA out of memory")
    row = manager.status()["models"]["m"]
    assert (row["oom_errors"], row["leases"]) == (1, 0)


# ------------------------------------------------------------------------------------------------ admission


class FakeDevice:
    """The device memory a test manager sees: total minus the models the manager holds on the device."""

    def __init__(self, total_bytes: int) -> None:
        self.total_bytes = total_bytes
        self.manager: MultiModelGPUManager | None = None

    def __call__(self) -> DeviceMemory:
        assert self.manager is not None
        used = sum(row["size_bytes"] or 0 for row in self.manager.status()["models"].values() if row["state"] == "gpu")
        return DeviceMemory(self.total_bytes, self.total_bytes - used, used, used, "test")


def test_admission_offloads_least_recently_used_idle_model_to_make_room() -> None:
    clock = FakeClock()
    device = FakeDevice(8 * MIB)
    manager = make_manager(
        clock,
        memory_probe=device,
        gpu_memory_headroom_mb=1,
        gpu_offload_after_use=False,
        gpu_idle_timeout=-1,
        model_evict_timeout=-1,
    )
    device.manager = manager
    for name in ("a", "b", "c"):
        manager.register_model(name, CountingLoader(name, size_bytes=3 * MIB), estimated_bytes=3 * MIB)
    with manager.use("a"):
        pass
    clock.advance(1)
    with manager.use("b"):
        pass
    clock.advance(1)
    with manager.use("c"):  # 3 + 3 + 3 > 8 - 1: the older idle model goes
        pass
    states = {name: row["state"] for name, row in manager.status()["models"].items()}
    assert states == {"a": "cpu", "b": "gpu", "c": "gpu"}
    clock.advance(1)
    with manager.use("a"):  # now b is the least recently used
        pass
    states = {name: row["state"] for name, row in manager.status()["models"].items()}
    assert states == {"a": "gpu", "b": "cpu", "c": "gpu"}


def test_admission_refuses_with_the_numbers_when_nothing_idle_can_go() -> None:
    device = FakeDevice(8 * MIB)
    manager = make_manager(memory_probe=device, gpu_memory_headroom_mb=1, gpu_offload_after_use=False)
    device.manager = manager
    for name in ("a", "b", "c"):
        manager.register_model(name, CountingLoader(name, size_bytes=3 * MIB), estimated_bytes=3 * MIB)
    with manager.use("a"), manager.use("b"):
        with pytest.raises(ModelUnavailable) as info, manager.use("c"):
            pass
        message = info.value.message
        assert "c needs 3.1 MB" in message
        assert "2.1 MB of 8.4 MB is free" in message
        assert "1.0 MB kept as headroom" in message
        assert "in use: a, b" in message
        assert info.value.status_code == 503
    row = manager.status()["models"]["c"]
    assert (row["state"], row["load_failures"]) == ("unloaded", 1)
    with manager.use("c"):  # a and b are idle now: one of them makes room
        pass


def test_admission_uses_measured_size_for_a_reload() -> None:
    device = FakeDevice(4 * MIB)
    manager = make_manager(memory_probe=device, gpu_memory_headroom_mb=0)
    device.manager = manager
    # Estimated small, really 5 MiB: the first load passes on the estimate, the reload is checked on 5 MiB.
    manager.register_model("m", CountingLoader("m", size_bytes=5 * MIB), estimated_bytes=1)
    with manager.use("m"):
        pass
    with pytest.raises(ModelUnavailable, match=r"m needs 5\.2 MB"), manager.use("m"):
        pass
    assert state(manager, "m") == "cpu"


# ------------------------------------------------------------------------------------------------ status, logs


def test_status_shape(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    manager = make_manager(clock, gpu_offload_after_use=False, gpu_idle_timeout=300)
    manager.register_model("llasa", CountingLoader("llasa"))
    manager.register_model("whisper", CountingLoader("whisper"), estimated_bytes=1234)
    with caplog.at_level(logging.INFO, logger="llasa.gpu"), manager.use("llasa"):
        inside = manager.status()
    clock.advance(12.5)
    status = manager.status()
    assert set(status) == {"device", "models", "settings", "queue", "monitor_running"}
    assert status["device"]["name"] == "cpu"
    assert status["device"]["kind"] == "cpu"
    for key in ("total_bytes", "used_bytes", "free_bytes", "process_bytes"):
        assert status["device"][key] > 0
    assert inside["models"]["llasa"]["leases"] == 1
    assert inside["models"]["llasa"]["idle_s"] is None
    llasa = status["models"]["llasa"]
    assert llasa["idle_s"] == pytest.approx(12.5)
    assert llasa["last_used"].endswith("+00:00")  # ISO 8601, UTC
    assert llasa["device"] == "cpu"
    assert llasa["state"] == "gpu"
    whisper = status["models"]["whisper"]
    assert (whisper["state"], whisper["device"], whisper["size_bytes"], whisper["last_used"]) == (
        "unloaded",
        None,
        1234,
        None,
    )
    assert status["settings"]["idle_timeout_s"] == 300
    assert status["monitor_running"] is False
    assert manager.get_all_status()["models"].keys() == status["models"].keys()
    loaded = [r.getMessage() for r in caplog.records if "loaded disk->cpu" in r.getMessage()]
    assert len(loaded) == 1
    assert loaded[0].startswith("llasa loaded disk->cpu in ")
    assert loaded[0].endswith(" kB, 0 leases)")


def test_lifecycle_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    manager = make_manager()
    manager.register_model("codec", CountingLoader("codec"))
    with caplog.at_level(logging.INFO, logger="llasa.gpu"):
        with manager.use("codec"):
            pass
        with manager.use("codec"):
            pass
        manager.release("codec")
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("llasa.gpu")]
    assert [line.split(" ")[1] for line in lines] == ["loaded", "offloaded", "reloaded", "offloaded", "released"]
    assert lines[2].startswith("codec reloaded cpu->cpu in ")
    assert lines[4].startswith("codec released cpu->none in ")
    assert all(" s (" in line and "lease" in line for line in lines)


# ------------------------------------------------------------------------------------------------ PinnedWeights


def test_pinned_weights_on_cpu_keep_tied_weights_once_and_close_empties() -> None:
    embed = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = embed.weight  # tied, as in many language models
    module = torch.nn.Sequential(embed, head)
    module.register_buffer("scale", torch.ones(3))
    weights = PinnedWeights(module)
    assert weights.size_bytes() == 10 * 4 * 4 + 3 * 4
    assert weights.device == "cpu"
    assert not weights.pinned  # no CUDA here: nothing copied, nothing pinned
    before = module(torch.tensor([1, 2])).detach().clone()
    weights.move_to("cpu")
    assert weights.moves == 1
    assert torch.equal(module(torch.tensor([1, 2])), before)
    assert head.weight is embed.weight
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        weights.move_to("cuda:0")
    assert isinstance(weights, ManagedModel)
    weights.close()
    assert embed.weight.numel() == 0
    assert module.scale.numel() == 0


def test_pinned_weights_flat_host_copy_layout() -> None:
    """The flat host copy (pinned on CUDA): every dtype, tied weights, buffers, odd sizes, one buffer."""
    embed = torch.nn.Embedding(7, 5)
    head = torch.nn.Linear(5, 7, bias=True)
    head.weight = embed.weight
    norm = torch.nn.LayerNorm(5).to(torch.bfloat16)
    module = torch.nn.ModuleDict({"embed": embed, "head": head, "norm": norm})
    module.register_buffer("positions", torch.arange(3, dtype=torch.int64))
    module.register_buffer("mask", torch.tensor([True, False, True]))
    module.register_buffer("scalar", torch.tensor(2.5, dtype=torch.float16))
    originals = {name: t.detach().clone() for name, t in module.state_dict().items()}

    weights = PinnedWeights(module, host_copy=True)
    assert weights.pinned == torch.cuda.is_available()
    assert weights.size_bytes() == (7 * 5 + 7) * 4 + 2 * 5 * 2 + 3 * 8 + 3 + 2
    assert head.weight is embed.weight
    for name, tensor in module.state_dict().items():
        assert torch.equal(tensor, originals[name]), name
        assert tensor.dtype == originals[name].dtype
    # Everything now lives in one host buffer, each tensor on its own aligned offset.
    storages = {t.untyped_storage().data_ptr() for t in module.state_dict().values()}
    assert len(storages) == 1
    pointers = sorted(t.data_ptr() for t in module.state_dict().values())
    assert all(p % 256 == 0 for p in pointers)
    weights.move_to("cpu")
    assert torch.equal(module["head"](module["embed"](torch.tensor([1]))), head(embed(torch.tensor([1]))))
    weights.close()
    assert all(t.numel() == 0 for t in module.state_dict().values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pinned_weights_round_trip_on_cuda() -> None:
    module = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.LayerNorm(64)).to("cuda:0")
    expected = module(torch.ones(2, 64, device="cuda:0")).detach().cpu()
    weights = PinnedWeights(module)
    assert weights.pinned
    weights.move_to("cpu")
    assert all(p.device.type == "cpu" and p.is_pinned() for p in module.parameters())
    weights.move_to("cuda:0")
    assert all(p.device.type == "cuda" for p in module.parameters())
    assert torch.equal(module(torch.ones(2, 64, device="cuda:0")).detach().cpu(), expected)
    weights.close()


# ------------------------------------------------------------------------------------------------ singleton, import


def test_get_gpu_manager_is_one_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llasa.gpu.manager, "_manager", None)
    settings = Settings(_env_file=None, device="cpu")
    first = get_gpu_manager(settings)
    assert get_gpu_manager() is first
    assert get_gpu_manager(Settings(_env_file=None, device="cpu")) is first
    assert first.device == "cpu"
    assert first.status()["monitor_running"] is False  # monitors start only when asked
    first.shutdown()


def test_device_cuda_without_cuda_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelUnavailable, match="DEVICE=cuda"):
        MultiModelGPUManager(Settings(_env_file=None, device="cuda"))
    assert MultiModelGPUManager(Settings(_env_file=None, device="auto")).device == "cpu"


def test_import_has_no_side_effects() -> None:
    code = (
        "import sys, threading, gpu_manager, llasa.gpu.manager\n"
        "assert 'torch' not in sys.modules, 'torch imported at import time'\n"
        "assert threading.active_count() == 1, threading.enumerate()\n"
        "assert llasa.gpu.manager._manager is None\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


def test_shutdown_releases_everything_and_refuses_new_leases() -> None:
    manager = make_manager(gpu_offload_after_use=False, gpu_idle_timeout=-1)
    manager.register_model("a", CountingLoader("a"))
    manager.register_model("b", CountingLoader("b"))
    with manager.use("a"):
        pass
    answer = manager.shutdown(wait_s=1)
    assert answer["models"] == {"a": "released", "b": "not loaded"}
    assert answer["still_busy"] == []
    with pytest.raises(ModelUnavailable, match="shutting down"), manager.use("a"):
        pass
    assert isinstance(ModelUnavailable("x"), TTSError)
