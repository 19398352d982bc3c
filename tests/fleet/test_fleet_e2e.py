"""The fleet end to end, with instances that are real local processes (tests/fleet/instances.py).

``fleet-batch`` (the real flow, on the session's Prefect server) rents 4 instances from the
vast.ai test server. Each one runs the on-start script vast.ai was sent: it downloads the
comfyfleet wheel the flow published into SeaweedFS (presigned URL, sha256 checked),
installs it with pip into its own venv (no index: the test venv's packages stand in for the
image's, comfyfleet itself only from the wheel), warms up from the SeaweedFS mirror as a
flow run named after the instance, starts its gateway and emits ``comfyfleet.instance.ready``.
The fourth instance's image ships a catalog whose profile names a file that is not mirrored:
its warm-up fails, it never opens its gateway and never gets a job. 300 jobs run over the
other three; one of them is preempted (its whole process tree killed) once half the jobs
were handed out. Then: every job exactly once in results.parquet, each row naming a
serving instance; every rented instance destroyed and no process of any left; the warm-up
runs and the ready events on the Prefect server; no token, key or presigned URL in any
instance log, flow log or artifact.

The readiness wait of ``fleet-batch`` may come from probing the gateways or from the ready
events: the assertions hold for both (a failed warm-up is never ready either way).

The second test: an instance rented for a fleet whose renter then died (an orphan: warmed
up, ready, idle) is destroyed by the ``fleet-reaper`` flow, processes and all.
"""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from comfyfleet.fleet.access import GATEWAY_PORT, GATEWAY_TOKEN_ENV
from comfyfleet.fleet.ready import endpoint_name
from comfyfleet.fleet.wheel import WHEEL_SHA256_ENV, WHEEL_URL_ENV
from comfyfleet.generate.batch import read_results
from comfyfleet.warmup import events
from comfyfleet.warmup.reports import read_history
from tests.doubles.vast import TEST_KEY, FakeVast
from tests.fleet.instances import Box, Image, ProcessFleet, site_overlay
from tests.support.artifacts import artifacts_of
from tests.support.seaweed import SeaweedServer
from tests.warmup.mirrored import mirror, write_catalog

pytestmark = [pytest.mark.flow, pytest.mark.s3]

JOBS = 300
PROFILE = "tiny"  # a profile of the instances' catalog: two small files, both mirrored
BROKEN = 4  # the fourth instance rented: its image's catalog names a file not mirrored
VICTIM = 1  # the first one: preempted halfway through the batch
IDLE_LIMIT_S = 3.0  # the reaper test's idle limit
_INSTANCE_IDS = itertools.count(random.randrange(10**7, 9 * 10**7, 1000), 1000)


@dataclass
class Bucket:
    block: str  # the comfyfleet-store block the flows are given
    store: Any  # the same store, opened here
    server: SeaweedServer


