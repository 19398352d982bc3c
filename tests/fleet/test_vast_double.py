"""The vast.ai test server's own contract where the client does not reach it: the
in-container environment a later instance process gets (§7/§8.15), the v0 list, the SDK's
newer search form, and the wire checks of §8."""

from __future__ import annotations

import httpx
import pytest

from tests.doubles.vast import TEST_KEY, FakeVast, InstanceRecord

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}


def test_on_create_gets_the_container_contract_matching_the_api(vast: FakeVast) -> None:
    seen: list[InstanceRecord] = []
    vast.on_create = seen.append
    offer = vast.add_offer()
    body = {"image": "img", "disk": 20, "runtype": "ssh_direc ssh_proxy",
            "env": {"COMFYFLEET_PROFILE": "image", "-p 8188:8188": "1"}}  # fmt: skip
    created = httpx.put(f"{vast.url}/api/v0/asks/{offer['id']}/", json=body, headers=AUTH).json()
    (record,) = seen
    env = record.container_env()
    assert env["CONTAINER_ID"] == str(created["new_contract"]) == str(record.id)
    assert env["VAST_CONTAINERLABEL"] == f"C.{record.id}"
    assert env["CONTAINER_API_KEY"] == created["instance_api_key"]
    assert env["COMFYFLEET_PROFILE"] == "image" and "-p 8188:8188" not in env
    vast.backdate(record.id, 3600)
    shown = httpx.get(f"{vast.url}/api/v0/instances/{record.id}/", headers=AUTH).json()
    ports = shown["instances"]["ports"]
    assert env["VAST_TCP_PORT_8188"] == ports["8188/tcp"][0]["HostPort"]
    assert env["VAST_TCP_PORT_22"] == ports["22/tcp"][0]["HostPort"]
    assert env["PUBLIC_IPADDR"] == shown["instances"]["public_ipaddr"]
    destroyed: list[int] = []
    vast.on_destroy = lambda r: destroyed.append(r.id)
    httpx.request("DELETE", f"{vast.url}/api/v0/instances/{record.id}/", headers=AUTH, json={})
    assert destroyed == [record.id]


def test_run_instances_starts_them_at_once_on_the_ports_it_picks(vast: FakeVast) -> None:
    offer = vast.add_offer()
    body = {"image": "img", "env": {"-p 9188:9188": "1"}}
    before = httpx.put(f"{vast.url}/api/v0/asks/{offer['id']}/", json=body, headers=AUTH).json()
    shown = httpx.get(f"{vast.url}/api/v0/instances/{before['new_contract']}/", headers=AUTH)
    assert shown.json()["instances"]["actual_status"] is None  # provisioning, by default
    created: list[int] = []
    destroyed: list[int] = []
    vast.run_instances(
        port_for=lambda instance_id, port: 20000 + port,
        on_create=lambda r: created.append(r.id),
        on_destroy=lambda r: destroyed.append(r.id),
    )
    offer = vast.add_offer()
    new = httpx.put(f"{vast.url}/api/v0/asks/{offer['id']}/", json=body, headers=AUTH).json()
    url = f"{vast.url}/api/v0/instances/{new['new_contract']}/"
    shown = httpx.get(url, headers=AUTH).json()["instances"]
    assert shown["actual_status"] == "running" and created == [new["new_contract"]]
    assert shown["ports"]["9188/tcp"][0]["HostPort"] == "29188"
    httpx.request("DELETE", url, headers=AUTH, json={})
    assert destroyed == [new["new_contract"]]


def test_v0_list_search_asks_and_api_key_query(vast: FakeVast) -> None:
    vast.add_offer(gpu_name="RTX 4090")
    vast.add_offer(gpu_name="RTX 3090")
    query = {"select_cols": ["*"], "q": {"gpu_name": {"in": ["RTX 3090"]}}}
    found = httpx.put(f"{vast.url}/api/v0/search/asks/", headers=AUTH, json=query)
    assert found.headers["content-type"] == "application/json"
    assert [o["gpu_name"] for o in found.json()["offers"]] == ["RTX 3090"]
    listed = httpx.get(f"{vast.url}/api/v0/instances/", params={"api_key": TEST_KEY}).json()
    assert listed == {"instances_found": 0, "instances": []}


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "error"),
    [("PUT", "/api/v0/asks/1/", {"disk": 10}, 400, "invalid_args"),
     ("PUT", "/api/v0/asks/abc/", {"image": "x"}, 400, "invalid_args"),
     ("PUT", "/api/v0/instances/5/", {"label": "x"}, 404, "no_such_instance"),
     ("GET", "/api/v1/instances/?select_filters=%7B%22dph_total%22%3A%7B%7D%7D", None, 400,
      "invalid_request"),
     ("GET", "/api/v1/instances/?after_token=nope", None, 400, "invalid_token")],
)  # fmt: skip
def test_wire_errors(
    vast: FakeVast, method: str, path: str, body: dict | None, status: int, error: str
) -> None:
    answer = httpx.request(method, vast.url + path, headers=AUTH, json=body)
    assert (answer.status_code, answer.json()["error"]) == (status, error)


def test_state_changes_and_bad_state(vast: FakeVast) -> None:
    offer = vast.add_offer()
    created = httpx.put(f"{vast.url}/api/v0/asks/{offer['id']}/", json={"image": "x"},
                        headers=AUTH).json()  # fmt: skip
    url = f"{vast.url}/api/v0/instances/{created['new_contract']}/"
    assert httpx.put(url, json={"state": "stopped"}, headers=AUTH).json() == {"success": True}
    assert httpx.get(url, headers=AUTH).json()["instances"]["actual_status"] == "stopped"
    bad = httpx.put(url, json={"state": "paused"}, headers=AUTH)
    assert bad.status_code == 400 and bad.json()["msg"] == "Invalid target state"
    assert httpx.get(url).status_code == 401
