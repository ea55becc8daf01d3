"""The web UI over a real socket: gradio_client against `create_ui` + `launch_ui` on the real TTSService (tiny models).

One UI is launched per module on a free 127.0.0.1 port; the tests call its named endpoints (`api_name=`) the way
a Python user would, and check the files, tables and errors that come back.
"""

from __future__ import annotations

import base64
import io
import itertools
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
import soundfile
import srt
import webvtt
from conftest import tiny_settings
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

import app
from faces.webui import common as ui_common
from faces.webui import i18n as ui_i18n
from llasa.config import Settings
from llasa.service import TTSService
from llasa.types import TranscriptionRequest

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _settings(tiny_models: Path, root: Path, **overrides: Any) -> Settings:
    return tiny_settings(
        tiny_models, root, **{"ui_port": _free_port(), "max_audio_seconds": 1.0, "max_queue": 3, **overrides}
    )


@pytest.fixture(scope="module")
def ui(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    root = tmp_path_factory.mktemp("ui")
    settings = _settings(tiny_models, root)
    service = TTSService(settings)
    demo = app.create_ui(service, settings)
    url = app.launch_ui(demo, settings, prevent_thread_lock=True)
    client = Client(url, verbose=False, analytics_enabled=False, download_files=str(root / "downloads"))
    try:
        yield SimpleNamespace(settings=settings, service=service, demo=demo, url=url, client=client, root=root)
    finally:
        client.close()
        demo.close()
        service.shutdown()


def _synthesize(client: Client, **overrides: object) -> tuple:
    arguments: dict[str, object] = {
        "voice_mode": "reference",
        "reference_audio": None,
        "reference_text": "",
        "voice": None,
        "language": "auto",
        "text_input": "Hello from the web UI.",
        "max_seconds": 1,
        "seed": 7,
        "output_format": "wav",
    }
    arguments.update(overrides)
    return client.predict(**arguments, api_name="/synthesize")


# --- pure helpers ---------------------------------------------------------------------------------------------


def test_both_languages_have_every_key_with_the_same_placeholders() -> None:
    english, chinese = ui_i18n.STRINGS["en"], ui_i18n.STRINGS["zh"]
    assert set(english) == set(chinese)
    placeholder = re.compile(r"\{(\w+)[^}]*\}")
    for key in english:
        assert set(placeholder.findall(english[key])) == set(placeholder.findall(chinese[key])), key
    static = ui_i18n.static_translations(max_text_chars=1234)
    assert set(static) >= {"en", "zh", "zh-CN"}
    assert "1234" in static["en"]["text_info"]
    assert "1234" in static["zh-CN"]["text_info"]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, "en"),
        ("", "en"),
        ("zh-CN,zh;q=0.9,en;q=0.8", "zh"),
        ("zh-TW", "zh"),
        ("en-US,en;q=0.9", "en"),
        ("fr-FR,fr;q=0.9", "en"),
        ("fr;q=1.0, zh;q=0.5, en;q=0.9", "en"),
        ("de, zh;q=0.8", "zh"),
        ("en;q=bad, zh", "zh"),
    ],
)
def test_language_follows_accept_language(header: str | None, expected: str) -> None:
    assert ui_i18n.language_of(header) == expected


def test_main_reads_the_env_file_named_by_llasa_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / "ui.env"
    env_file.write_text("GRADIO_AUTH=no-colon-here\n")
    done = subprocess.run(
        [sys.executable, "app.py"],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "LLASA_ENV_FILE": str(env_file)},
    )
    # The bad value from that file stops the start with a clear message (Settings() alone never read it).
    assert done.returncode != 0
    assert "GRADIO_AUTH" in done.stderr


def test_gradio_auth_parsing() -> None:
    assert app.parse_gradio_auth("") is None
    assert app.parse_gradio_auth("admin:pa:ss") == ("admin", "pa:ss")
    for bad in ("admin", ":secret", "admin:"):
        with pytest.raises(ValueError, match="user:password"):
            app.parse_gradio_auth(bad)


