"""The one reader of audio input, for every face: an upload, base64 text, a data: URI, or a sandboxed path.

REST and MCP accept exactly the same encodings through `read_audio()`: an uploaded file's bytes; base64 in the
standard or the URL-safe alphabet, padded or not, line-wrapped or not; a `data:audio/...;base64,` URI; and (MCP
only: a REST client has no business naming the server's files) a path inside MCP_ALLOWED_DIRS. One size limit,
MAX_UPLOAD_MB, for all of them; one error, naming the field, for each way an input can be wrong.

An MCP client is often a language model acting for someone else, so a path it sends is untrusted: it is resolved
(symlinks followed) and must land inside `settings.allowed_dirs`; `..` components are refused outright, before
anything touches the disk. The file is read here, once, from its resolved location, and the bytes go to the
service, so nothing later re-opens a path that could have been swapped for a link; the open itself does not
follow a final symlink and checks where the opened file really is, so a swap between the check and the open
is refused too. Sizes are bounded by MAX_UPLOAD_MB for both kinds of input, before anything big is read or
decoded.
"""

from __future__ import annotations

import base64
import binascii
import errno
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path, PurePath
from urllib.parse import unquote, urlsplit

from llasa.errors import InvalidInput, PathNotAllowed, PayloadTooLarge

# data:[<mime type>][;param=value]*;base64,<data>
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,")
_WHITESPACE = re.compile(r"\s+")
_BASE64_TEXT = re.compile(r"^[A-Za-z0-9+/=_\-\s]+$")
_LONGEST_PATH = 4096  # PATH_MAX on Linux


@dataclass(frozen=True)
class AudioInput:
    """What a face received for one audio argument, before it is read: at most one source may be given."""

    upload: bytes | None = None
    """An uploaded file's bytes (multipart)."""
    base64_text: object = None
    """base64 text or a data: URI (JSON body, MCP argument); anything but a string is refused."""
    path: str | None = None
    """A file on the server, inside the allowed folders (MCP)."""


def read_audio(
    given: AudioInput,
    *,
    field: str,
    max_bytes: int,
    allowed_dirs: list[Path] | None = None,
    path_field: str | None = None,
    base64_field: str | None = None,
    required: bool = True,
) -> bytes | None:
    """The bytes of the one audio source in `given`, or None when none is given and not `required`.

    `field` names the argument in messages; `path_field` / `base64_field` name the path and base64 arguments
    where a face has separate ones (MCP), else they are `field` too. Paths are accepted only with `allowed_dirs`.
    """
    path_field = path_field or field
    base64_field = base64_field or field
    text = given.base64_text
    if text is not None and not isinstance(text, str):
        raise InvalidInput(f"{base64_field} must be base64 text (or a data: URL)", field=base64_field)
    sources = {
        "upload": given.upload is not None,
        "path": given.path is not None and given.path.strip() != "",
        "base64": isinstance(text, str) and text.strip() != "",
    }
    chosen = [name for name, present in sources.items() if present]
    if len(chosen) > 1:
        names = {"upload": f"an uploaded {field}", "path": path_field, "base64": base64_field}
        raise InvalidInput(f"give either {' or '.join(names[c] for c in chosen)}, not both", field=path_field)
    if sources["upload"]:
        assert given.upload is not None
        return _check_upload(given.upload, field=field, max_bytes=max_bytes)
    if sources["path"]:
        assert given.path is not None
        if allowed_dirs is None:
            raise InvalidInput(f"{path_field} cannot name a file on this server; send the audio itself", field=field)
        return read_allowed_file(given.path, allowed_dirs=allowed_dirs, max_bytes=max_bytes, field=path_field)
    if sources["base64"]:
        assert isinstance(text, str)
        return decode_base64_audio(text, max_bytes=max_bytes, field=base64_field)
    if required:
        if allowed_dirs is None:
            raise InvalidInput(
                f"{field} is missing; upload the audio file as multipart field {field!r}, or send it base64-encoded "
                "in a JSON body",
                field=field,
            )
        raise InvalidInput(
            f"no audio given; pass {path_field} (a file inside {_describe(allowed_dirs)}) or {base64_field} "
            "(the file's bytes, base64-encoded)",
            field=path_field,
        )
    return None


