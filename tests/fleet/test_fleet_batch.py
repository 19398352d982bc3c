"""``FleetBatch`` on 127.0.0.1: the vast.ai test server's instances are ComfyUI test servers
behind real gateways (tests/fleet/sim.py). Rent, wait, run, release: a failed warm-up is
released and takes no job, a batch that raises or is interrupted still destroys everything
rented, a reused fleet is left running, and the cost is $/h x billed time."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from comfyfleet.errors import ConfigError, FleetError
from comfyfleet.fleet.access import GATEWAY_TOKEN_ENV
from comfyfleet.fleet.batch import FleetBatch, FleetBatchRequest
from comfyfleet.fleet.offers import OfferQuery
from comfyfleet.fleet.ready import endpoint_name, ready_endpoints
from comfyfleet.fleet.rent import RentRequest, rent_fleet
from comfyfleet.fleet.vast import VastClient
from comfyfleet.generate.batch import BatchOptions, read_results
from comfyfleet.render.assets import OnstartSettings
from comfyfleet.store.base import ObjectStore
from tests.doubles.vast import FakeVast
from tests.fleet.sim import SimFleet

OPTIONS = BatchOptions(batch_id="fb", endpoint_timeout_s=1.0, retry_backoff_s=0.05)


def rent_request(count: int, fleet: str = "night") -> RentRequest:
    return RentRequest(
        fleet=fleet,
        count=count,
        profile="auto",
        query=OfferQuery(min_vram_gb=24, disk_gb=60),
        onstart=OnstartSettings(mode="baked"),
    )


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
    with VastClient() as client:
        report = FleetBatch(client, request, store=local_store).run()
    first, broken, third = sim.created
    assert report.batch is not None and report.batch.ok
    assert report.instances[broken].state.startswith("not ready: not ready after 1.5 s")
    assert "502" in report.instances[broken].state
    assert {r.endpoint for r in report.batch.results} <= {
        endpoint_name(first),
        endpoint_name(third),
    }
    assert report.instances[broken].jobs_ok == 0
    assert sim.destroyed[0] == broken  # released before the batch ran
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
    with VastClient() as client, pytest.raises(KeyboardInterrupt):
        FleetBatch(client, request, store=local_store, say=interrupt).run()
    assert len(sim.created) == 2 and sorted(sim.destroyed) == sorted(sim.created)


def test_no_ready_instance_fails_and_releases(
    sim: SimFleet, tmp_path: Path, local_store: ObjectStore
) -> None:
    sim.broken = {1, 2}
    request = FleetBatchRequest(
        "night", jobs_file(tmp_path, 4), OPTIONS, rent_request(2), ready_timeout_s=1.0
    )
    with VastClient() as client, pytest.raises(FleetError, match="no instance of fleet night"):
        FleetBatch(client, request, store=local_store).run()
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
