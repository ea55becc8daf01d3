"""The decision rules of the quality guards (llasa/quality): loops and run-ons on real and constructed code
sequences, dead air on real recordings, the error rate with CJK, word alignment onto the requested text, and
captions that a real subtitle parser reads back."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
import srt
import webvtt

from llasa.audio import load_audio
from llasa.quality.captions import CueRules, build_cues, render_captions
from llasa.quality.guards import GuardLimits, LoopDetector, has_loop, max_codes_for_text, silence_problem
from llasa.quality.transcript import align_words, error_rate, normalise, tokens
from llasa.text import estimate_speech_seconds
from llasa.units import CODES_PER_SECOND, SAMPLE_RATE

# --- run-on guard ----------------------------------------------------------------------------------------------


# The tiny test codec has random weights and maps real speech onto a handful of codes, which is what a loop looks
# like, so it cannot stand in for the real codec's speech codes: ordinary speech is constructed here as the real
# codec gives it (a new code nearly every 20 ms frame, a few repeated near-silence codes in pauses).


def test_varied_codes_with_a_pause_are_not_a_loop() -> None:
    rng = random.Random(3)
    speech = [rng.randrange(65536) for _ in range(150)]
    pause = [7, 7, 9, 7, 8] * 10  # one second of near-silence codes
    assert not has_loop(speech + pause + speech)


@pytest.mark.parametrize(
    "stuck",
    [
        [1234] * 120,  # a held tone: one code for 2.4 s
        [11, 12, 13, 12] * 40,  # a stuck syllable cycling through four codes
        [rng_code % 15 for rng_code in range(150)],  # fifteen codes over and over
    ],
)
def test_stuck_codes_are_a_loop(stuck: list[int]) -> None:
    rng = random.Random(5)
    before = [rng.randrange(65536) for _ in range(80)]
    detector = LoopDetector()
    assert not detector.push(before)
    assert detector.push(stuck)
    # found within a window of the loop's start, not only at the end
    assert detector.looped_at is not None
    assert detector.looped_at <= len(before) + GuardLimits().loop_window_codes


def test_loop_detection_is_incremental() -> None:
    detector = LoopDetector(GuardLimits(loop_window_codes=10, loop_min_distinct_codes=3))
    assert not detector.push(list(range(10)))
    for _ in range(8):
        assert not detector.push([5])  # the window still holds 3 distinct codes: 8, 9 and 5 at the last
    assert detector.push([5])  # 9 and eight fives: 2 distinct
    assert detector.looped_at == 19
    assert detector.push(list(range(10)))  # once found, it stays found


def test_length_bound_follows_the_text_and_its_language() -> None:
    short = max_codes_for_text("Hi.")
    assert short >= 2 * CODES_PER_SECOND  # a breath's slack for the shortest texts
    english = "The quick brown fox jumps over the lazy dog, and then it runs far away into the forest."
    chinese = "今天天气很好，我们一起去公园散步吧。"
    for text in (english, chinese):
        bound = max_codes_for_text(text)
        expected = (estimate_speech_seconds(text) * 2.5 + 2.0) * CODES_PER_SECOND
        assert bound == int(expected)
        # slow narration (1.8x the estimate's rate) stays inside the bound
        assert estimate_speech_seconds(text) * 1.8 * CODES_PER_SECOND < bound
    assert max_codes_for_text(english * 2) > max_codes_for_text(english)


# --- dead air -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    audio_dir = Path(__file__).resolve().parents[1] / "data" / "audio"
    return load_audio(audio_dir / "en_16k_mono.wav")


def test_speech_is_not_dead_air(speech: np.ndarray) -> None:
    assert silence_problem(speech) is None


def test_silence_is_dead_air() -> None:
    audio_dir = Path(__file__).resolve().parents[1] / "data" / "audio"
    assert silence_problem(load_audio(audio_dir / "silence_3s.wav")) == "silent"
    assert silence_problem(np.zeros(0, dtype=np.float32)) == "silent"
    assert silence_problem(np.full(SAMPLE_RATE, 1e-4, dtype=np.float32)) == "silent"


def test_a_long_gap_inside_speech_is_dead_air(speech: np.ndarray) -> None:
    half = len(speech) // 2
    gap = np.zeros(2 * SAMPLE_RATE, dtype=np.float32)
    problem = silence_problem(np.concatenate([speech[:half], gap, speech[half:]]))
    assert problem is not None
    assert problem.startswith("gap of 2.")
    # a sentence pause is not
    pause = np.zeros(SAMPLE_RATE, dtype=np.float32)
    assert silence_problem(np.concatenate([speech[:half], pause, speech[half:]])) is None


# --- error rate ---------------------------------------------------------------------------------------------------


def test_normalisation_case_punctuation_width() -> None:
    assert normalise("Hello, WORLD!") == ["hello", "world"]
    assert normalise("ＡＢＣ１２３。") == ["abc123"]
    assert normalise("你好，世界！") == ["你", "好", "世", "界"]
    assert normalise("Don't stop") == ["don't", "stop"]
    assert normalise("混合 mixed 文本") == ["混", "合", "mixed", "文", "本"]


@pytest.mark.parametrize(
    ("requested", "heard", "rate"),
    [
        ("今天天气很好。", "今天天气很好", 0.0),  # punctuation is not heard
        ("今天天气很好。", "今天天汽很好", 1 / 6),  # one character of six
        ("The quick brown fox.", "the quick brown fox", 0.0),
        ("The quick brown fox.", "the quick brown box", 0.25),  # one word of four
        ("The quick brown fox.", "", 1.0),
        ("你好 world", "你好 word", 1 / 3),
        ("", "", 0.0),
    ],
)
def test_error_rate(requested: str, heard: str, rate: float) -> None:
    assert error_rate(requested, heard) == pytest.approx(rate)


def test_error_rate_of_a_run_on_exceeds_one() -> None:
    assert error_rate("Hi.", "hi hi hi hi") == pytest.approx(3.0)


# --- word alignment -----------------------------------------------------------------------------------------------


def test_alignment_keeps_the_requested_spelling() -> None:
    heard = [(" hello", 0.1, 0.4), (" colour", 0.5, 0.9), (" world", 1.0, 1.3)]
    words = align_words("Hello, color world!", heard, 1.5)
    assert [w.word for w in words] == ["Hello", "color", "world"]
    assert [(w.start_s, w.end_s) for w in words] == [(0.1, 0.4), (0.5, 0.9), (1.0, 1.3)]


def test_alignment_places_unheard_words_in_the_gap() -> None:
    heard = [(" one", 0.0, 0.3), (" four", 1.5, 1.8)]
    words = align_words("one two three four", heard, 2.0)
    assert [w.word for w in words] == ["one", "two", "three", "four"]
    assert words[1].start_s == pytest.approx(0.3)
    assert words[2].end_s == pytest.approx(1.5)
    assert words[1].end_s <= words[2].start_s


def test_alignment_of_chinese_splits_recognised_words_into_characters() -> None:
    words = align_words("你好，世界。", [("你好", 0.0, 0.4), ("世界", 0.6, 1.0)], 1.2)
    assert [(w.word, w.start_s, w.end_s) for w in words] == [
        ("你", 0.0, 0.2),
        ("好", 0.2, 0.4),
        ("世", 0.6, 0.8),
        ("界", 0.8, 1.0),
    ]


def test_alignment_is_monotonic_and_inside_the_audio_whatever_was_heard() -> None:
    rng = random.Random(11)
    text = "The service reads every word of this sentence aloud, 然后用中文再说一遍。"
    for _ in range(50):
        heard = sorted(
            ((rng.choice(["the", "reads", "word", "中文", "noise", "再"]), rng.uniform(-1, 6), 0.0) for _ in range(8)),
            key=lambda w: w[1],
        )
        heard = [(w, s, s + rng.uniform(0, 2)) for w, s, _ in heard]
        words = align_words(text, heard, 5.0)
        assert [w.word for w in words] == [t.text for t in tokens(text)]
        ends = [0.0]
        for w in words:
            assert 0.0 <= w.start_s <= w.end_s <= 5.0
            assert w.start_s >= ends[-1] - 1e-9
            ends.append(w.end_s)


def test_nothing_heard_spreads_the_words_over_the_audio() -> None:
    words = align_words("a b c d", [], 4.0)
    assert [(w.start_s, w.end_s) for w in words] == [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 4.0)]


# --- captions -----------------------------------------------------------------------------------------------------

TEXT = "Hello, big world! This is a caption test. It keeps going for a while, to make a second cue."


def _timed(text: str, pause_after: int | None = None) -> list:
    plain = [t.text for t in tokens(text)]
    heard, t = [], 0.0
    for i, word in enumerate(plain):
        heard.append((word, t, t + 0.25))
        t += 0.3 + (1.0 if i == pause_after else 0.0)
    return align_words(text, heard, t + 0.5)


def test_cues_break_at_sentences_clauses_and_line_length() -> None:
    cues = build_cues(TEXT, _timed(TEXT))
    assert [c.text for c in cues] == [
        "Hello, big world!",
        "This is a caption test.",
        "It keeps going for a while,",
        "to make a second cue.",
    ]
    assert all(len(c.text) <= CueRules().max_chars for c in cues)


def test_a_pause_starts_a_new_cue() -> None:
    text = "one two three four five six"
    cues = build_cues(text, _timed(text, pause_after=2))
    assert [c.text for c in cues] == ["one two three", "four five six"]


def test_chinese_cues_count_wide_characters_twice() -> None:
    text = "今天天气很好我们一起去公园散步吧然后回家吃饭好不好"
    cues = build_cues(text, _timed(text))
    assert len(cues) >= 2
    assert all(len(c.text) * 2 <= CueRules().max_chars for c in cues)
    assert "".join(c.text for c in cues) == text


def _vtt_seconds(stamp: str) -> float:
    hours, minutes, seconds = stamp.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def test_srt_and_vtt_parse_with_real_parsers_and_stay_inside_the_audio() -> None:
    words = _timed(TEXT)
    duration = words[-1].end_s + 0.5
    subtitles = list(srt.parse(render_captions("srt", TEXT, words)))
    vtt = webvtt.from_buffer(io.StringIO(render_captions("vtt", TEXT, words)))
    assert [s.content for s in subtitles] == [c.text for c in vtt.captions]
    assert " ".join(s.content for s in subtitles) == TEXT
    previous_end = 0.0
    for subtitle, caption in zip(subtitles, vtt.captions, strict=True):
        start, end = subtitle.start.total_seconds(), subtitle.end.total_seconds()
        assert previous_end <= start < end <= duration
        assert _vtt_seconds(caption.start) == pytest.approx(start, abs=1e-3)
        assert _vtt_seconds(caption.end) == pytest.approx(end, abs=1e-3)
        previous_end = end


def test_json_captions_are_the_words() -> None:
    import json

    words = _timed("Hi there.")
    assert json.loads(render_captions("json", "Hi there.", words)) == [
        {"word": "Hi", "start_s": words[0].start_s, "end_s": words[0].end_s},
        {"word": "there", "start_s": words[1].start_s, "end_s": words[1].end_s},
    ]
    with pytest.raises(ValueError, match="captions must be one of"):
        render_captions("ass", "Hi there.", words)
    with pytest.raises(ValueError, match="same text"):
        render_captions("srt", "Hi.", words)
