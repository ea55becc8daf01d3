"""The voice library, the output store and parameter validation: no models needed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from llasa.errors import InvalidInput, NotFound, VoiceDamaged, VoiceExists, VoiceNotFound
from llasa.outputs import OutputStore
from llasa.types import MAX_SEED, SAMPLE_RATE, GenerationParams
from llasa.voices import VoiceLibrary, validate_voice_name


def _tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


# --- voices --------------------------------------------------------------------------------------------------


def test_voice_round_trip(tmp_path: Path) -> None:
    library = VoiceLibrary(tmp_path / "voices")
    info = library.save("Alice 01", _tone(2.0), "hello there", [1, 2, 65535], codec_model="codec-a")
    assert info.duration_s == pytest.approx(2.0)
    again = library.get("Alice 01")
    assert again.transcript == "hello there"
    assert again.codes == [1, 2, 65535]
    assert again.codec_model == "codec-a"
    assert [v.name for v in library.list()] == ["Alice 01"]
    samples = library.load_reference("Alice 01")
    assert len(samples) == 2 * SAMPLE_RATE
    assert "codes" not in again.to_dict()


def test_chinese_voice_name_is_allowed(tmp_path: Path) -> None:
    library = VoiceLibrary(tmp_path)
    library.save("小明", _tone(1.0), "你好", [5], codec_model="c")
    assert library.get("小明").transcript == "你好"


def test_duplicate_voice_is_refused_unless_overwrite(tmp_path: Path) -> None:
    library = VoiceLibrary(tmp_path)
    library.save("bob", _tone(1.0), "one", [1], codec_model="c")
    with pytest.raises(VoiceExists, match="already exists"):
        library.save("bob", _tone(1.0), "two", [2], codec_model="c")
    assert library.get("bob").transcript == "one"
    library.save("bob", _tone(1.0), "two", [2], codec_model="c", overwrite=True)
    assert library.get("bob").transcript == "two"
    # No staging or trash folders are left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bob"]


def test_delete_and_missing_voice(tmp_path: Path) -> None:
    library = VoiceLibrary(tmp_path)
    library.save("carol", _tone(1.0), "x", [1], codec_model="c")
    library.delete("carol")
    assert library.list() == []
    with pytest.raises(VoiceNotFound, match="does not exist"):
        library.get("carol")
    with pytest.raises(VoiceNotFound):
        library.delete("carol")


@pytest.mark.parametrize(
    "name",
    ["", "   ", "../etc", "a/b", "a\\b", ".hidden", "..", "x" * 65, "name\x00", "_under", "a..b", 42, None],
)
def test_hostile_or_bad_voice_names_are_refused(tmp_path: Path, name: object) -> None:
    with pytest.raises(InvalidInput) as excinfo:
        validate_voice_name(name)
    assert excinfo.value.field == "name"
    assert VoiceLibrary(tmp_path).list() == []


def test_half_written_voice_is_invisible(tmp_path: Path) -> None:
    library = VoiceLibrary(tmp_path)
    # What a crash in the middle of save() leaves: a hidden staging folder, never a visible voice.
    staging = tmp_path / ".tmp-deadbeef"
    staging.mkdir()
    (staging / "reference.wav").write_bytes(b"RIFF")
    assert library.list() == []
    # A corrupt voice folder is skipped, not fatal.
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "voice.json").write_text("{not json", encoding="utf-8")
    assert library.list() == []


def test_damaged_voice_says_how_to_fix_it(tmp_path: Path) -> None:
    library = VoiceLibrary(tmp_path)
    library.save("erin", _tone(1.0), "x", [1], codec_model="c")
    (tmp_path / "erin" / "voice.json").write_text('{"name": "erin"}', encoding="utf-8")
    with pytest.raises(VoiceDamaged, match="delete it and save it again") as excinfo:
        library.get("erin")
    assert excinfo.value.status_code == 500
    library.delete("erin")
    assert library.list() == []


def test_update_codes(tmp_path: Path) -> None:
    library = VoiceLibrary(tmp_path)
    library.save("dave", _tone(1.0), "x", [1, 2], codec_model="old")
    library.update_codes("dave", [7, 8, 9], codec_model="new")
    info = library.get("dave")
    assert (info.codes, info.num_codes, info.codec_model) == ([7, 8, 9], 3, "new")


# --- outputs -------------------------------------------------------------------------------------------------


def test_output_save_and_lookup(tmp_path: Path) -> None:
    store = OutputStore(tmp_path, ttl_hours=1, base_url="http://host:7861")
    saved = store.save(b"abc", "opus", "audio/ogg")
    assert saved.id.endswith(".ogg")
    assert saved.url == f"http://host:7861/api/outputs/{saved.id}"
    assert store.path_for(saved.id).read_bytes() == b"abc"


@pytest.mark.parametrize(
    ("fmt", "mime_type"), [("srt", "application/x-subrip"), ("vtt", "text/vtt"), ("json", "application/json")]
)
def test_captions_are_kept_like_audio(tmp_path: Path, fmt: str, mime_type: str) -> None:
    store = OutputStore(tmp_path, ttl_hours=1, base_url="http://host:7861")
    saved = store.save_captions("WEBVTT\n\n00:00.000 --> 00:01.000\n你好 there\n", fmt)
    assert saved.id.endswith(f".{fmt}")
    assert (saved.format, saved.mime_type) == (fmt, mime_type)
    assert saved.url == f"http://host:7861/api/outputs/{saved.id}"
    assert store.path_for(saved.id).read_text(encoding="utf-8").endswith("你好 there\n")
    assert saved.size_bytes == len(store.path_for(saved.id).read_bytes())


@pytest.mark.parametrize(
    "output_id",
    ["../secret.wav", "/etc/passwd", "0" * 32 + ".exe", "..%2f..%2fx.wav", "", "a" * 32 + ".wav/../../x", "A" * 32],
)
def test_output_ids_cannot_escape(tmp_path: Path, output_id: str) -> None:
    store = OutputStore(tmp_path / "out", ttl_hours=1, base_url="")
    (tmp_path / "secret.wav").write_bytes(b"secret")
    with pytest.raises(NotFound):
        store.path_for(output_id)


def test_output_cleanup_removes_only_expired(tmp_path: Path) -> None:
    store = OutputStore(tmp_path, ttl_hours=1, base_url="")
    old = store.save(b"old", "wav", "audio/wav")
    new = store.save(b"new", "wav", "audio/wav")
    unrelated = tmp_path / "keep.txt"
    unrelated.write_text("not ours")
    two_hours_ago = time.time() - 7200
    os.utime(old.path, (two_hours_ago, two_hours_ago))
    os.utime(unrelated, (two_hours_ago, two_hours_ago))
    assert store.cleanup() == 1
    with pytest.raises(NotFound, match="expired"):
        store.path_for(old.id)
    assert store.path_for(new.id).is_file()
    assert unrelated.exists()


# --- parameters ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 0),
        ("temperature", -0.5),
        ("temperature", float("nan")),
        ("top_p", 0),
        ("top_p", 1.01),
        ("top_k", -1),
        ("top_k", 2.5),
        ("repetition_penalty", 0),
        ("max_audio_seconds", 0),
        ("max_audio_seconds", 0.01),
        ("seed", -1),
        ("seed", MAX_SEED + 1),
        ("temperature", "hot"),
        ("seed", True),
    ],
)
def test_out_of_range_parameters_name_the_field(field: str, value: object) -> None:
    with pytest.raises(InvalidInput) as excinfo:
        GenerationParams(**{field: value}).validate()
    assert excinfo.value.field == field
    assert field in excinfo.value.message


def test_valid_parameters_pass() -> None:
    GenerationParams(
        temperature=0.8, top_p=1.0, top_k=0, repetition_penalty=1.1, max_audio_seconds=10, seed=0
    ).validate()
    GenerationParams().validate()


def test_update_transcript_is_atomic_and_validated(tmp_path: Path) -> None:
    library = VoiceLibrary(tmp_path)
    library.save("fay", _tone(1.0), "old words", [1, 2], codec_model="c")
    info = library.update_transcript("fay", "new words")
    assert info.transcript == "new words"
    assert info.codes == [1, 2]
    assert sorted(p.name for p in (tmp_path / "fay").iterdir()) == ["reference.wav", "voice.json"]
    with pytest.raises(VoiceNotFound):
        library.update_transcript("nobody", "x")


def test_overwrite_keeps_a_voice_at_every_moment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    library = VoiceLibrary(tmp_path)
    library.save("gus", _tone(1.0), "first", [1], codec_model="c")
    real_rename = os.rename
    seen: list[list[str]] = []

    def watching_rename(src: os.PathLike[str] | str, dst: os.PathLike[str] | str) -> None:
        real_rename(src, dst)
        seen.append(sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")))

    monkeypatch.setattr(os, "rename", watching_rename)
    library.save("gus", _tone(1.0), "second", [2], codec_model="c", overwrite=True)
    # Right after the old folder moved aside the name is briefly free, then the new one is in place; the old
    # copy is still on disk (as trash) until the new one has landed.
    assert seen[-1] == ["gus"]
    assert library.get("gus").transcript == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gus"]


def test_output_ids_with_a_trailing_newline_are_refused(tmp_path: Path) -> None:
    store = OutputStore(tmp_path, ttl_hours=1, base_url="")
    saved = store.save(b"x", "wav", "audio/wav")
    with pytest.raises(NotFound):
        store.path_for(saved.id + "\n")
