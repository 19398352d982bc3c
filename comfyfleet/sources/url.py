"""Plain ``https://`` URLs: size from ``Content-Length``, ``ETag`` as the revision.

``resolve`` asks with ``HEAD``; a server that refuses it (405/501, or 403 as a presigned
GET URL does) is asked with ``GET`` + ``Range: bytes=0-0`` and the size read from
``Content-Range``. No sha256 comes from a plain URL: the catalog's pin, if any, is used.
The plan keeps the original URL (a redirect target may be a signed URL that expires).
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import httpx

from comfyfleet.catalog import ModelFile, URLSource
from comfyfleet.sources.base import DownloadPlan, display_url, sanitize_file_name
from comfyfleet.sources.http import (
    ErrorContext,
    client_or_new,
    error_for_response,
    parse_content_disposition,
    same_origin,
    send,
)


def _size(response: httpx.Response) -> int | None:
    if response.headers.get("Content-Encoding", "identity").lower() not in ("identity", ""):
        return None
    if response.status_code == 206:
        total = response.headers.get("Content-Range", "").rpartition("/")[2].strip()
        return int(total) if total.isdigit() else None
    length = response.headers.get("Content-Length", "")
    return int(length) if length.isdigit() else None


def resolve_url(
    model: ModelFile, source: URLSource, *, http: httpx.Client | None = None
) -> DownloadPlan:
    label = display_url(source.url)
    ctx = ErrorContext(label, "url")
    with client_or_new(http) as client:
        response = send(client, "HEAD", source.url, {}, ctx, stream=False)
        if response.status_code in (403, 405, 501) or (
            response.is_success and _size(response) is None
        ):
            response = send(client, "GET", source.url, {"Range": "bytes=0-0"}, ctx, stream=True)
            response.close()
        if not response.is_success:
            storage = not same_origin(httpx.URL(source.url), response.request.url)
            raise error_for_response(response, ctx, body=b"", storage_host=storage)
    name = sanitize_file_name(
        parse_content_disposition(response.headers.get("Content-Disposition"))
    )
    if name is None:
        final_path = urlsplit(str(response.request.url)).path
        name = sanitize_file_name(unquote(final_path.rsplit("/", 1)[-1]))
    size = _size(response)
    return DownloadPlan(
        url=source.url,
        file_name=name or model.file.rsplit("/", 1)[-1],
        size=size if size is not None else model.size,
        sha256=model.sha256,
        revision=response.headers.get("ETag"),
        source=label,
        headers={},
    )
