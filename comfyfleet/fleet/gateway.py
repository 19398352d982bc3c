"""The authenticated door to ComfyUI on a rented instance: a token-checking reverse proxy.

ComfyUI has no authentication of its own, so on an instance it listens on 127.0.0.1 only and
this gateway is the one port the instance publishes (``comfyfleet gateway --listen
0.0.0.0:PORT --upstream http://127.0.0.1:8188``, token from ``$COMFYFLEET_GATEWAY_TOKEN``).

Why a gateway of our own, and not the other two doors issue 10 names:

- **An SSH tunnel** needs the operator's key on every instance (vast.ai adds the account's
  keys), one ``ssh -L`` process per instance kept alive by whoever drives the batch (a Prefect
  worker in ``fleet-batch``), and a local port per endpoint. That is process management
  standing between a flow and N HTTP endpoints, and it ties a batch to the machine holding the
  key. A bearer token is one string per fleet that any client (the batch, a browser, ``curl``)
  sends with its requests.
- **The image's own portal** (vast.ai's Caddy-based "Instance Portal") exists only in the
  vast.ai base images and speaks that image's scheme; our baked images and other images have
  none. Running Caddy ourselves means a binary that is neither on PyPI nor in Debian's
  default repositories, installed on every boot.
- This module is plain Python on what the wheel already brings: uvicorn (installed with
  prefect), httpx and websockets (dependencies). It starts with the warm-up, from the same
  wheel.

What it does:

- **Auth**: ``Authorization: Bearer <token>``, compared in constant time
  (:func:`hmac.compare_digest`), on HTTP and on the ``/ws`` upgrade alike. A browser, which
  cannot set headers on a WebSocket, may put ``?token=<token>`` in the URL instead: the
  gateway strips it before forwarding, never logs it, and answers with an ``HttpOnly;
  SameSite=Strict`` cookie so the ComfyUI page's own API and ``/ws`` calls authenticate too
  (the cookie is taken off the ``Cookie`` header before forwarding). A request without the
  token, or with a wrong one, gets ``401`` with a JSON body and nothing reaches ComfyUI (a
  refused WebSocket upgrade gets the same ``401`` answer instead of ``101``).
- **``/healthz``** answers ``ok`` without auth and says nothing else (no upstream address,
  no ComfyUI state), so a load balancer or ``instances ls`` can probe the port.
- **``GET /comfyfleet/activity``** (token required, never forwarded) answers
  ``{"last_request_at": epoch | null, "in_flight": n, "started_at": epoch}``: when the last
  proxied request started or ended (or a WebSocket frame passed: a running prompt's progress
  counts as work), how many HTTP requests are being relayed now, and when the gateway
  started. The reaper's ``idle`` reason reads it: real work, not the GPU sample of one
  moment. ``/healthz`` and this endpoint do not count as activity; an open but silent
  WebSocket (an idle browser tab) does not either.
- **HTTP**: every method and path goes to the upstream as it came, minus hop-by-hop
  headers, the ``Authorization`` header and the ``token`` query parameter. Bodies stream in
  both directions (an ``/upload/image`` body is sent on as it arrives, a ``/view`` answer is
  relayed chunk by chunk with uvicorn's flow control): nothing is buffered whole.
- **WebSocket** ``/ws`` (any path, in fact): the gateway opens the upstream socket first and
  only then accepts the client's, then relays text and binary frames (ComfyUI's preview
  images) both ways until either side closes.
- **ComfyUI's origin check**: ComfyUI refuses a request whose ``Origin`` differs from its
  loopback ``Host``. A browser page served through this gateway sends the gateway's own origin;
  that one is rewritten to the upstream's, any other origin is passed on (and refused by
  ComfyUI, as without the gateway).
- **Upstream down**: ``502`` with a JSON body that says ComfyUI is not answering (``504`` when
  it accepted the connection but did not answer in ``read_timeout`` seconds).

The token never appears in a log line, an error or a ``repr``: uvicorn's access log is off
and the gateway writes its own (method, path, query without ``token``, status, time).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import uvicorn
from pydantic import SecretStr
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from comfyfleet.errors import ConfigError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger(__name__)

TOKEN_QUERY = "token"
COOKIE = "comfyfleet_gateway"
HEALTH_PATH = "/healthz"
ACTIVITY_PATH = "/comfyfleet/activity"
# Shorter tokens are guessable; ``secrets.token_urlsafe(32)`` (what ``instances up`` makes)
# is 43 characters.
MIN_TOKEN_CHARS = 16
# Binary preview frames are a few hundred KB; the bound keeps one frame from eating memory.
WS_MAX_FRAME = 64 * 1024 * 1024
# Hop-by-hop headers (RFC 9110 §7.6.1) and the ones the gateway sets or consumes itself.
_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_NOT_FORWARDED = _HOP | {"host", "authorization", "origin"}
# Close codes that may not be sent in a close frame (RFC 6455 §7.4.1).
_RESERVED_CLOSE = frozenset({1005, 1006, 1015})


def _headers(scope: Scope) -> dict[str, str]:
    """The request headers, lower-cased names; repeated ones joined as HTTP allows."""
    out: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", []):
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


def _cookies(headers: dict[str, str]) -> dict[str, str]:
    pairs = (c.strip().partition("=") for c in headers.get("cookie", "").split(";"))
    return {name: value for name, _, value in pairs if name}


def split_token(query_string: bytes) -> tuple[str, str | None]:
    """``(query without the token parameter, the token or None)``. The other parameters stay
    byte for byte as they came (no re-encoding)."""
    kept, token = [], None
    for piece in query_string.decode("latin-1").split("&"):
        if not piece:
            continue
        name, _, value = piece.partition("=")
        if unquote(name.replace("+", " ")) == TOKEN_QUERY:
            token = unquote(value.replace("+", " "))
        else:
            kept.append(piece)
    return "&".join(kept), token


def _json_body(status: int, error: str, message: str) -> tuple[int, bytes]:
    return status, json.dumps({"error": error, "message": message}).encode()


_UNAUTHORIZED = _json_body(
    401,
    "unauthorized",
    "missing or wrong token: send the header 'Authorization: Bearer <token>' "
    "(the fleet's gateway token)",
)


class Gateway:
    """The gateway as an ASGI application (see the module docstring).

    ``upstream`` is ComfyUI's base URL (``http://127.0.0.1:8188``); ``token`` the shared
    secret; ``connect_timeout``/``read_timeout`` bound each upstream HTTP call (a read timeout
    is the longest silence allowed between two chunks of an answer).
    """

    def __init__(
        self,
        upstream: str,
        token: str | SecretStr,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        secret = token.get_secret_value() if isinstance(token, SecretStr) else token
        if len(secret) < MIN_TOKEN_CHARS:
            raise ConfigError(
                f"the gateway token is {len(secret)} characters; at least "
                f"{MIN_TOKEN_CHARS} are needed",
                hint="generate one: python -c 'import secrets; print(secrets.token_urlsafe(32))'",
            )
        parts = urlsplit(upstream.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                f"--upstream {upstream!r} is not an http(s) URL",
                hint="pass ComfyUI's address, e.g. --upstream http://127.0.0.1:8188",
            )
        self.upstream = f"{parts.scheme}://{parts.netloc}{parts.path}"
        self._upstream_origin = f"{parts.scheme}://{parts.netloc}"
        self._ws_upstream = ("wss" if parts.scheme == "https" else "ws") + self.upstream[
            len(parts.scheme) :
        ]
        self._token = secret.encode()
        self._timeout = httpx.Timeout(
            connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout
        )
        self._connect_timeout = connect_timeout
        self._http: httpx.AsyncClient | None = None
        self._clock = clock
        self.started_at = clock()
        self.last_request_at: float | None = None
        self.in_flight = 0

    def __repr__(self) -> str:
        return f"Gateway(upstream={self.upstream!r}, token=***)"

    def touch(self) -> None:
        """Work passed through just now (see ``/comfyfleet/activity``)."""
        self.last_request_at = self._clock()

    def activity(self) -> dict[str, Any]:
        return {
            "last_request_at": self.last_request_at,
            "in_flight": self.in_flight,
            "started_at": self.started_at,
        }

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._serve_http(scope, receive, send)
        elif kind == "websocket":
            await self._serve_websocket(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            # No proxies from the environment; no redirects followed (the client sees them).
            client = httpx.AsyncClient(
                timeout=self._timeout,
                limits=httpx.Limits(max_connections=256, max_keepalive_connections=32),
                trust_env=False,
                follow_redirects=False,
            )
            # httpx's default Accept/Accept-Encoding/User-Agent would change what ComfyUI
            # sees; only the caller's own headers go through.
            for name in ("accept", "accept-encoding", "user-agent"):
                del client.headers[name]
            self._http = client
        return self._http

    def authorized(self, headers: dict[str, str], query_token: str | None) -> bool:
        """True when the request carries the token: the bearer header if there is one, else
        ``?token=``, else the gateway's cookie."""
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if scheme:
            presented = credentials.strip() if scheme.lower() == "bearer" else None
        else:
            presented = query_token or _cookies(headers).get(COOKIE)
        if not presented:
            return False
        return hmac.compare_digest(presented.encode(), self._token)

    def _cookie_header(self) -> tuple[bytes, bytes]:
        """Set after a good ``?token=``: the page ComfyUI serves then calls the API and the
        WebSocket without the token in its URLs (SameSite=Strict: no other site's page can
        make the browser send it)."""
        value = f"{COOKIE}={self._token.decode()}; HttpOnly; SameSite=Strict; Path=/"
        return b"set-cookie", value.encode()

    def _forward_headers(self, headers: dict[str, str], *, websocket: bool) -> dict[str, str]:
        out = {k: v for k, v in headers.items() if k not in _NOT_FORWARDED}
        if "cookie" in out:  # ComfyUI gets the browser's other cookies, never ours
            kept = [c for c in out.pop("cookie").split(";") if c.split("=")[0].strip() != COOKIE]
            if any(c.strip() for c in kept):
                out["cookie"] = ";".join(kept).strip()
        if websocket:
            out = {k: v for k, v in out.items() if not k.startswith("sec-websocket-")}
            out.pop("user-agent", None)  # set through connect()'s own parameter
        out.update(self._origin(headers))
        return out

    def _origin(self, headers: dict[str, str]) -> dict[str, str]:
        """The ``Origin`` to send: the gateway's own origin becomes the upstream's (ComfyUI's
        check passes), any other is sent as it came (and ComfyUI refuses it)."""
        origin = headers.get("origin")
        if origin is None:
            return {}
        if urlsplit(origin).netloc.lower() == headers.get("host", "").lower():
            return {"origin": self._upstream_origin}
        return {"origin": origin}

    @staticmethod
    def _target(scope: Scope, query: str) -> str:
        raw_path = scope.get("raw_path")
        path: str = raw_path.decode("latin-1") if raw_path else scope["path"]
        return path + (f"?{query}" if query else "")

    # ------------------------------------------------------------------ HTTP

    async def _serve_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.monotonic()
        method: str = scope["method"]
        query, query_token = split_token(scope.get("query_string", b""))
        target = self._target(scope, query)
        if scope["path"] == HEALTH_PATH and method in ("GET", "HEAD"):
            await _answer(send, 200, b"ok", "text/plain; charset=utf-8")
            return
        headers = _headers(scope)
        status = 401
        try:
            if not self.authorized(headers, query_token):
                await _answer(send, *_UNAUTHORIZED, extra=[(b"www-authenticate", b"Bearer")])
                return
            if scope["path"] == ACTIVITY_PATH and method == "GET":
                status = 200
                await _answer(send, 200, json.dumps(self.activity()).encode())
                return
            via_query = query_token is not None and "authorization" not in headers
            extra = [self._cookie_header()] if via_query else []
            self.in_flight += 1
            self.touch()
            try:
                status = await self._proxy_http(scope, receive, send, headers, target, extra)
            finally:
                self.in_flight -= 1
                self.touch()
        finally:
            _access(scope, method, target, status, started)

    async def _proxy_http(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: dict[str, str],
        target: str,
        extra: list[tuple[bytes, bytes]],
    ) -> int:
        """Relay one request; the status the client got."""
        has_body = "content-length" in headers or "transfer-encoding" in headers
        request = self._client().build_request(
            scope["method"],
            self.upstream + target,
            headers=self._forward_headers(headers, websocket=False),
            content=_request_body(receive) if has_body else None,
        )
        try:
            response = await self._client().send(request, stream=True)
        except httpx.TimeoutException as exc:
            if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
                return await self._bad_gateway(send, 502, exc)
            return await self._bad_gateway(send, 504, exc)
        except (httpx.TransportError, OSError) as exc:
            return await self._bad_gateway(send, 502, exc)
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [
                        *(
                            (name, value)
                            for name, value in response.headers.raw
                            if name.decode("latin-1").lower() not in _HOP
                        ),
                        *extra,
                    ],
                }
            )
            # Raw bytes: the client gets ComfyUI's Content-Encoding/Content-Length unchanged.
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except (httpx.TransportError, OSError) as exc:
            # Headers are out: the client sees a short body, which is the truth.
            log.warning("upstream answer to %s broke off: %s", target, type(exc).__name__)
        finally:
            await response.aclose()
        return response.status_code

    async def _bad_gateway(self, send: Send, status: int, exc: BaseException) -> int:
        what = "did not answer in time" if status == 504 else "is not answering"
        log.warning("ComfyUI at %s %s (%s)", self.upstream, what, type(exc).__name__)
        await _answer(
            send,
            *_json_body(
                status,
                "bad_gateway" if status == 502 else "gateway_timeout",
                f"ComfyUI behind this gateway {what} ({type(exc).__name__}); it may be "
                "starting, restarting or down",
            ),
        )
        return status

    # ------------------------------------------------------------------ WebSocket

    async def _serve_websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.monotonic()
        query, query_token = split_token(scope.get("query_string", b""))
        target = self._target(scope, query)
        headers = _headers(scope)
        status = 401
        try:
            if (await receive())["type"] != "websocket.connect":
                return
            if not self.authorized(headers, query_token):
                await _deny(scope, send, *_UNAUTHORIZED)
                return
            try:
                upstream = await connect(
                    self._ws_upstream + target,
                    additional_headers=self._forward_headers(headers, websocket=True),
                    user_agent_header=headers.get("user-agent"),
                    subprotocols=scope.get("subprotocols") or None,
                    max_size=WS_MAX_FRAME,
                    open_timeout=self._connect_timeout,
                    proxy=None,
                )
            except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
                log.warning("ComfyUI at %s refused the WebSocket (%s)", self.upstream, exc)
                status = 502
                await _deny(
                    scope,
                    send,
                    *_json_body(
                        502,
                        "bad_gateway",
                        f"ComfyUI behind this gateway is not answering ({type(exc).__name__})",
                    ),
                )
                return
            status = 101
            self.touch()
            async with upstream:
                await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})
                await _relay(receive, send, upstream, self.touch)
        finally:
            _access(scope, "WS", target, status, started)


