"""What an instance's own events say about its warm-up: the fleet's source of readiness.

The fleet on-start script emits two events per boot, both with the resource
``comfyfleet.instance.<label>`` (``<label>`` is ``VAST_CONTAINERLABEL``, ``C.<id>``, or the
bare ``CONTAINER_ID``; :mod:`comfyfleet.warmup.events`):

- ``comfyfleet.warmup.finished``: the warm-up report plus ``exit_code``; non-zero means the
  warm-up failed and the script stops ComfyUI (no ready event follows, ever, for this boot).
- ``comfyfleet.instance.ready``: the warm-up passed and the gateway answers; its payload
  carries ``contract_id`` (vast.ai's numeric id) and ``endpoint``.

:func:`parse_event` turns one stored event into an :class:`InstanceEvent` (vast.ai id,
kind, verdict); :func:`verdicts` keeps each instance's latest *decisive* event (a ready one
or a failed warm-up: a passed ``finished`` only says the gateway is about to start), so an
instance rebooted after a failure counts by what its last boot said. :func:`warmup_passed`
is the one rule that turns a verdict and the gateway's answer into "warmed up".

An :data:`EventSource` is how the core reads them without importing Prefect: a callable
that returns the events seen so far for some instance ids. ``flows/fleet.py`` supplies one
over Prefect's event store (``POST /api/events/filter``); without one (``generate --fleet``
from a shell with no Prefect server) the fleet falls back to probing the gateways alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from comfyfleet.warmup.events import (
    INSTANCE_READY,
    INSTANCE_RESOURCE_PREFIX,
    WARMUP_FINISHED,
    instance_resource,
)

EVENT_NAMES: tuple[str, ...] = (INSTANCE_READY, WARMUP_FINISHED)

Kind = Literal["ready", "warmup-finished"]


@dataclass(frozen=True)
class InstanceEvent:
    """One event of one instance: ``ok`` False only for a failed warm-up."""

    instance_id: int
    kind: Kind
    occurred: float  # epoch seconds
    ok: bool = True
    detail: str = ""  # why a warm-up failed, or the ready endpoint

    @property
    def failed(self) -> bool:
        return self.kind == "warmup-finished" and not self.ok


# The events seen so far for these vast.ai instance ids (any order; unknown ids ignored).
EventSource = Callable[[Sequence[int]], Iterable[InstanceEvent]]


def resource_ids(instance_id: int) -> list[str]:
    """The resource ids an instance's events may carry: ``C.<id>`` (``VAST_CONTAINERLABEL``,
    what vast.ai sets) or ``<id>`` (``CONTAINER_ID``, the script's fallback)."""
    return [instance_resource(f"C.{instance_id}"), instance_resource(str(instance_id))]


def _vast_id(value: Any) -> int | None:
    text = str(value or "").strip().removeprefix("C.")
    return int(text) if text.isdigit() else None


def _failure(payload: Mapping[str, Any]) -> str | None:
    """Why the warm-up failed, or None when it passed. The script's own test is the exit
    code (it emits no ready event when it is non-zero); ``ok`` when there is none."""
    code = payload.get("exit_code")
    failed = code not in (0, "0") if code is not None else payload.get("ok") is False
    if not failed:
        return None
    error = payload.get("error")
    message = error.get("message") if isinstance(error, dict) else None
    verdict = payload.get("verdict")
    return str(message or (f"verdict {verdict}" if verdict else "") or f"exit code {code}")


def parse_event(
    name: str, resource_id: str, payload: Mapping[str, Any], occurred: float
) -> InstanceEvent | None:
    """The :class:`InstanceEvent` of one stored event, or None for an event that is not an
    instance's ready/finished event or names no vast.ai instance. The payload's
    ``contract_id`` wins over the resource (a label that is not ``C.<id>``)."""
    if name not in EVENT_NAMES or not resource_id.startswith(INSTANCE_RESOURCE_PREFIX):
        return None
    instance_id = _vast_id(payload.get("contract_id")) or _vast_id(
        resource_id.removeprefix(INSTANCE_RESOURCE_PREFIX)
    )
    if instance_id is None:
        return None
    if name == INSTANCE_READY:
        return InstanceEvent(instance_id, "ready", occurred, True, str(payload.get("endpoint", "")))
    why = _failure(payload)
    return InstanceEvent(instance_id, "warmup-finished", occurred, why is None, why or "")


def verdicts(events: Iterable[InstanceEvent]) -> dict[int, InstanceEvent]:
    """Each instance's latest decisive event: ready, or a failed warm-up."""
    out: dict[int, InstanceEvent] = {}
    for event in sorted(events, key=lambda e: e.occurred):
        if event.kind == "ready" or event.failed:
            out[event.instance_id] = event
    return out


def warmup_passed(verdict: InstanceEvent | None, *, gateway_answers: bool) -> bool:
    """Whether an instance's warm-up passed, from its latest decisive event and whether its
    gateway answers with the fleet's token. The one rule the batch (who gets jobs) and the
    reaper (who is past its warm-up) both read:

    - a failed warm-up is the last word, whatever answers;
    - a ready event says it passed;
    - so does an answering gateway: the fleet script starts it only after the warm-up
      passed, and its answer is there seconds before the event is (Prefect's event store
      saves every few seconds), or at all when the instance could not reach the server.
    """
    if verdict is not None and verdict.failed:
        return False
    return gateway_answers or (verdict is not None and verdict.kind == "ready")
