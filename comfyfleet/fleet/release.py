"""Destroy instances and say exactly what happened to each: destroyed, already gone, or
failed (with the error's one line). Used by ``instances down``, the reaper, ``fleet-batch``'s
``finally`` and, by the rent's mark (:func:`release_rent`), its cancellation hook; a failure
on one instance never stops the others."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from comfyfleet.errors import ComfyfleetError, is_transient
from comfyfleet.fleet.labels import fleet_label
from comfyfleet.fleet.rent import RENT_ID_ENV
from comfyfleet.fleet.vast import VastClient


@dataclass
class ReleaseReport:
    destroyed: list[int] = field(default_factory=list)
    already_gone: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)  # id -> the error's one line
    transient: bool = True  # every failure was one a retry may cure

    @property
    def ok(self) -> bool:
        return not self.failed


def release(client: VastClient, instance_ids: Iterable[int]) -> ReleaseReport:
    """Destroy every id (each once, in order), collecting the outcome of each."""
    report = ReleaseReport()
    for instance_id in dict.fromkeys(instance_ids):
        try:
            if client.destroy_instance(instance_id, missing_ok=True):
                report.destroyed.append(instance_id)
            else:
                report.already_gone.append(instance_id)
        except ComfyfleetError as exc:
            report.failed[instance_id] = exc.one_line()
            report.transient = report.transient and is_transient(exc)
    return report


def release_rent(client: VastClient, fleet: str, rent_id: str) -> ReleaseReport:
    """Destroy every instance of ``fleet`` one rent created (its ``COMFYFLEET_RENT_ID``
    mark): the clean-up of a run that can no longer say which ids it rented."""
    ids = [
        i.id
        for i in client.list_instances(label=fleet_label(fleet))
        if rent_id and i.extra_env.get(RENT_ID_ENV) == rent_id
    ]
    return release(client, ids)
