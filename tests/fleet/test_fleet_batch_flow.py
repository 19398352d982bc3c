"""``fleet-batch`` end to end on Prefect's real engine, all on 127.0.0.1: the vast.ai test
server rents instances that are ComfyUI test servers behind real gateways
(tests/fleet/sim.py). 60 jobs over the ready instances, one instance killed halfway, one
failed warm-up; every job exactly once in results.parquet with the instance that ran it,
every rented instance destroyed, the cost in the summary artifact; a failing run and the
cancellation hook destroy what the run rented too."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from comfyfleet.fleet.ready import endpoint_name
from comfyfleet.fleet.rent import rent_fleet
from comfyfleet.fleet.vast import VastClient
from comfyfleet.generate.batch import read_results
from comfyfleet.store import open_store
from deployments.serve import load_deployments
from tests.doubles.vast import TEST_KEY, FakeVast
from tests.fleet.sim import SimFleet, prefect_emitter, vast_of_its_own
from tests.fleet.test_fleet_batch import jobs_file, rent_request, tokens
from tests.support.artifacts import artifacts_of

JOBS = 60


@pytest.fixture
def vast(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeVast]:
    yield from vast_of_its_own(monkeypatch)


@pytest.fixture
def sim(vast: FakeVast) -> Iterator[SimFleet]:
    for dph in (0.30, 0.40, 0.50, 0.60):
        vast.add_offer(gpu_name="RTX 4090", gpu_ram=24564, dph_base=dph)
    fleet = SimFleet(vast, execution_time=0.05)
    yield fleet
    fleet.close()


def kill_halfway(sim: SimFleet, victim_index: int) -> threading.Thread:
    """Stop one instance's ComfyUI once half the jobs were handed out."""

    def watch() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if len(sim.created) > victim_index:
                total = sum(sim.accepted(i) for i in sim.boxes)
                if total >= JOBS // 2:
                    sim.kill(sim.created[victim_index])
                    return
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def params(tmp_path: Path, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "fleet": "night",
        "jobs_file": jobs_file(tmp_path, JOBS),
        "count": 4,
        "profile": "auto",
        "mode": "baked",
        "min_vram_gb": 24,
        "disk_gb": 60,
        "store": str(tmp_path / "store"),
        "batch_id": "fleet-e2e",
        # The wait ends once every instance said ready or failed; the store shows an event
        # within the server's persister flush (0.5 s in the tests, tests/conftest.py).
        "ready_timeout_s": 30.0,
        "endpoint_timeout_s": 1.0,
        "fal_fallback": False,
    }
    base.update(kw)
    return base


