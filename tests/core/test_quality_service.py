"""The guards, verification and captions on the real path: the tiny Llasa through the embedded engine, the tiny
XCodec2, the tiny faster-whisper (which hears noise, so verification fails honestly every time).

The policy itself (which take is kept, batching of retries, streams) is tested on scripted takes in test_takes.py.
"""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import srt
import webvtt
from conftest import tiny_settings

from llasa.errors import InvalidInput
from llasa.quality.guards import GuardLimits, max_codes_for_text
from llasa.service import TTSService
from llasa.takes import take_seed
from llasa.types import GenerationParams, SynthesisRequest
from llasa.units import CODES_PER_SECOND, SAMPLES_PER_CODE

TEXT = "The quick brown fox jumps over the lazy dog. 你好，世界。"
SHORT = GenerationParams(seed=5, max_audio_seconds=1.0)


@pytest.fixture(scope="module")
def service(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TTSService]:
    svc = TTSService(tiny_settings(tiny_models, tmp_path_factory.mktemp("quality")))
    yield svc
    svc.shutdown()


def vtt_seconds(stamp: str) -> float:
    hours, minutes, seconds = stamp.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def make_service(tiny_models: Path, root: Path, **overrides: Any) -> TTSService:
    return TTSService(tiny_settings(tiny_models, root, **overrides))


def test_a_plain_synthesis_makes_one_take_per_chunk_and_transcribes_nothing(service: TTSService) -> None:
    result = service.synthesize(SynthesisRequest(text=TEXT, params=SHORT))
    assert [(r.attempts, r.kept_attempt, r.problems) for r in result.chunk_reports] == [(1, 1, [])]
    assert result.chunk_reports[0].transcript is None
    assert result.words is None
    assert result.captions is None
    assert "verify" not in result.timings_s
    assert result.num_codes == 50


def test_a_plain_stream_sends_only_audio(service: TTSService) -> None:
    pieces = list(service.synthesize_stream(SynthesisRequest(text=TEXT, params=SHORT)))
    assert all(piece.report is None for piece in pieces)
    result = pieces[-1].result
    assert result is not None
    assert [r.attempts for r in result.chunk_reports] == [1]  # the reports are still in the result


def test_verify_with_a_whisper_that_hears_noise_retries_keeps_the_best_take_and_says_so(service: TTSService) -> None:
    result = service.synthesize(SynthesisRequest(text=TEXT, params=SHORT, verify=True))
    (report,) = result.chunk_reports
    assert report.attempts == 1 + service.settings.quality_retries
    assert len(report.problems) == report.attempts
    assert all("error rate" in problem for problem in report.problems)
    assert report.transcript is not None
    assert report.error_rate is not None
    assert report.error_rate > service.settings.verify_max_cer
    assert any("kept take" in w and "did not pass every check" in w for w in result.warnings)
    metrics = service.metrics.render().decode()
    assert 'llasa_flawed_takes_total{reason="misread",surface="core"}' in metrics
    assert result.timings_s["verify"] > 0
    facts = result.facts()["chunk_reports"][0]
    assert facts["attempts"] == report.attempts
    assert facts["transcript"] == report.transcript


def test_verify_default_comes_from_the_settings(tiny_models: Path, tmp_path: Path) -> None:
    svc = make_service(tiny_models, tmp_path, verify_default=True, quality_retries=0)
    try:
        verified = svc.synthesize(SynthesisRequest(text="Hello there.", params=SHORT))
        plain = svc.synthesize(SynthesisRequest(text="Hello there.", params=SHORT, verify=False))
    finally:
        svc.shutdown()
    assert verified.chunk_reports[0].error_rate is not None
    assert plain.chunk_reports[0].error_rate is None


def test_dead_air_is_regenerated_on_the_real_codec(tiny_models: Path, tmp_path: Path) -> None:
    # The tiny codec's noise is about -26 dBFS; a threshold above it makes every take dead air.
    svc = make_service(tiny_models, tmp_path, silence_max_dbfs=-1.0)
    try:
        result = svc.synthesize(SynthesisRequest(text="Hello there.", params=SHORT))
    finally:
        svc.shutdown()
    (report,) = result.chunk_reports
    assert report.attempts == 3
    assert all("dead air (silent)" in problem for problem in report.problems)
    assert len(result.audio) == CODES_PER_SECOND * 320  # the kept take is whole: dead air is not cut


def test_a_loop_is_cut_and_regenerated_on_the_real_engine(tiny_models: Path, tmp_path: Path) -> None:
    # More distinct codes demanded than a window holds: every window of random codes "loops" as soon as it fills.
    svc = make_service(tiny_models, tmp_path, loop_window_codes=20, loop_min_distinct_codes=21, quality_retries=1)
    try:
        with pytest.raises(Exception, match="no usable speech for chunk 1 of 1 in 2 takes"):
            svc.synthesize(SynthesisRequest(text="Hello there.", params=SHORT))
    finally:
        svc.shutdown()


