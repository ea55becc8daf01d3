"""Chinese and English text of the web UI, in one table.

The same table serves two purposes:
- static labels go to the browser through `gr.I18n` (`build_i18n`), and the browser picks the language from
  `navigator.language` (zh, zh-CN, zh-TW... get Chinese, everything else English);
- text made at request time (progress, errors, tables, notices) is looked up here with `text(lang, key)`,
  where `lang` comes from the request's Accept-Language header (`language_of`), which browsers set to the
  same language.

Placeholders in `{braces}` are filled from the settings at build time (`{max_text_chars}`) or from the call
(`text(lang, "stage_generate", i=1, n=3)`). Keep every key in both languages; `tests/test_ui.py` checks that.
"""

from __future__ import annotations

from typing import Any

LANGUAGES = ("en", "zh")

_EN: dict[str, str] = {
    # --- page -------------------------------------------------------------------------------------------------
    "title": "Llasa voice cloning",
    "header_md": (
        "# Llasa TTS\nClone a voice from a few seconds of speech and have it read any text, in Chinese or English."
    ),
    "tab_synth": "Synthesize",
    "tab_voices": "Voices",
    "tab_gpu": "GPU",
    "tab_api": "API & MCP",
    "tab_help": "Guide",
    # --- synthesize: reference ----------------------------------------------------------------------------------
    "voice_mode": "Voice",
    "mode_reference": "Reference clip",
    "mode_saved": "Saved voice",
    "mode_none": "Model's own voice",
    "ref_audio": "Reference audio (upload or record 3-15 s of clear speech)",
    "transcript": "Reference transcript",
    "transcript_info": "Filled in automatically after an upload; correct it if needed, it must match the audio.",
    "transcript_placeholder": "What the reference clip says",
    "language": "Language",
    "language_info": "Of the reference, for transcription (auto = detect)",
    "transcribe_btn": "Transcribe",
    "saved_voice": "Saved voice",
    "saved_voice_info": "Manage the library on the Voices tab",
    "refresh": "Refresh",
    # --- synthesize: text and parameters -----------------------------------------------------------------------
    "text": "Text to speak",
    "text_info": "Up to {max_text_chars} characters; long text is split at sentence ends and joined smoothly.",
    "text_placeholder": "Type or paste the text to read aloud, in Chinese or English",
    "advanced": "Advanced settings",
    "temperature": "Temperature",
    "temperature_info": "Higher = livelier and more varied, lower = steadier",
    "top_p": "Top-p",
    "top_p_info": "Nucleus sampling (1 = off)",
    "top_k": "Top-k",
    "top_k_info": "Sample from the k likeliest codes (0 = off)",
    "repetition_penalty": "Repetition penalty",
    "repetition_penalty_info": "Above 1 discourages repeated sounds (1 = off)",
    "max_seconds": "Maximum seconds per chunk",
    "max_seconds_info": "Upper bound on the audio generated for one text chunk",
    "seed": "Seed",
    "seed_info": "-1 = random; the seed used is shown with the result, reuse it to repeat a take",
    "output_format": "Download format",
    "verify": "Verify with speech recognition",
    "verify_info": "Whisper listens to every chunk and a misread one is generated again (slower; the audio plays "
    "once it is checked)",
    "captions": "Captions",
    "captions_info": "Word-timed subtitles of the result, to download",
    "captions_none": "None",
    "generate_btn": "Generate",
    "cancel_btn": "Cancel",
    "examples": "Examples (click to use)",
    # --- synthesize: result ----------------------------------------------------------------------------------
    "result_audio": "Result",
    "result_file": "Download",
    "captions_file": "Captions",
    "history": "This session's results",
    "history_files": "Files of this session",
    "history_empty": "_Nothing generated yet in this session._",
    "facts_empty": "_Press Generate; the duration, speed and timings appear here._",
    # --- voices ----------------------------------------------------------------------------------------------
    "voices_intro_md": (
        "Save the reference clip and transcript from the **Synthesize** tab as a named voice. "
        "Saved voices skip transcription and encoding, and the REST API and MCP tools use the same library."
    ),
    "voice_name": "Voice name",
    "voice_name_placeholder": "e.g. alice, 小明",
    "overwrite": "Replace a voice with this name",
    "save_voice_btn": "Save current reference as a voice",
    "voice_list": "Saved voices",
    "voice_list_md": "### Saved voices",
    "voice_pick": "Voice",
    "preview_audio": "Preview",
    "delete_btn": "Delete this voice",
    "voice_transcript": "Transcript of this voice",
    "voice_transcript_info": "The exact words spoken in the voice's clip; fix them here and save.",
    "update_voice_btn": "Save transcript",
    "voice_updated": "Transcript of voice **{name}** saved.",
    # --- GPU -------------------------------------------------------------------------------------------------
    "gpu_intro_md": (
        "Models sit on the GPU only while they work: after a request they move to CPU RAM (fast to bring back) "
        "and after a longer idle time they are released. This panel refreshes itself every few seconds."
    ),
    "gpu_model": "Model",
    "all_models": "All models",
    "offload_btn": "Offload to CPU",
    "release_btn": "Release (free memory)",
    "idle_timeout": "GPU idle timeout (s)",
    "idle_timeout_info": "Idle time on the GPU before offloading to CPU, when not offloading after each use "
    "(0 = at once, -1 = never)",
    "evict_timeout": "Release after idle in RAM (s)",
    "evict_timeout_info": "Idle time in CPU RAM before a model is released (0 = at once, -1 = never)",
    "offload_after_use": "Offload to CPU right after each use",
    "apply_btn": "Apply",
    "raw_status": "Raw status (JSON)",
    # --- API & MCP -------------------------------------------------------------------------------------------
    "api_intro_md": (
        "The same service is reachable from scripts (REST, Swagger UI at `/apidocs` on the API port), from AI "
        "assistants (MCP, streamable HTTP) and from Python through this page's own API (`gradio_client`). "
        "All share one GPU queue with this page."
    ),
    "curl_examples": "REST examples (curl)",
    "mcp_config": "MCP client configuration",
    "python_client": "Python (gradio_client)",
    # --- guide -----------------------------------------------------------------------------------------------
    "usage_md": (
        "## How to clone a voice\n"
        "1. **Reference**: upload (or record) 3-15 seconds of one person speaking clearly, without music or "
        "noise. Longer clips are trimmed to 15 s.\n"
        "2. **Transcript**: it is filled in automatically; check it word for word. The model learns the voice from "
        "the pairing of audio and text, so a wrong transcript gives a worse voice.\n"
        "3. **Text**: type what the voice should say. Long texts are split at sentence ends, every part uses the "
        "same reference, and the parts are joined smoothly.\n"
        "4. Press **Generate**. The progress bar counts the chunks; **Cancel** stops a long run.\n"
        "5. Play or download the result; the seed is shown, so a good take can be repeated.\n\n"
        "## Tips\n"
        "- Save a reference you like on the **Voices** tab: saved voices start faster and are shared with the API.\n"
        "- Temperature 0.6-0.9 suits most voices; lower it if words are skipped or repeated.\n"
        "- Chinese and English can be mixed in one text; punctuation helps the pauses.\n"
        "- The GPU runs one synthesis at a time; other requests wait in a queue and see their position.\n"
        "- Browsers allow the microphone only on https:// pages or on localhost; elsewhere, upload a file.\n"
        "- **Verify with speech recognition** has Whisper listen to every chunk and generate a misread one "
        "again; the table under the result shows what it heard. **Captions** gives a subtitle file (SRT, "
        "WebVTT) or word timings (JSON) with the result.\n\n"
        "## Examples\n"
        "- English: *The quick brown fox jumps over the lazy dog. It was a bright cold day in April.*\n"
        "- 中文：*今天天气真好，我们一起去公园散步吧。*\n"
    ),
    # --- dynamic: progress ------------------------------------------------------------------------------------
    "stage_queue": "Waiting for the GPU",
    "stage_transcribe": "Transcribing the reference",
    "stage_encode": "Encoding the reference",
    "stage_generate": "Generating chunk {i} of {n}",
    "stage_decode": "Decoding chunk {i} of {n}",
    "stage_chunk_done": "{done} of {n} chunks done",
    "unit_chunks": "chunks",
    # --- dynamic: results -------------------------------------------------------------------------------------
    "fact_duration": "Duration",
    "fact_rtf": "Real-time factor",
    "fact_rtf_hint": "wall time / audio time, below 1 is faster than real time",
    "fact_chunks": "Chunks",
    "fact_seed": "Seed",
    "fact_voice": "Voice",
    "fact_reference": "Reference",
    "fact_reference_text": "Transcript used",
    "fact_timings": "Stage timings",
    "fact_link": "Download link (REST)",
    "fact_captions_link": "Captions link (REST)",
    "fact_chunk_reports": "Chunk checks",
    "fact_notes": "Notes",
    "stage_name_load": "load models",
    "stage_name_transcribe": "transcribe",
    "stage_name_encode": "encode",
    "stage_name_generate": "generate",
    "stage_name_decode": "decode",
    "stage_name_verify": "verify",
    "stage_name_total": "total",
    "trimmed_notice": (
        "⚠️ The reference clip was longer than {max_s:g} s, so only its first {kept_s:.1f} s were used "
        "(the model was trained on clips up to {max_s:g} s)."
    ),
    "transcript_redone": "The transcript was made for the part that is used (the kept {kept_s:.1f} s).",
    "transcript_for_kept": "The transcript was used as the words of the kept {kept_s:.1f} s; it must match them.",
    "col_time": "Time",
    "col_text": "Text",
    "col_voice": "Voice",
    "col_duration": "Duration",
    "col_rtf": "RTF",
    "col_seed": "Seed",
    "col_file": "File",
    "col_chunk": "Chunk",
    "col_attempts": "Takes",
    "col_kept": "Kept take",
    "col_heard": "Heard",
    "col_error_rate": "Error rate",
    "col_problems": "Problems",
    "no_reference": "none (model's own voice)",
    "uploaded_clip": "uploaded clip",
    # --- dynamic: voices --------------------------------------------------------------------------------------
    "col_name": "Name",
    "col_transcript": "Transcript",
    "col_created": "Created",
    "voices_empty": "_No saved voices yet. Save one from a reference clip above._",
    "voice_saved": "Voice **{name}** saved ({duration_s:.1f} s).",
    "voice_deleted": "Voice **{name}** deleted.",
    # --- dynamic: GPU -----------------------------------------------------------------------------------------
    "state_gpu": "on GPU",
    "state_cpu": "in CPU RAM",
    "state_loading": "loading",
    "state_unloaded": "unloaded",
    "col_model": "Model",
    "col_state": "State",
    "col_device": "Device",
    "col_memory": "Memory",
    "col_idle": "Idle",
    "col_leases": "In use",
    "col_loads": "Loads / offloads",
    "card_line": "**{name}**: {used} used, {free} free of {total}",
    "card_process": "this service: {bytes}",
    "card_none": "No CUDA GPU: the models run on the CPU (the memory below is RAM).",
    "queue_line": "Requests waiting for the GPU: {depth}",
    "gpu_done": "{action}: {detail}",
    "action_offload": "Offload",
    "action_release": "Release",
    "timeouts_set": "Timeouts updated: idle {idle}, release {evict}, offload after use {after}.",
    "never": "never",
    # --- dynamic: errors and messages -------------------------------------------------------------------------
    "error_title": "Error",
    "error_invalid_input": "Please check the input",
    "error_audio_too_short": "Reference audio too short",
    "error_silent_audio": "Reference audio is silent",
    "error_not_found": "Not found",
    "error_voice_not_found": "Voice not found",
    "error_voice_exists": "Voice already exists",
    "error_payload_too_large": "File too large",
    "error_unsupported_audio": "Unsupported audio",
    "error_path_not_allowed": "Path not allowed",
    "error_unauthorized": "Not authorised",
    "error_cancelled": "Cancelled",
    "error_busy": "GPU busy",
    "error_queue_full": "Queue full",
    "error_model_unavailable": "Model unavailable",
    "error_generation_failed": "Generation failed",
    "error_internal": "Something went wrong on the server; the details are in the server log. Please try again.",
    "retry_after": "Try again in about {seconds:.0f} s.",
    "need_reference": "Upload or record a reference clip, or choose “Saved voice” or “Model's own voice”.",
    "need_voice": "Choose a saved voice, or switch to “Reference clip”.",
    "need_audio": "Upload or record audio first.",
    "need_voice_name": "Type a name for the voice.",
    "no_speech": "No speech was recognised in this clip; type its transcript yourself.",
    "cancelled": "The generation was cancelled.",
}

