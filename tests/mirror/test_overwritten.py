"""An object replaced in the store behind the mirror's back (its ``sha256`` metadata kept)
is not "skipped": its size and ETag no longer match the manifest, so the mirror puts the
right bytes back, and readers of the manifest get the right fix (``mirror --force --only``)."""

from __future__ import annotations

import pytest

from comfyfleet.mirror.driver import mirror_files
from comfyfleet.sources import Tokens
from comfyfleet.store.base import ObjectStore
from comfyfleet.store.manifest import read_manifest, stale_entries
from tests.doubles.hf_hub import FakeHub
from tests.mirror.conftest import SETTINGS, hf_model
from tests.mirror.support import payload, sha


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
    stale = stale_entries(store, read_manifest(store))
    assert [(e.id, f"mirror --force --only {e.id}" in fix) for e, fix in stale] == [
        ("x", True),
        ("y", True),
    ]

    rerun = mirror_files([pinned, unpinned], store, tokens=Tokens(), settings=SETTINGS)
    assert [r.status for r in rerun.results] == ["mirrored", "mirrored"]
    for model in (pinned, unpinned):
        assert store.get_bytes(model.key) == good
    assert stale_entries(store, read_manifest(store)) == []
    again = mirror_files([pinned, unpinned], store, tokens=Tokens(), settings=SETTINGS)
    assert [r.status for r in again.results] == ["skipped", "skipped"]
