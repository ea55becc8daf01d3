"""The GPU manager under threads: the lease/eviction race, duplicate loads, the GPU slot queue, a stress run.

Real threads, real small torch models; every wait is an event or a poll with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
import torch

from gpu_manager import ManagedModel, MultiModelGPUManager, PinnedWeights
from llasa.config import Settings
from llasa.errors import Busy, Cancelled, ModelUnavailable, QueueFull
from llasa.gpu import slot

JOIN_TIMEOUT_S = 60.0


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.001)


class Worker(threading.Thread):
    """A thread that records its exception (or result) for the test to check."""

    def __init__(self, target: Callable[[], Any], name: str = "worker") -> None:
        super().__init__(name=name, daemon=True)
        self._fn = target
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self._fn()
        except BaseException as exc:
            self.error = exc

    def finish(self) -> Any:
        self.join(JOIN_TIMEOUT_S)
        assert not self.is_alive(), f"{self.name} did not finish within {JOIN_TIMEOUT_S} s"
        if self.error is not None:
            raise self.error
        return self.result


class Instrumented:
    """A real tiny torch model that checks, at every move, that the manager holds no lease on it."""

    def __init__(self, name: str, device: str, manager: MultiModelGPUManager, registry: Registry) -> None:
        self.name = name
        self.manager = manager
        self.registry = registry
        self.module = torch.nn.Linear(8, 8).to(device)
        self.weights = PinnedWeights(self.module)
        self.users = 0
        self.users_lock = threading.Lock()
        self.closed = False
        self.close_gate: threading.Event | None = None
        self.close_started = threading.Event()

    def _check_idle(self, what: str) -> None:
        leases = self.manager.model_status(self.name)["leases"]
        with self.users_lock:
            users = self.users
        if leases or users:
            self.registry.violations.append(f"{self.name} {what} with {leases} leases, {users} users")

    def move_to(self, device: str) -> None:
        self._check_idle(f"move_to({device})")
        self.weights.move_to(device)

    def size_bytes(self) -> int:
        return self.weights.size_bytes()

    def close(self) -> None:
        self.close_started.set()
        if self.close_gate is not None:
            self.close_gate.wait(JOIN_TIMEOUT_S)
        self._check_idle("close()")
        self.closed = True
        self.weights.close()
        self.registry.closed(self.name)

    def work(self) -> None:
        """What a request does with the model; records any use of an evicted or closed model."""
        with self.users_lock:
            self.users += 1
        try:
            if self.closed:
                self.registry.violations.append(f"{self.name} used after close()")
            state = self.manager.model_status(self.name)["state"]
            if state != "gpu":
                self.registry.violations.append(f"{self.name} used while {state}")
            if self.module(torch.ones(1, 8)).shape != (1, 8):
                self.registry.violations.append(f"{self.name} gave a wrong shape")
        finally:
            with self.users_lock:
                self.users -= 1


class Registry:
    """Counts loader calls and live instances per model, and collects violations from every thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: dict[str, int] = {}
        self.alive: dict[str, int] = {}
        self.instances: list[Instrumented] = []
        self.violations: list[str] = []
        self.load_gate: threading.Event | None = None
        self.fail_next: dict[str, BaseException] = {}

    def loader(self, manager: MultiModelGPUManager, name: str) -> Callable[[str], ManagedModel]:
        def load(device: str) -> ManagedModel:
            with self.lock:
                self.calls[name] = self.calls.get(name, 0) + 1
                failure = self.fail_next.pop(name, None)
            if self.load_gate is not None:
                self.load_gate.wait(JOIN_TIMEOUT_S)
            if failure is not None:
                raise failure
            model = Instrumented(name, device, manager, self)
            with self.lock:
                self.alive[name] = self.alive.get(name, 0) + 1
                if self.alive[name] > 1:
                    self.violations.append(f"{name}: {self.alive[name]} copies loaded at once")
                self.instances.append(model)
            return model

        return load

    def closed(self, name: str) -> None:
        with self.lock:
            self.alive[name] -= 1


