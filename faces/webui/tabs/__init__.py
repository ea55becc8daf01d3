"""The web UI tabs: each module owns its components, its handlers (a WebUI mixin) and its events."""
