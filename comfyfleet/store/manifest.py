"""``manifest.json``: what a store holds, verified.

The mirror writes one entry per model file it placed or found intact; warm-up reads the
manifest to plan its pull (key, size, sha256) without listing the bucket. The file is
written with a single atomic put, so readers see the old manifest or the new one.

Format (``version`` 1)::

    {"version": 1, "updated_at": "2026-...Z",
     "entries": [{"id": ..., "key": "models/<folder>/<file>", "folder": ..., "file": ...,
                  "size": ..., "sha256": ..., "source": "hf:repo@rev/path", "revision": ...,
                  "mirrored_at": "...", "etag": "..."}, ...]}

Entries are kept sorted by key, one per key. ``update_manifest`` is read-merge-write: run
one mirror per store at a time (the mirror flow is the only writer).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from comfyfleet.errors import ObjectNotFound, StoreError
from comfyfleet.files import is_sha256
from comfyfleet.store.base import ObjectInfo, ObjectStore, check_key

MANIFEST_KEY = "manifest.json"
MANIFEST_VERSION = 1
_HEADS_AT_ONCE = 8  # concurrent heads when checking entries against the store


class StoredFile(BaseModel):
    """A model file as every manifest names it: catalog id, store key, ComfyUI folder and
    file, size and sha256 (the store's ``manifest.json``; a baked image's manifest too)."""

    # Unknown fields from a newer writer are dropped rather than refused.
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    key: str
    folder: str
    file: str
    size: int = Field(ge=0)
    sha256: str

    @field_validator("key")
    @classmethod
    def _key_is_relative(cls, value: str) -> str:
        return check_key(value)

    @field_validator("sha256")
    @classmethod
    def _sha256_is_hex(cls, value: str) -> str:
        value = value.lower()
        if not is_sha256(value):
            raise ValueError("sha256 must be 64 hex digits")
        return value


class ManifestEntry(StoredFile):
    """One verified file in the store."""

    source: str
    revision: str | None = None
    mirrored_at: datetime
    etag: str = ""


class Manifest(BaseModel):
    """The whole manifest: entries sorted by key, at most one per key."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    version: int = MANIFEST_VERSION
    updated_at: datetime | None = None
    entries: list[ManifestEntry] = Field(default_factory=list)

    @field_validator("entries")
    @classmethod
    def _one_per_key(cls, value: list[ManifestEntry]) -> list[ManifestEntry]:
        seen: set[str] = set()
        for entry in value:
            if entry.key in seen:
                raise ValueError(f"two entries for key {entry.key!r}")
            seen.add(entry.key)
        return sorted(value, key=lambda e: e.key)

    def get(self, key: str) -> ManifestEntry | None:
        """The entry for ``key``, if any."""
        return next((e for e in self.entries if e.key == key), None)

    def by_key(self) -> dict[str, ManifestEntry]:
        return {e.key: e for e in self.entries}

    def by_id(self) -> dict[str, ManifestEntry]:
        return {e.id: e for e in self.entries}

    def merged(
        self, entries: Iterable[ManifestEntry], removed_keys: Iterable[str] = ()
    ) -> Manifest:
        """A new manifest with ``entries`` added or replaced and ``removed_keys`` dropped."""
        current = self.by_key()
        for key in removed_keys:
            current.pop(key, None)
        for entry in entries:
            current[entry.key] = entry
        return Manifest(
            version=MANIFEST_VERSION, updated_at=datetime.now(UTC), entries=list(current.values())
        )

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=1).encode() + b"\n"


def entry_matches(entry: ManifestEntry, info: ObjectInfo) -> bool:
    """True when ``info`` (a head of the entry's key) shows the bytes the entry describes:
    same size, and the same ETag when the entry recorded one. An object overwritten in the
    store keeps its ``sha256`` metadata; only this comparison notices it."""
    if entry.size != info.size:
        return False
    return not entry.etag or _plain_etag(entry.etag) == _plain_etag(info.etag)


def _plain_etag(etag: str) -> str:
    return etag.strip().strip('"')


