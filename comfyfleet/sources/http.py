"""HTTP plumbing every source shares: redirects, Range resume, error mapping.

This is the one place where httpx errors and HTTP statuses become comfyfleet errors:

=========================================  ==============================================
what happened                              raised
=========================================  ==============================================
connect/read error, timeout, cut body      :class:`SourceUnavailable` (transient)
5xx, 408                                   :class:`SourceUnavailable` (transient)
429                                        :class:`RateLimited` with ``retry_after`` seconds
401/403 with ``X-Error-Code: GatedRepo``   :class:`GatedRepoError`
401/403, CivitAI login page/redirect       :class:`SourceAuthError` (says which env var)
404/410, HF ``*NotFound`` error codes      :class:`SourceNotFound`
451                                        :class:`RegionBlocked`
403 from a storage host (signed URL)       :class:`SourceUnavailable` (re-resolving cures it)
anything else                              :class:`SourceProtocolError`
=========================================  ==============================================

Redirects are followed by hand so that ``Authorization`` is dropped whenever the next hop
is another origin (CivitAI's storage host answers 400 to a request that carries both a
presigned URL and an ``Authorization`` header).
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import unquote

import httpx

from comfyfleet import __version__
from comfyfleet.errors import (
    GatedRepoError,
    RateLimited,
    RegionBlocked,
    SourceAuthError,
    SourceError,
    SourceNotFound,
    SourceProtocolError,
    SourceUnavailable,
    UpstreamChanged,
)
from comfyfleet.sources.base import DownloadPlan, display_url, sanitize_file_name

# Never a browser-like agent: CivitAI answers browsers with login redirects and HTML,
# scripts with JSON errors (sources-api.md B5).
USER_AGENT = f"comfyfleet/{__version__}"
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=15.0)
MAX_REDIRECTS = 10
_ERROR_BODY_LIMIT = 64 * 1024

CIVITAI_TOKEN_HINT = "set CIVITAI_TOKEN to an API key from civitai.com/user/account"
HF_TOKEN_HINT = "set HF_TOKEN to a read token from huggingface.co/settings/tokens"


def new_client() -> httpx.Client:
    """A client with our defaults; redirects are followed by hand (see module docstring)."""
    return httpx.Client(
        timeout=DEFAULT_TIMEOUT, follow_redirects=False, headers={"User-Agent": USER_AGENT}
    )


@contextlib.contextmanager
def client_or_new(http: httpx.Client | None) -> Iterator[httpx.Client]:
    """``http`` if given (left open), else a fresh client closed on exit."""
    if http is not None:
        yield http
        return
    client = new_client()
    try:
        yield client
    finally:
        client.close()


@dataclass(frozen=True)
class ErrorContext:
    """What an error message needs to say: the source, and how to fix access."""

    source: str
    kind: str  # hf | civitai | url
    token_set: bool = False
    page: str | None = None  # HF repo page (for the gated-repo hint)
    secrets: tuple[str, ...] = ()  # scrubbed from any server text we quote

    @classmethod
    def for_plan(cls, plan: DownloadPlan) -> ErrorContext:
        secrets = tuple(
            v.split(" ", 1)[-1] for k, v in plan.headers.items() if k.lower() == "authorization"
        )
        page = None
        if plan.kind == "hf" and "/resolve/" in plan.url:
            page = display_url(plan.url).split("/resolve/", 1)[0]
        return cls(plan.source, plan.kind, bool(secrets), page, secrets)

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            if secret:
                text = text.replace(secret, "***")
        return text


# ---------------------------------------------------------------- header parsing


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or an HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


_DISPOSITION_PARAM = re.compile(
    r"""\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)\s*(?:;|$)"""
)


def parse_content_disposition(value: str | None) -> str | None:
    """The file name in a ``Content-Disposition`` header (RFC 6266), not yet sanitised.

    ``filename*`` (RFC 8187, ``UTF-8''percent-encoded``) wins over ``filename``.
    """
    if not value:
        return None
    _, _, params = value.partition(";")
    plain: str | None = None
    extended: str | None = None
    for match in _DISPOSITION_PARAM.finditer(params):
        key, raw = match.group(1).lower(), match.group(2).strip()
        if key == "filename*":
            charset, _, rest = raw.strip('"').partition("'")
            _, _, encoded = rest.partition("'")
            try:
                extended = unquote(encoded, encoding=charset or "utf-8", errors="strict")
            except (LookupError, UnicodeDecodeError):
                extended = unquote(encoded, encoding="latin-1")
        elif key == "filename":
            if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
                raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
            plain = raw
    return extended if extended else plain


def _content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    """(start, end, total) from ``bytes a-b/t`` or ``bytes */t``; None where absent."""
    if not value:
        return None, None, None
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*", value)
    if not match:
        return None, None, None
    start, end, total = match.groups()
    return (
        int(start) if start is not None else None,
        int(end) if end is not None else None,
        int(total) if total not in (None, "*") else None,
    )


def same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


# ---------------------------------------------------------------- error mapping


def _server_message(response: httpx.Response, body: bytes) -> str:
    parts: list[str] = []
    header = response.headers.get("X-Error-Message")
    if header:
        parts.append(header)
    ctype = response.headers.get("Content-Type", "")
    if body and "json" in ctype:
        try:
            data: Any = json.loads(body)
        except ValueError:
            data = None
        if isinstance(data, dict):
            for key in ("message", "error", "error_description"):
                text = data.get(key)
                if isinstance(text, str) and text and text not in parts:
                    parts.append(text)
    elif body and "xml" in ctype:
        found = re.search(rb"<Message>(.*?)</Message>", body, re.S)
        if found:
            parts.append(found.group(1).decode("utf-8", "replace"))
    text = "; ".join(parts)
    text = " ".join(text.split())
    return text[:300]


def _read_error_body(response: httpx.Response) -> bytes:
    if response.is_stream_consumed or response.is_closed:
        try:
            return response.content[:_ERROR_BODY_LIMIT]
        except httpx.ResponseNotRead:
            return b""
    data = bytearray()
    try:
        for chunk in response.iter_raw():
            data.extend(chunk)
            if len(data) >= _ERROR_BODY_LIMIT:
                break
    except httpx.HTTPError:
        pass
    finally:
        response.close()
    return bytes(data[:_ERROR_BODY_LIMIT])


def transient_status_error(
    status: int, retry_after: str | None, source: str, detail: str, *, server: str = ""
) -> SourceError | None:
    """429 (``RateLimited``, with the ``Retry-After`` header's seconds) and 408/5xx
    (``SourceUnavailable``): the statuses a retry may cure, for every source; else ``None``.
    ``server`` names who answered ("the Hub") where the source is not plain HTTP."""
    by = f" by {server}" if server else ""
    if status == 429:
        seconds = parse_retry_after(retry_after)
        wait = f", retry after {seconds:.0f} s" if seconds is not None else ""
        return RateLimited(
            f"{source}: rate limited{by}{wait} ({detail})",
            source=source,
            retry_after=seconds,
            hint="wait and retry; comfyfleet retries with backoff and honours Retry-After",
        )
    if status >= 500 or status == 408:
        return SourceUnavailable(
            f"{source}: server error{by} ({detail})",
            source=source,
            hint="usually temporary; comfyfleet retries with backoff",
        )
    return None


def error_for_response(
    response: httpx.Response,
    ctx: ErrorContext,
    *,
    body: bytes | None = None,
    storage_host: bool = False,
) -> SourceError:
    """The comfyfleet error for a non-2xx ``response`` (reads a bounded error body)."""
    status = response.status_code
    if body is None:
        body = _read_error_body(response)
    said = ctx.scrub(_server_message(response, body))
    where = display_url(str(response.request.url)) if response.request else ctx.source
    detail = f"HTTP {status} from {where}" + (f": {said}" if said else "")
    code = response.headers.get("X-Error-Code", "")
    src = ctx.source

    hub_error = _hub_error(code, ctx, detail)
    if hub_error is not None:
        return hub_error
    transient = transient_status_error(status, response.headers.get("Retry-After"), src, detail)
    if transient is not None:
        return transient
    if status in (401, 403) and storage_host and ctx.kind in ("hf", "civitai"):
        # A presigned storage URL that is refused has usually expired: ask the source again.
        return SourceUnavailable(
            f"{src}: the storage host refused the signed download URL ({detail})",
            source=src,
            hint="signed URLs expire; a retry asks the source for a fresh one",
        )
    if status in (401, 403):
        return SourceAuthError(
            f"{src}: access denied ({detail})", source=src, hint=_auth_hint(ctx, said)
        )
    if status in (404, 410):
        hint = {
            "hf": "check the repo, revision and path",
            "civitai": "check the model/version id; the version may be unpublished, "
            "archived or deleted",
        }.get(ctx.kind, "check the URL")
        return SourceNotFound(f"{src}: not found ({detail})", source=src, hint=hint)
    if status == 451:
        return RegionBlocked(
            f"{src}: the source refuses this region for legal reasons ({detail})",
            source=src,
            hint="the region is blocked; run the mirror from a machine in another region",
        )
    return SourceProtocolError(
        f"{src}: unexpected answer ({detail})",
        source=src,
        hint="the request was refused as malformed; check the link or report it",
    )


def _hub_error(code: str, ctx: ErrorContext, detail: str) -> SourceError | None:
    """The error Hugging Face names in ``X-Error-Code`` (gated, repo/revision/file not
    found), None for other codes."""
    src = ctx.source
    if code == "GatedRepo":
        page = ctx.page or "the repo page"
        return GatedRepoError(
            f"{src}: gated repo, "
            + (
                "the token in HF_TOKEN has not been granted access"
                if ctx.token_set
                else "no Hugging Face token was sent"
            )
            + f" ({detail})",
            source=src,
            hint=f"accept the terms at {page} with your account, then set HF_TOKEN to a "
            "read token of that account",
        )
    if code in ("RepoNotFound", "RevisionNotFound", "EntryNotFound"):
        what = {
            "RepoNotFound": "repository",
            "RevisionNotFound": "revision",
            "EntryNotFound": "file",
        }[code]
        hint = {
            "RepoNotFound": "check the repo id; a private repo also needs HF_TOKEN"
            + ("" if ctx.token_set else " (none is set)"),
            "RevisionNotFound": "check the revision: a branch, tag or 40-hex commit",
            "EntryNotFound": "check the file path inside the repo at that revision",
        }[code]
        return SourceNotFound(f"{src}: {what} not found ({detail})", source=src, hint=hint)
    return None


def _auth_hint(ctx: ErrorContext, said: str) -> str:
    if ctx.kind == "civitai":
        if "disabled downloads" in said:
            return "the creator disabled downloads of this file; no token can fix that"
        if "Early Access" in said:
            return "the version is in Early Access; wait until it is public or buy access"
        if ctx.token_set:
            return (
                "CivitAI treats an unknown or expired key as anonymous: "
                + CIVITAI_TOKEN_HINT
                + " (a fresh key), or check your account's access"
            )
        return CIVITAI_TOKEN_HINT
    if ctx.kind == "hf":
        if ctx.token_set:
            return "the token in HF_TOKEN was refused or cannot read this repo; " + HF_TOKEN_HINT
        return HF_TOKEN_HINT
    return "the server wants credentials; use a presigned URL or an s3:// source"


def transport_error(exc: httpx.HTTPError, ctx: ErrorContext, url: str) -> SourceUnavailable:
    """A connect/read/protocol failure as a transient error (the token never appears)."""
    kind = type(exc).__name__
    said = ctx.scrub(str(exc))[:200]
    return SourceUnavailable(
        f"{ctx.source}: connection to {display_url(url)} failed ({kind}: {said})",
        source=ctx.source,
        hint="usually temporary; comfyfleet retries and resumes from the last byte received",
    )


# ---------------------------------------------------------------- requests


def _is_login_redirect(target: httpx.URL) -> bool:
    query = target.query.decode("ascii", "replace")
    return target.path.rstrip("/").endswith("/login") or "reason=download-auth" in query


def send(
    client: httpx.Client,
    method: str,
    url: str,
    headers: Mapping[str, str],
    ctx: ErrorContext,
    *,
    stream: bool = True,
) -> httpx.Response:
    """Send, following redirects by hand; returns the final response unchecked.

    ``Authorization`` is dropped once a hop leaves the first URL's origin. A redirect to a
    login page (CivitAI's answer to browsers and to old scripts) is a
    :class:`SourceAuthError`.
    """
    first = httpx.URL(url)
    current = first
    hop_headers = dict(headers)
    hop_headers.setdefault("Accept-Encoding", "identity")
    hop_headers.setdefault("User-Agent", USER_AGENT)
    for _ in range(MAX_REDIRECTS + 1):
        try:
            request = client.build_request(method, current, headers=hop_headers)
            # Even a caller's client with follow_redirects=True must not follow: we do.
            response = client.send(request, stream=stream, follow_redirects=False)
        except httpx.HTTPError as exc:
            raise transport_error(exc, ctx, str(current)) from exc
        if not (response.is_redirect and "Location" in response.headers):
            return response
        target = current.join(response.headers["Location"])
        response.close()
        if _is_login_redirect(target):
            raise SourceAuthError(
                f"{ctx.source}: the source redirected to its login page "
                f"({display_url(str(target))}): this download requires a signed-in account",
                source=ctx.source,
                hint=_auth_hint(ctx, ""),
            )
        if not same_origin(first, target):
            hop_headers = {k: v for k, v in hop_headers.items() if k.lower() != "authorization"}
        if response.status_code == 303:
            method = "GET"
        current = target
    raise SourceProtocolError(
        f"{ctx.source}: more than {MAX_REDIRECTS} redirects from {display_url(url)}",
        source=ctx.source,
        hint="the source is misconfigured or loops; report it",
    )


def request_checked(
    client: httpx.Client,
    method: str,
    url: str,
    headers: Mapping[str, str],
    ctx: ErrorContext,
) -> httpx.Response:
    """``send`` (body read) and raise the mapped error unless the answer is 2xx."""
    response = send(client, method, url, headers, ctx, stream=False)
    if not response.is_success:
        storage = not same_origin(httpx.URL(url), response.request.url)
        raise error_for_response(response, ctx, body=response.content, storage_host=storage)
    return response


def get_json(client: httpx.Client, url: str, headers: Mapping[str, str], ctx: ErrorContext) -> Any:
    response = request_checked(client, "GET", url, {"Accept": "application/json", **headers}, ctx)
    try:
        return response.json()
    except ValueError as exc:
        raise SourceProtocolError(
            f"{ctx.source}: {display_url(url)} did not answer JSON",
            source=ctx.source,
            hint="the API may have changed or a proxy answered; retry later",
        ) from exc


# ---------------------------------------------------------------- streaming


class ByteStream(Iterator[bytes]):
    """The bytes of a file from ``offset`` to its end; also a context manager.

    After opening, ``file_name`` is the server's ``Content-Disposition`` name sanitised
    (else the plan's), ``total_size`` the whole file's size when the server states it.
    """

    def __init__(
        self,
        chunks: Iterator[bytes],
        close: Callable[[], None],
        *,
        offset: int,
        file_name: str,
        total_size: int | None,
        url: str,
    ) -> None:
        self._chunks = chunks
        self._close = close
        self.offset = offset
        self.file_name = file_name
        self.total_size = total_size
        self.url = url
        self.closed = False

    def __iter__(self) -> ByteStream:
        return self

    def __next__(self) -> bytes:
        return next(self._chunks)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._close()

    def __enter__(self) -> ByteStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def empty_stream(offset: int, file_name: str, total: int | None, url: str) -> ByteStream:
    return ByteStream(
        iter(()), lambda: None, offset=offset, file_name=file_name, total_size=total, url=url
    )


def open_http_stream(
    plan: DownloadPlan,
    offset: int = 0,
    *,
    http: httpx.Client | None = None,
    chunk_size: int = 1 << 20,
) -> ByteStream:
    """Open ``plan.url`` and return its bytes from ``offset`` (see ``sources.open_stream``)."""
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    ctx = ErrorContext.for_plan(plan)
    client = http if http is not None else new_client()
    owned = http is None
    headers = dict(plan.headers)
    if offset > 0:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = send(client, "GET", plan.url, headers, ctx, stream=True)
        return _stream_response(response, client if owned else None, plan, offset, ctx, chunk_size)
    except BaseException:
        if owned:
            client.close()
        raise


def _stream_response(
    response: httpx.Response,
    owned_client: httpx.Client | None,
    plan: DownloadPlan,
    offset: int,
    ctx: ErrorContext,
    chunk_size: int,
) -> ByteStream:
    """The response's body from ``offset`` as a ``ByteStream``, after every check that can
    refuse it (status, login page, Content-Range, ETag, size); closes it when refusing."""
    final_url = str(response.request.url)

    def close() -> None:
        response.close()
        if owned_client is not None:
            owned_client.close()

    try:
        if response.status_code == 416:
            _, _, total = _content_range(response.headers.get("Content-Range"))
            if total is not None and total == offset:
                close()
                return empty_stream(offset, plan.file_name, total, final_url)
            raise SourceProtocolError(
                f"{plan.source}: offset {offset} is beyond the end of the file"
                + (f" ({total} bytes)" if total is not None else ""),
                source=plan.source,
                hint="the upstream file changed or the partial download is wrong; start over",
            )
        _refuse_unusable(response, plan, ctx)
        window = _body_window(response, plan, offset)
    except BaseException:
        close()
        raise
    name = (
        sanitize_file_name(parse_content_disposition(response.headers.get("Content-Disposition")))
        or plan.file_name
    )
    chunks = _body_chunks(response, plan, ctx, window, chunk_size, close)
    return ByteStream(
        chunks, close, offset=offset, file_name=name, total_size=window.total, url=final_url
    )


def _refuse_unusable(response: httpx.Response, plan: DownloadPlan, ctx: ErrorContext) -> None:
    """Raise for an error status, or for CivitAI's login page served instead of the file."""
    if not response.is_success:
        storage = not same_origin(httpx.URL(plan.url), response.request.url)
        raise error_for_response(response, ctx, storage_host=storage)
    ctype = response.headers.get("Content-Type", "")
    if plan.kind == "civitai" and ctype.startswith("text/html"):
        raise SourceAuthError(
            f"{plan.source}: CivitAI answered with an HTML page instead of the file "
            "(its login page): this download requires a signed-in account",
            source=plan.source,
            hint=_auth_hint(ctx, ""),
        )


@dataclass(frozen=True)
class _Window:
    """Which bytes of the body the caller gets: ``skip`` leading bytes dropped (a server
    that ignored Range), ``length`` the body's length when known, ``total`` the file's."""

    encoded: bool
    length: int | None
    total: int | None
    skip: int


def _body_window(response: httpx.Response, plan: DownloadPlan, offset: int) -> _Window:
    """Check the body against the request (Content-Range, ETag, size) and say what to skip."""
    encoded = response.headers.get("Content-Encoding", "identity").lower() not in ("identity", "")
    length_header = response.headers.get("Content-Length")
    length = int(length_header) if length_header and length_header.isdigit() else None
    skip = 0
    total: int | None
    if response.status_code == 206:
        start, end, total = _content_range(response.headers.get("Content-Range"))
        if start != offset:
            raise SourceProtocolError(
                f"{plan.source}: asked for bytes from {offset}, the server sent "
                f"{response.headers.get('Content-Range', 'no Content-Range')}",
                source=plan.source,
                hint="the server handles Range wrongly; retry from the start",
            )
        if length is None and end is not None:
            length = end - start + 1
    else:
        # 200: the server ignored Range (or none was sent); skip what the caller has.
        total = None if encoded else length
        skip = offset
        if total is not None and total < offset:
            raise SourceProtocolError(
                f"{plan.source}: the file is {total} bytes, shorter than offset {offset}",
                source=plan.source,
                hint="the upstream file changed; start over",
            )
    _check_same_file(response, plan, offset, total)
    return _Window(encoded=encoded, length=length, total=total, skip=skip)


def _check_same_file(
    response: httpx.Response, plan: DownloadPlan, offset: int, total: int | None
) -> None:
    """Refuse a body of another file than the one resolved (ETag on resume, total size)."""
    if plan.kind == "url" and offset > 0 and plan.revision:
        etag = response.headers.get("ETag")
        if etag and etag != plan.revision:
            raise SourceProtocolError(
                f"{plan.source}: the file changed upstream since it was resolved "
                f"(ETag {plan.revision} -> {etag})",
                source=plan.source,
                hint="resolve again and start over; partial bytes of the old file are useless",
            )
    if plan.size is not None and total is not None and total != plan.size:
        raise UpstreamChanged(
            plan.source,
            expected_size=plan.size,
            actual_size=total,
            hint="the upstream file is not the one resolved or pinned; nothing was read: "
            "resolve again, and re-pin the catalog entry if the change is wanted",
        )


def _body_chunks(
    response: httpx.Response,
    plan: DownloadPlan,
    ctx: ErrorContext,
    window: _Window,
    chunk_size: int,
    close: Callable[[], None],
) -> Iterator[bytes]:
    """The body's chunks after ``window.skip`` bytes; a short body raises SourceUnavailable."""
    final_url = str(response.request.url)
    raw_seen = 0
    to_skip = window.skip
    try:
        if window.encoded:
            source = response.iter_bytes(chunk_size)
        else:
            source = response.iter_raw(chunk_size)
        for chunk in source:
            raw_seen += len(chunk)
            if to_skip:
                if len(chunk) <= to_skip:
                    to_skip -= len(chunk)
                    continue
                chunk = chunk[to_skip:]
                to_skip = 0
            if chunk:
                yield chunk
        if not window.encoded and window.length is not None and raw_seen < window.length:
            raise SourceUnavailable(
                f"{plan.source}: connection closed after {raw_seen} of {window.length} bytes",
                source=plan.source,
                hint="usually temporary; retry from the last byte received",
            )
    except httpx.HTTPError as exc:
        raise transport_error(exc, ctx, final_url) from exc
    finally:
        close()
