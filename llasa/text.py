"""Text preparation for synthesis: normalisation, sentence splitting, speech-length estimates, chunking.

Pure Python, no model: the service passes a `cost` function (for example the Llasa tokenizer's token count)
and a budget, and gets back chunks that each fit and that together hold the whole text.

Sentence ends are 。！？； and . ! ? ; (plus newlines). ASCII marks end a sentence only when followed by a space,
the end of the text or a CJK character, so decimals (3.14), versions (v1.2), URLs and "e.g." stay whole; titles
such as "Mr." and "Dr." never end one; "..." and "?!" runs stay together, and closing quotes and brackets stay
with the sentence they close.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from llasa.errors import InvalidInput
from llasa.types import CODES_PER_SECOND

# ------------------------------------------------------------------------------------------------------------
# Character classes

# Characters spoken as one syllable each: Han ideographs, kana, hangul.
_CJK_RANGES = (
    (0x3040, 0x30FF),  # hiragana, katakana
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xAC00, 0xD7AF),  # hangul syllables
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0x20000, 0x3FFFF),  # CJK extensions B and later
)

# Always end a sentence (CJK text has no spaces to look for).
_STRONG_ENDS = "。！？；｡"
# End a sentence when followed by a space, the end, or CJK text.
_WEAK_ENDS = ".!?;．…"
_ENDS = _STRONG_ENDS + _WEAK_ENDS
# Closing quotes and brackets that belong to the sentence before them.
_CLOSERS = "\"'”’)]}」』》〉）】〕〗"
_OPENERS = "\"'“‘([{「『《〈（【〔〖"
# Clause marks a long sentence may be split after (CJK ones always, ASCII ones before a space).
_STRONG_CLAUSE = "，、：；—"
_WEAK_CLAUSE = ",:;–"
# Titles after which a period never ends a sentence (a name follows).
_TITLES = frozenset(
    {
        *("mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "rev", "hon", "gen", "col", "capt", "lt"),
        *("sgt", "vs", "cf", "fig", "approx", "ca"),
    }
)

_SPACE_RE = re.compile(r"[\t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_ZERO_WIDTH_RE = re.compile(r"[\u00ad\u200b\u200c\u200d\u2060\ufeff]")
_LINE_BREAK_RE = re.compile(r"\r\n|[\r\u2028\u2029\x0b\x0c\x85]")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f]")
_FULLWIDTH_ALNUM_RE = re.compile(r"[\uff10-\uff19\uff21-\uff3a\uff41-\uff5a]")


def _is_cjk(ch: str) -> bool:
    code = ord(ch)
    return any(lo <= code <= hi for lo, hi in _CJK_RANGES)


def _is_cjk_punct(ch: str) -> bool:
    code = ord(ch)
    return 0x3000 <= code <= 0x303F or 0xFF00 <= code <= 0xFF65


def is_cjk_boundary(ch: str) -> bool:
    """True for a CJK character or CJK punctuation: no space is written next to one when both sides are."""
    return bool(ch) and (_is_cjk(ch) or _is_cjk_punct(ch))


def join_texts(left: str, right: str) -> str:
    """`left` and `right` joined with one space, or with none where both sides of the join are CJK.

    Chinese and Japanese are written without spaces between words, so a space there is a pause the model was
    never shown (the Llasa model card joins a Chinese transcript and text directly). Either side empty: the other.
    """
    if not left or not right:
        return left or right
    return left + right if is_cjk_boundary(left[-1]) and is_cjk_boundary(right[0]) else f"{left} {right}"


def normalize_text(text: str) -> str:
    """Tidy text for the model without changing what is said.

    Unicode spaces (no-break, ideographic, thin...) and tabs become plain spaces, zero-width characters and
    control characters go, every kind of line break becomes "\\n" (a sentence break), runs of spaces and blank
    lines collapse, full-width letters and digits become ASCII. Chinese punctuation (，。！？：；、) is kept as is
    (NFKC would turn it into ASCII, so it is not used).
    """
    if not isinstance(text, str):
        raise InvalidInput(f"text must be a string, got {type(text).__name__}", field="text")
    text = _LINE_BREAK_RE.sub("\n", text)
    text = _ZERO_WIDTH_RE.sub("", text)
    text = _CONTROL_RE.sub(" ", text)
    text = _SPACE_RE.sub(" ", text)
    text = _FULLWIDTH_ALNUM_RE.sub(lambda m: chr(ord(m.group()) - 0xFEE0), text)
    text = re.sub(r" {2,}", " ", text)
    text = re.sub(r" *\n[ \n]*", "\n", text)
    return text.strip()


# ------------------------------------------------------------------------------------------------------------
# Sentences


def _token_before(text: str, end: int) -> str:
    """The run of non-space characters that ends at `end`."""
    start = end
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    return text[start:end]


def _ends_sentence(  # noqa: PLR0911 (a decision table reads best as early returns)
    text: str, start: int, mark_start: int, mark_end: int, after: int
) -> bool:
    """Whether the run of end marks text[mark_start:mark_end] (closers up to `after`) ends a sentence."""
    run = text[mark_start:mark_end]
    if any(ch in _STRONG_ENDS for ch in run):
        return True
    if after >= len(text):
        return True
    nxt = text[after]
    ellipsis = set(run) <= {".", "…"} and run != "."
    if _is_cjk(nxt) or _is_cjk_punct(nxt):
        return not ellipsis  # 是的……好吧: an ellipsis is a pause, not an end
    if not nxt.isspace():
        return False  # 3.14, v1.2, example.com, e.g.x, "?!" followed by more text
    if run != "." and not ellipsis:
        return True  # ! ? ; and runs such as ?! or !!!
    # A period (or ellipsis) before a space: decide by the word before it and the word after it.
    word = _token_before(text, mark_start).lstrip(_OPENERS)
    if not text[start:mark_start].strip() or (word.isdigit() and text[start:mark_start].strip() == word):
        return False  # a list marker such as "1." or "a." at the start of a line
    nxt_word = text[after:].lstrip()
    starts_lower = bool(nxt_word) and (nxt_word[0].islower() or nxt_word[0].isdigit())
    if run != ".":
        return not starts_lower  # "Wait... what" continues; "Wait... Then" is a new sentence
    bare = word.rstrip(".").lower()
    if bare in _TITLES:
        return False
    if (len(word) == 1 and word.isalpha() and word.isupper()) or "." in word or bare == "etc":
        # initials (J. K. Rowling), e.g., U.S., a.m., etc.: a sentence end only before a capital
        return not starts_lower and len(word) != 1
    return True


def _sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence in `text` (already normalised), whitespace excluded."""
    spans: list[tuple[int, int]] = []
    start = 0
    i = 0
    n = len(text)

    def add(s: int, e: int) -> None:
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        if e > s:
            spans.append((s, e))

    while i < n:
        ch = text[i]
        if ch == "\n":
            add(start, i)
            start = i = i + 1
            continue
        if ch in _ENDS:
            j = i
            while j < n and text[j] in _ENDS:
                j += 1
            k = j
            while k < n and text[k] in _CLOSERS:
                k += 1
            if _ends_sentence(text, start, i, j, k):
                add(start, k)
                start = k
            i = k
            continue
        i += 1
    add(start, n)
    return spans


