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


ROOT = Path(__file__).resolve().parents[1]


def _calls_and_imports(path: Path) -> tuple[list[str], set[str]]:
    """(``X.load``/``X.aload`` call sites as ``X.attr``, imported module names) of a file."""
    import ast

    tree = ast.parse(path.read_text(), filename=str(path))
    calls: list[str] = []
    imports: set[str] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("load", "aload")
            and isinstance(node.func.value, ast.Name)
        ):
            calls.append(f"{node.func.value.id}.{node.func.attr}")
        elif isinstance(node, ast.Import):
            imports.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imports.add(node.module)
    return calls, imports


def test_blocks_are_loaded_only_through_blocks_load() -> None:
    """Issue 8 item 3: no flow, block module, deployment or CLI module calls a block class's
    own ``load``; only blocks/loading.py does (json/yaml loaders are not blocks)."""
    files = [
        p
        for folder in ("flows", "blocks", "deployments", "comfyfleet/cli")
        for p in sorted((ROOT / folder).glob("*.py"))
        if p.name != "loading.py"
    ]
    direct = {
        str(p.relative_to(ROOT)): [
            c for c in _calls_and_imports(p)[0] if not c.startswith(("json.", "yaml."))
        ]
        for p in files
    }
    assert {k: v for k, v in direct.items() if v} == {}


def test_flow_helpers_and_blocks_never_import_the_cli() -> None:
    for path in [ROOT / "flows" / "_common.py", *sorted((ROOT / "blocks").glob("*.py"))]:
        imports = _calls_and_imports(path)[1]
        assert not {i for i in imports if i.startswith("comfyfleet.cli")}, path


@pytest.mark.flow
def test_a_flow_naming_a_missing_store_block_gets_block_not_found(prefect_harness: None) -> None:
    from flows._common import open_flow_store

    ComfyfleetStore.register_type_and_schema(_sync=True)
    with pytest.raises(BlockNotFound, match="no comfyfleet-store block named 'absent-"):
        open_flow_store(None, f"absent-{uuid.uuid4().hex[:6]}")


@pytest.mark.flow
def test_tokens_come_from_the_environment_unless_a_block_is_named(
    prefect_harness: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No tokens block named: no block is loaded at all. Named: it is required."""
    from flows._common import load_tokens

    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    real_load = blocks.load
    monkeypatch.setattr(blocks, "load", lambda *a: pytest.fail(f"loaded a block: {a}"))
    tokens = load_tokens(None)
    assert (tokens.hf, tokens.civitai) == ("hf_from_env", None)
    monkeypatch.setattr(blocks, "load", real_load)
    SourceTokens.register_type_and_schema(_sync=True)
    with pytest.raises(BlockNotFound, match="no comfyfleet-source-tokens block named 'absent-"):
        load_tokens(f"absent-{uuid.uuid4().hex[:6]}")


def test_comfyui_block_token_is_secret() -> None:
    block = ComfyUIEndpoint(url="http://127.0.0.1:9188", token=SECRET)
    assert isinstance(block.token, SecretStr) and block.token.get_secret_value() == SECRET
    assert SECRET not in repr(block) and SECRET not in str(block)
    assert ComfyUIEndpoint(url="http://127.0.0.1:8188").token is None


@pytest.mark.flow
def test_generate_batch_reaches_a_gateway_with_the_comfyui_blocks_token(
    prefect_harness: None, tmp_path: Path
) -> None:
    """The block's token opens the gateway; no flow parameter or task input carries it."""
    import json

    from comfyfleet.generate.batch import read_results
    from flows.generate import _endpoint_refs, generate_batch
    from tests.doubles.comfyui import FakeComfyUI
    from tests.fleet.test_gateway import RunningGateway

    token = "gateway-token-" + uuid.uuid4().hex
    name = f"gpu-{uuid.uuid4().hex[:8]}"
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"id": "a", "workflow": "sdxl_txt2img", "prompt": "x"}) + "\n")
    with FakeComfyUI() as fake, RunningGateway(fake.url, token) as gw:
        ComfyUIEndpoint(url=gw.url, token=token).save(name)
        refs = _endpoint_refs(None, name, None, None)
        assert refs == [{"url": gw.url, "block": name}]
        state = generate_batch(
            jobs_file=str(jobs), comfy_block=name, store=str(tmp_path / "store"),
            batch_id="blk", fal_fallback=False, return_state=True,
        )  # fmt: skip
        assert state.is_completed(), state
        assert len(fake.accepted) == 1  # through the gateway, so with the token
        ComfyUIEndpoint(url=gw.url).save(name, overwrite=True)  # no token: refused
        refused = generate_batch(
            jobs_file=str(jobs), comfy_block=name, store=str(tmp_path / "store2"),
            batch_id="blk", fal_fallback=False, return_state=True,
        )  # fmt: skip
        assert not refused.is_completed() and len(fake.accepted) == 1
    rows = read_results(LocalStore(tmp_path / "store"), "blk")
    assert [r["status"] for r in rows] == ["ok"] and token not in json.dumps(rows, default=str)
