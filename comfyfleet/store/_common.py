"""Rules both stores share, so a key or metadata that works locally also works on S3."""

from __future__ import annotations

import re
from collections.abc import Mapping

from comfyfleet.errors import StoreConfigError

# S3 sends user metadata as ``x-amz-meta-<name>`` headers: names are header tokens and come
# back lowercased, values must be printable ASCII, and the whole lot is capped at 2 KiB.
_META_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_META_VALUE_RE = re.compile(r"^[\x20-\x7e]*$")
MAX_METADATA_BYTES = 2048


def normalize_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """Lowercase the names and check that S3 would accept them (and thus that both stores agree)."""
    if not metadata:
        return {}
    out: dict[str, str] = {}
    for raw_name, value in metadata.items():
        name = raw_name.lower()
        if not _META_NAME_RE.match(name):
            raise StoreConfigError(
                f"invalid object metadata name {raw_name!r}",
                hint="use lowercase letters, digits, '-', '_' or '.'",
            )
        if not isinstance(value, str) or not _META_VALUE_RE.match(value):
            raise StoreConfigError(
                f"invalid value for object metadata {raw_name!r}",
                hint="metadata values must be printable ASCII strings",
            )
        out[name] = value
    total = sum(len(k) + len(v) for k, v in out.items())
    if total > MAX_METADATA_BYTES:
        raise StoreConfigError(
            f"object metadata is {total} bytes, over the {MAX_METADATA_BYTES}-byte S3 limit",
            hint="store large facts in the manifest instead of object metadata",
        )
    return out


def clamp_range(start: int, end: int) -> tuple[int, int]:
    """Validate a ``[start, end)`` request; negative offsets are a caller bug."""
    if start < 0 or end < 0:
        raise ValueError(f"byte range [{start}, {end}) has a negative offset")
    return start, max(start, end)


def check_chunking(start: int, chunk_size: int) -> None:
    """Validate ``iter_bytes`` arguments; a negative start or empty chunk is a caller bug."""
    if start < 0 or chunk_size <= 0:
        raise ValueError(
            f"iter_bytes needs start >= 0 and chunk_size > 0, got {start}, {chunk_size}"
        )
