"""What the REST layer costs: the same synthesis through TTSService directly and through POST /api/tts, one run.

    python bench/bench_api.py                      # tiny random checkpoints (built once, cached), CPU
    python bench/bench_api.py --models DIR -n 10   # DIR/llasa, DIR/xcodec2, DIR/whisper (or --llasa/--xcodec2/...)
    python bench/bench_api.py --device cuda --llasa HKUSTAudio/Llasa-1B --xcodec2 HKUSTAudio/xcodec2-hf

Rounds alternate direct and HTTP calls with the same seed and text, so both see the same models, caches and
machine load. Prints medians over N: direct synthesize(), synthesize() + WAV encoding (the same product the API
returns), POST /api/tts over a real socket, the overhead ratio (goal <= 1.10), and for the streamed
/v1/audio/speech the time to the first audio byte versus the whole stream (direct synthesize_stream() for
comparison). Add --markdown for a table to paste into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from api_server import RunningServer, create_app  # noqa: E402
from llasa.audio import encode_audio  # noqa: E402
from llasa.config import Settings  # noqa: E402
from llasa.service import TTSService  # noqa: E402
from llasa.types import GenerationParams, SynthesisRequest  # noqa: E402

SHORT_TEXT = "The quick brown fox jumps over the lazy dog."
# About 30 s of speech by the text estimate: two chunks (the service plans chunks of at most 20 s).
STREAM_TEXT = " ".join(f"Sentence number {n} of the stream is spoken right now." for n in range(10))


def tiny_models() -> Path:
    """The test suite's cached tiny checkpoints (built on first use, like the tests do)."""
    spec = importlib.util.spec_from_file_location("llasa_tests_conftest", REPO / "tests" / "conftest.py")
    if spec is None or spec.loader is None:
        raise RuntimeError("tests/conftest.py not found; pass --models DIR")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_cached_tiny_models(module._cache_root())


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()}: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="bench-api-"))
    models = Path(args.models) if args.models else (None if args.llasa else tiny_models())
    checkpoints = {name: str(models / name) for name in ("llasa", "xcodec2", "whisper")} if models else {}
    checkpoints |= {name: getattr(args, name) for name in ("llasa", "xcodec2", "whisper") if getattr(args, name)}
    settings = Settings(
        _env_file=None,
        **{f"{name}_model": value for name, value in checkpoints.items()},
        device=args.device,
        host="127.0.0.1",
        output_dir=root / "outputs",
        temp_dir=root / "temp",
        voices_dir=root / "voices",
        max_audio_seconds=args.max_audio_seconds,
    )
    service = TTSService(settings)
    server = RunningServer(create_app(service, settings), settings, host="127.0.0.1", port=0).start()
    http = requests.Session()
    fields = {"text": args.text, "max_audio_seconds": args.max_audio_seconds}
    rows: dict[str, list[float]] = {"direct": [], "direct_wav": [], "http": [], "http_inner": []}
    rows |= {"stream_first": [], "stream_total": []}
    rows |= {"direct_stream_first": [], "direct_stream_total": []}
    audio_s: list[float] = []
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-direct")

    def direct(fn: Any, *a: Any, **kw: Any) -> Any:
        return worker.submit(fn, *a, **kw).result()

    try:
        for round_index in range(args.warmup + args.repeats):
            seed = 1000 + round_index
            times: dict[str, float] = {}

            def via_service(seed: int = seed, times: dict[str, float] = times) -> None:
                params = GenerationParams(seed=seed, max_audio_seconds=args.max_audio_seconds)
                t0 = time.perf_counter()
                # A cancel Event, as the API passes one (it adds a stopping criterion to generation).
                result = direct(service.synthesize, args.text, params=params, cancel=threading.Event())
                t1 = time.perf_counter()
                direct(encode_audio, result.audio, result.sample_rate, "wav")
                times |= {"direct": t1 - t0, "direct_wav": time.perf_counter() - t0, "audio_s": result.duration_s}

            def via_http(seed: int = seed, times: dict[str, float] = times) -> None:
                t0 = time.perf_counter()
                response = http.post(f"{server.url}/api/tts", data={**fields, "seed": seed}, timeout=600)
                times["http"] = time.perf_counter() - t0
                response.raise_for_status()
                times["http_inner"] = json.loads(response.headers["X-Timings-S"])["total"]
                if response.headers["X-Seed"] != str(seed):
                    raise RuntimeError("the API answered with another request's audio")

            def consume_stream(seed: int) -> float | None:
                first: float | None = None
                stream_params = GenerationParams(seed=seed, max_audio_seconds=args.stream_chunk_seconds)
                for piece in service.synthesize_stream(SynthesisRequest(STREAM_TEXT, params=stream_params)):
                    if first is None and len(piece.audio):
                        first = time.perf_counter()
                return first

            def stream_service(seed: int = seed, times: dict[str, float] = times) -> None:
                t0 = time.perf_counter()
                first = direct(consume_stream, seed)
                end = time.perf_counter()
                times |= {"direct_stream_first": (first or end) - t0, "direct_stream_total": end - t0}

            def stream_http(seed: int = seed, times: dict[str, float] = times) -> None:
                body = {
                    "input": STREAM_TEXT,
                    "voice": "alloy",
                    "response_format": "pcm",
                    "stream_format": "audio",
                    "seed": seed,
                    "max_audio_seconds": args.stream_chunk_seconds,
                }
                t0 = time.perf_counter()
                first = None
                with http.post(f"{server.url}/v1/audio/speech", json=body, stream=True, timeout=600) as streamed:
                    streamed.raise_for_status()
                    for chunk in streamed.iter_content(chunk_size=None):
                        if first is None and chunk:
                            first = time.perf_counter()
                end = time.perf_counter()
                times |= {"stream_first": (first or end) - t0, "stream_total": end - t0}

            # Alternate which path goes first, so neither always inherits the other's warm caches.
            steps = [via_service, via_http, stream_service, stream_http]
            if round_index % 2:
                steps = [via_http, via_service, stream_http, stream_service]
            for step in steps:
                step()
            if round_index < args.warmup:
                continue  # first loads and lazy imports are not what this measures
            audio_s.append(times.pop("audio_s"))
            for key, value in times.items():
                rows[key].append(value)
    finally:
        worker.shutdown()
        server.stop()
        service.shutdown()
    return {"settings": settings, "rows": rows, "audio_s": statistics.median(audio_s), "device": service.manager.device}


