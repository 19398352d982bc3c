"""``S3Store``: a bucket + prefix on any S3-compatible service, through boto3.

One boto3 client per store, shared by every thread (boto3 clients are thread-safe), with
bounded timeouts and botocore's "standard" retry mode (5xx, throttling and connection
errors are retried with backoff; ``AWS_MAX_ATTEMPTS`` applies unless ``max_attempts`` is
given). Credentials come from the arguments, else the standard AWS chain (environment,
``~/.aws``, ...); the endpoint from ``endpoint_url``, else ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL``, else AWS.

Every botocore error is translated in :meth:`S3Store._translate` and nowhere else. The
managed transfer used by ``set_metadata`` is pinned to the classic (non-CRT) client: the
CRT path ignores ``endpoint_url``.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import re
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import boto3
import botocore.exceptions as bexc
import botocore.loaders
import botocore.session
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from pydantic import SecretStr

from comfyfleet.errors import (
    BucketNotFound,
    ComfyfleetError,
    ObjectNotFound,
    PreconditionFailed,
    StoreAuthError,
    StoreConfigError,
    StoreError,
    StoreUnavailable,
    UploadNotFound,
)
from comfyfleet.store._common import check_chunking, clamp_range, normalize_metadata
from comfyfleet.store.base import MAX_PARTS, MultipartUpload, ObjectInfo, PartInfo, check_key
from comfyfleet.store.uris import redact_uri

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client
    from mypy_boto3_s3.type_defs import ObjectTypeDef

# Lenient on purpose: S3-compatible services accept more than AWS's bucket rules.
_BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")

_AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AllAccessDisabled",
        "AccountProblem",
        "InvalidSecurity",
        "MissingSecurityHeader",
        "Forbidden",
        "Unauthorized",
        "403",
        "401",
    }
)
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
        "503",
        "500",
        "429",
        "TooManyRequests",
    }
)
_REGION_CODES = frozenset({"PermanentRedirect", "AuthorizationHeaderMalformed", "301"})
_PRECONDITION_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "412"})

# set_metadata copies server-side; one CopyObject handles up to 5 GiB, beyond that the
# managed copy switches to UploadPartCopy.
_COPY_CONFIG = TransferConfig(
    multipart_threshold=5 * 1024**3,
    multipart_chunksize=512 * 1024**2,
    max_concurrency=8,
    preferred_transfer_client="classic",
)


@functools.cache
def _shared_loader() -> botocore.loaders.Loader:
    return botocore.loaders.create_loader()


def _botocore_session() -> botocore.session.Session:
    """A fresh session (it reads the environment now) sharing one model loader: loading the
    S3 service model takes ~0.3 s, and every store would otherwise load its own copy."""
    session = botocore.session.Session()
    session.register_component("data_loader", _shared_loader())
    return session


def _secret(value: str | SecretStr | None) -> str | None:
    if isinstance(value, SecretStr):
        return value.get_secret_value() or None
    return value or None


def _strip_etag(etag: str | None) -> str:
    return (etag or "").strip('"')


def _error_code(exc: bexc.ClientError) -> tuple[str, int, str]:
    error = exc.response.get("Error", {})
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    code = str(error.get("Code") or status)
    return code, status, str(error.get("Message") or "").strip()


class S3Store:
    """An ``ObjectStore`` on ``s3://bucket/prefix``.

    Args:
        bucket: the bucket name.
        prefix: a key prefix inside the bucket (no leading or trailing slash needed).
        endpoint_url: the S3 endpoint, e.g. ``http://127.0.0.1:8333``; default from the
            environment (``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``), else AWS.
        access_key_id, secret_access_key, session_token: explicit credentials; default the
            standard AWS chain. Secrets may be ``SecretStr``; they are handed to boto3 and not kept.
        region: default from the environment, else ``us-east-1``.
        addressing_style: ``path`` (most S3-compatible services) or ``virtual``.
        list_page_size: keys per ListObjectsV2 request (1..1000).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | SecretStr | None = None,
        session_token: str | SecretStr | None = None,
        region: str | None = None,
        addressing_style: Literal["path", "virtual", "auto"] = "path",
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        max_attempts: int | None = None,
        max_pool_connections: int = 32,
        list_page_size: int = 1000,
    ) -> None:
        if not _BUCKET_RE.match(bucket or ""):
            raise StoreConfigError(
                f"invalid bucket name {redact_uri(f's3://{bucket}')[5:]!r}",
                hint="write the store as s3://bucket/prefix with a valid bucket name",
            )
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            check_key(self.prefix)
        if not 1 <= list_page_size <= 1000:
            raise ValueError(f"list_page_size must be 1..1000, got {list_page_size}")
        self._page_size = list_page_size
        secret = _secret(secret_access_key)
        if bool(access_key_id) != bool(secret):
            raise StoreConfigError(
                f"store {self.uri}: access_key_id and secret_access_key must be given together",
                hint="set both, or neither to use the AWS environment (AWS_ACCESS_KEY_ID, ...)",
            )
        session = boto3.session.Session(
            botocore_session=_botocore_session(),
            aws_access_key_id=access_key_id or None,
            aws_secret_access_key=secret,
            aws_session_token=_secret(session_token),
            region_name=region or None,
        )
        retries: dict[str, Any] = {"mode": "standard"}
        if max_attempts is not None:
            retries["max_attempts"] = max_attempts
        config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries=retries,  # type: ignore[arg-type]
            max_pool_connections=max_pool_connections,
            signature_version="s3v4",
            s3={"addressing_style": addressing_style},
        )
        self._client: S3Client = session.client(
            "s3",
            endpoint_url=endpoint_url or None,
            region_name=session.region_name or "us-east-1",
            config=config,
        )
        # Shown in every message and repr: any user:password@ in it is redacted.
        self.endpoint_url: str = redact_uri(self._client.meta.endpoint_url)
        credentials = session.get_credentials()
        # Where the credentials came from goes into auth hints (the values never do).
        self._cred_source = (
            "the store's access_key_id/secret_access_key"
            if access_key_id
            else "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or ~/.aws/credentials)"
            if credentials is None or credentials.method in ("env", "shared-credentials-file")
            else f"the AWS credentials found via {credentials.method}"
        )

    # ------------------------------------------------------------------ identity

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    @property
    def client(self) -> S3Client:
        """The shared boto3 client (for tools that need raw S3 calls)."""
        return self._client

    @property
    def where(self) -> str:
        """``s3://bucket/prefix at <endpoint>``: how every message names this store."""
        return f"{self.uri} at {self.endpoint_url}"

    def __repr__(self) -> str:
        return (
            f"S3Store(bucket={self.bucket!r}, prefix={self.prefix!r}, "
            f"endpoint_url={self.endpoint_url!r})"
        )

    def __str__(self) -> str:
        return self.uri

    def _full(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _rel(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1 :] if self.prefix else full_key

    # ------------------------------------------------------------------ the one translation

    @contextlib.contextmanager
    def _translate(self, op: str, key: str | None = None) -> Iterator[None]:
        """Map every botocore error raised inside to comfyfleet's error tree."""
        try:
            yield
        except ComfyfleetError:
            raise
        except bexc.ClientError as exc:
            self._raise_client_error(op, key, exc)
        except bexc.SSLError as exc:
            raise StoreError(
                f"{self._what(op, key)}: TLS handshake with {self.endpoint_url} failed",
                store=self.uri,
                hint="check the endpoint URL's scheme (http vs https) and the server certificate",
            ) from exc
        except (bexc.NoCredentialsError, bexc.PartialCredentialsError) as exc:
            raise StoreAuthError(
                f"{self._what(op, key)}: no S3 credentials found",
                store=self.uri,
                hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or use --store-block NAME",
            ) from exc
        except (
            bexc.HTTPClientError,
            bexc.ConnectionError,
            bexc.IncompleteReadError,
            bexc.FlexibleChecksumError,
        ) as exc:
            raise StoreUnavailable(
                f"{self._what(op, key)}: cannot reach {self.endpoint_url} ({type(exc).__name__})",
                store=self.uri,
                hint="check that the server is running and the endpoint URL is right "
                "(AWS_ENDPOINT_URL, or the block's endpoint_url); retrying may help",
            ) from exc
        except bexc.BotoCoreError as exc:
            raise StoreError(
                f"{self._what(op, key)}: {redact_uri(str(exc))}", store=self.uri
            ) from exc

    def _what(self, op: str, key: str | None) -> str:
        return f"{op} {key!r} in {self.where}" if key is not None else f"{op} {self.where}"

    def _raise_client_error(self, op: str, key: str | None, exc: bexc.ClientError) -> NoReturn:
        code, status, server_msg = _error_code(exc)
        what = self._what(op, key)
        detail = f"{code}" + (f": {server_msg}" if server_msg and server_msg != code else "")
        if code == "NoSuchBucket" or (status == 404 and key is None and code != "NoSuchUpload"):
            raise BucketNotFound(
                f"{what}: bucket {self.bucket!r} does not exist",
                store=self.uri,
                hint=f"create it (`aws s3 mb s3://{self.bucket} --endpoint-url "
                f"{self.endpoint_url}`) or fix the bucket name",
            ) from exc
        if code == "NoSuchUpload":
            raise UploadNotFound(
                f"{what}: the multipart upload no longer exists (aborted or completed)",
                store=self.uri,
                hint="start a new upload",
            ) from exc
        if code in ("NoSuchKey", "NotFound", "404") or status == 404:
            raise ObjectNotFound(
                f"no object {key!r} in {self.where}",
                store=self.uri,
                hint="check the key; `comfyfleet store ls` lists what is there",
            ) from exc
        if code in _PRECONDITION_CODES or status == 412:
            raise PreconditionFailed(
                f"{what}: precondition failed ({code}): the object exists or changed",
                store=self.uri,
                hint="another writer got there first; read the object again",
            ) from exc
        if code in _AUTH_CODES or status in (401, 403):
            raise StoreAuthError(
                f"{what}: access refused ({detail})",
                store=self.uri,
                hint=f"check {self._cred_source} for {self.endpoint_url}, and that they may "
                f"access bucket {self.bucket!r}",
            ) from exc
        if code in _REGION_CODES:
            raise StoreConfigError(
                f"{what}: the bucket lives in another region ({detail})",
                hint="set the region (AWS_REGION or the block's region) to the bucket's region",
            ) from exc
        if code in ("InvalidBucketName",):
            raise StoreConfigError(
                f"{what}: invalid bucket name ({detail})",
                hint="fix the bucket name in the store URI or block",
            ) from exc
        if code in _TRANSIENT_CODES or status >= 500 or status == 429:
            raise StoreUnavailable(
                f"{what}: the server is failing or throttling ({detail})",
                store=self.uri,
                hint="retry later; if it persists check the S3 service's health",
            ) from exc
        if code in ("EntityTooSmall", "InvalidPart", "InvalidPartOrder"):
            raise StoreError(
                f"{what}: the parts were refused ({detail})",
                store=self.uri,
                hint="every part but the last must be >= 5 MiB, listed in order, with the "
                "etag list_parts() reports",
            ) from exc
        raise StoreError(f"{what}: {detail}", store=self.uri) from exc

    # ------------------------------------------------------------------ preflight

    def check(self) -> None:
        """Reachable, credentials accepted, bucket exists (one small ListObjectsV2)."""
        with self._translate("check"):
            self._client.list_objects_v2(
                Bucket=self.bucket, Prefix=f"{self.prefix}/" if self.prefix else "", MaxKeys=1
            )

    # ------------------------------------------------------------------ reads

    def head(self, key: str) -> ObjectInfo:
        full = self._full(key)
        with self._translate("head", key):
            resp = self._client.head_object(Bucket=self.bucket, Key=full)
        return ObjectInfo(
            key=key,
            size=int(resp["ContentLength"]),
            etag=_strip_etag(resp.get("ETag")),
            last_modified=resp.get("LastModified"),
            metadata={k.lower(): v for k, v in (resp.get("Metadata") or {}).items()},
        )

    def exists(self, key: str) -> ObjectInfo | None:
        try:
            return self.head(key)
        except ObjectNotFound:
            return None

    def get_range(self, key: str, start: int, end: int) -> bytes:
        start, end = clamp_range(start, end)
        if end == start:
            self.head(key)  # same answer as a real read for a missing key
            return b""
        full = self._full(key)
        with self._translate("read", key):
            try:
                resp = self._client.get_object(
                    Bucket=self.bucket, Key=full, Range=f"bytes={start}-{end - 1}"
                )
            except bexc.ClientError as exc:
                if _error_code(exc)[0] == "InvalidRange":
                    return b""  # start is at or past the end
                raise
            with contextlib.closing(resp["Body"]) as body:
                return body.read()

    def iter_bytes(
        self, key: str, start: int = 0, chunk_size: int = 8 * 1024 * 1024
    ) -> Iterator[bytes]:
        check_chunking(start, chunk_size)
        full = self._full(key)
        kwargs: dict[str, Any] = {"Range": f"bytes={start}-"} if start else {}
        with self._translate("read", key):
            try:
                resp = self._client.get_object(Bucket=self.bucket, Key=full, **kwargs)
            except bexc.ClientError as exc:
                if _error_code(exc)[0] == "InvalidRange":
                    return iter(())
                raise
        return self._stream(key, resp["Body"], chunk_size)

    def _stream(self, key: str, body: Any, chunk_size: int) -> Iterator[bytes]:
        with contextlib.closing(body), self._translate("read", key):
            yield from body.iter_chunks(chunk_size)

    def get_bytes(self, key: str) -> bytes:
        full = self._full(key)
        with self._translate("read", key):
            resp = self._client.get_object(Bucket=self.bucket, Key=full)
            with contextlib.closing(resp["Body"]) as body:
                data: bytes = body.read()
                return data

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects under ``prefix``, streamed page by page in the server's order: byte order
        on AWS; SeaweedFS walks directories instead (``a/b`` before ``a-c``)."""
        full_prefix = f"{self.prefix}/{prefix}" if self.prefix else prefix
        return self._list(full_prefix, prefix)

    def _list(self, full_prefix: str, prefix: str) -> Iterator[ObjectInfo]:
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket,
            Prefix=full_prefix,
            PaginationConfig={"PageSize": self._page_size},
        )
        with self._translate("list", prefix):
            for page in pages:
                for obj in page.get("Contents", []):
                    yield self._listed(obj)

    def _listed(self, obj: ObjectTypeDef) -> ObjectInfo:
        return ObjectInfo(
            key=self._rel(obj["Key"]),
            size=int(obj["Size"]),
            etag=_strip_etag(obj.get("ETag")),
            last_modified=obj.get("LastModified"),
        )

    # ------------------------------------------------------------------ writes

    def put_bytes(
        self,
        key: str,
        data: bytes,
        *,
        metadata: Mapping[str, str] | None = None,
        if_none_match: bool = False,
        content_type: str | None = None,
    ) -> ObjectInfo:
        full = self._full(key)
        meta = normalize_metadata(metadata)
        kwargs: dict[str, Any] = {"Metadata": meta}
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        if content_type:
            kwargs["ContentType"] = content_type
        with self._translate("write", key):
            resp = self._client.put_object(Bucket=self.bucket, Key=full, Body=data, **kwargs)
        return ObjectInfo(
            key=key, size=len(data), etag=_strip_etag(resp.get("ETag")), metadata=meta
        )

    def set_metadata(self, key: str, metadata: Mapping[str, str]) -> ObjectInfo:
        meta = normalize_metadata(metadata)
        full = self._full(key)
        with self._translate("set metadata of", key):
            current = self._client.head_object(Bucket=self.bucket, Key=full)
            extra: dict[str, Any] = {
                "Metadata": meta,
                "MetadataDirective": "REPLACE",
                # Refuse to stamp metadata (a sha256) on bytes that changed since the head.
                "CopySourceIfMatch": current["ETag"],
            }
            if current.get("ContentType"):
                extra["ContentType"] = current["ContentType"]
            self._client.copy(
                {"Bucket": self.bucket, "Key": full},
                self.bucket,
                full,
                ExtraArgs=extra,
                Config=_COPY_CONFIG,
            )
        return self.head(key)

    def delete(self, key: str) -> None:
        full = self._full(key)
        with self._translate("delete", key):
            self._client.delete_object(Bucket=self.bucket, Key=full)

    def presign_get(self, key: str, expires_s: int = 3600) -> str | None:
        full = self._full(key)
        with self._translate("presign", key):
            url: str = self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": full}, ExpiresIn=expires_s
            )
        return url

    # ------------------------------------------------------------------ multipart

    def create_multipart(
        self, key: str, *, metadata: Mapping[str, str] | None = None
    ) -> S3MultipartUpload:
        full = self._full(key)
        meta = normalize_metadata(metadata)
        with self._translate("start upload of", key):
            resp = self._client.create_multipart_upload(Bucket=self.bucket, Key=full, Metadata=meta)
        return S3MultipartUpload(self, key, resp["UploadId"])

    def find_multipart(self, key: str) -> builtins.list[MultipartUpload]:
        full = self._full(key)
        found = []
        paginator = self._client.get_paginator("list_multipart_uploads")
        with self._translate("list uploads of", key):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                for upload in page.get("Uploads", []):
                    if upload.get("Key") == full:
                        found.append((upload.get("Initiated"), upload["UploadId"]))
        found.sort(key=lambda item: (item[0] is not None, item[0]), reverse=True)
        return [S3MultipartUpload(self, key, upload_id) for _, upload_id in found]


class S3MultipartUpload:
    """One S3 multipart upload; the final object's metadata was set at ``create``."""

    def __init__(self, store: S3Store, key: str, upload_id: str) -> None:
        self._store = store
        self._key = key
        self._full = store._full(key)
        self._upload_id = upload_id
        self._sent: dict[int, PartInfo] = {}
        self._lock = threading.Lock()

    @property
    def key(self) -> str:
        return self._key

    @property
    def upload_id(self) -> str:
        return self._upload_id

    def __repr__(self) -> str:
        return f"S3MultipartUpload(key={self._key!r}, upload_id={self._upload_id!r})"

    def put_part(self, number: int, data: bytes) -> PartInfo:
        if not 1 <= number <= MAX_PARTS:
            raise ValueError(f"part number {number} is outside 1..{MAX_PARTS}")
        store = self._store
        with store._translate(f"upload part {number} of", self._key):
            resp = store._client.upload_part(
                Bucket=store.bucket,
                Key=self._full,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=data,
            )
        info = PartInfo(number=number, etag=_strip_etag(resp.get("ETag")), size=len(data))
        with self._lock:
            self._sent[number] = info
        return info

    def list_parts(self) -> list[PartInfo]:
        store = self._store
        # SeaweedFS lists every upload of a re-sent part number, in no set order and with
        # one-second timestamps; S3 keeps only the last. Keep one per number: the one this
        # object sent last, else the newest (a retry that re-sends a part sends the same bytes).
        latest: dict[int, tuple[Any, PartInfo]] = {}
        paginator = store._client.get_paginator("list_parts")
        with store._translate("list parts of", self._key):
            for page in paginator.paginate(
                Bucket=store.bucket, Key=self._full, UploadId=self._upload_id
            ):
                for part in page.get("Parts", []):
                    info = PartInfo(
                        number=int(part["PartNumber"]),
                        etag=_strip_etag(part.get("ETag")),
                        size=int(part["Size"]),
                    )
                    modified = part.get("LastModified")
                    seen = latest.get(info.number)
                    if seen is not None and self._sent.get(info.number) == seen[1]:
                        continue
                    if (
                        seen is None
                        or self._sent.get(info.number) == info
                        or (modified is not None and seen[0] is not None and modified > seen[0])
                    ):
                        latest[info.number] = (modified, info)
        return [latest[n][1] for n in sorted(latest)]

    def complete(self, parts: list[PartInfo]) -> ObjectInfo:
        store = self._store
        with store._translate("complete upload of", self._key):
            store._client.complete_multipart_upload(
                Bucket=store.bucket,
                Key=self._full,
                UploadId=self._upload_id,
                MultipartUpload={
                    "Parts": [{"PartNumber": p.number, "ETag": f'"{p.etag}"'} for p in parts]
                },
            )
        return store.head(self._key)

    def abort(self) -> None:
        # Idempotent, like cleanup code wants: aborting a finished upload is not an error.
        with (
            contextlib.suppress(UploadNotFound),
            self._store._translate("abort upload of", self._key),
        ):
            self._store._client.abort_multipart_upload(
                Bucket=self._store.bucket, Key=self._full, UploadId=self._upload_id
            )
