"""Store URIs a user may mistype: ``s3:/bucket`` and other ``scheme:`` paths are refused
(never a local folder named ``s3:``), and credentials typed into a URI are never echoed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from comfyfleet.cli import main
from comfyfleet.errors import StoreConfigError
from comfyfleet.sources.base import display_url, redact_url
from comfyfleet.store import LocalStore, S3Store, open_store, redact_uri

SECRET = "wJalrXUtnFEMI-very-secret"


@pytest.mark.parametrize(
    ("uri", "fix"),
    [
        ("s3:/bucket/x", "s3://bucket/x"),
        ("s3:bucket/x", "s3://bucket/x"),
        ("S3:/bucket", "s3://bucket"),
        ("file:/data/store", "file:///data/store"),
        ("gs:/bucket/x", "./gs:/bucket/x"),
        ("minio:bucket", "./minio:bucket"),
    ],
)
def test_scheme_looking_paths_are_refused(
    uri: str, fix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreConfigError) as caught:
        open_store(uri)
    assert "is not one" in caught.value.message
    assert fix in (caught.value.hint or "")
    assert list(tmp_path.iterdir()) == []  # no folder "s3:" was made


def test_cli_refuses_one_slash_s3_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    code = main(["store", "ls", "--store", "s3:/bucket/x"])
    err = capsys.readouterr().err
    assert code == 2 and "s3://bucket/x" in err
    assert not os.path.exists(tmp_path / "s3:")


def test_real_paths_with_colons_still_work(tmp_path: Path) -> None:
    assert isinstance(open_store(str(tmp_path / "a:b")), LocalStore)
    assert isinstance(open_store("./rel:dir"), LocalStore)
    assert isinstance(open_store("C:/not-a-scheme"), LocalStore)  # one letter: a drive


@pytest.mark.parametrize(
    "uri",
    [
        f"s3://AKIAKEY:{SECRET}@bucket/p",
        f"s3://{SECRET}@bucket",
        f"s3:/AKIAKEY:{SECRET}@bucket/p",
        f"gs://AKIAKEY:{SECRET}@bucket/p",
        f"file://me:{SECRET}@localhost/tmp/x",
    ],
)
def test_credentials_in_a_store_uri_are_never_echoed(
    uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(StoreConfigError) as caught:
        open_store(uri)
    assert SECRET not in str(caught.value) and SECRET not in repr(caught.value)
    assert "***@" in caught.value.message
    assert main(["store", "ls", "--store", uri]) == 2
    out, err = capsys.readouterr()
    assert SECRET not in out + err and "***@" in err


def test_an_endpoint_with_userinfo_is_redacted_in_messages_and_repr() -> None:
    store = S3Store("bucket", endpoint_url=f"http://user:{SECRET}@127.0.0.1:9")
    for text in (repr(store), store.where, str(store)):
        assert SECRET not in text
    assert "http://***@127.0.0.1:9" in store.where


def test_redact_helpers() -> None:
    assert redact_uri(f"s3://k:{SECRET}@b/p") == "s3://***@b/p"
    assert (
        redact_uri(f"see http://u:{SECRET}@h:1/x and s3://b/p")
        == "see http://***@h:1/x and s3://b/p"
    )
    assert redact_uri("s3://bucket/a@b") == "s3://bucket/a@b"  # an @ in a key is no userinfo
    assert SECRET not in redact_url(f"https://u:{SECRET}@example.com/f?token=t")
    assert SECRET not in display_url(f"https://u:{SECRET}@example.com/f")
