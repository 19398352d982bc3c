"""Atomic writes of user-visible files: temp file beside the target -> fsync -> ``os.replace``.

A reader, or a machine that crashes mid-write, sees the old file or the whole new one, never
a half-written one under the final name. The temp file is created next to the target (same
filesystem, so the rename is atomic) with a unique dot-name, and is removed when anything
fails. The folder is fsynced after the rename so the new name itself survives a crash.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import threading
import uuid
from pathlib import Path

# Where comfyfleet keeps its own state beside user files (a store root, a ComfyUI root).
STATE_DIR = ".comfyfleet"

# A sha256 as comfyfleet stores it: 64 lowercase hex digits.
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def is_sha256(value: str) -> bool:
    """True for 64 lowercase hex digits (callers lowercase what a source sends first)."""
    return bool(SHA256_RE.match(value))


def write_atomic(path: str | Path, data: bytes | str, *, mode: int | None = None) -> Path:
    """Write ``data`` (``str`` as UTF-8) to ``path`` atomically; returns ``path``.

    Missing parent folders are created. ``mode`` sets the file's permissions (e.g. 0o755
    for a script); otherwise they follow the umask like any new file. Raises ``OSError``
    (``IsADirectoryError`` when ``path`` is a folder) and leaves no temp file behind.
    """
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    body = data.encode("utf-8") if isinstance(data, str) else data
    tmp = target.with_name(
        f".{target.name}.{os.getpid()}.{threading.get_ident()}.{uuid.uuid4().hex[:8]}.tmp"
    )
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        try:
            view = memoryview(body)
            while view:
                view = view[os.write(fd, view) :]
            if mode is not None:
                os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(target.parent)
    return target


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
