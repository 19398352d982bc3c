"""Test-wide isolation: nothing leaves the machine, nothing touches the user's home.

The environment is set at import time, before prefect or huggingface_hub are imported,
because both read it once.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="comfyfleet-tests-"))
os.environ.update(
    {
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_HOME": str(_SESSION_HOME / "prefect"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HOME": str(_SESSION_HOME / "hf"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "COMFYFLEET_HOME": str(_SESSION_HOME / "comfyfleet"),
    }
)
for _var in (
    "HF_TOKEN",
    "CIVITAI_TOKEN",
    "CIVITAI_API_TOKEN",
    "FAL_KEY",
    "AWS_PROFILE",
    "AWS_ENDPOINT_URL",
    "COMFYFLEET_STORE",
    "PREFECT_API_URL",
    "VAST_API_KEY",
):
    os.environ.pop(_var, None)

pytest_plugins: list[str] = ["tests.support.seaweed", "tests.doubles.fixtures"]


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One Prefect test server for every flow test of the session (starts lazily)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
