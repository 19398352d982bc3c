"""Which of a fleet's instances can take jobs, and their ComfyUI endpoints with the token.

An instance is **ready** when vast.ai says ``running`` with the gateway's port published, the
gateway answers ``/healthz``, and ComfyUI answers ``/system_stats`` *through* the gateway with
the fleet's token (``/healthz`` alone says nothing about the ComfyUI behind it). The fleet
script starts its gateway only once the warm-up passed, so that answer is also the warm-up's
word (:func:`~comfyfleet.fleet.instance_events.warmup_passed`, the rule the reaper reads too),
and it comes seconds before the ``comfyfleet.instance.ready`` event can be read back.

**With the instances' events** (an :data:`~comfyfleet.fleet.instance_events.EventSource`,
which ``fleet-batch`` reads from Prefect's event store) one whose
``comfyfleet.warmup.finished`` event reports a failure is failed at once and never probed
again, so the caller releases it without waiting out the timeout; without events
(``generate --fleet`` from a shell with no Prefect server) it is only never ready.

Either way an instance in ``exited``/``unknown``/``offline`` has failed for good (vast.ai
never brings those back).

:class:`ReadyWatch` yields each instance the moment it is ready, so ``fleet-batch`` starts
the batch on the first and lets the others join as they come;
:meth:`ReadyWatch.run_to_end` waits for all of them.

The endpoints are :class:`~comfyfleet.generate.endpoints.ComfyEndpoint` objects named
``instance-<id>`` (the ``endpoint`` column of ``results.parquet``) with the token as a
``SecretStr``: they go straight to the batch driver, never to a command line, a flow
parameter, a log line or a result.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import httpx
from pydantic import SecretStr

from comfyfleet.errors import FleetError
from comfyfleet.fleet.access import GATEWAY_PORT, Endpoint, fleet_endpoints
from comfyfleet.fleet.instance_events import (
    EventSource,
    InstanceEvent,
    verdicts,
    warmup_passed,
)
from comfyfleet.fleet.labels import fleet_label
from comfyfleet.fleet.reaper import BAD_ENDINGS
from comfyfleet.fleet.vast import Instance, VastClient
from comfyfleet.generate.endpoints import ComfyEndpoint
from comfyfleet.warmup.events import INSTANCE_READY

PROBE_TIMEOUT_S = 5.0
POLL_S = 2.0


def endpoint_name(instance_id: int) -> str:
    """The name results rows carry for the instance that ran a job."""
    return f"instance-{instance_id}"


def comfy_endpoint(endpoint: Endpoint) -> ComfyEndpoint:
    return ComfyEndpoint(
        url=endpoint.url,
        name=endpoint_name(endpoint.instance_id),
        token=SecretStr(endpoint.token),
    )


def probe(endpoint: Endpoint, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when the gateway and the ComfyUI behind it answer, else why not (no token in it)."""
    try:
        with httpx.Client(timeout=timeout) as http:
            health = http.get(f"{endpoint.url}/healthz")
            if health.status_code != 200:
                return f"gateway /healthz answered {health.status_code}"
            stats = http.get(f"{endpoint.url}/system_stats", headers=endpoint.headers)
            if stats.status_code != 200:
                return f"ComfyUI behind the gateway answered {stats.status_code}"
    except httpx.HTTPError as exc:
        return f"gateway unreachable ({type(exc).__name__})"
    return None


@dataclass
class Readiness:
    """The outcome of waiting: endpoints of the ready instances, why the others are not,
    and which of those failed for good (gone, a bad status, a failed warm-up)."""

    ready: dict[int, Endpoint] = field(default_factory=dict)
    not_ready: dict[int, str] = field(default_factory=dict)
    failed: set[int] = field(default_factory=set)
    instances: dict[int, Instance] = field(default_factory=dict)  # last seen

    def comfy_endpoints(self) -> list[ComfyEndpoint]:
        return [comfy_endpoint(self.ready[i]) for i in sorted(self.ready)]


def _check(
    instance: Instance,
    port: int,
    prober: Callable[[Endpoint], str | None],
    verdict: InstanceEvent | None,
    by_events: bool,
) -> tuple[Endpoint | None, str, bool]:
    """(endpoint if ready, why not, failed for good)."""
    status = instance.actual_status
    if status in BAD_ENDINGS:
        return None, f"status {status}: {instance.status_msg or 'no message'}", True
    if verdict is not None and verdict.failed:
        return None, f"warm-up failed: {verdict.detail}", True
    found = fleet_endpoints([instance], port)
    if status != "running" or not found:
        return None, f"status {status or 'provisioning'}", False
    why = prober(found[0])
    # Jobs need both: a passed warm-up (the rule the reaper reads too) and an answer now.
    if why is None and warmup_passed(verdict, gateway_answers=True):
        return found[0], "", False
    if by_events and verdict is None:
        why = f"{why}; no {INSTANCE_READY} event yet"
    return None, why or "", False


