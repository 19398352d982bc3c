"""``comfyfleet instances offers|up|ls|down`` in-process against the vast.ai test server:
tables and ``--json``, exit codes 0/1/2, ``error:``/``hint:`` lines, and the key never
printed. ``up`` puts this checkout's wheel into a real SeaweedFS bucket (built once per
session, cached under the session's COMFYFLEET_HOME); the gateway token and the wheel URL
go to the instances and are never printed."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import httpx
import pytest

from comfyfleet.cli import instances_cmd, main
from comfyfleet.fleet.access import GATEWAY_PORT
from tests.doubles.vast import TEST_KEY, FakeVast
from tests.support.seaweed import new_bucket

SECRET_ENV = ("COMFYFLEET_GATEWAY_TOKEN", "COMFYFLEET_WHEEL_URL")
SHOWN: list[str] = []  # every secret handed to an instance so far


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    assert TEST_KEY not in out + err
    assert not [secret for secret in SHOWN if secret in out + err]
    return code, out, err


@pytest.fixture
def mirror(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """A real bucket as the fleet's store, the operator's AWS_* pointing at it."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    uri = f"s3://{new_bucket(s3_server)}/mirror"
    monkeypatch.setenv("COMFYFLEET_STORE", uri)
    # The server the instances report their warm-ups to (only handed to them, never called).
    monkeypatch.setenv("PREFECT_API_URL", "http://prefect.fleet.test:4200/api")
    return uri


@pytest.fixture
def shop(vast: FakeVast, mirror: str, monkeypatch: pytest.MonkeyPatch) -> FakeVast:
    vast.add_offer(gpu_name="RTX 4090", gpu_ram=24564, dph_base=0.38, inet_down=2380.5)
    vast.add_offer(gpu_name="A100 SXM4", gpu_ram=81920, dph_base=1.10, reliability=0.999)
    vast.add_offer(gpu_name="RTX 3090", gpu_ram=24576, dph_base=0.22, reliability=0.97)
    vast.add_offer(gpu_name="RTX 3060", gpu_ram=12288, dph_base=0.05)
    monkeypatch.setattr(instances_cmd, "clock", vast.now)
    vast.on_create = lambda record: SHOWN.extend(
        record.env[k] for k in SECRET_ENV if k in record.env
    )
    return vast


