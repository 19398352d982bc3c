"""Prompt tracking: what ComfyUI has said about one prompt, and when it is finished.

Completion follows ComfyUI's contract (reference/comfyui-api.md §2): a prompt is finished
only at ``executing`` with ``node: null`` for its id, which ComfyUI sends after writing the
history entry. The WebSocket is an accelerator, not the source of truth: a dropped socket, a
reconnect gap or a prompt submitted by someone else all fall back to ``GET /history/<id>``.

- :class:`PromptTrack` folds WebSocket events and a history entry into one record and turns
  it into a :class:`PromptResult` or the error ComfyUI reported;
- :class:`PromptFollower` is the wait loop: it reads the prompt's events, polls history when
  the socket cannot tell (down, reconnect gap, foreign prompt, long silence) and gives up at
  the caller's timeout or when ComfyUI stays unreachable.

HTTP stays in :mod:`comfyfleet.comfy.client`; the follower gets it as two callables.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from comfyfleet.errors import (
    ComfyConnectionError,
    ComfyError,
    ComfyExecutionError,
    ComfyInterrupted,
    ComfyTimeout,
)

from .ws import CONNECTION_EVENT, ProgressEvent

ProgressCallback = Callable[[ProgressEvent], None]

# WebSocket message types that reach the caller's progress callback.
PROGRESS_TYPES = frozenset(
    {
        "execution_start",
        "execution_cached",
        "executing",
        "progress",
        "executed",
        "execution_success",
    }
)


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class OutputFile:
    """One file a prompt produced, as listed in its history entry.

    ``kind`` is the history key it came under (``images``, ``gifs`` for VideoHelperSuite,
    ``audio``, ...), except that entries of a node that also reports ``animated: [true]``
    (SaveAnimatedWEBP/PNG, SaveWEBM, SaveVideo) get ``animated``: ComfyUI lists videos
    under ``images``.
    """

    node_id: str
    filename: str
    subfolder: str
    type: str
    kind: str
    format: str = ""  # VHS_VideoCombine's format, e.g. "video/h264-mp4"

    @property
    def ref(self) -> str:
        return f"{self.subfolder}/{self.filename}" if self.subfolder else self.filename

    @property
    def is_video(self) -> bool:
        return self.kind in ("animated", "gifs", "video") or self.filename.lower().endswith(
            (".mp4", ".webm", ".mkv", ".mov", ".gif")
        )


@dataclass
class PromptResult:
    """A finished prompt: its output files, execution time and the nodes served from cache.

    ``seconds`` is ComfyUI's own execution time (``execution_start`` to
    ``execution_success`` timestamps) when it reported them, else the time we waited.
    """

    prompt_id: str
    outputs: list[OutputFile]
    seconds: float
    cached_nodes: list[str]
    raw_outputs: dict[str, Any] = field(default_factory=dict, repr=False)


def parse_outputs(outputs: Mapping[str, Any]) -> list[OutputFile]:
    """Every file in a history ``outputs`` dict (or the ``executed`` outputs collected)."""
    files: list[OutputFile] = []
    for node_id, ui in outputs.items():
        if not isinstance(ui, Mapping):
            continue
        animated = ui.get("animated")
        is_animated = isinstance(animated, list | tuple) and any(bool(a) for a in animated)
        for key, items in ui.items():
            if key == "animated" or not isinstance(items, list | tuple):
                continue
            for item in items:
                if not isinstance(item, Mapping) or "filename" not in item:
                    continue
                kind = "animated" if key == "images" and is_animated else str(key)
                files.append(
                    OutputFile(
                        node_id=str(node_id),
                        filename=str(item["filename"]),
                        subfolder=str(item.get("subfolder") or ""),
                        type=str(item.get("type") or "output"),
                        kind=kind,
                        format=str(item.get("format") or ""),
                    )
                )
    return files


def execution_hint(exception_type: str, message: str) -> str | None:
    """The fix for an ``execution_error`` we recognise (corrupt model, out of VRAM)."""
    text = f"{exception_type} {message}".lower()
    if "safetensor" in text or "header too small" in text or "incomplete" in text:
        return (
            "a model file is truncated or corrupt: re-pull it (comfyfleet warmup verifies sha256)"
        )
    if "outofmemory" in text or "out of memory" in text:
        return "not enough VRAM: lower the resolution/frames, or free() models between stages"
    return None


# ---------------------------------------------------------------- one prompt's record

# The status messages of a history entry that say how the prompt went.
_HISTORY_KINDS = frozenset(
    {
        "execution_start",
        "execution_cached",
        "execution_success",
        "execution_error",
        "execution_interrupted",
    }
)


class PromptLost(Exception):
    """Neither queued nor in history: waiting longer would never end."""


@dataclass
class PromptTrack:
    """What ComfyUI has told us about one prompt so far (events, then its history entry)."""

    started: float | None = None
    start_ms: int | None = None
    end_ms: int | None = None
    cached: list[str] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    success: bool = False
    status_str: str = ""
    error: dict[str, Any] | None = None
    interrupted: dict[str, Any] | None = None

    def absorb(self, kind: str, data: Mapping[str, Any], *, live: bool = True) -> bool:
        """Record one message; True when it is the final ``executing`` (node null).

        ``live``: a WebSocket event (its arrival starts our own clock); history messages
        only fill in what the events did not say.
        """
        if kind == "execution_start":
            if live:
                self.started = time.monotonic()
            self.start_ms = int_or_none(data.get("timestamp")) or self.start_ms
        elif kind == "execution_cached":
            self.cached = [str(n) for n in data.get("nodes") or []]
        elif kind == "executed":
            node = data.get("node")
            if node is not None and isinstance(data.get("output"), Mapping):
                self.outputs[str(node)] = dict(data["output"])
        elif kind == "execution_success":
            self.success = True
            self.end_ms = int_or_none(data.get("timestamp")) or self.end_ms
        elif kind == "execution_error":
            self.error = dict(data)
        elif kind == "execution_interrupted":
            self.interrupted = dict(data)
        elif kind == "executing" and "node" in data and data.get("node") is None:
            return True
        return False

    def merge_history(self, entry: Mapping[str, Any]) -> None:
        """Fold in a ``/history/<id>`` entry: its outputs and status messages are the truth."""
        raw = entry.get("outputs")
        if isinstance(raw, Mapping) and (raw or not self.outputs):
            self.outputs = dict(raw)
        status = entry.get("status") if isinstance(entry.get("status"), Mapping) else {}
        self.status_str = str((status or {}).get("status_str") or self.status_str)
        for item in (status or {}).get("messages") or []:
            if not (isinstance(item, list | tuple) and len(item) == 2):
                continue
            if item[0] in _HISTORY_KINDS and isinstance(item[1], Mapping):
                self.absorb(str(item[0]), item[1], live=False)

    def raise_failure(self, prompt_id: str) -> None:
        """Raise what went wrong, if anything did (error, interrupt, history status)."""
        if self.error is not None:
            message = str(self.error.get("exception_message") or "")
            exception_type = str(self.error.get("exception_type") or "")
            raise ComfyExecutionError(
                prompt_id=prompt_id,
                node_id=str(self.error.get("node_id") or ""),
                node_type=str(self.error.get("node_type") or ""),
                exception_message=message,
                exception_type=exception_type,
                hint=execution_hint(exception_type, message),
            )
        if self.interrupted is not None:
            raise ComfyInterrupted(
                f"prompt {prompt_id} was interrupted in node {self.interrupted.get('node_id')} "
                f"({self.interrupted.get('node_type')})",
                hint="an /interrupt stopped it; resubmit to run it again",
            )
        if self.status_str == "error":
            raise ComfyError(f"prompt {prompt_id} failed in ComfyUI (history status 'error')")

    def result(self, prompt_id: str, entry: Mapping[str, Any] | None, began: float) -> PromptResult:
        """The finished prompt (history ``entry`` folded in), or the error it ended with."""
        if entry is not None:
            self.merge_history(entry)
        self.raise_failure(prompt_id)
        if self.start_ms is not None and self.end_ms is not None and self.end_ms >= self.start_ms:
            seconds = (self.end_ms - self.start_ms) / 1000.0
        else:
            seconds = time.monotonic() - (self.started or began)
        return PromptResult(
            prompt_id=prompt_id,
            outputs=parse_outputs(self.outputs),
            seconds=seconds,
            cached_nodes=list(self.cached),
            raw_outputs=dict(self.outputs),
        )


# ---------------------------------------------------------------- the wait loop


@dataclass
class PollPolicy:
    """``interval``: history poll period while the socket cannot tell; ``idle``: silence
    after which history is checked anyway; ``unreachable``: how long ComfyUI may stay
    unreachable before the wait fails."""

    interval: float
    idle: float
    unreachable: float


class PromptFollower:
    """Follows one prompt to its end (see the module docstring).

    ``events``: the prompt's WebSocket queue; ``connected``/``generation``: the socket's
    state; ``history(prompt_id)`` and ``queued_ids()``: ComfyUI's HTTP answers;
    ``foreign``: the prompt's events may not reach us (submitted elsewhere, or while the
    socket was down), so history is polled from the start.
    """

    def __init__(
        self,
        prompt_id: str,
        *,
        events: queue.SimpleQueue[dict[str, Any]],
        connected: Callable[[], bool],
        generation: int,
        history: Callable[[str], dict[str, Any] | None],
        queued_ids: Callable[[], set[str]],
        history_quiet: Callable[[str], dict[str, Any] | None],
        foreign: bool,
        policy: PollPolicy,
        timeout: float | None,
        on_progress: ProgressCallback | None,
    ) -> None:
        self.prompt_id = prompt_id
        self.events = events
        self.connected = connected
        self.generation = generation
        self.history = history
        self.queued_ids = queued_ids
        self.history_quiet = history_quiet
        self.foreign = foreign
        self.policy = policy
        self.timeout = timeout
        self.on_progress = on_progress
        self.track = PromptTrack()
        self.began = time.monotonic()
        self.deadline = None if timeout is None else self.began + timeout
        self.poll_now = foreign or not connected()
        self.last_heard = self.began
        self.last_poll = float("-inf")
        self.unreachable_since: float | None = None

    def run(self) -> PromptResult:
        while True:
            now = time.monotonic()
            self._check_deadline(now)
            if self._poll_due(now):
                entry = self._poll(now)
                if entry is not None:
                    return self.track.result(self.prompt_id, entry, self.began)
            wait_for = self.policy.interval
            if self.deadline is not None:
                wait_for = max(0.0, min(wait_for, self.deadline - now))
            try:
                message = self.events.get(timeout=wait_for)
            except queue.Empty:
                continue
            if self._on_message(message):
                entry = self.history_quiet(self.prompt_id)
                return self.track.result(self.prompt_id, entry, self.began)

    def _check_deadline(self, now: float) -> None:
        if self.deadline is not None and now >= self.deadline:
            raise ComfyTimeout(
                f"prompt {self.prompt_id} did not finish within {self.timeout:g} s",
                hint="it may still be queued or running in ComfyUI: raise the timeout, "
                "or interrupt it",
            )

    def _blind(self) -> bool:
        """The socket cannot tell us: down, HTTP failing, or events go to another client."""
        return self.foreign or not self.connected() or self.unreachable_since is not None

    def _poll_due(self, now: float) -> bool:
        return (
            self.poll_now
            or (self._blind() and now - self.last_poll >= self.policy.interval)
            or now - max(self.last_heard, self.last_poll) >= self.policy.idle
        )

    def _poll(self, now: float) -> dict[str, Any] | None:
        """The history entry once the prompt is done, else None; raises when it is lost or
        ComfyUI stayed unreachable too long."""
        check_queue = self.poll_now or self._blind()
        self.poll_now = False
        self.last_poll = now
        try:
            in_queue = self.prompt_id in self.queued_ids() if check_queue else True
            entry = self.history(self.prompt_id)
            if entry is None and not in_queue:
                raise PromptLost(self.prompt_id)
            self.unreachable_since = None
            return entry
        except PromptLost:
            raise ComfyConnectionError(
                f"prompt {self.prompt_id} is neither queued nor in ComfyUI's history",
                hint="ComfyUI restarted or the prompt was deleted from its queue; resubmit it",
            ) from None
        except ComfyConnectionError:
            self.unreachable_since = self.unreachable_since or now
            if now - self.unreachable_since >= self.policy.unreachable:
                raise
            return None

    def _on_message(self, message: Mapping[str, Any]) -> bool:
        """Handle one queued message; True when the prompt finished."""
        self.last_heard = time.monotonic()
        kind = message.get("type")
        data = message.get("data") or {}
        if kind == CONNECTION_EVENT:
            if data.get("connected") and data.get("generation") != self.generation:
                self.generation = int(data.get("generation") or 0)
                self.poll_now = True  # events during the gap are lost: ask history
            elif not data.get("connected"):
                self.poll_now = True
            return False
        if self.track.absorb(str(kind), data):
            return True
        if self.on_progress is not None and kind in PROGRESS_TYPES:
            self.on_progress(progress_event(self.prompt_id, str(kind), data))
        return False


def int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def progress_event(prompt_id: str, kind: str, data: Mapping[str, Any]) -> ProgressEvent:
    node = data.get("node")
    return ProgressEvent(
        prompt_id=prompt_id,
        type=kind,
        node=None if node is None else str(node),
        value=int_or_none(data.get("value")),
        max=int_or_none(data.get("max")),
        data=dict(data),
    )
