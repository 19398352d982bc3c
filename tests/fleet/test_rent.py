"""``rent_fleet``: N instances or none; a gone offer is skipped; a failure partway destroys
what was rented; the on-start script fits vast.ai's limit and still runs."""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
import re
import subprocess

import pytest

from comfyfleet.errors import ComfyfleetError, ConfigError, FleetError
from comfyfleet.fleet.access import GATEWAY_PORT, fleet_endpoints, fleet_token
from comfyfleet.fleet.offers import OfferQuery
from comfyfleet.fleet.rent import (
    ONSTART_LIMIT,
    RENT_ID_ENV,
    RentRequest,
    default_onstart,
    instance_env,
    pack_onstart,
    rent_fleet,
)
from comfyfleet.fleet.vast import VastClient, VastSettings
from comfyfleet.fleet.wheel import PublishedWheel
from comfyfleet.render.assets import OnstartSettings, render_onstart
from tests.doubles.vast import FakeVast, InstanceRecord

QUERY = OfferQuery(min_vram_gb=24, disk_gb=60)


def request(count: int = 2, **kw: object) -> RentRequest:
    defaults: dict = {"fleet": "night", "count": count, "profile": "image", "query": QUERY,
                      "store": "s3://models/mirror"}  # fmt: skip
    defaults.update(kw)
    return RentRequest(**defaults)


def client() -> VastClient:
    return VastClient(settings=VastSettings(max_attempts=2), sleep=lambda _s: None)


def offers(vast: FakeVast, n: int) -> list[int]:
    return [vast.add_offer(dph_base=0.30 + i / 100)["id"] for i in range(n)]


def test_rents_n_cheapest_with_label_script_and_env(vast: FakeVast) -> None:
    ids = offers(vast, 4)
    lines: list[str] = []
    report = rent_fleet(client(), request(count=2, extra_env={"AWS_SECRET_ACCESS_KEY": "s3cr3t"}),
                        on_event=lines.append)  # fmt: skip
    assert [r.offer.id for r in report.rented] == ids[:2]
    assert sorted(vast.instances) == sorted(r.instance_id for r in report.rented)
    for record in vast.instances.values():
        assert record.label == "comfyfleet:night"
        assert record.body["disk"] == 60
        assert record.body["image"] == "vastai/comfy:v0.19.3-cuda-12.9-py312"
        assert len(record.body["onstart"]) <= ONSTART_LIMIT
        env = record.body["env"]
        assert env["COMFYFLEET_PROFILE"] == "image" and env["COMFYFLEET_FLEET"] == "night"
        assert env["COMFYFLEET_STORE"] == "s3://models/mirror"
        assert env[RENT_ID_ENV] == report.rent_id
        # Only the gateway's port is published; ComfyUI's 8188 stays on loopback.
        assert env[f"-p {GATEWAY_PORT}:{GATEWAY_PORT}"] == "1"
        assert [k for k in env if k.startswith("-p ")] == [f"-p {GATEWAY_PORT}:{GATEWAY_PORT}"]
        assert env["COMFYFLEET_GATEWAY_LISTEN"] == f"0.0.0.0:{GATEWAY_PORT}"
        assert len(env["COMFYFLEET_GATEWAY_TOKEN"]) >= 43
        assert "COMFYFLEET_WHEEL_URL" not in env  # no wheel given: the image brings comfyfleet
        assert record.container_env()["AWS_SECRET_ACCESS_KEY"] == "s3cr3t"
    assert report.dph_total == pytest.approx(sum(r.offer.dph_total for r in report.rented))
    assert len(lines) == 2 and "[2/2]" in lines[-1]
    # The report never carries the environment (it may hold store credentials).
    assert "s3cr3t" not in repr(report) and "s3cr3t" not in repr(request())


def test_a_gone_offer_is_skipped_for_the_next(vast: FakeVast) -> None:
    ids = offers(vast, 3)
    vast.busy_offers.add(ids[0])
    report = rent_fleet(client(), request(count=2))
    assert report.gone == [ids[0]] and [r.offer.id for r in report.rented] == ids[1:]


def test_too_few_offers_rents_nothing(vast: FakeVast) -> None:
    offers(vast, 1)
    with pytest.raises(FleetError, match="1 offer\\(s\\) match, 3 instance\\(s\\) asked"):
        rent_fleet(client(), request(count=3))
    assert vast.instances == {} and not [r for r in vast.requests if r.method == "PUT"]


def test_offers_running_out_destroys_what_was_rented(vast: FakeVast) -> None:
    ids = offers(vast, 3)
    vast.busy_offers.update(ids[1:])
    with pytest.raises(FleetError, match="renting stopped at 1 of 2.*offers ran out.*destroyed 1"):
        rent_fleet(client(), request(count=2))
    assert vast.instances == {} and len(vast.destroyed) == 1