def _check_upload(data: bytes, *, field: str, max_bytes: int) -> bytes:
    if not data:
        raise InvalidInput(f"the uploaded {field} is empty; choose a non-empty audio file", field=field)
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"the uploaded {field} holds {_mib(len(data))}; the limit is {_mib(max_bytes)} (MAX_UPLOAD_MB)",
            field=field,
        )
    return data


def read_audio_input(
    path: str | None,
    data_base64: str | None,
    *,
    allowed_dirs: list[Path],
    max_bytes: int,
    path_field: str,
    base64_field: str,
    required: bool = True,
) -> bytes | None:
    """MCP's form of `read_audio`: exactly one of `path` / `data_base64` (the tool's argument names)."""
    return read_audio(
        AudioInput(path=path, base64_text=data_base64),
        field=path_field,
        max_bytes=max_bytes,
        allowed_dirs=allowed_dirs,
        path_field=path_field,
        base64_field=base64_field,
        required=required,
    )


def resolve_allowed_path(raw: str, *, allowed_dirs: list[Path], field: str = "path") -> Path:
    """Resolve `raw` to an existing regular file inside one of `allowed_dirs`, or raise a TTSError saying why not.

    Absolute paths (and `~`, and `file://` URLs) are resolved as given; a relative path is looked up in each
    allowed folder in turn. Symlinks are followed, and it is the target that must be inside an allowed folder.
    """
    text = raw.strip()
    if "\x00" in text:
        raise InvalidInput(f"{field} contains a NUL character", field=field)
    if text.lower().startswith("file:"):
        # Assistants often name files as URLs; only local ones mean anything here.
        url = urlsplit(text)
        if url.netloc not in ("", "localhost"):
            raise InvalidInput(f"{field} {_shown(text)} names a file on another host; give a local path", field=field)
        text = unquote(url.path)
    if text.startswith("data:") or (len(text) > _LONGEST_PATH and _BASE64_TEXT.match(text)):
        raise InvalidInput(
            f"{field} looks like base64 data, not a file path; send the data in the base64 argument instead",
            field=field,
        )
    given = Path(text).expanduser()
    if ".." in PurePath(text).parts:
        raise PathNotAllowed(
            f"{field} {_shown(text)} contains '..'; give a path inside {_describe(allowed_dirs)} without '..'",
            field=field,
        )
    candidates = [given] if given.is_absolute() else [folder / given for folder in allowed_dirs]
    for candidate in candidates:
        try:
            resolved = candidate.resolve(strict=True)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop
            reason = getattr(e, "strerror", None) or str(e)  # not str(e) for OSError: it repeats the path
            raise InvalidInput(f"{field} {_shown(text)} cannot be resolved: {reason}", field=field) from e
        if not any(resolved.is_relative_to(folder) for folder in allowed_dirs):
            where = f" (it leads to {resolved})" if resolved != candidate else ""
            raise PathNotAllowed(
                f"{field} {_shown(text)} is outside the folders this server may read{where}; put the file in "
                f"{_describe(allowed_dirs)} (MCP_ALLOWED_DIRS) or send its bytes as base64",
                field=field,
            )
        if not resolved.is_file():
            raise InvalidInput(f"{field} {_shown(text)} is not a regular file", field=field)
        return resolved
    if given.is_absolute() and not any(given.is_relative_to(folder) for folder in allowed_dirs):
        # Do not confirm or deny that a file exists outside the sandbox.
        raise PathNotAllowed(
            f"{field} {_shown(text)} is outside the folders this server may read; put the file in "
            f"{_describe(allowed_dirs)} (MCP_ALLOWED_DIRS) or send its bytes as base64",
            field=field,
        )
    raise InvalidInput(
        f"{field} {_shown(text)} does not exist; relative paths are looked up in {_describe(allowed_dirs)}", field=field
    )


def read_allowed_file(raw: str, *, allowed_dirs: list[Path], max_bytes: int, field: str = "path") -> bytes:
    """Read a file that `resolve_allowed_path` accepts, refusing it if it is bigger than `max_bytes`.

    The checked path is opened without following a final symlink, and the open file itself is checked again
    (a regular file, still inside an allowed folder), so a file or folder swapped for a link between the check
    and the open is refused instead of read.
    """
    path = resolve_allowed_path(raw, allowed_dirs=allowed_dirs, field=field)
    fd = _open_checked(path, raw, allowed_dirs=allowed_dirs, field=field)
    with os.fdopen(fd, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"{field} {_shown(raw)} is larger than the {_mib(max_bytes)} limit (MAX_UPLOAD_MB); "
            "use a shorter or compressed recording",
            field=field,
        )
    if not data:
        raise InvalidInput(f"{field} {_shown(raw)} is an empty file", field=field)
    return data


