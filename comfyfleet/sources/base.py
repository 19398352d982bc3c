"""What every source shares: tokens, the download plan, and safe file names.

A source turns a catalog entry into a :class:`DownloadPlan` (``resolve``) and streams the
plan's bytes (``open_stream``). Plans hold the headers that authenticate the download;
neither their ``repr`` nor any error message ever shows a token.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from comfyfleet import config
from comfyfleet.store.uris import redact_uri

# Query parameters whose values are secrets (CivitAI ?token=, presigned S3/CloudFront URLs).
_SECRET_QUERY_KEYS = frozenset(
    {
        "token",
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "signature",
        "policy",
        "key-pair-id",
        "sig",
    }
)


@dataclass(frozen=True, repr=False)
class Tokens:
    """API tokens for the sources that need them; ``repr`` shows only whether each is set."""

    hf: str | None = None
    civitai: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Tokens:
        """``HF_TOKEN`` (else ``HUGGING_FACE_HUB_TOKEN``), ``CIVITAI_TOKEN`` (else
        ``CIVITAI_API_TOKEN``); empty values count as unset."""
        return cls(hf=config.env("HF_TOKEN", env), civitai=config.env("CIVITAI_TOKEN", env))

    def __repr__(self) -> str:
        return (
            f"Tokens(hf={'set' if self.hf else 'unset'}, "
            f"civitai={'set' if self.civitai else 'unset'})"
        )

    __str__ = __repr__


@dataclass(frozen=True, repr=False)
class DownloadPlan:
    """Where a file's bytes come from and what they must turn out to be.

    ``url`` may redirect (HF CDN, CivitAI storage host); ``open_stream`` follows it.
    ``headers`` carry authentication and are never shown. ``approx_size`` is a size the
    source states only roughly (CivitAI ``sizeKB``), for display and sanity checks.
    """

    url: str
    file_name: str
    size: int | None
    sha256: str | None
    revision: str | None
    source: str
    headers: Mapping[str, str] = field(default_factory=dict)
    approx_size: int | None = None

    @property
    def kind(self) -> str:
        """``hf``, ``civitai``, ``s3`` or ``url``, read from the display label."""
        return source_kind(self.source)

    def __repr__(self) -> str:
        auth = "set" if any(k.lower() == "authorization" for k in self.headers) else "unset"
        return (
            f"DownloadPlan(url={redact_url(self.url)!r}, file_name={self.file_name!r}, "
            f"size={self.size!r}, sha256={self.sha256!r}, revision={self.revision!r}, "
            f"source={self.source!r}, auth={auth})"
        )

    __str__ = __repr__


@dataclass(frozen=True)
class Upstream:
    """What a source holds now (``describe_upstream``): refresh compares it with the manifest.

    ``revision``: HF commit the ref points at, CivitAI version id, or the URL's ETag.
    ``latest_version``: for CivitAI, the newest published version of the model (may be
    newer than the tracked ``revision``); None elsewhere.
    """

    source: str
    revision: str | None
    size: int | None
    sha256: str | None
    latest_version: int | None = None


def source_kind(label: str) -> str:
    if label.startswith("hf://"):
        return "hf"
    if label.startswith("civitai:"):
        return "civitai"
    if label.startswith("s3://"):
        return "s3"
    return "url"


def redact_url(url: str) -> str:
    """``url`` with its userinfo and the values of secret query parameters as ``***``."""
    url = redact_uri(url)
    parts = urlsplit(url)
    if not parts.query:
        return url
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    clean = [(k, "***" if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in pairs]
    return urlunsplit(parts._replace(query=urlencode(clean, safe="/:;*")))


def display_url(url: str) -> str:
    """``scheme://host[:port]/path`` of ``url``: no userinfo, query or fragment (where
    credentials and tokens hide), no trailing slash; a bare ``host:port`` reads as
    ``http://``. What error messages name, and a ComfyUI endpoint's default name."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # IPv6
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # a port that is not a number: leave it out rather than fail a message
        port = ""
    return f"{parts.scheme}://{host}{port}{parts.path.rstrip('/')}"


_BAD_CHARS = re.compile(r'[\x00-\x1f\x7f<>:"|?*]')
_WINDOWS_RESERVED = frozenset(
    {
        "con",
        "prn",
        "aux",
        "nul",
        *(f"com{i}" for i in range(1, 10)),
        *(f"lpt{i}" for i in range(1, 10)),
    }
)
MAX_FILE_NAME_BYTES = 255


def sanitize_file_name(name: str | None) -> str | None:
    """A remote file name made safe to use as one path component, or None if nothing is left.

    Keeps only the last path part (``../../x`` -> ``x``, ``a\\b`` -> ``b``), drops control
    characters and characters Windows forbids, strips leading dots and spaces (no hidden
    files, no ``..``) and trailing dots/spaces, and caps the length at 255 bytes keeping
    the extension.
    """
    if not name:
        return None
    name = unicodedata.normalize("NFC", name)
    name = name.replace("\\", "/").split("/")[-1]
    name = _BAD_CHARS.sub("", name)
    name = name.strip().lstrip(". ").rstrip(". ")
    if not name:
        return None
    stem, dot, ext = name.rpartition(".")
    if (stem if dot else name).lower() in _WINDOWS_RESERVED:
        name = "_" + name
    if len(name.encode("utf-8")) > MAX_FILE_NAME_BYTES:
        suffix = ("." + ext) if dot and len(ext) <= 16 else ""
        room = MAX_FILE_NAME_BYTES - len(suffix.encode("utf-8"))
        head = (stem if suffix else name).encode("utf-8")[:room].decode("utf-8", "ignore")
        name = head.rstrip(". ") + suffix
    return name or None
