"""An object replaced in the store behind the mirror's back (its ``sha256`` metadata kept)
is not "skipped": its size and ETag no longer match the manifest, so the mirror puts the
right bytes back, and readers of the manifest get the right fix (``mirror --force --only``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from comfyfleet.errors import StoreError
from comfyfleet.mirror.driver import mirror_files
from comfyfleet.sources import Tokens
from comfyfleet.store.base import ObjectStore
from comfyfleet.store.manifest import (
    Manifest,
    read_manifest,
    require_current,
    stale_entries,
    write_manifest,
)
from comfyfleet.warmup.driver import warm_up
from comfyfleet.warmup.options import WarmupOptions
from tests.doubles.hf_hub import FakeHub
from tests.mirror.conftest import SETTINGS, hf_model
from tests.mirror.support import payload, sha
from tests.warmup import mirrored


@pytest.mark.parametrize("same_size", [True, False])
def test_overwritten_object_is_mirrored_again(
    hub: FakeHub, store: ObjectStore, same_size: bool
) -> None:
    good = payload(120_000, seed=1)
    commit = hub.add_file("org/r", "x.safetensors", good)
    pinned = hf_model(
        "x", "org/r", "x.safetensors", revision=commit, sha256=sha(good), size=len(good)
    )
    unpinned = hf_model("y", "org/r", "x.safetensors", folder="vae")
    assert mirror_files([pinned, unpinned], store, tokens=Tokens(), settings=SETTINGS).ok

    # Someone copies other bytes over both objects and keeps the metadata.
    bad = payload(len(good) if same_size else 90_000, seed=2)
    for model in (pinned, unpinned):
        store.put_bytes(model.key, bad, metadata=dict(store.head(model.key).metadata))
        assert store.head(model.key).sha256 == sha(good)  # the metadata still vouches
    stale = stale_entries(store, read_manifest(store).entries)
    assert [(e.id, f"mirror --force --only {e.id}" in fix) for e, fix in stale] == [
        ("x", True),
        ("y", True),
    ]

    with pytest.raises(StoreError) as caught:
        require_current(store, read_manifest(store).entries)
    assert "mirror --force --only x --only y" in (caught.value.hint or "")

    rerun = mirror_files([pinned, unpinned], store, tokens=Tokens(), settings=SETTINGS)
    assert [r.status for r in rerun.results] == ["mirrored", "mirrored"]
    for model in (pinned, unpinned):
        assert store.get_bytes(model.key) == good
    assert stale_entries(store, read_manifest(store).entries) == []
    require_current(store, read_manifest(store).entries)
    again = mirror_files([pinned, unpinned], store, tokens=Tokens(), settings=SETTINGS)
    assert [r.status for r in again.results] == ["skipped", "skipped"]


@pytest.mark.parametrize("same_size", [True, False])
def test_warmup_names_the_mirror_command_for_an_overwritten_object(
    store: ObjectStore, tmp_path: Path, same_size: bool
) -> None:
    """The warm-up refuses before the first byte, with `mirror --force --only ID` (not the
    pull's "re-pin the catalog", which is what a mismatch after download would say)."""
    entries = mirrored.mirror(store, ["base", "vae"])
    # Record the ETags, as the mirror does, so a same-size overwrite is noticed too.
    write_manifest(
        store,
        Manifest(entries=[e.model_copy(update={"etag": store.head(e.key).etag}) for e in entries]),
    )
    vae = next(e for e in entries if e.id == "vae")
    bad = payload(vae.size if same_size else vae.size + 1_000, seed=3)
    store.put_bytes(vae.key, bad, metadata=dict(store.head(vae.key).metadata))
    assert store.head(vae.key).sha256 == vae.sha256  # the metadata still vouches

    root = tmp_path / "ComfyUI"
    root.mkdir()
    (root / "main.py").write_text("# ComfyUI\n")
    result = warm_up(
        WarmupOptions(comfy_root=root, profile="minimal", history=False),
        store=store,
        catalog=mirrored.catalog(tmp_path),
        facts=mirrored.facts(root, 12),
    )
    assert not result.ok and result.error is not None
    assert "vae.safetensors" in result.error.message
    assert "comfyfleet mirror --force --only vae" in (result.error.hint or "")
    assert "re-pin" not in (result.error.hint or "")
    assert not (root / "models").exists() or not any((root / "models").rglob("*.safetensors"))

    # Once the mirror put the bytes back, the same warm-up gets past the pull.
    store.put_bytes(vae.key, mirrored.content("vae"), metadata=dict(store.head(vae.key).metadata))
    write_manifest(
        store,
        Manifest(entries=[e.model_copy(update={"etag": store.head(e.key).etag}) for e in entries]),
    )
    again = warm_up(
        WarmupOptions(comfy_root=root, profile="minimal", history=False),
        store=store,
        catalog=mirrored.catalog(tmp_path),
        facts=mirrored.facts(root, 12),
    )
    assert (root / "models" / "vae" / "vae.safetensors").read_bytes() == mirrored.content("vae")
    assert again.record.phase("pull").status == "ok"  # type: ignore[union-attr]
