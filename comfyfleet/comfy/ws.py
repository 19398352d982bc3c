"""One WebSocket per client, shared by every thread that waits on a prompt.

ComfyUI sends a prompt's events only to the socket whose ``clientId`` submitted it, and it
buffers nothing: an event sent while no socket is connected is lost. So the listener
connects before the first ``POST /prompt`` and keeps one connection open; a background thread
reads it and puts each message on the queue of the prompt it belongs to (``data.prompt_id``).
Waiters read their own queue, so a slow progress callback never holds up other prompts.

When the socket drops, the listener tells every waiter (a ``_connection`` message) and
reconnects with backoff; waiters then fall back to ``/history/<id>``, the source of truth.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any

from websockets.exceptions import WebSocketException
from websockets.sync.client import ClientConnection, connect

log = logging.getLogger(__name__)
# websockets logs every handshake header at DEBUG, the bearer token included: its protocol
# logger is this one, kept at INFO whatever the root level is.
_wire_log = logging.getLogger(f"{__name__}.wire")
_wire_log.setLevel(logging.INFO)

# Pseudo message type the listener puts on every waiter's queue when the socket goes up/down.
CONNECTION_EVENT = "_connection"


@dataclass(frozen=True)
class ProgressEvent:
    """One thing ComfyUI told us about a prompt, for progress callbacks.

    ``type`` is the WebSocket message type: ``execution_start``, ``execution_cached``
    (``nodes`` in ``data``), ``executing`` (``node``), ``progress`` (``node``, ``value``,
    ``max``), ``executed`` (``node``, ``data["output"]``), ``execution_success``.
    """

    prompt_id: str
    type: str
    node: str | None = None
    value: int | None = None
    max: int | None = None
    data: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def fraction(self) -> float | None:
        """value/max for ``progress`` events, else None."""
        if self.value is None or not self.max:
            return None
        return self.value / self.max


Message = dict[str, Any]


class EventListener:
    """Reads ComfyUI's WebSocket in a daemon thread and routes messages by prompt id."""

    def __repr__(self) -> str:
        return f"EventListener({self.ws_url!r}, connected={self.connected})"

    def __init__(
        self,
        ws_url: str,
        *,
        open_timeout: float = 10.0,
        max_backoff: float = 5.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.ws_url = ws_url
        # Sent with the handshake (the gateway's bearer token); never logged.
        self._headers = dict(headers or {})
        self.open_timeout = open_timeout
        self.max_backoff = max_backoff
        self._lock = threading.Lock()
        self._queues: dict[str, queue.SimpleQueue[Message]] = {}
        self._thread: threading.Thread | None = None
        self._ws: ClientConnection | None = None
        self._connected = threading.Event()
        self._attempted = threading.Event()
        self._closing = threading.Event()
        self._generation = 0
        self.last_error: str | None = None
        self.sid: str | None = None

    # ------------------------------------------------------------ state

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def generation(self) -> int:
        """Incremented on every successful (re)connect; a change means events may be lost."""
        return self._generation

    def start(self, timeout: float | None = None) -> bool:
        """Start the reader thread if needed; wait up to ``timeout`` s for a connection.

        Returns whether the socket is connected. Not being connected is not an error here:
        waiters fall back to polling, and the reader keeps reconnecting.
        """
        with self._lock:
            if self._closing.is_set():
                return False
            if self._thread is None or not self._thread.is_alive():
                self._attempted.clear()
                self._thread = threading.Thread(
                    target=self._run, name="comfy-ws-listener", daemon=True
                )
                self._thread.start()
        # Set after the first attempt either way: a refused connection returns at once.
        self._attempted.wait(self.open_timeout if timeout is None else timeout)
        return self._connected.is_set()

    def watch(self, prompt_id: str) -> queue.SimpleQueue[Message]:
        """The queue that receives this prompt's messages (created on first call)."""
        with self._lock:
            q = self._queues.get(prompt_id)
            if q is None:
                q = queue.SimpleQueue()
                self._queues[prompt_id] = q
            return q

    def is_watched(self, prompt_id: str) -> bool:
        with self._lock:
            return prompt_id in self._queues

    def unwatch(self, prompt_id: str) -> None:
        with self._lock:
            self._queues.pop(prompt_id, None)

    def close(self) -> None:
        """Stop the reader and close the socket (idempotent)."""
        self._closing.set()
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(OSError, WebSocketException):
                ws.close()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    # ------------------------------------------------------------ reader thread

    def _run(self) -> None:
        backoff = 0.1
        while not self._closing.is_set():
            try:
                client = connect(
                    self.ws_url,
                    open_timeout=self.open_timeout,
                    close_timeout=1,
                    max_size=None,
                    # ComfyUI answers pings; 20 s finds a dead peer without chatter.
                    ping_interval=20,
                    ping_timeout=20,
                    additional_headers=self._headers or None,
                    logger=_wire_log,
                )
                with client:
                    self._ws = client
                    backoff = 0.1
                    self._on_connected()
                    for raw in client:
                        if isinstance(raw, str):
                            self._dispatch(raw)
                        # Binary frames are previews / progress text: not needed by waiters.
            except (OSError, WebSocketException, TimeoutError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.debug("ComfyUI WebSocket %s: %s", self.ws_url, self.last_error)
            finally:
                self._ws = None
                self._attempted.set()
                if self._connected.is_set():
                    self._connected.clear()
                    self._broadcast({"type": CONNECTION_EVENT, "data": {"connected": False}})
            if self._closing.wait(backoff):
                break
            backoff = min(backoff * 2, self.max_backoff)

    def _on_connected(self) -> None:
        with self._lock:
            self._generation += 1
            generation = self._generation
        self._connected.set()
        self._attempted.set()
        self._broadcast(
            {"type": CONNECTION_EVENT, "data": {"connected": True, "generation": generation}}
        )

    def _dispatch(self, raw: str) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            log.debug("ComfyUI sent a non-JSON text frame: %.80r", raw)
            return
        if not isinstance(message, dict):
            return
        data = message.get("data")
        if not isinstance(data, dict):
            return
        if message.get("type") == "status" and "sid" in data:
            self.sid = str(data["sid"])
        prompt_id = data.get("prompt_id")
        if not isinstance(prompt_id, str):
            return  # status broadcasts and the reconnect 'executing' carry no prompt id
        with self._lock:
            q = self._queues.get(prompt_id)
        if q is not None:
            q.put(message)

    def _broadcast(self, message: Message) -> None:
        with self._lock:
            queues = list(self._queues.values())
        for q in queues:
            q.put(message)
