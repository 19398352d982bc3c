"""Fault knobs and byte serving shared by the Hugging Face and CivitAI test servers.

Every double has a ``faults`` attribute (:class:`Faults`). Each knob applies to the next
``times`` matching requests (``times=None``: until :meth:`Faults.clear`), then disarms:

======================================  ==================================================
knob                                    effect
======================================  ==================================================
``fail(status=503, times=1)``           answer ``status`` (JSON error body) instead
``rate_limit(retry_after="2")``         answer 429 with ``Retry-After: <value>`` (seconds
                                        or an HTTP date, as given)
``cut_after(nbytes, times=1)``          send headers (full Content-Length) and ``nbytes``
                                        of the body, then close the connection
``corrupt(offset, times=1)``            flip the byte at absolute file ``offset`` (when
                                        the served range covers it)
``ignore_range(times=None)``            answer 200 with the whole file, ignoring ``Range``
``clear()``                             disarm everything
======================================  ==================================================

``where`` selects the requests a knob applies to: ``"bytes"`` (default: any response that
carries file bytes: the CDN / storage host, or a small file served by the hub itself),
``"resolve"`` (HF ``/resolve/`` before its redirect, CivitAI ``/api/download/models/``),
``"api"`` (JSON API endpoints) or ``"any"``. ``cut_after``, ``corrupt`` and
``ignore_range`` act on file bytes only. ``faults.fired`` counts the faults that fired,
by knob name.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

WHERE = ("bytes", "resolve", "api", "any")


@dataclass
class _Fault:
    knob: str
    where: str
    remaining: int | None
    params: dict[str, Any]


class Faults:
    """Armed faults of one double (thread-safe). See the module docstring."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: list[_Fault] = []
        self.fired: Counter[str] = Counter()

    def _arm(self, knob: str, where: str, times: int | None, **params: Any) -> Faults:
        if where not in WHERE:
            raise ValueError(f"where must be one of {WHERE}, got {where!r}")
        with self._lock:
            self._armed.append(_Fault(knob, where, times, params))
        return self

    def fail(self, status: int = 503, *, times: int | None = 1, where: str = "bytes") -> Faults:
        return self._arm("fail", where, times, status=status)

    def rate_limit(
        self, retry_after: str | None = "1", *, times: int | None = 1, where: str = "bytes"
    ) -> Faults:
        return self._arm("rate_limit", where, times, retry_after=retry_after)

    def cut_after(self, nbytes: int, *, times: int | None = 1) -> Faults:
        return self._arm("cut_after", "bytes", times, nbytes=nbytes)

    def corrupt(self, offset: int, *, times: int | None = 1) -> Faults:
        return self._arm("corrupt", "bytes", times, offset=offset)

    def ignore_range(self, *, times: int | None = None) -> Faults:
        return self._arm("ignore_range", "bytes", times)

    def clear(self) -> None:
        with self._lock:
            self._armed.clear()

    def take(self, knobs: tuple[str, ...], where: str) -> tuple[str, dict[str, Any]] | None:
        """The first armed fault among ``knobs`` for ``where``, consumed once."""
        with self._lock:
            for fault in self._armed:
                if fault.knob in knobs and fault.where in (where, "any"):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                        if fault.remaining <= 0:
                            self._armed.remove(fault)
                    self.fired[fault.knob] += 1
                    return fault.knob, dict(fault.params)
        return None


# ---------------------------------------------------------------- a tiny HTTP app frame


@dataclass
class Request:
    """One request as a double's route sees it."""

    handler: BaseHTTPRequestHandler
    method: str
    path: str  # raw (still percent-encoded) path
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    server: str  # which server of the double answered ("hub", "cdn", "api", "storage")

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    @property
    def bearer(self) -> str | None:
        auth = self.headers.get("authorization", "")
        if " " not in auth:
            return None
        return auth.split(" ", 1)[1].strip() or None

    def send(
        self,
        status: int,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        *,
        content_type: str | None = None,
    ) -> None:
        h = self.handler
        h.send_response(status)
        sent = {k.lower() for k in (headers or {})}
        for key, value in (headers or {}).items():
            h.send_header(key, value)
        if content_type and "content-type" not in sent:
            h.send_header("Content-Type", content_type)
        if "content-length" not in sent:
            h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if self.method != "HEAD" and body:
            h.wfile.write(body)

    def send_json(self, status: int, obj: Any, headers: Mapping[str, str] | None = None) -> None:
        self.send(
            status,
            json.dumps(obj).encode(),
            headers,
            content_type="application/json; charset=utf-8",
        )


@dataclass
class Recorded:
    """What a double saw: for assertions (e.g. no Authorization at the storage host)."""

    server: str
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


Route = Callable[[Request], None]


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up on a kept-alive connection is normal, not a test failure.
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            super().handle_error(request, client_address)


