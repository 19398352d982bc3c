"""A fal.ai queue API test server (127.0.0.1, free ports), reproducing fal's wire shapes.

Documented behaviour reproduced (docs.fal.ai: model-endpoints/queue, api-reference/inference-api,
inference-api/queue/{status,result,cancel}, model-apis/errors, model-apis/request-errors):

* ``POST /{owner}/{app}[/{path}]`` (``Authorization: Key <key>``) -> 200
  ``{"status": "IN_QUEUE", "request_id", "response_url", "status_url", "cancel_url",
  "queue_position"}``; the three URLs use only ``{owner}/{app}``.
* ``GET .../requests/{id}/status[?logs=1]`` -> 202 ``{"status": "IN_QUEUE", "queue_position",
  "response_url"}`` / 202 ``{"status": "IN_PROGRESS", "logs", "response_url"}`` / 200
  ``{"status": "COMPLETED", "logs", "metrics": {"inference_time"}, "response_url"}``. Logs are
  ``{"message", "level", "source", "timestamp"}`` and only sent with ``logs=1``.
* ``GET .../requests/{id}`` -> the model output (``{"video": {"url", "content_type",
  "file_name", "file_size"}, "seed"}``), or the model's error: 422
  ``{"detail": [{"loc": ["body", field], "msg", "type"}]}``; 400 ``{"detail": "Request is still
  in progress"}`` before completion.
* ``PUT .../requests/{id}/cancel`` -> 202 ``{"status": "CANCELLATION_REQUESTED"}`` or 400
  ``{"status": "ALREADY_COMPLETED"}``; unknown id -> 404 ``{"status": "NOT_FOUND"}``.
* 401 ``{"detail": "..."}`` for a missing or unknown key; request errors (503/504) as
  ``{"detail": "<text>", "error_type": "..."}`` + ``X-Fal-Error-Type``; 429 with Retry-After.

Result files are served by a second server (another port = another host for the client), so a
test can prove the key never travels to the file CDN. A request's state advances with each
status poll (``queue_polls`` IN_QUEUE answers, then ``progress_polls`` IN_PROGRESS ones), which
keeps tests fast and deterministic. Input images (``image_url``: an http(s) URL, e.g. a
presigned store URL, or a ``data:`` URI) are really fetched and sniffed when the request runs.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

TEST_KEY = "fal-test-key-0123:secret-abcdef"
_DOWNLOAD_FAILED = "Failed to download the file. Please check if the URL is accessible."

# The smallest well-formed MP4 start: an ftyp box, then an mdat box with a few bytes.
MP4_BYTES = (
    b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"
    + (16).to_bytes(4, "big")
    + b"mdat"
    + b"fal-video\x00\x01\x02"
)[:40]


@dataclass
class FalAppBehaviour:
    """How one fal app behaves in the double."""

    required: tuple[str, ...] = ("prompt", "image_url")
    queue_polls: int = 1
    progress_polls: int = 1
    video: bytes = MP4_BYTES
    # A model error returned by the result endpoint: (HTTP status, body).
    model_error: tuple[int, dict[str, Any]] | None = None


@dataclass
class FalRecord:
    """One submitted request as the double sees it."""

    request_id: str
    model_id: str
    app_root: str
    payload: dict[str, Any]
    polls: int = 0
    cancelled: bool = False
    result: tuple[int, dict[str, Any]] | None = None
    image_bytes: bytes | None = None


@dataclass
class FalDouble:
    """The test server. ``url`` is the queue base (what FAL_QUEUE_URL would be)."""

    keys: set[str] = field(default_factory=lambda: {TEST_KEY})
    apps: dict[str, FalAppBehaviour] = field(
        default_factory=lambda: {
            "fal-ai/wan-i2v": FalAppBehaviour(),
            "fal-ai/stable-video": FalAppBehaviour(required=("image_url",)),
        }
    )
    # Statuses answered to the next submits before one succeeds (e.g. [429, 503]).
    submit_failures: list[int] = field(default_factory=list)
    retry_after: str | None = "0"
    # Every request: (method, path, Authorization header or None).
    log: list[tuple[str, str, str | None]] = field(default_factory=list)
    file_log: list[tuple[str, str | None]] = field(default_factory=list)
    records: dict[str, FalRecord] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[str, bytes] = {}
        self._queue = _serve(self._handle_queue)
        self._cdn = _serve(self._handle_file)

    # ------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._queue.server_address[1]}"

    @property
    def files_url(self) -> str:
        return f"http://127.0.0.1:{self._cdn.server_address[1]}"

    def close(self) -> None:
        for server in (self._queue, self._cdn):
            server.shutdown()
            server.server_close()

    def __enter__(self) -> FalDouble:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def serve_file(self, name: str, data: bytes) -> str:
        """Put ``data`` on the file server; returns its URL (for size-cap tests)."""
        with self._lock:
            self._files[name] = data
        return f"{self.files_url}/files/{name}"

    # ------------------------------------------------------------ queue routes

    def _handle_queue(
        self, handler: BaseHTTPRequestHandler
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        parts = urlsplit(handler.path)
        segments = [s for s in parts.path.split("/") if s]
        auth = handler.headers.get("Authorization")
        with self._lock:
            self.log.append((handler.command, parts.path, auth))
        if not auth:
            return 401, {"detail": "Missing authorization header"}, {}
        if not auth.startswith("Key ") or auth[4:] not in self.keys:
            return 401, {"detail": "No user found for Key ID and Secret"}, {}
        if len(segments) >= 4 and segments[2] == "requests":
            root = "/".join(segments[:2])
            request_id = segments[3]
            tail = segments[4:]
            return self._request_route(handler, root, request_id, tail, parts.query)
        if handler.command != "POST" or len(segments) < 2:
            return 405, {"detail": "Method Not Allowed"}, {}
        return self._submit(handler, "/".join(segments))

    def _submit(
        self, handler: BaseHTTPRequestHandler, model_id: str
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self._lock:
            if self.submit_failures:
                status = self.submit_failures.pop(0)
                headers = (
                    {"Retry-After": self.retry_after} if status == 429 and self.retry_after else {}
                )
                if status == 429:
                    return 429, {"detail": "Too many requests"}, headers
                error_type = "runner_scheduling_failure" if status == 503 else "request_timeout"
                return (
                    status,
                    {"detail": "No runner could be allocated", "error_type": error_type},
                    {"X-Fal-Error-Type": error_type},
                )
        root = "/".join(model_id.split("/")[:2])
        app = self.apps.get(model_id) or self.apps.get(root)
        if app is None:
            return 404, {"detail": f"Application '{model_id}' not found"}, {}
        try:
            payload = json.loads(getattr(handler, "body", b"") or b"{}")
        except json.JSONDecodeError:
            return (
                422,
                {"detail": [{"loc": ["body"], "msg": "Invalid JSON", "type": "json_invalid"}]},
                {},
            )
        if not isinstance(payload, dict):
            return (
                422,
                {
                    "detail": [
                        {
                            "loc": ["body"],
                            "msg": "Input should be a valid dictionary",
                            "type": "dict_type",
                        }
                    ]
                },
                {},
            )
        request_id = str(uuid.uuid4())
        with self._lock:
            queued = sum(1 for r in self.records.values() if r.result is None and not r.cancelled)
            self.records[request_id] = FalRecord(request_id, model_id, root, payload)
        base = f"{self.url}/{root}/requests/{request_id}"
        return (
            200,
            {
                "status": "IN_QUEUE",
                "request_id": request_id,
                "response_url": base,
                "status_url": f"{base}/status",
                "cancel_url": f"{base}/cancel",
                "queue_position": queued,
            },
            {},
        )

    def _request_route(
        self,
        handler: BaseHTTPRequestHandler,
        root: str,
        request_id: str,
        tail: list[str],
        query: str,
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self._lock:
            record = self.records.get(request_id)
        if record is None or record.app_root != root:
            if tail == ["cancel"]:
                return 404, {"status": "NOT_FOUND"}, {}
            return 404, {"detail": "Request not found"}, {}
        app = self.apps.get(record.model_id) or self.apps[root]
        base = f"{self.url}/{root}/requests/{request_id}"
        if tail == ["status"] and handler.command == "GET":
            with_logs = parse_qs(query).get("logs") == ["1"]
            with self._lock:
                record.polls += 1
                polls = record.polls
            if record.cancelled or polls > app.queue_polls + app.progress_polls:
                if record.result is None:
                    self._execute(record, app)
                body: dict[str, Any] = {
                    "status": "COMPLETED",
                    "response_url": base,
                    "metrics": {"inference_time": 0.01},
                }
                if with_logs:
                    body["logs"] = [_log("done")]
                return 200, body, {}
            if polls <= app.queue_polls:
                return (
                    202,
                    {
                        "status": "IN_QUEUE",
                        "queue_position": app.queue_polls - polls,
                        "response_url": base,
                    },
                    {},
                )
            body = {"status": "IN_PROGRESS", "response_url": base}
            if with_logs:
                body["logs"] = [_log("generating")]
            return 202, body, {}
        if tail == [] and handler.command == "GET":
            if record.result is None:
                return 400, {"detail": "Request is still in progress"}, {}
            return record.result[0], record.result[1], {}
        if tail == ["cancel"] and handler.command == "PUT":
            if record.result is not None:
                return 400, {"status": "ALREADY_COMPLETED"}, {}
            with self._lock:
                record.cancelled = True
                record.result = (400, {"detail": "Request was cancelled"})
            return 202, {"status": "CANCELLATION_REQUESTED"}, {}
        return 405, {"detail": "Method Not Allowed"}, {}

    def _execute(self, record: FalRecord, app: FalAppBehaviour) -> None:
        missing = [name for name in app.required if not record.payload.get(name)]
        if missing:
            record.result = (
                422,
                {
                    "detail": [
                        {"loc": ["body", name], "msg": "Field required", "type": "missing"}
                        for name in missing
                    ]
                },
            )
            return
        image_url = record.payload.get("image_url")
        if isinstance(image_url, str):
            data = _fetch_image(image_url)
            if data is None:
                record.result = (
                    422,
                    {
                        "detail": [
                            {
                                "loc": ["body", "image_url"],
                                "msg": _DOWNLOAD_FAILED,
                                "type": "file_download_error",
                                "input": image_url[:64],
                            }
                        ]
                    },
                )
                return
            record.image_bytes = data
        if app.model_error is not None:
            record.result = app.model_error
            return
        name = f"{record.request_id}.mp4"
        url = self.serve_file(name, app.video)
        record.result = (
            200,
            {
                "video": {
                    "url": url,
                    "content_type": "video/mp4",
                    "file_name": "output.mp4",
                    "file_size": len(app.video),
                },
                "seed": int(record.payload.get("seed") or 42),
            },
        )

    # ------------------------------------------------------------ file CDN

    def _handle_file(self, handler: BaseHTTPRequestHandler) -> tuple[int, bytes, dict[str, str]]:
        path = urlsplit(handler.path).path
        with self._lock:
            self.file_log.append((path, handler.headers.get("Authorization")))
            data = self._files.get(path.removeprefix("/files/"))
        if data is None:
            return 404, b"Not Found", {"Content-Type": "text/plain"}
        return 200, data, {"Content-Type": "video/mp4"}


def _log(message: str) -> dict[str, str]:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    return {"message": message, "level": "INFO", "source": "user", "timestamp": stamp}


_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")


def _fetch_image(url: str) -> bytes | None:
    try:
        if url.startswith("data:"):
            header, _, encoded = url.partition(",")
            data = base64.b64decode(encoded) if header.endswith(";base64") else encoded.encode()
        else:
            response = httpx.get(url, timeout=10)
            if response.status_code != 200:
                return None
            data = response.content
    except (httpx.HTTPError, ValueError):
        return None
    is_webp = data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    return data if is_webp or data.startswith(_IMAGE_MAGIC) else None


def _serve(route: Any) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            # Read the body first: with keep-alive, unread bytes would corrupt the next request.
            length = int(self.headers.get("Content-Length") or 0)
            self.body = self.rfile.read(length) if length else b""
            status, body, headers = route(self)
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            if not isinstance(body, bytes):
                self.send_header("Content-Type", "application/json")
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        do_GET = do_POST = do_PUT = _answer

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True, name="fal-double"
    ).start()
    return server


def running() -> Iterator[FalDouble]:
    """Generator for a pytest fixture: ``yield from running()``."""
    double = FalDouble()
    try:
        yield double
    finally:
        double.close()
