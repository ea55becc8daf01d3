"""faces.inputs: the sandbox for audio file paths and the base64 decoder, without a server (fast, no models)."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from faces import inputs as mcp_inputs
from faces.inputs import decode_base64_audio, read_allowed_file, read_audio_input, resolve_allowed_path
from llasa.errors import InvalidInput, PathNotAllowed, PayloadTooLarge

WAV_BYTES = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(40))


@pytest.fixture
def sandbox(tmp_path: Path) -> dict[str, Path]:
    allowed = tmp_path / "allowed"
    outside = tmp_path / "outside"
    (allowed / "sub").mkdir(parents=True)
    outside.mkdir()
    (allowed / "ref.wav").write_bytes(WAV_BYTES)
    (allowed / "sub" / "deep.wav").write_bytes(WAV_BYTES)
    (outside / "secret.wav").write_bytes(WAV_BYTES)
    (allowed / "link_out.wav").symlink_to(outside / "secret.wav")
    (allowed / "dir_out").symlink_to(outside, target_is_directory=True)
    (allowed / "link_in.wav").symlink_to(allowed / "sub" / "deep.wav")
    (outside / "link_to_allowed.wav").symlink_to(allowed / "ref.wav")
    return {"allowed": allowed.resolve(), "outside": outside.resolve()}


def test_absolute_and_relative_paths_inside_are_read(sandbox: dict[str, Path]) -> None:
    allowed = [sandbox["allowed"]]
    assert resolve_allowed_path(str(sandbox["allowed"] / "ref.wav"), allowed_dirs=allowed) == (
        sandbox["allowed"] / "ref.wav"
    )
    assert resolve_allowed_path("sub/deep.wav", allowed_dirs=allowed) == sandbox["allowed"] / "sub" / "deep.wav"
    # A link that stays inside is fine; it is the target that counts.
    assert resolve_allowed_path("link_in.wav", allowed_dirs=allowed) == sandbox["allowed"] / "sub" / "deep.wav"
    assert read_allowed_file("ref.wav", allowed_dirs=allowed, max_bytes=1000) == WAV_BYTES


def test_relative_paths_are_looked_up_in_each_allowed_folder(sandbox: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "only_here.wav").write_bytes(WAV_BYTES)
    found = resolve_allowed_path("only_here.wav", allowed_dirs=[sandbox["allowed"], other.resolve()])
    assert found == other.resolve() / "only_here.wav"


@pytest.mark.parametrize(
    "raw",
    [
        "/etc/passwd",  # exists, outside
        "/nonexistent/nowhere.wav",  # does not exist, outside: refused without saying whether it exists
        "link_out.wav",  # symlink leading out
        "dir_out/secret.wav",  # a symlinked folder leading out
    ],
)
def test_paths_leading_outside_are_refused(sandbox: dict[str, Path], raw: str) -> None:
    with pytest.raises(PathNotAllowed, match="outside the folders this server may read") as info:
        resolve_allowed_path(raw, allowed_dirs=[sandbox["allowed"]], field="audio_path")
    assert info.value.field == "audio_path"
    assert str(sandbox["allowed"]) in info.value.message  # says where files may be put


def test_outside_absolute_path_of_an_existing_file_is_refused(sandbox: dict[str, Path]) -> None:
    with pytest.raises(PathNotAllowed, match="outside"):
        resolve_allowed_path(str(sandbox["outside"] / "secret.wav"), allowed_dirs=[sandbox["allowed"]])


@pytest.mark.parametrize("raw", ["../outside/secret.wav", "sub/../ref.wav", "{allowed}/../outside/secret.wav"])
def test_dot_dot_is_refused_even_when_it_would_stay_inside(sandbox: dict[str, Path], raw: str) -> None:
    with pytest.raises(PathNotAllowed, match=r"contains '\.\.'"):
        resolve_allowed_path(raw.format(allowed=sandbox["allowed"]), allowed_dirs=[sandbox["allowed"]])


def test_link_from_outside_into_the_sandbox_is_judged_by_its_target(sandbox: dict[str, Path]) -> None:
    path = resolve_allowed_path(str(sandbox["outside"] / "link_to_allowed.wav"), allowed_dirs=[sandbox["allowed"]])
    assert path == sandbox["allowed"] / "ref.wav"


def test_missing_files_folders_and_empty_files_get_clear_errors(sandbox: dict[str, Path]) -> None:
    allowed = [sandbox["allowed"]]
    with pytest.raises(InvalidInput, match="does not exist"):
        resolve_allowed_path("missing.wav", allowed_dirs=allowed)
    with pytest.raises(InvalidInput, match="not a regular file"):
        resolve_allowed_path("sub", allowed_dirs=allowed)
    (sandbox["allowed"] / "empty.wav").write_bytes(b"")
    with pytest.raises(InvalidInput, match="empty file"):
        read_allowed_file("empty.wav", allowed_dirs=allowed, max_bytes=100)
    with pytest.raises(InvalidInput, match="NUL"):
        resolve_allowed_path("ref.wav\x00.txt", allowed_dirs=allowed)


def test_file_over_the_upload_limit_is_refused(sandbox: dict[str, Path]) -> None:
    with pytest.raises(PayloadTooLarge, match="MAX_UPLOAD_MB"):
        read_allowed_file("ref.wav", allowed_dirs=[sandbox["allowed"]], max_bytes=len(WAV_BYTES) - 1)
    assert read_allowed_file("ref.wav", allowed_dirs=[sandbox["allowed"]], max_bytes=len(WAV_BYTES))


def test_no_allowed_folder_means_no_file_is_readable(sandbox: dict[str, Path]) -> None:
    with pytest.raises(PathNotAllowed):
        resolve_allowed_path(str(sandbox["allowed"] / "ref.wav"), allowed_dirs=[])


@pytest.mark.parametrize(
    "encode",
    [
        lambda b: base64.b64encode(b).decode(),
        lambda b: "data:audio/wav;base64," + base64.b64encode(b).decode(),
        lambda b: "data:audio/x-wav;name=ref.wav;base64," + base64.b64encode(b).decode(),
        lambda b: "data:;base64," + base64.b64encode(b).decode(),
        lambda b: base64.urlsafe_b64encode(b).decode().rstrip("="),
        lambda b: "\n".join(base64.encodebytes(b).decode().split("\n")) + "\n",
    ],
)
def test_base64_variants_decode_to_the_same_bytes(encode) -> None:
    data = WAV_BYTES + b"\xfb\xff\xfe" * 50  # bytes whose encoding uses '+' and '/'
    assert decode_base64_audio(encode(data), max_bytes=10_000) == data


def test_bad_base64_gets_clear_errors() -> None:
    with pytest.raises(InvalidInput, match="not valid base64"):
        decode_base64_audio("this is not base64 at all!", max_bytes=1000)
    with pytest.raises(InvalidInput, match="without ';base64'"):
        decode_base64_audio("data:audio/wav,RIFF", max_bytes=1000)
    with pytest.raises(InvalidInput, match="not a valid data URL"):
        decode_base64_audio("data:audio wav;base64,AAAA", max_bytes=1000)
    with pytest.raises(InvalidInput, match="empty"):
        decode_base64_audio("data:audio/wav;base64,", max_bytes=1000)


def test_base64_over_the_limit_is_refused_before_decoding() -> None:
    data = bytes(3000)
    with pytest.raises(PayloadTooLarge, match="MAX_UPLOAD_MB"):
        decode_base64_audio(base64.b64encode(data).decode(), max_bytes=2999)
    assert decode_base64_audio(base64.b64encode(data).decode(), max_bytes=3000) == data
    with pytest.raises(PayloadTooLarge):
        decode_base64_audio("A" * 4_000_000, max_bytes=1000)  # refused by its length alone


def test_read_audio_input_takes_exactly_one_source(sandbox: dict[str, Path]) -> None:
    kwargs = {
        "allowed_dirs": [sandbox["allowed"]],
        "max_bytes": 10_000,
        "path_field": "audio_path",
        "base64_field": "audio_base64",
    }
    encoded = base64.b64encode(WAV_BYTES).decode()
    assert read_audio_input("ref.wav", None, **kwargs) == WAV_BYTES
    assert read_audio_input(None, encoded, **kwargs) == WAV_BYTES
    assert read_audio_input("  ", "", required=False, **kwargs) is None
    with pytest.raises(InvalidInput, match="not both"):
        read_audio_input("ref.wav", encoded, **kwargs)
    with pytest.raises(InvalidInput, match="no audio given; pass audio_path") as info:
        read_audio_input(None, None, **kwargs)
    assert info.value.field == "audio_path"


def test_file_urls_are_accepted_as_local_paths(sandbox: dict[str, Path]) -> None:
    allowed = [sandbox["allowed"]]
    url = (sandbox["allowed"] / "ref.wav").as_uri()
    assert resolve_allowed_path(url, allowed_dirs=allowed) == sandbox["allowed"] / "ref.wav"
    assert resolve_allowed_path("file://localhost" + str(sandbox["allowed"] / "ref.wav"), allowed_dirs=allowed)
    with pytest.raises(PathNotAllowed):
        resolve_allowed_path((sandbox["outside"] / "secret.wav").as_uri(), allowed_dirs=allowed)
    with pytest.raises(InvalidInput, match="another host"):
        resolve_allowed_path("file://example.com/ref.wav", allowed_dirs=allowed)


def test_base64_sent_as_a_path_gets_a_hint_and_is_not_echoed(sandbox: dict[str, Path]) -> None:
    allowed = [sandbox["allowed"]]
    data = base64.b64encode(bytes(10_000)).decode()
    for text in ("data:audio/wav;base64,AAAA", data):
        with pytest.raises(InvalidInput, match="looks like base64") as info:
            resolve_allowed_path(text, allowed_dirs=allowed, field="audio_path")
        assert len(info.value.message) < 300
    long_name = "x" * 5000 + ".wav"
    with pytest.raises(InvalidInput, match="cannot be resolved: File name too long") as info:
        resolve_allowed_path(long_name, allowed_dirs=allowed)
    assert len(info.value.message) < 500


def test_symlink_loop_is_refused_cleanly(sandbox: dict[str, Path]) -> None:
    (sandbox["allowed"] / "loop_a.wav").symlink_to(sandbox["allowed"] / "loop_b.wav")
    (sandbox["allowed"] / "loop_b.wav").symlink_to(sandbox["allowed"] / "loop_a.wav")
    with pytest.raises(InvalidInput, match="cannot be resolved"):
        resolve_allowed_path("loop_a.wav", allowed_dirs=[sandbox["allowed"]])


# --- the file swapped between the check and the open (TOCTOU) --------------------------------------------------


def swap_after_check(monkeypatch: pytest.MonkeyPatch, swap: Callable[[Path], None]) -> None:
    """Make `swap(resolved)` run right after resolve_allowed_path has checked the path, before the file is opened:
    the window an attacker with write access to an allowed folder would race for."""
    checked = mcp_inputs.resolve_allowed_path

    def check_then_swap(*args: Any, **kwargs: Any) -> Path:
        resolved = checked(*args, **kwargs)
        swap(resolved)
        return resolved

    monkeypatch.setattr(mcp_inputs, "resolve_allowed_path", check_then_swap)


def test_file_replaced_by_a_symlink_out_after_the_check_is_refused(
    sandbox: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def to_link(resolved: Path) -> None:
        resolved.unlink()
        resolved.symlink_to(sandbox["outside"] / "secret.wav")

    swap_after_check(monkeypatch, to_link)
    with pytest.raises(PathNotAllowed, match=r"changed while it was being opened.*symbolic link"):
        read_allowed_file("ref.wav", allowed_dirs=[sandbox["allowed"]], max_bytes=1000)


def test_folder_replaced_by_a_symlink_out_after_the_check_is_refused(
    sandbox: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    (sandbox["outside"] / "deep.wav").write_bytes(WAV_BYTES)

    def folder_to_link(resolved: Path) -> None:
        folder = resolved.parent
        folder.rename(folder.with_name("moved"))
        folder.symlink_to(sandbox["outside"], target_is_directory=True)

    swap_after_check(monkeypatch, folder_to_link)
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to see where an open file really is")
    with pytest.raises(PathNotAllowed, match="now leads outside"):
        read_allowed_file("sub/deep.wav", allowed_dirs=[sandbox["allowed"]], max_bytes=1000)


def test_file_replaced_by_a_fifo_after_the_check_is_refused_without_blocking(
    sandbox: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def to_fifo(resolved: Path) -> None:
        resolved.unlink()
        os.mkfifo(resolved)

    swap_after_check(monkeypatch, to_fifo)
    with pytest.raises(InvalidInput, match="no longer a regular file"):
        read_allowed_file("ref.wav", allowed_dirs=[sandbox["allowed"]], max_bytes=1000)


def test_file_deleted_after_the_check_gets_a_clear_error(
    sandbox: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    swap_after_check(monkeypatch, Path.unlink)
    with pytest.raises(InvalidInput, match="no longer exists"):
        read_allowed_file("ref.wav", allowed_dirs=[sandbox["allowed"]], max_bytes=1000)