def split_sentences(text: str) -> list[str]:
    """Split text into sentences after 。！？；.!?; and at newlines, keeping each end mark with its sentence.

    The text is normalised first (`normalize_text`); empty sentences are dropped.
    """
    norm = normalize_text(text)
    return [norm[s:e] for s, e in _sentence_spans(norm)]


# ------------------------------------------------------------------------------------------------------------
# Speech length

#: Seconds per CJK character (one syllable; Mandarin runs at 4-5 syllables per second).
SECONDS_PER_CJK_CHAR = 0.23
#: Seconds per Latin letter, plus a little per word for the gap between words: a 4.7-letter English word
#: takes ~0.34 s, about 2.9 words per second.
SECONDS_PER_LETTER = 0.065
SECONDS_PER_WORD_GAP = 0.03
#: Digits are read out one word each ("2024" is "twenty twenty-four" or "二零二四").
SECONDS_PER_DIGIT = 0.28
#: Symbols that are spoken as a word (%, &, @, +, currency signs...).
SECONDS_PER_SYMBOL = 0.3
#: Pauses: after a sentence end (or a line break) and after a clause mark.
SENTENCE_PAUSE_S = 0.35
CLAUSE_PAUSE_S = 0.2
#: Margin on top of the estimate: speakers differ, and a chunk cut short by max_new_tokens is worse than
#: a slightly smaller chunk.
ESTIMATE_MARGIN = 1.15
ESTIMATE_EXTRA_S = 0.2

_SPOKEN_SYMBOLS = "%&@+=#$€£¥°‰§"


def estimate_speech_seconds(text: str) -> float:
    """Expected spoken length of `text` in seconds, margin included (see the constants above); 0 for no text."""
    seconds = 0.0
    words = 0
    in_word = False
    pause = 0.0  # a run of punctuation counts once, as its longest pause
    spoken = False
    for ch in normalize_text(text):
        if ch in _ENDS or ch == "\n":
            pause = max(pause, SENTENCE_PAUSE_S)
            in_word = False
            continue
        if ch in _STRONG_CLAUSE or ch in _WEAK_CLAUSE:
            pause = max(pause, CLAUSE_PAUSE_S)
            in_word = False
            continue
        if ch.isspace() or ch in _OPENERS or ch in _CLOSERS:
            in_word = False
            continue
        seconds += pause
        pause = 0.0
        if _is_cjk(ch):
            seconds += SECONDS_PER_CJK_CHAR
            in_word = False
            spoken = True
        elif ch.isdigit():
            seconds += SECONDS_PER_DIGIT
            in_word = False
            spoken = True
        elif ch.isalpha():
            seconds += SECONDS_PER_LETTER
            if not in_word:
                words += 1
                in_word = True
            spoken = True
        elif ch in _SPOKEN_SYMBOLS:
            seconds += SECONDS_PER_SYMBOL
            in_word = False
            spoken = True
        # anything else (emoji, other marks) is not read out
    if not spoken:
        return 0.0
    seconds += pause + words * SECONDS_PER_WORD_GAP
    return seconds * ESTIMATE_MARGIN + ESTIMATE_EXTRA_S


