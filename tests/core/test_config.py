""".env.example and llasa/config.py's Settings stay in step: same variables, same defaults, same comments."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from llasa.config import Settings

REPO = Path(__file__).resolve().parents[2]
ENV_EXAMPLE = REPO / ".env.example"
ASSIGNMENT = re.compile(r"^([A-Z][A-Z0-9_]*)=(.*)$")


def parse_env_example(text: str) -> dict[str, tuple[str, str]]:
    """NAME -> (value, the comment line right above it). Fails on a line that is neither."""
    entries: dict[str, tuple[str, str]] = {}
    previous = ""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            previous = line
            continue
        match = ASSIGNMENT.match(line)
        assert match, f".env.example line {number} is neither a comment nor NAME=value: {line!r}"
        name, value = match.groups()
        assert name not in entries, f".env.example sets {name} twice (line {number})"
        entries[name] = (value, previous)
        previous = line
    return entries


def disagreements(entries: dict[str, tuple[str, str]]) -> list[str]:
    """Every way the parsed .env.example differs from Settings, one readable line each."""
    problems: list[str] = []
    fields = Settings.model_fields
    for name in sorted(set(entries) - {field.upper() for field in fields}):
        problems.append(f"{name} is in .env.example but Settings has no such field")
    for name, field in fields.items():
        if name.upper() not in entries:
            problems.append(f"{name.upper()} is missing from .env.example (add its default and comment)")
            continue
        value, comment = entries[name.upper()]
        expected_comment = "# " + " ".join((field.description or "").split())
        if comment != expected_comment:
            problems.append(f"the comment above {name.upper()} should be {expected_comment!r}, not {comment!r}")
        try:
            parsed = getattr(Settings(_env_file=None, **{name: value}), name)
        except ValidationError as error:
            problems.append(f"{name.upper()}={value!r} is not a valid value: {error.errors()[0]['msg']}")
            continue
        if parsed != field.default:
            problems.append(f"{name.upper()}={value!r} means {parsed!r}, but the default is {field.default!r}")
    return problems


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No setting may leak in from the test process's environment."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def example_text() -> str:
    return ENV_EXAMPLE.read_text(encoding="utf-8")


def test_env_example_matches_settings(example_text: str, clean_env: None) -> None:
    """Both ways: every field is listed, every listed variable is a field, defaults and comments agree."""
    assert disagreements(parse_env_example(example_text)) == []


def test_loading_env_example_as_a_file_gives_the_defaults(clean_env: None) -> None:
    """The real parser (pydantic-settings' dotenv reader) on the real file: every field equals its default."""
    loaded = Settings(_env_file=ENV_EXAMPLE)
    for name, field in Settings.model_fields.items():
        assert getattr(loaded, name) == field.default, name


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("\nAPI_PORT=7861\n", "\nAPI_PORT=7999\n", "API_PORT='7999' means 7999, but the default is 7861"),
        ("\nGPU_OFFLOAD_AFTER_USE=true\n", "\nGPU_OFFLOAD_AFTER_USE=false\n", "but the default is True"),
        ("\nOUTPUT_DIR=outputs\n", "\nOUTPUT_DIR=out\n", "but the default is PosixPath('outputs')"),
        ("\nMAX_QUEUE=16\n", "\n", "MAX_QUEUE is missing from .env.example"),
        ("\nLOG_LEVEL=INFO\n", "\nLOG_LEVEL=INFO\nLOG_FORMAT=json\n", "LOG_FORMAT is in .env.example but"),
        ("\nMAX_QUEUE=16\n", "\nMAX_QUEUE=many\n", "MAX_QUEUE='many' is not a valid value"),
        ("# Folder for temporary uploads.\n", "# Temp.\n", "the comment above TEMP_DIR should be"),
    ],
)
def test_a_disagreement_is_reported(example_text: str, clean_env: None, old: str, new: str, expected: str) -> None:
    changed = example_text.replace(old, new, 1)
    assert changed != example_text, f"the fixture text no longer contains {old!r}"
    # Compared with the unchanged file, so this self-check holds even while the real file is out of step.
    before = set(disagreements(parse_env_example(example_text)))
    added = [problem for problem in disagreements(parse_env_example(changed)) if problem not in before]
    assert len(added) == 1, added
    assert expected in added[0]


def test_malformed_lines_are_refused(example_text: str) -> None:
    with pytest.raises(AssertionError, match="twice"):
        parse_env_example(example_text + "HOST=127.0.0.1\n")
    with pytest.raises(AssertionError, match="neither"):
        parse_env_example(example_text + "export HOST=x\n")


def test_env_wins_over_the_env_file(clean_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """start.sh relies on this order: ports and demo models given in the environment beat .env."""
    env_file = tmp_path / ".env"
    env_file.write_text("API_PORT=9001\nUI_PORT=9000\n", encoding="utf-8")
    monkeypatch.setenv("API_PORT", "9101")
    settings = Settings(_env_file=env_file)
    assert (settings.api_port, settings.ui_port) == (9101, 9000)


def test_a_bad_value_in_env_file_is_a_clear_error(clean_env: None, tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("API_PORT=seventy\n", encoding="utf-8")
    with pytest.raises(ValidationError, match="api_port"):
        Settings(_env_file=env_file)
