"""The reaper: one pass over the vast.ai test server (library), the ``fleet-reaper`` flow
on Prefect's real engine with its artifacts, and its deployment (cron every 10 minutes)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
import yaml

from comfyfleet.errors import FleetError, VastUnavailable
from comfyfleet.fleet.access import GATEWAY_TOKEN_ENV
from comfyfleet.fleet.instance_events import verdicts
from comfyfleet.fleet.reaper import ReapPolicy, fleet_activity, reap
from comfyfleet.fleet.rent import rent_fleet
from comfyfleet.fleet.vast import VastClient, VastSettings
from comfyfleet.fleet.wheel import PublishedWheel
from deployments.serve import load_deployments
from tests.doubles.vast import TEST_KEY, FakeVast
from tests.fleet.sim import EventLog, SimFleet, prefect_emitter, vast_of_its_own
from tests.fleet.test_fleet_batch import rent_request
from tests.support.artifacts import artifacts_of

HOUR = 3600.0


def rent(vast: FakeVast, label: str, **offer: Any) -> int:
    o = vast.add_offer(**offer)
    return VastClient().create_instance(o["id"], image="img", disk_gb=72, label=label,
                                        onstart="", env={})  # fmt: skip


def scene(vast: FakeVast) -> dict[str, int]:
    """Five instances: three to reap, one working, one not comfyfleet's."""
    ids = {
        "orphan": rent(vast, "comfyfleet:night", dph_base=0.50),  # batch died: idle 2 h
        "crashed": rent(vast, "comfyfleet:night", dph_base=0.30),
        "ancient": rent(vast, "comfyfleet:day", dph_base=1.00),  # busy, but 13 h old
        "working": rent(vast, "comfyfleet:night", dph_base=0.40),
        "notebook": rent(vast, "my-notebook", dph_base=2.00),  # idle for days: not ours
    }
    vast.backdate(ids["orphan"], 2 * HOUR)
    vast.backdate(ids["crashed"], 0.1 * HOUR)
    vast.set_status(ids["crashed"], "exited", "Error response from daemon: OCI runtime")
    vast.backdate(ids["ancient"], 13 * HOUR)
    vast.instances[ids["ancient"]].gpu_util = 0.97
    vast.backdate(ids["working"], 3 * HOUR)
    vast.instances[ids["working"]].gpu_util = 0.88
    vast.backdate(ids["notebook"], 72 * HOUR)
    return ids


def test_one_pass_destroys_failed_idle_and_old_only(vast: FakeVast) -> None:
    ids = scene(vast)
    client = VastClient()
    report = reap(client, ReapPolicy(), now=vast.now())
    assert report.checked == 4  # the notebook is not a comfyfleet instance
    reasons = {d.instance.id: d.reason for d in report.decisions}
    assert reasons == {ids["orphan"]: "idle", ids["crashed"]: "failed", ids["ancient"]: "max-age"}
    assert set(vast.instances) == {ids["working"], ids["notebook"]}
    dph = {i: round(0.0 + vast.destroyed[i].offer["dph_base"] + 0.15 * 72 / 720, 6)
           for i in reasons}  # fmt: skip
    assert report.dph_stopped == pytest.approx(sum(dph.values()))
    assert report.cost_so_far_usd == pytest.approx(
        dph[ids["orphan"]] * 2 + dph[ids["crashed"]] * 0.1 + dph[ids["ancient"]] * 13, rel=1e-3
    )
    # A fleet scope only looks at that fleet.
    again = reap(client, ReapPolicy(idle_s=60), now=vast.now(), fleet="day")
    assert again.checked == 0 and again.decisions == []


def test_dry_run_destroys_nothing(vast: FakeVast) -> None:
    scene(vast)
    report = reap(VastClient(), ReapPolicy(), now=vast.now(), dry_run=True)
    assert len(report.decisions) == 3 and report.destroyed == [] and len(vast.instances) == 5


def test_failures_are_reported_after_the_pass(vast: FakeVast) -> None:
    ids = scene(vast)
    vast.fail(503, times=50, method="DELETE", path=str(ids["orphan"]))
    client = VastClient(settings=VastSettings(max_attempts=1))
    report = reap(client, ReapPolicy(), now=vast.now())
    assert len(report.destroyed) == 2 and list(report.released.failed) == [ids["orphan"]]
    with pytest.raises(VastUnavailable, match=f"2 of 3.*{ids['orphan']}"):
        report.raise_for_failures()
    vast.clear_faults()
    vast.fail(403, times=5, method="DELETE")
    report = reap(client, ReapPolicy(), now=vast.now())
    with pytest.raises(FleetError) as caught:
        report.raise_for_failures()
    assert not isinstance(caught.value, VastUnavailable)
    assert f"instances down {ids['orphan']}" in (caught.value.hint or "")