class Server:
    """A ThreadingHTTPServer on 127.0.0.1:<free port> running ``route`` for every request."""

    def __init__(self, name: str, route: Route, log: list[Recorded], lock: threading.Lock):
        self.name = name

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                query = parse_qs(parts.query, keep_blank_values=True)
                with lock:
                    log.append(Recorded(name, self.command, parts.path, query, headers))
                req = Request(self, self.command, parts.path, query, headers, body, name)
                try:
                    route(req)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _answer  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # A short poll interval keeps shutdown (and so each test's teardown) fast.
        self._thread = threading.Thread(
            target=self.httpd.serve_forever,
            kwargs={"poll_interval": 0.02},
            daemon=True,
            name=f"double-{name}",
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


# ---------------------------------------------------------------- storage hosts (signed URLs)


def send_s3_error(req: Request, status: int, code: str, message: str | None = None) -> None:
    """An S3-style XML error, as the storage hosts behind signed URLs answer (a bare
    ``<Error><Code>`` without a message, as for ``NoSuchKey``)."""
    if message is None:
        body = f"<Error><Code>{code}</Code></Error>"
    else:
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}'
            f"</Code><Message>{message}</Message></Error>"
        )
    req.send(status, body.encode(), content_type="application/xml")


def refuse_storage_request(req: Request) -> bool:
    """Answer what a signed-URL storage host refuses before looking at the signature:
    methods other than GET/HEAD, and an Authorization header next to the query signature.
    True when answered."""
    if req.method not in ("GET", "HEAD"):
        req.send(405, b"")
        return True
    if "authorization" in req.headers:
        send_s3_error(
            req,
            400,
            "InvalidArgument",
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
            "Signature query string parameter or the Authorization header should be specified",
        )
        return True
    return False


# ---------------------------------------------------------------- serving file bytes


_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")


def parse_range(value: str | None, size: int) -> tuple[int, int] | None | str:
    """(start, end) inclusive for one ``bytes=`` range; None without one; ``"bad"`` if
    unsatisfiable."""
    if not value:
        return None
    match = _RANGE.match(value)
    if not match or (not match.group(1) and not match.group(2)):
        return None  # multiple or malformed ranges: serve the whole file, as S3 does
    first, last = match.groups()
    if not first:  # suffix range: the last N bytes
        n = int(last)
        if n == 0:
            return "bad"
        return max(0, size - n), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        return "bad"
    return start, end


def fault_status(
    req: Request, faults: Faults, where: str, *, too_many: str = "Too many requests"
) -> bool:
    """Answer a ``fail``/``rate_limit`` fault for ``where`` if one is armed (``too_many``:
    the service's own 429 message)."""
    hit = faults.take(("fail", "rate_limit"), where)
    if hit is None:
        return False
    knob, params = hit
    if knob == "rate_limit":
        headers = {}
        if params["retry_after"] is not None:
            headers["Retry-After"] = str(params["retry_after"])
        req.send_json(429, {"error": too_many}, headers)
    else:
        status = int(params["status"])
        req.send_json(status, {"error": f"injected failure (HTTP {status})"})
    return True


def serve_bytes(
    req: Request,
    data: bytes,
    faults: Faults,
    headers: Mapping[str, str] | None = None,
    *,
    content_type: str = "application/octet-stream",
) -> None:
    """Serve ``data`` honouring one ``Range`` (206 + Content-Range), with the byte faults."""
    if fault_status(req, faults, "bytes"):
        return
    size = len(data)
    out = {"Accept-Ranges": "bytes", "Content-Type": content_type, **(headers or {})}
    wanted = (
        None
        if faults.take(("ignore_range",), "bytes")
        else parse_range(req.headers.get("range"), size)
    )
    if wanted == "bad":
        req.send(416, b"", {**out, "Content-Range": f"bytes */{size}"})
        return
    if wanted is None:
        start, end, status = 0, size - 1, 200
    else:
        assert isinstance(wanted, tuple)
        start, end = wanted
        status = 206
        out["Content-Range"] = f"bytes {start}-{end}/{size}"
    body = data[start : end + 1]
    corrupt = faults.take(("corrupt",), "bytes")
    if corrupt is not None:
        offset = int(corrupt[1]["offset"])
        if start <= offset <= end:
            i = offset - start
            body = body[:i] + bytes([body[i] ^ 0xFF]) + body[i + 1 :]
    cut = faults.take(("cut_after",), "bytes") if req.method != "HEAD" else None
    h = req.handler
    h.send_response(status)
    for key, value in out.items():
        h.send_header(key, value)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    if req.method == "HEAD":
        return
    if cut is None:
        h.wfile.write(body)
        return
    h.wfile.write(body[: int(cut[1]["nbytes"])])
    h.wfile.flush()
    h.close_connection = True
    with contextlib.suppress(OSError):
        h.connection.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def running(servers: list[Server]) -> Iterator[None]:
    for server in servers:
        server.start()
    try:
        yield
    finally:
        for server in servers:
            server.stop()


__all__ = [
    "Faults",
    "Recorded",
    "Request",
    "Server",
    "parse_range",
    "running",
    "serve_bytes",
]
