"""``FleetBatch`` on 127.0.0.1: the vast.ai test server's instances are ComfyUI test servers
behind real gateways (tests/fleet/sim.py). Rent, run from the first ready instance while the
others join as they get ready, release: a failed warm-up is released and takes no job, one
never ready is released at the timeout while the batch goes on, a batch that raises or is
interrupted still destroys everything rented, a reused fleet is left running, and the cost is
$/h x billed time."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from comfyfleet.errors import ConfigError, FleetError
from comfyfleet.fleet.access import GATEWAY_TOKEN_ENV
from comfyfleet.fleet.batch import FleetBatch, FleetBatchReport, FleetBatchRequest
from comfyfleet.fleet.instance_events import InstanceEvent, parse_event, verdicts
from comfyfleet.fleet.offers import OfferQuery
from comfyfleet.fleet.ready import ReadyWatch, endpoint_name, ready_endpoints
from comfyfleet.fleet.rent import RentRequest, rent_fleet
from comfyfleet.fleet.vast import VastClient
from comfyfleet.generate.batch import BatchOptions, read_results
from comfyfleet.render.assets import OnstartSettings
from comfyfleet.store.base import ObjectStore
from comfyfleet.warmup.events import INSTANCE_READY, WARMUP_FINISHED
from tests.doubles.vast import FakeVast
from tests.fleet.sim import EventLog, SimFleet, vast_of_its_own

OPTIONS = BatchOptions(batch_id="fb", endpoint_timeout_s=1.0, retry_backoff_s=0.05)


Lines = list[tuple[float, str]]


def rent_request(count: int, fleet: str = "night") -> RentRequest:
    return RentRequest(
        fleet=fleet,
        count=count,
        profile="auto",
        query=OfferQuery(min_vram_gb=24, disk_gb=60),
        onstart=OnstartSettings(mode="baked"),
    )


def run_fleet(
    request: FleetBatchRequest,
    store: ObjectStore,
    events: EventLog | None = None,
    then: Callable[[str], None] | None = None,
    **kw: Any,
) -> tuple[FleetBatchReport, Lines]:
    """One ``FleetBatch`` on the vast.ai test server (``events`` its event source, ``kw``
    the rest of its knobs): its report and every line it said, timestamped
    (``time.monotonic()``); ``then`` sees each line after it was kept (it may raise)."""
    lines: Lines = []

    def say(line: str) -> None:
        lines.append((time.monotonic(), line))
        if then is not None:
            then(line)

    with VastClient() as client:
        report = FleetBatch(client, request, store=store, events=events, say=say, **kw).run()
    return report, lines


@pytest.fixture
def vast(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeVast]:
    yield from vast_of_its_own(monkeypatch)


@pytest.fixture
def sim(vast: FakeVast) -> Iterator[SimFleet]:
    for dph in (0.30, 0.40, 0.50, 0.60):
        vast.add_offer(gpu_name="RTX 4090", gpu_ram=24564, dph_base=dph)
    fleet = SimFleet(vast)
    yield fleet
    fleet.close()


def jobs_file(tmp_path: Path, n: int) -> str:
    path = tmp_path / "jobs.jsonl"
    path.write_text(
        "\n".join(
            json.dumps({"id": f"j{k:03d}", "workflow": "sdxl_txt2img", "prompt": "x", "seed": k})
            for k in range(n)
        )
    )
    return str(path)


def tokens(sim: SimFleet) -> set[str]:
    return {box.record.env[GATEWAY_TOKEN_ENV] for box in sim.boxes.values()}


def test_failed_warmup_is_released_and_never_gets_a_job(
    sim: SimFleet, tmp_path: Path, local_store: ObjectStore
) -> None:
    sim.broken = {2}  # the second instance's ComfyUI never comes up (its gateway does)
    request = FleetBatchRequest(
        "night", jobs_file(tmp_path, 12), OPTIONS, rent_request(3), ready_timeout_s=1.5
    )
    report, _ = run_fleet(request, local_store)
    first, broken, third = sim.created
    assert report.batch is not None and report.batch.ok
    # Given up at the timeout, or when the batch ended first (it does not wait for it).
    assert report.instances[broken].state.startswith("not ready: not ready ")
    assert "502" in report.instances[broken].state
    assert {r.endpoint for r in report.batch.results} <= {
        endpoint_name(first),
        endpoint_name(third),
    }
    assert report.instances[broken].jobs_ok == 0
    assert sim.destroyed[0] == broken  # released before the others
    assert sorted(sim.destroyed) == sorted(sim.created) and not sim.vast.instances
    assert report.jobs_ok == 12 and report.outputs >= 12
    assert report.cost_usd > 0 and report.cost_per_output_usd == report.cost_usd / report.outputs
    text = report.markdown() + json.dumps(report.table())
    assert "per output" in text and not [t for t in tokens(sim) if t in text]


def test_a_batch_that_raises_still_destroys_everything_rented(
    sim: SimFleet, tmp_path: Path, local_store: ObjectStore
) -> None:
    request = FleetBatchRequest("night", str(tmp_path / "missing.csv"), OPTIONS, rent_request(2))
    with VastClient() as client:
        run = FleetBatch(client, request, store=local_store)
        with pytest.raises(ConfigError):
            run.run()
    assert len(sim.created) == 2 and sorted(sim.destroyed) == sorted(sim.created)
    assert not sim.vast.instances
    assert run.report.error and sorted(run.report.released.destroyed) == sorted(sim.created)
    assert all(u.released == "destroyed" for u in run.report.instances.values())


def test_an_interrupt_still_destroys_everything_rented(
    sim: SimFleet, tmp_path: Path, local_store: ObjectStore
) -> None:
    def interrupt(line: str) -> None:
        if line.startswith("running the batch"):
            raise KeyboardInterrupt  # Ctrl-C between readiness and the batch

    request = FleetBatchRequest("night", jobs_file(tmp_path, 4), OPTIONS, rent_request(2))
    with pytest.raises(KeyboardInterrupt):
        run_fleet(request, local_store, then=interrupt)
    assert len(sim.created) == 2 and sorted(sim.destroyed) == sorted(sim.created)


def test_no_ready_instance_fails_and_releases(
    sim: SimFleet, tmp_path: Path, local_store: ObjectStore
) -> None:
    sim.broken = {1, 2}
    request = FleetBatchRequest(
        "night", jobs_file(tmp_path, 4), OPTIONS, rent_request(2), ready_timeout_s=1.0
    )
    with pytest.raises(FleetError, match="no instance of fleet night"):
        run_fleet(request, local_store)
    assert sorted(sim.destroyed) == sorted(sim.created) and len(sim.created) == 2


def test_reuse_runs_on_the_fleet_and_leaves_it_running(
    sim: SimFleet, tmp_path: Path, local_store: ObjectStore
) -> None:
    with VastClient() as client:
        rent_fleet(client, rent_request(2, fleet="day"))
        endpoints = ready_endpoints(client, "day", timeout_s=5)
        assert [e.name for e in endpoints] == [endpoint_name(i) for i in sorted(sim.created)]
        assert all(e.token is not None for e in endpoints)
        assert not [t for t in tokens(sim) if t in repr(endpoints)]
        request = FleetBatchRequest("day", jobs_file(tmp_path, 8), OPTIONS, rent=None)
        report = FleetBatch(client, request, store=local_store).run()
    assert report.batch is not None and report.batch.ok
    assert sim.destroyed == [] and len(sim.vast.instances) == 2
    assert all(u.released == "kept (reused)" and not u.rented for u in report.instances.values())
    rows = read_results(local_store, "fb")
    assert sorted(r["id"] for r in rows) == [f"j{k:03d}" for k in range(8)]


def test_generate_cli_runs_on_a_fleet(
    sim: SimFleet,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from comfyfleet.cli import main

    sim.broken = {3}  # not ready: left out of the batch
    with VastClient() as client:
        rent_fleet(client, rent_request(3))
    store = str(tmp_path / "store")
    argv = ["generate", jobs_file(tmp_path, 10), "--fleet", "night", "--store", store,
            "--batch-id", "cli", "--no-fal", "--json"]  # fmt: skip
    assert not [t for t in tokens(sim) if t in " ".join(argv)]
    code = main(argv)
    out, err = capfd.readouterr()
    assert code == 0, err
    ran = {row["endpoint"] for row in json.loads(out)["jobs"]}
    good = {endpoint_name(i) for i in sim.created[:2]}
    assert ran <= good and ran, ran
    assert sim.accepted(sim.created[0]) + sim.accepted(sim.created[1]) == 10
    for text in (out, err, caplog.text):
        assert not [t for t in tokens(sim) if t in text]
    assert main(["generate", jobs_file(tmp_path, 1), "--fleet", "empty", "--store", store]) == 1
    assert "fleet empty has no ready instance" in capfd.readouterr().err


# ------------------------------------------------- readiness from the instances' events


def test_an_answering_gateway_is_ready_before_or_without_its_event(sim: SimFleet) -> None:
    # The fleet script starts the gateway only after the warm-up passed: its answer is the
    # warm-up's word, seconds before the event store gives the event back (or when the
    # instance could not reach the Prefect server at all).
    log = EventLog()
    sim.emit, sim.silent = log.emit, {2}  # the second's gateway and ComfyUI answer, no event
    with VastClient() as client:
        rent_fleet(client, rent_request(3))
        first, silent, third = sim.created
        by_events = ReadyWatch(client, "night", timeout_s=1.0, events=log, poll_s=0.1)
        by_probe = ReadyWatch(client, "night", timeout_s=1.0)
        assert sorted(by_events.run_to_end().ready) == [first, silent, third]
        assert sorted(by_probe.run_to_end().ready) == [first, silent, third]
        assert log.reads >= 1
        # Silent and not answering: the reason names both.
        sim.boxes[silent].gateway.stop()
        again = ReadyWatch(client, "night", [silent], timeout_s=0.3, events=log, poll_s=0.1)
        readiness = again.run_to_end()
    assert not readiness.ready and silent not in readiness.failed
    assert readiness.not_ready[silent].startswith("not ready after 0.3 s: gateway unreachable")
    assert readiness.not_ready[silent].endswith(f"; no {INSTANCE_READY} event yet")


def test_a_ready_event_still_needs_the_gateway_to_answer(sim: SimFleet) -> None:
    log = EventLog()
    sim.emit = log.emit
    with VastClient() as client:
        rent_fleet(client, rent_request(1))
        (only,) = sim.created
        sim.boxes[only].gateway.stop()  # warmed up, then unreachable
        watch = ReadyWatch(client, "night", timeout_s=0.5, events=log, poll_s=0.1)
        readiness = watch.run_to_end()
    assert not readiness.ready
    assert readiness.not_ready[only].startswith("not ready after 0.5 s: gateway unreachable")


def test_a_failed_warmup_event_fails_and_releases_it_at_once(
    sim: SimFleet, tmp_path: Path, local_store: ObjectStore
) -> None:
    log = EventLog()
    sim.emit, sim.broken, sim.hung = log.emit, {2}, {3}
    request = FleetBatchRequest(
        "night", jobs_file(tmp_path, 6), OPTIONS, rent_request(3), ready_timeout_s=3.0
    )
    started = time.monotonic()
    report, lines = run_fleet(request, local_store, log)
    first, broken, hung = sim.created
    assert report.batch is not None and report.batch.ok
    assert {r.endpoint for r in report.batch.results} == {endpoint_name(first)}
    assert sim.accepted(broken) == sim.accepted(hung) == 0
    assert report.instances[broken].state == "not ready: warm-up failed: ComfyUI did not start"
    # The 6 jobs are done long before the 3 s timeout: the run does not wait it out.
    assert report.instances[hung].state.startswith("not ready: not ready when the batch ended")
    # Released the moment its event was read, not when the watch ended.
    assert sim.destroyed[0] == broken and sim.destroyed_at[broken] - started < 2.0
    assert sim.destroyed[1] == hung and sim.destroyed_at[hung] - started < 3.0
    assert any(f"instance {broken} failed" in line for _, line in lines)
    assert sorted(sim.destroyed) == sorted(sim.created) and not sim.vast.instances
    assert report.released.destroyed.count(broken) == 1


def test_events_are_matched_by_the_vast_id_in_resource_or_payload() -> None:
    ready = parse_event(
        INSTANCE_READY, "comfyfleet.instance.host-a", {"contract_id": "42", "endpoint": "u"}, 5.0
    )
    assert ready == InstanceEvent(42, "ready", 5.0, True, "u")
    failed = parse_event(
        WARMUP_FINISHED, "comfyfleet.instance.C.7", {"exit_code": 3, "verdict": "FAIL"}, 6.0
    )
    assert failed is not None and failed.failed and failed.detail == "verdict FAIL"
    passed = parse_event(WARMUP_FINISHED, "comfyfleet.instance.7", {"exit_code": 0}, 7.0)
    assert passed is not None and not passed.failed and passed.instance_id == 7
    assert parse_event(WARMUP_FINISHED, "comfyfleet.instance.7", {"ok": False}, 1.0) is not None
    assert parse_event("comfyfleet.instance.started", "comfyfleet.instance.7", {}, 1.0) is None
    assert parse_event(INSTANCE_READY, "comfyfleet.instance.my-box", {}, 1.0) is None
    assert parse_event(INSTANCE_READY, "prefect.flow-run.7", {"contract_id": "7"}, 1.0) is None
    # The latest decisive event wins: a reboot that passed after a failure is ready.
    assert verdicts([failed, ready, passed, InstanceEvent(7, "ready", 8.0)])[7].kind == "ready"
    assert verdicts([InstanceEvent(7, "ready", 1.0), failed])[7].failed
    assert 7 not in verdicts([passed])


# ------------------------------------------------- instances join the running batch


def _ran(rows: list[dict[str, object]]) -> Counter[str]:
    return Counter(str(r["endpoint"]) for r in rows)


def test_a_late_instance_joins_the_running_batch(
    sim: SimFleet, tmp_path: Path, local_store: ObjectStore
) -> None:
    """The batch starts on the first ready instance; the second, ready 1 s later, joins it
    and takes jobs; every job runs once."""
    log = EventLog()
    sim.emit, sim.late, sim.execution_time = log.emit, {2: 1.0}, 0.1
    request = FleetBatchRequest(
        "night", jobs_file(tmp_path, 30), OPTIONS, rent_request(2), ready_timeout_s=10.0
    )
    report, lines = run_fleet(request, local_store, log, poll_s=0.1)
    first, late = sim.created
    assert report.batch is not None and report.batch.ok, report.batch
    rows = read_results(local_store, "fb")
    assert Counter(r["id"] for r in rows) == {f"j{k:03d}": 1 for k in range(30)}
    ran = _ran(rows)
    assert set(ran) == {endpoint_name(first), endpoint_name(late)}, ran
    assert sim.accepted(first) + sim.accepted(late) == 30  # no prompt ran twice
    # It started on the first alone, and the late one joined while jobs were still left.
    (start,) = [t for t, line in lines if line.startswith("running the batch on 1 ready")]
    (joined,) = [t for t, line in lines if line == f"instance {late} is ready: it joins the batch"]
    assert joined - start >= 0.5 and ran[endpoint_name(late)] >= 3, ran
    assert report.batch.endpoints == {endpoint_name(first): "", endpoint_name(late): ""}
    assert report.instances[late].state == report.instances[first].state == "ran jobs"
    assert report.instances[late].jobs_ok == ran[endpoint_name(late)]
    assert report.jobs_ok == 30 and report.cost_usd > 0
    assert sorted(sim.destroyed) == sorted(sim.created) and not sim.vast.instances


def test_an_instance_never_ready_is_released_at_the_timeout_while_the_batch_goes_on(
    sim: SimFleet, tmp_path: Path, local_store: ObjectStore
) -> None:
    log = EventLog()
    sim.emit, sim.hung, sim.execution_time = log.emit, {2}, 0.1
    request = FleetBatchRequest(
        "night", jobs_file(tmp_path, 30), OPTIONS, rent_request(2), ready_timeout_s=1.0
    )
    started = time.monotonic()
    report, _ = run_fleet(request, local_store, log, poll_s=0.1)
    ended = time.monotonic()
    first, hung = sim.created
    assert report.batch is not None and report.batch.ok
    rows = read_results(local_store, "fb")
    assert Counter(r["id"] for r in rows) == {f"j{k:03d}": 1 for k in range(30)}
    assert _ran(rows) == {endpoint_name(first): 30} and sim.accepted(hung) == 0
    assert report.instances[hung].state.startswith(
        "not ready: not ready after 1 s: gateway unreachable"
    )
    # Released at its timeout, seconds before the batch (30 x 0.1 s on one ComfyUI) ended.
    assert sim.destroyed[0] == hung
    assert 1.0 <= sim.destroyed_at[hung] - started < ended - started - 0.5
    assert sim.destroyed_at[first] >= ended - 1.0  # released at the end, with the batch
    assert report.instances[hung].seconds < report.instances[first].seconds
    assert sorted(sim.destroyed) == sorted(sim.created)


def test_vast_failing_during_the_batch_ends_the_joining_not_the_batch(
    sim: SimFleet, tmp_path: Path, local_store: ObjectStore
) -> None:
    """Once the batch runs, a watch that cannot list the fleet any more (vast.ai refusing
    the key) stops adding instances; the batch finishes on the ones it has and everything
    rented is still released."""
    log = EventLog()
    sim.emit, sim.late, sim.execution_time = log.emit, {2: 3.0}, 0.1

    def refuse_the_key(line: str) -> None:
        if line.startswith("running the batch"):
            sim.vast.fail(401, times=1000, method="GET", path="/instances")

    request = FleetBatchRequest(
        "night", jobs_file(tmp_path, 20), OPTIONS, rent_request(2), ready_timeout_s=10.0
    )
    report, lines = run_fleet(request, local_store, log, then=refuse_the_key, poll_s=0.1)
    first, late = sim.created
    assert report.batch is not None and report.batch.ok
    rows = read_results(local_store, "fb")
    assert _ran(rows) == {endpoint_name(first): 20} and sim.accepted(late) == 0
    stopped = "watching the fleet's readiness stopped: "
    assert any(line.startswith(stopped) for _, line in lines), lines
    assert report.instances[late].state.startswith("not ready: ")
    sim.vast.clear_faults()
    assert sorted(sim.destroyed) == sorted(sim.created) and not sim.vast.instances
