"""Control: manual offload / release (deferred while a model is busy), the residency timeouts at run time, and
the idle monitor thread that applies them."""

from __future__ import annotations

import logging
import math
import threading
from typing import Any

from llasa.errors import InvalidInput
from llasa.gpu.table import PAST_TENSE, ManagerBase, ModelEntry, ModelState

logger = logging.getLogger(__name__)


class ControlMixin(ManagerBase):
    """What a person (or the idle monitor) asks of the models; every move is decided and marked under the lock."""

    _monitor_thread: threading.Thread | None
    _monitor_stop: threading.Event

    # ---------------------------------------------------------------------------------------------- manual

    def offload(self, name: str | None = None) -> dict[str, Any]:
        """Move `name` (None = every model) to CPU RAM now; a busy one when its last lease ends.

        Returns {"action": "offload", "models": {name: "offloaded" | "deferred" | "already on cpu" |
        "not loaded"}}.
        """
        return self._manual("offload", name)

    def release(self, name: str | None = None) -> dict[str, Any]:
        """Release `name` (None = every model) from GPU and RAM now; a busy one when its last lease ends.

        Returns {"action": "release", "models": {name: "released" | "deferred" | "not loaded"}}.
        """
        return self._manual("release", name)

    def offload_all(self) -> dict[str, Any]:
        """`offload(None)`."""
        return self.offload(None)

    def release_all(self) -> dict[str, Any]:
        """`release(None)`."""
        return self.release(None)

    def _manual(self, action: str, name: str | None) -> dict[str, Any]:
        entries = [self._entry(name)] if name is not None else list(self._entries.values())
        outcomes: dict[str, str] = {}
        moves: list[tuple[ModelEntry, str]] = []
        with self._lock:
            for entry in entries:
                if entry.busy():
                    if entry.state is ModelState.UNLOADED and entry.move is None:
                        outcomes[entry.name] = "not loaded"
                        continue
                    # A pending release wins over an offload asked for later.
                    if entry.pending != "release":
                        entry.pending = action
                    outcomes[entry.name] = "deferred"
                elif entry.state is ModelState.UNLOADED:
                    outcomes[entry.name] = "not loaded"
                elif action == "offload" and entry.state is ModelState.CPU:
                    outcomes[entry.name] = "already on cpu"
                else:
                    entry.move = action
                    moves.append((entry, action))
                    outcomes[entry.name] = PAST_TENSE[action]
        self._run_moves(moves, reason="on request")
        deferred = [n for n, outcome in outcomes.items() if outcome == "deferred"]
        if deferred:
            logger.info("%s of %s deferred until the last lease ends", action, ", ".join(deferred))
        return {"action": action, "models": outcomes}

    def set_timeouts(
        self,
        *,
        idle_timeout_s: float | None = None,
        evict_timeout_s: float | None = None,
        offload_after_use: bool | None = None,
    ) -> dict[str, Any]:
        """Change the residency policy at run time (None = keep); applies it at once. Returns the settings.

        Seconds: 0 = at once, -1 = never. Anything below -1 is an InvalidInput.
        """
        for field_name, value in (("idle_timeout_s", idle_timeout_s), ("evict_timeout_s", evict_timeout_s)):
            if value is not None and (value < -1 or math.isnan(value)):
                raise InvalidInput(
                    f"{field_name} must be -1 (never), 0 (at once) or a number of seconds; got {value}",
                    field=field_name,
                )
        with self._lock:
            if idle_timeout_s is not None:
                self._idle_timeout_s = float(idle_timeout_s)
            if evict_timeout_s is not None:
                self._evict_timeout_s = float(evict_timeout_s)
            if offload_after_use is not None:
                self._offload_after_use = bool(offload_after_use)
            current = self._settings_locked()
        logger.info("GPU manager timeouts now %s", current)
        self.run_monitor_once()
        return current

    # ---------------------------------------------------------------------------------------------- monitor

    def run_monitor_once(self) -> list[tuple[str, str]]:
        """One pass of the idle monitor: offload/release every idle model that is due. Returns (name, action).

        The choice and the mark happen in one critical section, so no lease can slip in between.
        """
        return self._settle(on_device_only=False)

    def _settle(self, *, on_device_only: bool) -> list[tuple[str, str]]:
        with self._lock:
            now = self._clock()
            due = [
                (e, a)
                for e in self._entries.values()
                if not (on_device_only and e.state is not ModelState.GPU) and (a := self._next_action_locked(e, now))
            ]
        self._run_moves(due, reason="by the idle monitor")
        return [(entry.name, action) for entry, action in due]

    def start_monitor(self, interval_s: float | None = None) -> None:
        """Start the idle monitor, a daemon thread that runs `run_monitor_once()` every GPU_MONITOR_INTERVAL s.

        Idempotent; `shutdown()` stops it.
        """
        with self._lock:
            if interval_s is not None:
                if interval_s <= 0:
                    raise ValueError("the monitor interval must be > 0 seconds")
                self._monitor_interval_s = float(interval_s)
            if self._monitor_thread is not None and self._monitor_thread.is_alive():
                return
            self._monitor_stop.clear()
            self._monitor_thread = threading.Thread(target=self._monitor_loop, name="gpu-manager-monitor", daemon=True)
            self._monitor_thread.start()

    def stop_monitor(self, timeout_s: float = 10.0) -> None:
        """Stop the idle monitor thread and wait for it (up to timeout_s)."""
        self._monitor_stop.set()
        thread = self._monitor_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
        self._monitor_thread = None

    def _monitor_loop(self) -> None:
        while not self._monitor_stop.wait(self._monitor_interval_s):
            try:
                self.run_monitor_once()
            except Exception:
                # The monitor must survive a failing model: log and try again next pass.
                logger.exception("GPU manager monitor pass failed")
