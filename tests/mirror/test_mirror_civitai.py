"""Mirroring from the CivitAI test server: tokens, redirects, hostile names, refresh."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from comfyfleet.catalog import CivitaiSource, ModelFile
from comfyfleet.cli import main
from comfyfleet.mirror.driver import mirror_file, mirror_files
from comfyfleet.mirror.refresh import check_upstream
from comfyfleet.sources import Tokens
from comfyfleet.store.base import ObjectStore
from comfyfleet.store.local import LocalStore
from comfyfleet.store.manifest import read_manifest
from tests.doubles.civitai import FakeCivitai
from tests.mirror.conftest import SETTINGS
from tests.mirror.support import mirror_model, payload, sha

TOKEN = "civ-secret-key"


def civitai_model(model_id: str, version_id: int, file: str, **extra: object) -> ModelFile:
    return ModelFile(
        id=model_id,
        folder="loras",
        file=file,
        source=CivitaiSource(type="civitai", version_id=version_id),
        **extra,  # type: ignore[arg-type]
    )


def storage_requests(civitai: FakeCivitai) -> list[object]:
    return [r for r in civitai.requests if r.server == "storage" and r.method == "GET"]


def test_mirror_with_token_never_sends_it_to_storage(
    civitai: FakeCivitai, store: ObjectStore
) -> None:
    data = payload(250_000)
    civitai.add_model(10, "Ink Style", type="LORA")
    civitai.add_version(10, 11, "v1", require_auth=True)
    civitai.add_file(11, "ink_style.safetensors", data)
    civitai.add_token(TOKEN)
    model = civitai_model("ink", 11, "ink_style.safetensors")
    result = mirror_file(model, store, tokens=Tokens(civitai=TOKEN), settings=SETTINGS)
    assert result.status == "mirrored"
    assert result.sha256 == sha(data)  # the API's uppercase SHA256, compared case-insensitively
    assert store.get_bytes(model.key) == data
    assert store.head(model.key).sha256 == sha(data)
    assert result.revision == "11"
    gets = storage_requests(civitai)
    assert gets and all("authorization" not in r.headers for r in gets)  # type: ignore[attr-defined]

    # Rerun with the pin the first run learnt: no request at all.
    pinned = civitai_model("ink", 11, "ink_style.safetensors", sha256=sha(data), size=len(data))
    before = len(civitai.requests)
    again = mirror_file(pinned, store, tokens=Tokens(civitai=TOKEN), settings=SETTINGS)
    assert again.status == "skipped" and len(civitai.requests) == before
    # Unpinned rerun: metadata only, the download endpoint is not hit (it counts downloads).
    downloads = sum(civitai.downloads.values())
    assert mirror_file(model, store, tokens=Tokens(civitai=TOKEN), settings=SETTINGS).status == (
        "skipped"
    )
    assert sum(civitai.downloads.values()) == downloads


def test_login_required_without_token_fails_once_with_a_hint(
    civitai: FakeCivitai, local_store: ObjectStore
) -> None:
    civitai.add_model(20, "Locked", type="LORA")
    civitai.add_version(20, 21, "v1", require_auth=True)
    civitai.add_file(21, "locked.safetensors", payload(1000))
    model = civitai_model("locked", 21, "locked.safetensors")
    result = mirror_model(model, local_store, tokens=Tokens(), settings=SETTINGS)
    assert result.status == "failed" and not result.transient
    assert result.error is not None
    assert "SourceAuthError" in result.error and "CIVITAI_TOKEN" in result.error
    download_hits = [r for r in civitai.requests if "/api/download/" in r.path]
    assert len(download_hits) == 1  # not retried
    assert local_store.exists(model.key) is None


def test_hostile_content_disposition_cannot_leave_the_folder(
    civitai: FakeCivitai, store: ObjectStore
) -> None:
    data = payload(30_000)
    civitai.add_model(30, "Sneaky", type="LORA")
    civitai.add_version(30, 31, "v1")
    civitai.add_file(
        31,
        "sneaky.safetensors",
        data,
        content_disposition='attachment; filename="../../x"',
    )
    model = civitai_model("sneaky", 31, "sneaky.safetensors")
    run = mirror_files([model], store, tokens=Tokens(), settings=SETTINGS)
    assert run.ok
    keys = sorted(info.key for info in store.list())
    assert keys == ["manifest.json", "models/loras/sneaky.safetensors"]


def test_lora_add_civitai_link_hostile_names_and_learnt_size(
    civitai: FakeCivitai, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = payload(40_000)
    civitai.add_model(40, "Paper Cut", type="LORA")
    civitai.add_version(40, 41, "v2")
    civitai.add_file(
        41, "paper: cut?.safetensors", data, content_disposition='attachment; filename="../x"'
    )
    catalog = tmp_path / "loras.yaml"
    store = tmp_path / "store"
    link = f"https://civitai.com/models/40/paper-cut?modelVersionId=41&token={TOKEN}"
    code = main(["lora", "add", link, "--catalog", str(catalog), "--store", str(store)])
    out, err = capsys.readouterr()
    assert code == 0, err
    (entry,) = yaml.safe_load(catalog.read_text())["models"]
    assert entry["file"] == "paper cut.safetensors"
    assert entry["source"] == {
        "type": "civitai",
        "model_id": 40,
        "version_id": 41,
        "file_name": "paper cut.safetensors",
    }
    assert entry["sha256"] == sha(data) and entry["size"] == len(data)
    assert TOKEN not in catalog.read_text()
    assert sorted(i.key for i in LocalStore(store).list()) == [
        "manifest.json",
        "models/loras/paper cut.safetensors",
    ]
    assert "mirrored" in out


def test_rate_limited_download_endpoint_waits(
    civitai: FakeCivitai, local_store: ObjectStore
) -> None:
    civitai.add_model(50, "Busy", type="LORA")
    civitai.add_version(50, 51, "v1")
    civitai.add_file(51, "busy.safetensors", payload(5000))
    civitai.faults.rate_limit(retry_after="1", where="resolve")
    began = time.monotonic()
    result = mirror_file(
        civitai_model("busy", 51, "busy.safetensors"),
        local_store,
        tokens=Tokens(),
        settings=SETTINGS,
    )
    assert result.status == "mirrored" and time.monotonic() - began >= 1.0


def test_refresh_reports_new_version_and_changed_bytes_without_replacing(
    civitai: FakeCivitai, local_store: ObjectStore
) -> None:
    old = payload(6000, seed=1)
    civitai.add_model(60, "Evolving", type="LORA")
    civitai.add_version(60, 61, "v1")
    civitai.add_file(61, "evolving_v1.safetensors", old)
    tracked = ModelFile(
        id="evolving",
        folder="loras",
        file="evolving.safetensors",
        source=CivitaiSource(type="civitai", model_id=60, version_id=61),
        sha256=sha(old),
    )
    assert mirror_files([tracked], local_store, tokens=Tokens(), settings=SETTINGS).ok
    assert check_upstream([tracked], local_store, Tokens()) == []

    civitai.add_version(60, 62, "v2")
    civitai.add_file(62, "evolving_v2.safetensors", payload(6000, seed=2))
    changes = check_upstream([tracked], local_store, Tokens())
    assert [(c.kind, c.old, c.new, c.pinned) for c in changes] == [
        ("new-version", "61", "62", True)
    ]
    assert "not replaced" in changes[0].detail

    # The tracked version's file itself changes (re-upload): reported, and mirror refuses.
    civitai.versions[61].files[0].data = payload(6000, seed=3)
    kinds = [c.kind for c in check_upstream([tracked], local_store, Tokens())]
    assert "changed-sha256" in kinds
    result = mirror_model(tracked, local_store, tokens=Tokens(), settings=SETTINGS, force=True)
    assert result.status == "failed" and "UpstreamChanged" in (result.error or "")
    assert local_store.get_bytes(tracked.key) == old
    assert read_manifest(local_store).by_key()[tracked.key].sha256 == sha(old)
