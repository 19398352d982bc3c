"""Which instances of a fleet to destroy, decided by a pure function of what the API shows.

:func:`instances_to_reap` looks at each instance once, in this order, and names the first
reason that applies:

``failed``
    ``actual_status`` is ``exited``, ``unknown`` or ``offline``: vast.ai says these never
    become ``running`` on their own (vast-api.md §4.5), while the disk keeps billing.
``boot-timeout``
    not ``running`` ``boot_timeout_s`` after the rent (stuck pulling the image, or a host
    that never starts it).
``warmup-failed``
    its warm-up failed (``warmup_failed``: the ids whose ``comfyfleet.warmup.finished`` event
    says so, with why): reaped at once, whatever its age. Or running for
    ``warmup_timeout_s`` without passing its warm-up; only judged when the caller knows
    which instances are ready (``ready``: the ids whose ``comfyfleet.instance.ready``
    arrived); without that knowledge nothing is reaped for it.
``max-age``
    rented more than ``max_age_s`` ago, busy or not: the cap on any one instance's bill.
``idle``
    no work for ``idle_s``. Idle time runs from the last sign of work: the caller's
    ``last_active`` (epoch seconds: what the instance's gateway says of its last proxied
    request, :func:`fleet_activity`) or, without one, the rent.
    A GPU busier than ``busy_gpu_util`` right now (the API's ``gpu_util`` sample) counts as
    work now. A stopped instance is idle too (it still bills its disk).

Any limit set to ``None`` is not applied. Each decision carries the instance's $/h and its
cost so far, so a report can say what the destroy saves.

:func:`reap` applies the decisions to a fleet (or to every instance comfyfleet rented:
never to an instance without a ``comfyfleet:`` label) and reports what it destroyed. Given
an event source (:mod:`comfyfleet.fleet.instance_events`) it derives ``ready`` and
``warmup_failed`` from the instances' own events; given ``activity`` (the fleet's gateways),
``last_active``, and a gateway that answers counts as a passed warm-up even while the ready
event is still on its way or was lost (:func:`~comfyfleet.fleet.instance_events.warmup_passed`,
the rule the batch reads too).
The warm-up timeout applies only to instances whose on-start script
reports its warm-up (the fleet script, recognised by the wheel it installs,
``COMFYFLEET_WHEEL_SHA256`` in their env): one started by any other script never sends a
ready event, and silence from it says nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from comfyfleet.errors import FleetError, VastUnavailable
from comfyfleet.fleet.access import GATEWAY_PORT, fleet_endpoints
from comfyfleet.fleet.cost import cost_usd, uptime_s
from comfyfleet.fleet.instance_events import EventSource, verdicts, warmup_passed
from comfyfleet.fleet.labels import fleet_label, fleet_of
from comfyfleet.fleet.release import ReleaseReport, release
from comfyfleet.fleet.vast import Instance, VastClient
from comfyfleet.fleet.wheel import WHEEL_SHA256_ENV

BAD_ENDINGS = frozenset({"exited", "unknown", "offline"})
REASONS = ("failed", "boot-timeout", "warmup-failed", "max-age", "idle")
# The gateway's activity answer (comfyfleet.fleet.gateway.ACTIVITY_PATH; the core fleet
# modules do not import the gateway, which pulls in uvicorn).
ACTIVITY_PATH = "/comfyfleet/activity"
ACTIVITY_TIMEOUT_S = 5.0
# Epoch seconds of each instance's last work, from its gateway.
Activity = Callable[[Sequence[Instance], float], Mapping[int, float]]


@dataclass(frozen=True)
class ReapPolicy:
    """The limits (seconds); ``None`` turns one off. Defaults: 30 min idle, 12 h of age,
    15 min to boot, 20 min from running to a passed warm-up, GPU busy above 5 %."""

    idle_s: float | None = 30 * 60.0
    max_age_s: float | None = 12 * 3600.0
    boot_timeout_s: float | None = 15 * 60.0
    warmup_timeout_s: float | None = 20 * 60.0
    busy_gpu_util: float = 0.05


@dataclass(frozen=True)
class ReapDecision:
    """One instance to destroy, why, and what it costs."""

    instance: Instance
    reason: str
    detail: str
    dph_total: float
    cost_so_far_usd: float


def idle_seconds(
    instance: Instance,
    now: float,
    last_active: float | None = None,
    *,
    busy_gpu_util: float = ReapPolicy.busy_gpu_util,
) -> float:
    """Seconds since the last sign of work (see the module docstring; 0 when busy now)."""
    gpu_util = instance.raw.get("gpu_util")
    if instance.actual_status == "running" and isinstance(gpu_util, int | float):
        # Fractions (0-1) on the wire; tolerate a percent-style value as well.
        util = gpu_util / 100.0 if gpu_util > 1 else float(gpu_util)
        if util > busy_gpu_util:
            return 0.0
    since = max(instance.start_date or now, last_active or 0.0)
    return max(0.0, now - since)


def _reason(
    instance: Instance,
    now: float,
    policy: ReapPolicy,
    last_active: float | None,
    ready: Set[int] | None,
    warmup_failed: Mapping[int, str],
) -> tuple[str, str] | None:
    age = uptime_s(instance, now)
    status = instance.actual_status
    if status in BAD_ENDINGS:
        return "failed", f"status {status}: {instance.status_msg or 'no message'}"
    if instance.id in warmup_failed:
        return "warmup-failed", f"its warm-up failed: {warmup_failed[instance.id]}"
    running = status == "running"
    stopped = instance.intended_status == "stopped" or status == "stopped"
    boot_limit, warmup_limit = policy.boot_timeout_s, policy.warmup_timeout_s
    if not running and not stopped and boot_limit is not None and age > boot_limit:
        return "boot-timeout", (
            f"still {instance.status} after {age / 60:.0f} min (limit {boot_limit / 60:.0f})"
        )
    waiting_for_warmup = running and ready is not None and instance.id not in ready
    if waiting_for_warmup and warmup_limit is not None and age > warmup_limit:
        return "warmup-failed", (
            f"running {age / 60:.0f} min without passing its warm-up "
            f"(limit {warmup_limit / 60:.0f})"
        )
    if policy.max_age_s is not None and age > policy.max_age_s:
        return "max-age", f"rented {age / 3600:.1f} h ago (limit {policy.max_age_s / 3600:g} h)"
    if policy.idle_s is not None and (running or stopped):
        idle = idle_seconds(instance, now, last_active, busy_gpu_util=policy.busy_gpu_util)
        if idle > policy.idle_s:
            return "idle", f"idle {idle / 60:.0f} min (limit {policy.idle_s / 60:.0f})"
    return None


def instances_to_reap(
    instances: Iterable[Instance],
    now: float,
    policy: ReapPolicy,
    *,
    last_active: Mapping[int, float] | None = None,
    ready: Set[int] | None = None,
    warmup_failed: Mapping[int, str] | None = None,
) -> list[ReapDecision]:
    """The instances to destroy now, each with its reason (see the module docstring)."""
    decisions = []
    for instance in instances:
        active = (last_active or {}).get(instance.id)
        found = _reason(instance, now, policy, active, ready, warmup_failed or {})
        if found is None:
            continue
        reason, detail = found
        decisions.append(
            ReapDecision(
                instance=instance,
                reason=reason,
                detail=detail,
                dph_total=instance.dph_total,
                cost_so_far_usd=cost_usd(instance.dph_total, uptime_s(instance, now)),
            )
        )
    return decisions


@dataclass
class ReapReport:
    """What one reaper pass saw, decided and did."""

    fleet: str | None
    checked: int
    decisions: list[ReapDecision]
    released: ReleaseReport
    dry_run: bool = False

    @property
    def destroyed(self) -> list[ReapDecision]:
        done = set(self.released.destroyed) | set(self.released.already_gone)
        return [d for d in self.decisions if d.instance.id in done]

    @property
    def dph_stopped(self) -> float:
        """USD per hour no longer billed after this pass."""
        return sum(d.dph_total for d in self.destroyed)

    @property
    def cost_so_far_usd(self) -> float:
        """What the destroyed instances had cost until now."""
        return sum(d.cost_so_far_usd for d in self.destroyed)

    def raise_for_failures(self) -> None:
        """:class:`VastUnavailable` (a retry may cure it) or :class:`FleetError` when an
        instance the pass decided to destroy is still there."""
        failed = self.released.failed
        if not failed:
            return
        first_id, first = next(iter(failed.items()))
        kind = VastUnavailable if self.released.transient else FleetError
        raise kind(
            f"reaper destroyed {len(self.released.destroyed)} of {len(self.decisions)} "
            f"instance(s); {len(failed)} failed ({first_id}: {first})",
            hint="the next pass tries again; or run "
            f"`comfyfleet instances down {' '.join(map(str, failed))}`",
        )


def reap(
    client: VastClient,
    policy: ReapPolicy,
    *,
    now: float,
    fleet: str | None = None,
    last_active: Mapping[int, float] | None = None,
    ready: Set[int] | None = None,
    events: EventSource | None = None,
    activity: Activity | None = None,
    dry_run: bool = False,
) -> ReapReport:
    """One reaper pass over ``fleet`` (None: every comfyfleet fleet). ``events`` and
    ``activity`` fill ``ready``, the failed warm-ups and ``last_active`` (see the module
    docstring). Instances it could not destroy are in ``released.failed``;
    :meth:`ReapReport.raise_for_failures` turns them into an error once the report is out."""
    label = fleet_label(fleet) if fleet else None
    instances = [i for i in client.list_instances(label=label) if fleet_of(i.label)]
    failed: dict[int, str] = {}
    answered = activity(instances, now) if activity is not None else {}
    last_active = {**answered, **(last_active or {})}
    if events is not None and instances:
        said = verdicts(events([i.id for i in instances]))
        failed = {i: e.detail for i, e in said.items() if e.failed}
        # Silence is only evidence from an instance whose script would have spoken.
        ready = set(ready or ()) | {
            i.id
            for i in instances
            if not reports_warmup(i)
            or warmup_passed(said.get(i.id), gateway_answers=i.id in answered)
        }
        ready -= set(failed)
    elif ready is not None:
        ready = set(ready) | (set(answered) - set(failed))
    decisions = instances_to_reap(
        instances, now, policy, last_active=last_active, ready=ready, warmup_failed=failed
    )
    released = ReleaseReport() if dry_run else release(client, [d.instance.id for d in decisions])
    return ReapReport(fleet, len(instances), decisions, released, dry_run)


def reports_warmup(instance: Instance) -> bool:
    """Whether the instance runs the fleet on-start script, which reports its warm-up with
    events (it installs the comfyfleet wheel, so its env carries the wheel's sha256)."""
    return bool(instance.extra_env.get(WHEEL_SHA256_ENV))


def gateway_activity(
    instance: Instance, now: float, *, port: int = GATEWAY_PORT, timeout: float = ACTIVITY_TIMEOUT_S
) -> float | None:
    """When the instance's gateway last relayed work (``now`` while a request is in flight;
    its start when nothing came through since), or None when it cannot say (not running,
    unreachable, an older gateway without the endpoint). Asked with the fleet's token."""
    found = fleet_endpoints([instance], port)
    if instance.actual_status != "running" or not found:
        return None
    endpoint = found[0]
    try:
        with httpx.Client(timeout=timeout, trust_env=False) as http:
            answer = http.get(endpoint.url + ACTIVITY_PATH, headers=endpoint.headers)
        if answer.status_code != 200:
            return None
        data = answer.json()
    except (httpx.HTTPError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("in_flight"), int) and data["in_flight"] > 0:
        return now
    for key in ("last_request_at", "started_at"):
        value = data.get(key)
        if isinstance(value, int | float):
            return float(value)
    return None


def fleet_activity(instances: Sequence[Instance], now: float) -> dict[int, float]:
    """:data:`Activity` over the instances' gateways (those that cannot say are left out:
    their idle time runs from the rent). Asked in parallel: an unreachable gateway costs
    its timeout once, not once per instance."""
    if not instances:
        return {}
    with ThreadPoolExecutor(max_workers=min(16, len(instances))) as pool:
        seen = list(pool.map(lambda i: gateway_activity(i, now), instances))
    return {i.id: t for i, t in zip(instances, seen, strict=True) if t is not None}
