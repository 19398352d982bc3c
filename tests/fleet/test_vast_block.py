"""The ``comfyfleet-vast`` block: the key stays hidden, and ``--vast-block`` finds a saved
block by name."""

from __future__ import annotations

import json
import uuid

import pytest
from pydantic import SecretStr, ValidationError

from blocks import VastCredentials
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
