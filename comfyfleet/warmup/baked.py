"""The baked manifest: what a pre-baked image holds, and the check ``--mode baked`` runs.

``comfyfleet bake`` (run inside ``docker build``, see ``render.render_dockerfile``) pulls a
profile with full verification and writes ``/opt/comfyfleet/baked-manifest.json``::

    {"format": "comfyfleet-baked/1", "profile": "image", "created_at": "...",
     "comfyfleet_version": "0.1.0", "store": "s3://bucket/prefix",
     "models_dir": "/opt/comfyfleet/models",
     "entries": [{"id", "key", "folder", "file", "size", "sha256", "mtime_ns"}, ...]}

At start, ``check_baked`` compares each file with its entry. Image layers are read-only
history: a file with the baked size and modification time (``mtime_ns``, kept by
``COPY --from``) is the file that was verified at build time, so the fast check reads no
byte (the marker path). Any other file of the right size is re-hashed; ``verify="full"``
re-hashes everything, in parallel. A missing or wrong file is reported, never trusted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from comfyfleet import __version__
from comfyfleet.config import env
from comfyfleet.errors import ConfigError
from comfyfleet.files import write_atomic
from comfyfleet.pull.transfer import EntryLike, hash_file
from comfyfleet.store.manifest import StoredFile

BAKED_FORMAT = "comfyfleet-baked/1"
DEFAULT_BAKED_MANIFEST = Path("/opt/comfyfleet/baked-manifest.json")
ENV_BAKED_MANIFEST = "COMFYFLEET_BAKED_MANIFEST"

CheckStatus = Literal["ok", "missing", "wrong-size", "wrong-hash"]


class BakedEntry(StoredFile):
    """A file the image holds: what the store's manifest says of it, plus its mtime at bake
    time (the fast check compares size and mtime, the full one the sha256)."""

    mtime_ns: int | None = None


class BakedManifest(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    format: str = BAKED_FORMAT
    profile: str
    created_at: datetime
    comfyfleet_version: str = __version__
    store: str = ""
    models_dir: str
    entries: list[BakedEntry] = Field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries)

    def path_of(self, entry: BakedEntry) -> Path:
        return Path(self.models_dir).joinpath(entry.folder, *entry.file.split("/"))


def default_baked_manifest_path() -> Path:
    value = env(ENV_BAKED_MANIFEST)
    return Path(value) if value else DEFAULT_BAKED_MANIFEST


def write_baked_manifest(
    path: Path,
    *,
    profile: str,
    models_dir: Path,
    entries: Iterable[EntryLike],
    ids: dict[str, str] | None = None,
    store: str = "",
) -> BakedManifest:
    """Record the files now in ``models_dir`` (with their mtime) as the baked set."""
    base = models_dir.absolute()
    baked: list[BakedEntry] = []
    for entry in entries:
        dest = base.joinpath(entry.folder, *entry.file.split("/"))
        st = dest.stat()
        if st.st_size != entry.size:
            raise ConfigError(
                f"{dest} has {st.st_size} bytes, the manifest says {entry.size}",
                hint="re-run the bake: the pull did not finish",
            )
        baked.append(
            BakedEntry(
                id=(ids or {}).get(entry.key, entry.key),
                key=entry.key,
                folder=entry.folder,
                file=entry.file,
                size=entry.size,
                sha256=entry.sha256,
                mtime_ns=st.st_mtime_ns,
            )
        )
    manifest = BakedManifest(
        profile=profile,
        created_at=datetime.now(UTC),
        store=store,
        models_dir=str(base),
        entries=sorted(baked, key=lambda e: e.key),
    )
    write_atomic(path, manifest.model_dump_json(indent=1) + "\n")
    return manifest


def read_baked_manifest(path: Path) -> BakedManifest:
    """The baked manifest at ``path``; a clear ``ConfigError`` when absent or unreadable."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"no baked manifest at {path}: this image was not built by "
            "`comfyfleet render dockerfile`",
            hint=f"use --mode script, or point --baked-manifest / ${ENV_BAKED_MANIFEST} at it",
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"baked manifest {path} is unreadable ({exc})", hint="rebuild the image"
        ) from exc
    if not isinstance(raw, dict) or raw.get("format") != BAKED_FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise ConfigError(
            f"baked manifest {path} has format {found!r}, expected {BAKED_FORMAT!r}",
            hint="rebuild the image with this comfyfleet version",
        )
    try:
        return BakedManifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(
            f"baked manifest {path}: field {where}: {first['msg']}", hint="rebuild the image"
        ) from exc


@dataclass(frozen=True)
class BakedFileCheck:
    entry: BakedEntry
    path: Path
    status: CheckStatus
    how: Literal["mtime", "hashed", ""] = ""
    hashed_bytes: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class BakedCheck:
    manifest: BakedManifest
    files: tuple[BakedFileCheck, ...]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.files)

    @property
    def bad(self) -> list[BakedFileCheck]:
        return [f for f in self.files if not f.ok]

    @property
    def hashed_bytes(self) -> int:
        return sum(f.hashed_bytes for f in self.files)


def _check_one(manifest: BakedManifest, entry: BakedEntry, verify: str) -> BakedFileCheck:
    path = manifest.path_of(entry)
    try:
        st = path.stat()
    except FileNotFoundError:
        return BakedFileCheck(entry, path, "missing")
    if st.st_size != entry.size:
        return BakedFileCheck(entry, path, "wrong-size")
    if verify == "fast" and entry.mtime_ns is not None and st.st_mtime_ns == entry.mtime_ns:
        return BakedFileCheck(entry, path, "ok", "mtime")
    digest = hash_file(path)
    status: CheckStatus = "ok" if digest == entry.sha256 else "wrong-hash"
    return BakedFileCheck(entry, path, status, "hashed", st.st_size)


def check_baked(
    manifest: BakedManifest, *, verify: str = "fast", max_workers: int = 8
) -> BakedCheck:
    """Compare every baked file with its entry (see the module docstring)."""
    t0 = time.monotonic()
    entries: Sequence[BakedEntry] = manifest.entries
    workers = max(1, min(max_workers, len(entries)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="comfyfleet-baked") as pool:
        files = tuple(pool.map(lambda e: _check_one(manifest, e, verify), entries))
    return BakedCheck(manifest, files, time.monotonic() - t0)