@pytest.fixture(scope="module")
def overlay(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return site_overlay(tmp_path_factory.mktemp("instances") / "site-packages")


@pytest.fixture
def bucket(
    prefect_harness: None,
    s3_server: SeaweedServer,
    s3_shared_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Bucket:
    """A store block on the Prefect server for a fresh prefix of SeaweedFS, the tiny
    mirror in it, and the environment a CPU worker running fleet-batch has."""
    from prefect.settings import PREFECT_API_URL

    from blocks import ComfyfleetStore

    ComfyfleetStore.register_type_and_schema(_sync=True)
    block = ComfyfleetStore(
        bucket=s3_shared_bucket,
        prefix=f"fleet-e2e-{uuid.uuid4().hex[:8]}",
        endpoint_url=s3_server.endpoint_url,
        region=s3_server.region,
        access_key_id=s3_server.access_key,
        secret_access_key=s3_server.secret_key,
    )
    name = f"fleet-e2e-{uuid.uuid4().hex[:8]}"
    block.save(name)
    store = block.open()
    mirror(store, ["base", "vae"])
    # The instances report to this server (fleet-batch hands them PREFECT_API_URL).
    monkeypatch.setenv("PREFECT_API_URL", str(PREFECT_API_URL.value()))
    # No AWS_* on the worker: the wheel is published with the block's own credentials.
    for key in s3_server.env():
        monkeypatch.delenv(key, raising=False)
    return Bucket(name, store, s3_server)


@pytest.fixture
def vast(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeVast]:
    """The vast.ai test server, its instance ids this test's own: the warm-up runs and the
    events on the session's Prefect server are named after them."""
    with FakeVast(first_instance_id=next(_INSTANCE_IDS)) as fake:
        monkeypatch.setenv("VAST_URL", fake.url)
        monkeypatch.setenv("VAST_API_KEY", TEST_KEY)
        yield fake


@pytest.fixture
def processes(vast: FakeVast, tmp_path: Path, overlay: Path) -> Iterator[ProcessFleet]:
    catalog = write_catalog(
        tmp_path / "catalog.yaml", profiles={PROFILE: (8, ["base", "vae"])}, ids=["base", "vae"]
    )
    broken = write_catalog(
        tmp_path / "catalog-broken.yaml",
        profiles={PROFILE: (8, ["base", "vae", "style"])},
        ids=["base", "vae", "style"],
    )
    (tmp_path / "instances").mkdir()
    fleet = ProcessFleet(
        vast,
        tmp_path / "instances",
        overlay,
        Image(catalog, execution_time=0.02),
        images={BROKEN: Image(broken)},
    )
    yield fleet
    fleet.close()


def _jobs(tmp_path: Path, n: int) -> str:
    path = tmp_path / "jobs.jsonl"
    rows = [
        {
            "id": f"j{k:03d}",
            "workflow": "sdxl_txt2img",
            "prompt": "x",
            "seed": k,
            "checkpoint": "base.safetensors",
            "steps": 4,
        }
        for k in range(n)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return str(path)


class Preemption:
    """A thread that kills the VICTIM-th instance once the ComfyUIs of the first
    ``serving`` instances accepted half the jobs (each also ran its warm-up prompt)."""

    def __init__(self, processes: ProcessFleet, serving: int) -> None:
        self.processes = processes
        self.serving = serving
        self.at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> Preemption:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _watch(self) -> None:
        created = self.processes.created
        while not self._stop.wait(0.25):
            if len(created) < self.serving:
                continue
            counts = [self.processes.prompts(i) for i in created[: self.serving]]
            if sum(max(c, 0) for c in counts) >= JOBS // 2 + self.serving:
                self.processes.kill(created[VICTIM - 1])
                self.at = time.monotonic()
                return


def _flow_runs_named(name: str, since: datetime) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterName,
        FlowRunFilterStartTime,
    )

    runs = FlowRunFilter(
        name=FlowRunFilterName(any_=[name]), start_time=FlowRunFilterStartTime(after_=since)
    )
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=runs)


def _run_logs(flow_run_ids: list[Any]) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=flow_run_ids)), limit=200
        )
    return "\n".join(log.message for log in logs)


