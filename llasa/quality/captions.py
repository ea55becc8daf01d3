"""Captions from word timings: readable cues, written as SRT (the `srt` library), WebVTT (`webvtt-py`) or JSON.

Cue rules, the usual subtitle conventions: a cue is one line of at most `max_chars` characters (42 for Latin
script, the broadcast norm; a CJK character counts as two, so about 21 of them) and at most `max_cue_s` seconds
(7 s); a new cue starts after a pause of `pause_s` (0.5 s) or more between words, and after a word that ends a
sentence once the cue holds a few words. Words keep the requested text's spelling; the text between two words
(punctuation, spaces) is taken from the requested text, so a cue reads as the text was written.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import srt
import webvtt

from llasa.quality.transcript import TimedWord, tokens

CAPTION_FORMATS = ("srt", "vtt", "json")
_SENTENCE_END = re.compile(r"[.!?。！？；;…]")
_CLAUSE_MARK = re.compile(r"[,，、:：;；—]")


@dataclass(frozen=True)
class CueRules:
    max_chars: int = 42
    max_cue_s: float = 7.0
    pause_s: float = 0.5
    min_words_before_sentence_break: int = 3


@dataclass(frozen=True)
class Cue:
    start_s: float
    end_s: float
    text: str


def _width(text: str) -> int:
    """Display width: CJK (East Asian wide) characters count twice."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _spans(requested: str) -> list[tuple[int, int]]:
    """Where each token of `requested` sits in it: (start, end) character offsets, in order."""
    spans: list[tuple[int, int]] = []
    position = 0
    for token in tokens(requested):
        start = requested.find(token.text, position)
        spans.append((start, start + len(token.text)))
        position = start + len(token.text)
    return spans


def build_cues(requested: str, words: Sequence[TimedWord], rules: CueRules | None = None) -> list[Cue]:
    """Group the timed words of `requested` into cues (see the module docstring)."""
    rules = rules or CueRules()
    if not words:
        return []
    spans = _spans(requested)
    if len(spans) != len(words):
        raise ValueError(f"{len(words)} timed words for a text of {len(spans)} words: time the same text")

    def text_of(first: int, last: int) -> str:
        end = spans[last][1]
        # punctuation right after the last word belongs to the cue ("world!"), up to the next space or word
        following = spans[last + 1][0] if last + 1 < len(spans) else len(requested)
        while end < following and not requested[end].isspace():
            end += 1
        return " ".join(requested[spans[first][0] : end].split())

    def gap_after(index: int) -> str:
        following = spans[index + 1][0] if index + 1 < len(spans) else len(requested)
        return requested[spans[index][1] : following]

    cues: list[Cue] = []
    first = 0
    i = 1
    while i <= len(words):
        if i < len(words):
            too_long = (
                _width(text_of(first, i)) > rules.max_chars or words[i].end_s - words[first].start_s > rules.max_cue_s
            )
            paused = words[i].start_s - words[i - 1].end_s >= rules.pause_s
            sentence_ended = bool(_SENTENCE_END.search(gap_after(i - 1))) and (
                i - first >= rules.min_words_before_sentence_break
            )
            if not (too_long or paused or sentence_ended):
                i += 1
                continue
            if too_long:
                # A line that must break reads best after its last clause mark, if one leaves two words or more.
                clause = [k for k in range(first + 1, i - 1) if _CLAUSE_MARK.search(gap_after(k))]
                if clause:
                    i = clause[-1] + 1
        cues.append(Cue(words[first].start_s, words[i - 1].end_s, text_of(first, i - 1)))
        first = i
        i += 1
    return cues


def _delta(seconds: float) -> dt.timedelta:
    return dt.timedelta(milliseconds=round(seconds * 1000))


def _vtt_time(seconds: float) -> str:
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}.{millis:03d}"


def to_srt(cues: Sequence[Cue]) -> str:
    return srt.compose(
        [
            srt.Subtitle(index=n, start=_delta(c.start_s), end=_delta(c.end_s), content=c.text)
            for n, c in enumerate(cues, start=1)
        ]
    )


def to_vtt(cues: Sequence[Cue]) -> str:
    captions = [webvtt.Caption(start=_vtt_time(c.start_s), end=_vtt_time(c.end_s), text=c.text) for c in cues]
    return webvtt.WebVTT(captions=captions).content


def to_json(words: Sequence[TimedWord]) -> str:
    return json.dumps([{"word": w.word, "start_s": w.start_s, "end_s": w.end_s} for w in words], ensure_ascii=False)


def render_captions(fmt: str, requested: str, words: Sequence[TimedWord], rules: CueRules | None = None) -> str:
    """Captions of `words` (timed words of `requested`) as "srt", "vtt" or "json" (the words themselves)."""
    if fmt not in CAPTION_FORMATS:
        raise ValueError(f"captions must be one of {', '.join(CAPTION_FORMATS)}, got {fmt!r}")
    if fmt == "json":
        return to_json(words)
    cues = build_cues(requested, words, rules)
    return to_srt(cues) if fmt == "srt" else to_vtt(cues)
