"""Bad input to the stores: one clear error naming the store and the fix; nothing written."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import botocore.exceptions as bexc
import pytest

from comfyfleet.cli import main
from comfyfleet.errors import (
    BucketNotFound,
    ComfyfleetError,
    ObjectNotFound,
    PreconditionFailed,
    StoreAuthError,
    StoreConfigError,
    StoreError,
    StoreUnavailable,
    UploadNotFound,
    is_transient,
)
from comfyfleet.store import LocalStore, S3Store, check_store, default_store_uri, open_store
from tests.support.seaweed import SeaweedServer

SECRET = "s3cr3t-value-that-must-never-show"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def no_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An environment with no AWS credentials or endpoint anywhere in the chain."""
    for var in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, no_aws_env: None, s3_server: SeaweedServer) -> None:
    """The standard AWS environment pointing at the test SeaweedFS."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)


# ---------------------------------------------------------------------- URIs


@pytest.mark.parametrize("uri", ["gs://bucket/models", "http://example.com/x", "azure://c/p"])
def test_unknown_scheme(uri: str) -> None:
    with pytest.raises(StoreConfigError) as caught:
        open_store(uri)
    assert uri in caught.value.message
    assert "s3://bucket" in (caught.value.hint or "") and "file:///" in (caught.value.hint or "")


@pytest.mark.parametrize(
    ("uri", "fact"),
    [
        ("s3://", "names no bucket"),
        ("s3:///prefix", "names no bucket"),
        ("s3://bucket/p?endpoint=x", "query"),
        ("file://otherhost/data", "local only"),
        ("s3://bad/bucket/../up", "invalid object key"),
        ("s3://bad bucket", "invalid bucket name"),
    ],
)
def test_malformed_uris(uri: str, fact: str, no_aws_env: None) -> None:
    with pytest.raises(StoreConfigError, match=fact.replace("?", r"\?")):
        open_store(uri)


def test_local_uris_and_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert isinstance(open_store(str(tmp_path / "a")), LocalStore)
    store = open_store((tmp_path / "b b").as_uri())
    assert isinstance(store, LocalStore) and store.root == tmp_path / "b b"

    monkeypatch.delenv("COMFYFLEET_STORE", raising=False)
    monkeypatch.setenv("COMFYFLEET_HOME", str(tmp_path / "home"))
    assert default_store_uri() == str(tmp_path / "home" / "store")
    default = open_store()
    assert isinstance(default, LocalStore) and default.root == tmp_path / "home" / "store"

    monkeypatch.setenv("COMFYFLEET_STORE", str(tmp_path / "env-store"))
    chosen = open_store(None)
    assert isinstance(chosen, LocalStore) and chosen.root == tmp_path / "env-store"


def test_local_store_on_a_file(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(StoreConfigError, match="not a directory"):
        open_store(str(target))
    under = LocalStore(target / "sub")
    with pytest.raises(StoreConfigError, match="not a directory"):
        check_store(under)
    assert target.read_text() == "x"


def test_s3_uri_uses_the_aws_environment(monkeypatch: pytest.MonkeyPatch, no_aws_env: None) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    store = open_store("s3://bucket/some/prefix")
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix, store.uri) == (
        "bucket",
        "some/prefix",
        "s3://bucket/some/prefix",
    )
    assert store.endpoint_url == "http://127.0.0.1:9"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:10")
    assert open_store("s3://bucket").endpoint_url == "http://127.0.0.1:10"  # type: ignore[attr-defined]


# ---------------------------------------------------------------------- S3: the real failures


def test_unreachable_endpoint(no_aws_env: None) -> None:
    port = _closed_port()
    store = S3Store(
        "bucket",
        "p",
        endpoint_url=f"http://127.0.0.1:{port}",
        access_key_id="AKID",
        secret_access_key=SECRET,
        max_attempts=2,
    )
    with pytest.raises(StoreUnavailable) as caught:
        check_store(store)
    exc = caught.value
    assert is_transient(exc)
    assert f"s3://bucket/p at http://127.0.0.1:{port}" in exc.message
    assert "AWS_ENDPOINT_URL" in (exc.hint or "")
    with pytest.raises(StoreUnavailable):
        store.head("k")
    with pytest.raises(StoreUnavailable):
        list(store.iter_bytes("k"))


@pytest.mark.s3
def test_wrong_credentials(s3_server: SeaweedServer, s3_bucket: str) -> None:
    for key_id in (s3_server.access_key, "no-such-key-id"):
        store = S3Store(
            s3_bucket,
            endpoint_url=s3_server.endpoint_url,
            access_key_id=key_id,
            secret_access_key=SECRET,
        )
        with pytest.raises(StoreAuthError) as caught:
            check_store(store)
        exc = caught.value
        assert not is_transient(exc)
        assert f"s3://{s3_bucket} at {s3_server.endpoint_url}" in exc.message
        assert "access_key_id/secret_access_key" in (exc.hint or "")
        assert SECRET not in str(exc) and SECRET not in repr(store)
        with pytest.raises(StoreAuthError):
            store.put_bytes("x", b"x")
    assert "Contents" not in s3_server.client().list_objects_v2(Bucket=s3_bucket)


@pytest.mark.s3
def test_missing_credentials(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StoreAuthError, match="no S3 credentials") as caught:
        check_store(open_store("s3://anything"))
    assert "AWS_ACCESS_KEY_ID" in (caught.value.hint or "")


@pytest.mark.s3
def test_missing_bucket(s3_server: SeaweedServer, aws_env: None) -> None:
    store = open_store("s3://no-such-bucket-here/models")
    with pytest.raises(BucketNotFound) as caught:
        check_store(store)
    exc = caught.value
    assert (
        "s3://no-such-bucket-here/models" in exc.message and s3_server.endpoint_url in exc.message
    )
    assert "aws s3 mb s3://no-such-bucket-here" in (exc.hint or "")
    with pytest.raises(BucketNotFound):
        list(store.list())
    with pytest.raises(BucketNotFound):
        store.put_bytes("k", b"x")
    names = [b["Name"] for b in s3_server.client().list_buckets()["Buckets"]]
    assert "no-such-bucket-here" not in names  # nothing written, nothing created


def test_partial_explicit_credentials() -> None:
    with pytest.raises(StoreConfigError, match="together"):
        S3Store("bucket", endpoint_url="http://127.0.0.1:9", access_key_id="AKID")


def test_repr_has_no_secrets() -> None:
    store = S3Store(
        "bucket",
        "p",
        endpoint_url="http://127.0.0.1:9",
        access_key_id="AKID",
        secret_access_key=SECRET,
        session_token=SECRET + "-token",
    )
    for text in (repr(store), str(store), store.uri, store.where):
        assert SECRET not in text
    assert str(store) == "s3://bucket/p"


# ---------------------------------------------------------------------- the translation table


def _client_error(code: str, status: int, message: str = "msg") -> bexc.ClientError:
    return bexc.ClientError(
        {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        "GetObject",
    )


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (_client_error("SlowDown", 503), StoreUnavailable),
        (_client_error("InternalError", 500), StoreUnavailable),
        (_client_error("502", 502), StoreUnavailable),
        (_client_error("TooManyRequests", 429), StoreUnavailable),
        (_client_error("AccessDenied", 403), StoreAuthError),
        (_client_error("InvalidAccessKeyId", 403), StoreAuthError),
        (_client_error("SignatureDoesNotMatch", 403), StoreAuthError),
        (_client_error("403", 403), StoreAuthError),
        (_client_error("ExpiredToken", 400), StoreAuthError),
        (_client_error("NoSuchBucket", 404), BucketNotFound),
        (_client_error("NoSuchKey", 404), ObjectNotFound),
        (_client_error("404", 404), ObjectNotFound),
        (_client_error("PreconditionFailed", 412), PreconditionFailed),
        (_client_error("412", 412), PreconditionFailed),
        (_client_error("NoSuchUpload", 404), UploadNotFound),
        (_client_error("PermanentRedirect", 301), StoreConfigError),
        (_client_error("EntityTooSmall", 400), StoreError),
        (_client_error("WeirdNewCode", 400), StoreError),
        (bexc.EndpointConnectionError(endpoint_url="http://x"), StoreUnavailable),
        (bexc.ConnectTimeoutError(endpoint_url="http://x"), StoreUnavailable),
        (bexc.ReadTimeoutError(endpoint_url="http://x"), StoreUnavailable),
        (bexc.ConnectionClosedError(endpoint_url="http://x"), StoreUnavailable),
        (bexc.IncompleteReadError(actual_bytes=1, expected_bytes=2), StoreUnavailable),
        (bexc.NoCredentialsError(), StoreAuthError),
        (bexc.SSLError(endpoint_url="http://x", error="bad"), StoreError),
    ],
)
def test_translation_table(raised: Exception, expected: type[ComfyfleetError]) -> None:
    store = S3Store(
        "bucket",
        "p",
        endpoint_url="http://127.0.0.1:9",
        access_key_id="A",
        secret_access_key=SECRET,
    )
    with pytest.raises(expected) as caught, store._translate("read", "models/x"):
        raise raised
    exc = caught.value
    assert type(exc) is expected
    assert exc.__cause__ is raised
    assert "s3://bucket/p" in str(exc)
    assert is_transient(exc) == (expected is StoreUnavailable)
    assert SECRET not in str(exc)


# ---------------------------------------------------------------------- the CLI


def test_cli_unknown_scheme(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["store", "check", "--store", "gs://bucket"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: ") and "gs://bucket" in err[0]
    assert len([line for line in err if line.startswith("error:")]) == 1


@pytest.mark.s3
def test_cli_check_missing_bucket(aws_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["store", "check", "--store", "s3://missing-bucket/x"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: ") and "s3://missing-bucket/x" in err[0]
    assert "does not exist" in err[0]
    assert err[1].startswith("hint: ") and "aws s3 mb" in err[1]


@pytest.mark.s3
def test_cli_check_and_ls_ok(
    aws_env: None, s3_bucket: str, s3_server: SeaweedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    s3_server.client().put_object(Bucket=s3_bucket, Key="m/models/a.bin", Body=b"12345")
    assert main(["store", "check", "--store", f"s3://{s3_bucket}/m"]) == 0
    assert capsys.readouterr().out.startswith(f"ok: s3://{s3_bucket}/m at {s3_server.endpoint_url}")
    assert main(["store", "ls", "--store", f"s3://{s3_bucket}/m", "models/"]) == 0
    out = capsys.readouterr().out
    assert "models/a.bin" in out and "1 object(s)" in out


def test_cli_unreachable_via_console_script(no_aws_env: None) -> None:
    port = _closed_port()
    env = dict(os.environ)
    env.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_ACCESS_KEY_ID="AKID",
        AWS_SECRET_ACCESS_KEY=SECRET,
        AWS_MAX_ATTEMPTS="1",
    )
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "comfyfleet"),
            "store",
            "check",
            "--store",
            "s3://bucket/p",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 1
    first = proc.stderr.splitlines()[0]
    assert first.startswith("error: ") and f"s3://bucket/p at http://127.0.0.1:{port}" in first
    assert SECRET not in proc.stderr + proc.stdout


def test_cli_local_ls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = LocalStore(tmp_path / "s")
    store.put_bytes("models/vae/v.safetensors", b"x" * 2048)
    assert main(["store", "ls", "--store", str(tmp_path / "s"), "--json"]) == 0
    out = capsys.readouterr().out
    assert '"key": "models/vae/v.safetensors"' in out and '"size": 2048' in out


def test_store_block_without_the_blocks_package_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--store-block`` where ``blocks`` cannot be imported: a StoreConfigError naming
    ``--store URI`` as the way out, not an ImportError traceback."""
    from comfyfleet.cli.stores import load_store_block

    monkeypatch.setitem(sys.modules, "blocks", None)  # "import blocks" raises ImportError
    with pytest.raises(StoreConfigError, match="'blocks' package is not importable") as caught:
        load_store_block("comfyfleet-store")
    assert "--store URI" in (caught.value.hint or "")
    assert main(["store", "check", "--store-block", "comfyfleet-store"]) == 2
    assert "not importable" in capsys.readouterr().err