def make_manager(**overrides: Any) -> MultiModelGPUManager:
    # One job slot unless a test asks for more: most tests below are about jobs that must wait for the card.
    overrides.setdefault("max_batch_sequences", 1)
    settings = Settings(_env_file=None, device="cpu", **overrides)
    return MultiModelGPUManager(settings, collect_garbage=False)


# ------------------------------------------------------------------------------------------------ the race


def test_model_cannot_be_revived_while_being_evicted() -> None:
    """Ollama's bug: a request took a model the evictor was tearing down. Here it waits, then reloads."""
    manager = make_manager(gpu_offload_after_use=True, model_evict_timeout=0.001)
    registry = Registry()
    manager.register_model("codec", registry.loader(manager, "codec"))
    with manager.use("codec") as model:
        model.work()
    first = registry.instances[0]
    first.close_gate = threading.Event()
    wait_until(lambda: manager.model_status("codec")["idle_s"] > 0.001, what="the evict timeout to pass")

    evictor = Worker(manager.run_monitor_once, name="monitor-pass")
    evictor.start()
    assert first.close_started.wait(JOIN_TIMEOUT_S), "the monitor did not start the eviction"

    def late_request() -> ManagedModel:
        with manager.use("codec") as again:
            again.work()
            return again

    request = Worker(late_request, name="late-request")
    request.start()
    wait_until(lambda: manager.model_status("codec")["waiting"] == 1, what="the request to wait")
    row = manager.model_status("codec")
    assert (row["moving"], row["leases"]) == ("release", 0)  # it waits: no lease on a model being torn down
    assert not first.closed

    first.close_gate.set()
    assert evictor.finish() == [("codec", "release")]
    revived = request.finish()
    assert revived is not first  # a fresh load, not the corpse
    assert first.closed
    assert not revived.closed
    assert registry.violations == []
    row = manager.model_status("codec")
    assert (row["loads"], row["releases"]) == (2, 1)


def test_lease_keeps_the_monitor_and_manual_release_away_until_it_ends() -> None:
    manager = make_manager(gpu_offload_after_use=False, gpu_idle_timeout=0.001, model_evict_timeout=0.001)
    registry = Registry()
    manager.register_model("llasa", registry.loader(manager, "llasa"))
    inside = threading.Event()
    leave = threading.Event()

    def long_request() -> None:
        with manager.use("llasa") as model:
            inside.set()
            leave.wait(JOIN_TIMEOUT_S)
            model.work()

    request = Worker(long_request)
    request.start()
    assert inside.wait(JOIN_TIMEOUT_S)
    manager.start_monitor(interval_s=0.001)
    try:
        passes_seen = manager.status()
        assert passes_seen["monitor_running"]
        assert manager.release("llasa")["models"] == {"llasa": "deferred"}
        # Let the monitor fire a few hundred times while the lease is held.
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            assert manager.model_status("llasa")["state"] == "gpu"
            time.sleep(0.005)
        leave.set()
        request.finish()
        wait_until(lambda: manager.model_status("llasa")["state"] == "unloaded", what="the deferred release")
    finally:
        manager.shutdown(wait_s=5)
    assert registry.violations == []
    assert not manager.status()["monitor_running"]


def test_concurrent_uses_share_one_load() -> None:
    manager = make_manager()
    registry = Registry()
    registry.load_gate = threading.Event()
    manager.register_model("whisper", registry.loader(manager, "whisper"))

    def request() -> ManagedModel:
        with manager.use("whisper") as model:
            model.work()
            return model

    workers = [Worker(request, name=f"req-{i}") for i in range(4)]
    for worker in workers:
        worker.start()
    wait_until(lambda: manager.model_status("whisper")["waiting"] == 4, what="four waiting requests")
    assert manager.model_status("whisper")["state"] == "loading"
    registry.load_gate.set()
    models = {id(worker.finish()) for worker in workers}
    assert len(models) == 1
    assert registry.calls["whisper"] == 1
    assert registry.violations == []