def _events_named(name: str, since: datetime, want: set[str], timeout: float = 30) -> list[Any]:
    """The events called ``name`` in the server's event store since ``since`` (the server
    persists them in batches: poll until one of each resource in ``want`` is there, not a
    count, which another instance's event could make up)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter

    wanted = EventFilter(
        event=EventNameFilter(name=[name]), occurred=EventOccurredFilter(since=since)
    )
    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            page = client.read_events(wanted, limit=50)
        if want <= {e.resource.id for e in page.events} or time.monotonic() > deadline:
            return list(page.events)
        time.sleep(0.5)


def _secrets(processes: ProcessFleet, bucket: Bucket) -> dict[str, str]:
    """What must never be printed: gateway tokens, the AWS secret, the vast.ai key and the
    instances' own keys, the presigned URL's signature."""
    out = {"vast key": TEST_KEY, "aws secret": bucket.server.secret_key}
    for box in processes.boxes.values():
        env = box.record.env
        out[f"token {box.record.id}"] = env[GATEWAY_TOKEN_ENV]
        out[f"instance key {box.record.id}"] = box.record.api_key
        if WHEEL_URL_ENV in env:
            query = parse_qs(urlsplit(env[WHEEL_URL_ENV]).query)
            out[f"wheel url {box.record.id}"] = query["X-Amz-Signature"][0]
    return out


def _installed_from_the_wheel(box: Box) -> tuple[str, str]:
    """Where the instance's Python imports comfyfleet and flows from (its own env)."""
    code = "import comfyfleet, flows; print(comfyfleet.__file__); print(flows.__file__)"
    done = subprocess.run(
        [str(box.venv_python), "-c", code],
        cwd=box.home,  # where the script runs its Python (sys.path[0])
        env=box.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    comfyfleet_file, flows_file = done.stdout.split()
    return comfyfleet_file, flows_file


def test_fleet_batch_on_process_instances_survives_a_preemption_and_releases_all(
    bucket: Bucket,
    vast: FakeVast,
    processes: ProcessFleet,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from flows.fleet import fleet_batch

    for dph in (0.30, 0.35, 0.40, 0.45, 0.90):  # 5 offers; the 4 cheapest are rented
        vast.add_offer(gpu_name="RTX 4090", gpu_ram=24564, dph_base=dph)
    since = datetime.now(UTC) - timedelta(seconds=1)
    started = time.monotonic()
    with Preemption(processes, serving=BROKEN - 1) as preemption:
        state = fleet_batch(
            fleet="e2e",
            jobs_file=_jobs(tmp_path, JOBS),
            count=4,
            profile=PROFILE,
            mode="script",
            min_vram_gb=24,
            disk_gb=60,
            store_block=bucket.block,
            batch_id="fleet-e2e-processes",
            ready_timeout_s=120.0,
            endpoint_timeout_s=5.0,
            fal_fallback=False,
            return_state=True,
        )
    wall = time.monotonic() - started
    created = list(processes.created)
    logs = {i: processes.boxes[i].logs() for i in created}
    assert state.is_completed(), (state, logs)
    summary = state.result()
    assert len(created) == 4
    victim, broken = created[VICTIM - 1], created[BROKEN - 1]
    serving = [i for i in created if i != broken]
    assert preemption.at is not None, "the preemption never happened"

    # Every job exactly once, each row naming a serving instance; the victim worked, then
    # the others took its share over; the failed warm-up ran nothing.
    rows = read_results(bucket.store, "fleet-e2e-processes")
    assert Counter(r["id"] for r in rows) == {f"j{k:03d}": 1 for k in range(JOBS)}
    assert all(r["status"] == "ok" for r in rows)
    ran = Counter(r["endpoint"] for r in rows)
    assert set(ran) <= {endpoint_name(i) for i in serving}, ran
    assert 0 < ran[endpoint_name(victim)] < JOBS, ran  # the first ready may run alone a while
    assert endpoint_name(broken) not in ran
    # Its warm-up failed: released on that event (the script sends it before it says so
    # itself, so the destroy may cut its own last line short), or, had the batch ended
    # first, having said so. Never ready either way.
    broken_state = summary["instances"][str(broken)]
    assert broken_state.startswith("not ready: warm-up failed") or (
        "warm-up failed: stopping ComfyUI; no ready event" in logs[broken]
    ), (broken_state, logs[broken])
    broken_box = processes.boxes[broken]
    assert not (broken_box.home / "gateway.log").exists()  # its door never opened
    assert "[comfyfleet] ready:" not in logs[broken]

    # Everything rented is destroyed, and nothing of any instance runs any more.
    assert sorted(processes.destroyed) == sorted(created) and not vast.instances
    assert sorted(summary["released"]) == sorted(created) and summary["not_released"] == []
    assert processes.all_alive() == []

    # comfyfleet on the instances is the wheel the flow published, installed by pip into
    # the instance's own venv (the overlay of test packages has no comfyfleet).
    sha = processes.boxes[victim].record.env[WHEEL_SHA256_ENV]
    url = processes.boxes[victim].record.env[WHEEL_URL_ENV]
    assert url.startswith(f"{bucket.server.endpoint_url}/") and "X-Amz-Signature=" in url
    assert bucket.store.exists(f"wheels/{sha}/comfyfleet-0.1.0-py3-none-any.whl") is not None
    for instance_id in created:
        box = processes.boxes[instance_id]
        assert (box.home / "venv" / ".comfyfleet-wheel").read_text() == sha
        installed = "installing comfyfleet-0.1.0-py3-none-any.whl (sha256 checked)"
        assert installed in logs[instance_id]
        site = str(box.home / "venv" / "lib")
        imported = _installed_from_the_wheel(box)
        assert all(f.startswith(site) for f in imported), (site, imported)

    # The warm-ups ran as flow runs named after their instances, on this Prefect server.
    warmups = {i: _flow_runs_named(f"warmup-C.{i}", since) for i in created}
    assert all(len(runs) == 1 for runs in warmups.values()), warmups
    assert all(warmups[i][0].state.is_completed() for i in serving)
    assert warmups[broken][0].state.is_failed()
    # Four instances finishing together each added their row to the cold-start history in
    # the store (the append's lease is a conditional put on SeaweedFS).
    history = read_history(bucket.store)
    assert sorted(history["instance_id"]) == sorted(f"C.{i}" for i in created)
    # The events are in Prefect's event store: each warm-up's result (sent before the
    # gateway opens), failed for the broken one, which sent no ready event. A serving one's
    # ready event comes seconds after its gateway answers, and the batch takes it at that
    # answer: released by then, it may not have sent it. Those that wrote their ready file
    # (after the event went out) did; their payloads name the endpoint vast.ai publishes.
    # (The reaper test waits for its instance's ready event.)
    reported = {i for i in serving if processes.ready_after(i) is not None}
    ready = _events_named(
        events.INSTANCE_READY, since, {f"comfyfleet.instance.C.{i}" for i in reported}
    )
    by_resource = {e.resource.id: e for e in ready}
    assert f"comfyfleet.instance.C.{broken}" not in by_resource
    for i in serving:
        port = processes.boxes[i].record.host_ports[f"{GATEWAY_PORT}/tcp"]
        event = by_resource.get(f"comfyfleet.instance.C.{i}")
        assert event is not None or i not in reported, (i, reported)
        if event is not None:
            assert event.payload["endpoint"] == f"http://127.0.0.1:{port}", event.payload
            assert event.payload["fleet"] == "e2e"
    finished = _events_named(
        events.WARMUP_FINISHED, since, {f"comfyfleet.instance.C.{i}" for i in created}
    )
    outcome = {e.resource.id: e.payload["ok"] for e in finished}
    assert outcome[f"comfyfleet.instance.C.{broken}"] is False
    assert all(outcome[f"comfyfleet.instance.C.{i}"] is True for i in serving)

    # No secret anywhere: instance logs, warm-up run logs, the batch's artifacts and
    # result, this process's output.
    arts = artifacts_of(state.state_details.flow_run_id)
    out, err = capfd.readouterr()
    public = json.dumps([str(a.data) for kind in arts.values() for a in kind])
    public += json.dumps(summary) + json.dumps(rows, default=str) + out + err
    public += _run_logs([runs[0].id for runs in warmups.values()])
    public += json.dumps([runs[0].parameters for runs in warmups.values()], default=str)
    public += json.dumps([e.payload for e in ready + finished], default=str)
    for what, secret in _secrets(processes, bucket).items():
        assert secret not in public, what
        for instance_id, text in logs.items():
            assert secret not in text, (what, instance_id)
    boot = max(processes.ready_after(i) or 0.0 for i in serving)
    print(
        f"fleet e2e: {JOBS} jobs on 3 process instances (+1 failed warm-up); all ready after "
        f"{boot:.1f} s, one preempted after {preemption.at - started:.1f} s; fleet-batch "
        f"{wall:.1f} s"
    )


def _wait(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_the_reaper_destroys_an_orphaned_instance_and_everything_it_runs(
    bucket: Bucket, vast: FakeVast, processes: ProcessFleet
) -> None:
    """`instances up` rents an instance for a fleet, it warms up for real and gets ready,
    and then its renter is gone (a crashed batch): nobody uses it, it bills for nothing.
    ``fleet-reaper`` destroys it; a busy instance of the same fleet stays."""
    from comfyfleet.cli.instances_cmd import store_block_env
    from comfyfleet.fleet.offers import OfferQuery
    from comfyfleet.fleet.rent import RentRequest, rent_fleet
    from comfyfleet.fleet.vast import VastClient
    from comfyfleet.fleet.wheel import cached_wheel, publish_wheel
    from flows.fleet import fleet_reaper

    since = datetime.now(UTC) - timedelta(seconds=1)
    uri, store_env, _ = store_block_env(bucket.block)
    wheel = publish_wheel(bucket.store, cached_wheel())
    vast.add_offer(gpu_name="RTX 4090", gpu_ram=24564, dph_base=0.50)
    request = RentRequest(
        fleet="orphans",
        count=1,
        profile=PROFILE,
        query=OfferQuery(min_vram_gb=24, disk_gb=60),
        store=uri,
        prefect_api_url=str(_prefect_api_url()),
        extra_env=store_env,
        wheel=wheel,
    )
    with VastClient() as client:
        (orphan,) = [r.instance_id for r in rent_fleet(client, request).rented]
        busy_offer = vast.add_offer(gpu_name="RTX 3090", gpu_ram=24576, dph_base=0.20)
        busy = client.create_instance(
            busy_offer["id"], image="img", disk_gb=60, label="comfyfleet:orphans",
            onstart="exec sleep 600", env={},
        )  # fmt: skip
    _wait(lambda: processes.ready(orphan), 180, "the orphan's warm-up")
    endpoint = f"http://127.0.0.1:{vast.instances[orphan].host_ports[f'{GATEWAY_PORT}/tcp']}"
    # Its ready event (sent before it wrote its ready file) names that endpoint.
    resource = f"comfyfleet.instance.C.{orphan}"
    said = [
        e
        for e in _events_named(events.INSTANCE_READY, since, {resource})
        if e.resource.id == resource
    ]
    assert [(e.payload["endpoint"], e.payload["fleet"]) for e in said] == [(endpoint, "orphans")]
    # Its ComfyUI is reachable through the gateway with the fleet's token only.
    token = vast.instances[orphan].env[GATEWAY_TOKEN_ENV]
    assert _status(f"{endpoint}/system_stats") == 401
    assert _status(f"{endpoint}/system_stats", "not-the-token") == 401
    assert _status(f"{endpoint}/system_stats", token) == 200
    # Its renter died two hours ago; the busy one has worked the whole hour it has run.
    vast.backdate(orphan, 2 * 3600)
    vast.backdate(busy, 3600)
    vast.instances[busy].gpu_util = 0.9
    assert processes.alive(orphan) and processes.alive(busy)

    # Idle time runs from the gateway's last relayed request (the status checks above), not
    # from the rent: a short limit, then silence past it.
    time.sleep(IDLE_LIMIT_S + 1)
    state = fleet_reaper(fleet="orphans", idle_minutes=IDLE_LIMIT_S / 60, return_state=True)
    assert state.is_completed(), state
    result = state.result()
    assert result["destroyed"] == [orphan] and result["reasons"] == {str(orphan): "idle"}
    assert orphan in vast.destroyed and set(vast.instances) == {busy}
    # Destroyed means stopped: no process of it is left, its gateway is gone.
    assert processes.alive(orphan) == [] and not _answers(f"{endpoint}/healthz")
    assert processes.alive(busy)


def _prefect_api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    return str(PREFECT_API_URL.value())


def _status(url: str, token: str | None = None) -> int | None:
    """The HTTP status ``url`` answers (None: nothing listens)."""
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def _answers(url: str) -> bool:
    return _status(url) is not None
