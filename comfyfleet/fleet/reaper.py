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
    running for ``warmup_timeout_s`` without passing its warm-up. Only judged when the
    caller knows which instances are ready (``ready``: the ids whose
    ``comfyfleet.instance.ready`` arrived); without that knowledge nothing is reaped for it.
``max-age``
    rented more than ``max_age_s`` ago, busy or not: the cap on any one instance's bill.
``idle``
    no work for ``idle_s``. Idle time runs from the last sign of work: the caller's
    ``last_active`` (epoch seconds of the instance's last job) or, without one, the rent.
    A GPU busier than ``busy_gpu_util`` right now (the API's ``gpu_util`` sample) counts as
    work now. A stopped instance is idle too (it still bills its disk).

Any limit set to ``None`` is not applied. Each decision carries the instance's $/h and its
cost so far, so a report can say what the destroy saves.

:func:`reap` applies the decisions to a fleet (or to every instance comfyfleet rented:
never to an instance without a ``comfyfleet:`` label) and reports what it destroyed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass

from comfyfleet.errors import FleetError, VastUnavailable
from comfyfleet.fleet.cost import cost_usd, uptime_s
from comfyfleet.fleet.labels import fleet_label, fleet_of
from comfyfleet.fleet.release import ReleaseReport, release
from comfyfleet.fleet.vast import Instance, VastClient

BAD_ENDINGS = frozenset({"exited", "unknown", "offline"})
REASONS = ("failed", "boot-timeout", "warmup-failed", "max-age", "idle")


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
) -> tuple[str, str] | None:
    age = uptime_s(instance, now)
    status = instance.actual_status
    if status in BAD_ENDINGS:
        return "failed", f"status {status}: {instance.status_msg or 'no message'}"
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
) -> list[ReapDecision]:
    """The instances to destroy now, each with its reason (see the module docstring)."""
    decisions = []
    for instance in instances:
        found = _reason(instance, now, policy, (last_active or {}).get(instance.id), ready)
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
    dry_run: bool = False,
) -> ReapReport:
    """One reaper pass over ``fleet`` (None: every comfyfleet fleet). Instances it could
    not destroy are in ``released.failed``; :meth:`ReapReport.raise_for_failures` turns
    them into an error once the report is out."""
    label = fleet_label(fleet) if fleet else None
    instances = [i for i in client.list_instances(label=label) if fleet_of(i.label)]
    decisions = instances_to_reap(instances, now, policy, last_active=last_active, ready=ready)
    released = ReleaseReport() if dry_run else release(client, [d.instance.id for d in decisions])
    return ReapReport(fleet, len(instances), decisions, released, dry_run)
