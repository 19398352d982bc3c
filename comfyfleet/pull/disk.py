"""Free disk space and the preflight that refuses a pull before its first byte."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from comfyfleet.errors import InsufficientDiskError
from comfyfleet.units import format_bytes

# Keep some space for ComfyUI's outputs, logs and temp files on top of the models.
DEFAULT_MARGIN_BYTES = 2 * 1024**3
DEFAULT_MARGIN_RATIO = 0.02


def existing_parent(path: Path) -> Path:
    """``path`` itself, or the nearest parent that exists (where the files will land)."""
    current = path.absolute()
    while not current.exists():
        if current.parent == current:
            break
        current = current.parent
    return current


def free_bytes(path: Path) -> int:
    """Bytes available to this (unprivileged) user on the filesystem that holds ``path``."""
    return shutil.disk_usage(existing_parent(path)).free


def device_of(path: Path) -> int:
    """The filesystem id of ``path`` (or its nearest existing parent)."""
    return os.stat(existing_parent(path)).st_dev


def required_bytes(
    needed_bytes: int,
    *,
    margin_bytes: int = DEFAULT_MARGIN_BYTES,
    margin_ratio: float = DEFAULT_MARGIN_RATIO,
) -> int:
    """``needed_bytes`` plus the margin (fixed + proportional); 0 when nothing is needed."""
    if needed_bytes <= 0:
        return 0
    return needed_bytes + margin_bytes + int(needed_bytes * margin_ratio)


def preflight(
    needed_bytes: int,
    path: Path,
    *,
    margin_bytes: int = DEFAULT_MARGIN_BYTES,
    margin_ratio: float = DEFAULT_MARGIN_RATIO,
    free_fn: Callable[[Path], int] = free_bytes,
) -> None:
    """Raise ``InsufficientDiskError`` unless ``needed_bytes`` + margin fit at ``path``.

    ``needed_bytes`` is what is still to be written: the caller leaves out files already in
    place and partial downloads that are already allocated (``transfer.bytes_to_write``).
    """
    required = required_bytes(needed_bytes, margin_bytes=margin_bytes, margin_ratio=margin_ratio)
    if required == 0:
        return
    free = free_fn(path)
    if free < required:
        raise InsufficientDiskError(
            str(path),
            needed=required,
            free=free,
            hint=f"that is {format_bytes(needed_bytes)} of models plus a "
            f"{format_bytes(required - needed_bytes)} margin; free space, attach a bigger "
            "disk, or pick a smaller profile (--profile minimal)",
        )
