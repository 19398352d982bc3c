"""One row per instance for ``instances ls`` and the reaper's report: status, $/h, uptime,
cost so far and the ComfyUI endpoint (its gateway's URL) once the instance runs. The
gateway token is never part of a row."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from comfyfleet.fleet.access import GATEWAY_PORT
from comfyfleet.fleet.cost import InstanceCost
from comfyfleet.fleet.labels import fleet_of
from comfyfleet.fleet.vast import Instance


@dataclass(frozen=True)
class InstanceRow:
    id: int
    fleet: str | None
    status: str
    status_msg: str | None
    gpu_name: str
    dph_total: float
    uptime_s: float
    cost_usd: float
    endpoint: str | None

    @classmethod
    def of(cls, instance: Instance, now: float, port: int = GATEWAY_PORT) -> InstanceRow:
        cost = InstanceCost.of(instance, now)
        return cls(
            id=instance.id,
            fleet=fleet_of(instance.label),
            status=instance.status,
            status_msg=instance.status_msg,
            gpu_name=instance.gpu_name,
            dph_total=instance.dph_total,
            uptime_s=cost.uptime_s,
            cost_usd=cost.cost_usd,
            endpoint=instance.endpoint(port),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "fleet": self.fleet,
            "status": self.status,
            "status_msg": self.status_msg,
            "gpu_name": self.gpu_name,
            "dph_total": round(self.dph_total, 6),
            "uptime_s": round(self.uptime_s, 1),
            "cost_usd": round(self.cost_usd, 6),
            "endpoint": self.endpoint,
        }