_ZH: dict[str, str] = {
    "title": "Llasa 语音克隆",
    "header_md": "# Llasa 语音合成\n用几秒钟的参考语音克隆音色，朗读任意中文或英文文本。",
    "tab_synth": "语音合成",
    "tab_voices": "音色库",
    "tab_gpu": "GPU 管理",
    "tab_api": "API 与 MCP",
    "tab_help": "使用说明",
    "voice_mode": "音色来源",
    "mode_reference": "参考音频",
    "mode_saved": "已保存的音色",
    "mode_none": "模型默认音色",
    "ref_audio": "参考音频（上传或录制 3-15 秒清晰人声）",
    "transcript": "参考音频文本",
    "transcript_info": "上传后自动识别填入，可手动修改；必须与参考音频内容一致。",
    "transcript_placeholder": "参考音频里说的话",
    "language": "语言",
    "language_info": "参考音频的语言，用于识别（auto = 自动检测）",
    "transcribe_btn": "识别文本",
    "saved_voice": "已保存的音色",
    "saved_voice_info": "在“音色库”页管理",
    "refresh": "刷新",
    "text": "要合成的文本",
    "text_info": "最多 {max_text_chars} 个字符；长文本会在句末自动分段，并平滑拼接。",
    "text_placeholder": "输入或粘贴要朗读的中文或英文文本",
    "advanced": "高级参数",
    "temperature": "温度",
    "temperature_info": "越高越生动多变，越低越平稳",
    "top_p": "Top-p",
    "top_p_info": "核采样（1 = 关闭）",
    "top_k": "Top-k",
    "top_k_info": "只在概率最高的 k 个编码中采样（0 = 关闭）",
    "repetition_penalty": "重复惩罚",
    "repetition_penalty_info": "大于 1 时抑制重复的声音（1 = 关闭）",
    "max_seconds": "每段最长秒数",
    "max_seconds_info": "每个文本分段生成音频的上限",
    "seed": "随机种子",
    "seed_info": "-1 = 随机；结果中会显示所用种子，再次使用可复现同一效果",
    "output_format": "下载格式",
    "verify": "用语音识别校验",
    "verify_info": "Whisper 逐段识别，读错的分段会重新生成（较慢；校验完成后才播放）",
    "captions": "字幕",
    "captions_info": "按词计时的字幕文件，随结果下载",
    "captions_none": "无",
    "generate_btn": "生成语音",
    "cancel_btn": "取消",
    "examples": "示例（点击填入）",
    "result_audio": "合成结果",
    "result_file": "下载",
    "captions_file": "字幕文件",
    "history": "本次会话的结果",
    "history_files": "本次会话的文件",
    "history_empty": "_本次会话还没有生成结果。_",
    "facts_empty": "_点击“生成语音”后，这里会显示时长、速度和各阶段耗时。_",
    "voices_intro_md": (
        "把“语音合成”页中的参考音频和文本保存为命名音色。"
        "已保存的音色无需再次识别和编码，REST API 与 MCP 工具也使用同一个音色库。"
    ),
    "voice_name": "音色名称",
    "voice_name_placeholder": "例如 alice、小明",
    "overwrite": "覆盖同名音色",
    "save_voice_btn": "将当前参考音频保存为音色",
    "voice_list": "已保存的音色",
    "voice_list_md": "### 已保存的音色",
    "voice_pick": "音色",
    "preview_audio": "试听",
    "delete_btn": "删除此音色",
    "voice_transcript": "该音色的参考文本",
    "voice_transcript_info": "音色音频中逐字说出的内容；可在此修改后保存。",
    "update_voice_btn": "保存参考文本",
    "voice_updated": "音色 **{name}** 的参考文本已保存。",
    "gpu_intro_md": (
        "模型只在工作时占用 GPU：请求结束后移到 CPU 内存（可快速恢复），空闲更久后完全释放。本面板每隔几秒自动刷新。"
    ),
    "gpu_model": "模型",
    "all_models": "全部模型",
    "offload_btn": "卸载到 CPU",
    "release_btn": "释放（归还内存）",
    "idle_timeout": "GPU 空闲超时（秒）",
    "idle_timeout_info": "未开启“用后立即卸载”时，模型在 GPU 上空闲多久后卸载到 CPU（0 = 立即，-1 = 从不）",
    "evict_timeout": "内存空闲释放（秒）",
    "evict_timeout_info": "模型在 CPU 内存中空闲多久后完全释放（0 = 立即，-1 = 从不）",
    "offload_after_use": "每次使用后立即卸载到 CPU",
    "apply_btn": "应用",
    "raw_status": "原始状态（JSON）",
    "api_intro_md": (
        "同一服务还可以通过脚本（REST，API 端口的 `/apidocs` 提供 Swagger 文档）、AI 助手（MCP，streamable HTTP）"
        "以及本页面自带的 Python API（`gradio_client`）调用，它们与本页面共用同一个 GPU 队列。"
    ),
    "curl_examples": "REST 示例（curl）",
    "mcp_config": "MCP 客户端配置",
    "python_client": "Python（gradio_client）",
    "usage_md": (
        "## 如何克隆音色\n"
        "1. **参考音频**：上传（或录制）3-15 秒单人清晰说话的音频，不要有音乐或噪声。超过 15 秒会被截断。\n"
        "2. **参考文本**：自动识别填入，请逐字核对。模型通过音频与文本的对应关系学习音色，文本不准会影响效果。\n"
        "3. **合成文本**：输入要朗读的内容。长文本会在句末分段，每段使用同一参考音频，并平滑拼接。\n"
        "4. 点击 **生成语音**。进度条按分段显示进度；**取消** 可中止较长的任务。\n"
        "5. 播放或下载结果；结果中会显示随机种子，便于复现满意的效果。\n\n"
        "## 小贴士\n"
        "- 在 **音色库** 页保存满意的参考音频：已保存的音色启动更快，并与 API 共享。\n"
        "- 温度 0.6-0.9 适合大多数音色；如出现漏字或重复，请调低。\n"
        "- 同一段文本可以中英混合；标点有助于停顿自然。\n"
        "- GPU 每次只运行一个合成任务，其余请求排队并显示位置。\n"
        "- 浏览器只允许在 https:// 页面或 localhost 上使用麦克风；其他情况下请上传音频文件。\n"
        "- **用语音识别校验** 会让 Whisper 逐段识别，读错的分段重新生成，结果下方的表格显示识别到的内容。"
        "**字幕** 会随结果提供字幕文件（SRT、WebVTT）或逐词时间（JSON）。\n\n"
        "## 示例\n"
        "- 中文：*今天天气真好，我们一起去公园散步吧。*\n"
        "- English: *The quick brown fox jumps over the lazy dog. It was a bright cold day in April.*\n"
    ),
    "stage_queue": "等待 GPU",
    "stage_transcribe": "正在识别参考音频",
    "stage_encode": "正在编码参考音频",
    "stage_generate": "正在生成第 {i}/{n} 段",
    "stage_decode": "正在解码第 {i}/{n} 段",
    "stage_chunk_done": "已完成 {done}/{n} 段",
    "unit_chunks": "段",
    "fact_duration": "时长",
    "fact_rtf": "实时率",
    "fact_rtf_hint": "耗时 / 音频时长，小于 1 表示快于实时",
    "fact_chunks": "分段数",
    "fact_seed": "随机种子",
    "fact_voice": "音色",
    "fact_reference": "参考音频",
    "fact_reference_text": "使用的参考文本",
    "fact_timings": "各阶段耗时",
    "fact_link": "下载链接（REST）",
    "fact_captions_link": "字幕链接（REST）",
    "fact_chunk_reports": "分段检查",
    "fact_notes": "提示",
    "stage_name_load": "加载模型",
    "stage_name_transcribe": "识别",
    "stage_name_encode": "编码",
    "stage_name_generate": "生成",
    "stage_name_decode": "解码",
    "stage_name_verify": "校验",
    "stage_name_total": "总计",
    "trimmed_notice": (
        "⚠️ 参考音频超过 {max_s:g} 秒，只使用了前 {kept_s:.1f} 秒（模型训练时使用的参考音频最长 {max_s:g} 秒）。"
    ),
    "transcript_redone": "参考文本按实际使用的部分（保留的 {kept_s:.1f} 秒）重新识别。",
    "transcript_for_kept": "参考文本被当作保留的 {kept_s:.1f} 秒的内容使用，须与其一致。",
    "col_time": "时间",
    "col_text": "文本",
    "col_voice": "音色",
    "col_duration": "时长",
    "col_rtf": "实时率",
    "col_seed": "种子",
    "col_file": "文件",
    "col_chunk": "分段",
    "col_attempts": "生成次数",
    "col_kept": "采用第几次",
    "col_heard": "识别结果",
    "col_error_rate": "错误率",
    "col_problems": "问题",
    "no_reference": "无（模型默认音色）",
    "uploaded_clip": "上传的音频",
    "col_name": "名称",
    "col_transcript": "文本",
    "col_created": "创建时间",
    "voices_empty": "_还没有保存的音色。可在上方用参考音频保存一个。_",
    "voice_saved": "音色 **{name}** 已保存（{duration_s:.1f} 秒）。",
    "voice_deleted": "音色 **{name}** 已删除。",
    "state_gpu": "在显存中",
    "state_cpu": "在内存中",
    "state_loading": "加载中",
    "state_unloaded": "未加载",
    "col_model": "模型",
    "col_state": "状态",
    "col_device": "设备",
    "col_memory": "内存",
    "col_idle": "空闲",
    "col_leases": "使用中",
    "col_loads": "加载 / 卸载次数",
    "card_line": "**{name}**：已用 {used}，空闲 {free}，共 {total}",
    "card_process": "本服务占用：{bytes}",
    "card_none": "没有 CUDA GPU：模型在 CPU 上运行（以下为内存用量）。",
    "queue_line": "等待 GPU 的请求：{depth}",
    "gpu_done": "{action}：{detail}",
    "action_offload": "卸载",
    "action_release": "释放",
    "timeouts_set": "超时已更新：GPU 空闲 {idle}，释放 {evict}，用后卸载 {after}。",
    "never": "从不",
    "error_title": "出错了",
    "error_invalid_input": "请检查输入",
    "error_audio_too_short": "参考音频太短",
    "error_silent_audio": "参考音频没有声音",
    "error_not_found": "未找到",
    "error_voice_not_found": "未找到该音色",
    "error_voice_exists": "音色已存在",
    "error_payload_too_large": "文件太大",
    "error_unsupported_audio": "不支持的音频",
    "error_path_not_allowed": "不允许的路径",
    "error_unauthorized": "未授权",
    "error_cancelled": "已取消",
    "error_busy": "GPU 繁忙",
    "error_queue_full": "队列已满",
    "error_model_unavailable": "模型不可用",
    "error_generation_failed": "生成失败",
    "error_internal": "服务器内部出错，详情见服务器日志，请重试。",
    "retry_after": "请约 {seconds:.0f} 秒后重试。",
    "need_reference": "请上传或录制参考音频，或选择“已保存的音色”或“模型默认音色”。",
    "need_voice": "请选择一个已保存的音色，或切换到“参考音频”。",
    "need_audio": "请先上传或录制音频。",
    "need_voice_name": "请输入音色名称。",
    "no_speech": "未能从该音频中识别出语音，请手动输入其文本。",
    "cancelled": "已取消生成。",
}