async def _relay(
    receive: Receive, send: Send, upstream: ClientConnection, touch: Callable[[], None]
) -> None:
    """Frames both ways until either side closes; then close the other side. Each frame
    is activity (``touch``)."""

    async def client_to_upstream() -> None:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            touch()
            if message.get("text") is not None:
                await upstream.send(message["text"])
            elif message.get("bytes") is not None:
                await upstream.send(message["bytes"])

    async def upstream_to_client() -> None:
        async for data in upstream:
            touch()
            if isinstance(data, str):
                await send({"type": "websocket.send", "text": data})
            else:
                await send({"type": "websocket.send", "bytes": data})

    tasks = [
        asyncio.ensure_future(client_to_upstream()),
        asyncio.ensure_future(upstream_to_client()),
    ]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    client_left = tasks[0] in done
    for task in done:
        error = task.exception()
        if error is not None and not isinstance(error, ConnectionClosed | OSError):
            raise error
    if client_left:
        await upstream.close()
        return
    code = upstream.close_code or 1000
    with contextlib.suppress(OSError):
        await send(
            {
                "type": "websocket.close",
                "code": 1011 if code in _RESERVED_CLOSE else code,
                "reason": upstream.close_reason or "",
            }
        )


async def _request_body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise OSError("the client went away while sending its body")
        chunk: bytes = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


