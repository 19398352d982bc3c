"""The offer query and ranking, and cost = $/h x uptime."""

from __future__ import annotations

import pytest

from comfyfleet.errors import ConfigError
from comfyfleet.fleet.cost import (
    InstanceCost,
    cost_usd,
    format_duration,
    format_usd,
    total_cost_usd,
    uptime_s,
)
from comfyfleet.fleet.offers import OfferQuery, find_offers, rank_offers
from comfyfleet.fleet.vast import Instance, Offer, VastClient
from tests.doubles.vast import FakeVast


def offer(offer_id: int, dph: float, vram_mb: float, reliability: float = 0.99) -> Offer:
    return Offer.from_api(
        {"id": offer_id, "dph_total": dph, "gpu_ram": vram_mb, "num_gpus": 1,
         "reliability": reliability, "disk_space": 500}
    )  # fmt: skip


def test_query_object_follows_the_api_units() -> None:
    q = OfferQuery(min_vram_gb=24, disk_gb=80, gpu_name="RTX_4090", max_dph=0.6,
                   min_reliability=0.98)  # fmt: skip
    api = q.to_api()
    assert api["gpu_ram"] == {"gte": 24000.0}  # MB on the wire; a 24564 MB card passes
    assert api["disk_space"] == {"gte": 80} and api["allocated_storage"] == 80
    assert api["gpu_name"] == {"eq": "RTX 4090"}
    assert api["dph_total"] == {"lte": 0.6} and api["reliability"] == {"gte": 0.98}
    assert api["num_gpus"] == {"eq": 1} and api["rented"] == {"eq": False}
    assert api["verified"] == {"eq": True} and api["type"] == "on-demand"
    bare = OfferQuery(min_vram_gb=12, disk_gb=40).to_api()
    assert "dph_total" not in bare and "gpu_name" not in bare and "reliability" not in bare


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"min_vram_gb": 0, "disk_gb": 10}, "positive"),
     ({"min_vram_gb": 8, "disk_gb": -1}, "positive"),
     ({"min_vram_gb": 8, "disk_gb": 10, "min_reliability": 98}, "not a fraction")],
)  # fmt: skip
def test_bad_queries_are_config_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        OfferQuery(**kwargs)


def test_ranking_is_price_per_gb_of_vram_then_reliability() -> None:
    cheap_small = offer(1, 0.10, 12000)  # 0.00833 $/h/GB
    big = offer(2, 0.40, 80000)  # 0.005
    big_flaky = offer(3, 0.40, 80000, reliability=0.90)  # same price, less reliable
    mid = offer(4, 0.30, 24000)  # 0.0125
    ranked = rank_offers([cheap_small, mid, big_flaky, big])
    assert [o.id for o in ranked] == [2, 3, 1, 4]


def test_find_offers_rechecks_the_caps_on_what_the_server_returns(vast: FakeVast) -> None:
    vast.add_offer(gpu_name="RTX 4090", gpu_ram=24564, dph_base=0.38)
    vast.add_offer(gpu_name="RTX 4090", gpu_ram=24564, dph_base=0.90)
    vast.add_offer(gpu_name="A100 SXM4", gpu_ram=81920, dph_base=1.10)
    vast.add_offer(gpu_name="RTX 3060", gpu_ram=12288, dph_base=0.05)
    vast.add_offer(gpu_name="RTX 4090", gpu_ram=24564, dph_base=0.30, reliability=0.80)
    vast.add_offer(gpu_name="RTX 4090", gpu_ram=24564, dph_base=0.20, verification="unverified")
    vast.add_offer(gpu_name="RTX 4090", gpu_ram=24564, dph_base=0.20, num_gpus=2)
    found = find_offers(VastClient(), OfferQuery(min_vram_gb=24, disk_gb=80, max_dph=1.2,
                                                 min_reliability=0.95))  # fmt: skip
    assert [(o.gpu_name, round(o.dph_total, 2)) for o in found] == [
        ("A100 SXM4", 1.12), ("RTX 4090", 0.4), ("RTX 4090", 0.92)
    ]  # fmt: skip
    # A server that ignored the price cap would not get its offer rented.
    q = OfferQuery(min_vram_gb=24, disk_gb=80, max_dph=0.5)
    assert not q.accepts(offer(9, 0.51, 24564)) and q.accepts(offer(9, 0.5, 24564))


def instance(start: float | None, dph: float, **fields: object) -> Instance:
    return Instance.from_api({"id": 7, "start_date": start, "dph_total": dph, **fields})


def test_cost_is_dph_times_uptime() -> None:
    now = 1_786_400_000.0
    i = instance(now - 5400, 0.40)  # 1.5 h
    assert uptime_s(i, now) == 5400
    assert InstanceCost.of(i, now) == InstanceCost(7, 0.40, 5400, pytest.approx(0.60))
    assert uptime_s(instance(None, 0.4), now) == 0  # no start_date: nothing billed yet
    assert uptime_s(instance(now + 10, 0.4), now) == 0  # clock skew never goes negative
    assert total_cost_usd([i, instance(now - 3600, 1.0)], now) == pytest.approx(1.60)
    assert cost_usd(2.0, 90) == pytest.approx(0.05)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (59, "59s"),
        (61, "1m"),
        (3600 * 3 + 300, "3h05m"),
        (86400 * 2 + 3600 * 4, "2d04h"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_format_usd() -> None:
    assert format_usd(0.01234) == "$0.0123" and format_usd(12.345) == "$12.35"
