"""Every setting of the service, read from the environment (and `.env`) in one place.

Nothing here runs at import: `Settings()` reads the environment when `main.py` (or a test) builds it, and the
result is passed down to every component. `.env.example` lists the same variables; `tests/test_config.py`
keeps the two in step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_REPO_ENV_FILE = str(Path(__file__).resolve().parent.parent / ".env")


class Settings(BaseSettings):
    """The service's configuration. Each field's name, upper-cased, is its environment variable."""

    model_config = SettingsConfigDict(
        # The checkout's .env first, then one in the working directory (which wins): a desktop assistant that
        # launches `mcp_server.py --stdio` from anywhere still finds the service's configuration.
        env_file=(_REPO_ENV_FILE, ".env"),
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        use_attribute_docstrings=True,
        validate_default=True,
    )

    # --- network -------------------------------------------------------------------------------------------
    host: str = "0.0.0.0"
    """Address the three servers bind to (0.0.0.0 = every interface; 127.0.0.1 = this machine only)."""
    ui_port: int = Field(7860, ge=1, le=65535)
    """Port of the Gradio web UI."""
    api_port: int = Field(7861, ge=1, le=65535)
    """Port of the Flask REST API (Swagger UI at /apidocs)."""
    mcp_port: int = Field(7862, ge=1, le=65535)
    """Port of the MCP server (streamable HTTP at /mcp)."""
    public_base_url: str = ""
    """Base URL clients use to reach the REST API, for download links (empty = http://<host>:<API_PORT>)."""
    api_key: str = ""
    """When set, every REST route but /health and /ready, and the MCP HTTP transport, require
    `Authorization: Bearer <API_KEY>` (empty = no authentication)."""
    cors_origins: str = ""
    """Web origins allowed to call the REST API from a browser, comma-separated (e.g. https://app.example.com), or
    * for any (empty = none: only same-origin pages, scripts and servers can call it)."""
    gradio_auth: str = ""
    """`user:password` protecting the web UI (empty = open)."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Logging level of the whole process."""

    # --- models --------------------------------------------------------------------------------------------
    llasa_model: str = "HKUSTAudio/Llasa-8B"
    """Llasa checkpoint: a hub id (HKUSTAudio/Llasa-1B, -3B, -8B) or a local folder."""
    xcodec2_model: str = "HKUSTAudio/xcodec2-hf"
    """XCodec2 checkpoint in transformers' native format: a hub id or a local folder."""
    xcodec2_dtype: Literal["float32", "bfloat16"] = "float32"
    """Weights dtype of XCodec2 on every device. float32 is how the codec was trained and how Llasa's training codes
    were extracted, so reference codes match what the model saw; bfloat16 saves about 1.6 GB of VRAM with the real
    codec and may shift some reference codes."""
    whisper_model: str = "large-v3-turbo"
    """faster-whisper model: a size name (tiny, base, small, medium, large-v3, large-v3-turbo), a hub id of a
    CTranslate2 conversion, or a local CTranslate2 folder."""
    whisper_compute_type: str = "auto"
    """CTranslate2 compute type for faster-whisper (auto = float16 on CUDA, int8 on CPU)."""
    whisper_max_new_tokens: int = Field(0, ge=0, le=224)
    """Most tokens faster-whisper writes per 30 s window of audio (0 = faster-whisper's own limit, 224); a bound on how
    long a transcription of noise can run."""
    device: Literal["auto", "cuda", "cpu"] = "auto"
    """Where the models run: auto = the first visible CUDA device if there is one, else the CPU."""
    hf_token: str = ""
    """Hugging Face token for gated or private checkpoints (empty = anonymous)."""
    hf_endpoint: str = ""
    """Alternative Hugging Face endpoint, e.g. a mirror (empty = the default hub)."""
    hf_home: str = ""
    """Hugging Face cache folder where downloaded weights are kept (empty = huggingface_hub's default)."""
    nvidia_visible_devices: str = ""
    """GPU(s) the container may see; docker-compose passes it to the NVIDIA runtime (start.sh picks one)."""

    # --- GPU manager ---------------------------------------------------------------------------------------
    gpu_offload_after_use: bool = True
    """Move a model to CPU RAM as soon as its last request ends, freeing the GPU for other services."""
    gpu_idle_timeout: float = Field(600.0, ge=-1)
    """Seconds a model may sit idle on the GPU before it is offloaded to CPU RAM, when GPU_OFFLOAD_AFTER_USE is
    false (0 = at once, -1 = never)."""
    model_evict_timeout: float = Field(1800.0, ge=-1)
    """Seconds a model may sit idle in CPU RAM before it is released altogether (0 = at once, -1 = never)."""
    gpu_memory_headroom_mb: int = Field(1024, ge=0)
    """VRAM kept free beyond a model's size when deciding whether it fits (MiB)."""
    gpu_wait_timeout: float = Field(300.0, gt=0)
    """Seconds a request waits for the GPU (another synthesis running) before it fails with 503 Busy."""
    gpu_monitor_interval: float = Field(5.0, gt=0)
    """Seconds between two passes of the idle monitor that applies the two timeouts above."""

    # --- synthesis -----------------------------------------------------------------------------------------
    max_reference_seconds: float = Field(15.0, gt=0)
    """Reference audio longer than this is trimmed (seconds; Llasa was trained with prompts up to 15 s)."""
    min_reference_seconds: float = Field(0.5, gt=0)
    """Reference audio shorter than this is refused (seconds)."""
    max_text_chars: int = Field(5000, ge=1)
    """Longest text one request may synthesise (characters); longer text is refused with 400."""
    max_audio_seconds: float = Field(30.0, ge=0.02, le=300)
    """Default upper bound on the audio generated for one text chunk (seconds; a request may lower it)."""
    crossfade_ms: int = Field(40, ge=0)
    """Crossfade between consecutive chunks of a long text (milliseconds)."""
    default_temperature: float = Field(0.8, gt=0, le=2)
    """Sampling temperature used when a request gives none (the model card's 0.8)."""
    default_top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling threshold used when a request gives none (1.0 = off, the model card's)."""
    default_top_k: int = Field(50, ge=0, le=65536)
    """Top-k sampling used when a request gives none (0 = off)."""
    default_repetition_penalty: float = Field(1.0, ge=0.5, le=2)
    """Repetition penalty used when a request gives none (1.0 = off)."""

    # --- engine ------------------------------------------------------------------------------------------
    llasa_engine: Literal["transformers", "vllm"] = "transformers"
    """What runs the Llasa LM: transformers = the embedded continuous-batching engine in this process; vllm = one
    or more vLLM servers at VLLM_URL (docs/scaling.md)."""
    vllm_url: str = ""
    """With LLASA_ENGINE=vllm: the vLLM server's base URL (http://host:8000), or several replicas comma-separated."""
    vllm_managed: Literal["auto", "true", "false"] = "auto"
    """Whether the GPU manager puts the vLLM server to sleep when idle and wakes it for work (model "vllm"): auto =
    when VLLM_URL names one server on this host; true = always (a vLLM container on this machine's GPUs); false =
    never (a remote or shared server)."""
    vllm_gpu_memory_gb: float = Field(0.0, ge=0)
    """GPU memory a managed vLLM server takes when awake (GB; weights + KV cache), counted by VRAM admission so
    XCodec2 and Whisper still fit beside it (0 = VLLM_GPU_MEMORY_UTILIZATION x the card's total memory)."""
    vllm_gpu_memory_utilization: float = Field(0.6, gt=0, le=1)
    """Share of each GPU's memory the vLLM server reserves (its --gpu-memory-utilization in the compose profile
    `vllm`); the rest is left for XCodec2, Whisper and other programs."""
    vllm_tensor_parallel_size: int = Field(1, ge=1, le=64)
    """GPUs the compose profile `vllm` splits the Llasa LM over (vLLM's --tensor-parallel-size)."""
    max_batch_sequences: int = Field(16, ge=1, le=1024)
    """Requests synthesised at the same time (more wait in the queue, up to MAX_QUEUE), and the text chunks the
    embedded engine advances together in one batch."""
    engine_kv_cache_mb: int = Field(0, ge=0)
    """Most memory the embedded engine's KV cache may take (MiB); sequences beyond it wait for room (0 = no bound
    but MAX_BATCH_SEQUENCES; an out-of-memory error still halves the batch and retries, losing nothing)."""
    stream_first_codes: int = Field(15, ge=5, le=500)
    """Speech codes generated before a stream sends its first audio (50 per second: 15 = 0.3 s); the following
    windows double, up to 2 s."""

    # --- quality guards (llasa/quality/guards.py says where each threshold comes from) -------------------
    quality_retries: int = Field(2, ge=0, le=5)
    """Times a broken take of a chunk (stuck in a loop, running on, silent, or failing verification) is generated
    again with the next seed; after them the best take is kept and a warning says so (0 = never regenerate; the
    guards still stop a loop or a run-on early)."""
    loop_window_codes: int = Field(100, ge=10, le=1500)
    """Codes in the sliding window the loop guard watches (50 per second: 100 = 2 s)."""
    loop_min_distinct_codes: int = Field(20, ge=1, le=1500)
    """A window with fewer distinct codes than this is a loop (a stuck syllable or a held tone); ordinary speech
    uses nearly one new code per frame."""
    runon_length_factor: float = Field(2.5, ge=1.0, le=20.0)
    """A chunk is a run-on once its speech is this many times longer than its text's estimated reading time
    (plus RUNON_SLACK_S): it is stopped there and generated again."""
    runon_slack_s: float = Field(2.0, ge=0.0, le=60.0)
    """Seconds added to the run-on bound, so very short texts do not trip on a breath."""
    silence_max_dbfs: float = Field(-45.0, ge=-120.0, le=0.0)
    """A chunk whose whole audio is quieter than this (dBFS RMS) is dead air and is generated again."""
    dead_air_max_gap_s: float = Field(1.5, gt=0.0, le=60.0)
    """A silent stretch inside a chunk longer than this (seconds) is dead air and is generated again."""
    verify_default: bool = False
    """Verify every synthesis unless a request says otherwise: faster-whisper transcribes each chunk and a take
    whose error rate is above VERIFY_MAX_CER is generated again."""
    verify_all_takes_at_once: bool = False
    """With verify, sample all 1 + QUALITY_RETRIES takes of every chunk at once and keep the first that passes,
    instead of sending the retries only after a take fails: a failed take then costs no second round, but every
    verified chunk takes that many places in the batch (worth it on a GPU with room in its batch)."""
    verify_max_cer: float = Field(0.2, ge=0.0, le=10.0)
    """Highest error rate (characters for Chinese, words for English) a verified take may have (docs/quality.md
    says why 0.2)."""

    # --- requests, files -----------------------------------------------------------------------------------
    max_upload_mb: float = Field(50.0, gt=0)
    """Largest accepted upload (MiB); bigger requests get 413."""
    max_queue: int = Field(16, ge=0)
    """Requests that may wait for the GPU while MAX_BATCH_SEQUENCES requests run; more are refused with 429."""
    output_dir: Path = Path("outputs")
    """Folder for generated audio served under /api/outputs/<id>."""
    output_ttl_hours: float = Field(24.0, gt=0)
    """Generated files (and finished jobs) older than this are deleted (hours)."""
    temp_dir: Path = Path("temp")
    """Folder for temporary uploads."""
    voices_dir: Path = Path("voices")
    """Folder of the saved-voice library, shared by the UI, REST and MCP."""
    mcp_allowed_dirs: str = ""
    """Comma-separated folders the MCP tools may read audio files from (empty = OUTPUT_DIR, TEMP_DIR and
    VOICES_DIR only)."""
    mcp_audio_return: Literal["path", "inline", "both"] = "path"
    """What generate_speech returns over MCP: the saved file's path and URL, the audio itself, or both."""
    mcp_inline_max_seconds: float = Field(60.0, ge=0)
    """Longest audio returned inline as MCP audio content (seconds)."""

    @field_validator("gradio_auth")
    @classmethod
    def _check_gradio_auth(cls, value: str) -> str:
        if value and (":" not in value or not value.split(":", 1)[0] or not value.split(":", 1)[1]):
            raise ValueError("GRADIO_AUTH must look like user:password (both parts non-empty), or be empty")
        return value

    @field_validator("public_base_url")
    @classmethod
    def _strip_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @property
    def cors_origin_list(self) -> list[str]:
        """CORS_ORIGINS as a list ([] = no cross-origin access)."""
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def api_base_url(self) -> str:
        """Where clients reach the REST API (for download links)."""
        if self.public_base_url:
            return self.public_base_url
        return f"http://{client_host(self.host)}:{self.api_port}"

    @property
    def allowed_dirs(self) -> list[Path]:
        """Resolved folders MCP tools may read from."""
        raw = [part.strip() for part in self.mcp_allowed_dirs.split(",") if part.strip()]
        folders = [Path(p) for p in raw] if raw else [self.output_dir, self.temp_dir, self.voices_dir]
        return [folder.expanduser().resolve() for folder in folders]


ENV_FILE_VARIABLE = "LLASA_ENV_FILE"
"""Names the .env file the entry points read: unset = the checkout's .env then ./.env; empty = none (tests);
a path = that file only."""


def client_host(host: str) -> str:
    """Where this machine reaches a server bound to `host` (a wildcard bind is reached on the loopback)."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def load_settings() -> Settings:
    """The entry points' Settings: the environment, plus the .env file(s) LLASA_ENV_FILE chooses."""
    import os

    chosen = os.environ.get(ENV_FILE_VARIABLE)
    if chosen is None:
        return Settings()
    return Settings(_env_file=chosen or None)
