"""The object store protocol every backend implements.

Keys are ``/``-separated, relative, never start with ``/`` and never contain ``..``.
The layout in a store (a bucket + prefix, or a directory) is::

    models/<comfy_folder>/<file>          the model files
    manifest.json                         what is there, verified (see ``manifest.py``)
    reports/coldstart.parquet             cold-start history (warm-up)
    outputs/<batch-id>/<job-id>/<file>    generated outputs

A file's sha256 travels with it as user metadata (``SHA256_METADATA_KEY``) because S3 has
no whole-object SHA-256 for multipart uploads.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

from comfyfleet.errors import StoreConfigError

SHA256_METADATA_KEY = "sha256"

# S3 limits: parts are 5 MiB..5 GiB (the last may be smaller), at most 10,000 of them.
MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PART_SIZE = 5 * 1024 * 1024 * 1024
MAX_PARTS = 10_000


@dataclass(frozen=True)
class ObjectInfo:
    """What ``head`` and ``list`` report about one object."""

    key: str
    size: int
    etag: str = ""
    last_modified: datetime | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def sha256(self) -> str | None:
        """The sha256 recorded with the object, if any (lowercase hex)."""
        value = self.metadata.get(SHA256_METADATA_KEY)
        return value.lower() if value else None


@dataclass(frozen=True)
class PartInfo:
    """One uploaded part of a multipart upload."""

    number: int
    etag: str
    size: int


@runtime_checkable
class MultipartUpload(Protocol):
    """A multipart upload in progress. Nothing is visible under ``key`` until ``complete``."""

    @property
    def key(self) -> str: ...

    @property
    def upload_id(self) -> str: ...

    def put_part(self, number: int, data: bytes) -> PartInfo:
        """Upload part ``number`` (1-based). Re-uploading a number replaces it."""
        ...

    def list_parts(self) -> list[PartInfo]:
        """Parts uploaded so far, by number (used to resume)."""
        ...

    def complete(self, parts: list[PartInfo]) -> ObjectInfo:
        """Join ``parts`` into the object and make it visible under ``key`` atomically."""
        ...

    def abort(self) -> None:
        """Drop every uploaded part; ``key`` is left as it was."""
        ...


@runtime_checkable
class ObjectStore(Protocol):
    """A flat key -> bytes store: a local directory or an S3 bucket + prefix."""

    @property
    def uri(self) -> str:
        """Display URI (``s3://bucket/prefix`` or ``file:///path``); never credentials."""
        ...

    def head(self, key: str) -> ObjectInfo:
        """Size, etag and metadata of ``key``; raises ``ObjectNotFound``."""
        ...

    def exists(self, key: str) -> ObjectInfo | None:
        """``head`` that answers None instead of raising ``ObjectNotFound``."""
        ...

    def get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of ``key`` (``end`` is clamped to the size)."""
        ...

    def iter_bytes(
        self, key: str, start: int = 0, chunk_size: int = 8 * 1024 * 1024
    ) -> Iterator[bytes]:
        """Stream ``key`` from ``start`` to the end in chunks of at most ``chunk_size``."""
        ...

    def get_bytes(self, key: str) -> bytes:
        """The whole object (small objects only: manifests, reports)."""
        ...

    def put_bytes(
        self,
        key: str,
        data: bytes,
        *,
        metadata: Mapping[str, str] | None = None,
        if_none_match: bool = False,
        content_type: str | None = None,
    ) -> ObjectInfo:
        """Write ``data`` atomically. With ``if_none_match`` raise ``PreconditionFailed``
        when ``key`` already exists (conditional put)."""
        ...

    def create_multipart(
        self, key: str, *, metadata: Mapping[str, str] | None = None
    ) -> MultipartUpload:
        """Start a multipart upload to ``key`` with the final object's metadata."""
        ...

    def find_multipart(self, key: str) -> list[MultipartUpload]:
        """Unfinished multipart uploads to ``key``, newest first (to resume or abort)."""
        ...

    def set_metadata(self, key: str, metadata: Mapping[str, str]) -> ObjectInfo:
        """Replace the user metadata of an existing object (server-side, no re-upload)."""
        ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in key order."""
        ...

    def delete(self, key: str) -> None:
        """Remove ``key``; removing a missing key is not an error."""
        ...

    def presign_get(self, key: str, expires_s: int = 3600) -> str | None:
        """A URL anyone can GET for ``expires_s`` seconds, or None if the store has none."""
        ...


def check_key(key: str) -> str:
    """Reject keys that could escape the store's root or are not relative."""
    parts = key.split("/")
    if not key or key.startswith("/") or "\\" in key or any(p in ("", ".", "..") for p in parts):
        raise StoreConfigError(
            f"invalid object key {key!r}",
            hint="keys are relative '/'-separated paths without '.', '..' or empty segments",
        )
    return key