async def _answer(
    send: Send,
    status: int,
    body: bytes,
    content_type: str = "application/json",
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _deny(scope: Scope, send: Send, status: int, body: bytes) -> None:
    """Refuse a WebSocket upgrade with an HTTP answer (ASGI's denial response extension);
    a server without it can only close, which its clients see as 403."""
    if "websocket.http.response" in scope.get("extensions", {}):
        await send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008})


def _access(scope: Scope, method: str, target: str, status: int, started: float) -> None:
    """One access line; ``target`` has had its token removed already."""
    client = scope.get("client") or ("-", 0)
    elapsed_ms = (time.monotonic() - started) * 1000
    log.info("%s %s %s -> %d in %.0f ms", client[0], method, target, status, elapsed_ms)


# ---------------------------------------------------------------------- serving


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::]:PORT`` for IPv6) as ``(host, port)``."""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(
            f"--listen {listen!r} is not HOST:PORT",
            hint="e.g. --listen 0.0.0.0:8080 (every interface) or 127.0.0.1:8080",
        )
    return host, int(port)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: a free one); the caller reads the port from it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets that
    # say they are TCP, and accepted sockets copy it from this one. Without it every answer
    # (headers and body are two writes) waited ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"the gateway cannot listen on {host}:{port}: {exc.strerror or exc}",
            hint="pick another port, or stop what is listening there",
        ) from exc
    sock.set_inheritable(True)
    return sock


def server(gateway: Gateway) -> uvicorn.Server:
    """A uvicorn server for ``gateway``: its own access log only (uvicorn's would print a
    ``?token=`` query), no ``Server`` header, logging left to the caller."""
    config = uvicorn.Config(
        gateway,
        access_log=False,
        log_config=None,
        lifespan="on",
        ws="websockets-sansio",
        proxy_headers=False,
        server_header=False,
        ws_max_size=WS_MAX_FRAME,
    )
    return uvicorn.Server(config)
