"""Fixtures for the ComfyUI client tests: a FakeComfyUI per test and a client on it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from comfyfleet.comfy import ComfyClient
from tests.doubles.comfyui import FakeComfyUI


@pytest.fixture
def fake() -> Iterator[FakeComfyUI]:
    with FakeComfyUI() as server:
        yield server


@pytest.fixture
def client(fake: FakeComfyUI) -> Iterator[ComfyClient]:
    with ComfyClient(fake.url, timeout=10, poll_interval=0.05, reconnect_timeout=1.5) as c:
        yield c
