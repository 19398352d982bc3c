"""CivitAI source against the CivitAI test server (API + separate storage host)."""

from __future__ import annotations

import email.utils
import hashlib
import os
import time

import httpx
import pytest

from comfyfleet.catalog import ModelFile
from comfyfleet.errors import (
    RateLimited,
    RegionBlocked,
    SourceAuthError,
    SourceNotFound,
    SourceProtocolError,
    SourceUnavailable,
)
from comfyfleet.sources import (
    Tokens,
    civitai_latest_version,
    describe_upstream,
    open_stream,
    parse_link,
    resolve,
)
from comfyfleet.sources.civitai import inspect_civitai
from tests.doubles.civitai import FakeCivitai

LORA = os.urandom(64 * 1024 + 5)
VAE = os.urandom(10_000)
TOKEN = "civ-secret-key-0123456789"


def setup_model(civ: FakeCivitai) -> None:
    civ.add_model(100, "Detail Tweaker", type="LORA")
    civ.add_version(100, 200, "v1.0")
    civ.add_file(200, "detail_v1.safetensors", b"old version bytes", file_id=2001)
    civ.add_version(100, 201, "v2.0", base_model="Pony")
    civ.add_file(201, "detail_v2.safetensors", LORA, file_id=2011)
    civ.add_file(
        201,
        "detail_v2_vae.safetensors",
        VAE,
        file_id=2012,
        type="VAE",
        metadata={"format": "SafeTensor", "size": "full", "fp": "fp32"},
    )
    civ.add_token(TOKEN)


def civ_model(**source: object) -> ModelFile:
    return ModelFile(
        id="lora", folder="loras", file="detail.safetensors", source={"type": "civitai", **source}
    )


def read_all(plan: object, offset: int = 0) -> bytes:
    with open_stream(plan, offset) as stream:  # type: ignore[arg-type]
        return b"".join(stream)


def test_resolve_version_with_hashes(civitai: FakeCivitai) -> None:
    setup_model(civitai)
    plan = resolve(civ_model(version_id=201), Tokens(civitai=TOKEN))
    assert plan.sha256 == hashlib.sha256(LORA).hexdigest()  # from UPPERCASE hashes.SHA256
    assert plan.file_name == "detail_v2.safetensors"
    assert plan.revision == "201"
    assert plan.url == f"{civitai.base_url}/api/download/models/201?fileId=2011"
    assert plan.source == "civitai:version/201/file/2011"
    assert plan.size is None and plan.approx_size is not None
    assert abs(plan.approx_size - len(LORA)) < 16  # sizeKB is rounded
    assert plan.headers == {"Authorization": f"Bearer {TOKEN}"}
    assert read_all(plan) == LORA
    assert civitai.downloads[201] == 1


def test_model_id_only_takes_the_newest_version(civitai: FakeCivitai) -> None:
    setup_model(civitai)
    assert civitai_latest_version(100, Tokens()) == 201
    plan = resolve(civ_model(model_id=100), Tokens())
    assert plan.revision == "201"
    up = describe_upstream(civ_model(version_id=200), Tokens())
    assert (up.revision, up.latest_version) == ("200", 201)
    assert up.sha256 == hashlib.sha256(b"old version bytes").hexdigest()


@pytest.mark.parametrize(
    ("link", "expected_file"),
    [
        ("https://civitai.com/models/100/detail-tweaker?modelVersionId=201", 2011),
        ("https://civitai.com/api/download/models/201?type=VAE", 2012),
        ("https://civitai.red/api/download/models/201?fileId=2012&token=leaky", 2012),
        ("urn:air:pony:lora:civitai:100@200", 2001),
    ],
)
def test_links_pick_the_right_file(civitai: FakeCivitai, link: str, expected_file: int) -> None:
    setup_model(civitai)
    source = parse_link(link)
    choice = inspect_civitai(source, Tokens())  # type: ignore[arg-type]
    assert choice.file_id == expected_file
    assert "leaky" not in (source.url or "")


def test_file_name_selects_and_folder_is_suggested(civitai: FakeCivitai) -> None:
    setup_model(civitai)
    choice = inspect_civitai(
        civ_model(version_id=201, file_name="detail_v2_vae.safetensors").source, Tokens()
    )  # type: ignore[arg-type]
    assert (choice.file_id, choice.folder) == (2012, "vae")
    main = inspect_civitai(civ_model(version_id=201).source, Tokens())  # type: ignore[arg-type]
    assert (main.folder, main.base_model, main.primary) == ("loras", "Pony", True)
    with pytest.raises(SourceNotFound, match="no file named 'nope.bin'"):
        resolve(civ_model(version_id=201, file_name="nope.bin"), Tokens())


