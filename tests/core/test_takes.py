"""The take policy (llasa/takes.py): which take of a chunk is kept, when takes are made again, how they share the
engine's batch, and what a stream can and cannot take back.

The engine here is a stand-in that plays scripted code sequences per seed (the tiny model samples random codes,
which never loop and never end, so it cannot show a loop on demand); the decoder and the transcriber are stand-ins
too where a test needs a take that sounds right. The same policy runs on the real engine, codec and Whisper in
tests/core/test_quality_service.py.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Sequence

import numpy as np
import pytest

from llasa.engine.types import CodeStream, EngineStats, FinishReason, SamplingParams
from llasa.errors import Cancelled, GenerationFailed
from llasa.quality.guards import GuardLimits, max_codes_for_text
from llasa.takes import ChunkJob, QualityPolicy, TakeRunner, chunk_offsets, language_of, take_seed
from llasa.types import ChunkReport, TranscriptionResult
from llasa.units import SAMPLE_RATE, SAMPLES_PER_CODE

TEXT = "The quick brown fox jumps over the lazy dog."
LIMITS = GuardLimits()


def speech(n: int, seed: int = 0) -> list[int]:
    """Codes as ordinary speech gives them: a new code nearly every frame."""
    rng = random.Random(seed)
    return [rng.randrange(65536) for _ in range(n)]


def stuck(n: int) -> list[int]:
    return [4321, 4322] * (n // 2)


class PacedStream(CodeStream):
    """A code stream whose producer waits for the reader after every push: the stand-in engine runs in lockstep
    with the runner, as a real one does when each step takes longer than reading its codes."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self._read = threading.Event()

    def read_from(self, index: int, timeout_s: float | None = None) -> list[int]:
        codes = super().read_from(index, timeout_s)
        if codes:
            self._read.set()
        return codes

    def wait_until_read(self) -> None:
        while not self._read.wait(0.01) and not self.cancel_requested:
            pass
        self._read.clear()


class ScriptedEngine:
    """A `GenerationBackend` that plays `script(seed)` = (codes, ends_with_end_token) one code per step.

    `gate` holds every sequence until the test opens it (so a test sees what was submitted together); `order`
    lists seeds in the order their sequences are finished (a test may make later takes finish first)."""

    def __init__(self, script: Callable[[int], tuple[list[int], bool]], *, codes_per_step: int = 25) -> None:
        self.script = script
        self.codes_per_step = codes_per_step
        self.submitted: list[SamplingParams] = []
        self.cancelled: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.finish_first: set[int] = set()
        """Seeds whose whole script is pushed at once, before the others move."""
        self._threads: list[threading.Thread] = []

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams) -> CodeStream:
        assert params.seed is not None
        stream = PacedStream(len(self.submitted), params, len(prompt_ids))
        self.submitted.append(params)
        stream.add_cancel_callback(lambda: self.cancelled.append(params.seed or 0))
        thread = threading.Thread(target=self._play, args=(stream, params), daemon=True)
        self._threads.append(thread)
        thread.start()
        return stream

    def _play(self, stream: CodeStream, params: SamplingParams) -> None:
        codes, ends = self.script(params.seed or 0)
        limit = params.max_new_tokens
        self.gate.wait()
        step = len(codes) if params.seed in self.finish_first else self.codes_per_step
        position = 0
        while position < min(len(codes), limit):
            if stream.cancel_requested:
                stream.finish(FinishReason.CANCELLED)
                return
            stream.push(codes[position : min(position + step, limit)])
            position += step
            stream.wait_until_read()
        if ends and len(codes) < limit:
            stream.finish(FinishReason.END_TOKEN)
        else:
            stream.finish(FinishReason.LENGTH)

    def shutdown(self, *, wait: bool = True) -> None:
        pass

    def stats(self) -> EngineStats:
        return EngineStats(running=0, waiting=0, steps=0, tokens=0, batch_limit=16, oom_shrinks=0)


def loud(codes: list[int]) -> np.ndarray:
    """A stand-in decode: noise at speech level, one frame per code."""
    rng = np.random.default_rng(len(codes))
    return (0.1 * rng.standard_normal(len(codes) * SAMPLES_PER_CODE)).astype(np.float32)


def deaf(audio: np.ndarray, language: str | None) -> TranscriptionResult:
    raise AssertionError("nothing should be transcribed without verify or captions")


