"""Which offers fit: the search query sent to vast.ai and the ranking shown to the operator.

The query asks for what a ComfyUI host needs (vast-api.md §2.2-2.4): one GPU (ComfyUI runs
one prompt at a time on one device, so extra GPUs would be paid for and idle) with at least
``min_vram_gb`` (the API counts ``gpu_ram`` in MB; GB x 1000 as the CLI does, which a 24 GB
card's 24564 MB passes), at least ``disk_gb`` free (``allocated_storage``, which also prices
the disk into ``dph_total``), verified, rentable, not rented, on-demand. Optional: a GPU
name, a price cap, a reliability floor.

The ranking is $/h per GB of VRAM (cheapest VRAM first), then reliability, then price. The
server's filter is authoritative; :func:`find_offers` checks the caps again on what comes
back, because renting a host above the operator's price cap is the one mistake that costs
money.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from comfyfleet.errors import ConfigError
from comfyfleet.fleet.vast import Offer, VastClient

DEFAULT_SEARCH_LIMIT = 64


@dataclass(frozen=True)
class OfferQuery:
    """What the operator asked for (``instances offers`` / ``instances up``)."""

    min_vram_gb: float
    disk_gb: float
    gpu_name: str | None = None
    max_dph: float | None = None
    min_reliability: float | None = None
    limit: int = DEFAULT_SEARCH_LIMIT

    def __post_init__(self) -> None:
        if self.min_vram_gb <= 0 or self.disk_gb <= 0:
            raise ConfigError(
                f"offer search needs positive VRAM and disk (got {self.min_vram_gb:g} GB "
                f"VRAM, {self.disk_gb:g} GB disk)",
                hint="pass --min-vram GB and --disk GB, e.g. --min-vram 24 --disk 80",
            )
        if self.min_reliability is not None and not 0 <= self.min_reliability <= 1:
            raise ConfigError(
                f"--min-reliability {self.min_reliability:g} is not a fraction",
                hint="reliability is 0-1 as vast.ai reports it, e.g. 0.98",
            )

    def to_api(self) -> dict[str, Any]:
        """The §2.2 query object."""
        query: dict[str, Any] = {
            "verified": {"eq": True},
            "external": {"eq": False},
            "rentable": {"eq": True},
            "rented": {"eq": False},
            "num_gpus": {"eq": 1},
            "gpu_ram": {"gte": self.min_vram_gb * 1000.0},
            "disk_space": {"gte": self.disk_gb},
            "order": [["dph_total", "asc"]],
            "type": "on-demand",
            "allocated_storage": self.disk_gb,
            "limit": self.limit,
        }
        if self.gpu_name:
            query["gpu_name"] = {"eq": self.gpu_name.replace("_", " ")}
        if self.max_dph is not None:
            query["dph_total"] = {"lte": self.max_dph}
        if self.min_reliability is not None:
            query["reliability"] = {"gte": self.min_reliability}
        return query

    def accepts(self, offer: Offer) -> bool:
        """The caps checked again on an offer the server returned."""
        return (
            offer.gpu_ram >= self.min_vram_gb * 1000.0
            and offer.disk_space >= self.disk_gb
            and (self.max_dph is None or offer.dph_total <= self.max_dph)
            and (self.min_reliability is None or offer.reliability >= self.min_reliability)
        )


def rank_offers(offers: Iterable[Offer]) -> list[Offer]:
    """Cheapest VRAM first; ties go to the more reliable, then the cheaper offer."""
    return sorted(offers, key=lambda o: (o.dph_per_vram_gb, -o.reliability, o.dph_total, o.id))


def find_offers(client: VastClient, query: OfferQuery) -> list[Offer]:
    """Offers matching ``query``, ranked."""
    return rank_offers(o for o in client.search_offers(query.to_api()) if query.accepts(o))
