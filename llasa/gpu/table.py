"""The state table: each registered model's row, its states, and what a loader must return."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import threading

    from llasa.config import Settings


class ModelState(StrEnum):
    """Where a model is. `gpu` = resident on the compute device (the CPU when there is no CUDA)."""

    UNLOADED = "unloaded"
    LOADING = "loading"
    GPU = "gpu"
    CPU = "cpu"


@runtime_checkable
class ManagedModel(Protocol):
    """What a loader returns: a model that can move between the compute device and CPU RAM."""

    def move_to(self, device: str) -> None:
        """Move the weights: "cpu" = offload, "cuda:0" = reload. Must be fast (a pinned copy, see PinnedWeights)."""

    def size_bytes(self) -> int:
        """Bytes of weights (what the model occupies on the device)."""

    def close(self) -> None:
        """Drop every reference to the weights, so that release returns the memory."""


@runtime_checkable
class SleepingModel(Protocol):
    """A managed model that is a server rather than weights in this process (a vLLM server): the manager's offload
    puts it to sleep and its reload wakes it up, whatever the manager's device (on a CPU-only machine both moves
    would otherwise be `move_to("cpu")`)."""

    def sleep(self) -> None: ...

    def wake_up(self) -> None: ...


def offload_model(model: ManagedModel) -> None:
    """Offload: to CPU RAM, or to sleep."""
    if isinstance(model, SleepingModel):
        model.sleep()
    else:
        model.move_to("cpu")


def reload_model(model: ManagedModel, device: str) -> None:
    """Reload: onto `device`, or awake."""
    if isinstance(model, SleepingModel):
        model.wake_up()
    else:
        model.move_to(device)


Loader = Callable[[str], ManagedModel]
"""Gets the target device ("cuda:0" or "cpu") and returns the model already on it."""


@dataclass
class ModelEntry:
    """One model's row in the state table. Every field is guarded by the manager's state lock."""

    name: str
    loader: Loader
    estimated_bytes: int | None
    state: ModelState = ModelState.UNLOADED
    model: ManagedModel | None = None
    size_bytes: int | None = None
    leases: int = 0
    waiting: int = 0  # use() calls that want this model and have no lease yet
    move: str | None = None  # "load" | "reload" | "offload" | "release" while one runs outside the lock
    pending: str | None = None  # a manual "offload" / "release" deferred to the last lease end
    reserved_bytes: int = 0  # VRAM promised to this model's load in flight
    last_used_s: float | None = None  # manager clock, end of the last lease (or its start while leased)
    last_used_wall_s: float | None = None
    on_cpu_since_s: float | None = None
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(("load", "reload", "offload", "release"), 0))
    last_s: dict[str, float | None] = field(
        default_factory=lambda: dict.fromkeys(("load", "reload", "offload", "release"))
    )
    load_failures: int = 0
    oom_errors: int = 0
    last_error: str | None = None

    def busy(self) -> bool:
        return self.leases > 0 or self.waiting > 0 or self.move is not None


PAST_TENSE = {"load": "loaded", "reload": "reloaded", "offload": "offloaded", "release": "released"}


def iso_time(wall_s: float | None) -> str | None:
    if wall_s is None:
        return None
    return datetime.fromtimestamp(wall_s, tz=UTC).isoformat(timespec="seconds")


def lease_word(count: int) -> str:
    return f"{count} lease" if count == 1 else f"{count} leases"


class ManagerBase:
    """The state every part of `MultiModelGPUManager` shares; the parts (moves, admission, slot, status) are
    mixins over it, and `manager.py` assembles them and sets these fields in `__init__`.

    Lock order: `_lock` (with its condition `_changed`) guards the table and the timeouts; `_slot_lock` guards the
    GPU job slot and its queue. The two are never held together, and nothing slow (a loader, a move, gc, a CUDA
    call) runs under `_lock`.
    """

    settings: Settings
    device: str
    _clock: Callable[[], float]
    _collect_garbage: bool
    _lock: threading.Lock
    _changed: threading.Condition
    _entries: dict[str, ModelEntry]
    _offload_after_use: bool
    _idle_timeout_s: float
    _evict_timeout_s: float
    _job_active: bool
    _job_models: set[str]
    _monitor_interval_s: float
