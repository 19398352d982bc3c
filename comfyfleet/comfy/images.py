"""Input images: load from a URL, a path or bytes, check what they are, name them by content.

ComfyUI's ``LoadImage`` reads files from its input directory, which a remote client can only
fill through ``POST /upload/image``. Everything a job names as an image passes through
:func:`load_image_source` first, so a web page, a PDF or a 2 GB file is refused here with a
message that says what it is, before ComfyUI sees a byte.

Upload names are the sha256 of the bytes (16 hex digits) plus the extension: the same image
gets the same name on every run and ComfyUI's identical-bytes check reuses the stored file
instead of writing ``name (1).png``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

from comfyfleet.errors import InputImageError, SourceUnavailable
from comfyfleet.units import format_bytes

DEFAULT_MAX_IMAGE_BYTES = 50 * 2**20
_CHUNK = 64 * 1024

# (mime, extension) for the formats LoadImage reads and we accept.
PNG = ("image/png", ".png")
JPEG = ("image/jpeg", ".jpg")
WEBP = ("image/webp", ".webp")


def sniff_image(data: bytes) -> tuple[str, str] | None:
    """(mime, extension) when ``data`` starts like a PNG, JPEG or WebP file, else None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if data.startswith(b"\xff\xd8\xff"):
        return JPEG
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return WEBP
    return None


def describe_bytes(data: bytes) -> str:
    """A few words on what ``data`` is, for the refusal message."""
    if not data:
        return "empty (0 bytes)"
    head = data[:512].lstrip()
    low = head.lower()
    known = [
        (data.startswith((b"GIF87a", b"GIF89a")), "a GIF image"),
        (data.startswith(b"%PDF"), "a PDF document"),
        (data.startswith(b"BM"), "a BMP image"),
        (data.startswith((b"II*\x00", b"MM\x00*")), "a TIFF image"),
        (data[4:8] == b"ftyp" and data[8:12] in (b"avif", b"avis"), "an AVIF image"),
        (data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"mif1"), "a HEIC image"),
        (data[4:8] == b"ftyp", "an MP4/QuickTime video"),
        (data.startswith(b"\x1aE\xdf\xa3"), "a WebM/Matroska video"),
        (data.startswith(b"PK\x03\x04"), "a ZIP archive"),
        (low.startswith((b"<!doctype html", b"<html")), "an HTML page"),
        (low.startswith(b"<svg") or (low.startswith(b"<?xml") and b"<svg" in low), "an SVG"),
        (head[:1] in (b"{", b"["), "JSON or text"),
    ]
    for matched, what in known:
        if matched:
            return what
    try:
        data[:256].decode("utf-8")
    except UnicodeDecodeError:
        return f"unrecognised binary data (starts with {data[:8].hex()})"
    return "text"


def content_name(data: bytes, ext: str) -> str:
    """The upload name for these bytes: sha256 prefix + extension (same image, same name)."""
    return hashlib.sha256(data).hexdigest()[:16] + ext


def display_source(source: str | Path | bytes | bytearray | memoryview) -> str:
    """How a source is named in messages: URLs without query or credentials, never bytes."""
    if isinstance(source, bytes | bytearray | memoryview):
        return f"<{len(source)} bytes>"
    text = str(source)
    if text.startswith("data:"):
        return text[: text.find(",") if "," in text else 30] + ",…"
    if _is_url(text):
        parts = urlsplit(text)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        # Presigned URLs carry credentials in the query: never show it.
        return urlunsplit((parts.scheme, host, parts.path, "", ""))
    return text


def _is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


def load_image_source(
    source: str | Path | bytes | bytearray | memoryview,
    *,
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    http: httpx.Client | None = None,
    timeout: float = 30.0,
) -> tuple[bytes, str, str]:
    """Read an input image and check it: returns ``(bytes, mime, extension)``.

    ``source`` is raw bytes, a path, an ``http(s)://`` URL (fetched with timeouts, stopped as
    soon as it passes ``max_bytes``) or a ``data:`` URI. Anything that is not PNG, JPEG or
    WebP by content (the name and the server's Content-Type are not trusted) raises
    :class:`InputImageError` naming the source and what it is.
    """
    shown = display_source(source)
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        _check_size(shown, len(data), max_bytes)
    else:
        text = str(source)
        if _is_url(text):
            data = _fetch_url(text, shown, max_bytes=max_bytes, http=http, timeout=timeout)
        elif text.startswith("data:"):
            data = _decode_data_uri(text, shown)
            _check_size(shown, len(data), max_bytes)
        else:
            data = _read_path(Path(text).expanduser(), shown, max_bytes)
    kind = sniff_image(data)
    if kind is None:
        raise InputImageError(
            f"input image {shown} is {describe_bytes(data)}, not a PNG, JPEG or WebP image",
            hint="point the job at a PNG, JPEG or WebP file (convert other formats first)",
        )
    return data, kind[0], kind[1]


def _check_size(shown: str, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise InputImageError(
            f"input image {shown} is {format_bytes(size)}, over the {format_bytes(max_bytes)} "
            "limit",
            hint="scale the image down, or raise max_image_bytes if ComfyUI can take it",
        )


def _read_path(path: Path, shown: str, max_bytes: int) -> bytes:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise InputImageError(
            f"input image {shown} does not exist",
            hint="check the path in the jobs file (relative paths are from the current directory)",
        ) from None
    except OSError as exc:
        raise InputImageError(f"input image {shown} cannot be read: {exc.strerror}") from exc
    if path.is_dir():
        raise InputImageError(f"input image {shown} is a directory, not a file")
    _check_size(shown, size, max_bytes)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputImageError(f"input image {shown} cannot be read: {exc.strerror}") from exc


def _decode_data_uri(text: str, shown: str) -> bytes:
    header, sep, payload = text.partition(",")
    if not sep:
        raise InputImageError(f"input image {shown} is a data: URI without a ',' before the data")
    try:
        if header.endswith(";base64"):
            return base64.b64decode(payload, validate=True)
        return payload.encode("latin-1")
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise InputImageError(f"input image {shown} is a data: URI that cannot be decoded") from exc


def _fetch_url(
    url: str, shown: str, *, max_bytes: int, http: httpx.Client | None, timeout: float
) -> bytes:
    client = http or httpx.Client(timeout=httpx.Timeout(timeout), follow_redirects=True)
    try:
        with client.stream("GET", url, timeout=timeout, follow_redirects=True) as response:
            status = response.status_code
            if status >= 500 or status == 429:
                raise SourceUnavailable(
                    f"input image {shown} answered HTTP {status}",
                    source=shown,
                    hint="the image host is failing or throttling; the job is retried",
                )
            if status >= 400:
                raise InputImageError(
                    f"input image {shown} answered HTTP {status}",
                    hint="check the URL (a presigned URL may have expired)",
                )
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit():
                _check_size(shown, int(declared), max_bytes)
            buf = bytearray()
            for chunk in response.iter_bytes(_CHUNK):
                buf += chunk
                # The declared length may be absent or a lie: count while reading.
                if len(buf) > max_bytes:
                    _check_size(shown, len(buf), max_bytes)
            return bytes(buf)
    except httpx.TimeoutException as exc:
        raise SourceUnavailable(
            f"input image {shown} timed out after {timeout:g} s", source=shown
        ) from exc
    except httpx.HTTPError as exc:
        raise SourceUnavailable(
            f"input image {shown} could not be fetched: {type(exc).__name__}", source=shown
        ) from exc
    finally:
        if http is None:
            client.close()
