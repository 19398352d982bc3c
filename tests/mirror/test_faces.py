"""The two faces of one driver: ``comfyfleet mirror`` and the ``mirror-models`` flow, run on
the same inputs, give the same statuses and the same manifest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from comfyfleet.cli import main
from comfyfleet.store.local import LocalStore
from comfyfleet.store.manifest import read_manifest
from flows.mirror import mirror_models_flow
from tests.doubles.hf_hub import FakeHub
from tests.mirror.support import payload, sha
from tests.mirror.test_flow import artifacts_of

pytestmark = pytest.mark.flow


def _catalog(tmp_path: Path, hub: FakeHub) -> str:
    a, b = payload(70_000, seed=1), payload(50_000, seed=2)
    hub.add_file("org/l", "a.safetensors", a)
    hub.add_file("org/l", "b.safetensors", b)
    models: list[dict[str, Any]] = [
        {
            "id": "pinned",
            "folder": "loras",
            "file": "a.safetensors",
            "sha256": sha(a),
            "size": len(a),
            "source": {"type": "hf", "repo": "org/l", "revision": "main", "path": "a.safetensors"},
        },
        {
            "id": "unpinned",
            "folder": "loras",
            "file": "b.safetensors",
            "source": {"type": "hf", "repo": "org/l", "revision": "main", "path": "b.safetensors"},
        },
        {
            "id": "gone",
            "folder": "loras",
            "file": "gone.safetensors",
            "source": {"type": "hf", "repo": "org/l", "revision": "main", "path": "gone.st"},
        },
    ]
    path = tmp_path / "user.yaml"
    path.write_text(yaml.safe_dump({"schema": 1, "models": models}))
    return str(path)


def _manifest(store: Path) -> dict[str, tuple[Any, ...]]:
    """What a warm-up reads, without the per-run fields (time, local etag)."""
    return {
        e.id: (e.key, e.folder, e.file, e.size, e.sha256, e.source, e.revision)
        for e in read_manifest(LocalStore(store)).entries
    }


def test_cli_and_flow_agree_on_the_same_inputs(
    prefect_harness: None, hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    catalog = _catalog(tmp_path, hub)
    cli_store, flow_store = tmp_path / "cli-store", tmp_path / "flow-store"
    # No profile on either face: both take every entry of the user's file.
    code = main(["mirror", "--catalog", catalog, "--store", str(cli_store), "--json"])
    cli = json.loads(capsys.readouterr().out)
    state = mirror_models_flow(catalog_paths=[catalog], store=str(flow_store), return_state=True)

    assert code == 1 and state.is_failed()
    cli_status = {r["file"]: r["status"] for r in cli["results"]}
    (table,) = artifacts_of(state.state_details.flow_run_id)["table"]
    rows = table.data if isinstance(table.data, list) else yaml.safe_load(table.data)
    flow_status = {r["file"]: r["status"] for r in rows}
    assert (
        cli_status
        == flow_status
        == {
            "models/loras/a.safetensors": "mirrored",
            "models/loras/b.safetensors": "mirrored",
            "models/loras/gone.safetensors": "failed",
        }
    )
    assert _manifest(cli_store) == _manifest(flow_store)
    assert set(_manifest(cli_store)) == {"pinned", "unpinned"}

    # Second run on both faces: the same skips.
    main(["mirror", "--catalog", catalog, "--store", str(cli_store), "--json"])
    cli = json.loads(capsys.readouterr().out)
    again = mirror_models_flow(catalog_paths=[catalog], store=str(flow_store), return_state=True)
    (table,) = artifacts_of(again.state_details.flow_run_id)["table"]
    rows = table.data if isinstance(table.data, list) else yaml.safe_load(table.data)
    assert {r["file"]: r["status"] for r in cli["results"]} == {
        r["file"]: r["status"] for r in rows
    }
    assert [r["status"] for r in rows] == ["skipped", "skipped", "failed"]
    assert _manifest(cli_store) == _manifest(flow_store)


def test_both_faces_default_to_comfyfleet_store(
    prefect_harness: None,
    hub: FakeHub,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hub.add_file("org/l", "a.safetensors", payload(9_000, seed=5))
    path = tmp_path / "user.yaml"
    entry = {
        "id": "a",
        "folder": "loras",
        "file": "a.safetensors",
        "source": {"type": "hf", "repo": "org/l", "revision": "main", "path": "a.safetensors"},
    }
    path.write_text(yaml.safe_dump({"schema": 1, "models": [entry]}))
    env_store = tmp_path / "env-store"
    monkeypatch.setenv("COMFYFLEET_STORE", str(env_store))
    assert main(["mirror", "--catalog", str(path), "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert cli["store"] == env_store.as_uri()
    state = mirror_models_flow(catalog_paths=[str(path)], return_state=True)
    # The flow found what the CLI put into the same $COMFYFLEET_STORE.
    assert [r["status"] for r in state.result()] == ["skipped"]
    assert set(_manifest(env_store)) == {"a"}
