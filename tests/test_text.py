"""llasa.text: normalisation, sentence splitting (Chinese, English, mixed), speech-length estimates, chunking."""

from __future__ import annotations

import itertools
import random
import re

import pytest

from llasa.errors import InvalidInput
from llasa.text import chunk_text, estimate_speech_codes, join_texts, normalize_text, split_sentences

ZH = "今天天气很好，我们一起去公园散步吧。你觉得怎么样？太好了！我们走吧；快一点。"
EN = (
    "The quick brown fox jumps over the lazy dog. This is a short reference recording! "
    "Did you hear that? Mr. Smith paid $3.14 for it... Really?! Yes; it was cheap."
)
MIXED = "我爱你。I love you. 你呢？Me too!好的，我们明天见。See you tomorrow."


def no_space(text: str) -> str:
    return re.sub(r"\s+", "", text)


def latin_words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z0-9]+(?:'[A-Za-z]+)*", text)  # don't = one word


# -------------------------------------------------------------------------------------------------------------
# normalize_text


def test_normalize_spaces_and_line_breaks() -> None:
    raw = "  Hello\u00a0\u00a0world\u3000again\t!\r\n\r\n\n  Next\u2028line\u200b here  "
    assert normalize_text(raw) == "Hello world again !\nNext\nline here"


def test_normalize_keeps_chinese_punctuation_and_fixes_fullwidth_letters() -> None:
    assert normalize_text("你好，世界！“引号”（括号）：；、。") == "你好，世界！“引号”（括号）：；、。"
    assert normalize_text("ＡＢＣ１２３ｘｙｚ") == "ABC123xyz"
    assert normalize_text("a\x00b\x07c") == "a b c"
    assert normalize_text(" \n\t ") == ""


def test_normalize_rejects_non_strings() -> None:
    with pytest.raises(InvalidInput) as info:
        normalize_text(b"bytes")  # type: ignore[arg-type]
    assert info.value.field == "text"


# -------------------------------------------------------------------------------------------------------------
# split_sentences


def test_split_chinese() -> None:
    assert split_sentences(ZH) == [
        "今天天气很好，我们一起去公园散步吧。",
        "你觉得怎么样？",
        "太好了！",
        "我们走吧；",
        "快一点。",
    ]


def test_split_english_with_decimals_abbreviations_and_runs() -> None:
    assert split_sentences(EN) == [
        "The quick brown fox jumps over the lazy dog.",
        "This is a short reference recording!",
        "Did you hear that?",
        "Mr. Smith paid $3.14 for it...",
        "Really?!",
        "Yes;",
        "it was cheap.",
    ]


def test_split_mixed() -> None:
    assert split_sentences(MIXED) == [
        "我爱你。",
        "I love you.",
        "你呢？",
        "Me too!",
        "好的，我们明天见。",
        "See you tomorrow.",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
        ("他说：“你好。”然后走了。", ["他说：“你好。”", "然后走了。"]),
        ("（真的！）是的……好吧。", ["（真的！）", "是的……好吧。"]),
        ("Wait... what? Wait... Then go.", ["Wait... what?", "Wait...", "Then go."]),
        ("Pi is 3.14159. Version 1.2.3 is out.", ["Pi is 3.14159.", "Version 1.2.3 is out."]),
        (
            "Visit example.com today. Dr. Who and J. K. Rowling met.",
            ["Visit example.com today.", "Dr. Who and J. K. Rowling met."],
        ),
        ("Use e.g. apples. Fine.", ["Use e.g. apples.", "Fine."]),
        ("What?!? No!!! OK.", ["What?!?", "No!!!", "OK."]),
        ("Line one\nLine two\n\n第三行", ["Line one", "Line two", "第三行"]),
        ("It is 10:30, a.m. here.", ["It is 10:30, a.m. here."]),
        ("no end mark", ["no end mark"]),
        ("", []),
        ("  \n  ", []),
    ],
)
def test_split_edge_cases(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


def test_split_never_cuts_a_word_and_loses_nothing() -> None:
    text = " ".join([EN, ZH, MIXED, "The file is named report.final.v2.pdf and costs 1,234.56 dollars."])
    sentences = split_sentences(text)
    assert no_space("".join(sentences)) == no_space(normalize_text(text))
    assert latin_words(" ".join(sentences)) == latin_words(text)
    for sentence in sentences:
        assert sentence == sentence.strip()
        assert sentence


# -------------------------------------------------------------------------------------------------------------
# estimate_speech_codes


def test_estimate_chinese_is_about_a_quarter_second_per_character() -> None:
    text = "我们一起去公园散步" * 10  # 90 characters, no pauses
    seconds = estimate_speech_codes(text) / 50
    assert 90 * 0.22 <= seconds <= 90 * 0.25 * 1.25


def test_estimate_english_is_about_three_words_per_second() -> None:
    words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "the",
        "lazy",
        "dog",
        "and",
        "runs",
        "into",
        "the",
        "forest",
        "far",
        "away",
    ]
    text = " ".join(words * 5)
    seconds = estimate_speech_codes(text) / 50
    words_per_s = len(words) * 5 / seconds
    assert 2.2 <= words_per_s <= 3.2