def test_failed_load_with_waiters_lets_the_next_one_retry() -> None:
    manager = make_manager()
    registry = Registry()
    registry.load_gate = threading.Event()
    registry.fail_next["llasa"] = OSError("disk read error")
    manager.register_model("llasa", registry.loader(manager, "llasa"))

    def request() -> str:
        with manager.use("llasa") as model:
            model.work()
        return "ok"

    workers = [Worker(request, name=f"req-{i}") for i in range(3)]
    for worker in workers:
        worker.start()
    wait_until(lambda: manager.model_status("llasa")["waiting"] == 3, what="three waiting requests")
    registry.load_gate.set()
    outcomes = []
    for worker in workers:
        try:
            outcomes.append(worker.finish())
        except ModelUnavailable as exc:
            outcomes.append(type(exc).__name__)
    assert sorted(outcomes) == ["ModelUnavailable", "ok", "ok"]
    assert registry.calls["llasa"] == 2
    row = manager.model_status("llasa")
    assert (row["loads"], row["load_failures"]) == (1, 1)


# ------------------------------------------------------------------------------------------------ GPU slot


def hold_slot(manager: MultiModelGPUManager, entered: threading.Event, leave: threading.Event) -> Worker:
    def job() -> None:
        with manager.gpu_slot():
            entered.set()
            leave.wait(JOIN_TIMEOUT_S)

    worker = Worker(job, name="slot-holder")
    worker.start()
    assert entered.wait(JOIN_TIMEOUT_S)
    return worker


def test_gpu_slot_queue_full_past_max_queue_then_fifo() -> None:
    manager = make_manager(max_queue=2, gpu_wait_timeout=60)
    entered, leave = threading.Event(), threading.Event()
    holder = hold_slot(manager, entered, leave)
    order: list[int] = []

    def queued(index: int) -> Callable[[], None]:
        def job() -> None:
            with manager.gpu_slot():
                order.append(index)

        return job

    waiters = []
    for index in range(2):
        waiter = Worker(queued(index), name=f"waiter-{index}")
        waiter.start()
        wait_until(lambda n=index + 1: manager.queue_depth == n, what=f"{index + 1} waiters")
        waiters.append(waiter)
    assert manager.status()["queue"] == {"busy": True, "depth": 2, "max_queue": 2, "running": 1, "slots": 1}

    with pytest.raises(QueueFull) as info, manager.gpu_slot():
        pass
    assert info.value.status_code == 429
    assert info.value.retry_after_s > 0
    assert "MAX_QUEUE=2" in info.value.message
    assert manager.queue_depth == 2  # the refused request took no place

    leave.set()
    holder.finish()
    for waiter in waiters:
        waiter.finish()
    assert order == [0, 1]
    assert manager.queue_depth == 0
    with manager.gpu_slot():  # free again
        pass


def test_gpu_slot_busy_after_wait_timeout() -> None:
    manager = make_manager(max_queue=4, gpu_wait_timeout=0.05)
    entered, leave = threading.Event(), threading.Event()
    holder = hold_slot(manager, entered, leave)
    try:
        with pytest.raises(Busy) as info, manager.gpu_slot():
            pass
        assert not isinstance(info.value, QueueFull)
        assert info.value.status_code == 503
        assert "GPU_WAIT_TIMEOUT" in info.value.message
        assert manager.queue_depth == 0  # the timed-out waiter left the queue
        with pytest.raises(Busy), manager.gpu_slot(timeout_s=0.01):
            pass
    finally:
        leave.set()
        holder.finish()


