"""The house rules that keep the layout honest, checked by walking the source.

- The core library (``comfyfleet/`` outside ``cli/``) never imports ``prefect`` or ``blocks``.
- Only ``comfyfleet/config.py`` reads the environment.
- ComfyUI's folder facts are defined once (``comfyfleet/comfy/folders.py``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from comfyfleet import config

PACKAGE = Path(__file__).resolve().parents[1] / "comfyfleet"


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_core_never_imports_prefect_or_blocks() -> None:
    offenders = {
        str(p.relative_to(PACKAGE)): sorted(
            n for n in _imports(p) if n.split(".")[0] in {"prefect", "blocks", "flows"}
        )
        for p in _modules()
        if "cli" not in p.relative_to(PACKAGE).parts
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_walk_sees_imports_inside_functions(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from prefect import flow\n    import blocks.store\n")
    assert _imports(probe) == {"prefect", "blocks.store"}


def test_only_config_reads_the_environment() -> None:
    pattern = re.compile(r"os\.environ|os\.getenv|getenv\(")
    readers = [
        str(p.relative_to(PACKAGE))
        for p in _modules()
        if p.name != "config.py" and pattern.search(p.read_text())
    ]
    assert readers == []


def test_folder_facts_are_defined_once() -> None:
    definitions = re.compile(
        r"^(_?(KNOWN_FOLDERS|PT_EXTENSIONS|PT_FOLDERS|MODEL_EXTENSIONS|LEGACY_FOLDERS|"
        r"FOLDER_ALIASES|HTTP_FOLDER|MODEL_INPUT_FOLDERS|FOLDER_LOADERS))\b.*=",
        re.M,
    )
    where = {str(p.relative_to(PACKAGE)) for p in _modules() if definitions.search(p.read_text())}
    assert where == {"comfy/folders.py"}


def test_config_env_strips_honours_aliases_and_refuses_unknown_names() -> None:
    environ = {"HUGGING_FACE_HUB_TOKEN": " hf_x ", "HF_TOKEN": "  ", "COMFYFLEET_STORE": ""}
    assert config.env("HF_TOKEN", environ) == "hf_x"
    assert config.env("COMFYFLEET_STORE", environ) is None
    assert config.env_or("COMFYFLEET_HOME", "~/.comfyfleet", environ) == "~/.comfyfleet"
    with pytest.raises(KeyError):
        config.env("NOT_A_COMFYFLEET_VARIABLE", environ)


def test_config_is_read_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMFYFLEET_STORE", "s3://first/p")
    assert config.env("COMFYFLEET_STORE") == "s3://first/p"
    monkeypatch.setenv("COMFYFLEET_STORE", "s3://second/p")
    assert config.env("COMFYFLEET_STORE") == "s3://second/p"


def test_every_variable_is_documented() -> None:
    rows = config.describe()
    assert rows and all(name and doc for name, _aliases, doc in rows)
    assert len({name for name, _a, _d in rows}) == len(rows)