def test_deployment_runs_every_10_minutes_one_at_a_time() -> None:
    spec = {d["name"]: d for d in load_deployments()}["fleet-reaper"]
    (schedule,) = spec["schedules"]
    assert schedule["cron"] == "*/10 * * * *"
    assert spec["concurrency_limit"]["collision_strategy"] == "CANCEL_NEW"
    assert spec["parameters"]["vast_block"] == "comfyfleet-vast"


@pytest.mark.flow
def test_flow_reaps_and_reports_the_money_saved(
    prefect_harness: None,
    vast: FakeVast,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from flows.fleet import fleet_reaper

    caplog.set_level(logging.DEBUG)
    # Prefect's loggers do not propagate to the root: listen on them directly.
    prefect_logger = logging.getLogger("prefect")
    caplog.set_level(logging.INFO, logger="prefect")
    prefect_logger.addHandler(caplog.handler)
    try:
        ids = scene(vast)
        state = fleet_reaper(return_state=True)
    finally:
        prefect_logger.removeHandler(caplog.handler)
    assert state.is_completed(), state
    summary = state.result()
    destroyed = {ids["orphan"], ids["crashed"], ids["ancient"]}
    assert set(summary["destroyed"]) == destroyed and summary["checked"] == 4
    assert set(vast.instances) == {ids["working"], ids["notebook"]}
    arts = artifacts_of(state.state_details.flow_run_id)
    (table,) = arts["table"]
    assert table.key == "fleet-reaper-all"
    rows = table.data if isinstance(table.data, list) else yaml.safe_load(table.data)
    assert {(r["instance"], r["reason"], r["outcome"]) for r in rows} == {
        (ids["orphan"], "idle", "destroyed"),
        (ids["crashed"], "failed", "destroyed"),
        (ids["ancient"], "max-age", "destroyed"),
    }
    (markdown,) = arts["markdown"]
    text = str(markdown.data)
    assert f"${summary['dph_stopped']:.3f}/h stops being billed" in text
    assert "destroyed 3" in text and "failed 1, idle 1, max-age 1" in text
    assert TEST_KEY not in json.dumps([str(a.data) for a in arts["table"] + arts["markdown"]])
    # Every captured output: the run's logs (Prefect's console handler) and anything else.
    out, err = capfd.readouterr()
    captured = caplog.text + out + err
    assert f"instance {ids['orphan']}: idle" in captured and TEST_KEY not in captured


@pytest.mark.flow
def test_flow_dry_run_for_one_fleet(prefect_harness: None, vast: FakeVast) -> None:
    from flows.fleet import fleet_reaper

    ids = scene(vast)
    state = fleet_reaper(fleet="night", dry_run=True, max_age_hours=None, return_state=True)
    assert state.is_completed(), state
    summary = state.result()
    assert summary["destroyed"] == [] and len(vast.instances) == 5
    assert set(summary["would_destroy"]) == {ids["orphan"], ids["crashed"]}
    arts = artifacts_of(state.state_details.flow_run_id)
    assert "would destroy 2" in str(arts["markdown"][0].data)


# ------------------------------------- warm-ups from the events, idleness from the gateways


@pytest.fixture
def vast(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeVast]:
    yield from vast_of_its_own(monkeypatch)


@pytest.fixture
def sim(vast: FakeVast) -> Iterator[SimFleet]:
    for dph in (0.30, 0.40, 0.50, 0.60, 0.70):
        vast.add_offer(gpu_name="RTX 4090", gpu_ram=24564, dph_base=dph)
    fleet = SimFleet(vast)
    yield fleet
    fleet.close()


WHEEL = PublishedWheel("comfyfleet-0-py3-none-any.whl", "ab" * 32, "wheels/x.whl", 1, 60, "u")


def fleet_scene(sim: SimFleet, vast: FakeVast) -> dict[str, int]:
    """Five instances of fleet ``reap``, all running the fleet on-start script (they report
    their warm-up) but ``plain``, whose script sends no events."""
    sim.broken, sim.silent = {2}, {3, 5}  # the plain one sends no ready event either
    with VastClient() as client:
        rent_fleet(client, replace(rent_request(4, fleet="reap"), wheel=WHEEL))
        rent_fleet(client, rent_request(1, fleet="reap"))  # no wheel: the plain script
    names = ("busy", "broken", "silent", "idle", "plain")
    ids = dict(zip(names, sim.created, strict=True))
    for name in ("busy", "idle", "plain"):
        vast.backdate(ids[name], 2 * HOUR)  # rented long ago, no GPU use in the sample
    vast.backdate(ids["silent"], 25 * 60)  # running 25 min, no ready event
    # Still warming up: the fleet script starts its gateway only once the warm-up passed.
    sim.boxes[ids["silent"]].gateway.stop()
    # The idle one's gateway last relayed a request 40 min ago; the busy one's just now.
    sim.boxes[ids["idle"]].gateway.app.last_request_at = time.time() - 40 * 60
    box = sim.boxes[ids["busy"]]
    token = box.record.env[GATEWAY_TOKEN_ENV]
    answer = httpx.get(
        f"http://127.0.0.1:{box.gateway.port}/queue",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert answer.status_code == 200
    return ids


EXPECTED = {
    "broken": ("warmup-failed", "its warm-up failed: ComfyUI did not start"),
    "silent": ("warmup-failed", "running 25 min without passing its warm-up (limit 20)"),
    "idle": ("idle", "idle 40 min (limit 30)"),
    # The plain one's script reports nothing: its silence says nothing about its warm-up.
    # Its gateway was never used: idle since the gateway started (now), not the rent: kept.
}


def test_reap_judges_warmups_by_events_and_idleness_by_the_gateway(
    sim: SimFleet, vast: FakeVast
) -> None:
    log = EventLog()
    sim.emit = log.emit
    ids = fleet_scene(sim, vast)
    with VastClient() as client:
        without = reap(client, ReapPolicy(), now=time.time(), fleet="reap", dry_run=True)
        report = reap(
            client,
            ReapPolicy(),
            now=time.time(),
            fleet="reap",
            events=log,
            activity=fleet_activity,
        )
    # Without events or activity: every old one looks idle, the failed warm-ups look fine.
    assert {d.instance.id for d in without.decisions} == {ids[n] for n in ("busy", "idle", "plain")}
    got = {d.instance.id: (d.reason, d.detail) for d in report.decisions}
    assert got == {ids[name]: want for name, want in EXPECTED.items()}
    assert set(vast.instances) == {ids["busy"], ids["plain"]}
    assert log.reads == 1


def test_a_gateway_that_answers_is_a_passed_warmup_even_before_its_event(
    sim: SimFleet, vast: FakeVast
) -> None:
    # The fleet script starts the gateway only after the warm-up passed; its ready event
    # may still be on the way (the event store saves every few seconds) or lost.
    log = EventLog()
    sim.emit = log.emit
    sim.silent = {1}
    with VastClient() as client:
        rent_fleet(client, replace(rent_request(1, fleet="late"), wheel=WHEEL))
        (instance_id,) = sim.created
        vast.backdate(instance_id, 25 * 60)
        kept = reap(
            client, ReapPolicy(), now=time.time(), fleet="late", events=log,
            activity=fleet_activity, dry_run=True,
        )  # fmt: skip
        judged = reap(client, ReapPolicy(), now=time.time(), fleet="late", events=log, dry_run=True)
    assert kept.decisions == []
    assert [(d.instance.id, d.reason) for d in judged.decisions] == [(instance_id, "warmup-failed")]


@pytest.mark.flow
def test_flow_reaps_failed_warmups_from_prefect_events_and_idle_by_activity(
    prefect_harness: None, sim: SimFleet, vast: FakeVast
) -> None:
    from flows.fleet import PrefectInstanceEvents, fleet_reaper

    sim.emit = prefect_emitter()
    ids = fleet_scene(sim, vast)
    source = PrefectInstanceEvents()
    wanted = [ids[n] for n in ("busy", "broken", "idle")]  # one decisive event each
    deadline = time.monotonic() + 30
    while len(verdicts(source(wanted))) < 3:  # the server stores events within its flush
        assert time.monotonic() < deadline, "the events never reached the store"
        time.sleep(0.5)
    state = fleet_reaper(fleet="reap", return_state=True)
    assert state.is_completed(), state
    summary = state.result()
    reasons = {int(i): r for i, r in summary["reasons"].items()}
    assert reasons == {ids[name]: want[0] for name, want in EXPECTED.items()}
    assert set(vast.instances) == {ids["busy"], ids["plain"]}
    rows = artifacts_of(state.state_details.flow_run_id)["table"][0].data
    rows = rows if isinstance(rows, list) else yaml.safe_load(rows)
    details = {r["instance"]: r["detail"] for r in rows}
    assert details == {ids[name]: want[1] for name, want in EXPECTED.items()}
    token = sim.boxes[ids["busy"]].record.env[GATEWAY_TOKEN_ENV]
    assert token not in json.dumps(rows) + json.dumps(summary)