def _open_checked(path: Path, raw: str, *, allowed_dirs: list[Path], field: str) -> int:
    """Open the already checked `path` read-only and return the descriptor, or raise if it changed since the check.

    O_NOFOLLOW refuses a final component that became a symlink; O_NONBLOCK keeps a file swapped for a FIFO from
    blocking the open (it changes nothing for a regular file). A folder higher up swapped for a link is caught by
    asking the kernel where the open file really is.
    """
    changed = f"{field} {_shown(raw)} changed while it was being opened"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError as e:
        raise InvalidInput(f"{changed}: it no longer exists", field=field) from e
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise PathNotAllowed(
                f"{changed}: it is now a symbolic link, which is not followed; give the file's real path inside "
                f"{_describe(allowed_dirs)}",
                field=field,
            ) from e
        raise InvalidInput(f"{field} {_shown(raw)} cannot be opened: {e.strerror or e}", field=field) from e
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidInput(f"{changed}: it is no longer a regular file", field=field)
        where = _opened_path(fd)
        if where is not None and not any(where.is_relative_to(folder) for folder in allowed_dirs):
            raise PathNotAllowed(
                f"{changed}: it now leads outside the folders this server may read; put the file in "
                f"{_describe(allowed_dirs)} (MCP_ALLOWED_DIRS) or send its bytes as base64",
                field=field,
            )
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _opened_path(fd: int) -> Path | None:
    """Where the open file `fd` really is (Linux /proc), or None where that cannot be asked."""
    link = f"/proc/self/fd/{fd}"
    if not os.path.exists(link):
        return None
    return Path(os.path.realpath(link))


def decode_base64_audio(text: str, *, max_bytes: int, field: str = "audio_base64") -> bytes:
    """Decode base64 audio, with or without a `data:audio/...;base64,` prefix; bounded by `max_bytes`."""
    payload = text.strip()
    match = _DATA_URL.match(payload)
    if match:
        if not match.group("b64"):
            raise InvalidInput(f"{field} is a data: URL without ';base64'; encode the audio as base64", field=field)
        payload = payload[match.end() :]
    elif payload.startswith("data:"):
        raise InvalidInput(
            f"{field} starts with 'data:' but is not a valid data URL; use 'data:audio/wav;base64,<data>' or "
            "the bare base64 text",
            field=field,
        )
    payload = _WHITESPACE.sub("", payload)
    # Four base64 characters carry three bytes: refuse oversized input before decoding it.
    if len(payload) // 4 * 3 > max_bytes + 3:
        raise PayloadTooLarge(
            f"{field} holds about {_mib(len(payload) // 4 * 3)} of audio; the limit is {_mib(max_bytes)} "
            "(MAX_UPLOAD_MB)",
            field=field,
        )
    if "-" in payload or "_" in payload:
        payload = payload.replace("-", "+").replace("_", "/")  # the URL-safe alphabet
    payload += "=" * (-len(payload) % 4)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidInput(
            f"{field} is not valid base64 ({e}); send the audio file's bytes base64-encoded, or name a file on the "
            "server with the path argument instead",
            field=field,
        ) from e
    if not data:
        raise InvalidInput(f"{field} is empty; send the audio file's bytes base64-encoded", field=field)
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"{field} holds {_mib(len(data))} of audio; the limit is {_mib(max_bytes)} (MAX_UPLOAD_MB)", field=field
        )
    return data


def _shown(text: str, limit: int = 200) -> str:
    """`text` quoted for an error message, cut short: a message must not echo megabytes back."""
    text = text.strip()
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _describe(folders: list[Path]) -> str:
    if not folders:
        return "no folder (MCP_ALLOWED_DIRS is empty)"
    return ", ".join(str(folder) for folder in folders)


def _mib(size_bytes: int) -> str:
    return f"{size_bytes / (1024 * 1024):.1f} MiB"
