"""Hugging Face source: the real huggingface_hub against the test hub, our byte stream."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx
import pytest
from huggingface_hub import HfApi, hf_hub_download

from comfyfleet.catalog import ModelFile
from comfyfleet.errors import (
    GatedRepoError,
    RateLimited,
    SourceAuthError,
    SourceNotFound,
    SourceUnavailable,
    UpstreamChanged,
)
from comfyfleet.sources import Tokens, describe_upstream, latest_revision, open_stream, resolve
from tests.doubles.hf_hub import FakeHub

DATA = os.urandom(256 * 1024 + 17)
SHA = hashlib.sha256(DATA).hexdigest()


def hf_model(
    repo: str = "org/repo", path: str = "unet/model.safetensors", revision: str = "main"
) -> ModelFile:
    return ModelFile(
        id="m",
        folder="diffusion_models",
        file="model.safetensors",
        source={"type": "hf", "repo": repo, "revision": revision, "path": path},
    )


def read_all(plan: object, offset: int = 0, **kw: object) -> bytes:
    with open_stream(plan, offset, **kw) as stream:  # type: ignore[arg-type]
        return b"".join(stream)


def test_the_double_serves_the_real_library(hub: FakeHub, tmp_path: Path) -> None:
    # The library's own download (HEAD -> 302 to the CDN origin -> GET) works end to end.
    hub.add_file("org/repo", "unet/model.safetensors", DATA)
    path = hf_hub_download(
        "org/repo", "unet/model.safetensors", endpoint=hub.endpoint, token=False, cache_dir=tmp_path
    )
    assert Path(path).read_bytes() == DATA
    meta = HfApi(endpoint=hub.endpoint, token=False).get_hf_file_metadata(
        url=f"{hub.endpoint}/org/repo/resolve/main/unet/model.safetensors"
    )
    assert meta.etag == SHA and meta.size == len(DATA)
    assert meta.location.startswith(hub.cdn_url)


def test_resolve_branch_gives_commit_sha_size(hub: FakeHub) -> None:
    commit = hub.add_file("org/repo", "unet/model.safetensors", DATA)
    plan = resolve(hf_model(), Tokens())
    assert plan.revision == commit
    assert plan.sha256 == SHA
    assert plan.size == len(DATA)
    assert plan.file_name == "model.safetensors"
    assert plan.url == f"{hub.endpoint}/org/repo/resolve/{commit}/unet/model.safetensors"
    assert plan.source == f"hf://org/repo@{commit[:12]}/unet/model.safetensors"
    assert plan.headers == {}


def test_resolve_pinned_commit_stays_on_it(hub: FakeHub) -> None:
    first = hub.add_file("org/repo", "unet/model.safetensors", DATA)
    hub.add_file("org/repo", "unet/model.safetensors", b"newer bytes")
    plan = resolve(hf_model(revision=first), Tokens())
    assert plan.revision == first and plan.sha256 == SHA
    assert read_all(plan) == DATA
    assert latest_revision(hf_model(), Tokens()) == hub.commit_of("org/repo")
    assert latest_revision(hf_model(revision=first), Tokens(), ref="main") != first


def test_non_lfs_file_has_size_but_no_sha256(hub: FakeHub) -> None:
    hub.add_file("org/repo", "config.json", b'{"a": 1}')
    plan = resolve(hf_model(path="config.json"), Tokens())
    assert plan.sha256 is None and plan.size == 8
    assert read_all(plan) == b'{"a": 1}'
    assert read_all(plan, 3) == b'{"a": 1}'[3:]


def test_describe_upstream_reports_current_commit(hub: FakeHub) -> None:
    hub.add_file("org/repo", "unet/model.safetensors", DATA)
    up = describe_upstream(hf_model(), Tokens())
    assert (up.revision, up.sha256, up.size) == (hub.commit_of("org/repo"), SHA, len(DATA))


def test_gated_repo_anonymous_and_unapproved(hub: FakeHub) -> None:
    hub.add_file("org/gated", "unet/model.safetensors", DATA)
    hub.add_repo("org/gated", gated="auto")
    hub.add_token("hf_other_user_token")
    for tokens in (Tokens(), Tokens(hf="hf_other_user_token")):
        with pytest.raises(GatedRepoError) as info:
            resolve(hf_model("org/gated"), tokens)
        text = str(info.value)
        assert f"accept the terms at {hub.endpoint}/org/gated" in text
        assert "HF_TOKEN" in text
        assert "hf_other_user_token" not in text


def test_gated_repo_with_granted_token(hub: FakeHub) -> None:
    hub.add_file("org/gated", "unet/model.safetensors", DATA)
    hub.add_repo("org/gated", gated="manual")
    hub.grant("org/gated", "hf_granted")
    plan = resolve(hf_model("org/gated"), Tokens(hf="hf_granted"))
    assert plan.headers == {"Authorization": "Bearer hf_granted"}
    assert "hf_granted" not in repr(plan)
    assert read_all(plan, 100) == DATA[100:]
    cdn = [r for r in hub.requests if r.server == "cdn"]
    hubside = [r for r in hub.requests if r.server == "hub" and "/resolve/" in r.path]
    assert cdn and all("authorization" not in r.headers for r in cdn)
    assert all(r.headers.get("authorization") == "Bearer hf_granted" for r in hubside)


def test_gated_error_also_from_the_stream(hub: FakeHub) -> None:
    hub.add_file("org/gated", "unet/model.safetensors", DATA)
    hub.grant("org/gated", "hf_granted")
    hub.add_repo("org/gated", gated="auto")
    plan = resolve(hf_model("org/gated"), Tokens(hf="hf_granted"))
    hub.repos["org/gated"].granted.clear()  # access revoked between resolve and download
    with pytest.raises(GatedRepoError, match="accept the terms"):
        open_stream(plan)


@pytest.mark.parametrize(
    ("repo", "revision", "path", "needle"),
    [
        ("org/missing", "main", "unet/model.safetensors", "repository org/missing not found"),
        ("org/repo", "no-such-branch", "unet/model.safetensors", "revision 'no-such-branch'"),
        ("org/repo", "main", "unet/absent.safetensors", "file 'unet/absent.safetensors'"),
    ],
)
def test_missing_things_are_source_not_found(
    hub: FakeHub, repo: str, revision: str, path: str, needle: str
) -> None:
    hub.add_file("org/repo", "unet/model.safetensors", DATA)
    with pytest.raises(SourceNotFound, match=needle):
        resolve(hf_model(repo, path, revision), Tokens())


def test_private_repo_needs_token(hub: FakeHub) -> None:
    hub.add_file("org/private", "unet/model.safetensors", DATA)
    hub.add_repo("org/private", private=True)
    with pytest.raises(SourceNotFound, match="no HF_TOKEN is set"):
        resolve(hf_model("org/private"), Tokens())
    hub.grant("org/private", "hf_private")
    assert resolve(hf_model("org/private"), Tokens(hf="hf_private")).sha256 == SHA


def test_invalid_token_is_an_auth_error(hub: FakeHub) -> None:
    hub.add_file("org/repo", "unet/model.safetensors", DATA)
    with pytest.raises(SourceAuthError, match="HF_TOKEN") as info:
        resolve(hf_model(), Tokens(hf="hf_wrong_secret"))
    assert "hf_wrong_secret" not in str(info.value)


def test_folder_path_is_refused(hub: FakeHub) -> None:
    from comfyfleet.errors import ConfigError

    hub.add_file("org/repo", "unet/model.safetensors", DATA)
    with pytest.raises(ConfigError, match="is a folder"):
        resolve(hf_model(path="unet"), Tokens())


def test_renamed_repo_follows_relative_redirects(hub: FakeHub) -> None:
    hub.add_file("old/name", "unet/model.safetensors", DATA)
    hub.rename_repo("old/name", "new/name")
    plan = resolve(hf_model("old/name"), Tokens())
    assert plan.sha256 == SHA
    assert read_all(plan) == DATA


def test_stream_from_offset_and_chunking(hub: FakeHub) -> None:
    hub.add_file("org/repo", "unet/model.safetensors", DATA)
    plan = resolve(hf_model(), Tokens())
    with open_stream(plan, 1000, chunk_size=4096) as stream:
        chunks = list(stream)
        assert stream.total_size == len(DATA)
        assert stream.file_name == "model.safetensors"
    assert b"".join(chunks) == DATA[1000:]
    assert max(len(c) for c in chunks) <= 4096
    ranged = [r for r in hub.requests if r.server == "cdn" and r.method == "GET"]
    assert ranged[-1].headers["range"] == "bytes=1000-"
    assert read_all(plan, len(DATA)) == b""  # nothing left: 416 with */size


def test_cut_connection_raises_transient_then_resumes(hub: FakeHub) -> None:
    hub.add_file("org/repo", "unet/model.safetensors", DATA)
    plan = resolve(hf_model(), Tokens())
    hub.faults.cut_after(100_003)
    got = bytearray()
    with pytest.raises(SourceUnavailable) as info, open_stream(plan, chunk_size=8192) as stream:
        for chunk in stream:
            got.extend(chunk)
    assert info.value.source == plan.source
    assert 0 < len(got) <= 100_003
    rest = read_all(plan, len(got))
    assert bytes(got) + rest == DATA
    assert hashlib.sha256(bytes(got) + rest).hexdigest() == plan.sha256


def test_server_ignoring_range_is_skipped_client_side(hub: FakeHub) -> None:
    hub.add_file("org/repo", "unet/model.safetensors", DATA)
    plan = resolve(hf_model(), Tokens())
    hub.faults.ignore_range()
    with open_stream(plan, 12_345, chunk_size=1000) as stream:
        assert b"".join(stream) == DATA[12_345:]
    assert hub.faults.fired["ignore_range"] == 1


def test_corrupt_knob_flips_one_byte_once(hub: FakeHub) -> None:
    # The source layer passes bytes through; catching this is the mirror's sha256 check.
    hub.add_file("org/repo", "unet/model.safetensors", DATA)
    plan = resolve(hf_model(), Tokens())
    hub.faults.corrupt(5000)
    bad = read_all(plan)
    assert len(bad) == len(DATA) and hashlib.sha256(bad).hexdigest() != plan.sha256
    assert [i for i in range(len(DATA)) if bad[i] != DATA[i]] == [5000]
    assert read_all(plan) == DATA


def test_5xx_and_429_on_the_cdn_are_transient(hub: FakeHub) -> None:
    hub.add_file("org/repo", "unet/model.safetensors", DATA)
    plan = resolve(hf_model(), Tokens())
    hub.faults.fail(503, times=2)
    for _ in range(2):
        with pytest.raises(SourceUnavailable, match="HTTP 503"):
            open_stream(plan)
    hub.faults.rate_limit("7")
    with pytest.raises(RateLimited) as info:
        open_stream(plan)
    assert info.value.retry_after == 7
    assert read_all(plan) == DATA


def test_changed_upstream_size_is_caught_before_reading(hub: FakeHub) -> None:
    hub.add_file("org/repo", "unet/model.safetensors", DATA)
    plan = resolve(hf_model(), Tokens())
    from dataclasses import replace

    with pytest.raises(UpstreamChanged, match="size mismatch"):
        open_stream(replace(plan, size=len(DATA) + 1))


def test_unreachable_hub_is_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeHub() as gone:
        endpoint = gone.endpoint
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    with pytest.raises(SourceUnavailable, match="cannot reach"):
        resolve(hf_model(), Tokens())


def test_caller_client_is_used_and_left_open(hub: FakeHub) -> None:
    hub.add_file("org/repo", "unet/model.safetensors", DATA)
    plan = resolve(hf_model(), Tokens())
    with httpx.Client() as client:
        assert read_all(plan, 5, http=client) == DATA[5:]
        assert not client.is_closed