def runner_for(
    engine: ScriptedEngine,
    texts: list[str],
    *,
    retries: int = 2,
    verify: bool = False,
    timed_words: bool | None = None,
    decode: Callable[[list[int]], np.ndarray] = loud,
    transcribe: Callable[[np.ndarray, str | None], TranscriptionResult] = deaf,
    max_new_tokens: int = 1500,
    seed: int = 100,
    cancel: threading.Event | None = None,
    all_takes_at_once: bool = False,
) -> TakeRunner:
    policy = QualityPolicy(
        retries=retries,
        limits=LIMITS,
        verify=verify,
        max_error_rate=0.2,
        timed_words=verify if timed_words is None else timed_words,
        all_takes_at_once=all_takes_at_once,
    )
    jobs = [
        ChunkJob(i, text, [1, 2, 3], SamplingParams(seed=seed, max_new_tokens=max_new_tokens))
        for i, text in enumerate(texts)
    ]
    return TakeRunner(engine, jobs, policy, decode=decode, transcribe=transcribe, cancel=cancel)


def by_seed(scripts: dict[int, tuple[list[int], bool]], default: tuple[list[int], bool]) -> Callable:
    return lambda seed: scripts.get(seed, default)


GOOD = (speech(150), True)


# --- seeds ---------------------------------------------------------------------------------------------------


def test_every_take_of_every_chunk_has_its_own_seed_and_the_first_takes_keep_todays() -> None:
    seeds = {take_seed(100, chunk, attempt, 3) for chunk in range(3) for attempt in range(3)}
    assert len(seeds) == 9
    assert [take_seed(100, chunk, 0, 3) for chunk in range(3)] == [100, 101, 102]
    assert take_seed(100, 1, 2, 3) == 107


# --- whole-file synthesis ------------------------------------------------------------------------------------


def test_a_good_first_take_is_kept_and_nothing_is_made_again() -> None:
    engine = ScriptedEngine(by_seed({}, GOOD))
    runner = runner_for(engine, [TEXT])
    kept = runner.run()
    assert [t.attempt for t in kept] == [0]
    assert len(engine.submitted) == 1
    report = runner.report(runner.jobs[0], 0)
    assert (report.attempts, report.kept_attempt, report.problems) == (1, 1, [])
    assert report.transcript is None  # not verified: nothing transcribed


def test_a_take_stuck_in_a_loop_is_stopped_early_and_made_again_with_the_next_seed() -> None:
    looping = speech(60) + stuck(1400)
    engine = ScriptedEngine(by_seed({100: (looping, True)}, GOOD))
    runner = runner_for(engine, [TEXT])
    kept = runner.run()
    first, *_ = runner.jobs[0].takes
    assert first.guard_problem is not None
    assert "loop" in first.guard_problem
    # stopped within a window or so of the loop, not left to run its 1,460 codes
    assert first.read < 60 + 3 * LIMITS.loop_window_codes
    assert 100 in engine.cancelled
    assert kept[0].attempt == 1
    assert kept[0].stream.params.seed == take_seed(100, 0, 1, 1)
    # the loop's take is cut where the loop began: what it kept holds no stuck codes
    assert len(first.codes) <= 60


def test_a_run_on_is_stopped_at_the_bound_its_text_allows() -> None:
    bound = max_codes_for_text(TEXT, LIMITS)
    engine = ScriptedEngine(by_seed({100: (speech(1400, 1), True)}, GOOD))
    runner = runner_for(engine, [TEXT])
    kept = runner.run()
    first = runner.jobs[0].takes[0]
    assert engine.submitted[0].max_new_tokens == bound
    assert first.read == bound
    assert first.guard_problem is not None
    assert "ran on" in first.guard_problem
    assert kept[0].attempt == 1


def test_the_callers_own_max_audio_seconds_is_a_cut_not_a_run_on() -> None:
    engine = ScriptedEngine(by_seed({}, (speech(1400, 1), True)))
    runner = runner_for(engine, [TEXT], max_new_tokens=100)
    kept = runner.run()
    assert len(engine.submitted) == 1
    assert kept[0].truncated
    assert kept[0].ok


def test_dead_air_is_made_again() -> None:
    calls: list[int] = []

    def silent_first(codes: list[int]) -> np.ndarray:
        calls.append(len(codes))
        return loud(codes) * (0.0 if len(calls) == 1 else 1.0)

    engine = ScriptedEngine(by_seed({}, GOOD))
    runner = runner_for(engine, [TEXT], decode=silent_first)
    kept = runner.run()
    first = runner.jobs[0].takes[0]
    assert first.guard_problem == "dead air (silent)"
    assert kept[0].attempt == 1


def test_retries_are_sent_together_after_the_first_failure_and_share_the_batch() -> None:
    engine = ScriptedEngine(by_seed({}, (speech(30) + stuck(1400), True)))
    runner = runner_for(engine, [TEXT], retries=2)
    runner.run()
    seeds = [p.seed for p in engine.submitted]
    assert seeds == [take_seed(100, 0, a, 1) for a in range(3)]
    takes = runner.jobs[0].takes
    # takes 2 and 3 were both submitted while take 2 had not produced its first code yet: batched, not serial
    assert all(t.guard_problem is not None for t in takes)
    report = runner.report(runner.jobs[0], 0)
    assert report.attempts == 3
    assert len(report.problems) == 3


