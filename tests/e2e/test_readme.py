"""The README's promises stay true: every setting documented, the two commands named, the licence stated."""

from __future__ import annotations

from pathlib import Path

from llasa.config import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def test_every_setting_is_in_the_readme_table() -> None:
    missing = [name.upper() for name in Settings.model_fields if f"| `{name.upper()}` |" not in README]
    assert not missing, f"README settings table lacks {missing}"


def test_readme_names_the_two_commands_and_the_licence() -> None:
    assert "./start.sh" in README
    assert "./test_all.sh" in README
    assert "CC-BY-NC-4.0" in README
    assert "Xcodec2Model" in README