def test_credit_running_out_partway_destroys_and_says_so(vast: FakeVast) -> None:
    offers(vast, 3)

    def spend_all(record: InstanceRecord) -> None:
        vast.credit = 0

    vast.on_create = spend_all
    with pytest.raises(FleetError) as caught:
        rent_fleet(client(), request(count=3))
    error = caught.value
    assert "renting stopped at 1 of 3" in error.message and "lack credit" in error.message
    (gone,) = vast.destroyed
    assert f"destroyed 1 ({gone})" in error.message and "billing" in (error.hint or "")
    assert vast.instances == {}


def test_a_rent_that_failed_on_the_wire_but_rented_is_found_and_destroyed(vast: FakeVast) -> None:
    offers(vast, 2)
    created: list[int] = []

    def drop_answer(record: InstanceRecord) -> None:
        created.append(record.id)
        if len(created) == 2:  # rented, but the answer never arrives
            raise ConnectionResetError

    vast.on_create = drop_answer
    with pytest.raises(FleetError, match="renting stopped at 1 of 2.*destroyed 2"):
        rent_fleet(client(), request(count=2))
    assert sorted(vast.destroyed) == sorted(created) and vast.instances == {}


def test_ctrl_c_while_renting_destroys_and_reraises(vast: FakeVast) -> None:
    offers(vast, 3)

    def interrupt(line: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rent_fleet(client(), request(count=3), on_event=interrupt)
    assert vast.instances == {} and len(vast.destroyed) == 1


def test_instances_it_cannot_destroy_are_named_with_the_command(vast: FakeVast) -> None:
    offers(vast, 2)
    vast.busy_offers.add(max(vast.offers))
    vast.fail(503, times=20, method="DELETE")
    vast.fail(503, times=20, method="GET")
    with pytest.raises(FleetError) as caught:  # (a token given: no list before renting)
        rent_fleet(client(), request(count=2, gateway_token="t" * 43))
    (left,) = vast.instances
    assert f"could NOT destroy {left}" in caught.value.message
    assert f"comfyfleet instances down {left}" in (caught.value.hint or "")


def test_one_token_per_fleet_never_shown(vast: FakeVast) -> None:
    offers(vast, 5)
    first = rent_fleet(client(), request(count=2))
    tokens = {r.container_env()["COMFYFLEET_GATEWAY_TOKEN"] for r in vast.instances.values()}
    assert len(tokens) == 1
    (token,) = tokens
    joined = rent_fleet(client(), request(count=1))  # a second `up` joins with the same token
    other = rent_fleet(client(), request(count=1, fleet="day"))
    night = client().list_instances(label="comfyfleet:night")
    assert len(night) == 3 and fleet_token(night) == token
    day_token = fleet_token(client().list_instances(label="comfyfleet:day"))
    assert day_token and day_token != token
    for shown in (first, joined, other):
        assert token not in repr(shown) and day_token not in repr(shown)
    assert "tok-" not in repr(request(gateway_token="tok-" + "x" * 40))
    given = request(count=1, fleet="given", gateway_token="g" * 43)
    rent_fleet(client(), given)
    assert fleet_token(client().list_instances(label="comfyfleet:given")) == "g" * 43


def test_a_fleet_whose_token_cannot_be_read_rents_nothing(vast: FakeVast) -> None:
    offers(vast, 2)
    vast.fail(503, times=20, method="GET")
    with pytest.raises(ComfyfleetError, match="list instances"):
        rent_fleet(client(), request(count=1))  # a new token could split the fleet's
    assert vast.instances == {}


def test_endpoints_are_the_running_gateways_with_their_token(vast: FakeVast) -> None:
    offers(vast, 2)
    report = rent_fleet(client(), request(count=2))
    listed = client().list_instances(label="comfyfleet:night")
    assert fleet_endpoints(listed) == []  # provisioning: no endpoint yet
    for r in report.rented:
        vast.backdate(r.instance_id, 600)
    running = client().list_instances(label="comfyfleet:night")
    endpoints = fleet_endpoints(running)
    assert [e.instance_id for e in endpoints] == sorted(r.instance_id for r in report.rented)
    token = fleet_token(running)
    for e in endpoints:
        port = vast.instances[e.instance_id].host_ports[f"{GATEWAY_PORT}/tcp"]
        assert e.url == f"http://127.0.0.1:{port}"
        assert e.headers == {"Authorization": f"Bearer {token}"}
        assert token is not None and token not in repr(e)


def test_env_refuses_to_override_fleet_marks() -> None:
    with pytest.raises(ConfigError, match="COMFYFLEET_FLEET is set by comfyfleet"):
        instance_env(request(extra_env={"COMFYFLEET_FLEET": "x"}), "r1")
    with pytest.raises(ConfigError, match="COMFYFLEET_GATEWAY_TOKEN is set by comfyfleet"):
        instance_env(request(extra_env={"COMFYFLEET_GATEWAY_TOKEN": "x"}), "r1")
    env = instance_env(request(store="", prefect_api_url="http://10.0.0.2:4200/api"), "r1")
    assert "COMFYFLEET_STORE" not in env and env["PREFECT_API_URL"] == "http://10.0.0.2:4200/api"


def test_bad_fleet_name_fails_before_any_call(vast: FakeVast) -> None:
    offers(vast, 1)
    with pytest.raises(ConfigError, match="fleet name"):
        rent_fleet(client(), request(count=1, fleet="a b"))
    assert vast.requests == []


def test_short_script_goes_as_it_is() -> None:
    assert pack_onstart("echo hi\n") == "echo hi\n"


def test_long_script_is_packed_and_still_runs() -> None:
    script = "#!/usr/bin/env bash\n" + "# padding comment\n" * 400 + 'echo "ran with $GREETING"\n'
    packed = pack_onstart(script, limit=1000)
    assert len(script) > 1000 >= len(packed)
    done = subprocess.run(["bash", "-c", packed], capture_output=True, text=True, timeout=30,
                          env={"PATH": "/usr/bin:/bin", "GREETING": "hello"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ran with hello\n"


@pytest.mark.parametrize("via", ["cli", "flow", "worker"])
def test_the_rendered_onstart_fits_and_unpacks_to_valid_bash(via: str) -> None:
    script = render_onstart(OnstartSettings(profile="image", store="s3://b/p", via=via))
    packed = pack_onstart(script)
    assert len(packed) <= ONSTART_LIMIT
    blob = re.search(r"echo (\S+) \| base64 -d", packed)
    assert blob is not None
    unpacked = gzip.decompress(base64.b64decode(blob.group(1))).decode()
    kept = [line for line in script.splitlines() if not line.startswith("#")]
    assert unpacked.splitlines() == kept
    check = subprocess.run(["bash", "-n"], input=unpacked, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_a_script_too_big_even_packed_is_refused() -> None:
    noise = base64.b64encode(os.urandom(3000)).decode()
    with pytest.raises(ConfigError, match="vast.ai takes 4048"):
        pack_onstart(f"echo {noise}\n" * 2)


@pytest.mark.parametrize(
    ("store", "match"),
    [("", "no store to pull their models from"),
     ("/data/mirror", "cannot reach the store /data/mirror"),
     ("file:///data/mirror", "cannot reach the store")],
)  # fmt: skip
def test_a_store_the_instance_cannot_use_rents_nothing(
    vast: FakeVast, store: str, match: str
) -> None:
    offers(vast, 1)
    with pytest.raises(ConfigError, match=match):
        rent_fleet(client(), request(count=1, store=store))
    assert vast.requests == []


def test_the_store_may_come_with_the_env_and_a_baked_image_needs_none(vast: FakeVast) -> None:
    offers(vast, 2)
    via_env = request(count=1, store="", extra_env={"COMFYFLEET_STORE": "s3://b/p"})
    assert len(rent_fleet(client(), via_env).rented) == 1
    baked = request(count=1, store="", onstart=OnstartSettings(profile="image", mode="baked"))
    assert len(rent_fleet(client(), baked).rented) == 1


def test_a_published_wheel_gets_the_fleet_script_and_needs_a_prefect_server() -> None:
    """With the wheel in the store the instance runs the fleet script (wheel checked by
    sha256, ComfyUI behind the gateway, warm-up reported to Prefect); without a server to
    report to, nothing is rented."""
    wheel = PublishedWheel(
        filename="comfyfleet-0.1.0-py3-none-any.whl", sha256="ab" * 32, key="wheels/x",
        size=1, expires_s=3600, url="http://127.0.0.1:1/w?X-Amz-Signature=s",
    )  # fmt: skip
    assert default_onstart(request()).via == "cli"
    settings = default_onstart(request(wheel=wheel, prefect_api_url="http://10.0.0.2:4200/api"))
    assert settings.via == "fleet"
    assert "COMFYFLEET_WHEEL_SHA256" in render_onstart(settings)
    with pytest.raises(ConfigError, match="PREFECT_API_URL is not set; nothing was rented"):
        default_onstart(request(wheel=wheel, prefect_api_url=""))


def test_the_fleet_script_leaves_store_and_profile_to_the_env(vast: FakeVast) -> None:
    """A long store URI must not push the fleet script past vast.ai's 4048 characters: the
    store and the profile reach the instance in the create call's env only."""
    wheel = PublishedWheel(
        filename="comfyfleet-0.1.0-py3-none-any.whl", sha256="ab" * 32, key="wheels/x",
        size=1, expires_s=3600, url="http://127.0.0.1:1/w?X-Amz-Signature=s",
    )  # fmt: skip
    # 150 characters gzip cannot shrink much (the script goes gzip + base64 packed).
    store = (
        "s3://models-"
        + hashlib.sha256(b"bucket").hexdigest()[:40]
        + "/"
        + "/".join(hashlib.sha256(str(n).encode()).hexdigest()[:20] for n in range(5))
    )
    offers(vast, 1)
    fleet_request = request(1, wheel=wheel, prefect_api_url="http://10.0.0.2:4200/api", store=store)
    rent_fleet(client(), fleet_request)
    (record,) = vast.instances.values()
    assert len(record.body["onstart"]) <= ONSTART_LIMIT
    assert record.env["COMFYFLEET_STORE"] == store and record.env["COMFYFLEET_PROFILE"]
