"""Temp files a killed writer left in a local store are cleaned on the next run; a live
writer's temp file is never touched."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from comfyfleet.mirror.driver import mirror_files
from comfyfleet.sources import Tokens
from comfyfleet.store.local import INTERNAL_DIR, LocalStore

ROOT = Path(__file__).resolve().parents[2]

# A writer that dies with kill -9 semantics (no cleanup, no finally) mid-write.
_KILLED_WRITER = """
import os, sys
from comfyfleet.store.local import LocalStore
fd, path = LocalStore(sys.argv[1])._new_temp()
os.write(fd, b"half a part")
print(path, flush=True)
os.kill(os.getpid(), 9)
"""


def _leave_dead_temp(root: Path) -> Path:
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, str(root)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == -9, proc.stderr
    path = Path(proc.stdout.strip())
    assert path.exists()
    return path


def test_dead_writers_temp_files_go_live_ones_stay(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = LocalStore(root)
    dead = _leave_dead_temp(root)
    live_fd, live = store._new_temp()
    try:
        old_dir = root / INTERNAL_DIR / "tmp" / "upload-123"
        old_dir.mkdir()
        day_ago = time.time() - 2 * 24 * 3600
        os.utime(old_dir, (day_ago, day_ago))
        young_dir = root / INTERNAL_DIR / "tmp" / "upload-456"
        young_dir.mkdir()

        assert store.clean_stale_temp() == 2
        assert not dead.exists() and not old_dir.exists()
        assert live.exists() and young_dir.exists()
        os.write(live_fd, b"still writing")  # the live writer goes on undisturbed
    finally:
        os.close(live_fd)


def test_the_next_mirror_run_cleans_them(tmp_path: Path) -> None:
    root = tmp_path / "store"
    dead = _leave_dead_temp(root)
    run = mirror_files([], LocalStore(root), tokens=Tokens())
    assert run.results == [] and not dead.exists()