def estimate_speech_codes(text: str) -> int:
    """Expected number of XCodec2 codes (50 per second) to speak `text`, margin included; 0 for no text."""
    return math.ceil(estimate_speech_seconds(text) * CODES_PER_SECOND)


# ------------------------------------------------------------------------------------------------------------
# Chunking


def _clean_chunk(text: str) -> str:
    """A chunk as the model gets it: trimmed, line breaks inside it turned into a space (none between CJK)."""

    def join(m: re.Match[str]) -> str:
        before = m.string[m.start() - 1] if m.start() > 0 else ""
        after = m.string[m.end()] if m.end() < len(m.string) else ""
        return "" if is_cjk_boundary(before) and is_cjk_boundary(after) else " "

    return re.sub(r"\s*\n\s*", join, text.strip())


def _clause_spans(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Spans of `text[start:end]` split after clause marks (，、,;: and friends), closers kept.

    CJK marks always split; ASCII ones only before a space, CJK text or the end, so 1,000 / 10:30 / 3.14 and
    "don't" stay whole.
    """
    spans: list[tuple[int, int]] = []
    s = start
    i = start
    while i < end:
        ch = text[i]
        j = i + 1
        if ch in _STRONG_CLAUSE or ch in _ENDS or ch in _WEAK_CLAUSE:
            while j < end and text[j] in _ENDS:
                j += 1
            while j < end and text[j] in _CLOSERS:
                j += 1
            strong = any(c in _STRONG_CLAUSE or c in _STRONG_ENDS for c in text[i:j])
            if strong or j >= end or text[j].isspace() or _is_cjk(text[j]) or _is_cjk_punct(text[j]):
                spans.append((s, j))
                s = j
        i = j
    if s < end:
        spans.append((s, end))
    return [(a, b) for a, b in (_strip_span(text, a, b) for a, b in spans) if b > a]


def _strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _unit_spans(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Smallest pieces a chunk may be cut between: Latin words (with their punctuation) and single CJK characters.

    Punctuation after a CJK character stays with it; opening quotes/brackets stay with what follows.
    """
    units: list[tuple[int, int]] = []
    i = start
    while i < end:
        if text[i].isspace():
            i += 1
            continue
        s = i
        while i < end and text[i] in _OPENERS:
            i += 1
        if i < end and _is_cjk(text[i]):
            i += 1
        else:
            while i < end and not text[i].isspace() and not _is_cjk(text[i]):
                i += 1
        # trailing punctuation (not letters, digits or CJK) belongs to this unit
        while i < end and not text[i].isspace() and not _is_cjk(text[i]) and not text[i].isalnum():
            i += 1
        if i == s:  # a lone opener before a space
            i += 1
        units.append((s, i))
    return units


def chunk_text(text: str, *, cost: Callable[[str], int], budget: int) -> list[str]:
    """Pack the text's sentences greedily into chunks with cost(chunk) <= budget.

    A sentence over budget is split after clause marks (，、,;:), then between words (Latin text) or characters
    (CJK text); a Latin word is never split. Raises InvalidInput(field="text") when a single word alone costs
    more than the budget. The text is normalised first; the chunks together hold all of it (only whitespace
    differs). Empty text gives [].
    """
    if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
        raise InvalidInput(f"chunk budget must be a positive whole number, got {budget!r}")
    norm = normalize_text(text)
    if not norm:
        return []
    memo: dict[tuple[int, int], int] = {}

    def span_cost(start: int, end: int) -> int:
        key = (start, end)
        if key not in memo:
            memo[key] = cost(_clean_chunk(norm[start:end]))
        return memo[key]

    def pack(spans: list[tuple[int, int]], level: int) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        current: tuple[int, int] | None = None
        for start, end in spans:
            if current is not None and span_cost(current[0], end) <= budget:
                current = (current[0], end)
                continue
            if current is not None:
                out.append(current)
                current = None
            if span_cost(start, end) <= budget:
                current = (start, end)
                continue
            if level == 0:
                finer = _clause_spans(norm, start, end)
            elif level == 1:
                finer = _unit_spans(norm, start, end)
            else:
                piece = norm[start:end]
                shown = piece if len(piece) <= 40 else piece[:40] + "…"
                raise InvalidInput(
                    f"the word {shown!r} alone is too long to synthesise in one piece "
                    f"(cost {span_cost(start, end)}, budget {budget}); shorten it or add spaces",
                    field="text",
                )
            pieces = pack(finer, level + 1)
            out.extend(pieces[:-1])
            current = pieces[-1]
        if current is not None:
            out.append(current)
        return out

    return [_clean_chunk(norm[s:e]) for s, e in pack(_sentence_spans(norm), 0)]


__all__ = [
    "chunk_text",
    "estimate_speech_codes",
    "estimate_speech_seconds",
    "normalize_text",
    "split_sentences",
]
