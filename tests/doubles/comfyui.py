"""FakeComfyUI: a real HTTP + WebSocket server on one loopback port that answers like ComfyUI.

It reproduces ComfyUI 0.3.64 as recorded in reference/comfyui-recorded.md and described in
reference/comfyui-api.md §7: the same routes (also under ``/api``), the same JSON shapes, the
same 400 bodies from ``POST /prompt`` (``no_prompt``, ``invalid_prompt``,
``prompt_no_outputs``, ``prompt_outputs_failed_validation`` with per-node
``required_input_missing``, ``bad_linked_input``, ``return_type_mismatch``,
``invalid_input_type``, ``value_smaller_than_min``/``value_bigger_than_max``,
``value_not_in_list``, ``custom_validation_failed``, ``exception_during_validation``), the
200-with-``node_errors`` answer for partially valid prompts, and the WebSocket order
``status, status, execution_start, execution_cached, (progress_state, executing, [progress],
[executed])*, execution_success|execution_error|execution_interrupted, status, executing
{node: null}`` -- with the history entry written before the final ``executing``. Prompts run
one at a time in heap order of ``(number, prompt_id)``, like ComfyUI's single worker. Events
for a prompt go only to the socket of its ``client_id`` (and are dropped when that socket is
not connected); ``status``, ``progress``, ``progress_state`` and ``execution_interrupted``
of prompts without a client id are broadcast.

One port for both protocols, like aiohttp: a stdlib ``ThreadingHTTPServer`` serves HTTP and,
for ``GET /ws`` with ``Upgrade: websocket``, hands the socket to websockets' sans-I/O
``ServerProtocol`` in the same handler thread.

Knobs (attributes; change them while the server runs):

``models``              folder -> file names; model combos in /object_info, /models/<folder>
                        and validation read it per request (as ComfyUI re-scans folders).
``execution_time``      seconds each prompt takes (spent in its sampler node, or spread over
                        the executed nodes); cached nodes take none.
``progress_steps``      ``progress`` messages per sampler node (value i of max = its ``steps``).
``preview_frames``      send binary preview frames with progress (event 1, or event 4 for a
                        client that sent ``feature_flags`` with ``supports_preview_metadata``).
``send_progress_state`` send ``progress_state`` snapshots (on by default, as 0.3.64 does).
``cache_enabled``       ComfyUI's classic cache: nodes whose inputs equal the previous prompt's
                        are not re-run and are listed in ``execution_cached``.
``fail_node``/``fail_class``  a node id / class type whose execution raises; the payload is
                        ``execution_error`` as recorded (``fail_message``,
                        ``fail_exception_type``); ``fail_times`` limits how often (None: always).
``drop_ws_after``       abort each WebSocket connection after sending this many messages
                        (``drop_ws_times``: only the first N connections; None: all).
``die_after_prompts``   after this many finished prompts stop serving: listener closed and
                        every connection aborted; queued prompts are lost (``restart()`` brings
                        it back on the same port with empty queue and history, like a real
                        restart; files and models stay).
``max_upload_size``     bytes; bigger request bodies get 413 (aiohttp's client_max_size).
``devices``             the ``devices`` list of /system_stats (default: the recorded CPU one).
``gateway_token``       behave as ComfyUI behind the fleet's gateway (comfyfleet/fleet/gateway.py):
                        every request, the ``/ws`` upgrade included, needs ``Authorization:
                        Bearer <token>``; without it (or with another token) the answer is
                        the gateway's ``401`` JSON body and nothing reaches ComfyUI (``refused``
                        records them). ``/healthz`` answers ``ok`` without a token.

Records for assertions: ``files`` ((type, subfolder, name) -> bytes), ``requests``
((method, path)), ``accepted`` (queued /prompt items), ``timeline`` (``Run`` per executed
prompt with monotonic start/end), ``free_calls``, ``interrupt_calls``, ``refused``
((method, path) turned away by the gateway check).

Helpers: ``start()``/``stop()`` (or ``with FakeComfyUI() as fake``), ``url``/``port``,
``restart()``, ``wait_stopped()``, ``wait_idle()``, ``idle_gaps()`` (seconds between one
prompt's end and the next one's start: the benchmark's "ComfyUI never idles"),
``add_input_image()``, ``history()``; module functions ``png_bytes()``, ``webp_bytes()``,
``gif_bytes()``, ``webm_bytes()``, ``mp4_bytes()`` make small real media files.

Note for timing runs: an identical prompt is served from the cache and takes no time, as in
ComfyUI; vary the seed or set ``cache_enabled = False``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import heapq
import hmac
import io
import json
import logging
import mimetypes
import posixpath
import random
import re
import socket
import string
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers as WSHeaders
from websockets.frames import Frame, Opcode
from websockets.http11 import Request as WSRequest
from websockets.protocol import State
from websockets.server import ServerProtocol

from .comfyui_nodes import MODEL_FOLDERS, NODES, NODES_BY_NAME, SAMPLER_CLASSES, render_node

JSON_TYPE = "application/json; charset=utf-8"
TEXT_TYPE = "text/plain; charset=utf-8"
# websockets logs handshake headers (a gateway token) at DEBUG; the double's stay quiet.
_WIRE_LOG = logging.getLogger("tests.doubles.comfyui.wire")
_WIRE_LOG.setLevel(logging.INFO)
BAD_LINK_MESSAGE = "Bad linked input, must be a length-2 list of [node_id, slot_index]"
ERROR_500 = b"500 Internal Server Error\n\nServer got itself in trouble"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tiff")
OUTPUT_DIR = "/srv/comfyui-run/output"

DEFAULT_MODELS: dict[str, list[str]] = {
    "checkpoints": [
        "sd_xl_base_1.0.safetensors",
        "ponyDiffusionV6XL_v6StartWithThisOne.safetensors",
        "RealVisXL_V4.0.safetensors",
        "svd_xt.safetensors",
    ],
    "loras": ["add-detail-xl.safetensors", "pony-style.safetensors", "wan-motion.safetensors"],
    "vae": [
        "sdxl_vae.safetensors",
        "wan_2.1_vae.safetensors",
        "hunyuan_video_vae_bf16.safetensors",
    ],
    "text_encoders": [
        "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
        "clip_l.safetensors",
        "llava_llama3_fp8_scaled.safetensors",
        "t5xxl_fp8_e4m3fn.safetensors",
    ],
    "diffusion_models": [
        "wan2.1_i2v_480p_14B_fp8_scaled.safetensors",
        "hunyuan_video_t2v_720p_bf16.safetensors",
    ],
    "clip_vision": ["clip_vision_h.safetensors"],
    "animatediff_models": ["mm_sdxl_v10_beta.ckpt"],
    "embeddings": [],
    # CogVideoXWrapper's folder lists every file, sub-folders included (repo folders).
    "CogVideo": [
        f"{repo}/{path}"
        for repo, shards in (("CogVideoX-5b", 2), ("CogVideoX-5b-I2V", 3))
        for path in (
            "transformer/config.json",
            "transformer/diffusion_pytorch_model.safetensors.index.json",
            *(
                f"transformer/diffusion_pytorch_model-{n:05d}-of-{shards:05d}.safetensors"
                for n in range(1, shards + 1)
            ),
            "vae/config.json",
            "vae/diffusion_pytorch_model.safetensors",
            "scheduler/scheduler_config.json",
        )
    ],
}

RECORDED_SYSTEM = {
    "os": "posix",
    "ram_total": 25276502016,
    "ram_free": 23865790464,
    "comfyui_version": "0.3.64",
    "required_frontend_version": "1.27.10",
    "installed_templates_version": "0.1.95",
    "required_templates_version": "0.1.95",
    "python_version": "3.11.7 (main, May  9 2026, 07:35:25) [GCC 12.2.0]",
    "pytorch_version": "2.14.1+cu130",
    "embedded_python": False,
    "argv": ["main.py", "--cpu", "--listen", "127.0.0.1", "--port", "8188",
             "--disable-auto-launch"],
}  # fmt: skip
RECORDED_DEVICE = {
    "name": "cpu",
    "type": "cpu",
    "index": None,
    "vram_total": 25276502016,
    "vram_free": 23865790464,
    "torch_vram_total": 25276502016,
    "torch_vram_free": 23865790464,
}

# ---------------------------------------------------------------- small real media files


def png_bytes(
    width: int = 16, height: int = 16, rgb: tuple[int, int, int] = (55, 215, 245)
) -> bytes:
    """A valid RGB PNG (stdlib zlib), for outputs and for tests that need input images."""
    row = b"\x00" + bytes(rgb) * width
    raw = row * height

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return (
            struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _pil_animation(fmt: str, rgb: tuple[int, int, int]) -> bytes:
    from PIL import Image  # pillow ships with matplotlib

    frames = [Image.new("RGB", (16, 16), tuple((c + 40 * i) % 256 for c in rgb)) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], duration=125, loop=0)
    return buf.getvalue()


def webp_bytes(rgb: tuple[int, int, int] = (55, 215, 245)) -> bytes:
    """A small animated WebP (3 frames)."""
    return _pil_animation("WEBP", rgb)


def gif_bytes(rgb: tuple[int, int, int] = (55, 215, 245)) -> bytes:
    """A small animated GIF (3 frames)."""
    return _pil_animation("GIF", rgb)


def _ebml(element_id: bytes, payload: bytes) -> bytes:
    return element_id + bytes([0x80 | len(payload)]) + payload  # 1-byte size (< 127 bytes)


def webm_bytes() -> bytes:
    """An EBML header with DocType webm and an empty Segment: what sniffers call video/webm."""
    header = b"".join(
        [
            _ebml(b"\x42\x86", b"\x01"),  # EBMLVersion
            _ebml(b"\x42\xf7", b"\x01"),  # EBMLReadVersion
            _ebml(b"\x42\xf2", b"\x04"),  # EBMLMaxIDLength
            _ebml(b"\x42\xf3", b"\x08"),  # EBMLMaxSizeLength
            _ebml(b"\x42\x82", b"webm"),  # DocType
            _ebml(b"\x42\x87", b"\x04"),  # DocTypeVersion
            _ebml(b"\x42\x85", b"\x02"),  # DocTypeReadVersion
        ]
    )
    return _ebml(b"\x1a\x45\xdf\xa3", header) + _ebml(b"\x18\x53\x80\x67", b"")


def mp4_bytes() -> bytes:
    """An ISO-BMFF ftyp box plus an empty mdat: what sniffers call video/mp4."""
    ftyp = b"isom" + struct.pack(">I", 0x200) + b"isomiso2avc1mp41"
    return struct.pack(">I", 8 + len(ftyp)) + b"ftyp" + ftyp + struct.pack(">I", 8) + b"mdat"


# ---------------------------------------------------------------- records


@dataclass
class Run:
    """One executed prompt: monotonic start/end and how it ended."""

    prompt_id: str
    started: float
    ended: float = 0.0
    status: str = "running"  # success | error | interrupted


@dataclass
class _Response:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _json(obj: Any, status: int = 200) -> _Response:
    return _Response(status, json.dumps(obj).encode(), JSON_TYPE)


def _empty(status: int = 200) -> _Response:
    return _Response(status)


def _now_ms() -> int:
    return int(time.time() * 1000)


class _LinkError(Exception):
    """A link to a node that is not in the prompt (KeyError in ComfyUI)."""


# ---------------------------------------------------------------- WebSocket connection


class _WSConn:
    """One accepted WebSocket: sans-I/O protocol + socket, writes serialised by a lock."""

    def __init__(self, sock: socket.socket, drop_after: int | None) -> None:
        self.sock = sock
        self.proto = ServerProtocol(state=State.OPEN, max_size=2**20)
        self.lock = threading.Lock()
        self.sent = 0
        self.alive = True
        self.drop_after = drop_after
        self.metadata_previews = False
        self.seen_text = False

    def _flush(self) -> None:
        chunks = self.proto.data_to_send()
        data = b"".join(chunks)
        if data:
            self.sock.sendall(data)
        if b"" in chunks:
            # The protocol asks to close TCP (the server ends the closing handshake).
            self._abort_locked()

    def send(self, payload: str | bytes) -> None:
        with self.lock:
            if not self.alive:
                return
            try:
                if isinstance(payload, str):
                    self.proto.send_text(payload.encode())
                else:
                    self.proto.send_binary(payload)
                self._flush()
            except Exception:  # noqa: BLE001 - a dead peer is a dropped message, as in ComfyUI
                self._abort_locked()
                return
            self.sent += 1
            if self.drop_after is not None and self.sent >= self.drop_after:
                self._abort_locked()

    def receive(self, data: bytes) -> list[Frame]:
        with self.lock:
            self.proto.receive_data(data)
            events = [e for e in self.proto.events_received() if isinstance(e, Frame)]
            try:
                self._flush()
            except OSError:
                self._abort_locked()
            return events

    def abort(self) -> None:
        with self.lock:
            self._abort_locked()

    def _abort_locked(self) -> None:
        self.alive = False
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


# ---------------------------------------------------------------- HTTP plumbing


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: FakeComfyUI

    def __init__(self, address: tuple[str, int], fake: FakeComfyUI) -> None:
        self.fake = fake
        self.conns: set[socket.socket] = set()
        self.conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    def abort_connections(self) -> None:
        with self.conns_lock:
            conns = list(self.conns)
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


# The gateway's refusal, as comfyfleet/fleet/gateway.py words it.
GATEWAY_401 = {
    "error": "unauthorized",
    "message": "missing or wrong token: send the header 'Authorization: Bearer <token>' "
    "(the fleet's gateway token)",
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return

    def setup(self) -> None:
        super().setup()
        # aiohttp sets TCP_NODELAY; without it headers and body (two writes) meet the
        # client's delayed ACK and every answer takes ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.conns_lock:
            self.server.conns.add(self.connection)

    def finish(self) -> None:
        try:
            with contextlib.suppress(OSError):
                super().finish()
        finally:
            with self.server.conns_lock:
                self.server.conns.discard(self.connection)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _read_body(self) -> bytes | None:
        """The request body; None when it is over the upload limit (413 sent)."""
        fake = self.server.fake
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > fake.max_upload_size:
            text = (
                f"Maximum request body size {fake.max_upload_size} exceeded, "
                f"actual body size {length}"
            ).encode()
            self.close_connection = True
            self._send(_Response(413, text, TEXT_TYPE))
            return None
        return self.rfile.read(length) if length else b""

    def _dispatch(self, method: str) -> None:
        fake = self.server.fake
        parts = urlsplit(self.path)
        path = parts.path
        if path.startswith("/api/"):
            path = path[4:]
        query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        with fake._lock:
            fake.requests.append((method, path))
        if fake.gateway_token is not None and not self._gateway_allows(fake, path):
            with fake._lock:
                fake.refused.append((method, path))
            self.close_connection = path == "/ws"
            if method in ("POST", "PUT"):
                # Left unread, a refused body would be parsed as the next request on this
                # kept-alive connection (a stray 501 for the client's next call).
                length = int(self.headers.get("Content-Length") or 0)
                chunked = bool(self.headers.get("Transfer-Encoding"))
                if chunked or length > fake.max_upload_size:
                    self.close_connection = True
                elif length:
                    self.rfile.read(length)
            self._send(_json(GATEWAY_401, 401))
            return
        if fake.gateway_token is not None and path == "/healthz":
            self._send(_Response(200, b"ok", TEXT_TYPE))
            return
        if _origin_forbidden(self.headers.get("Host"), self.headers.get("Origin")):
            self._send(_empty(403))
            return
        if method == "GET" and path == "/ws":
            if self.headers.get("Upgrade", "").lower() == "websocket":
                self._websocket(query)
            else:
                self._send(_Response(400, b"No WebSocket UPGRADE hdr: None", TEXT_TYPE))
            return
        body = b""
        if method in ("POST", "PUT"):
            read = self._read_body()
            if read is None:
                return
            body = read
        try:
            response = fake.handle(method, path, query, body, dict(self.headers.items()))
        except Exception:  # noqa: BLE001 - aiohttp turns any handler exception into this 500
            response = _Response(500, ERROR_500, TEXT_TYPE)
        self._send(response)

    def _gateway_allows(self, fake: FakeComfyUI, path: str) -> bool:
        if path == "/healthz":
            return True
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        return scheme == "Bearer" and hmac.compare_digest(
            token.encode(), (fake.gateway_token or "").encode()
        )

    def _send(self, response: _Response) -> None:
        reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
                  404: "Not Found",
                  405: "Method Not Allowed", 413: "Request Entity Too Large",
                  500: "Internal Server Error"}.get(response.status, "")  # fmt: skip
        try:
            self.send_response_only(response.status, reason)
            self.send_header("Date", formatdate(usegmt=True))
            self.send_header("Server", "Python/3.11 aiohttp/3.11.8")
            if response.content_type:
                self.send_header("Content-Type", response.content_type)
            for key, value in response.headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            if self.command != "HEAD" and response.body:
                self.wfile.write(response.body)
        except OSError:
            self.close_connection = True

    def _websocket(self, query: Mapping[str, str]) -> None:
        fake = self.server.fake
        request = WSRequest(self.path, WSHeaders(list(self.headers.items())))
        answer = ServerProtocol(logger=_WIRE_LOG).accept(request)
        try:
            self.wfile.write(answer.serialize())
        except OSError:
            self.close_connection = True
            return
        if answer.status_code != 101:
            self.close_connection = True
            return
        sid = query.get("clientId") or uuid.uuid4().hex
        conn = _WSConn(self.connection, fake._drop_threshold())
        fake._ws_open(sid, conn)
        try:
            while conn.alive:
                data = self.rfile.read1(65536)
                if not data:
                    break
                for frame in conn.receive(data):
                    if frame.opcode is Opcode.TEXT:
                        fake._ws_text(sid, conn, bytes(frame.data))
                if conn.proto.state is State.CLOSED:
                    break
        except OSError:
            pass
        finally:
            fake._ws_closed(sid, conn)
            conn.abort()
            self.close_connection = True


def _origin_forbidden(host: str | None, origin: str | None) -> bool:
    """ComfyUI's default origin check (server.py:107-141): loopback Host with another Origin."""
    if not host or not origin:
        return False
    host_name = host.rsplit(":", 1)[0].strip("[]").lower()
    if host_name not in ("127.0.0.1", "localhost", "::1"):
        return False
    return urlsplit(origin).netloc.lower() != host.lower()