def test_takes_that_loop_from_their_first_code_fail_clearly() -> None:
    engine = ScriptedEngine(by_seed({}, (stuck(1400), True)))
    runner = runner_for(engine, [TEXT])
    with pytest.raises(GenerationFailed, match=r"no usable speech for chunk 1 of 1 in 3 takes \(take 1: stuck"):
        runner.run()


def test_the_first_passing_take_in_take_order_is_kept_even_when_a_later_one_finishes_first() -> None:
    third = take_seed(100, 0, 2, 1)
    engine = ScriptedEngine(by_seed({100: (stuck(400), True)}, GOOD))
    engine.finish_first = {third}
    runner = runner_for(engine, [TEXT])
    kept = runner.run()
    assert kept[0].attempt == 1


def test_other_chunks_keep_generating_while_one_is_made_again() -> None:
    engine = ScriptedEngine(by_seed({101: (stuck(1400), True)}, GOOD))
    runner = runner_for(engine, ["One sentence here.", "Another sentence there.", "And a third one."])
    done: list[int] = []
    kept = runner.run(done.append)
    assert [t.attempt for t in kept] == [0, 1, 0]
    assert done == [1, 2, 3]


def test_no_speech_in_every_take_fails_clearly() -> None:
    engine = ScriptedEngine(by_seed({}, ([], True)))
    runner = runner_for(engine, [TEXT])
    with pytest.raises(GenerationFailed, match=r"no usable speech for chunk 1 of 1 in 3 takes \(take 1: no speech"):
        runner.run()


def test_with_no_retries_a_loop_is_still_cut_where_it_began() -> None:
    engine = ScriptedEngine(by_seed({}, (speech(60) + stuck(1400), True)))
    runner = runner_for(engine, [TEXT], retries=0)
    kept = runner.run()
    assert len(engine.submitted) == 1
    assert len(kept[0].codes) <= 60
    assert not kept[0].ok


def test_a_cancel_stops_every_take() -> None:
    cancel = threading.Event()
    engine = ScriptedEngine(by_seed({}, GOOD))
    engine.gate.clear()
    runner = runner_for(engine, [TEXT, TEXT], cancel=cancel)
    runner.start()
    cancel.set()
    with pytest.raises(Cancelled):
        runner.run()
    runner.close()
    assert sorted(engine.cancelled) == [100, 101]
    engine.gate.set()


# --- verification --------------------------------------------------------------------------------------------


def hears(texts_by_take: list[str]) -> Callable[[np.ndarray, str | None], TranscriptionResult]:
    """A transcriber that hears `texts_by_take[n]` on its n-th call, each word 0.3 s long."""
    calls = iter(texts_by_take)

    def transcribe(audio: np.ndarray, language: str | None) -> TranscriptionResult:
        heard = next(calls)
        words = [(w, 0.3 * i, 0.3 * i + 0.25) for i, w in enumerate(heard.split())]
        return TranscriptionResult(heard, language or "en", len(audio) / SAMPLE_RATE, words=words)

    return transcribe


def test_verify_makes_a_misread_take_again_and_reports_what_was_heard() -> None:
    engine = ScriptedEngine(by_seed({}, GOOD))
    heard = hears(["the quick brown socks lumps over a hazy log", TEXT.lower(), TEXT])
    runner = runner_for(engine, [TEXT], verify=True, transcribe=heard)
    kept = runner.run()
    assert kept[0].attempt in (1, 2)
    report = runner.report(runner.jobs[0], 0)
    assert report.kept_attempt == kept[0].attempt + 1
    assert report.error_rate == 0.0
    assert report.transcript is not None
    assert report.problems
    assert "error rate" in report.problems[0]
    assert [w.word for w in report.words or []] == [
        "The",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "the",
        "lazy",
        "dog",
    ]


def test_when_no_take_passes_verify_the_best_one_is_kept() -> None:
    engine = ScriptedEngine(by_seed({}, GOOD))
    heard = hears(["nothing like it at all", "the quick brown socks jumps over a lazy dog", "dog"])
    runner = runner_for(engine, [TEXT], verify=True, transcribe=heard)
    runner.run()
    job = runner.jobs[0]
    assert job.kept is not None
    rates = sorted(t.error_rate or 0 for t in job.takes)
    assert job.kept.error_rate == rates[0]
    assert not job.kept.ok
    assert runner.report(job, 0).attempts == 3