def test_cancelled_waiter_leaves_the_queue_at_once() -> None:
    manager = make_manager(max_queue=1, gpu_wait_timeout=60)
    entered, leave = threading.Event(), threading.Event()
    holder = hold_slot(manager, entered, leave)
    cancel = threading.Event()
    outcome: list[BaseException] = []
    ran = threading.Event()

    def queued() -> None:
        try:
            with manager.gpu_slot(cancel=cancel):
                ran.set()
        except Cancelled as e:
            outcome.append(e)

    waiter = Worker(queued, name="hung-up-client")
    waiter.start()
    try:
        wait_until(lambda: manager.queue_depth == 1, what="the waiter to queue")
        # The queue is full: a live client is refused while the hung-up one holds the place.
        with pytest.raises(QueueFull), manager.gpu_slot():
            pass
        cancel.set()
        waiter.finish()
        assert len(outcome) == 1
        assert outcome[0].status_code == 499
        assert not ran.is_set()
        assert manager.queue_depth == 0
    finally:
        leave.set()
        holder.finish()
    with manager.gpu_slot(cancel=threading.Event()):  # the slot was not leaked
        assert manager.status()["queue"]["busy"]


def test_max_queue_zero_refuses_any_wait() -> None:
    manager = make_manager(max_queue=0)
    entered, leave = threading.Event(), threading.Event()
    holder = hold_slot(manager, entered, leave)
    try:
        with pytest.raises(QueueFull), manager.gpu_slot():
            pass
    finally:
        leave.set()
        holder.finish()


def test_gpu_slot_entered_while_handling_an_exception_keeps_the_slot_until_the_job_ends() -> None:
    """A request that queues for the slot from inside an `except` block is not mistaken for an interrupted wait.

    The exception it is handling must not make the slot look abandoned: the next waiter stays queued until this
    job really ends, and the job is ended exactly once.
    """
    manager = make_manager(max_queue=4, gpu_wait_timeout=JOIN_TIMEOUT_S)
    job_ends = 0
    real_end_job = manager._end_job

    def counting_end_job(owner: int) -> None:
        nonlocal job_ends
        job_ends += 1
        real_end_job(owner)

    manager._end_job = counting_end_job  # type: ignore[method-assign]  # a spy: the real method still runs
    entered, leave = threading.Event(), threading.Event()
    holder = hold_slot(manager, entered, leave)
    in_job, leave_job = threading.Event(), threading.Event()
    order: list[str] = []
    seen_in_job: dict[str, Any] = {}

    def fallback_job() -> None:
        try:
            raise ValueError("the first attempt failed")
        except ValueError:
            with manager.gpu_slot():  # e.g. a fallback that needs the GPU, run while handling the error
                order.append("fallback start")
                in_job.set()
                leave_job.wait(JOIN_TIMEOUT_S)
                order.append("fallback end")

    def next_job() -> None:
        with manager.gpu_slot():
            order.append("next")

    fallback = Worker(fallback_job, name="fallback")
    fallback.start()
    wait_until(lambda: manager.queue_depth == 1, what="the fallback job to queue")
    following = Worker(next_job, name="next")
    following.start()
    wait_until(lambda: manager.queue_depth == 2, what="the next job to queue")

    leave.set()
    holder.finish()
    assert in_job.wait(JOIN_TIMEOUT_S)
    seen_in_job.update(queue=manager.status()["queue"], ends=job_ends, order=list(order))
    leave_job.set()
    fallback.finish()
    following.finish()

    # During the fallback job the slot was its own: busy, the next job still queued, no extra job end.
    assert seen_in_job == {
        "queue": {"busy": True, "depth": 1, "max_queue": 4, "running": 1, "slots": 1},
        "ends": 1,  # the holder's
        "order": ["fallback start"],
    }
    assert order == ["fallback start", "fallback end", "next"]
    assert job_ends == 3  # holder, fallback, next: one each
    assert manager.status()["queue"] == {"busy": False, "depth": 0, "max_queue": 4, "running": 0, "slots": 1}


