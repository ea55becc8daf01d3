"""The layers, checked by an import scan (the source is parsed, nothing is imported).

- The core (`llasa/`) imports no web framework, nothing from the root entry points and nothing from the faces.
- A face (`faces/rest/`, `faces/mcp/`, `faces/webui/`) imports no other face; the modules directly in `faces/`
  (the one audio-input reader, ...) are shared by all of them. No face imports torch or transformers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "llasa"
FACES = REPO / "faces"
ROOT_MODULES = {path.stem for path in REPO.glob("*.py")}
WEB_FRAMEWORKS = {"flask", "flasgger", "flask_cors", "werkzeug", "gradio", "gradio_client", "fastmcp", "mcp"}
WEB_FRAMEWORKS |= {"starlette", "uvicorn", "fastapi"}
HEAVY = {"torch", "transformers", "torchaudio", "faster_whisper", "ctranslate2"}


def imported_modules(path: Path) -> set[str]:
    """Every absolute module name `path` imports, at any depth (lazy imports inside functions included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def top(name: str) -> str:
    return name.split(".", maxsplit=1)[0]


def python_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py")) if folder.is_dir() else []


def face_of(path: Path) -> str | None:
    """ "rest", "mcp", "webui" for a module inside that face; None for a shared module directly in faces/."""
    parts = path.relative_to(FACES).parts
    return parts[0] if len(parts) > 1 else None


@pytest.mark.parametrize("path", python_files(CORE), ids=lambda p: str(p.relative_to(REPO)))
def test_core_imports_no_face_no_root_and_no_web_framework(path: Path) -> None:
    wrong = sorted(
        name
        for name in imported_modules(path)
        if top(name) in WEB_FRAMEWORKS | {"faces"} or (top(name) in ROOT_MODULES and top(name) != "llasa")
    )
    assert not wrong, f"{path.relative_to(REPO)} imports {wrong}: the core must not depend on a face or the root"


@pytest.mark.parametrize("path", python_files(FACES), ids=lambda p: str(p.relative_to(REPO)))
def test_a_face_imports_no_other_face_and_no_torch(path: Path) -> None:
    mine = face_of(path)
    names = imported_modules(path)
    packages = {folder.name for folder in FACES.iterdir() if (folder / "__init__.py").is_file()}
    other_faces = sorted(
        name for name in names if top(name) == "faces" and name.count(".") and name.split(".")[1] in packages - {mine}
    )
    other_faces += sorted(name for name in names if top(name) in ROOT_MODULES)
    heavy = sorted(name for name in names if top(name) in HEAVY)
    assert not other_faces, f"{path.relative_to(REPO)} imports {other_faces}: a face depends on the core only"
    assert not heavy, f"{path.relative_to(REPO)} imports {heavy}: a face never imports torch (DESIGN.md section 2)"


def test_the_scan_sees_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from gpu_manager import get_gpu_manager\n    import flask.json\n")
    assert imported_modules(bad) == {"gpu_manager", "flask.json"}
