"""mirror_model / mirror_files: the real huggingface_hub against the test hub, into
LocalStore and SeaweedFS, with every fault the issue lists."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from comfyfleet.errors import GatedRepoError, SourceAuthError
from comfyfleet.mirror.driver import mirror_file, mirror_files
from comfyfleet.mirror.upload import MiB
from comfyfleet.sources import Tokens
from comfyfleet.store.base import ObjectStore
from comfyfleet.store.manifest import read_manifest
from tests.doubles.hf_hub import FakeHub
from tests.mirror.conftest import SETTINGS, hf_model
from tests.mirror.support import RecordingProgress, mirror_model, payload, sha

NO_TOKENS = Tokens()


def cdn_gets(hub: FakeHub) -> list[Any]:
    return [r for r in hub.requests if r.server == "cdn" and r.method == "GET"]


def uploads_left(store: ObjectStore, key: str) -> list[Any]:
    return list(store.find_multipart(key))


def test_mirror_models_then_rerun_downloads_nothing(hub: FakeHub, store: ObjectStore) -> None:
    a, b = payload(300_000, seed=1), payload(200_000, seed=2)
    commit = hub.add_file("org/loras", "style-a.safetensors", a)
    commit = hub.add_file("org/loras", "style-b.safetensors", b)
    pinned = hf_model(
        "style-a", "org/loras", "style-a.safetensors", revision=commit, sha256=sha(a), size=len(a)
    )
    unpinned = hf_model("style-b", "org/loras", "style-b.safetensors")

    run = mirror_files([pinned, unpinned], store, tokens=NO_TOKENS, settings=SETTINGS)
    assert [r.status for r in run.results] == ["mirrored", "mirrored"], run.results
    assert run.manifest_written
    for model, data in ((pinned, a), (unpinned, b)):
        assert store.get_bytes(model.key) == data
        assert store.head(model.key).sha256 == sha(data)
    manifest = read_manifest(store).by_key()
    assert manifest[pinned.key].sha256 == sha(a) and manifest[pinned.key].revision == commit
    assert manifest[unpinned.key].size == len(b) and manifest[unpinned.key].revision == commit
    assert len(cdn_gets(hub)) == 2

    before = len(hub.requests)
    rerun = mirror_files([pinned, unpinned], store, tokens=NO_TOKENS, settings=SETTINGS)
    assert [r.status for r in rerun.results] == ["skipped", "skipped"]
    assert len(cdn_gets(hub)) == 2  # not one more byte downloaded
    # The pinned entry needed no network at all; the unpinned one only metadata.
    assert all(r.server == "hub" for r in hub.requests[before:])
    assert not any("style-a" in r.path for r in hub.requests[before:])


def test_force_downloads_again(hub: FakeHub, local_store: ObjectStore) -> None:
    data = payload(100_000)
    hub.add_file("org/r", "x.safetensors", data)
    model = hf_model("x", "org/r", "x.safetensors", sha256=sha(data))
    assert mirror_model(model, local_store, tokens=NO_TOKENS, settings=SETTINGS).ok
    again = mirror_model(model, local_store, tokens=NO_TOKENS, settings=SETTINGS, force=True)
    assert again.status == "mirrored" and len(cdn_gets(hub)) == 2


def test_connection_cut_at_random_offset_resumes(hub: FakeHub, store: ObjectStore) -> None:
    data = payload(11 * MiB)
    hub.add_file("org/big", "big.safetensors", data)
    cut = random.Random().randrange(1, len(data) - 1)
    hub.faults.cut_after(cut)
    model = hf_model("big", "org/big", "big.safetensors", folder="checkpoints")
    progress = RecordingProgress()
    result = mirror_file(model, store, tokens=NO_TOKENS, settings=SETTINGS, progress=progress)
    assert result.status == "mirrored", f"cut at {cut}: {result}"
    assert result.sha256 == sha(data)
    assert store.get_bytes(model.key) == data
    gets = cdn_gets(hub)
    assert len(gets) == 2
    # Resumed from the last whole chunk received before the cut (never before it).
    resumed_at = int((gets[1].headers.get("range") or "bytes=0-")[6:-1])
    assert cut - SETTINGS.chunk_size < resumed_at <= cut
    assert progress.total == len(data)  # nothing counted twice
    assert uploads_left(store, model.key) == []


def test_corrupted_bytes_are_caught_and_retried(hub: FakeHub, store: ObjectStore) -> None:
    data = payload(11 * MiB)
    hub.add_file("org/c", "c.safetensors", data)
    hub.faults.corrupt(7 * MiB + 3, times=1)
    model = hf_model("c", "org/c", "c.safetensors", folder="checkpoints")
    progress = RecordingProgress()
    result = mirror_file(model, store, tokens=NO_TOKENS, settings=SETTINGS, progress=progress)
    assert result.status == "mirrored" and result.attempts == 2
    assert store.get_bytes(model.key) == data
    assert progress.total == len(data)  # the first attempt was rewound
    assert hub.faults.fired["corrupt"] == 1


def test_corruption_that_persists_is_never_stored(hub: FakeHub, store: ObjectStore) -> None:
    data = payload(11 * MiB)
    hub.add_file("org/c", "c.safetensors", data)
    hub.faults.corrupt(100, times=None)
    model = hf_model("c", "org/c", "c.safetensors", folder="checkpoints")
    result = mirror_model(model, store, tokens=NO_TOKENS, settings=SETTINGS)
    assert result.status == "failed"
    assert result.error is not None and "sha256 mismatch" in result.error
    assert sha(data) in result.error  # both hashes named
    assert store.exists(model.key) is None
    assert uploads_left(store, model.key) == []  # the multipart upload was aborted
    assert len(cdn_gets(hub)) == 2  # retried once, then gave up


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_then_success(hub: FakeHub, local_store: ObjectStore, status: int) -> None:
    data = payload(150_000)
    hub.add_file("org/e", "e.safetensors", data)
    hub.faults.fail(status, times=2)
    model = hf_model("e", "org/e", "e.safetensors")
    result = mirror_file(model, local_store, tokens=NO_TOKENS, settings=SETTINGS)
    assert result.status == "mirrored" and local_store.get_bytes(model.key) == data
    assert hub.faults.fired["fail"] == 2


def test_rate_limit_honours_retry_after(hub: FakeHub, local_store: ObjectStore) -> None:
    data = payload(150_000)
    hub.add_file("org/r", "r.safetensors", data)
    hub.faults.rate_limit(retry_after="1", times=1)
    model = hf_model("r", "org/r", "r.safetensors")
    began = time.monotonic()
    result = mirror_file(model, local_store, tokens=NO_TOKENS, settings=SETTINGS)
    waited = time.monotonic() - began
    assert result.status == "mirrored"
    assert waited >= 1.0  # SETTINGS' own backoff is 0.05 s: the wait is the server's
    assert hub.faults.fired["rate_limit"] == 1


def test_private_repo_without_token_fails_clearly_without_retry(
    hub: FakeHub, local_store: ObjectStore
) -> None:
    hub.add_file("org/private", "p.safetensors", payload(1000))
    hub.add_repo("org/private", private=True)
    model = hf_model("p", "org/private", "p.safetensors")
    before = len(hub.requests)
    result = mirror_model(model, local_store, tokens=NO_TOKENS, settings=SETTINGS)
    assert result.status == "failed" and not result.transient
    assert result.error is not None and "HF_TOKEN" in result.error
    assert "\n" not in result.error
    # One resolve attempt (model_info), no retries, no bytes.
    assert len(hub.requests) - before == 1 and cdn_gets(hub) == []


def test_gated_repo_needs_granted_token(hub: FakeHub, local_store: ObjectStore) -> None:
    data = payload(50_000)
    hub.add_file("org/gated", "g.safetensors", data)
    hub.add_repo("org/gated", gated="auto")
    hub.add_token("hf_not_granted")
    model = hf_model("g", "org/gated", "g.safetensors")
    with pytest.raises(GatedRepoError) as info:
        mirror_file(model, local_store, tokens=Tokens(hf="hf_not_granted"), settings=SETTINGS)
    assert "accept the terms" in str(info.value)
    assert "hf_not_granted" not in str(info.value)
    with pytest.raises(SourceAuthError):
        mirror_file(model, local_store, tokens=NO_TOKENS, settings=SETTINGS)
    hub.grant("org/gated", "hf_granted")
    result = mirror_file(model, local_store, tokens=Tokens(hf="hf_granted"), settings=SETTINGS)
    assert result.status == "mirrored" and local_store.get_bytes(model.key) == data
    # The token went to the hub, never to the CDN.
    assert all("authorization" not in r.headers for r in cdn_gets(hub))


def test_source_that_ignores_range_still_lands_correct_bytes(
    hub: FakeHub, store: ObjectStore
) -> None:
    data = payload(11 * MiB)
    hub.add_file("org/n", "n.safetensors", data)
    hub.faults.ignore_range()
    hub.faults.cut_after(6 * MiB + 11)
    model = hf_model("n", "org/n", "n.safetensors", folder="checkpoints")
    result = mirror_file(model, store, tokens=NO_TOKENS, settings=SETTINGS)
    assert result.status == "mirrored" and result.sha256 == sha(data)
    assert store.get_bytes(model.key) == data
    assert hub.faults.fired["ignore_range"] >= 2


@pytest.mark.s3
def test_cross_process_resume_reuses_parts(hub: FakeHub, s3_store: ObjectStore) -> None:
    data = payload(16 * MiB)
    hub.add_file("org/big", "big.safetensors", data)
    model = hf_model("big", "org/big", "big.safetensors", folder="checkpoints")
    # What a killed earlier run leaves behind: an unfinished upload with two parts.
    old = s3_store.create_multipart(model.key, metadata={"sha256": sha(data)})
    old.put_part(1, data[: 5 * MiB])
    old.put_part(2, data[5 * MiB : 10 * MiB])
    result = mirror_file(model, s3_store, tokens=NO_TOKENS, settings=SETTINGS)
    assert result.status == "mirrored" and result.parts_reused == 2
    assert result.bytes_uploaded == 6 * MiB
    assert s3_store.get_bytes(model.key) == data
    assert uploads_left(s3_store, model.key) == []


def test_upstream_change_against_pin_downloads_nothing(
    hub: FakeHub, local_store: ObjectStore
) -> None:
    hub.add_file("org/u", "u.safetensors", payload(10_000, seed=5))
    model = hf_model("u", "org/u", "u.safetensors", sha256=sha(b"the pinned bytes"))
    result = mirror_model(model, local_store, tokens=NO_TOKENS, settings=SETTINGS)
    assert result.status == "failed"
    assert result.error is not None and result.error.startswith("UpstreamChanged")
    assert "upstream changed" in result.error
    assert cdn_gets(hub) == [] and local_store.exists(model.key) is None


def test_one_failure_does_not_stop_the_others(hub: FakeHub, local_store: ObjectStore) -> None:
    good = payload(20_000)
    hub.add_file("org/g", "good.safetensors", good)
    models = [
        hf_model("missing", "org/g", "nope.safetensors"),
        hf_model("good", "org/g", "good.safetensors"),
    ]
    run = mirror_files(models, local_store, tokens=NO_TOKENS, settings=SETTINGS)
    assert [r.status for r in run.results] == ["failed", "mirrored"]
    assert not run.ok and run.manifest_written
    assert [e.id for e in read_manifest(local_store).entries] == ["good"]
