"""Fixtures for the mirror tests: the Hugging Face test hub behind ``HF_ENDPOINT``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from comfyfleet.catalog import HFSource, ModelFile
from comfyfleet.upload import MiB, TransferSettings
from tests.doubles.civitai import FakeCivitai
from tests.doubles.hf_hub import FakeHub

# Small parts and short waits: the behaviour is the same, the tests are fast.
SETTINGS = TransferSettings(part_size=5 * MiB, max_parts_in_flight=3, backoff_base=0.05)


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    with FakeHub() as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
        yield fake


@pytest.fixture
def civ(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCivitai]:
    with FakeCivitai() as fake:
        monkeypatch.setenv("CIVITAI_BASE_URL", fake.base_url)
        yield fake


def hf_model(
    model_id: str,
    repo: str,
    path: str,
    *,
    revision: str = "main",
    folder: str = "loras",
    sha256: str | None = None,
    size: int | None = None,
) -> ModelFile:
    return ModelFile(
        id=model_id,
        folder=folder,
        file=path.rsplit("/", 1)[-1],
        source=HFSource(type="hf", repo=repo, revision=revision, path=path),
        sha256=sha256,
        size=size,
    )