def test_estimate_counts_digits_and_pauses_and_is_zero_for_nothing() -> None:
    assert estimate_speech_codes("") == 0
    assert estimate_speech_codes("  ...  ") == 0
    plain = estimate_speech_codes("one two three four")
    assert estimate_speech_codes("one, two. three! four") > plain
    assert estimate_speech_codes("call 5551234") > estimate_speech_codes("call")
    assert estimate_speech_codes("你好") > 0
    # longer text, more codes
    assert estimate_speech_codes(ZH * 2) > estimate_speech_codes(ZH)


# -------------------------------------------------------------------------------------------------------------
# chunk_text


def word_cost(text: str) -> int:
    """A stand-in for a tokenizer: one per Latin word or number, one per CJK character or punctuation mark."""
    return len(re.findall(r"[A-Za-z0-9']+|[^\sA-Za-z0-9']", text))


LONG_EN_SENTENCE = (
    "When the long afternoon finally ended and the shadows stretched across the valley, the travellers, "
    "tired but happy, gathered their belongings, counted their coins, thanked the innkeeper for his kindness, "
    "and set off along the winding river road toward the distant mountains where their families waited"
)
LONG_ZH_NO_PUNCT = "我们今天一起去公园散步然后去图书馆看书再去超市买东西最后回家做饭吃饭休息" * 8


@pytest.mark.parametrize(
    "text",
    [ZH * 6, EN * 4, MIXED * 5, LONG_EN_SENTENCE, LONG_ZH_NO_PUNCT, LONG_EN_SENTENCE + "。" + LONG_ZH_NO_PUNCT],
    ids=["zh", "en", "mixed", "long-en-sentence", "long-zh-no-punct", "long-both"],
)
@pytest.mark.parametrize(("cost", "budget"), [(len, 40), (len, 120), (word_cost, 15), (estimate_speech_codes, 400)])
def test_chunks_fit_the_budget_and_lose_nothing(text: str, cost, budget: int) -> None:
    chunks = chunk_text(text, cost=cost, budget=budget)
    assert chunks
    for chunk in chunks:
        assert cost(chunk) <= budget
        assert chunk == chunk.strip()
        assert chunk
    assert no_space("".join(chunks)) == no_space(normalize_text(text))
    # no Latin word was cut: the words of the chunks, in order, are the words of the text
    assert [w for c in chunks for w in latin_words(c)] == latin_words(text)


def test_sentences_that_fit_are_packed_whole() -> None:
    sentences = split_sentences(EN * 3)
    chunks = chunk_text(EN * 3, cost=len, budget=120)
    # every chunk is a run of whole sentences
    for chunk in chunks:
        assert any(chunk.startswith(s) for s in sentences)
        assert any(chunk.endswith(s) for s in sentences)
    # greedy: no chunk could have taken the next chunk's first sentence
    for this, nxt in itertools.pairwise(chunks):
        first = next(s for s in sentences if nxt.startswith(s))
        assert len(this + " " + first) > 120