def test_app_imports_without_torch() -> None:
    code = "import sys, app; bad = [m for m in ('torch', 'transformers') if m in sys.modules]; print(bad)"
    done = subprocess.run(
        [sys.executable, "-c", code], check=False, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# --- structure: one GPU queue ------------------------------------------------------------------------------------


def test_gpu_events_share_one_queue_of_one(ui: SimpleNamespace) -> None:
    fns = list(ui.demo.fns.values())
    by_name = {fn.api_name: fn for fn in fns if fn.api_name}
    for name in ("synthesize", "transcribe", "save_voice"):
        assert by_name[name].concurrency_id == app.GPU_CONCURRENCY_ID, name
        assert by_name[name].concurrency_limit == 1, name
    # Auto-transcription on upload / end of recording runs the model too: same group.
    transcribers = [fn for fn in fns if getattr(fn.fn, "__name__", "") in ("transcribe", "transcribe_upload")]
    assert len(transcribers) == 3
    assert {fn.concurrency_id for fn in transcribers} == {app.GPU_CONCURRENCY_ID}
    assert ui.demo._queue.max_size == ui.settings.max_queue


# --- synthesis ------------------------------------------------------------------------------------------------


def test_synthesize_with_a_reference_file(ui: SimpleNamespace, audio_dir: Path) -> None:
    outputs = _synthesize(ui.client, reference_audio=handle_file(str(audio_dir / "en_16k_mono.wav")))
    playable, download, facts, _notice, history_md, history_files, transcript, captions_file, _live = outputs
    samples, rate = soundfile.read(playable)
    assert rate == 16000
    assert 0 < len(samples) <= 16000 * 1.05
    assert Path(download).suffix == ".wav"
    assert "Seed" in facts
    assert "| 7 |" in facts
    assert "load models" in facts  # the time spent loading the models is a stage of its own
    assert "/api/outputs/" in facts
    # The transcript box was empty, so it shows what the model was conditioned on (tiny Whisper's words).
    assert transcript
    assert "Hello from the web UI." in history_md
    assert len(history_files) == 1
    assert captions_file is None  # none asked for
    assert "Chunk checks" not in facts  # one take, nothing checked: nothing to report per chunk


def test_synthesize_mp3_keeps_a_wav_player_and_lists_the_session(ui: SimpleNamespace, audio_dir: Path) -> None:
    reference = handle_file(str(audio_dir / "en_16k_mono.wav"))
    outputs = _synthesize(
        ui.client, reference_audio=reference, reference_text="Some words.", output_format="mp3", seed=11
    )
    playable, download, facts, *_ = outputs
    assert Path(playable).suffix == ".wav"
    assert Path(download).suffix == ".mp3"
    assert Path(download).read_bytes()[:3] in (b"ID3", b"\xff\xfb", b"\xff\xf3", b"\xff\xf2")
    assert "Some words" in facts


def test_a_long_reference_is_trimmed_with_a_notice(ui: SimpleNamespace, audio_dir: Path) -> None:
    reference = handle_file(str(audio_dir / "en_long_22k.ogg"))  # 24 s; MAX_REFERENCE_SECONDS is 15
    outputs = _synthesize(ui.client, reference_audio=reference, reference_text="Words for the whole clip.")
    notice, facts, transcript = outputs[3], outputs[2], outputs[6]
    assert "longer than 15 s" in notice
    assert re.search(r"first 1[45]\.\d s", notice)  # what was kept (cut at 15 s or just before)
    # The box holds the kept part's words (filled from it on upload, maybe corrected): the UI sends exactly that
    # part, so the model is conditioned on the transcript as given.
    assert "must match them" in notice
    used = facts.split("**Transcript used**: ", 1)[1].split("\n", 1)[0]
    assert used == ui_common.md("Words for the whole clip.")
    assert transcript == "Words for the whole clip."


def test_uploading_a_long_clip_transcribes_only_the_kept_part(ui: SimpleNamespace, audio_dir: Path) -> None:
    heard: list[object] = []
    original = ui.service.transcribe

    def recording(request: TranscriptionRequest) -> object:
        heard.append(request.audio)
        return original(request)

    handlers = app.WebUI(ui.service, ui.settings, ["wav"])
    ui.service.transcribe = recording
    try:
        transcript, notice = handlers.transcribe_upload(str(audio_dir / "en_long_22k.ogg"), "auto", None)
        short_transcript, short_notice = handlers.transcribe_upload(str(audio_dir / "en_16k_mono.wav"), "en", None)
    finally:
        del ui.service.transcribe
    assert "longer than 15 s" in notice
    assert "transcript was made for the part that is used" in notice
    assert isinstance(heard[0], bytes)  # the kept part, not the 24 s file
    kept = soundfile.info(io.BytesIO(heard[0]))
    assert kept.samplerate == 16000
    assert 14.0 <= kept.duration <= 15.0
    assert isinstance(transcript, str)
    assert short_notice == ""
    assert heard[1] == str(audio_dir / "en_16k_mono.wav")  # a short clip is transcribed as it is
    assert short_transcript.strip()


def test_synthesize_with_a_saved_voice(ui: SimpleNamespace, audio_dir: Path) -> None:
    reference = handle_file(str(audio_dir / "en_16k_mono.wav"))
    message, table, *_ = ui.client.predict(
        name="Alice 1",
        reference_audio=reference,
        reference_text="A saved transcript.",
        overwrite=False,
        api_name="/save_voice",
    )
    assert "Alice 1" in message
    assert "A saved transcript" in table
    assert [v.name for v in ui.service.list_voices()] == ["Alice 1"]

    outputs = _synthesize(ui.client, voice_mode="saved", voice="Alice 1", seed=3)
    samples, rate = soundfile.read(outputs[0])
    assert rate == 16000
    assert len(samples) > 0
    assert "Alice 1" in outputs[2]
    assert "A saved transcript" in outputs[2]

    with pytest.raises(AppError, match="already exists") as caught:
        ui.client.predict(
            name="Alice 1", reference_audio=reference, reference_text="x", overwrite=False, api_name="/save_voice"
        )
    assert "Traceback" not in str(caught.value)

    preview, transcript_md = ui.client.predict(name="Alice 1", api_name="/preview_voice")
    assert soundfile.info(preview).samplerate == 16000
    assert "A saved transcript" in transcript_md

    message, table, transcript = ui.client.predict(
        name="Alice 1", transcript="  A corrected   transcript. ", api_name="/update_voice"
    )
    assert "Alice 1" in message
    assert transcript == "A corrected transcript."
    assert "A corrected transcript" in table
    assert ui.service.get_voice("Alice 1").transcript == "A corrected transcript."
    with pytest.raises(AppError, match="transcript is empty"):
        ui.client.predict(name="Alice 1", transcript="  ", api_name="/update_voice")
    with pytest.raises(AppError, match="Nobody"):
        ui.client.predict(name="Nobody", transcript="Words.", api_name="/update_voice")
    assert ui.service.get_voice("Alice 1").transcript == "A corrected transcript."

    message, table, *_ = ui.client.predict(name="Alice 1", api_name="/delete_voice")
    assert "Alice 1" in message
    assert ui.service.list_voices() == []
    with pytest.raises(AppError, match="Alice 1"):
        _synthesize(ui.client, voice_mode="saved", voice="Alice 1")


def test_a_voice_saved_elsewhere_works_from_a_fresh_client(ui: SimpleNamespace, audio_dir: Path) -> None:
    """A voice made over REST or MCP (here: the service itself) is usable at once by a new gradio_client."""
    ui.service.create_voice("narrator", audio_dir / "en_16k_mono.wav", "Words of the narrator.")
    fresh = Client(ui.url, verbose=False, analytics_enabled=False, download_files=str(ui.root / "fresh"))
    try:
        outputs = _synthesize(fresh, voice_mode="saved", voice="narrator", seed=5)
        assert soundfile.info(outputs[0]).samplerate == 16000
        assert "narrator" in outputs[2]
        _preview, transcript = fresh.predict(name="narrator", api_name="/preview_voice")
        assert transcript == "Words of the narrator."
        with pytest.raises(AppError, match="nobody"):  # the service's own clear refusal
            _synthesize(fresh, voice_mode="saved", voice="nobody")
    finally:
        fresh.close()
        ui.service.delete_voice("narrator")


def test_the_python_example_runs(ui: SimpleNamespace, audio_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _curl, _mcp, python = app.WebUI(ui.service, ui.settings, ["wav"]).connection_examples(None)
    assert 'handle_file("reference.wav")' in python
    code = python.replace('"reference.wav"', repr(str(audio_dir / "en_16k_mono.wav")))
    exec(compile(code, "<python example>", "exec"), {})  # the page's own example, run as a user would
    printed = capsys.readouterr().out
    assert ".wav" in printed
    assert "Seed" in printed


def test_errors_are_readable_messages(ui: SimpleNamespace, audio_dir: Path) -> None:
    with pytest.raises(AppError, match="text is empty") as caught:
        _synthesize(ui.client, voice_mode="none", text_input="   ")
    assert "Traceback" not in str(caught.value)
    assert "<" not in str(caught.value)  # plain text for gradio_client users, no HTML
    assert str(caught.value).startswith("Please check the input: ")
    with pytest.raises(AppError, match="limit is 5000"):
        _synthesize(ui.client, voice_mode="none", text_input="a" * 5001)
    with pytest.raises(AppError, match="reference clip"):
        _synthesize(ui.client, voice_mode="reference", reference_audio=None)
    with pytest.raises(AppError, match="greater than maximum"):  # gradio checks the slider's range itself
        _synthesize(ui.client, voice_mode="none", temperature=5)
    silence = handle_file(str(audio_dir / "silence_3s.wav"))
    with pytest.raises(AppError) as caught:
        _synthesize(ui.client, reference_audio=silence)
    assert "silen" in str(caught.value).lower()
    with pytest.raises(AppError, match="language"):
        ui.client.predict(audio=handle_file(str(audio_dir / "en_16k_mono.wav")), language="xx", api_name="/transcribe")


def test_audio_streams_to_the_live_player_before_the_end(ui: SimpleNamespace) -> None:
    """Each audio window reaches the browser as its own update while the synthesis runs; the file at the end is
    exactly those windows joined."""
    job = ui.client.submit(
        voice_mode="none",
        reference_audio=None,
        reference_text="",
        voice=None,
        language="auto",
        text_input="A streamed sentence that goes on for a while.",
        max_seconds=3,
        seed=5,
        output_format="wav",
        api_name="/synthesize",
    )
    final = job.result(timeout=300)
    carriers = [update[-1] for update in job.outputs()[:-1] if isinstance(update[-1], str)]
    # One update per window, each the carrier grown by one piece: several arrived before the end.
    counts = [len(carrier.split(";")) - 1 for carrier in carriers]
    assert len(counts) >= 3, f"only {len(counts)} live updates arrived before the end"
    assert counts == list(range(1, len(counts) + 1))
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(carriers))
    take, *pieces = carriers[-1].split(";")
    assert len(take) == 32
    assert all(piece.split(":")[0] == "16000" for piece in pieces)
    streamed = sum(len(base64.b64decode(piece.split(":")[1])) // 2 for piece in pieces)
    samples, rate = soundfile.read(final[1])
    assert rate == 16000
    assert len(samples) == streamed


def _carriers(job: Any) -> list[str]:
    """The live player's carrier values among a finished job's updates (the final result leaves it unchanged)."""
    return [update[-1] for update in job.outputs()[:-1] if isinstance(update[-1], str)]


def _submit(client: Client, **overrides: object) -> Any:
    arguments: dict[str, object] = {
        "voice_mode": "none",
        "reference_audio": None,
        "reference_text": "",
        "voice": None,
        "language": "auto",
        "text_input": "Hello from the web UI.",
        "max_seconds": 1,
        "seed": 7,
        "output_format": "wav",
    }
    return client.submit(**(arguments | overrides), api_name="/synthesize")


def test_verify_makes_every_take_again_and_reports_each_chunk(ui: SimpleNamespace) -> None:
    """The tiny Whisper hears noise: each chunk is made 1 + QUALITY_RETRIES times and the best take kept, with a
    note. A verified synthesis is not played live (a chunk may be made again): the player gets it at the end."""
    takes = 1 + ui.settings.quality_retries
    job = _submit(ui.client, text_input="Check every word of this.", verify=True, captions="vtt", seed=3)
    playable, _download, facts, *_rest, captions_file, _live = job.result(timeout=300)
    assert _carriers(job) == []
    assert soundfile.info(playable).samplerate == 16000
    table = facts.split("**Chunk checks**:", 1)[1].split("\n\n**", 1)[0]
    header, _rule, *rows = [line for line in table.strip().splitlines() if line.startswith("|")]
    assert header == "| Chunk | Text | Takes | Kept take | Heard | Error rate | Problems |"
    assert len(rows) == 1
    cells = [cell.strip() for cell in rows[0].strip("|").split(" | ")]
    assert cells[:3] == ["1", "Check every word of this.", str(takes)]
    assert 1 <= int(cells[3]) <= takes
    assert cells[4] != "—"  # transcribed (what the tiny Whisper heard, maybe nothing: ∅)
    assert cells[5].endswith("%")
    assert int(cells[5].rstrip("%")) > ui.settings.verify_max_cer * 100
    assert cells[6].count("error rate") == takes
    assert "did not pass every check" in facts.split("**Notes**:", 1)[1]
    assert "verify" in facts.split("**Stage timings**:", 1)[1].split("\n", 1)[0]
    cues = webvtt.from_buffer(io.StringIO(Path(captions_file).read_text(encoding="utf-8")))
    assert " ".join(cue.text for cue in cues) == "Check every word of this."
    assert "**Captions link (REST)**" in facts


def test_captions_come_with_the_live_stream(ui: SimpleNamespace) -> None:
    """Captions without verify: the audio still plays as it is generated (the chunks' reports carry no audio and
    are not sent to the player), the captions file comes at the end and parses with a real SRT parser."""
    job = _submit(ui.client, text_input="Captions, while it plays. 然后是中文。", captions="srt", max_seconds=2)
    _playable, download, facts, *_rest, captions_file, _live = job.result(timeout=300)
    carriers = _carriers(job)
    assert carriers, "the audio should have streamed to the live player"
    streamed = sum(len(base64.b64decode(piece.split(":")[1])) // 2 for piece in carriers[-1].split(";")[1:])
    samples, _rate = soundfile.read(download)
    assert len(samples) == streamed  # no empty report piece reached the player, and nothing was lost
    assert Path(captions_file).suffix == ".srt"
    cues = list(srt.parse(Path(captions_file).read_text(encoding="utf-8")))
    assert "".join(cue.content for cue in cues).replace(" ", "") == "Captions,whileitplays.然后是中文。"
    spans = [(cue.start.total_seconds(), cue.end.total_seconds()) for cue in cues]
    assert all(0 <= start <= end <= len(samples) / 16000 + 1e-3 for start, end in spans)
    row = facts.split("**Chunk checks**:", 1)[1].strip().splitlines()[2]
    assert row.startswith("| 1 | Captions, while it plays. 然后是中文。 | 1 | 1 |")  # heard, not retried
    saved = (
        Path(ui.settings.output_dir) / facts.split("**Captions link (REST)**: `", 1)[1].split("`", 1)[0].split("/")[-1]
    )
    assert saved.read_text(encoding="utf-8") == Path(captions_file).read_text(encoding="utf-8")


def test_verify_defaults_to_the_setting_and_captions_to_none(ui: SimpleNamespace) -> None:
    for verify_default in (False, True):
        settings = ui.settings.model_copy(update={"verify_default": verify_default})
        demo = app.create_ui(ui.service, settings)
        components = {block.elem_id: block for block in demo.blocks.values() if getattr(block, "elem_id", None)}
        assert components["verify"].value is verify_default
        assert components["captions"].value == "none"
        assert [value for _label, value in components["captions"].choices] == ["none", "srt", "vtt", "json"]
    with pytest.raises(AppError, match="not in the list of choices"):
        _synthesize(ui.client, voice_mode="none", captions="ass")


def test_cancel_stops_a_running_synthesis(ui: SimpleNamespace) -> None:
    before = set((ui.root / "outputs").iterdir())
    # The tiny model never ends a take, so each runs to the run-on guard's bound for its text (1,341 codes for
    # this sentence, under max_seconds' 3,000) and is made again: long enough to be caught while it generates.
    # (A short text's bound is a few hundred codes, over in a moment on a quiet machine.)
    job = ui.client.submit(
        voice_mode="none",
        reference_audio=None,
        reference_text="",
        voice=None,
        language="auto",
        text_input="A long one, told slowly: it goes on and on about the weather, the sea, the hills and the town, "
        "and then it starts all over again.",
        max_seconds=60,
        seed=1,
        output_format="wav",
        api_name="/synthesize",
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not job.done():
        progress = job.status().progress_data or []
        # The page's progress can lag the whole generation (about 4 s here, so it was sometimes never seen):
        # the engine's own count of running sequences says at once that the synthesis generates.
        if ui.service.engine_status().running > 0 or any(
            (unit.desc or "").startswith("Generating") for unit in progress
        ):
            break
        time.sleep(0.05)
    assert not job.done(), "the synthesis ended before it could be cancelled"
    ui.client.predict(api_name="/cancel")
    job.result(timeout=120)
    assert set((ui.root / "outputs").iterdir()) == before  # nothing was produced
    status = ui.service.gpu_status()
    assert status.queue.busy is False
    assert all(model.leases == 0 for model in status.models.values())


def test_chinese_visitors_get_chinese_errors_and_notes(ui: SimpleNamespace, audio_dir: Path) -> None:
    chinese = Client(
        ui.url,
        verbose=False,
        analytics_enabled=False,
        headers={"Accept-Language": "zh-CN,zh;q=0.9"},
        download_files=str(ui.root / "zh"),
    )
    try:
        with pytest.raises(AppError) as caught:
            _synthesize(chinese, voice_mode="none", text_input="   ")
        assert str(caught.value).startswith("请检查输入: ")
        assert "<" not in str(caught.value)
        reference = handle_file(str(audio_dir / "en_long_22k.ogg"))
        outputs = _synthesize(chinese, reference_audio=reference, reference_text="整段的文字。")
    finally:
        chinese.close()
    notice, facts = outputs[3], outputs[2]
    assert "参考音频超过 15 秒" in notice
    notes = facts.split("**提示**:", 1)[1]
    assert "参考音频超过 15 秒" in notes
    assert "trimmed" not in notes  # the service's English note is replaced by the page's own words
    assert "加载模型" in facts


# --- transcription --------------------------------------------------------------------------------------------


def test_transcribe(ui: SimpleNamespace, audio_dir: Path) -> None:
    transcript = ui.client.predict(
        audio=handle_file(str(audio_dir / "en_16k_mono.wav")), language="en", api_name="/transcribe"
    )
    # The tiny Whisper is random: it says something, not the words of the clip.
    assert isinstance(transcript, str)
    assert transcript.strip()
    with pytest.raises(AppError, match="audio"):
        ui.client.predict(audio=None, language="auto", api_name="/transcribe")


# --- the page itself ------------------------------------------------------------------------------------------


def test_page_answers_in_both_languages_and_shows_real_ports(ui: SimpleNamespace) -> None:
    page = requests.get(ui.url, timeout=30)
    assert page.status_code == 200
    config = requests.get(ui.url + "config", timeout=30).json()
    translations = config["i18n_translations"]
    assert translations["zh-CN"]["generate_btn"] == "生成语音"
    assert translations["en"]["generate_btn"] == "Generate"
    ui_handlers = app.WebUI(ui.service, ui.settings, ["wav"])
    curl, mcp, python = ui_handlers.connection_examples(None)
    assert f"http://127.0.0.1:{ui.settings.api_port}/api/tts" in curl
    assert f"http://127.0.0.1:{ui.settings.mcp_port}/mcp" in mcp
    assert f"http://127.0.0.1:{ui.settings.ui_port}/" in python
    assert "Authorization" not in curl  # no API_KEY set


def test_gradio_auth_protects_the_page(ui: SimpleNamespace) -> None:
    settings = ui.settings.model_copy(update={"ui_port": _free_port(), "gradio_auth": "tester:s3cret:x"})
    demo = app.create_ui(ui.service, settings)
    url = app.launch_ui(demo, settings, prevent_thread_lock=True)
    try:
        assert requests.get(url + "config", timeout=30).status_code == 401
        wrong = requests.post(url + "login", data={"username": "tester", "password": "nope"}, timeout=30)
        assert wrong.status_code == 400
        client = Client(url, auth=("tester", "s3cret:x"), verbose=False, analytics_enabled=False)
        try:
            _table, _card, status = client.predict(api_name="/gpu_status")
        finally:
            client.close()
        assert "models" in status
    finally:
        demo.close()


def test_one_synthesis_at_a_time(ui: SimpleNamespace) -> None:
    """Two clients at once: the shared gpu concurrency group runs them one after the other."""
    peak = 0
    running = 0
    lock = threading.Lock()
    original = ui.service.synthesize_stream

    def counting(*args: object, **kwargs: object) -> Iterator[object]:
        nonlocal peak, running
        with lock:
            running += 1
            peak = max(peak, running)
        try:
            yield from original(*args, **kwargs)
        finally:
            with lock:
                running -= 1

    ui.service.synthesize_stream = counting
    try:
        other = Client(ui.url, verbose=False, analytics_enabled=False)
        try:
            jobs = [
                client.submit(
                    voice_mode="none",
                    reference_audio=None,
                    reference_text="",
                    voice=None,
                    language="auto",
                    text_input=f"Client {n}.",
                    max_seconds=1,
                    seed=n,
                    output_format="wav",
                    api_name="/synthesize",
                )
                for n, client in enumerate((ui.client, other))
            ]
            results = [job.result(timeout=120) for job in jobs]
        finally:
            other.close()
    finally:
        del ui.service.synthesize_stream
    assert all(Path(result[0]).is_file() for result in results)
    assert peak == 1


# --- GPU panel (last: it releases the models) ----------------------------------------------------------------


def test_gpu_status_offload_release_and_timeouts(ui: SimpleNamespace, audio_dir: Path) -> None:
    _synthesize(ui.client, voice_mode="none")  # make sure Llasa and XCodec2 are loaded
    table, card, status = ui.client.predict(api_name="/gpu_status")
    assert set(status["models"]) == {"llasa", "xcodec2", "whisper"}
    for name in ("llasa", "xcodec2"):
        assert status["models"][name]["state"] in ("gpu", "cpu")
        assert f"**{name}**" in table
    assert "No CUDA GPU" in card
    assert "Requests waiting for the GPU: 0" in card

    message, _table, _card, status = ui.client.predict(model="llasa", api_name="/offload")
    assert "Offload" in message
    assert "llasa" in message
    assert status["models"]["llasa"]["state"] == "cpu"

    message, _table, _card, status = ui.client.predict(
        idle_timeout_s=120, evict_timeout_s=900, offload_after_use=False, api_name="/set_timeouts"
    )
    assert status["settings"]["idle_timeout_s"] == 120
    assert status["settings"]["evict_timeout_s"] == 900
    assert status["settings"]["offload_after_use"] is False
    with pytest.raises(AppError, match="less than minimum"):  # the input's own range
        ui.client.predict(idle_timeout_s=-5, evict_timeout_s=900, offload_after_use=True, api_name="/set_timeouts")
    ui.client.predict(idle_timeout_s=600, evict_timeout_s=1800, offload_after_use=True, api_name="/set_timeouts")

    message, table, _card, status = ui.client.predict(model="all", api_name="/release")
    assert "Release" in message
    assert {model["state"] for model in status["models"].values()} == {"unloaded"}
    assert table.count("unloaded") == 3
