"""llasa.bootstrap: the one start-up path of every entry point, and the one output-cleanup interval."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from llasa.bootstrap import load_settings_or_exit
from llasa.config import client_host
from llasa.outputs import cleanup_interval_s

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("ttl_hours", "expected_s"), [(0.01, 60.0), (1, 360.0), (24, 3600.0)])
def test_one_cleanup_interval_a_tenth_of_the_ttl_within_a_minute_and_an_hour(
    ttl_hours: float, expected_s: float
) -> None:
    assert cleanup_interval_s(ttl_hours) == pytest.approx(expected_s)


def test_a_wildcard_bind_is_reached_on_the_loopback() -> None:
    assert client_host("0.0.0.0") == "127.0.0.1"
    assert client_host("::") == "127.0.0.1"
    assert client_host("10.0.0.5") == "10.0.0.5"


@pytest.mark.parametrize("entry", ["main.py", "api_server.py", "app.py", "mcp_server.py"])
def test_every_entry_point_starts_through_bootstrap(entry: str) -> None:
    tree = ast.parse((REPO / entry).read_text(encoding="utf-8"))
    main = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "main")
    called = {
        node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
        for node in ast.walk(main)
        if isinstance(node, ast.Call)
    }
    assert {"load_settings_or_exit", "start_process"} <= called
    assert called & {"run_alone", "run"}, f"{entry}: main() neither runs alone nor runs the Launcher"
    assert "basicConfig" not in called, f"{entry} configures logging itself"


def test_an_invalid_setting_exits_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LLASA_ENV_FILE", "")
    monkeypatch.setenv("UI_PORT", "not a port")
    with pytest.raises(SystemExit) as exit_info:
        load_settings_or_exit()
    assert exit_info.value.code == 2
    assert "invalid configuration" in capsys.readouterr().err
