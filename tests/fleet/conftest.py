"""The vast.ai test server, wired in through ``VAST_URL`` and ``VAST_API_KEY`` (read by
comfyfleet at call time)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.doubles.vast import TEST_KEY, FakeVast


@pytest.fixture
def vast(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeVast]:
    with FakeVast() as fake:
        monkeypatch.setenv("VAST_URL", fake.url)
        monkeypatch.setenv("VAST_API_KEY", TEST_KEY)
        yield fake
