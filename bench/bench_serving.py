"""The engine as users meet it: concurrent requests, streaming and long texts over real sockets (REST, waitress).

    python bench/bench_serving.py                  # tiny random checkpoints (built once, cached), CPU
    python bench/bench_serving.py --models DIR     # DIR/llasa, DIR/xcodec2, DIR/whisper
    python bench/bench_serving.py --device cuda --llasa ... --xcodec2 ... --whisper ...

Every figure is a ratio against a baseline measured in the same run (the machines are noisy):
1. Aggregate audio seconds per wall second for N concurrent `POST /api/tts` (one chunk of `--chunk-seconds` each,
   distinct seeds) against the same N requests one after another (goal >= 2.5x at 8 on the CPU).
2. Time to the first audio byte of a streamed `POST /v1/audio/speech` (stream_format=audio, pcm) for one 10 s
   chunk, over its total time (goal <= 0.10).
3. A text that the service splits into 6 chunks, against its 6 sentences sent one after another (goal <= 0.4x).
4. A 2 s request sent while a 20 s one runs, against the same 2 s request alone (goal <= 2x: no head-of-line
   blocking).
The random tiny model never samples its end token, so every chunk runs to max_audio_seconds: the lengths are
exactly what each request asks for.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from api_server import RunningServer, create_app  # noqa: E402
from llasa.config import Settings  # noqa: E402
from llasa.service import TTSService  # noqa: E402

TIMEOUT_S = 600
# Six sentences of about 15 s of speech each by the service's estimate: no two fit one 20 s chunk.
SENTENCES = [
    " ".join(f"Part {n} of the long reading goes on with words that take their time to say." for _ in range(3))
    for n in range(1, 7)
]


def tiny_models() -> Path:
    spec = importlib.util.spec_from_file_location("llasa_tests_conftest", REPO / "tests" / "conftest.py")
    if spec is None or spec.loader is None:
        raise RuntimeError("tests/conftest.py not found; pass --models DIR")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_cached_tiny_models(module._cache_root())


def tts(url: str, text: str, seconds: float, seed: int) -> tuple[float, float]:
    """POST /api/tts; returns (wall seconds, audio seconds)."""
    started = time.perf_counter()
    response = requests.post(
        f"{url}/api/tts",
        json={"text": text, "max_audio_seconds": seconds, "seed": seed, "response_format": "wav"},
        timeout=TIMEOUT_S,
    )
    response.raise_for_status()
    return time.perf_counter() - started, float(response.headers["X-Audio-Duration-S"])


def concurrency(url: str, n: int, seconds: float) -> dict[str, float]:
    texts = [f"Request number {i} reads its sentence." for i in range(n)]
    started = time.perf_counter()
    sequential_audio = sum(tts(url, text, seconds, 100 + i)[1] for i, text in enumerate(texts))
    sequential_s = time.perf_counter() - started
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=n) as pool:
        results = list(pool.map(lambda i: tts(url, texts[i], seconds, 100 + i), range(n)))
    concurrent_s = time.perf_counter() - started
    concurrent_audio = sum(audio for _, audio in results)
    return {
        "n": n,
        "concurrent": concurrent_audio / concurrent_s,
        "sequential": sequential_audio / sequential_s,
        "ratio": (concurrent_audio / concurrent_s) / (sequential_audio / sequential_s),
    }


def first_audio(url: str, seconds: float) -> dict[str, float]:
    body = {
        "model": "tts-1",
        "voice": "alloy",
        "input": "A single chunk that streams its audio as it is generated.",
        "response_format": "pcm",
        "stream_format": "audio",
        "max_audio_seconds": seconds,
        "seed": 7,
    }
    started = time.perf_counter()
    first_s: float | None = None
    received = 0
    with requests.post(f"{url}/v1/audio/speech", json=body, stream=True, timeout=TIMEOUT_S) as response:
        response.raise_for_status()
        for block in response.iter_content(chunk_size=None):
            if block and first_s is None:
                first_s = time.perf_counter() - started
            received += len(block)
    total_s = time.perf_counter() - started
    return {
        "first": first_s or total_s,
        "total": total_s,
        "ratio": (first_s or total_s) / total_s,
        "audio": received / 2 / 24000,
    }


def long_text(url: str, seconds_per_chunk: float) -> dict[str, float]:
    started = time.perf_counter()
    sequential_audio = sum(tts(url, s, seconds_per_chunk, 40 + i)[1] for i, s in enumerate(SENTENCES))
    sequential_s = time.perf_counter() - started
    response_started = time.perf_counter()
    response = requests.post(
        f"{url}/api/tts?response=json",
        json={"text": " ".join(SENTENCES), "max_audio_seconds": seconds_per_chunk, "seed": 40},
        timeout=TIMEOUT_S,
    )
    response.raise_for_status()
    whole_s = time.perf_counter() - response_started
    chunks = int(response.json()["result"]["chunks"])
    return {
        "whole": whole_s,
        "sequential": sequential_s,
        "ratio": whole_s / sequential_s,
        "chunks": chunks,
        "audio": sequential_audio,
    }


def head_of_line(url: str, short_s: float, long_s: float) -> dict[str, float]:
    alone = statistics.median(tts(url, "A short answer.", short_s, 5)[0] for _ in range(3))
    with ThreadPoolExecutor(max_workers=1) as pool:
        long_request = pool.submit(tts, url, "A long reading that takes a while.", long_s, 6)
        time.sleep(0.5)  # the long one is generating when the short one arrives
        during = tts(url, "A short answer.", short_s, 5)[0]
        long_wall = long_request.result()[0]
    return {"alone": alone, "during": during, "ratio": during / alone, "long": long_wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path)
    parser.add_argument("--llasa")
    parser.add_argument("--xcodec2")
    parser.add_argument("--whisper")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--concurrency", default="1,4,8,16")
    parser.add_argument("--chunk-seconds", type=float, default=2.0, help="audio per request in part 1")
    args = parser.parse_args()
    models = args.models or (None if (args.llasa and args.xcodec2 and args.whisper) else tiny_models())
    scratch = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    levels = [int(n) for n in args.concurrency.split(",")]
    settings = Settings(
        _env_file=None,
        llasa_model=args.llasa or str(models / "llasa"),
        xcodec2_model=args.xcodec2 or str(models / "xcodec2"),
        whisper_model=args.whisper or str(models / "whisper"),
        device=args.device,
        host="127.0.0.1",
        gpu_offload_after_use=False,  # measure the engine, not offload/reload (bench_gpu_manager does that)
        max_batch_sequences=max(16, *levels),
        max_queue=64,
        output_dir=scratch / "outputs",
        temp_dir=scratch / "temp",
        voices_dir=scratch / "voices",
    )
    service = TTSService(settings)
    server = RunningServer(create_app(service, settings), settings, host="127.0.0.1", port=0).start()
    url = server.url
    try:
        tts(url, "Warm up.", 0.5, 1)  # loads every model
        rows = [concurrency(url, n, args.chunk_seconds) for n in levels]
        stream = first_audio(url, 10.0)
        reading = long_text(url, 1.0)
        hol = head_of_line(url, 2.0, 20.0)
    finally:
        server.stop()
        service.shutdown()

    import torch

    stamp = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    print(f"\n# bench_serving  {stamp}  {platform.node()}  device={args.device}  torch={torch.__version__}")
    print(
        f"# cpu cores={os.cpu_count()}  llasa={settings.llasa_model}  OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}\n"
    )
    print("| concurrent requests | audio-s/s concurrent | audio-s/s one after another | ratio |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['n']} | {row['concurrent']:.2f} | {row['sequential']:.2f} | **{row['ratio']:.2f}x** |")
    print(
        f"\nstreamed 10 s chunk: first audio byte after {stream['first']:.3f} s of {stream['total']:.3f} s "
        f"({stream['audio']:.2f} s of audio): first/total = **{stream['ratio']:.3f}** (goal <= 0.10)"
    )
    print(
        f"6-chunk text ({reading['chunks']} chunks): {reading['whole']:.2f} s against {reading['sequential']:.2f} s "
        f"for its 6 sentences one after another: **{reading['ratio']:.2f}x** (goal <= 0.4)"
    )
    print(
        f"2 s request during a 20 s one: {hol['during']:.2f} s against {hol['alone']:.2f} s alone: "
        f"**{hol['ratio']:.2f}x** (goal <= 2; the 20 s request took {hol['long']:.2f} s)"
    )


if __name__ == "__main__":
    main()