class InterruptedEvent(threading.Event):
    """A slot waiter's event whose wait is interrupted (as by Ctrl-C): at once, or just after the slot arrives."""

    after_grant = False

    def wait(self, timeout: float | None = None) -> bool:
        if self.after_grant:
            super().wait(timeout)
        raise KeyboardInterrupt


@pytest.mark.parametrize("after_grant", [False, True], ids=["while-queued", "as-the-slot-arrives"])
def test_gpu_slot_wait_interrupted_leaves_the_queue_or_passes_the_slot_on(
    monkeypatch: pytest.MonkeyPatch, after_grant: bool
) -> None:
    manager = make_manager(max_queue=4, gpu_wait_timeout=JOIN_TIMEOUT_S)
    entered, leave = threading.Event(), threading.Event()
    holder = hold_slot(manager, entered, leave)
    monkeypatch.setattr(InterruptedEvent, "after_grant", after_grant)
    monkeypatch.setattr(slot, "_SlotWaiter", partial(slot._SlotWaiter, granted=InterruptedEvent()))

    def interrupted_job() -> None:
        with manager.gpu_slot():
            raise AssertionError("an interrupted wait must not run the job")

    interrupted = Worker(interrupted_job, name="interrupted")
    interrupted.start()
    if after_grant:
        wait_until(lambda: manager.queue_depth == 1, what="the interrupted job to queue")
        leave.set()  # the slot goes to the waiter, whose wait is interrupted right then
    with pytest.raises(KeyboardInterrupt):
        interrupted.finish()
    if not after_grant:
        assert manager.status()["queue"] == {
            "busy": True,
            "depth": 0,
            "max_queue": 4,
            "running": 1,
            "slots": 1,
        }  # it left
        leave.set()
    holder.finish()
    assert manager.status()["queue"] == {"busy": False, "depth": 0, "max_queue": 4, "running": 0, "slots": 1}
    monkeypatch.undo()
    with manager.gpu_slot(timeout_s=1):  # the slot is free: nobody holds it for the interrupted request
        pass


def test_models_stay_on_device_while_the_next_job_waits() -> None:
    manager = make_manager()  # offload after use
    registry = Registry()
    manager.register_model("llasa", registry.loader(manager, "llasa"))
    entered, leave = threading.Event(), threading.Event()

    def first_job() -> None:
        with manager.gpu_slot():
            with manager.use("llasa") as model:
                model.work()
            entered.set()
            leave.wait(JOIN_TIMEOUT_S)

    def second_job() -> str:
        with manager.gpu_slot():
            state_at_start = manager.model_status("llasa")["state"]
            with manager.use("llasa") as model:
                model.work()
            return state_at_start

    first = Worker(first_job, name="job-1")
    first.start()
    assert entered.wait(JOIN_TIMEOUT_S)
    second = Worker(second_job, name="job-2")
    second.start()
    wait_until(lambda: manager.queue_depth == 1, what="the second job to queue")
    leave.set()
    first.finish()
    assert second.finish() == "gpu"  # handed over without an offload/reload in between
    row = manager.model_status("llasa")
    assert (row["state"], row["loads"], row["reloads"], row["offloads"]) == ("cpu", 1, 0, 1)


def test_shutdown_waits_for_a_busy_model() -> None:
    manager = make_manager()
    registry = Registry()
    manager.register_model("llasa", registry.loader(manager, "llasa"))
    inside, leave = threading.Event(), threading.Event()

    def request() -> None:
        with manager.use("llasa") as model:
            inside.set()
            leave.wait(JOIN_TIMEOUT_S)
            model.work()

    worker = Worker(request)
    worker.start()
    assert inside.wait(JOIN_TIMEOUT_S)
    stopper = Worker(lambda: manager.shutdown(wait_s=JOIN_TIMEOUT_S), name="shutdown")
    stopper.start()
    wait_until(lambda: manager.model_status("llasa")["pending"] == "release", what="the deferred release")
    leave.set()
    worker.finish()
    answer = stopper.finish()
    assert answer["models"] == {"llasa": "deferred"}
    assert answer["still_busy"] == []
    assert manager.model_status("llasa")["state"] == "unloaded"
    assert registry.violations == []


