"""The GPU job slots: up to MAX_BATCH_SEQUENCES synthesis or transcription jobs at once, a bounded first-come queue.

The jobs in the slots run together: their text chunks share the engine's batch (`llasa.engine`), so the card
advances many voices per step. A job beyond the slots waits in a first-come queue of at most MAX_QUEUE.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from llasa.errors import Busy, Cancelled, QueueFull
from llasa.gpu.table import ManagerBase

logger = logging.getLogger(__name__)


@dataclass
class _SlotWaiter:
    owner: int
    granted: threading.Event = field(default_factory=threading.Event)


class GPUSlotMixin(ManagerBase):
    """`gpu_slot()`: QueueFull (429) when MAX_QUEUE wait, Busy (503) after GPU_WAIT_TIMEOUT, Cancelled on cancel."""

    _slot_lock: threading.Lock
    _slot_holders: dict[int, int]
    """Thread ident of each job in a slot -> how deep it re-entered gpu_slot()."""
    _slot_started_s: dict[int, float]
    _slot_waiters: deque[_SlotWaiter]
    _job_durations_s: deque[float]

    @property
    def slot_capacity(self) -> int:
        """Jobs that may hold a slot at once (MAX_BATCH_SEQUENCES)."""
        return max(1, int(self.settings.max_batch_sequences))

    # One function on purpose: the queue's every exit (granted, timed out, cancelled, interrupted, re-entered)
    # decides under the same lock in the same order, and reads best side by side.
    @contextlib.contextmanager
    def gpu_slot(  # noqa: PLR0912, PLR0915
        self, *, timeout_s: float | None = None, cancel: threading.Event | None = None
    ) -> Iterator[None]:
        """Hold one of the GPU job slots (MAX_BATCH_SEQUENCES) for the block; waiters are served first come,
        first served.

        QueueFull (429) at once when MAX_QUEUE requests already wait; Busy (503) after waiting GPU_WAIT_TIMEOUT s
        (or `timeout_s`); Cancelled as soon as `cancel` is set while waiting (a client that hung up leaves the
        queue at once instead of holding a place and then doing work nobody reads). Re-entrant in the thread that
        holds one. Models used inside jobs are not offloaded after use until the last running job ends, and not at
        all when the next job is already waiting.
        """
        me = threading.get_ident()
        wait_s = self.settings.gpu_wait_timeout if timeout_s is None else timeout_s
        waiter: _SlotWaiter | None = None
        with self._slot_lock:
            if me in self._slot_holders:
                self._slot_holders[me] += 1
                reentered = True
            else:
                reentered = False
                if len(self._slot_holders) < self.slot_capacity and not self._slot_waiters:
                    self._take_slot_locked(me)
                else:
                    if len(self._slot_waiters) >= self.settings.max_queue:
                        raise QueueFull(
                            f"{len(self._slot_waiters)} requests already wait for the GPU "
                            f"(MAX_QUEUE={self.settings.max_queue}); retry later",
                            retry_after_s=self._retry_after_locked(len(self._slot_waiters) + 1),
                        )
                    waiter = _SlotWaiter(me)
                    self._slot_waiters.append(waiter)
        if reentered:
            try:
                yield
            finally:
                with self._slot_lock:
                    self._slot_holders[me] -= 1
            return
        if waiter is not None:
            try:
                granted = self._wait_for_slot(waiter, wait_s, cancel)
            except BaseException:
                # Only an exception raised by the wait itself (KeyboardInterrupt, SystemExit) lands here, never
                # one the caller was already handling when it entered. Decide under the lock: the slot may have
                # been handed to this waiter between the interruption and here.
                with self._slot_lock:
                    granted = waiter.granted.is_set()
                    if not granted:
                        self._slot_waiters.remove(waiter)
                if granted:
                    self._end_job(me)  # interrupted just as the slot arrived: pass it on
                raise
            if not granted:
                # Timed out, but the slot may be handed over just now: the flag under the lock is the truth.
                with self._slot_lock:
                    granted = waiter.granted.is_set()
                    if not granted:
                        self._slot_waiters.remove(waiter)
                        retry_after_s = self._retry_after_locked(len(self._slot_waiters) + 1)
            if granted and cancel is not None and cancel.is_set():
                self._end_job(me)  # the slot arrived as the caller gave up: pass it on
                granted = False
            if not granted:
                if cancel is not None and cancel.is_set():
                    raise Cancelled("the request was cancelled while it waited for the GPU")
                raise Busy(
                    f"the GPU stayed busy for {wait_s:g} s (GPU_WAIT_TIMEOUT) with other requests; retry later",
                    retry_after_s=retry_after_s,
                )
        try:
            with self._lock:
                self._job_active = True
            yield
        finally:
            self._end_job(me)

    @staticmethod
    def _wait_for_slot(waiter: _SlotWaiter, wait_s: float, cancel: threading.Event | None) -> bool:
        """Wait until the slot is handed to `waiter` (True), the wait times out or `cancel` is set (False)."""
        if cancel is None:
            return waiter.granted.wait(wait_s)
        deadline = time.monotonic() + wait_s
        while not cancel.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            # Short waits so a cancel is seen within 50 ms; the grant itself still wakes the wait at once.
            if waiter.granted.wait(min(remaining, 0.05)):
                return True
        return False

    def _take_slot_locked(self, owner: int) -> None:
        self._slot_holders[owner] = 1
        self._slot_started_s[owner] = time.monotonic()

    def _end_job(self, owner: int) -> None:
        with self._slot_lock:
            started = self._slot_started_s.pop(owner, time.monotonic())
            self._slot_holders.pop(owner, None)
            self._job_durations_s.append(time.monotonic() - started)
            last_job = not self._slot_holders
            next_waiting = bool(self._slot_waiters)
        if last_job:
            with self._lock:
                self._job_active = False
                self._job_models.clear()
        if last_job and not next_waiting:
            # Nobody runs or waits: apply offload-after-use to the models the jobs kept on the device. A waiting
            # job finds them still there (and settles them when it ends). Timed releases of models already in RAM
            # are left to the monitor thread, so they never lengthen a request.
            try:
                self._settle(on_device_only=True)
            except Exception:
                logger.exception("offload after a GPU job failed")
        with self._slot_lock:
            while self._slot_waiters and len(self._slot_holders) < self.slot_capacity:
                waiter = self._slot_waiters.popleft()
                self._take_slot_locked(waiter.owner)
                waiter.granted.set()

    def _retry_after_locked(self, position: int) -> float:
        if not self._job_durations_s:
            return 5.0
        mean_s = sum(self._job_durations_s) / len(self._job_durations_s)
        # `position` jobs wait; the slots finish about slot_capacity jobs per mean job time.
        return round(min(max(mean_s * position / self.slot_capacity, 1.0), 600.0), 1)

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a GPU slot (the running ones not counted)."""
        with self._slot_lock:
            return len(self._slot_waiters)

    @property
    def running_jobs(self) -> int:
        """Requests holding a GPU slot now."""
        with self._slot_lock:
            return len(self._slot_holders)
