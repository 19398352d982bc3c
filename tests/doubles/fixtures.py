"""Fixtures for the source doubles, shared by every test area: the Hugging Face and CivitAI
test servers, wired in through ``HF_ENDPOINT`` and ``CIVITAI_BASE_URL`` (read by comfyfleet
at call time)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.doubles.civitai import FakeCivitai
from tests.doubles.hf_hub import FakeHub


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    with FakeHub() as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
        yield fake


@pytest.fixture
def civitai(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCivitai]:
    with FakeCivitai() as fake:
        monkeypatch.setenv("CIVITAI_BASE_URL", fake.base_url)
        yield fake
