"""The GPU tab: each model's state, the card's memory, offload / release, timeouts."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import gradio as gr

from faces.webui.common import (
    ALL_MODELS,
    GPU_ADMIN,
    GPU_REFRESH_S,
    LIGHT,
    bytes_text,
    lang_of,
    md,
    optional_number,
    seconds_text,
)
from faces.webui.handlers import WebUIBase
from faces.webui.i18n import STRINGS, text
from llasa.config import Settings
from llasa.types import MANAGEABLE_MODEL_NAMES, MODEL_NAMES, DeviceStatus

logger = logging.getLogger(__name__)


class GPUHandlers(WebUIBase):
    """The GPU tab handlers (a mixin of `faces.webui.page.WebUI`)."""

    def _gpu_views(self, lang: str) -> tuple[str, str, dict[str, Any]]:
        status = self.service.gpu_status()
        columns = ("col_model", "col_state", "col_device", "col_memory", "col_idle", "col_leases", "col_loads")
        rows = [
            "| " + " | ".join(text(lang, c) for c in columns) + " |",
            "|" + "---|" * len(columns),
        ]
        for name, info in status.models.items():
            rows.append(
                f"| **{md(name)}** | {md(self._state_text(info.state, lang))} "
                f"| {md(info.device or '–')} "
                f"| {bytes_text(info.size_bytes)} "
                f"| {seconds_text(info.idle_s, lang)} "
                f"| {info.leases} "
                f"| {info.loads} / {info.offloads} |"
            )
        card = self._card_markdown(status.device, lang)
        return "\n".join(rows), card, status.to_dict()

    @staticmethod
    def _state_text(state: object, lang: str) -> str:
        key = f"state_{state}"
        return text(lang, key) if key in STRINGS["en"] else str(state or "–")

    def _card_markdown(self, device: DeviceStatus, lang: str) -> str:
        lines = []
        if device.kind == "cpu":
            lines.append(text(lang, "card_none"))
        if device.total_bytes:
            lines.append(
                text(
                    lang,
                    "card_line",
                    name=md(device.name),
                    used=bytes_text(device.used_bytes),
                    free=bytes_text(device.free_bytes),
                    total=bytes_text(device.total_bytes),
                )
            )
            if device.process_bytes is not None:
                lines.append(text(lang, "card_process", bytes=bytes_text(device.process_bytes)))
        lines.append(text(lang, "queue_line", depth=self.service.queue_depth))
        return "  \n".join(lines)

    def gpu_status(self, request: gr.Request) -> tuple[str, str, dict[str, Any]]:
        """Each model's state, device, memory and idle time; the card's memory; the raw status dict."""
        lang = lang_of(request)
        with self._user_errors(lang):
            return self._gpu_views(lang)

    def show_gpu_tab(self, request: gr.Request) -> tuple[Any, ...]:
        """Start the auto-refresh timer and show the status at once."""
        return (gr.Timer(active=True), *self.gpu_status(request))

    def _gpu_action(self, action: str, model: str | None, request: gr.Request) -> tuple[str, str, str, dict]:
        lang = lang_of(request)
        target = None if not model or model == ALL_MODELS else model
        with self._user_errors(lang):
            outcome = self.service.offload(target) if action == "offload" else self.service.release(target)
            table, card, status = self._gpu_views(lang)
        per_model = outcome.get("models", outcome) if isinstance(outcome, dict) else {}
        detail = ", ".join(f"{k}: {v}" for k, v in per_model.items()) if per_model else str(outcome)
        message = text(lang, "gpu_done", action=text(lang, f"action_{action}"), detail=md(detail))
        return message, table, card, status

    def offload(self, model: str | None, request: gr.Request) -> tuple[str, str, str, dict]:
        """Move one model (or all) from the GPU to CPU RAM; a model in use moves when its request ends."""
        return self._gpu_action("offload", model, request)

    def release(self, model: str | None, request: gr.Request) -> tuple[str, str, str, dict]:
        """Drop one model (or all) from memory altogether; it is loaded again on the next request."""
        return self._gpu_action("release", model, request)

    def set_timeouts(
        self,
        idle_timeout_s: float | None,
        evict_timeout_s: float | None,
        offload_after_use: bool | None,
        request: gr.Request,
    ) -> tuple[str, str, str, dict]:
        """Change the GPU idle timeout, the RAM eviction timeout and offload-after-use for this process."""
        lang = lang_of(request)
        with self._user_errors(lang):
            self.service.set_timeouts(
                idle_timeout_s=optional_number(idle_timeout_s),
                evict_timeout_s=optional_number(evict_timeout_s),
                offload_after_use=None if offload_after_use is None else bool(offload_after_use),
            )
            table, card, status = self._gpu_views(lang)
        message = text(
            lang,
            "timeouts_set",
            idle=seconds_text(optional_number(idle_timeout_s), lang),
            evict=seconds_text(optional_number(evict_timeout_s), lang),
            after="✓" if offload_after_use else "✗",
        )
        return message, table, card, status

    def timeout_values(self) -> tuple[float, float, bool]:
        """The manager's current timeouts, for the GPU tab's inputs."""
        policy = self.service.gpu_status().settings
        return policy.idle_timeout_s, policy.evict_timeout_s, policy.offload_after_use


def _model_choices(settings: Settings) -> tuple[str, ...]:
    """The models the panel can offload or release: the three, and a managed vLLM server with LLASA_ENGINE=vllm."""
    return MANAGEABLE_MODEL_NAMES if settings.llasa_engine == "vllm" else MODEL_NAMES


def create_gpu_tab(settings: Settings, t: gr.I18n) -> SimpleNamespace:
    """The tab's components (call inside `gr.Tabs()`); `create_ui` wires the events that span tabs."""
    # --- GPU ------------------------------------------------------------------------------------
    with gr.Tab(t("tab_gpu"), id="gpu") as gpu_tab:
        gr.Markdown(t("gpu_intro_md"))
        card = gr.Markdown(elem_id="gpu-card")
        models_table = gr.Markdown(elem_id="gpu-models")
        with gr.Row():
            gpu_model = gr.Dropdown(
                [(t("all_models"), ALL_MODELS), *((name, name) for name in _model_choices(settings))],
                value=ALL_MODELS,
                label=t("gpu_model"),
                scale=2,
            )
            offload_btn = gr.Button(t("offload_btn"), scale=1)
            release_btn = gr.Button(t("release_btn"), variant="stop", scale=1)
            refresh_gpu_btn = gr.Button(t("refresh"), scale=1)
        gpu_message = gr.Markdown()
        with gr.Row():
            idle_timeout = gr.Number(
                value=settings.gpu_idle_timeout,
                minimum=-1,
                label=t("idle_timeout"),
                info=t("idle_timeout_info"),
            )
            evict_timeout = gr.Number(
                value=settings.model_evict_timeout,
                minimum=-1,
                label=t("evict_timeout"),
                info=t("evict_timeout_info"),
            )
            with gr.Column():
                offload_after_use = gr.Checkbox(value=settings.gpu_offload_after_use, label=t("offload_after_use"))
                apply_btn = gr.Button(t("apply_btn"))
        with gr.Accordion(t("raw_status"), open=False):
            raw_status = gr.JSON()
        timer = gr.Timer(GPU_REFRESH_S, active=False)

    return SimpleNamespace(
        gpu_tab=gpu_tab,
        card=card,
        models_table=models_table,
        gpu_message=gpu_message,
        timer=timer,
        gpu_model=gpu_model,
        offload_btn=offload_btn,
        release_btn=release_btn,
        refresh_gpu_btn=refresh_gpu_btn,
        idle_timeout=idle_timeout,
        evict_timeout=evict_timeout,
        raw_status=raw_status,
        offload_after_use=offload_after_use,
        apply_btn=apply_btn,
    )


def wire_gpu_events(ui: GPUHandlers, page: SimpleNamespace, settings: Settings) -> None:
    """This tab's events; `page` holds every tab's components."""
    admin, light = GPU_ADMIN, LIGHT
    page.refresh_gpu_btn.click(ui.gpu_status, outputs=page.gpu_views, api_name="gpu_status", **light)
    page.timer.tick(ui.gpu_status, outputs=page.gpu_views, api_visibility="private", **light)
    page.offload_btn.click(
        ui.offload, inputs=[page.gpu_model], outputs=[page.gpu_message, *page.gpu_views], api_name="offload", **admin
    )
    page.release_btn.click(
        ui.release, inputs=[page.gpu_model], outputs=[page.gpu_message, *page.gpu_views], api_name="release", **admin
    )
    page.apply_btn.click(
        ui.set_timeouts,
        inputs=[page.idle_timeout, page.evict_timeout, page.offload_after_use],
        outputs=[page.gpu_message, *page.gpu_views],
        api_name="set_timeouts",
        **admin,
    )
    # The panel refreshes itself only while it is shown.
    page.gpu_tab.select(
        ui.show_gpu_tab,
        outputs=[page.timer, *page.gpu_views],
        api_visibility="private",
        **light,
    )
