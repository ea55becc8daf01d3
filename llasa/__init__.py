"""Llasa TTS core: voice cloning with Llasa + XCodec2 + faster-whisper. Knows nothing of HTTP, Gradio or MCP."""

__version__ = "0.1.0"