def report(args: argparse.Namespace, outcome: dict[str, Any]) -> str:
    rows = outcome["rows"]
    direct, direct_wav, http = (median_ms(rows[k]) for k in ("direct", "direct_wav", "http"))
    layer = [outer / inner for outer, inner in zip(rows["http"], rows["http_inner"], strict=True)]
    layer_ms = [(outer - inner) * 1000 for outer, inner in zip(rows["http"], rows["http_inner"], strict=True)]
    lines = [
        f"command: python bench/bench_api.py {' '.join(sys.argv[1:])}".rstrip(),
        f"machine: {machine()}; device {outcome['device']}",
        f"date: {datetime.now(UTC).isoformat(timespec='seconds')}; load average {os.getloadavg()[0]:.1f}",
        f"models: {outcome['settings'].llasa_model} | {outcome['settings'].xcodec2_model}",
        f"N = {args.repeats} rounds after {args.warmup} warm-up; median audio {outcome['audio_s']:.2f} s per request",
        "",
        "| path | median ms | ratio |",
        "|---|---:|---:|",
        f"| TTSService.synthesize() | {direct:.1f} | 1.00 |",
        f"| synthesize() + WAV encode | {direct_wav:.1f} | {direct_wav / direct:.2f} |",
        f"| POST /api/tts (WAV over HTTP) | {http:.1f} | {http / direct:.2f} |",
        "",
        f"**overhead ratio** POST /api/tts / (synthesize + encode) = **{http / direct_wav:.3f}** (goal <= 1.10); "
        f"vs synthesize() alone {http / direct:.3f}",
        "",
        "The same requests seen from inside: wall time of POST /api/tts over the synthesis time the server measured",
        f"for it (X-Timings-S total): median **{statistics.median(layer):.3f}**, i.e. "
        f"{statistics.median(layer_ms):.1f} ms per request for HTTP, parsing, encoding and the socket.",
        "",
        "| streaming (10 sentences, 2 chunks) | first audio ms | total ms | first / total |",
        "|---|---:|---:|---:|",
    ]
    for label, first, total in (
        ("TTSService.synthesize_stream()", "direct_stream_first", "direct_stream_total"),
        ("POST /v1/audio/speech stream_format=audio", "stream_first", "stream_total"),
    ):
        f_ms, t_ms = median_ms(rows[first]), median_ms(rows[total])
        lines.append(f"| {label} | {f_ms:.1f} | {t_ms:.1f} | {f_ms / t_ms:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="folder with llasa/, xcodec2/, whisper/ (default: the tiny test models)")
    parser.add_argument("--llasa", help="Llasa checkpoint (hub id or folder); overrides --models")
    parser.add_argument("--xcodec2", help="XCodec2 checkpoint; overrides --models")
    parser.add_argument("--whisper", help="faster-whisper model; overrides --models")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    parser.add_argument("-n", "--repeats", type=int, default=7, help="measured rounds (median over them)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first")
    parser.add_argument("--text", default=SHORT_TEXT)
    parser.add_argument("--max-audio-seconds", type=float, default=2.0, help="audio per request (s)")
    parser.add_argument("--stream-chunk-seconds", type=float, default=1.0, help="audio per streamed chunk (s)")
    args = parser.parse_args(argv)
    if (args.llasa or args.xcodec2) and not args.models and not (args.llasa and args.xcodec2):
        parser.error("give --models DIR, or both --llasa and --xcodec2")
    logging.basicConfig(level=logging.WARNING)
    print(report(args, run(args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
