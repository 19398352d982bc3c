"""Test-wide isolation: nothing leaves the machine, nothing touches the user's home, and
the session leaves nothing behind.

The environment is set at import time, before prefect, huggingface_hub or matplotlib are
imported, because they read it once. Everything the session writes outside its tests'
``tmp_path`` goes under one session folder (``comfyfleet-tests-*`` in the caller's temp
dir): HOME, TMPDIR (so pytest's own ``pytest-of-*`` base and every subprocess's temp files
too), MPLCONFIGDIR, the XDG folders, PREFECT_HOME, HF_HOME. It is removed at interpreter
exit, after every other exit handler (Prefect's test harness cleans its own temp dir in
one); a ``--basetemp`` given on the command line is the caller's and stays.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="comfyfleet-tests-"))
# Registered first, so it runs last (atexit is last in, first out).
atexit.register(shutil.rmtree, _SESSION_HOME, ignore_errors=True)
_HOME = _SESSION_HOME / "home"
_TMP = _SESSION_HOME / "tmp"
for _folder in (_HOME, _TMP):
    _folder.mkdir()
os.environ.update(
    {
        "HOME": str(_HOME),
        "TMPDIR": str(_TMP),
        "MPLCONFIGDIR": str(_HOME / ".config" / "matplotlib"),
        "XDG_CACHE_HOME": str(_HOME / ".cache"),
        "XDG_CONFIG_HOME": str(_HOME / ".config"),
        "XDG_DATA_HOME": str(_HOME / ".local" / "share"),
        "XDG_STATE_HOME": str(_HOME / ".local" / "state"),
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_HOME": str(_SESSION_HOME / "prefect"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        # The test server's event store saves events every 0.5 s, not 5 s: the flow tests
        # wait for instances' events in it, and their waits shrink by that much.
        "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "0.5",
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
tempfile.tempdir = None  # gettempdir() reads TMPDIR again: the session's tmp from now on

pytest_plugins: list[str] = ["tests.support.seaweed", "tests.doubles.fixtures"]


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One Prefect test server for every flow test of the session (starts lazily)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
