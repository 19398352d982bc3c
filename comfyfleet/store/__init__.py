"""Object stores: where mirrored models, the manifest, reports and outputs live.

``open_store(uri)`` turns a store URI into a store:

- ``s3://bucket/prefix``: :class:`S3Store` (boto3). The endpoint comes from
  ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` and credentials from the standard AWS chain.
- ``file:///path`` or a plain path: :class:`LocalStore`, a directory.
- nothing: ``$COMFYFLEET_STORE``, else ``$COMFYFLEET_HOME/store`` (``~/.comfyfleet/store``).

Anything else that looks like ``scheme:`` (``s3:/bucket`` with one slash, ``gs://``) is
refused rather than taken for a local folder named ``s3:``; a directory whose name holds a
colon is written ``./name:x`` or as an absolute path. Credentials in a URI
(``s3://key:secret@bucket``) are refused, and every message shows URIs through
:func:`~comfyfleet.store.uris.redact_uri`.

``S3Store`` is imported on first use so commands that never touch S3 do not pay for boto3.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from comfyfleet.config import env, env_or
from comfyfleet.errors import StoreConfigError
from comfyfleet.store.base import (
    SHA256_METADATA_KEY,
    MultipartUpload,
    ObjectInfo,
    ObjectStore,
    PartInfo,
    check_key,
)
from comfyfleet.store.local import LocalStore
from comfyfleet.store.uris import has_userinfo, redact_uri

if TYPE_CHECKING:
    from comfyfleet.store.s3 import S3Store

__all__ = [
    "SHA256_METADATA_KEY",
    "LocalStore",
    "MultipartUpload",
    "ObjectInfo",
    "ObjectStore",
    "PartInfo",
    "S3Store",
    "check_key",
    "check_store",
    "default_store_uri",
    "open_store",
    "redact_uri",
]

ACCEPTED_FORMS = "s3://bucket[/prefix], file:///absolute/path, or a plain directory path"
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# "name:" at the start with no "//" after it; two letters at least, so "C:\\x" stays a path.
_LOOSE_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):(?!//)")
_KNOWN_SCHEMES = ("s3", "file")


def default_store_uri() -> str:
    """``$COMFYFLEET_STORE``, else ``$COMFYFLEET_HOME/store`` (home defaults to ~/.comfyfleet)."""
    configured = env("COMFYFLEET_STORE")
    if configured:
        return configured
    home = env_or("COMFYFLEET_HOME", "~/.comfyfleet")
    return str(Path(home).expanduser() / "store")


def open_store(uri: str | None = None) -> ObjectStore:
    """The store a URI names (see the module docstring); raises ``StoreConfigError``."""
    text = (uri if uri is not None else default_store_uri()).strip()
    if not text:
        raise StoreConfigError("empty store URI", hint=f"use {ACCEPTED_FORMS}")
    shown = redact_uri(text)
    if has_userinfo(text):
        raise StoreConfigError(
            f"store URI {shown!r} carries credentials, which a store URI never takes",
            hint="write s3://bucket/prefix and set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
            "(or save a comfyfleet-store block); rotate the key if this line was shared",
        )
    match = _SCHEME_RE.match(text)
    if match is None:
        _refuse_loose_scheme(text, shown)
        return LocalStore(Path(text).expanduser())
    scheme = match.group(1).lower()
    parts = urlsplit(text)
    if scheme == "s3":
        return _open_s3(parts.netloc, parts.path, shown, bool(parts.query or parts.fragment))
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise StoreConfigError(
                f"store URI {shown!r} names host {parts.netloc!r}; file:// URIs are local only",
                hint="write it as file:///absolute/path (three slashes)",
            )
        if not parts.path:
            raise StoreConfigError(
                f"store URI {shown!r} names no directory", hint="write it as file:///absolute/path"
            )
        return LocalStore(unquote(parts.path))
    raise StoreConfigError(
        f"unknown store scheme {scheme!r} in {shown!r}",
        hint=f"use {ACCEPTED_FORMS}; for other S3-compatible services use s3:// "
        "with AWS_ENDPOINT_URL",
    )


def _refuse_loose_scheme(text: str, shown: str) -> None:
    """Refuse ``s3:/bucket`` and other ``scheme:`` paths instead of making a folder ``s3:``."""
    loose = _LOOSE_SCHEME_RE.match(text)
    if loose is None:
        return
    scheme = loose.group(1).lower()
    rest = shown[len(loose.group(0)) :].lstrip("/")
    if scheme in _KNOWN_SCHEMES:
        fixed = f"{scheme}:///{rest}" if scheme == "file" else f"{scheme}://{rest}"
        hint = f"write it as {fixed} (two slashes after '{scheme}:')"
    else:
        hint = (
            f"use {ACCEPTED_FORMS}; for a local directory whose name holds ':' write "
            f"./{shown} or an absolute path"
        )
    raise StoreConfigError(
        f"store URI {shown!r} looks like a '{scheme}:' URI but is not one "
        "(a scheme is followed by '//')",
        hint=hint,
    )


def _open_s3(bucket: str, path: str, shown: str, has_query: bool) -> ObjectStore:
    if not bucket:
        raise StoreConfigError(
            f"store URI {shown!r} names no bucket",
            hint="write it as s3://bucket or s3://bucket/prefix",
        )
    if has_query:
        raise StoreConfigError(
            f"store URI {shown!r} has a query or fragment, which s3:// URIs do not take",
            hint="set the endpoint with AWS_ENDPOINT_URL (or a --store-block) instead",
        )
    from comfyfleet.store.s3 import S3Store

    return S3Store(bucket, path.strip("/"))


def check_store(store: ObjectStore) -> None:
    """Cheap preflight: reachable, credentials accepted, bucket/directory usable.

    Raises the translated store errors (``StoreUnavailable``, ``StoreAuthError``,
    ``BucketNotFound``, ``StoreConfigError``); writes nothing.
    """
    check = getattr(store, "check", None)
    if callable(check):
        check()
    else:
        store.exists("manifest.json")


def __getattr__(name: str) -> Any:
    if name == "S3Store":
        from comfyfleet.store.s3 import S3Store

        return S3Store
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
