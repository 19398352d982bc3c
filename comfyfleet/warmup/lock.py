"""One warm-up per ComfyUI root at a time, and ComfyUI's ``extra_model_paths.yaml``.

``RootLock`` takes an exclusive ``flock`` on ``<comfy_root>/.comfyfleet/warmup.lock``. The
kernel drops it when the holder exits, however it exits (SIGKILL included), so a stale lock
file never blocks anyone; the pid written into the file is only there to name the holder.
``flock`` locks belong to an open file description, so two ``RootLock`` objects conflict
even inside one process (threads, tests).
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

import yaml

from comfyfleet.comfy.folders import KNOWN_FOLDERS
from comfyfleet.errors import ConfigError, LockHeldError
from comfyfleet.files import STATE_DIR, write_atomic

LOCK_NAME = "warmup.lock"
EXTRA_MODEL_PATHS = "extra_model_paths.yaml"
EXTRA_SECTION = "comfyfleet"

# Every folder the catalog may place files in (ComfyUI's folder_paths.py plus those of the
# video custom nodes); one list, so extra_model_paths.yaml never misses a catalog folder.
DEFAULT_FOLDERS = tuple(sorted(KNOWN_FOLDERS))


def lock_path(comfy_root: Path) -> Path:
    return comfy_root / STATE_DIR / LOCK_NAME


class RootLock:
    """Exclusive lock on a ComfyUI root for the length of a warm-up.

    Non-blocking by default (``wait_s=0``): a second warm-up fails at once with
    ``LockHeldError`` naming the holder. With ``wait_s > 0`` it polls until the lock is free
    or the time is up.
    """

    def __init__(self, comfy_root: Path, *, wait_s: float = 0.0, poll_s: float = 0.1) -> None:
        self.path = lock_path(comfy_root)
        self.wait_s = wait_s
        self.poll_s = poll_s
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> str:
        """What the lock file says about its holder ("pid 123 since ..."), or ''."""
        try:
            return self.path.read_text(encoding="utf-8").strip()
        except OSError:
            return ""

    def acquire(self) -> RootLock:
        if self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise self._held_error() from None
                time.sleep(self.poll_s)
        # We own it: say who we are, for the next one who finds it held.
        os.ftruncate(fd, 0)
        since = datetime.now(UTC).isoformat(timespec="seconds")
        os.pwrite(fd, f"pid {os.getpid()} since {since}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _held_error(self) -> LockHeldError:
        holder = self.holder() or "another process"
        waited = f" (waited {self.wait_s:g} s)" if self.wait_s > 0 else ""
        return LockHeldError(
            f"warm-up lock {self.path} is held by {holder}{waited}",
            hint="another warm-up is running on this ComfyUI root: let it finish, or wait for "
            "it with --wait-lock SECONDS; the lock frees itself when that process exits",
        )

    def __enter__(self) -> RootLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def write_extra_model_paths(
    comfy_root: Path,
    models_base: Path,
    *,
    folders: Iterable[str] | None = None,
    section: str = EXTRA_SECTION,
) -> Path:
    """Point ComfyUI at models kept outside its tree; returns the yaml's path.

    ``models_base`` is the directory that holds ``<folder>/<file>`` (what ``plan_pull`` calls
    ``models_dir``). ComfyUI reads ``<comfy_root>/extra_model_paths.yaml``: each section has a
    ``base_path`` and one key per model folder whose value is relative to it
    (utils/extra_config.py). Other sections of an existing file are kept; ours is replaced.
    The file is written to a temp name and renamed into place.
    """
    target = comfy_root / EXTRA_MODEL_PATHS
    data: dict[str, object] = {}
    if target.exists():
        try:
            loaded = yaml.safe_load(target.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"{target} is not valid YAML ({exc.__class__.__name__})",
                hint="fix or remove it, then rerun the warm-up",
            ) from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(
                f"{target} is not a mapping of sections",
                hint="fix or remove it, then rerun the warm-up",
            )
        data = dict(loaded or {})
    entry: dict[str, object] = {"base_path": str(models_base.absolute()), "is_default": True}
    for folder in sorted(set(folders) if folders is not None else DEFAULT_FOLDERS):
        entry[folder] = f"{folder}/"
    data[section] = entry
    return write_atomic(
        target,
        "# written by comfyfleet warm-up: models live outside the ComfyUI tree\n"
        + yaml.safe_dump(data, sort_keys=False, default_flow_style=False),
    )
