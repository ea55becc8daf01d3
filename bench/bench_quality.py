"""What the quality guards cost: verification and captions as a ratio of plain synthesis.

    python bench/bench_quality.py                 # the demo (tiny) checkpoints, CPU
    python bench/bench_quality.py --rounds 7 --seconds 4

Every mode synthesises the same text with the same seeds through `TTSService` (the real engine, codec and
faster-whisper), interleaved round by round so a noisy machine slows every mode alike; the table shows each mode's
median wall time and its ratio to plain synthesis measured in the same run:

- plain: verify off, no captions (the guards run, as they always do; they cost no model work).
- captions: one transcription with word timings per chunk, never a retry.
- verify, first take passes: VERIFY_MAX_CER raised so every first take passes: the cost of verifying alone
  (issue goal <= 1.3x).
- verify, 3 takes: the tiny Whisper hears noise, so every take fails and each chunk is made three times: the first
  take, then the two retries together in one batch, each transcribed (issue goal <= 1.6x one take).
- verify, 3 takes at once: VERIFY_ALL_TAKES_AT_ONCE: the three takes sampled together from the start.
- 3 takes one after another: three plain syntheses in a row, what unbatched retries would cost (for scale).

Each chunk is capped at `--seconds` of audio (the tiny model rarely ends on its own), so every mode generates the
same number of codes per take.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from engine_subjects import tiny_models  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog. 今天天气很好，我们去公园散步吧。"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every mode (median reported)")
    parser.add_argument("--seconds", type=float, default=4.0, help="audio per chunk (max_audio_seconds)")
    args = parser.parse_args(argv)

    models = tiny_models()
    from conftest import tiny_settings

    from llasa.service import TTSService
    from llasa.types import GenerationParams, SynthesisRequest

    root = Path(tempfile.mkdtemp(prefix="bench-quality-"))
    plain_service = TTSService(tiny_settings(models, root, whisper_max_new_tokens=24))
    # Shares the first service's GPU manager (and so its loaded models); only VERIFY_MAX_CER differs.
    lenient = TTSService(tiny_settings(models, root, verify_max_cer=10.0), manager=plain_service.manager)
    at_once = TTSService(tiny_settings(models, root, verify_all_takes_at_once=True), manager=plain_service.manager)

    def request(seed: int, **extra: object) -> SynthesisRequest:
        params = GenerationParams(seed=seed, max_audio_seconds=args.seconds)
        return SynthesisRequest(text=TEXT, params=params, **extra)  # type: ignore[arg-type]

    def serial_three(seed: int) -> None:
        for take in range(3):
            plain_service.synthesize(request(seed + 1000 * take))

    modes: dict[str, Callable[[int], object]] = {
        "plain": lambda seed: plain_service.synthesize(request(seed)),
        "captions (srt)": lambda seed: plain_service.synthesize(request(seed, captions="srt")),
        "verify, first take passes": lambda seed: lenient.synthesize(request(seed, verify=True)),
        "verify, 3 takes (2 batched retries)": lambda seed: plain_service.synthesize(request(seed, verify=True)),
        "verify, 3 takes at once": lambda seed: at_once.synthesize(request(seed, verify=True)),
        "3 takes one after another": serial_three,
    }
    check = plain_service.synthesize(request(1, verify=True))
    attempts = [report.attempts for report in check.chunk_reports]
    times: dict[str, list[float]] = {name: [] for name in modes}
    for run in modes.values():  # warm-up: models loaded, engine started, caches filled
        run(0)
    for round_index in range(args.rounds):
        for name, run in modes.items():
            started = time.perf_counter()
            run(round_index + 1)
            times[name].append(time.perf_counter() - started)
    plain_service.shutdown()
    lenient.shutdown()
    at_once.shutdown()

    base = statistics.median(times["plain"])
    print(f"# bench_quality: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {args.rounds} rounds, {args.seconds:g} s per chunk")
    print(f"# text: {len(check.chunk_reports)} chunk(s); verify with the tiny Whisper made {attempts} takes")
    print(f"{'mode':<38} {'median s':>9} {'ratio':>7}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<38} {median:>9.3f} {median / base:>7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