def remirror_hint(entry: ManifestEntry) -> str:
    """What to do when the store's object no longer matches its manifest entry."""
    return (
        f"the object under {entry.key} was replaced in the store after it was mirrored; "
        f"restore it with `comfyfleet mirror --force --only {entry.id}` (the catalog is fine)"
    )


def stale_entries(
    store: ObjectStore, entries: Iterable[ManifestEntry]
) -> list[tuple[ManifestEntry, str]]:
    """Entries whose object is missing or no longer the mirrored bytes, each with the fix.

    For readers of the manifest (a warm-up planning its pull): one ``head`` per entry, a
    few at once, so a profile of twenty files costs about one round trip, not twenty.
    """
    wanted = list(entries)
    if not wanted:
        return []
    with ThreadPoolExecutor(max_workers=min(_HEADS_AT_ONCE, len(wanted))) as pool:
        infos = list(pool.map(lambda e: store.exists(e.key), wanted))
    stale: list[tuple[ManifestEntry, str]] = []
    for entry, info in zip(wanted, infos, strict=True):
        if info is None:
            stale.append((entry, f"{entry.key} is missing; `comfyfleet mirror --only {entry.id}`"))
        elif not entry_matches(entry, info):
            stale.append((entry, remirror_hint(entry)))
    return stale


def require_current(store: ObjectStore, entries: Iterable[ManifestEntry]) -> None:
    """Raise :class:`StoreError` when any entry's object is missing or replaced.

    A replaced object keeps its ``sha256`` metadata, so a pull would only notice it after
    downloading it, and then blame the catalog pin; this names the mirror command instead.
    """
    stale = stale_entries(store, entries)
    if not stale:
        return
    if len(stale) == 1:
        entry, fix = stale[0]
        raise StoreError(
            f"{store.uri}: {entry.key} no longer matches manifest.json", store=store.uri, hint=fix
        )
    only = " ".join(f"--only {entry.id}" for entry, _ in stale)
    raise StoreError(
        f"{store.uri}: {len(stale)} objects no longer match manifest.json "
        f"({', '.join(entry.key for entry, _ in stale)})",
        store=store.uri,
        hint=f"they were replaced or removed after they were mirrored; restore them with "
        f"`comfyfleet mirror --force {only}` (the catalog is fine)",
    )


def _corrupt(store: ObjectStore, detail: str) -> StoreError:
    return StoreError(
        f"manifest {store.uri}/{MANIFEST_KEY} is unreadable: {detail}",
        store=store.uri,
        hint="restore it, or delete it and rerun `comfyfleet mirror`, which re-checks every "
        "file (their sha256 is kept with each object) and writes a new manifest",
    )


def parse_manifest(store: ObjectStore, data: bytes) -> Manifest:
    """Parse manifest bytes read from ``store`` (errors name the store's manifest)."""
    try:
        raw: Any = json.loads(data)
    except ValueError as exc:
        raise _corrupt(store, f"not JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise _corrupt(store, "not a JSON object")
    version = raw.get("version")
    if isinstance(version, int) and version > MANIFEST_VERSION:
        raise StoreError(
            f"manifest {store.uri}/{MANIFEST_KEY} has version {version}, newer than this "
            f"comfyfleet understands ({MANIFEST_VERSION})",
            store=store.uri,
            hint="upgrade comfyfleet",
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise _corrupt(store, f"{where}: {first['msg']} ({exc.error_count()} problem(s))") from exc


def read_manifest(store: ObjectStore) -> Manifest:
    """The store's manifest; an empty one when the store has none yet."""
    try:
        data = store.get_bytes(MANIFEST_KEY)
    except ObjectNotFound:
        return Manifest()
    return parse_manifest(store, data)


def write_manifest(store: ObjectStore, manifest: Manifest) -> ObjectInfo:
    """Replace the store's manifest with one atomic put."""
    return store.put_bytes(MANIFEST_KEY, manifest.to_json(), content_type="application/json")


def update_manifest(
    store: ObjectStore, entries: Iterable[ManifestEntry], removed_keys: Iterable[str] = ()
) -> Manifest:
    """Read, merge ``entries`` (replacing same-key ones), drop ``removed_keys``, write back."""
    manifest = read_manifest(store).merged(entries, removed_keys)
    write_manifest(store, manifest)
    return manifest
