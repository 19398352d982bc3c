"""Fixtures for the remote-service doubles, shared by every test area: the Hugging Face,
CivitAI and vast.ai test servers, wired in through ``HF_ENDPOINT``, ``CIVITAI_BASE_URL`` and
``VAST_URL`` + ``VAST_API_KEY`` (read by comfyfleet at call time)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.doubles.civitai import FakeCivitai
from tests.doubles.hf_hub import FakeHub
from tests.doubles.vast import TEST_KEY, FakeVast


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


@pytest.fixture
def vast(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeVast]:
    with FakeVast() as fake:
        monkeypatch.setenv("VAST_URL", fake.url)
        monkeypatch.setenv("VAST_API_KEY", TEST_KEY)
        yield fake
