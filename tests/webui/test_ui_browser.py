"""End to end in a real browser: headless Chromium (Debian's `chromium`) driven by playwright.

A person's path through the page: open it, upload a reference clip, wait for its transcript, type the text, press
Generate, and get a result the browser can play. Any console error or uncaught page error fails the test. The page
is also opened in Chinese with a dark colour scheme. Screenshots are kept under each test's tmp_path.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import tiny_settings
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

import app
from llasa.service import TTSService

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
TIMEOUT_MS = 90_000  # first use loads the tiny models; generous for a busy 2-core machine


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ui(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    root = tmp_path_factory.mktemp("ui-browser")
    # max_audio_seconds: the Advanced slider starts here, a quick generation.
    settings = tiny_settings(tiny_models, root, ui_port=_free_port(), max_audio_seconds=1.0)
    service = TTSService(settings)
    demo = app.create_ui(service, settings)
    url = app.launch_ui(demo, settings, prevent_thread_lock=True)
    try:
        yield SimpleNamespace(settings=settings, service=service, url=url)
    finally:
        demo.close()
        service.shutdown()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("Debian's chromium is not installed: run ./test_all.sh as root, or apt-get install -y chromium")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


class _Problems:
    """Console errors and uncaught exceptions of one page."""

    def __init__(self, page: Page) -> None:
        self.items: list[str] = []
        page.on("console", self._on_console)
        page.on("pageerror", lambda error: self.items.append(f"pageerror: {error}"))

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.items.append(f"console.error: {message.text} @ {message.location}")


def _open(browser: Browser, url: str, *, locale: str, color_scheme: str) -> tuple[Page, _Problems]:
    context = browser.new_context(locale=locale, color_scheme=color_scheme, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    problems = _Problems(page)
    page.goto(url)
    page.wait_for_selector("#reference-audio")
    return page, problems


def test_clone_a_voice_in_the_browser(ui: SimpleNamespace, browser: Browser, audio_dir: Path, tmp_path: Path) -> None:
    page, problems = _open(browser, ui.url, locale="en-US", color_scheme="light")
    try:
        page.locator("#reference-audio input[type=file]").set_input_files(str(audio_dir / "en_16k_mono.wav"))
        # The upload transcribes on its own and fills the (editable) transcript box.
        page.wait_for_function("() => document.querySelector('#reference-text textarea').value.trim().length > 0")
        page.locator("#text-input textarea").fill("Hello from a real browser.")
        assert page.locator("#char-count").inner_text().strip() == f"26 / {ui.settings.max_text_chars}"
        # Verification starts as VERIFY_DEFAULT says (off here, so the audio plays while it is generated).
        assert page.get_by_label("Verify with speech recognition").is_checked() is ui.settings.verify_default
        page.locator("#generate").click()

        # A playable result: the browser's <audio> got a src, loaded its metadata and knows the duration.
        src = page.wait_for_function(
            """() => {
                const audio = document.querySelector('#result-audio audio');
                return audio && audio.src && audio.readyState >= 1 && audio.duration > 0 ? audio.src : null;
            }"""
        ).json_value()
        fetched = page.evaluate(
            """async (src) => { const r = await fetch(src);
                return [r.status, r.headers.get('content-type'), (await r.arrayBuffer()).byteLength]; }""",
            src,
        )
        assert fetched[0] in (200, 206)
        assert fetched[1].startswith("audio/")
        assert fetched[2] > 44  # more than a bare WAV header
        duration_s = page.evaluate("() => document.querySelector('#result-audio audio').duration")
        assert 0 < duration_s <= 1.1
        # The live player scheduled the audio piece by piece while it was generated: the same length in all.
        live = page.evaluate("() => [window.llasaLivePieces || 0, window.llasaLiveSeconds || 0]")
        assert live[0] >= 2, f"the live player got {live[0]} pieces"
        assert live[1] == pytest.approx(duration_s, abs=0.01)
        download = page.locator("#result-file a[download]").first
        assert download.get_attribute("href")
        assert "Real-time factor" in page.locator("#facts").inner_text()
        assert not page.locator("#captions-file").is_visible()  # no captions were asked for
        assert "Hello from a real browser." in page.locator("#history").inner_text()

        page.screenshot(path=str(tmp_path / "synthesize-en.png"), full_page=True)
        assert (tmp_path / "synthesize-en.png").stat().st_size > 10_000
    finally:
        page.context.close()
    assert problems.items == []


def test_chinese_dark_page_and_the_other_tabs(ui: SimpleNamespace, browser: Browser, tmp_path: Path) -> None:
    page, problems = _open(browser, ui.url, locale="zh-CN", color_scheme="dark")
    try:
        for label in ("语音合成", "音色库", "GPU 管理", "使用说明"):
            assert page.get_by_role("tab", name=label).is_visible()
        assert page.get_by_role("button", name="生成语音").is_visible()
        assert page.get_by_text("参考音频文本").first.is_visible()
        assert page.get_by_label("用语音识别校验").is_visible()
        assert page.evaluate("() => document.body.classList.contains('dark')") or page.evaluate(
            "() => !!document.querySelector('.dark')"
        )
        page.screenshot(path=str(tmp_path / "synthesize-zh-dark.png"), full_page=True)

        page.get_by_role("tab", name="GPU 管理").click()
        page.wait_for_function("() => document.querySelector('#gpu-models').innerText.includes('llasa')")
        assert "模型" in page.locator("#gpu-models").inner_text()
        page.screenshot(path=str(tmp_path / "gpu-zh-dark.png"), full_page=True)

        page.get_by_role("tab", name="API 与 MCP").click()
        page.wait_for_function(
            "(port) => document.body.innerText.includes(':' + port + '/mcp')", arg=ui.settings.mcp_port
        )
        assert f"127.0.0.1:{ui.settings.api_port}/api/tts" in page.locator("body").inner_text()
        page.screenshot(path=str(tmp_path / "api-zh-dark.png"), full_page=True)
    finally:
        page.context.close()
    assert problems.items == []