class ReadyWatch:
    """Poll a fleet until every instance of ``instance_ids`` (default: all of the fleet's) is
    ready or failed for good, ``timeout_s`` passed, or :meth:`stop` was called; iterating
    yields each instance's endpoint the moment it is ready.

    An instance is ready once the probe passes (see the module docstring). With ``events``
    (:mod:`comfyfleet.fleet.instance_events`) one whose warm-up finished event says it failed
    is failed at once, and ``on_failed(id, why)`` is called then (the caller releases it
    without waiting for the others). An instance that is gone counts as failed.
    :attr:`readiness` holds the outcome (complete once iteration ended); unready instances
    raise nothing: the caller decides (release them, run on the rest). :meth:`stop` may be
    called from any thread: the watch ends before its next probe, and the ones still pending
    are reported not ready with the reason it was given."""

    def __init__(
        self,
        client: VastClient,
        fleet: str,
        instance_ids: Iterable[int] | None = None,
        *,
        timeout_s: float,
        events: EventSource | None = None,
        on_failed: Callable[[int, str], None] | None = None,
        port: int = GATEWAY_PORT,
        poll_s: float = POLL_S,
        prober: Callable[[Endpoint], str | None] = probe,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.client = client
        self.label = fleet_label(fleet)
        self.wanted = None if instance_ids is None else set(instance_ids)
        self.timeout_s = timeout_s
        self.events = events
        self.on_failed = on_failed
        self.port = port
        self.poll_s = poll_s
        self.prober = prober
        self.clock = clock
        self._stop = threading.Event()
        self._stopped_why = ""
        # Default: a sleep that stop() cuts short.
        self.sleep = sleep or self._stop.wait
        self.readiness = Readiness()

    def stop(self, why: str = "when the watch was stopped") -> None:
        """End the watch early (from any thread); ``why`` goes into each pending one's
        reason ("not ready <why> (N s of the timeout): ...")."""
        self._stopped_why = self._stopped_why or why
        self._stop.set()

    def run_to_end(self) -> Readiness:
        """Wait until every instance is ready or failed for good, or the timeout passed."""
        for _ in self:
            pass
        return self.readiness

    def __iter__(self) -> Iterator[Endpoint]:
        out = self.readiness
        started = self.clock()
        deadline = started + self.timeout_s
        while not self._stop.is_set():
            seen = {i.id: i for i in self.client.list_instances(label=self.label)}
            targets = set(seen) if self.wanted is None else self.wanted
            out.instances.update({i: seen[i] for i in targets if i in seen})
            pending = sorted(targets - set(out.ready) - out.failed)
            events = self.events
            said = verdicts(events(pending)) if events is not None and pending else {}
            for instance_id in pending:
                if self._stop.is_set():
                    break
                instance = seen.get(instance_id)
                if instance is None:
                    endpoint, why, failed = None, "gone (destroyed or never created)", True
                else:
                    endpoint, why, failed = _check(
                        instance, self.port, self.prober, said.get(instance_id), events is not None
                    )
                if endpoint is not None:
                    out.ready[instance_id] = endpoint
                    out.not_ready.pop(instance_id, None)
                    yield endpoint
                    continue
                out.not_ready[instance_id] = why
                if failed:
                    out.failed.add(instance_id)
                    if self.on_failed is not None:
                        self.on_failed(instance_id, why)
            if not (targets - set(out.ready) - out.failed) or self.clock() >= deadline:
                break
            self.sleep(min(self.poll_s, max(0.0, deadline - self.clock())))
        timed_out = self.clock() >= deadline
        for instance_id in set(out.not_ready) - out.failed:
            why = out.not_ready[instance_id]
            if timed_out:
                out.not_ready[instance_id] = f"not ready after {self.timeout_s:g} s: {why}"
            else:
                waited = self.clock() - started
                out.not_ready[instance_id] = (
                    f"not ready {self._stopped_why} ({waited:.0f} s of {self.timeout_s:g}): {why}"
                )


def ready_endpoints(
    client: VastClient,
    fleet: str,
    *,
    timeout_s: float = 0.0,
    events: EventSource | None = None,
) -> list[ComfyEndpoint]:
    """The endpoints of ``fleet``'s ready instances (``generate --fleet``); FleetError when
    none is ready."""
    readiness = ReadyWatch(client, fleet, timeout_s=timeout_s, events=events).run_to_end()
    if not readiness.ready:
        detail = "; ".join(f"{i}: {why}" for i, why in sorted(readiness.not_ready.items()))
        raise FleetError(
            f"fleet {fleet} has no ready instance" + (f" ({detail})" if detail else ""),
            hint=f"rent some: comfyfleet instances up --fleet {fleet} --count N --profile P; "
            f"watch them: comfyfleet instances ls --fleet {fleet}",
        )
    return readiness.comfy_endpoints()
