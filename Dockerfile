# syntax=docker/dockerfile:1
# Llasa TTS service: Gradio UI (7860), REST API (7861) and MCP server (7862) in one process.
#
# The base is a CUDA 12 + cuDNN 9 runtime image: faster-whisper's CTranslate2 loads libcublas.so.12 and cuDNN 9
# from the system when it runs on the GPU. torch brings its own CUDA libraries; which CUDA flavour it is built for
# is chosen with TORCH_CUDA (the NVIDIA driver on the host must support it, see docs/docker.md):
#   cu126, cu128 (default): CUDA 12 builds, any driver >= 525.60 (570+ for Blackwell GPUs)
#   cu130:                  CUDA 13 build, needs a driver >= 580
#   cpu:                    no CUDA at all (small image, CPU-only hosts)
#
#   docker build -t llasa-tts .
#   docker build --build-arg TORCH_CUDA=cu130 -t llasa-tts .
#   docker build --build-arg BAKE_MODELS=1 --build-arg LLASA_MODEL=HKUSTAudio/Llasa-1B -t llasa-tts:offline .
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

FROM ${CUDA_IMAGE}

ARG TORCH_CUDA=cu128
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_CUDA}
ARG TORCH_VERSION=2.11.0
ARG TORCHAUDIO_VERSION=2.11.0
# BAKE_MODELS=1 downloads the three checkpoints named below into /opt/models at build time (for hosts without
# internet access); point LLASA_MODEL / XCODEC2_MODEL / WHISPER_MODEL at /opt/models/<name> in .env to use them.
ARG BAKE_MODELS=0
ARG LLASA_MODEL=HKUSTAudio/Llasa-8B
ARG XCODEC2_MODEL=HKUSTAudio/xcodec2-hf
ARG WHISPER_MODEL=large-v3-turbo
ARG APP_UID=1000

# The base image sets NVIDIA_REQUIRE_CUDA=cuda>=12.8, so the NVIDIA runtime would refuse every driver older than
# 570. CUDA 12 minor-version compatibility lets the CUDA 12.x builds of torch and CTranslate2 run on any driver
# >= 525.60, as docs/docker.md promises: turn the runtime's check off (cu130 still needs a driver >= 580).
ENV NVIDIA_DISABLE_REQUIRE=1

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HOME=/home/app \
    HF_HOME=/app/models_cache \
    GRADIO_ANALYTICS_ENABLED=False \
    HOST=0.0.0.0

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# The distribution's Python 3.11 (Ubuntu 22.04 universe). Versions are not pinned: the base image tag fixes the
# distribution release, and pinning exact Ubuntu package revisions breaks the build on every security update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv

WORKDIR /app

# torch first, from the index of the chosen CUDA flavour; requirements.txt pins the same version, which pip then
# finds already satisfied (a local version label such as +cu128 matches ==2.11.0).
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" "torchaudio==${TORCHAUDIO_VERSION}"
COPY requirements.txt requirements-tiny.txt ./
# requirements-tiny.txt: what tools/make_tiny_models.py needs for `./start.sh --demo` (a few MB)
RUN pip install -r requirements.txt -r requirements-tiny.txt

# Optional: weights baked into the image. faster-whisper's download_model maps a size name to its CTranslate2 repo.
RUN if [ "${BAKE_MODELS}" = "1" ]; then \
        python -c "import sys; \
from huggingface_hub import snapshot_download; \
from faster_whisper import download_model; \
snapshot_download(sys.argv[1], local_dir='/opt/models/llasa'); \
snapshot_download(sys.argv[2], local_dir='/opt/models/xcodec2'); \
download_model(sys.argv[3], output_dir='/opt/models/whisper')" \
            "${LLASA_MODEL}" "${XCODEC2_MODEL}" "${WHISPER_MODEL}" \
        && rm -rf /opt/models/*/.cache; \
    else mkdir -p /opt/models; fi

COPY . .

# Any uid may run the container (docker-compose passes the host user's, so bind-mounted folders stay theirs):
# the writable folders are group 0 and group-writable, HOME is world-writable with the sticky bit.
RUN useradd --uid "${APP_UID}" --gid 0 --no-create-home --home-dir /home/app app \
    && mkdir -p /home/app /app/models_cache /app/outputs /app/temp /app/voices /app/demo_models \
    && chmod 1777 /home/app \
    && chown -R "${APP_UID}:0" /app/models_cache /app/outputs /app/temp /app/voices /app/demo_models \
    && chmod -R g+rwX /app/models_cache /app/outputs /app/temp /app/voices /app/demo_models
USER ${APP_UID}

VOLUME ["/app/models_cache", "/app/outputs", "/app/temp", "/app/voices"]
EXPOSE 7860 7861 7862

# /health answers as soon as the REST API is up (models load lazily, on the first request).
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["/bin/sh", "-c", "curl -fsS \"http://127.0.0.1:${API_PORT:-7861}/health\" || exit 1"]

STOPSIGNAL SIGTERM
CMD ["python", "main.py"]