def test_all_takes_at_once_sends_every_take_first_and_keeps_the_first_that_passes() -> None:
    engine = ScriptedEngine(by_seed({}, GOOD))
    engine.gate.clear()  # nothing generates until every take is in
    heard = hears(["not it at all", TEXT, TEXT])
    runner = runner_for(engine, [TEXT], verify=True, transcribe=heard, all_takes_at_once=True)
    runner.start()
    assert [p.seed for p in engine.submitted] == [take_seed(100, 0, a, 1) for a in range(3)]
    engine.gate.set()
    kept = runner.run()
    assert kept[0].attempt == 1
    assert len(engine.submitted) == 3


def test_a_stream_plays_one_take_at_a_time_even_with_all_takes_at_once() -> None:
    engine = ScriptedEngine(by_seed({}, GOOD))
    runner = runner_for(engine, [TEXT], verify=True, transcribe=hears([TEXT]), all_takes_at_once=True)
    _, reports = play(runner)
    assert len(engine.submitted) == 1
    assert reports[0].error_rate == 0.0


def test_captions_without_verify_transcribe_but_never_retry() -> None:
    engine = ScriptedEngine(by_seed({}, GOOD))
    runner = runner_for(engine, [TEXT], verify=False, timed_words=True, transcribe=hears(["totally different"]))
    kept = runner.run()
    assert len(engine.submitted) == 1
    assert kept[0].ok
    assert runner.report(runner.jobs[0], 0).error_rate == 1.0


# --- streams -------------------------------------------------------------------------------------------------


class Windows:
    """A stand-in streaming decoder: every pushed code is one frame of audio at once."""

    def push(self, codes: list[int]) -> np.ndarray:
        return loud(codes) if codes else np.zeros(0, np.float32)

    def finish(self) -> np.ndarray:
        return np.zeros(0, np.float32)


def play(runner: TakeRunner) -> tuple[list[tuple[int, int, bool, bool]], list[ChunkReport]]:
    windows, reports = [], []
    for item in runner.play(Windows, crossfade_samples=0):
        if isinstance(item, ChunkReport):
            reports.append(item)
        else:
            index, audio, first, last = item
            windows.append((index, len(audio), first, last))
    return windows, reports


def test_a_stream_cuts_a_loop_it_has_started_playing_and_says_so() -> None:
    engine = ScriptedEngine(by_seed({}, (speech(60) + stuck(1400), True)))
    runner = runner_for(engine, [TEXT])
    windows, reports = play(runner)
    assert len(engine.submitted) == 1  # its start was already sent: not made again
    sent = sum(n for _, n, _, _ in windows)
    assert sent <= (60 + 3 * LIMITS.loop_window_codes) * SAMPLES_PER_CODE
    assert reports[0].problems
    assert "cut there" in reports[0].problems[0]


def test_a_stream_makes_again_a_chunk_whose_codes_were_all_in_before_its_turn() -> None:
    second_seed = take_seed(100, 1, 0, 2)
    engine = ScriptedEngine(by_seed({second_seed: (speech(30) + stuck(300), True)}, GOOD))
    engine.finish_first = {second_seed}
    runner = runner_for(engine, ["First sentence is here.", TEXT])
    windows, reports = play(runner)
    assert [r.index for r in reports] == [0, 1]
    assert reports[1].kept_attempt == 2
    assert "loop" in reports[1].problems[0]
    # nothing of the broken take was sent: chunk 2's audio is exactly its second take's
    chunk_two = sum(n for i, n, _, _ in windows if i == 1)
    assert chunk_two == 150 * SAMPLES_PER_CODE
    assert next(first for i, _, first, _ in windows if i == 1) is True


def test_stream_reports_come_after_their_chunk_with_words_in_stream_time() -> None:
    engine = ScriptedEngine(by_seed({}, GOOD))
    transcribe = hears(["one sentence here", "another sentence there"])
    runner = runner_for(
        engine, ["One sentence here.", "Another sentence there."], timed_words=True, transcribe=transcribe
    )
    _, reports = play(runner)
    assert [r.start_s for r in reports] == [0.0, 3.0]  # 150 codes = 3 s per chunk, no crossfade
    assert reports[1].words is not None
    assert reports[1].words[0].start_s == pytest.approx(3.0)


# --- small helpers -------------------------------------------------------------------------------------------


def test_chunk_offsets_follow_the_crossfade() -> None:
    assert chunk_offsets([100, 100, 100], 10) == [0, 90, 180]
    assert chunk_offsets([5, 100], 10) == [0, 0]  # a chunk shorter than the fade overlaps only itself


@pytest.mark.parametrize(
    ("text", "language"),
    [("你好，世界。", "zh"), ("こんにちは", "ja"), ("안녕하세요", "ko"), ("Hello, world.", None), ("Bonjour.", None)],
)
def test_the_transcription_language_follows_the_script(text: str, language: str | None) -> None:
    assert language_of(text) == language
