"""Comparing what was heard with what was asked: normalised tokens, the error rate, and word timings mapped back
onto the requested text.

Tokens: a CJK character (Han, kana, hangul) is one token; any other run of letters and digits is one word.
Normalisation before comparing: Unicode NFKC (full-width letters and digits become ASCII), lower case, and every
punctuation or symbol mark dropped. The error rate is the Levenshtein distance between the two token lists over the
requested text's token count (a character error rate for Chinese, a word error rate for English, one measure for
mixed text), computed with rapidfuzz.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from rapidfuzz.distance import Levenshtein

# Characters spoken as one syllable each (Han, kana, hangul): one token apiece.
_CJK_CLASS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0003ffff"
_CJK_RE = re.compile(f"[{_CJK_CLASS}]")
# A CJK character alone, or a run of other letters/digits (apostrophes inside English words kept: "don't").
_TOKEN_RE = re.compile(f"[{_CJK_CLASS}]|[^\\W_{_CJK_CLASS}]+(?:['’][^\\W_{_CJK_CLASS}]+)*")


@dataclass(frozen=True)
class Token:
    """One token of a text: its normalised form (compared) and its original spelling (shown in captions)."""

    norm: str
    text: str
    cjk: bool


def tokens(text: str) -> list[Token]:
    """The text's tokens in order, each with its normalised and original spelling (punctuation is dropped from
    both; captions add it back from the original text between tokens)."""
    out: list[Token] = []
    for match in _TOKEN_RE.finditer(text):
        original = match.group(0)
        norm = unicodedata.normalize("NFKC", original).lower().replace("’", "'")
        out.append(Token(norm=norm, text=original, cjk=bool(_CJK_RE.fullmatch(original))))
    return out


def normalise(text: str) -> list[str]:
    """The normalised tokens of `text` (what the error rate compares)."""
    return [token.norm for token in tokens(unicodedata.normalize("NFKC", text))]


def error_rate(reference: str, heard: str) -> float:
    """Edit distance between the tokens heard and the tokens of `reference`, over the reference's token count.

    0.0 is a perfect reading; 1.0 means as many edits as tokens (nothing right); it can exceed 1 when much more
    was heard than asked. A reference with no tokens gives 0.0 if nothing was heard, else 1.0.
    """
    ref, hyp = normalise(reference), normalise(heard)
    if not ref:
        return 0.0 if not hyp else 1.0
    return Levenshtein.distance(ref, hyp) / len(ref)


@dataclass(frozen=True)
class TimedWord:
    """A word (or CJK character) of the requested text with when it is spoken in the audio."""

    word: str
    start_s: float
    end_s: float


def _split_heard(words: Sequence[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """Recognised words as comparable tokens: a multi-character CJK word is split into characters, its time shared
    evenly; punctuation-only words disappear."""
    out: list[tuple[str, float, float]] = []
    for word, start, end in words:
        parts = tokens(unicodedata.normalize("NFKC", word))
        if not parts:
            continue
        step = (end - start) / len(parts)
        for i, part in enumerate(parts):
            out.append((part.norm, start + i * step, start + (i + 1) * step))
    return out


def align_words(requested: str, heard: Sequence[tuple[str, float, float]], duration_s: float) -> list[TimedWord]:
    """Word timings for the words of `requested`, from the recogniser's timed words `heard` (word, start, end).

    The two token lists are aligned by edit operations: a requested token matched or substituted takes the time of
    the heard token(s) in its place (a run of several shares the run's time evenly); a requested token nothing was
    heard for is placed in the gap between its neighbours. Every word of the requested text appears once, with its
    own spelling; times never go backwards and stay inside [0, duration_s].
    """
    wanted = tokens(requested)
    if not wanted:
        return []
    got = _split_heard(heard)
    times: list[tuple[float, float] | None] = [None] * len(wanted)
    if got:
        for op in Levenshtein.opcodes([t.norm for t in wanted], [g[0] for g in got]):
            if op.tag not in ("equal", "replace") or op.src_end == op.src_start:
                continue
            count = op.src_end - op.src_start
            if count == op.dest_end - op.dest_start:  # one heard token per requested token
                for k in range(count):
                    times[op.src_start + k] = (got[op.dest_start + k][1], got[op.dest_start + k][2])
                continue
            span_start, span_end = got[op.dest_start][1], got[op.dest_end - 1][2]
            step = (span_end - span_start) / count
            for k in range(count):
                times[op.src_start + k] = (span_start + k * step, span_start + (k + 1) * step)
    _fill_gaps(times, duration_s)
    out: list[TimedWord] = []
    previous_end = 0.0
    for token, span in zip(wanted, times, strict=True):
        assert span is not None
        start = min(max(span[0], previous_end), duration_s)
        end = min(max(span[1], start), duration_s)
        out.append(TimedWord(token.text, round(start, 3), round(end, 3)))
        previous_end = end
    return out


def _fill_gaps(times: list[tuple[float, float] | None], duration_s: float) -> None:
    """Give unmatched tokens the gap between their timed neighbours, shared evenly (the whole clip if none)."""
    i = 0
    while i < len(times):
        if times[i] is not None:
            i += 1
            continue
        j = i
        while j < len(times) and times[j] is None:
            j += 1
        left = times[i - 1][1] if i > 0 and times[i - 1] is not None else 0.0
        right = times[j][0] if j < len(times) and times[j] is not None else duration_s
        right = max(right, left)
        step = (right - left) / (j - i)
        for k in range(i, j):
            times[k] = (left + (k - i) * step, left + (k - i + 1) * step)
        i = j