def test_by_hash_link(civitai: FakeCivitai) -> None:
    setup_model(civitai)
    autov2 = hashlib.sha256(LORA).hexdigest()[:10]
    source = parse_link(f"https://civitai.com/api/v1/model-versions/by-hash/{autov2}")
    plan = resolve(ModelFile(id="x", folder="loras", file="x.safetensors", source=source), Tokens())
    assert plan.revision == "201"


def test_token_goes_to_api_not_to_storage_host(civitai: FakeCivitai) -> None:
    setup_model(civitai)
    plan = resolve(civ_model(version_id=201), Tokens(civitai=TOKEN))
    assert read_all(plan, 1234) == LORA[1234:]
    api = [r for r in civitai.requests if r.server == "api"]
    storage = [r for r in civitai.requests if r.server == "storage"]
    assert api and all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in api)
    assert storage and all("authorization" not in r.headers for r in storage)
    assert storage[-1].headers["range"] == "bytes=1234-"
    assert all("comfyfleet" in r.headers.get("user-agent", "") for r in api)


def test_storage_host_rejects_authorization(civitai: FakeCivitai) -> None:
    # The double does what the real storage host does, so a leak would fail loudly.
    setup_model(civitai)
    first = httpx.get(f"{civitai.base_url}/api/download/models/201")
    assert first.status_code == 307
    location = first.headers["location"]
    assert location.startswith(civitai.storage_url)
    leaked = httpx.get(location, headers={"Authorization": f"Bearer {TOKEN}"})
    assert leaked.status_code == 400 and b"InvalidArgument" in leaked.content
    assert httpx.get(location).content == LORA


def test_content_disposition_names_the_file(civitai: FakeCivitai) -> None:
    setup_model(civitai)
    civitai.versions[201].files[0].content_disposition = (
        'attachment; filename="fallback.safetensors"; '
        "filename*=UTF-8''D%C3%A9tail%20v2.safetensors"
    )
    plan = resolve(civ_model(version_id=201), Tokens())
    with open_stream(plan) as stream:
        assert stream.file_name == "Détail v2.safetensors"
        assert b"".join(stream) == LORA


@pytest.mark.parametrize(
    "hostile",
    [
        'attachment; filename="../../x"',
        "attachment; filename*=UTF-8''..%2F..%2F.bashrc",
        'attachment; filename="..\\\\..\\\\evil.dll"',
        'attachment; filename="/etc/passwd"',
        'attachment; filename=".."',
    ],
)
def test_hostile_content_disposition_is_sanitised(civitai: FakeCivitai, hostile: str) -> None:
    setup_model(civitai)
    civitai.versions[201].files[0].content_disposition = hostile
    plan = resolve(civ_model(version_id=201), Tokens())
    with open_stream(plan) as stream:
        name = stream.file_name
        assert b"".join(stream) == LORA
    assert "/" not in name and "\\" not in name and not name.startswith(".")
    assert name in {"x", "bashrc", "evil.dll", "passwd", "detail_v2.safetensors"}


def test_hostile_api_file_name_is_sanitised(civitai: FakeCivitai) -> None:
    civitai.add_model(1, "Evil", type="LORA")
    civitai.add_version(1, 2, "v1")
    civitai.add_file(2, "../../../root/.ssh/authorized_keys", b"x")
    plan = resolve(civ_model(version_id=2), Tokens())
    assert plan.file_name == "authorized_keys"


def test_login_required_without_token(civitai: FakeCivitai) -> None:
    setup_model(civitai)
    civitai.versions[201].require_auth = True
    plan = resolve(civ_model(version_id=201), Tokens())
    with pytest.raises(SourceAuthError) as info:
        open_stream(plan)
    text = str(info.value)
    assert "HTTP 401" in text and "requires you to be logged in" in text
    assert "set CIVITAI_TOKEN to an API key from civitai.com/user/account" in text
    assert read_all(resolve(civ_model(version_id=201), Tokens(civitai=TOKEN))) == LORA


def test_unknown_token_is_anonymous_and_says_so(civitai: FakeCivitai) -> None:
    setup_model(civitai)
    civitai.unauthenticated_download = False
    plan = resolve(civ_model(version_id=201), Tokens(civitai="civ-expired-key"))
    with pytest.raises(SourceAuthError, match="unknown or expired key") as info:
        open_stream(plan)
    assert "civ-expired-key" not in str(info.value)


def test_login_redirect_is_an_auth_error(civitai: FakeCivitai) -> None:
    setup_model(civitai)
    civitai.versions[201].require_auth = True
    civitai.legacy_login_redirect = True
    plan = resolve(civ_model(version_id=201), Tokens())
    with pytest.raises(SourceAuthError, match="login page"):
        open_stream(plan)


