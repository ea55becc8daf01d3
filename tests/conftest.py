"""Shared fixtures: the tiny checkpoints (built once, cached across runs), Settings pointing at them, test audio.

The tiny models are written by `tools/make_tiny_models.py` into `$LLASA_CACHE_DIR/tiny-models-<hash>`, where the
hash covers the builder scripts, so editing a builder rebuilds and parallel runs share one copy. A build goes to a
temporary folder beside the final one and is renamed into place, under a file lock, so no run ever sees half a
model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

from llasa.config import Settings

REPO = Path(__file__).resolve().parent.parent
TOOLS = REPO / "tools"
#: Builder scripts and the chat templates they ship, whose content keys the cache.
BUILDER_FILES = (
    TOOLS / "make_tiny_models.py",
    TOOLS / "tiny_whisper.py",
    *sorted((TOOLS / "chat_templates").glob("*.jinja")),
)
AUDIO_DIR = REPO / "tests" / "data" / "audio"


def pytest_configure(config: pytest.Config) -> None:
    # One intra-op thread for the test session (and the servers it starts as subprocesses), unless the caller
    # chose otherwise. The tiny models gain nothing from two OpenMP threads, and when several pytest runs share
    # the 2 cores, spinning OpenMP workers made generation ~15x slower (4.7 vs 75 tokens/s measured). Set before
    # torch is first imported: the OpenMP pool reads it once.
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")


def _cache_root() -> Path:
    return Path(os.environ.get("LLASA_CACHE_DIR") or Path.home() / ".cache" / "llasa-tts").expanduser()


def _builders_hash() -> str:
    digest = hashlib.sha256()
    for path in BUILDER_FILES:
        digest.update(path.name.encode())
        digest.update(path.read_bytes() if path.exists() else b"<missing>")
    return digest.hexdigest()[:16]


def _load_builder() -> Any:
    spec = importlib.util.spec_from_file_location("make_tiny_models", TOOLS / "make_tiny_models.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def build_cached_tiny_models(cache_root: Path) -> Path:
    """Return the cached tiny-model folder for the current builders, building it first if needed."""
    cache_root.mkdir(parents=True, exist_ok=True)
    final = cache_root / f"tiny-models-{_builders_hash()}"
    if final.is_dir():
        return final
    with FileLock(str(final) + ".lock"):
        if final.is_dir():  # another run built it while we waited for the lock
            return final
        staging = Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=cache_root))
        try:
            _load_builder().build_tiny_models(staging)
            os.rename(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return final


@pytest.fixture(scope="session")
def tiny_models() -> Path:
    """Folder with `llasa/`, `xcodec2/` and `whisper/` tiny random checkpoints in the hub's layout."""
    return build_cached_tiny_models(_cache_root())


def tiny_settings(tiny_models: Path, root: Path, **overrides: Any) -> Settings:
    """Settings on the tiny checkpoints, on the CPU, servers on 127.0.0.1, folders under `root`.

    A plain function, so module-scoped fixtures can use it too (`make_settings` is function-scoped).
    """
    values: dict[str, Any] = {
        "llasa_model": str(tiny_models / "llasa"),
        "xcodec2_model": str(tiny_models / "xcodec2"),
        "whisper_model": str(tiny_models / "whisper"),
        "device": "cpu",
        "host": "127.0.0.1",
        "output_dir": root / "outputs",
        "temp_dir": root / "temp",
        "voices_dir": root / "voices",
        "gpu_monitor_interval": 0.05,
        # A random Whisper never stops on its own: bound each window so transcription stays quick.
        "whisper_max_new_tokens": 24,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture
def make_settings(tiny_models: Path, tmp_path: Path) -> Callable[..., Settings]:
    """Factory: `make_settings(**overrides)` -> Settings on the tiny models, CPU, folders under tmp_path."""

    def factory(**overrides: Any) -> Settings:
        return tiny_settings(tiny_models, tmp_path, **overrides)

    return factory


@pytest.fixture
def audio_dir() -> Path:
    """tests/data/audio: short speech recordings in several formats (words in its README.md)."""
    return AUDIO_DIR


@contextmanager
def busy_gpu(manager: Any, timeout_s: float = 60.0) -> Iterator[None]:
    """Hold every GPU job slot (MAX_BATCH_SEQUENCES of them), each from a thread of its own, for the block: the
    card is busy with other jobs, so a request that arrives now waits in the queue."""
    release = threading.Event()
    ready = threading.Barrier(manager.slot_capacity + 1)

    def hold() -> None:
        with manager.gpu_slot():
            ready.wait(timeout_s)
            release.wait(timeout_s)

    holders = [threading.Thread(target=hold, daemon=True) for _ in range(manager.slot_capacity)]
    for holder in holders:
        holder.start()
    ready.wait(timeout_s)
    try:
        yield
    finally:
        release.set()
        for holder in holders:
            holder.join(timeout_s)