def test_offers_table_and_json(shop: FakeVast, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["instances", "offers", "--min-vram", "24", "--disk", "80"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert "$/h/GB" in lines[0] and "RELIAB" in lines[0] and "DOWN Mb/s" in lines[0]
    # $/h per GB: 3090 0.0096, A100 0.0136, 4090 0.0162 (dph includes 80 GB of disk).
    assert [line.split()[2] for line in lines[1:4]] == ["3090", "SXM4", "4090"]
    assert "97.0%" in lines[1] and "2380" in lines[3]
    assert lines[-1] == "3 offer(s), sorted by $/h per GB of VRAM"
    code, out, _ = run(["instances", "offers", "--min-vram", "24", "--disk", "80",
                        "--gpu", "RTX_4090", "--max-dph", "0.5", "--json"], capsys)  # fmt: skip
    (only,) = json.loads(out)["offers"]
    assert only["gpu_name"] == "RTX 4090" and only["vram_gb"] == pytest.approx(24.564)
    assert only["dph_per_vram_gb"] == pytest.approx(only["dph_total"] / 24.564, rel=1e-4)


def test_up_ls_down_a_fleet(
    shop: FakeVast, mirror: str, capsys: pytest.CaptureFixture[str]
) -> None:
    shop.provision_s = 600  # still provisioning when listed, however slow the wheel upload
    code, out, err = run(["instances", "up", "--fleet", "night", "--count", "2", "--profile",
                          "image", "--store", mirror, "--json"], capsys)  # fmt: skip
    assert code == 0, err
    up = json.loads(out)
    ids = [i["id"] for i in up["instances"]]
    assert up["label"] == "comfyfleet:night" and len(ids) == 2
    assert err.count("rented instance") == 2
    assert up["gateway_port"] == GATEWAY_PORT and "url" not in up["wheel"]
    assert up["wheel"]["key"] == f"wheels/{up['wheel']['sha256']}/{up['wheel']['filename']}"
    envs = [shop.instances[i].container_env() for i in ids]
    assert len({e["COMFYFLEET_GATEWAY_TOKEN"] for e in envs}) == 1  # one token per fleet
    for env in envs:
        assert env["COMFYFLEET_WHEEL_SHA256"] == up["wheel"]["sha256"]
        assert env["COMFYFLEET_WHEEL_NAME"] == up["wheel"]["filename"]
        wheel = httpx.get(env["COMFYFLEET_WHEEL_URL"], timeout=10)  # what the instance does
        assert hashlib.sha256(wheel.content).hexdigest() == up["wheel"]["sha256"]
    for i in ids:
        ports = [k for k in shop.instances[i].body["env"] if k.startswith("-p ")]
        assert ports == [f"-p {GATEWAY_PORT}:{GATEWAY_PORT}"]  # never ComfyUI's own port
    # Another fleet on the same account is listed but never touched by --fleet night.
    code, _, _ = run(["instances", "up", "--fleet", "day", "--count", "1", "--profile", "image",
                      "--gpu", "RTX 4090", "--max-dph", "0.5"], capsys)  # fmt: skip
    assert code == 0 and len(shop.instances) == 3

    code, out, _ = run(["instances", "ls", "--fleet", "night", "--json"], capsys)
    listed = json.loads(out)
    assert [i["id"] for i in listed["instances"]] == sorted(ids)
    assert {i["status"] for i in listed["instances"]} == {"provisioning"}
    assert all(i["endpoint"] is None for i in listed["instances"])

    for instance_id in ids:
        shop.backdate(instance_id, 7200)  # two hours of uptime
    code, out, _ = run(["instances", "ls", "--fleet", "night", "--json"], capsys)
    listed = json.loads(out)
    for row in listed["instances"]:
        assert row["status"] == "running" and row["uptime_s"] == pytest.approx(7200, abs=5)
        assert row["cost_usd"] == pytest.approx(row["dph_total"] * 2, rel=1e-3)
        port = shop.instances[row["id"]].host_ports[f"{GATEWAY_PORT}/tcp"]
        assert row["endpoint"] == f"http://127.0.0.1:{port}"
    assert listed["cost_usd"] == pytest.approx(2 * listed["dph_total"], rel=1e-3)

    code, out, _ = run(["instances", "ls"], capsys)
    assert code == 0 and "3 instance(s)" in out.splitlines()[-1]
    assert "night" in out and "day" in out and "2h00m" in out and "http://127.0.0.1:" in out

    code, out, _ = run(["instances", "down", "--fleet", "night", "--dry-run"], capsys)
    assert out.strip() == f"would destroy 2 instance(s): {' '.join(map(str, sorted(ids)))}"
    assert len(shop.instances) == 3
    code, out, _ = run(["instances", "down", "--fleet", "night", "--json"], capsys)
    assert code == 0 and sorted(json.loads(out)["destroyed"]) == sorted(ids)
    assert len(shop.instances) == 1  # the "day" fleet is still there
    code, out, _ = run(["instances", "down", str(ids[0])], capsys)
    assert code == 0 and out.splitlines() == ["destroyed 0 instance(s)", f"already gone: {ids[0]}"]


def test_down_idle_only_touches_comfyfleet_instances(
    shop: FakeVast, capsys: pytest.CaptureFixture[str]
) -> None:
    run(["instances", "up", "--fleet", "a", "--count", "2", "--profile", "image"], capsys)
    old, new = sorted(shop.instances)
    shop.backdate(old, 3600)
    shop.backdate(new, 3600)
    shop.instances[new].gpu_util = 0.9  # working right now
    stranger = shop.add_offer()
    from comfyfleet.fleet.vast import VastClient

    foreign = VastClient().create_instance(stranger["id"], image="x", disk_gb=10,
                                           label="my-notebook", onstart="", env={})  # fmt: skip
    shop.backdate(foreign, 3600)
    code, out, _ = run(["instances", "down", "--idle", "30", "--json"], capsys)
    assert code == 0 and json.loads(out)["destroyed"] == [old]
    assert set(shop.instances) == {new, foreign}


def test_down_reports_failures_with_exit_1(
    shop: FakeVast, capsys: pytest.CaptureFixture[str]
) -> None:
    run(["instances", "up", "--fleet", "a", "--count", "1", "--profile", "image"], capsys)
    (instance_id,) = shop.instances
    shop.fail(503, times=20, method="DELETE")
    code, _, err = run(["instances", "down", str(instance_id)], capsys)
    assert code == 1
    assert f"error: instance {instance_id} was not destroyed: " in err
    assert f"hint: run `comfyfleet instances down {instance_id}` again" in err


@pytest.mark.parametrize(
    "argv",
    [["instances", "down"],
     ["instances", "down", "12", "--fleet", "x"],
     ["instances", "offers", "--min-vram", "24"],
     ["instances", "offers", "--min-vram", "-1", "--disk", "10"],
     ["instances", "up", "--fleet", "bad name", "--count", "1", "--profile", "image"],
     ["instances", "up", "--fleet", "f", "--count", "0", "--profile", "image"],
     ["instances", "up", "--fleet", "f", "--count", "1", "--profile", "image",
      "--store", "/data/mirror"],
     ["instances", "up", "--fleet", "f", "--count", "1", "--profile", "image",
      "--store", "s3://b", "--store-block", "x"]],
)  # fmt: skip
def test_usage_errors_exit_2(
    shop: FakeVast, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code, _, _ = run(argv, capsys)
    assert code == 2
    assert shop.instances == {}


def test_key_problems_are_explained_and_the_key_never_printed(
    shop: FakeVast, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VAST_API_KEY")
    code, _, err = run(["instances", "ls"], capsys)
    assert code == 2 and err.splitlines()[0] == "error: no vast.ai API key"
    assert err.splitlines()[1].startswith("hint: set VAST_API_KEY")
    monkeypatch.setenv("VAST_API_KEY", "not-the-key-123")
    code, out, err = run(["instances", "ls"], capsys)
    assert code == 1 and "not-the-key-123" not in out + err
    assert err.startswith("error: vast.ai list instances: HTTP 401 Invalid user key")


def test_credit_failure_on_up_destroys_and_exits_1(
    shop: FakeVast, capsys: pytest.CaptureFixture[str]
) -> None:
    shop.on_create = lambda record: setattr(shop, "credit", 0)
    code, _, err = run(["instances", "up", "--fleet", "n", "--count", "2", "--profile", "image"],
                       capsys)  # fmt: skip
    assert code == 1
    assert "renting stopped at 1 of 2" in err and "destroyed 1" in err
    assert "hint: add credit" in err and shop.instances == {}


def test_up_warns_when_prefect_is_on_loopback(
    shop: FakeVast, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    code, _, err = run(["instances", "up", "--fleet", "w", "--count", "1", "--profile",
                        "image"], capsys)  # fmt: skip
    assert code == 0 and "warning: PREFECT_API_URL is http://127.0.0.1:4200/api" in err
    (record,) = shop.instances.values()
    assert record.env["PREFECT_API_URL"] == "http://127.0.0.1:4200/api"
    assert record.env["COMFYFLEET_STORE"].startswith("s3://t-")
