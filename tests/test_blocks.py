"""Prefect blocks: secrets stay hidden, a block opens the store it describes, and a saved
block is found by name from the CLI."""

from __future__ import annotations

import argparse
import inspect
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

import blocks
from blocks import (
    ComfyfleetStore,
    ComfyUIEndpoint,
    FalCredentials,
    SourceTokens,
    VastCredentials,
)
from comfyfleet.cli import main
from comfyfleet.cli.stores import resolve_store
from comfyfleet.errors import BlockNotFound
from comfyfleet.store import LocalStore, S3Store, check_store
from tests.support.seaweed import SeaweedServer

SECRET = "block-secret-do-not-print"


def test_secrets_hidden_in_repr_and_str() -> None:
    made = [
        ComfyfleetStore(
            bucket="b", access_key_id="AKID", secret_access_key=SECRET, session_token=SECRET
        ),
        SourceTokens(hf_token=SECRET, civitai_token=SECRET),
        FalCredentials(key=SECRET),
    ]
    for block in made:
        assert SECRET not in repr(block) and SECRET not in str(block)
    assert isinstance(made[0].secret_access_key, SecretStr)


def test_validation_errors_do_not_echo_secrets() -> None:
    with pytest.raises(ValidationError) as caught:
        ComfyfleetStore(bucket="b", path="/x", access_key_id="AKID", secret_access_key=SECRET)
    assert "exactly one of 'bucket'" in str(caught.value)
    assert SECRET not in str(caught.value)
    with pytest.raises(ValidationError, match="together"):
        ComfyfleetStore(bucket="b", secret_access_key=SECRET)
    with pytest.raises(ValidationError, match="exactly one"):
        ComfyfleetStore()


def test_store_block_opens_s3_store() -> None:
    block = ComfyfleetStore(
        bucket="models",
        prefix="/mirror/",
        endpoint_url="http://127.0.0.1:9",
        region="eu-central-1",
        access_key_id="AKID",
        secret_access_key=SECRET,
    )
    store = block.open()
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix, store.endpoint_url) == (
        "models",
        "mirror",
        "http://127.0.0.1:9",
    )
    assert block.uri == store.uri == "s3://models/mirror"
    assert store.client.meta.region_name == "eu-central-1"
    assert SECRET not in repr(store)


def test_store_block_opens_local_store(tmp_path: Path) -> None:
    block = ComfyfleetStore(path=str(tmp_path / "store"))
    store = block.open()
    assert isinstance(store, LocalStore) and store.root == tmp_path / "store"
    assert block.uri == store.uri


@pytest.mark.s3
def test_store_block_reaches_seaweedfs(s3_server: SeaweedServer, s3_bucket: str) -> None:
    block = ComfyfleetStore(
        bucket=s3_bucket,
        prefix="p",
        endpoint_url=s3_server.endpoint_url,
        access_key_id=s3_server.access_key,
        secret_access_key=s3_server.secret_key,
    )
    store = block.open()
    check_store(store)
    store.put_bytes("models/x", b"abc")
    assert store.get_bytes("models/x") == b"abc"


def test_source_tokens_and_endpoints() -> None:
    tokens = SourceTokens(hf_token="hf_abc", civitai_token=" ").tokens()
    assert (tokens.hf, tokens.civitai) == ("hf_abc", None)
    assert "hf_abc" not in repr(tokens)
    assert SourceTokens().tokens().hf is None
    assert ComfyUIEndpoint(url=" http://127.0.0.1:8188/ ").url == "http://127.0.0.1:8188"
    with pytest.raises(ValidationError, match="http"):
        ComfyUIEndpoint(url="127.0.0.1:8188")
    assert FalCredentials(key="id:secret").key.get_secret_value() == "id:secret"


def test_block_slugs() -> None:
    assert ComfyfleetStore.get_block_type_slug() == "comfyfleet-store"
    assert SourceTokens.get_block_type_slug() == "comfyfleet-source-tokens"
    assert ComfyUIEndpoint.get_block_type_slug() == "comfyfleet-comfyui"


@pytest.mark.flow
@pytest.mark.s3
def test_saved_block_is_loaded_by_name(
    prefect_harness: None,
    s3_server: SeaweedServer,
    s3_bucket: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from prefect.blocks.core import Block

    # What `prefect block register -m blocks` does: register every block class the module exports.
    exported = [cls for _, cls in inspect.getmembers(blocks) if Block.is_block_class(cls)]
    assert set(exported) == {
        ComfyfleetStore,
        SourceTokens,
        ComfyUIEndpoint,
        FalCredentials,
        VastCredentials,
    }
    for cls in exported:
        cls.register_type_and_schema(_sync=True)

    name = f"mirror-{uuid.uuid4().hex[:8]}"
    ComfyfleetStore(
        bucket=s3_bucket,
        prefix="models-mirror",
        endpoint_url=s3_server.endpoint_url,
        access_key_id=s3_server.access_key,
        secret_access_key=s3_server.secret_key,
    ).save(name)

    store = resolve_store(argparse.Namespace(store=None, store_block=name))
    assert isinstance(store, S3Store) and store.uri == f"s3://{s3_bucket}/models-mirror"
    check_store(store)
    assert resolve_store(argparse.Namespace(store=None, store_block=f"comfyfleet-store/{name}"))

    assert main(["store", "check", "--store-block", name]) == 0
    assert f"s3://{s3_bucket}/models-mirror" in capsys.readouterr().out

    with pytest.raises(BlockNotFound, match="no comfyfleet-store block named 'missing-one'"):
        resolve_store(argparse.Namespace(store=None, store_block="missing-one"))
    assert main(["store", "ls", "--store-block", "missing-one"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: ") and "missing-one" in err[0]
    assert err[1].startswith("hint: ") and "prefect block ls" in err[1]


@pytest.mark.flow
@pytest.mark.parametrize(
    ("block_type", "slug"),
    [
        (ComfyfleetStore, "comfyfleet-store"),
        (SourceTokens, "comfyfleet-source-tokens"),
        (ComfyUIEndpoint, "comfyfleet-comfyui"),
        (FalCredentials, "comfyfleet-fal-credentials"),
    ],
)
def test_load_names_the_missing_block_its_type_and_how_to_save_it(
    prefect_harness: None, block_type: type[Any], slug: str
) -> None:
    with pytest.raises(BlockNotFound) as caught:
        blocks.load(block_type, f"{slug}/nope-{uuid.uuid4().hex[:6]}")
    error = caught.value
    assert error.message.startswith(f"no {slug} block named 'nope-")
    assert f"{block_type.__name__}(...).save(" in (error.hint or "")
    assert "prefect block register -m blocks" in (error.hint or "")
