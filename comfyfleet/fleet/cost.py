"""Cost as a first-class number: $/h x uptime, per instance and summed over a fleet.

vast.ai bills per second (vast-api.md §4.5). ``dph_total`` is the instance's full hourly
price (GPU + the disk it was rented with); uptime runs from ``start_date`` (the rent) to
``now``. GPU charges only begin at ``running`` while disk is charged from creation, so this
is the upper bound of what the instance has cost, which is the number an operator wants
when deciding what to release.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from comfyfleet.fleet.vast import Instance


def uptime_s(instance: Instance, now: float) -> float:
    """Seconds since the instance was rented (0 when the API gave no ``start_date``)."""
    if instance.start_date is None:
        return 0.0
    return max(0.0, now - instance.start_date)


def cost_usd(dph: float, seconds: float) -> float:
    """``dph`` USD per hour over ``seconds``."""
    return max(0.0, dph) * max(0.0, seconds) / 3600.0


@dataclass(frozen=True)
class InstanceCost:
    """What one instance has cost so far."""

    instance_id: int
    dph_total: float
    uptime_s: float
    cost_usd: float

    @classmethod
    def of(cls, instance: Instance, now: float) -> InstanceCost:
        up = uptime_s(instance, now)
        return cls(instance.id, instance.dph_total, up, cost_usd(instance.dph_total, up))


def total_cost_usd(instances: Iterable[Instance], now: float) -> float:
    """Summed cost so far of ``instances``."""
    return sum(InstanceCost.of(i, now).cost_usd for i in instances)


def format_usd(amount: float) -> str:
    """``$0.0123`` below a dollar (fractions of a cent matter per output), else ``$12.34``."""
    return f"${amount:.4f}" if abs(amount) < 1 else f"${amount:,.2f}"


def format_duration(seconds: float) -> str:
    """``42s``, ``17m``, ``3h05m``, ``2d04h``: uptime at a glance."""
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"
