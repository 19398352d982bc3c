"""A CivitAI test server: v1 JSON API, download endpoint, and a separate storage host.

Two servers on 127.0.0.1, free ports: the site/API (``base_url``, use as
``CIVITAI_BASE_URL``) and the storage host the downloads redirect to (``storage_url``,
another origin)::

    with FakeCivitai() as civ:
        civ.add_model(100, "My LoRA", type="LORA")
        civ.add_version(100, 200, "v1.0")
        f = civ.add_file(200, "my_lora.safetensors", data)          # primary (first file)
        civ.add_token("civ-key")
        monkeypatch.setenv("CIVITAI_BASE_URL", civ.base_url)

Wire behaviour reproduced (sources-api.md B1-B5):

* ``GET /api/v1/model-versions/{id}`` and ``.../by-hash/{hash}`` (any hash type,
  upper-cased): B3 shape; ``files[]`` = ``{id, sizeKB, name, type, pickleScanResult, ...,
  metadata{format,size,fp}, hashes{SHA256 (UPPERCASE hex), AutoV2 (its first 10), CRC32},
  primary (true|false), downloadUrl}``; 404 ``{"error":"Model not found"}``; a version
  without a primary file -> 404 ``{"error":"Missing model file"}``.
* ``GET /api/v1/models/{id}``: B2 shape, ``modelVersions`` newest first, ``primary`` only on
  the primary file, empty fields removed; bad id -> 400; missing -> 404
  ``{"error":"No model with id {id}"}``. Non-GET on v1 -> 405.
* ``GET|HEAD /api/download/models/{versionId}[?type=&format=&size=&fp=&quantType=&fileId=]``:
  invalid parameter -> 400; file chosen by ``fileId``, else primary among ``type``; a given
  parameter that disagrees with the chosen file -> 404 ``{"error":"File not found"}``; then
  ``307`` + ``Location: <storage presigned URL>`` (``response-content-disposition=attachment;
  filename="<name>"``, ``X-Amz-Expires``, ``X-Amz-Signature``) and ``Cache-Control:
  no-store, max-age=0``. Login required (``require_auth=True`` on the version, or
  ``civ.unauthenticated_download = False``) and no valid token -> 401 ``{"error":
  "Unauthorized","message":"The creator of this asset requires you to be logged in to
  download it"}`` for scripts, ``307`` to ``/login?returnUrl=/model-versions/{id}&reason=
  download-auth`` for a browser User-Agent (or for everyone with
  ``civ.legacy_login_redirect = True``, the pre-2024 behaviour). Downloads disabled ->
  401 "...has disabled downloads on this file"; early access -> 403 ``Early Access``;
  archived model -> 410. An unknown token is treated as anonymous (B1). Tokens are read
  from ``Authorization: Bearer`` or, without that header, ``?token=``.
* ``civ.region_blocked = True`` -> every ``/api/*`` answers 451 ``{"error": "Access to this
  service is not available in your region due to legal restrictions.", "code":
  "REGION_BLOCKED"}``.
* Storage host ``GET|HEAD /<key>?<presigned>``: **400** (``InvalidArgument``) when the
  request carries ``Authorization``; 403 ``AccessDenied`` for a bad or expired signature;
  else the bytes, ``Content-Disposition`` from the signed ``response-content-disposition``,
  ``Range`` -> 206 + ``Content-Range``.

Knobs: ``add_file(..., content_disposition='attachment; filename="../../x"')`` makes the
storage host send a hostile header; ``civ.faults`` (see :mod:`tests.doubles.faults`;
``where="resolve"`` = the download endpoint, ``"bytes"`` = the storage host, ``"api"`` =
v1); ``civ.downloads`` counts successful download-endpoint hits per version;
``civ.requests`` records every request (``server`` is ``"api"`` or ``"storage"``).
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote, urlencode

from tests.doubles.faults import (
    Faults,
    Recorded,
    Request,
    Server,
    fault_status,
    refuse_storage_request,
    send_s3_error,
    serve_bytes,
)

FILE_TYPES = (
    "Model",
    "Text Encoder",
    "Vision Encoder",
    "Pruned Model",
    "Negative",
    "Training Data",
    "VAE",
    "Config",
    "Archive",
    "UNet",
    "Diffusion Model",
    "CLIPVision",
    "ControlNet",
    "Workflow",
    "Upscaler",
    "Enhancement LoRA",
    "Other",
)
FORMATS = ("SafeTensor", "PickleTensor", "GGUF", "Diffusers", "Core ML", "ONNX", "Other")
SIZES = ("full", "pruned")
_BROWSER_MARKERS = ("mozilla", "chrome", "safari", "firefox", "opera", "edge")
_SECRET = b"fake-civitai-storage-key"
REGION_BLOCKED_BODY = {
    "error": "Access to this service is not available in your region due to legal restrictions.",
    "code": "REGION_BLOCKED",
}
RATE_LIMITED = (
    "We've noticed an unusual amount of downloading from your account. Contact "
    "support@civitai.com or come back later."
)
LOGIN_REQUIRED = "The creator of this asset requires you to be logged in to download it"
DOWNLOADS_DISABLED = "The creator of this asset has disabled downloads on this file"


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class CivFile:
    id: int
    name: str
    data: bytes
    type: str = "Model"
    primary: bool = False
    metadata: dict[str, str] = field(
        default_factory=lambda: {"format": "SafeTensor", "size": "pruned", "fp": "fp16"}
    )
    content_disposition: str | None = None
    scan_pending: bool = False

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def hashes(self) -> dict[str, str]:
        if self.scan_pending:
            return {}
        sha = self.sha256.upper()
        return {
            "AutoV2": sha[:10],
            "SHA256": sha,
            "CRC32": f"{zlib.crc32(self.data) & 0xFFFFFFFF:08X}",
        }


@dataclass
class CivVersion:
    id: int
    model_id: int
    name: str
    base_model: str = "SDXL 1.0"
    files: list[CivFile] = field(default_factory=list)
    require_auth: bool = False
    downloads_disabled: bool = False
    early_access: bool = False
    status: str = "Published"
    trained_words: list[str] = field(default_factory=list)
    created: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass
class CivModel:
    id: int
    name: str
    type: str = "LORA"
    nsfw: bool = False
    mode: str | None = None  # None | "Archived" | "TakenDown"
    versions: list[CivVersion] = field(default_factory=list)  # newest first


class FakeCivitai:
    """CivitAI's API and its storage host (see the module docstring). A context manager."""

    def __init__(self) -> None:
        self.models: dict[int, CivModel] = {}
        self.versions: dict[int, CivVersion] = {}
        self.tokens: set[str] = set()
        self.unauthenticated_download = True
        self.legacy_login_redirect = False
        self.region_blocked = False
        self.signed_url_ttl = 86400
        self.faults = Faults()
        self.downloads: Counter[int] = Counter()
        self.requests: list[Recorded] = []
        self._next_file_id = 1000
        self._lock = threading.Lock()
        self._api = Server("api", self._route_api, self.requests, self._lock)
        self._storage = Server("storage", self._route_storage, self.requests, self._lock)

    @property
    def base_url(self) -> str:
        return self._api.url

    @property
    def storage_url(self) -> str:
        return self._storage.url

    def __enter__(self) -> FakeCivitai:
        self._api.start()
        self._storage.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._api.stop()
        self._storage.stop()

    # ------------------------------------------------------------ content

    def add_model(
        self,
        model_id: int,
        name: str,
        *,
        type: str = "LORA",  # noqa: A002
        nsfw: bool = False,
        mode: str | None = None,
    ) -> CivModel:
        model = CivModel(model_id, name, type=type, nsfw=nsfw, mode=mode)
        self.models[model_id] = model
        return model

    def add_version(self, model_id: int, version_id: int, name: str, **fields: Any) -> CivVersion:
        """A new version, newest of its model (``fields``: CivVersion's, e.g. require_auth)."""
        version = CivVersion(version_id, model_id, name, **fields)
        self.models[model_id].versions.insert(0, version)
        self.versions[version_id] = version
        return version

    def add_file(
        self,
        version_id: int,
        name: str,
        data: bytes,
        *,
        file_id: int | None = None,
        type: str = "Model",  # noqa: A002
        primary: bool | None = None,
        metadata: dict[str, str] | None = None,
        content_disposition: str | None = None,
        scan_pending: bool = False,
    ) -> CivFile:
        """A file of ``version_id``; the version's first file is primary unless told."""
        version = self.versions[version_id]
        if file_id is None:
            self._next_file_id += 1
            file_id = self._next_file_id
        f = CivFile(
            file_id,
            name,
            data,
            type=type,
            primary=not version.files if primary is None else primary,
            content_disposition=content_disposition,
            scan_pending=scan_pending,
        )
        if metadata is not None:
            f.metadata = dict(metadata)
        version.files.append(f)
        return f

    def add_token(self, token: str) -> None:
        self.tokens.add(token)

    # ------------------------------------------------------------ JSON shapes

    def _file_json(
        self, f: CivFile, version: CivVersion, base: str, *, full: bool
    ) -> dict[str, Any]:
        url = f"{base}/api/download/models/{version.id}"
        if not f.primary:
            url += "?" + urlencode({"type": f.type, "format": f.metadata.get("format", "")})
        out: dict[str, Any] = {
            "id": f.id,
            "sizeKB": round(len(f.data) / 1024, 2),
            "name": f.name,
            "type": f.type,
            "pickleScanResult": "Pending" if f.scan_pending else "Success",
            "pickleScanMessage": None if f.scan_pending else "No Pickle imports",
            "virusScanResult": "Pending" if f.scan_pending else "Success",
            "virusScanMessage": None,
            "scannedAt": None if f.scan_pending else _iso(version.created),
            "metadata": {k: v for k, v in f.metadata.items() if k in ("format", "size", "fp")}
            if full
            else dict(f.metadata),
            "hashes": f.hashes,
            "downloadUrl": url,
        }
        if full:
            out["primary"] = f.primary
        elif f.primary:
            out["primary"] = True
        if not full:
            out = {k: v for k, v in out.items() if v not in (None, {}, [])}
        return out

    def _version_json(self, version: CivVersion, base: str) -> dict[str, Any]:
        model = self.models[version.model_id]
        eco = version.base_model.split()[0].lower()
        return {
            "id": version.id,
            "modelId": model.id,
            "name": version.name,
            "createdAt": _iso(version.created),
            "updatedAt": _iso(version.created),
            "status": version.status,
            "availability": "EarlyAccess" if version.early_access else "Public",
            "publishedAt": _iso(version.created),
            "trainedWords": version.trained_words,
            "trainingStatus": None,
            "trainingDetails": None,
            "baseModel": version.base_model,
            "baseModelType": "Standard",
            "earlyAccessEndsAt": None,
            "earlyAccessConfig": None,
            "description": None,
            "uploadType": "Created",
            "usageControl": "Download",
            "air": f"urn:air:{eco}:{model.type.lower()}:civitai:{model.id}@{version.id}",
            "nsfwLevel": 1,
            "stats": {"downloadCount": self.downloads[version.id], "thumbsUpCount": 0},
            "model": {
                "name": model.name,
                "type": model.type,
                "nsfw": model.nsfw,
                "poi": False,
                "mode": model.mode,
            },
            "files": []
            if model.mode == "Archived"
            else [self._file_json(f, version, base, full=True) for f in version.files],
            "images": [],
            "downloadUrl": f"{base}/api/download/models/{version.id}",
        }

    def _model_json(self, model: CivModel, base: str) -> dict[str, Any]:
        versions = []
        for index, v in enumerate(x for x in model.versions if x.status == "Published"):
            entry: dict[str, Any] = {
                "id": v.id,
                "index": index,
                "name": v.name,
                "baseModel": v.base_model,
                "baseModelType": "Standard",
                "createdAt": _iso(v.created),
                "publishedAt": _iso(v.created),
                "status": v.status,
                "availability": "Public",
                "nsfwLevel": 1,
                "trainedWords": v.trained_words,
                "stats": {"downloadCount": self.downloads[v.id], "thumbsUpCount": 0},
                "files": []
                if model.mode == "Archived"
                else [self._file_json(f, v, base, full=False) for f in v.files],
                "images": [],
            }
            if model.mode != "Archived":
                entry["downloadUrl"] = f"{base}/api/download/models/{v.id}"
            # B2: empty fields are removed, files and images always listed.
            versions.append(
                {
                    k: val
                    for k, val in entry.items()
                    if k in ("files", "images") or val not in (None, [], {})
                }
            )
        out: dict[str, Any] = {
            "id": model.id,
            "name": model.name,
            "description": None,
            "allowNoCredit": True,
            "allowCommercialUse": ["Image"],
            "allowDerivatives": True,
            "allowDifferentLicense": True,
            "type": model.type,
            "minor": False,
            "poi": False,
            "nsfw": model.nsfw,
            "nsfwLevel": 1,
            "mode": model.mode,
            "creator": {"username": "tester", "image": None},
            "tags": [],
            "stats": {"downloadCount": sum(self.downloads[v.id] for v in model.versions)},
            "modelVersions": versions,
        }
        return {k: v for k, v in out.items() if v is not None}

    # ------------------------------------------------------------ routes

    def _user(self, req: Request) -> str | None:
        token = req.bearer if "authorization" in req.headers else req.param("token")
        return token if token in self.tokens else None

    def _route_api(self, req: Request) -> None:
        path = req.path.rstrip("/")
        base = f"http://{req.headers.get('host', '127.0.0.1')}"
        if path.startswith("/api/") and self.region_blocked:
            req.send_json(451, REGION_BLOCKED_BODY)
            return
        if path.startswith("/api/download/models/"):
            self._download(req, path.rsplit("/", 1)[-1], base)
            return
        if path.startswith("/api/v1/"):
            if fault_status(req, self.faults, "api"):
                return
            if req.method != "GET":
                req.send_json(405, {"error": "Method not allowed"})
                return
            self._v1(req, path[len("/api/v1/") :], base)
            return
        if path == "/login":
            req.send(
                200,
                b"<!DOCTYPE html><html><body>Sign in to Civitai</body></html>",
                content_type="text/html; charset=utf-8",
            )
            return
        if path.startswith("/model-versions/"):
            vid = path.rsplit("/", 1)[-1]
            version = self.versions.get(int(vid)) if vid.isdigit() else None
            if version is not None:
                req.send(
                    308,
                    b"",
                    {"Location": f"/models/{version.model_id}?modelVersionId={version.id}"},
                )
                return
        req.send(
            404,
            b"<!DOCTYPE html><html><body>Page not found</body></html>",
            content_type="text/html; charset=utf-8",
        )

    def _cache_headers(self, req: Request) -> dict[str, str]:
        if self._user(req):
            return {}
        return {"Cache-Control": "public, s-maxage=300, stale-while-revalidate=150"}

    def _v1(self, req: Request, rest: str, base: str) -> None:
        parts = rest.split("/")
        if parts[0] == "models" and len(parts) == 2:
            raw = parts[1]
            if not raw.isdigit() or not 0 < int(raw) <= 2147483647:
                req.send_json(400, {"error": f'Invalid id "{raw}": expected a positive integer'})
                return
            model = self.models.get(int(raw))
            if model is None:
                req.send_json(404, {"error": f"No model with id {raw}"})
                return
            req.send_json(200, self._model_json(model, base), self._cache_headers(req))
            return
        if parts[0] == "model-versions" and len(parts) == 3 and parts[1] == "by-hash":
            wanted = unquote(parts[2]).upper()
            hits = sorted(
                (
                    v
                    for v in self.versions.values()
                    if v.status == "Published" and any(wanted in f.hashes.values() for f in v.files)
                ),
                key=lambda v: (v.created, v.id),
            )
            if not hits:
                req.send_json(404, {"error": "Model not found"})
                return
            req.send_json(
                200, self._version_json(hits[0], base), {"Cache-Control": "public, s-maxage=3600"}
            )
            return
        if parts[0] == "model-versions" and len(parts) == 2:
            raw = parts[1]
            version = self.versions.get(int(raw)) if raw.isdigit() else None
            if version is None or version.status != "Published":
                req.send_json(404, {"error": "Model not found"})
                return
            if not any(f.primary for f in version.files):
                req.send_json(404, {"error": "Missing model file"})
                return
            req.send_json(200, self._version_json(version, base), self._cache_headers(req))
            return
        req.send_json(404, {"error": "Not found"})

    def _download(self, req: Request, raw_id: str, base: str) -> None:
        if fault_status(req, self.faults, "resolve", too_many=RATE_LIMITED):
            return
        query = {k: v[0] for k, v in req.query.items() if v}
        problems = []
        if "type" in query and query["type"] not in FILE_TYPES:
            problems.append(
                f"Invalid enum value. Expected {' | '.join(FILE_TYPES)}, received '{query['type']}'"
            )
        if "format" in query and query["format"] not in FORMATS:
            problems.append(
                f"Invalid enum value. Expected {' | '.join(FORMATS)}, received '{query['format']}'"
            )
        if "size" in query and query["size"] not in SIZES:
            problems.append(
                f"Invalid enum value. Expected 'full' | 'pruned', received '{query['size']}'"
            )
        if "fileId" in query and not query["fileId"].isdigit():
            problems.append("Expected number, received nan")
        for key in ("fp", "quantType"):
            if len(query.get(key, "")) > 64:
                problems.append(f"{key}: String must contain at most 64 character(s)")
        if not raw_id.isdigit():
            problems.append("Missing modelVersionId")
        if problems:
            req.send_json(400, {"error": "; ".join(problems)})
            return
        version = self.versions.get(int(raw_id))
        if version is None or version.status != "Published":
            req.send_json(404, {"error": "File not found"})
            return
        model = self.models[version.model_id]
        if model.mode == "Archived":
            req.send_json(410, {"error": "Model archived, not available for download"})
            return
        user = self._user(req)
        browser = any(m in req.headers.get("user-agent", "").lower() for m in _BROWSER_MARKERS)
        if (version.require_auth or not self.unauthenticated_download) and user is None:
            if browser or self.legacy_login_redirect:
                location = f"/login?returnUrl=/model-versions/{version.id}&reason=download-auth"
                req.send(307, b"", {"Location": location})
            else:
                req.send_json(401, {"error": "Unauthorized", "message": LOGIN_REQUIRED})
            return
        if version.downloads_disabled:
            req.send_json(401, {"error": "Unauthorized", "message": DOWNLOADS_DISABLED})
            return
        if version.early_access and user is None:
            req.send_json(
                403,
                {
                    "error": "Early Access",
                    "deadline": _iso(version.created),
                    "message": "This asset is in Early Access. You can use Buzz access it now!",
                },
            )
            return
        chosen = self._select(version, query)
        if chosen is None:
            req.send_json(404, {"error": "File not found"})
            return
        self.downloads[version.id] += 1
        req.send(
            307,
            b"",
            {"Location": self._signed_url(version, chosen), "Cache-Control": "no-store, max-age=0"},
        )

    def _select(self, version: CivVersion, query: dict[str, str]) -> CivFile | None:
        if "fileId" in query:
            return next((f for f in version.files if f.id == int(query["fileId"])), None)
        candidates = [f for f in version.files if f.type == query.get("type", f.type)]
        if not candidates:
            return None
        chosen = next((f for f in candidates if f.primary), candidates[0])
        for key in ("format", "size", "fp", "quantType"):
            if key in query and chosen.metadata.get(key) != query[key]:
                return None  # the misalignment check: a given parameter disagrees
        return chosen

    def _signed_url(self, version: CivVersion, f: CivFile) -> str:
        key = f"modelVersion/{version.id}/{f.id}/{quote(f.name)}"
        disposition = f.content_disposition or f'attachment; filename="{f.name}"'
        now = datetime.now(UTC)
        params = {
            "X-Amz-Expires": str(self.signed_url_ttl),
            "response-content-disposition": disposition,
            "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
            "X-Amz-Credential": "fakekey/" + now.strftime("%Y%m%d") + "/auto/s3/aws4_request",
            "X-Amz-Date": now.strftime("%Y%m%dT%H%M%SZ"),
            "X-Amz-SignedHeaders": "host",
        }
        params["X-Amz-Signature"] = self._sign(
            key, params["X-Amz-Date"], params["X-Amz-Expires"], disposition
        )
        return f"{self.storage_url}/{key}?{urlencode(params)}"

    @staticmethod
    def _sign(key: str, date: str, expires: str, disposition: str) -> str:
        msg = f"{key}\n{date}\n{expires}\n{disposition}".encode()
        return hmac.new(_SECRET, msg, "sha256").hexdigest()

    # ------------------------------------------------------------ storage host

    def _route_storage(self, req: Request) -> None:
        if refuse_storage_request(req):
            return
        key = req.path.lstrip("/")
        date, expires = req.param("X-Amz-Date") or "", req.param("X-Amz-Expires") or "0"
        disposition = req.param("response-content-disposition") or ""
        expected = self._sign(key, date, expires, disposition)
        try:
            issued = datetime.strptime(date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
        except ValueError:
            issued = 0.0
        if not hmac.compare_digest(expected, req.param("X-Amz-Signature") or "") or (
            issued + int(expires) < time.time()
        ):
            send_s3_error(req, 403, "AccessDenied", "Request has expired")
            return
        _, vid, fid, _ = key.split("/", 3)
        version = self.versions.get(int(vid))
        f = next((x for x in version.files if x.id == int(fid)), None) if version else None
        if f is None:
            send_s3_error(req, 404, "NoSuchKey")
            return
        serve_bytes(
            req,
            f.data,
            self.faults,
            {
                "Content-Disposition": disposition,
                "ETag": f'"{hashlib.md5(f.data).hexdigest()}"',
            },
        )