def test_downloads_disabled_and_early_access(civitai: FakeCivitai) -> None:
    setup_model(civitai)
    civitai.versions[201].downloads_disabled = True
    plan = resolve(civ_model(version_id=201), Tokens(civitai=TOKEN))
    with pytest.raises(SourceAuthError, match="no token can fix"):
        open_stream(plan)
    civitai.versions[201].downloads_disabled = False
    civitai.versions[201].early_access = True
    with pytest.raises(SourceAuthError, match="Early Access"):
        open_stream(resolve(civ_model(version_id=201), Tokens()))


def test_rate_limited_retry_after_seconds_and_date(civitai: FakeCivitai) -> None:
    setup_model(civitai)
    plan = resolve(civ_model(version_id=201), Tokens(civitai=TOKEN))
    civitai.faults.rate_limit("30", where="resolve")
    with pytest.raises(RateLimited) as info:
        open_stream(plan)
    assert info.value.retry_after == 30
    assert "retry after 30 s" in str(info.value)
    assert "unusual amount of downloading" in str(info.value)
    civitai.faults.rate_limit(
        email.utils.formatdate(time.time() + 120, usegmt=True), where="resolve"
    )
    with pytest.raises(RateLimited) as info:
        open_stream(plan)
    assert info.value.retry_after is not None and 100 < info.value.retry_after <= 121
    civitai.faults.rate_limit(None, where="api")
    with pytest.raises(RateLimited) as info:
        resolve(civ_model(version_id=201), Tokens())
    assert info.value.retry_after is None
    assert read_all(plan) == LORA


def test_region_blocked(civitai: FakeCivitai) -> None:
    setup_model(civitai)
    plan = resolve(civ_model(version_id=201), Tokens())
    civitai.region_blocked = True
    with pytest.raises(RegionBlocked, match="region") as info:
        resolve(civ_model(version_id=201), Tokens())
    assert "legal restrictions" in str(info.value)
    with pytest.raises(RegionBlocked):
        open_stream(plan)


def test_missing_version_model_and_file(civitai: FakeCivitai) -> None:
    setup_model(civitai)
    with pytest.raises(SourceNotFound, match="Model not found"):
        resolve(civ_model(version_id=999), Tokens())
    with pytest.raises(SourceNotFound, match="No model with id 555"):
        resolve(civ_model(model_id=555), Tokens())
    with pytest.raises(SourceNotFound, match="no file matches"):
        resolve(civ_model(url="https://civitai.com/api/download/models/201?type=Config"), Tokens())
    civitai.models[100].mode = "Archived"
    with pytest.raises(SourceNotFound, match="no downloadable file"):
        resolve(civ_model(version_id=201), Tokens())


def test_server_errors_then_success(civitai: FakeCivitai) -> None:
    setup_model(civitai)
    plan = resolve(civ_model(version_id=201), Tokens())
    civitai.faults.fail(500, where="resolve").fail(503, where="bytes")
    with pytest.raises(SourceUnavailable, match="HTTP 500"):
        open_stream(plan)
    with pytest.raises(SourceUnavailable, match="HTTP 503"):
        open_stream(plan)
    assert read_all(plan) == LORA


def test_cut_and_ignored_range_on_the_storage_host(civitai: FakeCivitai) -> None:
    setup_model(civitai)
    plan = resolve(civ_model(version_id=201), Tokens())
    civitai.faults.cut_after(5000)
    got = bytearray()
    with pytest.raises(SourceUnavailable), open_stream(plan, chunk_size=1024) as stream:
        for chunk in stream:
            got.extend(chunk)
    assert 0 < len(got) <= 5000
    civitai.faults.ignore_range(times=1)
    assert bytes(got) + read_all(plan, len(got)) == LORA
    assert civitai.faults.fired["ignore_range"] == 1


def test_expired_signed_url_is_transient(civitai: FakeCivitai) -> None:
    setup_model(civitai)
    civitai.signed_url_ttl = -10
    plan = resolve(civ_model(version_id=201), Tokens())
    with pytest.raises(SourceUnavailable, match="signed download URL"):
        open_stream(plan)


def test_html_instead_of_file_is_an_auth_error(civitai: FakeCivitai) -> None:
    setup_model(civitai)
    from dataclasses import replace

    plan = resolve(civ_model(version_id=201), Tokens())
    login = replace(plan, url=f"{civitai.base_url}/login")
    with pytest.raises(SourceAuthError, match="HTML page"):
        open_stream(login)
    with pytest.raises(SourceProtocolError, match="HTTP 400"):
        open_stream(replace(plan, url=f"{civitai.base_url}/api/download/models/201?size=huge"))


def test_callers_redirect_following_client_is_overridden(civitai: FakeCivitai) -> None:
    setup_model(civitai)
    civitai.versions[201].require_auth = True
    civitai.legacy_login_redirect = True
    plan = resolve(civ_model(version_id=201), Tokens())
    with (
        httpx.Client(follow_redirects=True) as client,
        pytest.raises(SourceAuthError, match="login page"),
    ):
        open_stream(plan, http=client)
