"""The faces: adapters from a wire format (REST, MCP, the web UI) to `llasa.service.TTSService` and back."""