# ------------------------------------------------------------------------------------------------ stress


@pytest.mark.timeout(180)
def test_stress_leases_never_race_the_monitor() -> None:
    """8 threads x 3 models in random order while the monitor fires every ~2 ms and people offload/release."""
    manager = make_manager(gpu_offload_after_use=False, gpu_idle_timeout=0.002, model_evict_timeout=0.004, max_queue=16)
    registry = Registry()
    names = ["llasa", "xcodec2", "whisper"]
    for name in names:
        manager.register_model(name, registry.loader(manager, name))
    iterations = 400
    done = [0] * 8

    def client(index: int) -> None:
        rng = random.Random(index)
        for _ in range(iterations):
            name = rng.choice(names)
            roll = rng.random()
            if roll < 0.03:
                manager.offload(rng.choice([name, None]))
            elif roll < 0.05:
                manager.release(name)
            elif roll < 0.07:
                manager.set_timeouts(offload_after_use=rng.random() < 0.5)
            with manager.use(name) as model:
                model.work()
                if rng.random() < 0.3:  # a request that holds two models at once
                    other = rng.choice([n for n in names if n != name])
                    with manager.use(other) as second:
                        second.work()
                        model.work()
                if rng.random() < 0.1:
                    time.sleep(0.001)
            done[index] += 1

    manager.start_monitor(interval_s=0.002)
    try:
        workers = [Worker(lambda i=i: client(i), name=f"client-{i}") for i in range(8)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.finish()
    finally:
        manager.shutdown(wait_s=JOIN_TIMEOUT_S)

    assert done == [iterations] * 8
    assert registry.violations == []
    status = manager.status()["models"]
    for name in names:
        row = status[name]
        # The loader ran once per real load, and never for two live copies at once.
        assert registry.calls[name] == row["loads"]
        assert registry.alive[name] == 0
        assert (row["state"], row["leases"], row["waiting"]) == ("unloaded", 0, 0)
    total = {key: sum(row[key] for row in status.values()) for key in ("loads", "reloads", "offloads", "releases")}
    # The monitor really raced the clients: every kind of move happened many times.
    assert total["reloads"] > 10
    assert total["offloads"] > 10
    assert total["releases"] > 10
    assert total["loads"] == total["releases"]


def test_max_batch_sequences_jobs_run_together_and_the_next_waits() -> None:
    """MAX_BATCH_SEQUENCES slots: that many jobs hold one at once (their chunks share the engine's batch), the
    next waits first come first served, and gets a slot as soon as any job ends."""
    manager = make_manager(max_batch_sequences=3, max_queue=2)
    inside = threading.Barrier(4)
    release = [threading.Event() for _ in range(3)]

    def job(index: int) -> None:
        with manager.gpu_slot():
            inside.wait(10)
            release[index].wait(10)

    holders = [threading.Thread(target=job, args=(i,)) for i in range(3)]
    for holder in holders:
        holder.start()
    inside.wait(10)  # three jobs inside at once
    status = manager.status()["queue"]
    assert status == {"busy": True, "depth": 0, "max_queue": 2, "running": 3, "slots": 3}
    got_in = threading.Event()

    def fourth() -> None:
        with manager.gpu_slot():
            got_in.set()

    waiter = threading.Thread(target=fourth)
    waiter.start()
    deadline = time.monotonic() + 10
    while manager.queue_depth != 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not got_in.is_set()
    release[1].set()  # any job ending frees a slot for the waiter
    assert got_in.wait(10)
    waiter.join(10)
    release[0].set()
    release[2].set()
    for holder in holders:
        holder.join(10)
    assert manager.status()["queue"]["running"] == 0
    manager.shutdown()
