"""The vast.ai client against the test server: calls, typed records, every error path, and
the key kept out of everything a user can see."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
from pydantic import SecretStr

from comfyfleet.errors import (
    ConfigError,
    InstanceNotFound,
    InsufficientCredit,
    OfferGone,
    VastAuthError,
    VastError,
    VastRateLimited,
    VastUnavailable,
    is_transient,
)
from comfyfleet.fleet.vast import DEFAULT_VAST_URL, Instance, Offer, VastClient, VastSettings
from tests.doubles.vast import TEST_KEY, FakeVast


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def client(sleep: Sleeps | None = None, **settings: float) -> VastClient:
    return VastClient(
        settings=VastSettings(**settings), sleep=sleep if sleep is not None else Sleeps()
    )  # type: ignore[arg-type]


def rent(c: VastClient, offer_id: int, label: str = "comfyfleet:t") -> int:
    return c.create_instance(
        offer_id,
        image="vastai/comfy:v0.19.3-cuda-12.9-py312",
        disk_gb=40,
        label=label,
        onstart="echo hi",
        env={"COMFYFLEET_PROFILE": "image", "-p 8188:8188": "1"},
    )


def test_key_and_server_come_from_env_or_arguments(
    vast: FakeVast, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert VastClient().url == vast.url
    monkeypatch.delenv("VAST_URL")
    assert VastClient().url == DEFAULT_VAST_URL
    monkeypatch.delenv("VAST_API_KEY")
    with pytest.raises(ConfigError, match="no vast.ai API key") as caught:
        VastClient()
    assert "VAST_API_KEY" in (caught.value.hint or "")
    # A Prefect block hands over a SecretStr: it works and stays hidden.
    c = VastClient(SecretStr(TEST_KEY), url=vast.url + "/")
    assert c.url == vast.url and TEST_KEY not in repr(c)
    vast.add_offer()
    assert len(c.search_offers({})) == 1
    assert vast.requests[-1].headers["authorization"] == f"Bearer {TEST_KEY}"
    assert "api_key" not in vast.requests[-1].query  # never in a URL that could be logged


def test_search_returns_typed_offers_with_the_api_units(vast: FakeVast) -> None:
    vast.add_offer(gpu_name="RTX 4090", gpu_ram=24564, dph_base=0.38, reliability=0.9962)
    vast.add_offer(gpu_name="H100 SXM", gpu_ram=81559, num_gpus=2, dph_base=4.1)
    vast.add_offer(gpu_name="RTX 3060", gpu_ram=12288, dph_base=0.08)
    offers = client().search_offers(
        {"gpu_ram": {"gte": 24000.0}, "order": [["dph_total", "asc"]], "allocated_storage": 40}
    )
    assert [o.gpu_name for o in offers] == ["RTX 4090", "H100 SXM"]
    first, second = offers
    assert isinstance(first, Offer) and first.gpu_ram == 24564 and first.num_gpus == 1
    # dph_total carries the storage price of the 40 GB asked for (§2.4).
    assert first.dph_total == pytest.approx(0.38 + 0.15 * 40 / 720, abs=1e-6)
    assert second.gpu_total_ram == 2 * 81559 and second.vram_gb == pytest.approx(163.118)
    assert first.dph_per_vram_gb == pytest.approx(first.dph_total / 24.564)
    assert first.reliability == 0.9962 and first.inet_down == 2380.5


def test_rent_show_list_label_destroy(vast: FakeVast) -> None:
    offer = vast.add_offer()
    c = client()
    instance_id = rent(c, offer["id"])
    record = vast.instances[instance_id]
    assert record.body["runtype"] == "ssh_direc ssh_proxy" and record.body["disk"] == 40
    assert record.body["env"]["-p 8188:8188"] == "1"
    shown = c.show_instance(instance_id)
    assert isinstance(shown, Instance)
    assert (shown.actual_status, shown.status, shown.label) == (
        None,
        "provisioning",
        "comfyfleet:t",
    )
    assert shown.endpoint(8188) is None  # no ports before running
    assert shown.extra_env["COMFYFLEET_PROFILE"] == "image"
    vast.advance(10)
    assert c.show_instance(instance_id).actual_status == "loading"
    vast.advance(60)
    running = c.show_instance(instance_id)
    assert running.actual_status == "running"
    port = vast.instances[instance_id].host_ports["8188/tcp"]
    assert running.endpoint(8188) == f"http://{vast.public_ip}:{port}"
    assert running.host_port(22) is not None  # ssh_direc asks for a direct SSH port
    assert running.start_date == pytest.approx(record.created_at)
    c.label_instance(instance_id, "comfyfleet:other")
    assert [i.id for i in c.list_instances(label="comfyfleet:other")] == [instance_id]
    assert c.list_instances(label="comfyfleet:t") == []
    assert c.destroy_instance(instance_id) is True
    with pytest.raises(InstanceNotFound, match=f"instance {instance_id}"):
        c.show_instance(instance_id)
    with pytest.raises(InstanceNotFound, match="not found"):
        c.destroy_instance(instance_id)
    assert c.destroy_instance(instance_id, missing_ok=True) is False


def test_list_follows_pages_and_filters_by_label(vast: FakeVast) -> None:
    c = client()
    ids = [rent(c, vast.add_offer()["id"], label="comfyfleet:big") for _ in range(30)]
    rent(c, vast.add_offer()["id"], label="someone-else")
    listed = c.list_instances(label="comfyfleet:big")
    assert sorted(i.id for i in listed) == sorted(ids)
    assert len(c.list_instances()) == 31
    pages = [r for r in vast.requests if r.path == "/api/v1/instances/"]
    assert len(pages) == 2 + 2  # 30 labelled rows and 31 rows: two pages of <= 25 each
    assert any("after_token" in r.query for r in pages)
    assert json.loads(pages[0].query["select_filters"][0]) == {"label": {"eq": "comfyfleet:big"}}


def test_offer_gone_busy_and_rented_twice(vast: FakeVast) -> None:
    c = client()
    offer = vast.add_offer()
    rent(c, offer["id"])
    with pytest.raises(OfferGone, match="no_such_ask") as caught:
        rent(c, offer["id"])
    assert caught.value.status == 404 and not is_transient(caught.value)
    busy = vast.add_offer()
    vast.busy_offers.add(busy["id"])
    with pytest.raises(OfferGone) as caught:
        rent(c, busy["id"])
    assert caught.value.status == 410
    assert len(vast.instances) == 1


def test_insufficient_credit_is_one_line_with_a_hint(vast: FakeVast) -> None:
    vast.credit = 0
    with pytest.raises(InsufficientCredit) as caught:
        rent(client(), vast.add_offer()["id"])
    assert "lack credit" in caught.value.message and "\n" not in caught.value.message
    assert "billing" in (caught.value.hint or "")
    assert vast.instances == {}


def test_bad_key_is_not_retried_and_not_echoed(vast: FakeVast) -> None:
    sleeps = Sleeps()
    c = VastClient("wrong-key-0000-secret", url=vast.url, sleep=sleeps)
    with pytest.raises(VastAuthError) as caught:
        c.list_instances()
    assert caught.value.status == 401 and "Invalid user key" in caught.value.message
    assert "VAST_API_KEY" in (caught.value.hint or "")
    assert "wrong-key-0000-secret" not in str(caught.value) and sleeps == []
    assert len(vast.requests) == 1


@pytest.mark.parametrize(
    ("retry_after", "expected_wait"),
    [("2", 2.0), (None, 0.5), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)],
    ids=["seconds", "absent", "http-date-in-the-past"],
)
def test_429_is_retried_with_retry_after(
    vast: FakeVast, retry_after: str | None, expected_wait: float
) -> None:
    vast.add_offer()
    vast.fail(429, retry_after=retry_after, text="API requests too frequent")
    sleeps = Sleeps()
    assert len(client(sleeps).search_offers({})) == 1
    assert sleeps == [expected_wait]


def test_429_gives_up_after_bounded_attempts_or_a_long_retry_after(vast: FakeVast) -> None:
    msg = "API requests too frequent endpoint threshold=3.0"
    vast.fail(429, times=10, body={"success": False, "error": "rate_limit_exceeded", "msg": msg})
    sleeps = Sleeps()
    with pytest.raises(VastRateLimited, match="threshold=3.0") as caught:
        client(sleeps, max_attempts=3).list_instances()
    assert sleeps == [0.5, 1.0] and is_transient(caught.value)
    vast.clear_faults()
    vast.fail(429, retry_after="3600")
    sleeps.clear()
    with pytest.raises(VastRateLimited) as caught:
        client(sleeps).list_instances()
    assert caught.value.retry_after == 3600 and sleeps == []


def test_search_quota_429_is_not_retried(vast: FakeVast) -> None:
    vast.fail(429, body={"error": "search_quota_exceeded", "msg": "daily quota"},
              headers={"X-RateLimit-Reset": "1786406400"})  # fmt: skip
    sleeps = Sleeps()
    with pytest.raises(VastRateLimited, match="daily quota") as caught:
        client(sleeps).search_offers({})
    assert "1786406400" in (caught.value.hint or "") and sleeps == []


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_is_transient_and_retried_for_reads(vast: FakeVast, status: int) -> None:
    vast.fail(status, times=2)
    sleeps = Sleeps()
    assert client(sleeps).list_instances() == []
    assert sleeps == [0.5, 1.0]
    vast.fail(status, times=9)
    with pytest.raises(VastUnavailable, match=f"HTTP {status}") as caught:
        client(Sleeps(), max_attempts=2).list_instances()
    assert is_transient(caught.value)


def test_renting_is_not_repeated_after_a_5xx(vast: FakeVast) -> None:
    offer = vast.add_offer()
    vast.fail(503, method="PUT")
    sleeps = Sleeps()
    with pytest.raises(VastUnavailable):
        rent(client(sleeps), offer["id"])
    assert sleeps == [] and len([r for r in vast.requests if r.method == "PUT"]) == 1


def test_unreachable_server_is_transient() -> None:
    sleeps = Sleeps()
    c = VastClient(TEST_KEY, url="http://127.0.0.1:9", sleep=sleeps,
                   settings=VastSettings(max_attempts=2))  # fmt: skip
    with pytest.raises(VastUnavailable, match="ConnectError") as caught:
        c.list_instances()
    assert sleeps == [0.5] and TEST_KEY not in str(caught.value)


def test_non_json_answer_is_a_clear_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>login</html>")

    c = VastClient(TEST_KEY, url="http://vast.test", http=httpx.Client(
        transport=httpx.MockTransport(handler)))  # fmt: skip
    with pytest.raises(VastError, match="without a JSON object") as caught:
        c.search_offers({})
    assert "VAST_URL" in (caught.value.hint or "")


def test_the_key_never_appears_in_errors_reprs_or_logs(
    vast: FakeVast, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    c = client()
    offer = vast.add_offer()
    instance_id = rent(c, offer["id"])
    seen += [repr(c), repr(c.show_instance(instance_id)), repr(c.search_offers({}))]
    for status in (401, 403, 404, 429, 500, 503):
        vast.fail(status, times=9)
        try:
            c.show_instance(instance_id)
        except VastError as exc:
            seen += [str(exc), repr(exc), exc.one_line()]
        vast.clear_faults()
    vast.credit = 0
    try:
        rent(c, vast.add_offer()["id"])
    except VastError as exc:
        seen.append(str(exc))
    seen.append(caplog.text)
    assert len(seen) > 10
    assert all(TEST_KEY not in text for text in seen)


def test_a_per_endpoint_minimum_interval_is_ridden_out_by_backoff(vast: FakeVast) -> None:
    # vast.ai's limit is mostly a minimum interval per endpoint, answered with a plain-text
    # 429 and no Retry-After (§6.3): renting three offers in a row must still work.
    vast.min_interval_s["PUT /api/v0/asks/"] = 0.3
    offers = [vast.add_offer()["id"] for _ in range(3)]
    c = VastClient(settings=VastSettings(backoff_s=0.2, max_attempts=5))
    ids = [rent(c, offer_id) for offer_id in offers]
    assert len(set(ids)) == 3 and len(vast.instances) == 3
    puts = [r for r in vast.requests if r.method == "PUT"]
    assert len(puts) > 3  # some calls were refused with 429 and tried again
