"""The handlers' shared base: the service, the error mapping to gr.Error, and cancelling a session's synthesis."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import gradio as gr

from faces.webui.i18n import STRINGS, text
from llasa.config import Settings
from llasa.errors import Busy, TTSError

if TYPE_CHECKING:
    from llasa.service import TTSService

logger = logging.getLogger(__name__)


class WebUIBase:
    """The event handlers. Parameter names are the API parameter names that gradio_client callers use."""

    def __init__(self, service: TTSService, settings: Settings, formats: list[str]) -> None:
        self.service = service
        self.settings = settings
        self.formats = formats
        # session hash -> cancel flag of the synthesis that session is running now
        self._running: dict[str, threading.Event] = {}
        self._running_lock = threading.Lock()

    # --- errors -------------------------------------------------------------------------------------------

    @staticmethod
    def _error(lang: str, message: str, code: str = "invalid_input") -> gr.Error:
        title_key = f"error_{code}"
        title = text(lang, title_key if title_key in STRINGS["en"] else "error_title")
        # gradio's toast heading is its own untranslated "Error", so the message leads with the localised title.
        # Plain text, not HTML: gradio_client users read this string as it is.
        return gr.Error(f"{title}: {message}", title=title, print_exception=False)

    @contextmanager
    def _user_errors(self, lang: str) -> Iterator[None]:
        """Map service errors to readable gr.Error messages; never show a stack trace to the user."""
        try:
            yield
        except gr.Error:
            raise
        except TTSError as exc:
            message = exc.message
            if isinstance(exc, Busy):
                message += " " + text(lang, "retry_after", seconds=exc.retry_after_s)
            logger.info("UI request refused: %s (%s)", exc.message, exc.code)
            raise self._error(lang, message, exc.code) from exc
        except Exception as exc:
            logger.exception("UI request failed")
            raise self._error(lang, text(lang, "error_internal"), "internal_error") from exc

    # --- cancel -------------------------------------------------------------------------------------------

    @contextmanager
    def _cancel_scope(self, request: gr.Request | None) -> Iterator[threading.Event]:
        key = getattr(request, "session_hash", None) or "-"
        event = threading.Event()
        with self._running_lock:
            self._running[key] = event
        try:
            yield event
        finally:
            with self._running_lock:
                if self._running.get(key) is event:
                    del self._running[key]

    def cancel(self, request: gr.Request) -> None:
        """Stop this browser session's running synthesis (the service checks the flag between tokens)."""
        key = getattr(request, "session_hash", None) or "-"
        with self._running_lock:
            event = self._running.get(key)
        if event is not None:
            event.set()
            logger.info("synthesis cancelled from the web UI")