@pytest.mark.flow
def test_fleet_batch_rents_runs_survives_a_dead_instance_and_releases_all(
    prefect_harness: None,
    sim: SimFleet,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from flows.fleet import fleet_batch

    # The instances report to the Prefect test server; the broken one's event is stored
    # before its create returns (the others may finish the batch within the store's flush).
    sim.emit = prefect_emitter(failures_stored=True)
    sim.broken = {4}  # the fourth instance fails its warm-up: released, no jobs
    killer = kill_halfway(sim, 0)
    prefect_logger = logging.getLogger("prefect")
    caplog.set_level(logging.INFO, logger="prefect")
    prefect_logger.addHandler(caplog.handler)
    started = time.monotonic()
    try:
        state = fleet_batch(**params(tmp_path), return_state=True)
    finally:
        prefect_logger.removeHandler(caplog.handler)
    wall = time.monotonic() - started
    killer.join(5)
    assert state.is_completed(), state
    summary = state.result()
    first, _, _, broken = sim.created
    # Every job exactly once, each row naming the instance that ran it (never the broken one).
    rows = read_results(open_store(str(tmp_path / "store")), "fleet-e2e")
    assert Counter(r["id"] for r in rows) == {f"j{k:03d}": 1 for k in range(JOBS)}
    assert all(r["status"] == "ok" for r in rows)
    ran = Counter(r["endpoint"] for r in rows)
    assert set(ran) <= {endpoint_name(i) for i in sim.created[:3]}, ran
    assert 0 < ran[endpoint_name(first)] < JOBS  # it worked, then died; the rest took over
    assert sim.accepted(broken) == 0 and endpoint_name(broken) not in ran
    # Everything rented is destroyed; the broken one first, as soon as its event was read.
    assert sim.destroyed[0] == broken
    assert sorted(sim.destroyed) == sorted(sim.created) and not sim.vast.instances
    assert sorted(summary["released"]) == sorted(sim.created) and summary["not_released"] == []
    assert summary["cost_usd"] > 0 and summary["cost_per_output_usd"] > 0
    # The cost, per instance, per batch and per output, in the artifacts.
    arts = artifacts_of(state.state_details.flow_run_id)
    (table,) = arts["table"]
    data = table.data if isinstance(table.data, list) else yaml.safe_load(table.data)
    by_id = {row["instance"]: row for row in data}
    assert set(by_id) == set(sim.created)
    assert by_id[broken]["state"] == "not ready: warm-up failed: ComfyUI did not start"
    assert by_id[broken]["jobs_ok"] == 0
    assert sum(row["jobs_ok"] for row in data) == JOBS
    assert sum(row["cost_usd"] for row in data) == pytest.approx(summary["cost_usd"], abs=1e-5)
    text = str(arts["markdown"][0].data)
    assert "per output" in text and "per job" in text and f"{JOBS} ok" in text
    # No gateway token or vast.ai key anywhere: parameters, logs, artifacts, results.
    out, err = capfd.readouterr()
    everything = caplog.text + out + err + json.dumps(rows, default=str) + text
    everything += json.dumps(data) + json.dumps(summary)
    assert TEST_KEY not in everything and not [t for t in tokens(sim) if t in everything]
    print(f"fleet-batch e2e: {JOBS} jobs on 3+1 instances, one killed halfway: {wall:.1f} s")


@pytest.mark.flow
def test_a_failing_run_and_the_cancellation_hook_release_what_was_rented(
    prefect_harness: None, sim: SimFleet, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client

    from flows.fleet import _release_hook, fleet_batch

    sim.emit = prefect_emitter()
    state = fleet_batch(
        **params(tmp_path, count=2, jobs_file=str(tmp_path / "missing.csv")), return_state=True
    )
    assert state.is_failed(), state
    assert len(sim.created) == 2 and sorted(sim.destroyed) == sorted(sim.created)
    arts = artifacts_of(state.state_details.flow_run_id)
    assert "**Stopped**" in str(arts["markdown"][0].data)
    # A run killed outright never reaches its finally: the hook finds its instances by mark.
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
    for _ in range(3):
        sim.vast.add_offer(gpu_name="RTX 3090", gpu_ram=24576, dph_base=0.2)
    with VastClient() as vast_client:
        mine = rent_fleet(vast_client, replace(rent_request(2), rent_id=str(run.id)))
        other = rent_fleet(vast_client, rent_request(1))  # another run's: left alone
    _release_hook(None, run, None)
    gone = {r.instance_id for r in mine.rented}
    assert gone <= set(sim.destroyed)
    assert set(sim.vast.instances) == {other.rented[0].instance_id}


@pytest.mark.flow
def test_a_failed_warmup_event_releases_it_mid_batch_and_a_hung_one_gets_no_jobs(
    prefect_harness: None, sim: SimFleet, tmp_path: Path
) -> None:
    """Events in the real Prefect server decide: the second instance's warm-up failed event
    releases it while the batch runs on the first; the third's warm-up never ends (no
    gateway, no event), so it gets no job and is released when the batch ends (before the
    30 s timeout: the run does not wait it out)."""
    from flows.fleet import fleet_batch

    # The failed warm-up's event is in the store before its create call returns, so the
    # wait's first read of the events sees it; 60 jobs x 0.08 s on one ComfyUI last well
    # past that read, so the release on that event happens mid-batch.
    sim.emit, sim.broken, sim.hung = prefect_emitter(failures_stored=True), {2}, {3}
    sim.execution_time = 0.08
    started = time.monotonic()
    state = fleet_batch(**params(tmp_path, count=3, ready_timeout_s=30.0), return_state=True)
    assert state.is_completed(), state
    first, broken, hung = sim.created
    assert sim.boxes[hung].comfy is not None and broken in sim.destroyed_at
    rows = read_results(open_store(str(tmp_path / "store")), "fleet-e2e")
    assert Counter(r["endpoint"] for r in rows) == {endpoint_name(first): JOBS}
    assert sim.accepted(broken) == sim.accepted(hung) == 0
    assert sim.destroyed[:2] == [broken, hung]
    assert sim.destroyed_at[broken] < sim.destroyed_at[first] - 0.5  # before the end
    assert sim.destroyed_at[hung] - started < 30.0
    states = state.result()["instances"]
    assert states[str(broken)] == "not ready: warm-up failed: ComfyUI did not start"
    assert states[str(hung)].startswith("not ready: not ready when the batch ended (")
    assert states[str(hung)].endswith("; no comfyfleet.instance.ready event yet")
    assert "gateway unreachable" in states[str(hung)]


@pytest.mark.flow
def test_without_ready_events_the_probe_decides(
    prefect_harness: None, sim: SimFleet, tmp_path: Path
) -> None:
    from flows.fleet import fleet_batch

    params_ = params(tmp_path, count=2, ready_timeout_s=5.0, ready_events=False)
    state = fleet_batch(**params_, return_state=True)  # no events at all (sim.emit None)
    assert state.is_completed(), state
    rows = read_results(open_store(str(tmp_path / "store")), "fleet-e2e")
    assert {r["endpoint"] for r in rows} == {endpoint_name(i) for i in sim.created}


def test_deployment_on_the_cpu_pool() -> None:
    spec = {d["name"]: d for d in load_deployments()}["fleet-batch"]
    assert spec["entrypoint"] == "flows/fleet.py:fleet_batch"
    assert spec["work_pool"]["name"] == "comfyfleet-cpu"
    assert spec["parameters"]["vast_block"] == "comfyfleet-vast"
    assert "schedules" not in spec


@pytest.mark.flow
def test_cancelling_a_served_run_destroys_every_instance_it_rented(
    prefect_harness: None, sim: SimFleet, tmp_path: Path
) -> None:
    """A real cancellation: the flow served by Prefect's runner (its runs in their own
    processes), a run started, cancelled through the API while it waits for its instances;
    the runner kills the run's process (no ``finally`` runs there) and the on_cancellation
    hook destroys what the run rented, found by its mark."""
    import os
    import subprocess
    import sys

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.objects import StateType
    from prefect.settings import PREFECT_API_URL
    from prefect.states import Cancelling

    sim.hung = {1, 2}  # warm-ups that never end: the run waits for them
    sim.emit = prefect_emitter()
    name = f"cancel-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.fleet.serve_fleet_batch", name],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "serve.log", "w"),  # noqa: SIM115
        text=True,
    )
    try:
        with get_client(sync_client=True) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    deployment = client.read_deployment_by_name(f"fleet-batch/{name}")
                    break
                except Exception:  # noqa: BLE001 - not registered yet
                    assert server.poll() is None, (tmp_path / "serve.log").read_text()
                    assert time.monotonic() < deadline, "the deployment never appeared"
                    time.sleep(0.5)
            run = client.create_flow_run_from_deployment(
                deployment.id, parameters=params(tmp_path, count=2, ready_timeout_s=300.0)
            )
            while len(sim.created) < 2:
                assert time.monotonic() < deadline, "the run rented nothing"
                time.sleep(0.2)
            # An instance with the run's mark that its process never learnt of (a create
            # whose answer was lost): only the hook, which finds instances by mark, can
            # destroy it. And another run's instance, which must stay.
            with VastClient() as vast_client:
                lost = rent_fleet(vast_client, replace(rent_request(1), rent_id=str(run.id)))
                other = rent_fleet(vast_client, rent_request(1))
            mine = [*sim.created[:2], lost.rented[0].instance_id]
            client.set_flow_run_state(run.id, Cancelling(), force=True)
            while True:
                state = client.read_flow_run(run.id).state
                cancelled = state is not None and state.type == StateType.CANCELLED
                if cancelled and sorted(sim.destroyed) == sorted(mine):
                    break
                assert time.monotonic() < deadline, (state, sim.destroyed, sim.created)
                time.sleep(0.2)
            # The hook said what it did on the run's log (sent by the runner's process).
            lost_id = lost.rented[0].instance_id
            said: list[str] = []
            # (Usually the run's own finally had released the two it knew: TerminationSignal
            # is a BaseException; the hook destroys what is left by the mark.)
            while not any("hook: destroyed [" in m and str(lost_id) in m for m in said):
                assert time.monotonic() < deadline, said
                time.sleep(0.5)
                logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
                said = [log.message for log in logs]
    finally:
        server.terminate()
        server.wait(30)
    assert set(sim.vast.instances) == {other.rented[0].instance_id}
    assert lost.rented[0].instance_id in sim.destroyed


def test_an_unreachable_event_store_is_warned_once_and_reads_as_nothing_yet() -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.fleet import PrefectInstanceEvents

    warned: list[str] = []
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):  # nothing listens
        source = PrefectInstanceEvents(warned.append)
        assert source([1]) == [] and source([2]) == [] and source([]) == []
    assert len(warned) == 1 and "ConnectError" in warned[0]