def _parse_multipart(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match or not content_type.lower().startswith("multipart/form-data"):
        return []
    delimiter = b"--" + match.group(1).encode()
    parts: list[tuple[dict[str, str], bytes]] = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        chunk = chunk.removeprefix(b"\r\n")
        head, _, data = chunk.partition(b"\r\n\r\n")
        data = data.removesuffix(b"\r\n")
        params: dict[str, str] = {}
        for line in head.decode("utf-8", "replace").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-disposition":
                for key, val in re.findall(r';\s*([\w*]+)="([^"]*)"', value):
                    params[key.lower()] = val
            elif name.strip():
                params["header:" + name.strip().lower()] = value.strip()
        parts.append((params, data))
    return parts


# ---------------------------------------------------------------- the fake


class FakeComfyUI:
    """A ComfyUI test double on 127.0.0.1 (see the module docstring for knobs)."""

    def __init__(
        self,
        *,
        models: Mapping[str, list[str]] | None = None,
        execution_time: float = 0.0,
        port: int = 0,
    ) -> None:
        self.models: dict[str, list[str]] = {
            k: list(v) for k, v in (DEFAULT_MODELS if models is None else models).items()
        }
        self.execution_time = execution_time
        self.progress_steps = 3
        self.preview_frames = False
        self.send_progress_state = True
        self.cache_enabled = True
        self.fail_node: str | None = None
        self.fail_class: str | None = None
        self.fail_times: int | None = None
        self.fail_message = "Error while deserializing header: header too small"
        self.fail_exception_type = "safetensors._safetensors_rust.SafetensorError"
        self.drop_ws_after: int | None = None
        self.drop_ws_times: int | None = None
        self.die_after_prompts: int | None = None
        self.max_upload_size = 100 * 2**20
        self.devices: list[dict[str, Any]] = [dict(RECORDED_DEVICE)]
        self.gateway_token: str | None = None
        self.refused: list[tuple[str, str]] = []

        self.files: dict[tuple[str, str, str], bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.accepted: list[list[Any]] = []
        self.timeline: list[Run] = []
        self.free_calls: list[dict[str, Any]] = []
        self.interrupt_calls: list[dict[str, Any]] = []

        self._port = port
        self._lock = threading.RLock()
        self._cv = threading.Condition(self._lock)
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._stopped = threading.Event()
        self._stopped.set()
        self._halt = threading.Event()  # set by stop(): cut sleeps short
        self._reset_runtime()

    def _reset_runtime(self) -> None:
        self._queue: list[tuple[float, str, list[Any]]] = []
        self._running: list[Any] | None = None
        self._running_node: str | None = None
        self._history: dict[str, dict[str, Any]] = {}
        self._number = 0
        self._sockets: dict[str, _WSConn] = {}
        self._cache: dict[str, tuple[str, dict[str, Any] | None]] = {}
        self._interrupt = threading.Event()
        self._completed = 0
        self._drops_scheduled = 0
        self._failures = 0

    # ------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def running(self) -> bool:
        """False once stop() (or a die) has closed the listener and every connection."""
        return not self._stopped.is_set()

    def wait_stopped(self, timeout: float = 10.0) -> bool:
        return self._stopped.wait(timeout)

    def start(self) -> FakeComfyUI:
        if self._server is not None:
            return self
        self._stopping = False
        self._stopped.clear()
        self._halt.clear()
        server = _Server(("127.0.0.1", self._port), self)
        self._port = server.server_address[1]
        self._server = server
        serve = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name="fake-comfyui-http",
        )
        worker = threading.Thread(target=self._worker, daemon=True, name="fake-comfyui-worker")
        self._threads = [serve, worker]
        serve.start()
        worker.start()
        return self

    def stop(self) -> None:
        """Stop serving: close the listener and abort every connection (idempotent)."""
        with self._cv:
            self._stopping = True
            self._halt.set()
            self._interrupt.set()
            self._cv.notify_all()
            server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            server.abort_connections()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=5)
        self._stopped.set()

    def restart(self) -> None:
        """Come back on the same port like a restarted ComfyUI: files and models stay,
        queue, history, cache and sockets are gone."""
        self.stop()
        with self._lock:
            self._reset_runtime()
        self.start()

    def __enter__(self) -> FakeComfyUI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _die(self) -> None:
        # Called from the worker: stop serving without joining ourselves.
        threading.Thread(target=self.stop, daemon=True, name="fake-comfyui-die").start()

    # ------------------------------------------------------------ helpers for tests

    def add_input_image(self, name: str, data: bytes, subfolder: str = "") -> None:
        with self._lock:
            self.files[("input", subfolder, name)] = data

    def history(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._history)

    def idle_gaps(self) -> list[float]:
        """Seconds between one executed prompt's end and the next one's start."""
        with self._lock:
            runs = sorted(self.timeline, key=lambda r: r.started)
        return [b.started - a.ended for a, b in zip(runs, runs[1:], strict=False)]

    def wait_idle(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._queue and self._running is None:
                    return True
            time.sleep(0.01)
        return False

    # ------------------------------------------------------------ object_info

    def _files(self, folder: str) -> list[str]:
        return sorted(self.models.get(folder, []))

    def _input_images(self) -> list[str]:
        with self._lock:
            names = [
                f"{sub}/{name}" if sub else name
                for (kind, sub, name) in self.files
                if kind == "input" and name.lower().endswith(IMAGE_EXTENSIONS)
            ]
        return sorted(names)

    def object_info(self) -> dict[str, Any]:
        return {
            node.name: render_node(node, files=self._files, input_images=self._input_images)
            for node in NODES
        }

    # ------------------------------------------------------------ routing

    def handle(
        self,
        method: str,
        path: str,
        query: Mapping[str, str],
        body: bytes,
        headers: Mapping[str, str],
    ) -> _Response:
        routes: dict[tuple[str, str], Callable[[], _Response]] = {
            ("GET", "/system_stats"): lambda: _json(
                {"system": dict(RECORDED_SYSTEM), "devices": copy.deepcopy(self.devices)}
            ),
            ("GET", "/object_info"): lambda: _json(self.object_info()),
            ("GET", "/models"): lambda: _json(list(MODEL_FOLDERS)),
            ("GET", "/embeddings"): lambda: _json(
                [posixpath.splitext(n)[0] for n in self._files("embeddings")]
            ),
            ("GET", "/features"): lambda: _json(
                {"supports_preview_metadata": True, "max_upload_size": self.max_upload_size}
            ),
            ("GET", "/queue"): self._get_queue,
            ("GET", "/prompt"): lambda: _json(
                {"exec_info": {"queue_remaining": self._queue_remaining()}}
            ),
            ("GET", "/history"): lambda: self._get_history(query),
            ("GET", "/view"): lambda: self._view(query),
            ("POST", "/prompt"): lambda: self._post_prompt(body),
            ("POST", "/queue"): lambda: self._post_queue(body),
            ("POST", "/interrupt"): lambda: self._post_interrupt(body),
            ("POST", "/free"): lambda: self._post_free(body),
            ("POST", "/history"): lambda: self._post_history(body),
            ("POST", "/upload/image"): lambda: self._upload(body, headers),
        }
        route = routes.get((method, path))
        if route is not None:
            return route()
        if method == "GET" and path.startswith("/object_info/"):
            name = path[len("/object_info/") :]
            node = NODES_BY_NAME.get(name)
            if node is None:
                return _json({})
            return _json(
                {name: render_node(node, files=self._files, input_images=self._input_images)}
            )
        if method == "GET" and path.startswith("/models/"):
            folder = path[len("/models/") :]
            if folder not in MODEL_FOLDERS:
                return _empty(404)
            return _json(self._files(folder))
        if method == "GET" and path.startswith("/history/"):
            prompt_id = path[len("/history/") :]
            with self._lock:
                entry = self._history.get(prompt_id)
                return _json({prompt_id: copy.deepcopy(entry)} if entry is not None else {})
        if any(p == path for _, p in routes):
            return _Response(405, b"405: Method Not Allowed", TEXT_TYPE)
        return _Response(404, b"404: Not Found", TEXT_TYPE)

    def _queue_remaining(self) -> int:
        with self._lock:
            return len(self._queue) + (1 if self._running is not None else 0)

    def _get_queue(self) -> _Response:
        with self._lock:
            running = [copy.deepcopy(self._running)] if self._running is not None else []
            pending = [copy.deepcopy(item) for _, _, item in self._queue]
        return _json({"queue_running": running, "queue_pending": pending})

    def _get_history(self, query: Mapping[str, str]) -> _Response:
        max_items = int(query["max_items"]) if "max_items" in query else None
        offset = int(query.get("offset", -1))
        with self._lock:
            keys = list(self._history)
            if offset < 0 and max_items is not None:
                offset = len(keys) - max_items
            out: dict[str, Any] = {}
            for i, key in enumerate(keys):
                if i >= offset:
                    out[key] = copy.deepcopy(self._history[key])
                    if max_items is not None and len(out) >= max_items:
                        break
        return _json(out)

    # ------------------------------------------------------------ /view and uploads

    def _view(self, query: Mapping[str, str]) -> _Response:
        filename = query.get("filename")
        if not filename:
            return _empty(404)
        kind = query.get("type", "output") or "output"
        match = re.fullmatch(r"(.*) \[(output|input|temp)\]", filename)
        if match:
            filename, kind = match.group(1), match.group(2)
        if kind not in ("output", "input", "temp"):
            return _empty(400)
        if filename.startswith("/") or ".." in filename:
            return _empty(400)
        subfolder = query.get("subfolder", "")
        resolved = posixpath.normpath(posixpath.join("/root", subfolder))
        if resolved != "/root" and not resolved.startswith("/root/"):
            return _empty(403)
        subfolder = "" if resolved == "/root" else resolved[len("/root/") :]
        name = posixpath.basename(filename)
        with self._lock:
            data = self.files.get((kind, subfolder, name))
        if data is None:
            return _empty(404)
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if ctype in ("text/html", "text/javascript", "text/css", "application/javascript"):
            ctype = "application/octet-stream"
        elif ctype.startswith("text/"):
            ctype += "; charset=utf-8"
        preview = query.get("preview")
        if preview and ctype.startswith("image/"):
            fmt = preview.split(";")[0] if preview.split(";")[0] in ("webp", "jpeg") else "webp"
            data, ctype = self._reencode(data, fmt), f"image/{fmt}"
        etag = hashlib.sha256(data).hexdigest()[:16]
        return _Response(
            200,
            data,
            ctype,
            {
                "Content-Disposition": f'filename="{name}"',
                "Etag": f'"{etag}"',
                "Last-Modified": formatdate(usegmt=True),
                "Accept-Ranges": "bytes",
            },
        )

    @staticmethod
    def _reencode(data: bytes, fmt: str) -> bytes:
        from PIL import Image

        buf = io.BytesIO()
        Image.open(io.BytesIO(data)).convert("RGB").save(buf, fmt.upper())
        return buf.getvalue()

    def _upload(self, body: bytes, headers: Mapping[str, str]) -> _Response:
        content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
        fields: dict[str, str] = {}
        image: tuple[str, bytes] | None = None
        for params, data in _parse_multipart(body, content_type):
            name = params.get("name", "")
            if name == "image" and "filename" in params:
                image = (params["filename"], data)
            elif name:
                fields[name] = data.decode("utf-8", "replace")
        kind = fields.get("type", "input") or "input"
        if kind not in ("input", "temp", "output"):
            return _Response(500, ERROR_500, TEXT_TYPE)  # UnboundLocalError in get_dir_by_type
        if image is None or not image[0]:
            return _empty(400)
        filename, data = image
        subfolder = fields.get("subfolder", "")
        folder = posixpath.normpath(posixpath.join("/root", subfolder))
        target = posixpath.normpath(posixpath.join(folder, filename))
        if not (folder == "/root" or folder.startswith("/root/")) or not target.startswith(
            folder.rstrip("/") + "/"
        ):
            return _empty(400)
        overwrite = fields.get("overwrite", "").lower() in ("true", "1")
        stem, ext = posixpath.splitext(filename)
        candidate = filename
        with self._lock:
            if not overwrite:
                i = 1
                while (kind, subfolder, candidate) in self.files:
                    if self.files[(kind, subfolder, candidate)] == data:
                        break  # identical bytes: reuse, nothing written
                    candidate = f"{stem} ({i}){ext}"
                    i += 1
            self.files[(kind, subfolder, candidate)] = data
        return _json({"name": candidate, "subfolder": subfolder, "type": kind})

    # ------------------------------------------------------------ control routes

    @staticmethod
    def _body_json(body: bytes, *, empty_ok: bool = False) -> Any:
        if not body.strip() and empty_ok:
            return {}
        return json.loads(body)  # ValueError -> 500, as request.json() does

    def _post_queue(self, body: bytes) -> _Response:
        data = self._body_json(body)
        with self._lock:
            if data.get("clear"):
                self._queue = []
                self._broadcast_status()
            for prompt_id in data.get("delete") or []:
                before = len(self._queue)
                self._queue = [q for q in self._queue if q[1] != prompt_id]
                heapq.heapify(self._queue)
                if len(self._queue) != before:  # ComfyUI announces only real changes
                    self._broadcast_status()
        return _empty()

    def _post_interrupt(self, body: bytes) -> _Response:
        data = self._body_json(body, empty_ok=True)
        with self._lock:
            self.interrupt_calls.append(dict(data) if isinstance(data, dict) else {})
            wanted = data.get("prompt_id") if isinstance(data, dict) else None
            running_id = self._running[1] if self._running is not None else None
            if wanted is None or wanted == running_id:
                self._interrupt.set()
        return _empty()

    def _post_free(self, body: bytes) -> _Response:
        data = self._body_json(body)
        with self._lock:
            self.free_calls.append(dict(data))
        return _empty()

    def _post_history(self, body: bytes) -> _Response:
        data = self._body_json(body)
        with self._lock:
            if data.get("clear"):
                self._history = {}
            for prompt_id in data.get("delete") or []:
                self._history.pop(prompt_id, None)
        return _empty()

    # ------------------------------------------------------------ POST /prompt

    def _post_prompt(self, body: bytes) -> _Response:
        data = self._body_json(body)
        with self._lock:
            if "number" in data:
                number: float = float(data["number"])
            else:
                number = -self._number if data.get("front") else self._number
                self._number += 1
        if "prompt" not in data:
            no_prompt = _prompt_error("no_prompt", "No prompt provided", "No prompt provided")
            return _json({"error": no_prompt, "node_errors": {}}, 400)
        prompt = copy.deepcopy(data["prompt"])
        partial = data.get("partial_execution_targets")
        error, outputs, node_errors = self._validate(prompt, partial)
        if error is not None:
            return _json({"error": error, "node_errors": node_errors}, 400)
        prompt_id = str(data["prompt_id"]) if data.get("prompt_id") else str(uuid.uuid4())
        extra = dict(data.get("extra_data") or {})
        if "client_id" in data:
            extra["client_id"] = data["client_id"]
        shown_number: float | int = number if "number" in data else int(number)
        item = [shown_number, prompt_id, prompt, extra, outputs]
        with self._cv:
            heapq.heappush(self._queue, (number, prompt_id, item))
            self.accepted.append(copy.deepcopy(item))
            self._broadcast_status()
            self._cv.notify_all()
        return _json({"prompt_id": prompt_id, "number": shown_number, "node_errors": node_errors})

    def _validate(
        self, prompt: Any, partial: Any
    ) -> tuple[dict[str, Any] | None, list[str], dict[str, Any]]:
        if isinstance(prompt, list) and not prompt:
            return _prompt_error("prompt_no_outputs", "Prompt has no outputs", ""), [], {}
        if not isinstance(prompt, dict):
            raise TypeError("prompt must be a dict")  # ComfyUI fails with a 500 here
        info = self.object_info()
        for node_id, node in prompt.items():
            if not isinstance(node, dict) or "class_type" not in node:
                return (
                    _prompt_error(
                        "invalid_prompt",
                        "Cannot execute because a node is missing the class_type property.",
                        f"Node ID '#{node_id}'",
                    ),
                    [],
                    {},
                )
            if node["class_type"] not in info:
                return (
                    _prompt_error(
                        "invalid_prompt",
                        f"Cannot execute because node {node['class_type']} does not exist.",
                        f"Node ID '#{node_id}'",
                    ),
                    [],
                    {},
                )
        outputs = [n for n, node in prompt.items() if info[node["class_type"]]["output_node"]]
        if isinstance(partial, list):
            outputs = [o for o in outputs if o in [str(p) for p in partial]]
        if not outputs:
            return _prompt_error("prompt_no_outputs", "Prompt has no outputs", ""), [], {}

        validated: dict[str, tuple[bool, list[dict[str, Any]]]] = {}
        node_errors: dict[str, Any] = {}
        failures: list[tuple[str, list[dict[str, Any]]]] = []
        good: list[str] = []
        for output in outputs:
            try:
                valid, reasons = self._validate_inputs(prompt, output, validated, info)
            except _LinkError as exc:
                valid = False
                reasons = [{
                    "type": "exception_during_validation",
                    "message": "Exception when validating node",
                    "details": f"'{exc.args[0]}'",
                    "extra_info": {
                        "exception_type": "KeyError",
                        "traceback": [
                            '  File "/srv/comfyui/execution.py", line 987, in validate_prompt\n'
                            "    m = await validate_inputs(prompt_id, prompt, o, validated)\n",
                            '  File "/srv/comfyui/execution.py", line 797, in validate_inputs\n'
                            "    o_class_type = prompt[o_id]['class_type']\n",
                        ],
                    },
                }]  # fmt: skip
                validated[output] = (False, reasons)
            if valid:
                good.append(output)
                continue
            failures.append((output, reasons))
            for node_id, (ok, node_reasons) in validated.items():
                if ok or not node_reasons:
                    continue
                entry = node_errors.setdefault(
                    node_id,
                    {"errors": node_reasons, "dependent_outputs": [],
                     "class_type": prompt[node_id]["class_type"]},
                )  # fmt: skip
                if output not in entry["dependent_outputs"]:
                    entry["dependent_outputs"].append(output)
        if not good:
            details = "\n".join(
                f"{r['message']}: {r['details']}" for _, reasons in failures for r in reasons
            )
            error = _prompt_error(
                "prompt_outputs_failed_validation", "Prompt outputs failed validation", details
            )
            return error, [], node_errors
        return None, good, node_errors

    def _validate_inputs(
        self,
        prompt: dict[str, Any],
        node_id: str,
        validated: dict[str, tuple[bool, list[dict[str, Any]]]],
        info: Mapping[str, Any],
    ) -> tuple[bool, list[dict[str, Any]]]:
        if node_id in validated:
            return validated[node_id]
        node = prompt[node_id]
        class_type = node["class_type"]
        inputs = node.setdefault("inputs", {})
        spec = info[class_type]["input"]
        required: dict[str, Any] = spec.get("required", {})
        optional: dict[str, Any] = spec.get("optional", {})
        errors: list[dict[str, Any]] = []
        valid = True
        names = list(required) + [n for n in optional if n in inputs and n not in required]
        for name in names:
            config: list[Any] = required.get(name) or optional[name]
            if name not in inputs:
                errors.append({
                    "type": "required_input_missing",
                    "message": "Required input is missing",
                    "details": name,
                    "extra_info": {"input_name": name},
                })  # fmt: skip
                continue
            value = inputs[name]
            type_input = config[0]
            if isinstance(value, list):
                if len(value) != 2:
                    errors.append({
                        "type": "bad_linked_input",
                        "message": BAD_LINK_MESSAGE,
                        "details": name,
                        "extra_info": {"input_name": name, "input_config": config,
                                       "received_value": value},
                    })  # fmt: skip
                    continue
                source_id = str(value[0])
                if source_id not in prompt:
                    raise _LinkError(source_id)
                source_outputs = info[prompt[source_id]["class_type"]]["output"]
                received = source_outputs[int(value[1])]
                if not _types_match(received, type_input):
                    errors.append({
                        "type": "return_type_mismatch",
                        "message": "Return type mismatch between linked nodes",
                        "details": f"{name}, received_type({received}) mismatch "
                                   f"input_type({type_input})",
                        "extra_info": {"input_name": name, "input_config": config,
                                       "received_type": received, "linked_node": value},
                    })  # fmt: skip
                    continue
                try:
                    ok, _ = self._validate_inputs(prompt, source_id, validated, info)
                except _LinkError as exc:
                    validated[source_id] = (False, [{
                        "type": "exception_during_inner_validation",
                        "message": "Exception when validating inner node",
                        "details": f"'{exc.args[0]}'",
                        "extra_info": {"input_name": name, "input_config": config,
                                       "exception_message": f"'{exc.args[0]}'",
                                       "exception_type": "KeyError", "traceback": [],
                                       "linked_node": value},
                    }])  # fmt: skip
                    ok = False
                if not ok:
                    valid = False
                continue
            if type_input in ("INT", "FLOAT", "STRING", "BOOLEAN"):
                try:
                    if type_input == "INT":
                        value = int(value)
                    elif type_input == "FLOAT":
                        value = float(value)
                    elif type_input == "STRING":
                        value = str(value)
                    else:
                        value = bool(value)
                    inputs[name] = value
                except (TypeError, ValueError) as exc:
                    errors.append({
                        "type": "invalid_input_type",
                        "message": f"Failed to convert an input value to a {type_input} value",
                        "details": f"{name}, {value}, {exc}",
                        "extra_info": {"input_name": name, "input_config": config,
                                       "received_value": value, "exception_message": str(exc)},
                    })  # fmt: skip
                    continue
            options = config[1] if len(config) > 1 and isinstance(config[1], dict) else {}
            if "min" in options and isinstance(value, int | float) and value < options["min"]:
                errors.append({
                    "type": "value_smaller_than_min",
                    "message": f"Value {value} smaller than min of {options['min']}",
                    "details": name,
                    "extra_info": {"input_name": name, "input_config": config,
                                   "received_value": value},
                })  # fmt: skip
                continue
            if "max" in options and isinstance(value, int | float) and value > options["max"]:
                errors.append({
                    "type": "value_bigger_than_max",
                    "message": f"Value {value} bigger than max of {options['max']}",
                    "details": name,
                    "extra_info": {"input_name": name, "input_config": config,
                                   "received_value": value},
                })  # fmt: skip
                continue
            if class_type == "LoadImage" and name == "image":
                # LoadImage.VALIDATE_INPUTS replaces the combo check.
                if not self._input_exists(str(value)):
                    errors.append({
                        "type": "custom_validation_failed",
                        "message": "Custom validation failed for node",
                        "details": f"image - Invalid image file: {value}",
                        "extra_info": {"input_name": "image"},
                    })  # fmt: skip
                continue
            choices = _combo_choices(config)
            if choices is not None and value not in choices:
                too_long = len(choices) > 20
                errors.append({
                    "type": "value_not_in_list",
                    "message": "Value not in list",
                    "details": f"{name}: '{value}' not in "
                               + (f"(list of length {len(choices)})" if too_long else str(choices)),
                    "extra_info": {"input_name": name,
                                   "input_config": None if too_long else config,
                                   "received_value": value},
                })  # fmt: skip
        result = (not errors and valid, errors)
        validated[node_id] = result
        return result

    def _input_exists(self, ref: str) -> bool:
        kind = "input"
        match = re.fullmatch(r"(.*) \[(output|input|temp)\]", ref)
        if match:
            ref, kind = match.group(1), match.group(2)
        subfolder, _, name = ref.rpartition("/")
        with self._lock:
            return (kind, subfolder, name) in self.files

    # ------------------------------------------------------------ WebSocket side

    def _drop_threshold(self) -> int | None:
        with self._lock:
            if self.drop_ws_after is None:
                return None
            if self.drop_ws_times is not None and self._drops_scheduled >= self.drop_ws_times:
                return None
            self._drops_scheduled += 1
            return self.drop_ws_after

    def _ws_open(self, sid: str, conn: _WSConn) -> None:
        with self._lock:
            old = self._sockets.get(sid)
            self._sockets[sid] = conn
            remaining = len(self._queue) + (1 if self._running is not None else 0)
            owns_running = self._running is not None and self._running[3].get("client_id") == sid
            last_node = self._running_node
        if old is not None and old is not conn:
            old.abort()
        conn.send(json.dumps({"type": "status", "data": {
            "status": {"exec_info": {"queue_remaining": remaining}}, "sid": sid}}))  # fmt: skip
        if owns_running and last_node is not None:
            conn.send(json.dumps({"type": "executing", "data": {"node": last_node}}))

    def _ws_closed(self, sid: str, conn: _WSConn) -> None:
        with self._lock:
            if self._sockets.get(sid) is conn:
                del self._sockets[sid]

    def _ws_text(self, sid: str, conn: _WSConn, data: bytes) -> None:
        first = not conn.seen_text
        conn.seen_text = True
        if not first:
            return
        try:
            message = json.loads(data)
        except ValueError:
            return
        if isinstance(message, dict) and message.get("type") == "feature_flags":
            flags = message.get("data") or {}
            conn.metadata_previews = bool(flags.get("supports_preview_metadata"))
            conn.send(json.dumps({"type": "feature_flags", "data": {
                "supports_preview_metadata": True,
                "max_upload_size": self.max_upload_size}}))  # fmt: skip

    def _send(self, sid: str | None, kind: str, data: dict[str, Any]) -> None:
        """Send one event of a prompt: to its client, or broadcast when ComfyUI does."""
        text = json.dumps({"type": kind, "data": data})
        with self._lock:
            if sid is not None:
                targets = [self._sockets[sid]] if sid in self._sockets else []
            elif kind in ("progress", "progress_state", "execution_interrupted", "status"):
                targets = list(self._sockets.values())
            else:
                targets = []
        for conn in targets:
            conn.send(text)

    def _broadcast_status(self) -> None:
        remaining = len(self._queue) + (1 if self._running is not None else 0)
        with self._lock:
            targets = list(self._sockets.values())
        text = json.dumps(
            {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": remaining}}}}
        )
        for conn in targets:
            conn.send(text)

    def _send_preview(self, sid: str | None, prompt_id: str, node_id: str) -> None:
        with self._lock:
            conn = self._sockets.get(sid) if sid is not None else None
        if conn is None:
            return
        image = png_bytes(8, 8, (200, 100, 50))
        if conn.metadata_previews:
            meta = json.dumps({
                "node_id": node_id, "prompt_id": prompt_id, "display_node_id": node_id,
                "parent_node_id": None, "real_node_id": node_id, "image_type": "image/png",
            }).encode()  # fmt: skip
            conn.send(struct.pack(">II", 4, len(meta)) + meta + image)
        else:
            conn.send(struct.pack(">II", 1, 2) + image)

    # ------------------------------------------------------------ the worker

    def _worker(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._stopping:
                    self._cv.wait()
                if self._stopping:
                    return
                _, _, item = heapq.heappop(self._queue)
                self._running = item
                self._interrupt.clear()  # ComfyUI clears the flag when a prompt starts
                self._broadcast_status()
            self._execute(item)
            with self._lock:
                self._completed += 1
                die = (
                    self.die_after_prompts is not None and self._completed >= self.die_after_prompts
                )
            if die:
                self._die()
                return

    def _execute(self, item: list[Any]) -> None:
        number, prompt_id, prompt, extra, outputs = item
        sid = extra.get("client_id")
        run = Run(prompt_id, time.monotonic())
        with self._lock:
            self.timeline.append(run)
        messages: list[list[Any]] = []

        def event(kind: str, data: dict[str, Any], *, record: bool = False) -> None:
            if record:
                messages.append([kind, data])
            self._send(sid, kind, data)

        event("execution_start", {"prompt_id": prompt_id, "timestamp": _now_ms()}, record=True)
        order = _execution_order(prompt, outputs)
        signatures = self._signatures(prompt, order)
        with self._lock:
            cache = dict(self._cache) if self.cache_enabled else {}
        cached = [n for n in order if n in cache and cache[n][0] == signatures[n]]
        cached_data = {"nodes": cached, "prompt_id": prompt_id, "timestamp": _now_ms()}
        event("execution_cached", cached_data, record=True)

        to_run = [n for n in order if n not in cached]
        samplers = [n for n in to_run if prompt[n]["class_type"] in SAMPLER_CLASSES]
        # Absolute end time of each node that spends the prompt's execution time: deadlines
        # from the prompt's start, so wait overshoot and message work do not add up and a
        # prompt takes ``execution_time``, as a fixed-cost GPU job would.
        until: dict[str, float] = {}
        if self.execution_time > 0 and to_run:
            weighted = samplers or to_run
            step = self.execution_time / len(weighted)
            until = {n: run.started + step * (i + 1) for i, n in enumerate(weighted)}

        ui_outputs: dict[str, dict[str, Any]] = {}
        executed: list[str] = []
        states: dict[str, dict[str, Any]] = {}
        new_cache: dict[str, tuple[str, dict[str, Any] | None]] = {}
        outcome = "success"

        def progress_state(node_id: str, value: float, state: str) -> None:
            if not self.send_progress_state:
                return
            states[node_id] = {
                "value": value, "max": 1.0, "state": state, "node_id": node_id,
                "prompt_id": prompt_id, "display_node_id": node_id, "parent_node_id": None,
                "real_node_id": node_id,
            }  # fmt: skip
            event("progress_state", {"prompt_id": prompt_id, "nodes": copy.deepcopy(states)})

        for node_id in order:
            node = prompt[node_id]
            class_type = node["class_type"]
            if node_id in cached:
                ui = cache[node_id][1]
                new_cache[node_id] = cache[node_id]
                if ui is not None:
                    ui_outputs[node_id] = ui
                    event("executed", {"node": node_id, "display_node": node_id, "output": ui,
                                       "prompt_id": prompt_id})  # fmt: skip
                    progress_state(node_id, 1, "finished")
                continue
            if self._interrupt.is_set():
                outcome = "interrupted"
                break
            progress_state(node_id, 0.0, "running")
            with self._lock:
                self._running_node = node_id
            event("executing", {"node": node_id, "display_node": node_id, "prompt_id": prompt_id})
            if self._should_fail(node_id, class_type):
                event("execution_error", self._error_payload(prompt_id, prompt, node_id, executed),
                      record=True)  # fmt: skip
                outcome = "error"
                break
            if not self._spend(sid, prompt_id, node_id, node, until.get(node_id)):
                outcome = "interrupted"
                break
            ui = self._make_outputs(node_id, node, prompt) if _is_output(class_type) else None
            if ui is not None:
                ui_outputs[node_id] = ui
                event("executed", {"node": node_id, "display_node": node_id, "output": ui,
                                   "prompt_id": prompt_id})  # fmt: skip
            executed.append(node_id)
            new_cache[node_id] = (signatures[node_id], ui)
            progress_state(node_id, 1.0, "finished")

        if outcome == "interrupted":
            node_id = self._running_node or (to_run[0] if to_run else "")
            event("execution_interrupted", {
                "prompt_id": prompt_id, "node_id": node_id,
                "node_type": prompt.get(node_id, {}).get("class_type", ""),
                "executed": list(executed), "timestamp": _now_ms()}, record=True)  # fmt: skip
        elif outcome == "success":
            event("execution_success", {"prompt_id": prompt_id, "timestamp": _now_ms()},
                  record=True)  # fmt: skip
        run.ended = time.monotonic()
        run.status = outcome
        with self._lock:
            if self.cache_enabled:
                self._cache = new_cache
            self._history[prompt_id] = {
                "prompt": copy.deepcopy(item),
                "outputs": copy.deepcopy(ui_outputs),
                "status": {
                    "status_str": "success" if outcome == "success" else "error",
                    "completed": outcome == "success",
                    "messages": messages,
                },
                "meta": {
                    n: {"node_id": n, "display_node": n, "parent_node": None, "real_node_id": n}
                    for n in ui_outputs
                },
            }
            self._running = None
            self._running_node = None
            self._broadcast_status()
        if sid is not None:
            self._send(sid, "executing", {"node": None, "prompt_id": prompt_id})

    def _spend(
        self,
        sid: str | None,
        prompt_id: str,
        node_id: str,
        node: Mapping[str, Any],
        until: float | None,
    ) -> bool:
        """Run one node until ``until`` (monotonic; None = no time); sampler nodes report
        progress. False if interrupted."""
        start = time.monotonic()
        seconds = max(0.0, until - start) if until is not None else 0.0
        if node["class_type"] not in SAMPLER_CLASSES:
            # The interrupt flag is checked between nodes: a plain node runs to its end.
            if seconds > 0:
                self._halt.wait(seconds)
            return True
        steps = node.get("inputs", {}).get("steps", 20)
        steps = steps if isinstance(steps, int) and steps > 0 else 20
        count = max(1, min(self.progress_steps, steps))
        for i in range(1, count + 1):
            left = start + seconds * i / count - time.monotonic()
            if self._interrupt.wait(max(0.0, left)):
                return False
            value = round(steps * i / count)
            if self.preview_frames:
                self._send_preview(sid, prompt_id, node_id)
            data = {"value": value, "max": steps, "prompt_id": prompt_id, "node": node_id}
            self._send(sid, "progress", data)
        return not self._interrupt.is_set()

    def _should_fail(self, node_id: str, class_type: str) -> bool:
        if node_id != self.fail_node and class_type != self.fail_class:
            return False
        with self._lock:
            if self.fail_times is not None and self._failures >= self.fail_times:
                return False
            self._failures += 1
        return True

    def _error_payload(
        self, prompt_id: str, prompt: Mapping[str, Any], node_id: str, executed: list[str]
    ) -> dict[str, Any]:
        node = prompt[node_id]
        current = {
            name: [f"<linked output {v[1]} of node {v[0]}>"] if isinstance(v, list) else [v]
            for name, v in node.get("inputs", {}).items()
        }
        return {
            "prompt_id": prompt_id,
            "node_id": node_id,
            "node_type": node["class_type"],
            "executed": list(executed),
            "exception_message": self.fail_message + "\n",
            "exception_type": self.fail_exception_type,
            "traceback": [
                '  File "/srv/comfyui/execution.py", line 496, in execute\n'
                "    output_data, output_ui, has_subgraph, has_pending_tasks = await "
                "get_output_data(...)\n",
            ],
            "current_inputs": current,
            "current_outputs": list(prompt),
            "timestamp": _now_ms(),
        }

    # ------------------------------------------------------------ outputs

    def _signatures(self, prompt: Mapping[str, Any], order: list[str]) -> dict[str, str]:
        sigs: dict[str, str] = {}
        for node_id in order:  # dependencies come first
            node = prompt[node_id]
            parts: list[Any] = [node["class_type"]]
            for name, value in sorted(node.get("inputs", {}).items()):
                if isinstance(value, list) and len(value) == 2 and str(value[0]) in sigs:
                    parts.append([name, sigs[str(value[0])], value[1]])
                else:
                    parts.append([name, value])
            if node["class_type"] == "LoadImage":
                # IS_CHANGED = sha256 of the file: new bytes under the same name re-run it.
                ref = str(node.get("inputs", {}).get("image", ""))
                sub, _, name = ref.rpartition("/")
                with self._lock:
                    data = self.files.get(("input", sub, name), b"")
                parts.append(hashlib.sha256(data).hexdigest())
            sigs[node_id] = hashlib.sha256(
                json.dumps(parts, sort_keys=True, default=str).encode()
            ).hexdigest()
        return sigs

    def _color(self, prompt: Mapping[str, Any]) -> tuple[int, int, int]:
        seeds = [
            n.get("inputs", {}).get("seed") for n in prompt.values()
            if isinstance(n.get("inputs", {}).get("seed"), int)
        ]  # fmt: skip
        digest = hashlib.sha256(json.dumps(seeds or [random.random()]).encode()).digest()
        return digest[0], digest[1], digest[2]

    def _save_name(
        self, kind: str, prefix: str, ext: str, *, trailing: str = "_"
    ) -> tuple[str, str]:
        prefix = prefix.replace("%", "")
        subfolder, _, base = prefix.rpartition("/")
        pattern = re.compile(re.escape(base) + r"_(\d{5})")
        with self._lock:
            counters = [
                int(m.group(1))
                for (k, sub, name) in self.files
                if k == kind and sub == subfolder and (m := pattern.match(name))
            ]
        counter = max(counters, default=0) + 1
        return subfolder, f"{base}_{counter:05}{trailing}.{ext}"

    def _store(self, kind: str, subfolder: str, name: str, data: bytes) -> dict[str, Any]:
        with self._lock:
            self.files[(kind, subfolder, name)] = data
        return {"filename": name, "subfolder": subfolder, "type": kind}

    def _make_outputs(
        self, node_id: str, node: Mapping[str, Any], prompt: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        class_type = node["class_type"]
        inputs = node.get("inputs", {})
        rgb = self._color(prompt)
        prefix = str(inputs.get("filename_prefix") or "ComfyUI")
        if class_type == "SaveImage":
            sub, name = self._save_name("output", prefix, "png")
            return {"images": [self._store("output", sub, name, png_bytes(16, 16, rgb))]}
        if class_type == "PreviewImage":
            letters = "".join(random.choices(string.ascii_lowercase, k=5))
            name = f"ComfyUI_temp_{letters}_00001_.png"
            return {"images": [self._store("temp", "", name, png_bytes(16, 16, rgb))]}
        animated: dict[str, tuple[str, Callable[[], bytes]]] = {
            "SaveAnimatedWEBP": ("webp", lambda: webp_bytes(rgb)),
            "SaveAnimatedPNG": ("png", lambda: png_bytes(16, 16, rgb)),
            "SaveWEBM": ("webm", webm_bytes),
            "SaveVideo": ("mp4", mp4_bytes),
        }
        if class_type in animated:
            ext, make = animated[class_type]
            sub, name = self._save_name("output", prefix, ext)
            return {"images": [self._store("output", sub, name, make())], "animated": [True]}
        if class_type == "VHS_VideoCombine":
            fmt = str(inputs.get("format", "image/gif"))
            ext, data = _vhs_file(fmt, rgb)
            kind = "output" if inputs.get("save_output", True) else "temp"
            sub, name = self._save_name(kind, prefix, ext, trailing="")
            workflow_png = name.rsplit(".", 1)[0] + ".png"
            self._store(kind, sub, workflow_png, png_bytes(4, 4, rgb))
            entry = self._store(kind, sub, name, data)
            entry.update({
                "format": fmt,
                "frame_rate": float(inputs.get("frame_rate", 8)),
                "workflow": workflow_png,
                "fullpath": posixpath.join(OUTPUT_DIR, sub, name),
            })  # fmt: skip
            return {"gifs": [entry]}
        return None


# ---------------------------------------------------------------- pure helpers


def _prompt_error(kind: str, message: str, details: str) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": {}}


def _types_match(received: str, wanted: Any) -> bool:
    if not isinstance(wanted, str) or wanted == "COMBO":
        return True  # a primitive linked into a combo widget
    if "*" in (received, wanted):
        return True
    return bool(set(received.split(",")) & set(wanted.split(",")))


def _combo_choices(config: list[Any]) -> list[Any] | None:
    head = config[0]
    if isinstance(head, list):
        return head
    if head == "COMBO" and len(config) > 1 and isinstance(config[1], dict):
        options = config[1].get("options")
        return list(options) if isinstance(options, list) else None
    return None


def _is_output(class_type: str) -> bool:
    node = NODES_BY_NAME.get(class_type)
    return bool(node and node.output_node)


def _execution_order(prompt: Mapping[str, Any], outputs: list[str]) -> list[str]:
    """Nodes reachable from the outputs, each after the nodes it links to."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(node_id: str) -> None:
        if node_id in seen or node_id not in prompt:
            return
        seen.add(node_id)
        for value in prompt[node_id].get("inputs", {}).values():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                visit(value[0])
        order.append(node_id)

    for output in outputs:
        visit(output)
    return order


def _vhs_file(fmt: str, rgb: tuple[int, int, int]) -> tuple[str, bytes]:
    if fmt == "image/gif" or fmt.endswith("ffmpeg-gif"):
        return "gif", gif_bytes(rgb)
    if fmt == "image/webp":
        return "webp", webp_bytes(rgb)
    if "webm" in fmt:
        return "webm", webm_bytes()
    if fmt.endswith("mkv"):
        return "mkv", webm_bytes()
    if "png" in fmt:
        return "png", png_bytes(16, 16, rgb)
    if fmt.endswith("ProRes"):
        return "mov", mp4_bytes()
    return "mp4", mp4_bytes()


def iter_ws_messages(raw: Iterator[str | bytes]) -> Iterator[dict[str, Any]]:
    """Decode text frames (test helper for raw WebSocket transcripts)."""
    for message in raw:
        if isinstance(message, str):
            yield json.loads(message)
