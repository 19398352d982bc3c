"""Benchmarks switch telemetry off themselves: they run outside pytest's conftest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OFF = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.mark.parametrize("bench", ["mirror", "warmup", "generate"])
def test_bench_turns_telemetry_off_on_import(bench: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in OFF}
    env["DO_NOT_TRACK"] = "0"  # even a caller's explicit opt-in is overridden
    code = (
        f"import runpy, os, json; runpy.run_path({str(ROOT / 'bench' / f'{bench}.py')!r}, "
        "run_name='bench_import_only'); "
        f"print(json.dumps({{k: os.environ.get(k) for k in {sorted(OFF)!r}}}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == OFF
