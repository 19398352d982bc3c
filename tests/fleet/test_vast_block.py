"""The ``comfyfleet-vast`` block: the key stays hidden, and ``--vast-block`` finds a saved
block by name."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from blocks import ComfyfleetStore, VastCredentials
from comfyfleet.cli import main
from tests.doubles.vast import TEST_KEY, FakeVast


def test_key_hidden_in_repr_str_and_validation_errors() -> None:
    block = VastCredentials(api_key=TEST_KEY, url=" http://127.0.0.1:9/ ")
    assert isinstance(block.api_key, SecretStr) and block.url == "http://127.0.0.1:9"
    assert TEST_KEY not in repr(block) and TEST_KEY not in str(block)
    with pytest.raises(ValidationError, match="http") as caught:
        VastCredentials(api_key=TEST_KEY, url="console.vast.ai")
    assert TEST_KEY not in str(caught.value)
    assert VastCredentials(api_key=TEST_KEY).url is None
    assert VastCredentials.get_block_type_slug() == "comfyfleet-vast"


@pytest.mark.flow
def test_cli_loads_the_saved_block(
    prefect_harness: None,
    vast: FakeVast,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("VAST_API_KEY")
    monkeypatch.delenv("VAST_URL")
    VastCredentials.register_type_and_schema(_sync=True)  # type: ignore[call-arg]
    name = f"vast-{uuid.uuid4().hex[:8]}"
    VastCredentials(api_key=TEST_KEY, url=vast.url).save(name)
    vast.add_offer()
    assert main(["instances", "offers", "--min-vram", "24", "--disk", "40", "--json",
                 "--vast-block", name]) == 0  # fmt: skip
    out, err = capsys.readouterr()
    assert len(json.loads(out)["offers"]) == 1 and TEST_KEY not in out + err
    assert vast.requests[-1].headers["authorization"] == f"Bearer {TEST_KEY}"
    assert main(["instances", "ls", "--vast-block", "missing-one"]) == 2
    err = capsys.readouterr().err
    assert "no comfyfleet-vast block named 'missing-one'" in err


@pytest.mark.flow
def test_up_hands_a_store_blocks_bucket_and_credentials_to_the_instances(
    prefect_harness: None,
    vast: FakeVast,
    s3_server: Any,
    s3_bucket: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The server the instances report to: handed to them, never called from here.
    monkeypatch.setenv("PREFECT_API_URL", "http://prefect.fleet.test:4200/api")
    # A real bucket: `up` uploads the instances' wheel into the block's store.
    secret = s3_server.secret_key
    ComfyfleetStore.register_type_and_schema(_sync=True)  # type: ignore[call-arg]
    name = f"mirror-{uuid.uuid4().hex[:8]}"
    ComfyfleetStore(bucket=s3_bucket, prefix="m", endpoint_url=s3_server.endpoint_url,
                    access_key_id=s3_server.access_key, secret_access_key=secret,
                    region=s3_server.region).save(name)  # fmt: skip
    vast.add_offer()
    assert main(["instances", "up", "--fleet", "s", "--count", "1", "--profile", "image",
                 "--store-block", name, "--json"]) == 0  # fmt: skip
    out, err = capsys.readouterr()
    assert secret not in out + err and TEST_KEY not in out + err
    (record,) = vast.instances.values()
    assert record.env["COMFYFLEET_STORE"] == f"s3://{s3_bucket}/m"
    assert record.env["AWS_SECRET_ACCESS_KEY"] == secret
    assert record.env["AWS_ACCESS_KEY_ID"] == s3_server.access_key
    assert record.env["AWS_ENDPOINT_URL"] == s3_server.endpoint_url
    sha256 = record.env["COMFYFLEET_WHEEL_SHA256"]
    key = f"m/wheels/{sha256}/{record.env['COMFYFLEET_WHEEL_NAME']}"
    assert s3_server.client().head_object(Bucket=s3_bucket, Key=key)["Metadata"] == {
        "sha256": sha256
    }
    assert "AWS_SESSION_TOKEN" not in record.env
    local = f"local-{uuid.uuid4().hex[:8]}"
    ComfyfleetStore(path="/tmp/x").save(local)
    assert main(["instances", "up", "--fleet", "s", "--count", "1", "--profile", "image",
                 "--store-block", local]) == 2  # fmt: skip
    assert "local directory" in capsys.readouterr().err
