"""Moves: load (disk -> device), reload (CPU -> device), offload (device -> CPU), release (-> nothing).

A move is marked in the table (`entry.move`) under the state lock and performed outside it; everyone who needs
that model waits on `_changed` until the mark is cleared. `_next_action_locked` is the residency policy: which
move an idle model is due for now.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections import deque

from llasa.errors import ModelUnavailable, TTSError
from llasa.gpu.memory import cuda_ready, format_bytes, free_memory, is_out_of_memory
from llasa.gpu.table import (
    PAST_TENSE,
    ManagedModel,
    ManagerBase,
    ModelEntry,
    ModelState,
    lease_word,
    offload_model,
    reload_model,
)

logger = logging.getLogger(__name__)


class MovesMixin(ManagerBase):
    """Performs the moves the table marks, and decides which ones an idle model is due for."""

    # One function on purpose: the retry-once-after-OOM loop and the bookkeeping of each outcome must clear the
    # move mark on every path, which is easiest to check when every path is on one screen.
    def _load_or_reload(self, entry: ModelEntry, kind: str, previous: ModelState) -> None:  # noqa: PLR0915
        """Run a load or reload marked in the table; always clears the mark (the next use() retries).

        An out-of-memory error from the loader or the reload is retried once, after every idle model was moved
        to CPU RAM and the caches emptied; a second one becomes ModelUnavailable.
        """
        name = entry.name
        source = "disk" if kind == "load" else "cpu"
        started = time.perf_counter()
        model: ManagedModel | None = entry.model
        need: int | None = None
        offloaded: list[str] = []
        for attempt in (1, 2):
            try:
                with self._lock:
                    need = entry.size_bytes or entry.estimated_bytes
                if self._admission and need:
                    self._admit(entry, need)
                if kind == "load":
                    model = entry.loader(self.device)
                    size = int(model.size_bytes())
                else:
                    assert model is not None
                    reload_model(model, self.device)
                    size = entry.size_bytes or int(model.size_bytes())
                break
            except BaseException as exc:
                out_of_memory = is_out_of_memory(exc)
                if out_of_memory:
                    self._note_oom(name, exc)
                if attempt == 2 or not out_of_memory:
                    self._fail_load(entry, kind, previous, model, exc, time.perf_counter() - started)
                    if out_of_memory:
                        raise ModelUnavailable(
                            f"{name} ran out of memory on {self.device} while being {PAST_TENSE[kind]} "
                            f"({format_bytes(need)}), twice, even after moving the idle models to CPU RAM "
                            f"(offloaded: {', '.join(offloaded) or 'none'}). Retry when the running requests "
                            "finish, or free GPU memory used by other programs"
                        ) from exc
                    if isinstance(exc, TTSError) or not isinstance(exc, Exception):
                        raise
                    raise ModelUnavailable(
                        f"{name} could not be {PAST_TENSE[kind]} on {self.device}: {exc}. "
                        "The next request will try again; check the model path and the logs"
                    ) from exc
                logger.warning(
                    "%s ran out of memory while being %s on %s (%s); freeing memory and retrying once",
                    name,
                    PAST_TENSE[kind],
                    self.device,
                    exc,
                )
            # Recover outside the except block: the exception's traceback holds the loader's frames and so any
            # tensors it had made; only once it is gone can their memory really be returned.
            model = self._undo_partial_load(entry, kind, previous, model, time.perf_counter() - started)
            try:
                offloaded = self._offload_idle(exclude=name)
                free_memory(collect_garbage=self._collect_garbage)
            except BaseException as exc:
                # Never leave the load mark behind: every use() of this model would wait for it forever.
                self._fail_load(entry, kind, previous, model, exc, time.perf_counter() - started)
                raise
            logger.info("%s: offloaded %s after running out of memory", name, ", ".join(offloaded) or "nothing")
        duration_s = time.perf_counter() - started
        with self._changed:
            entry.model = model
            entry.size_bytes = size
            entry.state = ModelState.GPU
            entry.move = None
            entry.reserved_bytes = 0
            entry.counts[kind] += 1
            entry.last_s[kind] = duration_s
            entry.last_error = None
            entry.on_cpu_since_s = None
            leases = entry.leases
            self._changed.notify_all()
        logger.info(
            "%s %s %s->%s in %.2f s (%s, %s)",
            name,
            PAST_TENSE[kind],
            source,
            self.device,
            duration_s,
            format_bytes(size),
            lease_word(leases),
        )

    def _undo_partial_load(
        self, entry: ModelEntry, kind: str, previous: ModelState, model: ManagedModel | None, duration_s: float
    ) -> ManagedModel | None:
        """Before a retry: drop what a failed load returned, or move a half-reloaded model back to CPU RAM."""
        if kind == "load":
            if model is not None:
                with contextlib.suppress(Exception):
                    model.close()
            return None
        assert model is not None
        try:
            offload_model(model)
        except Exception as exc:
            self._fail_load(entry, kind, previous, model, exc, duration_s)
            raise ModelUnavailable(
                f"{entry.name} ran out of memory on {self.device} while being reloaded and could not be moved "
                f"back to CPU RAM ({exc}); the next request tries again. Free GPU memory used by other programs"
            ) from exc
        return model

    def _fail_load(
        self,
        entry: ModelEntry,
        kind: str,
        previous: ModelState,
        model: ManagedModel | None,
        exc: BaseException,
        duration_s: float,
    ) -> None:
        state = ModelState.UNLOADED
        if kind == "load" and model is not None:
            # The loader returned but the model failed afterwards (size_bytes): do not leak it.
            with contextlib.suppress(Exception):
                model.close()
        elif kind == "reload" and model is not None:
            # Put a half-moved model back in CPU RAM so the next use() reloads it cleanly.
            try:
                offload_model(model)
                state = previous
            except Exception:
                logger.exception("%s: could not move back to cpu after a failed reload; releasing it", entry.name)
                with contextlib.suppress(Exception):
                    model.close()
        with self._changed:
            entry.state = state
            if state is ModelState.UNLOADED:
                entry.model = None
                entry.on_cpu_since_s = None
            elif entry.on_cpu_since_s is None:
                entry.on_cpu_since_s = self._clock()
            entry.move = None
            entry.reserved_bytes = 0
            entry.load_failures += 1
            entry.last_error = f"{kind} failed: {exc}"
            if entry.state is ModelState.UNLOADED:
                entry.pending = None  # nothing left to offload or release
            self._changed.notify_all()
        del model
        free_memory(collect_garbage=self._collect_garbage)
        logger.warning(
            "%s %s failed on %s after %.2f s, now %s: %s", entry.name, kind, self.device, duration_s, state, exc
        )

    def _next_action_locked(self, entry: ModelEntry, now: float) -> str | None:
        """The move an idle model is due for now, marked in the table; None when it stays. Lock held."""
        if entry.busy():
            return None
        action: str | None = None
        if entry.pending is not None:
            action, entry.pending = entry.pending, None
            if entry.state is ModelState.UNLOADED or (action == "offload" and entry.state is ModelState.CPU):
                action = None
        elif entry.state is ModelState.GPU:
            if self._offload_immediately_locked():
                if not self._job_active:
                    action = "offload"
            elif entry.name in self._job_models:
                pass  # the running job used it and may use it again: its idle timer waits for the job's end
            elif self._idle_timeout_s >= 0 and now - (entry.last_used_s or now) >= self._idle_timeout_s:
                action = "offload"
        elif entry.name in self._job_models:
            pass  # in RAM but used by the running job (moved out to make room): not released mid-job
        elif entry.state is ModelState.CPU and self._evict_timeout_s >= 0:
            since = entry.on_cpu_since_s if entry.on_cpu_since_s is not None else now
            if now - since >= self._evict_timeout_s:
                action = "release"
        if action is not None:
            entry.move = action
        return action

    def _offload_immediately_locked(self) -> bool:
        return self._offload_after_use or self._idle_timeout_s == 0

    def _run_moves(self, moves: list[tuple[ModelEntry, str]], *, reason: str = "") -> None:
        """Perform offloads/releases already marked in the table, then any move each one makes due."""
        queue = deque(moves)
        while queue:
            entry, action = queue.popleft()
            follow_up = self._offload(entry, reason) if action == "offload" else self._release(entry, reason)
            if follow_up is not None:
                queue.append((entry, follow_up))

    def _offload(self, entry: ModelEntry, reason: str) -> str | None:
        model = entry.model
        assert model is not None
        started = time.perf_counter()
        try:
            offload_model(model)
        except Exception as exc:
            logger.exception("%s offload failed; releasing it instead", entry.name)
            with self._lock:
                entry.last_error = f"offload failed: {exc}"
            return self._release(entry, "after a failed offload")
        if self.device != "cpu" and cuda_ready():
            sys.modules["torch"].cuda.empty_cache()
        duration_s = time.perf_counter() - started
        with self._changed:
            entry.state = ModelState.CPU
            entry.move = None
            entry.on_cpu_since_s = self._clock()
            entry.counts["offload"] += 1
            entry.last_s["offload"] = duration_s
            leases = entry.leases
            follow_up = self._next_action_locked(entry, self._clock())
            self._changed.notify_all()
        logger.info(
            "%s offloaded %s->cpu in %.2f s (%s, %s)%s",
            entry.name,
            self.device,
            duration_s,
            format_bytes(entry.size_bytes),
            lease_word(leases),
            f" {reason}" if reason else "",
        )
        return follow_up

    def _release(self, entry: ModelEntry, reason: str) -> str | None:
        with self._lock:
            model, entry.model = entry.model, None
            source = self.device if entry.state is ModelState.GPU else "cpu"
        started = time.perf_counter()
        if model is not None:
            try:
                model.close()
            except Exception:
                logger.exception("%s close() failed; dropping it anyway", entry.name)
        del model
        free_memory(collect_garbage=self._collect_garbage)
        duration_s = time.perf_counter() - started
        with self._changed:
            entry.state = ModelState.UNLOADED
            entry.move = None
            entry.pending = None
            entry.on_cpu_since_s = None
            entry.counts["release"] += 1
            entry.last_s["release"] = duration_s
            leases = entry.leases
            self._changed.notify_all()
        logger.info(
            "%s released %s->none in %.2f s (%s freed, %s)%s",
            entry.name,
            source,
            duration_s,
            format_bytes(entry.size_bytes),
            lease_word(leases),
            f" {reason}" if reason else "",
        )