def test_a_run_on_is_stopped_at_the_texts_bound_and_regenerated(tiny_models: Path, tmp_path: Path) -> None:
    # The tiny model never samples the end token, so with no max_audio_seconds of its own every take runs on.
    svc = make_service(tiny_models, tmp_path, quality_retries=1, runon_length_factor=1.0, runon_slack_s=0.0)
    text = "Hi."
    bound = max_codes_for_text(text, GuardLimits(runon_length_factor=1.0, runon_slack_s=0.0))
    try:
        result = svc.synthesize(SynthesisRequest(text=text, params=GenerationParams(seed=3)))
    finally:
        svc.shutdown()
    (report,) = result.chunk_reports
    assert report.attempts == 2
    assert all("ran on past" in problem for problem in report.problems)
    assert result.num_codes == bound
    assert not any("max_audio_seconds" in w for w in result.warnings)  # a run-on, not the caller's cut


@pytest.mark.parametrize("fmt", ["srt", "vtt", "json"])
def test_captions_parse_with_real_parsers_and_stay_inside_the_audio(service: TTSService, fmt: str) -> None:
    params = GenerationParams(seed=9, max_audio_seconds=2.0)
    text = "One sentence goes here. And another follows it. 第三句话。"
    result = service.synthesize(SynthesisRequest(text=text, params=params, captions=fmt))
    assert result.caption_format == fmt
    assert result.captions
    duration = result.duration_s
    if fmt == "json":
        words = json.loads(result.captions)
        assert [w["word"] for w in words] == [
            *["One", "sentence", "goes", "here", "And", "another", "follows", "it"],
            *"第三句话",
        ]
        spans = [(w["start_s"], w["end_s"]) for w in words]
    elif fmt == "srt":
        cues = list(srt.parse(result.captions))
        assert "".join(c.content for c in cues).replace(" ", "") == text.replace(" ", "")
        spans = [(c.start.total_seconds(), c.end.total_seconds()) for c in cues]
    else:
        cues = webvtt.from_buffer(io.StringIO(result.captions))
        assert " ".join(c.text for c in cues).startswith("One sentence goes here.")
        spans = [(vtt_seconds(c.start), vtt_seconds(c.end)) for c in cues]
    starts = [s for s, _ in spans]
    assert starts == sorted(starts)
    assert all(0 <= s <= e <= duration + 1e-3 for s, e in spans)


def test_captions_of_several_chunks_are_shifted_to_each_chunks_place(tiny_models: Path, tmp_path: Path) -> None:
    # a reference long enough to leave little room: the text is split into several chunks
    svc = make_service(tiny_models, tmp_path)
    text = " ".join(f"Sentence number {n} is right here." for n in range(1, 40))
    try:
        result = svc.synthesize(
            SynthesisRequest(text=text, params=GenerationParams(seed=2, max_audio_seconds=0.5), captions="json")
        )
    finally:
        svc.shutdown()
    assert result.chunks > 1
    reports = result.chunk_reports
    assert [r.index for r in reports] == list(range(result.chunks))
    for before, after in itertools.pairwise(reports):
        assert after.start_s == pytest.approx(before.end_s - svc.settings.crossfade_ms / 1000, abs=1e-3)
        assert after.words is not None
        assert all(w.start_s >= after.start_s - 1e-3 for w in after.words)
    words = json.loads(result.captions or "[]")
    assert len(words) == sum(len(r.words or []) for r in reports)
    assert words[-1]["end_s"] <= result.duration_s + 1e-3


def test_a_stream_sends_each_chunks_report_after_its_audio_and_captions_at_the_end(service: TTSService) -> None:
    request = SynthesisRequest(text=TEXT, params=SHORT, captions="srt", verify=True)
    pieces = list(service.synthesize_stream(request))
    reports = [p for p in pieces if p.report is not None]
    assert len(reports) == 1
    assert len(reports[0].audio) == 0
    # audio before the report, and the report before the final piece
    kinds = ["report" if p.report else "final" if p.final else "audio" for p in pieces]
    assert kinds.index("report") > kinds.index("audio")
    assert kinds[-1] == "final"
    result = pieces[-1].result
    assert result is not None
    assert result.captions is not None
    assert list(srt.parse(result.captions))
    audio = np.concatenate([p.audio for p in pieces])
    assert len(audio) == len(result.audio) == result.num_codes * SAMPLES_PER_CODE
    # a stream cannot take back audio it sent: verification is reported, and warned about
    assert reports[0].report is not None
    assert reports[0].report.attempts == 1
    assert any("already streamed" in p for p in reports[0].report.problems)


def test_the_seed_repeats_every_take(service: TTSService) -> None:
    request = SynthesisRequest(text="Hello there.", params=SHORT, verify=True)
    first = service.synthesize(request)
    again = service.synthesize(request)
    assert np.array_equal(first.audio, again.audio)
    assert first.chunk_reports[0].kept_attempt == again.chunk_reports[0].kept_attempt
    assert take_seed(5, 0, 1, 1) != 5


@pytest.mark.parametrize(
    ("fields", "match"),
    [({"captions": "ass"}, "captions 'ass' is not a caption format"), ({"verify": "yes"}, "verify must be true")],
)
def test_bad_quality_fields_are_refused_naming_the_field(fields: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidInput, match=match) as caught:
        SynthesisRequest(text="Hello.", **fields)
    assert caught.value.field in fields