def test_long_sentence_is_split_at_clauses_first() -> None:
    chunks = chunk_text(LONG_EN_SENTENCE, cost=len, budget=110)
    assert len(chunks) > 1
    # every chunk but the last ends at a clause mark, because every clause fits
    for chunk in chunks[:-1]:
        assert chunk.endswith(",")


def test_numbers_and_contractions_stay_whole_when_a_sentence_is_split() -> None:
    text = "The price wasn't 3.14159 dollars, or 1,000 yen at 10:30 today and it is fine"
    for budget in range(16, 40):
        chunks = chunk_text(text, cost=len, budget=budget)
        for token in ("wasn't", "3.14159", "dollars,", "1,000", "10:30"):
            assert any(token in chunk for chunk in chunks), (budget, chunks)
    zh = chunk_text("今天是2024年，价格是3.14元。好的", cost=len, budget=8)
    assert zh == ["今天是2024", "年，", "价格是3.14", "元。好的"]


def test_long_chinese_without_punctuation_is_split_between_characters() -> None:
    chunks = chunk_text(LONG_ZH_NO_PUNCT, cost=len, budget=50)
    assert [len(c) for c in chunks[:-1]] == [50] * (len(chunks) - 1)
    assert "".join(chunks) == LONG_ZH_NO_PUNCT


def test_one_word_over_budget_is_an_error() -> None:
    with pytest.raises(InvalidInput) as info:
        chunk_text("a supercalifragilisticexpialidocious word", cost=len, budget=20)
    assert info.value.field == "text"
    assert "supercalifragilisticexpialidocious" in info.value.message
    assert "budget 20" in info.value.message


def test_chunk_edge_cases() -> None:
    assert chunk_text("", cost=len, budget=10) == []
    assert chunk_text(" \n ", cost=len, budget=10) == []
    assert chunk_text("Hi.", cost=len, budget=10) == ["Hi."]
    # a line break inside a chunk becomes a space, or nothing between Chinese characters
    assert chunk_text("Line one\nLine two\n第一行\n第二行", cost=len, budget=100) == ["Line one Line two 第一行第二行"]
    for bad in (0, -5, 2.5, True):
        with pytest.raises(InvalidInput):
            chunk_text("text", cost=len, budget=bad)  # type: ignore[arg-type]


def test_random_text_keeps_every_invariant() -> None:
    """Property check over random mixes of Latin, CJK, digits, punctuation and odd whitespace."""
    alphabet = [*"abcdeXYZ0123", *"你好世界天气", *" .,!?;:，。！？；、…\"'“”（）()\n\u3000"]
    rng = random.Random(0)
    for _ in range(400):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120)))
        sentences = split_sentences(text)
        assert no_space("".join(sentences)) == no_space(normalize_text(text)), text
        assert all(s and s == s.strip() for s in sentences), text
        budget = rng.randint(1, 40)
        try:
            chunks = chunk_text(text, cost=len, budget=budget)
        except InvalidInput:
            # only when some word alone is longer than the budget
            assert any(len(w) > budget for w in re.findall(r"\S+", normalize_text(text))), text
            continue
        assert all(len(c) <= budget for c in chunks), (text, budget)
        assert no_space("".join(chunks)) == no_space(normalize_text(text)), text
        assert [w for c in chunks for w in latin_words(c)] == latin_words(normalize_text(text)), text


@pytest.mark.parametrize(
    ("left", "right", "joined"),
    [
        ("你好。", "世界", "你好。世界"),
        ("你好", "world", "你好 world"),
        ("hello", "世界", "hello 世界"),
        ("hello", "world", "hello world"),
        ("", "世界", "世界"),
        ("你好", "", "你好"),
        ("（注）", "안녕", "（注）안녕"),
    ],
)
def test_join_texts_writes_no_space_between_cjk(left: str, right: str, joined: str) -> None:
    assert join_texts(left, right) == joined