STRINGS: dict[str, dict[str, str]] = {"en": _EN, "zh": _ZH}


class _KeepMissing(dict):
    """format_map() helper: placeholders without a value stay as they are."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def text(lang: str, key: str, **values: Any) -> str:
    """The text for `key` in `lang` ("en" or "zh"), formatted with `values`; English if the key is missing."""
    table = STRINGS.get(lang, _EN)
    template = table.get(key) or _EN.get(key, key)
    return template.format_map(_KeepMissing(values)) if values else template


def static_translations(**values: Any) -> dict[str, dict[str, str]]:
    """Every string per browser locale, with settings-dependent placeholders filled (for `gr.I18n`)."""

    def filled(table: dict[str, str]) -> dict[str, str]:
        # Plain replacement: the dynamic keys' placeholders (with format specs) stay untouched.
        out = {}
        for key, template in table.items():
            filled_in = template
            for name, replacement in values.items():
                filled_in = filled_in.replace("{" + name + "}", str(replacement))
            out[key] = filled_in
        return out

    zh = filled(_ZH)
    # svelte-i18n tries the full locale first (zh-CN), then its language (zh): give both.
    return {"en": filled(_EN), "zh": zh, "zh-CN": zh}


def language_of(accept_language: str | None) -> str:
    """ "zh" or "en" from an Accept-Language header, in the header's order of preference (default English)."""
    if not accept_language:
        return "en"
    ranked: list[tuple[float, int, str]] = []
    for position, part in enumerate(accept_language.split(",")):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                quality = float(params[2:])
            except ValueError:
                quality = 0.0
        ranked.append((-quality, position, tag.strip().lower()))
    for _, _, tag in sorted(ranked):
        primary = tag.split("-")[0]
        if primary in LANGUAGES:
            return primary
    return "en"
