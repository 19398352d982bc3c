"""``s3://bucket/key`` objects through boto3 (any S3-compatible service).

Credentials come from the standard AWS chain (``AWS_ACCESS_KEY_ID`` ..., ``~/.aws``); the
endpoint from ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (else AWS). ``resolve`` reads
``head_object``: size, ETag (the revision) and the sha256 recorded as user metadata
(``x-amz-meta-sha256``, what comfyfleet's own stores write), if any. ``open_stream`` is a
ranged ``get_object``. botocore errors become comfyfleet errors here and nowhere else.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NoReturn

import boto3
import botocore.exceptions as bexc
from botocore.config import Config

from comfyfleet.catalog import ModelFile, S3Source
from comfyfleet.config import env
from comfyfleet.errors import (
    ConfigError,
    RateLimited,
    SourceAuthError,
    SourceNotFound,
    SourceProtocolError,
    SourceUnavailable,
)
from comfyfleet.files import is_sha256
from comfyfleet.sources.base import DownloadPlan, sanitize_file_name
from comfyfleet.sources.http import ByteStream, empty_stream
from comfyfleet.store.base import SHA256_METADATA_KEY
from comfyfleet.store.uris import redact_uri

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

_TRANSPORT_ERRORS = (
    bexc.EndpointConnectionError,
    bexc.ConnectionClosedError,
    bexc.ReadTimeoutError,
    bexc.ConnectTimeoutError,
    bexc.IncompleteReadError,
    bexc.ResponseStreamingError,
    bexc.HTTPClientError,
)


def parse_s3_url(url: str) -> tuple[str, str]:
    match = re.fullmatch(r"s3://([^/]+)/(.+)", url.strip())
    if not match:
        raise ConfigError(
            f"{url}: expected s3://<bucket>/<key>",
            hint="write the source as s3://bucket/path/to/file",
        )
    return match.group(1), match.group(2)


def _endpoint() -> str | None:
    return env("AWS_ENDPOINT_URL_S3") or env("AWS_ENDPOINT_URL")


def s3_client() -> S3Client:
    config = Config(
        connect_timeout=10,
        read_timeout=60,
        retries={"mode": "standard", "max_attempts": 3},
        signature_version="s3v4",
        s3={"addressing_style": "path"},
    )
    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=_endpoint(),
        region_name=session.region_name or "us-east-1",
        config=config,
    )


def _raise(exc: BaseException, label: str) -> NoReturn:
    where = redact_uri(_endpoint() or "AWS S3")
    if isinstance(exc, bexc.NoCredentialsError | bexc.PartialCredentialsError):
        raise SourceAuthError(
            f"{label}: no AWS credentials found",
            source=label,
            hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or an AWS profile)",
        ) from exc
    if isinstance(exc, _TRANSPORT_ERRORS):
        raise SourceUnavailable(
            f"{label}: cannot read from {where} ({type(exc).__name__})",
            source=label,
            hint="usually temporary; check AWS_ENDPOINT_URL and the network",
        ) from exc
    if isinstance(exc, bexc.ClientError):
        error = exc.response.get("Error", {})
        meta = exc.response.get("ResponseMetadata", {})
        status = int(meta.get("HTTPStatusCode", 0) or 0)
        code = str(error.get("Code") or status)
        detail = f"{code}, HTTP {status}"
        if code in ("NoSuchKey", "NoSuchBucket", "NotFound", "404") or status == 404:
            raise SourceNotFound(
                f"{label}: no such object at {where} ({detail})",
                source=label,
                hint="check the bucket and key",
            ) from exc
        if code in ("SlowDown", "TooManyRequests", "RequestLimitExceeded") or status == 429:
            headers = meta.get("HTTPHeaders", {})
            retry = headers.get("retry-after")
            raise RateLimited(
                f"{label}: throttled by {where} ({detail})",
                source=label,
                retry_after=float(retry) if retry and retry.isdigit() else None,
                hint="wait and retry",
            ) from exc
        if status >= 500:
            raise SourceUnavailable(
                f"{label}: {where} failed ({detail})",
                source=label,
                hint="usually temporary; retrying may help",
            ) from exc
        if status in (401, 403) or code in (
            "AccessDenied",
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "ExpiredToken",
        ):
            raise SourceAuthError(
                f"{label}: access denied by {where} ({detail})",
                source=label,
                hint="check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and the bucket policy",
            ) from exc
        raise SourceProtocolError(
            f"{label}: {where} refused the request ({detail})",
            source=label,
            hint="check the s3:// URL",
        ) from exc
    raise exc


def resolve_s3(model: ModelFile, source: S3Source) -> DownloadPlan:
    bucket, key = parse_s3_url(source.url)
    label = redact_uri(f"s3://{bucket}/{key}")
    client = s3_client()
    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except (bexc.BotoCoreError, bexc.ClientError) as exc:
        _raise(exc, label)
    metadata = {k.lower(): v for k, v in (head.get("Metadata") or {}).items()}
    sha = (metadata.get(SHA256_METADATA_KEY) or "").lower()
    return DownloadPlan(
        url=label,
        file_name=sanitize_file_name(key.rsplit("/", 1)[-1]) or model.file.rsplit("/", 1)[-1],
        size=int(head["ContentLength"]),
        sha256=sha if is_sha256(sha) else model.sha256,
        revision=head.get("ETag"),
        source=label,
        headers={},
    )


def open_s3_stream(plan: DownloadPlan, offset: int = 0, *, chunk_size: int = 1 << 20) -> ByteStream:
    """``get_object`` from ``offset`` (see ``sources.open_stream``)."""
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    bucket, key = parse_s3_url(plan.url)
    label = plan.source
    if plan.size is not None and offset == plan.size:
        return empty_stream(offset, plan.file_name, plan.size, plan.url)
    client = s3_client()
    kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
    if offset:
        kwargs["Range"] = f"bytes={offset}-"
    if plan.revision:
        kwargs["IfMatch"] = plan.revision
    try:
        response = client.get_object(**kwargs)
    except bexc.ClientError as exc:
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if status == 412:
            raise SourceProtocolError(
                f"{label}: the object changed since it was resolved (ETag is no longer "
                f"{plan.revision})",
                source=label,
                hint="resolve again and start over; partial bytes of the old object are useless",
            ) from exc
        _raise(exc, label)
    except bexc.BotoCoreError as exc:
        _raise(exc, label)
    body = response["Body"]
    total = plan.size
    content_range = response.get("ContentRange") or ""
    if content_range.rpartition("/")[2].isdigit():
        total = int(content_range.rpartition("/")[2])
    elif not offset:
        total = int(response.get("ContentLength", 0))

    def chunks() -> Iterator[bytes]:
        try:
            yield from body.iter_chunks(chunk_size)
        except (bexc.BotoCoreError, bexc.ClientError) as exc:
            _raise(exc, label)
        except OSError as exc:
            raise SourceUnavailable(
                f"{label}: read failed ({type(exc).__name__})",
                source=label,
                hint="retry from the last byte",
            ) from exc
        finally:
            body.close()

    def close() -> None:
        with contextlib.suppress(Exception):
            body.close()

    return ByteStream(
        chunks(), close, offset=offset, file_name=plan.file_name, total_size=total, url=plan.url
    )
