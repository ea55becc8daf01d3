"""Where Settings finds `.env`: the checkout's, then the working directory's (which wins)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llasa import config
from llasa.config import Settings


def test_working_directory_env_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UI_PORT", raising=False)
    (tmp_path / ".env").write_text("UI_PORT=7999\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert Settings(_env_file=(str(tmp_path / "absent.env"), ".env")).ui_port == 7999


def test_checkout_env_file_is_found_from_elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("API_PORT", raising=False)
    checkout_env = tmp_path / "checkout.env"
    checkout_env.write_text("API_PORT=7001\n", encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert Settings(_env_file=(str(checkout_env), ".env")).api_port == 7001
    # The default configuration names the checkout's own .env first.
    assert Settings.model_config["env_file"][0] == str(Path(config.__file__).resolve().parent.parent / ".env")


def test_environment_beats_env_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("MCP_PORT=7003\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MCP_PORT", "7004")
    assert Settings(_env_file=".env").mcp_port == 7004


def test_load_settings_honours_llasa_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from llasa.config import load_settings

    monkeypatch.delenv("API_KEY", raising=False)
    chosen = tmp_path / "chosen.env"
    chosen.write_text("API_KEY=from-chosen\n", encoding="utf-8")
    (tmp_path / ".env").write_text("API_KEY=from-cwd\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LLASA_ENV_FILE", str(chosen))
    assert load_settings().api_key == "from-chosen"
    monkeypatch.setenv("LLASA_ENV_FILE", "")  # no file at all: what tests give the processes they start
    assert load_settings().api_key == ""
    monkeypatch.delenv("LLASA_ENV_FILE")
    assert load_settings().api_key == "from-cwd"
    monkeypatch.setenv("GRADIO_AUTH", "no-colon")
    with pytest.raises(ValidationError, match="user:password"):
        load_settings()
