"""Prefect flows of the fleet: ``fleet-batch`` (rent, run one batch, release) and
``fleet-reaper`` (destroy fleet instances that cost money for nothing).

``fleet-batch`` runs :class:`comfyfleet.fleet.batch.FleetBatch` in one task: rent ``count``
instances (or reuse the fleet), watch them with a timeout until their gateways answer with
the token (the fleet script starts the gateway once the warm-up passed) while reading their
warm-up events in this Prefect server's event store (:class:`PrefectInstanceEvents`): a failed
warm-up event releases the instance at once; those that time out are released then, while
the batch goes on; none ready fails the run. Run the batch
through the generate driver from the first ready instance on, each later one joining it as it
gets ready, and destroy what it rented in a ``finally``, also when the batch
raises or the run is interrupted. A run that is cancelled or crashes outright (its process
killed) never reaches that ``finally``: the flow's ``on_cancellation``/``on_crashed`` hooks
destroy every instance carrying the run's mark (``COMFYFLEET_RENT_ID`` = the flow run id), and
the reaper is the backstop. The summary artifact puts the cost first: $/h x billed time per
instance, per batch and per output (markdown + a table). Gateway tokens are read from the
instances' own env inside the task, never parameters, log lines or artifacts.

``fleet-reaper``:

Deployed with a cron schedule (every 10 minutes, ``prefect.yaml``), it is the backstop of
the promise that a rented instance is always released: whatever a batch, an operator or a
crash left behind, the next pass destroys it. The decisions are the library's
(:mod:`comfyfleet.fleet.reaper`: failed status, stuck boot, a failed or timed-out warm-up,
idle past the limit, older than the max age); this module loads the key, supplies the
instances' events (:class:`PrefectInstanceEvents`: which warmed up, which failed) and their
gateways' activity (the last proxied request, read with the fleet's token), runs one pass as
one task, and reports.

Report: a table artifact (one row per instance destroyed, with its reason, $/h and cost so
far) and a markdown summary naming the $/h the pass stopped, per day too. The task retries
(transient errors only: vast.ai unreachable or 5xx) by running the whole pass again, which
lists afresh and so never destroys twice. The key is read inside the task from a
``comfyfleet-vast`` block (or ``$VAST_API_KEY``) and never passed as a parameter.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import httpx
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import PrefectHTTPStatusError
from prefect.runtime import flow_run as current_run

from comfyfleet.fleet.batch import DEFAULT_READY_TIMEOUT_S, FleetBatch, FleetBatchRequest
from comfyfleet.fleet.cost import format_usd
from comfyfleet.fleet.instance_events import (
    EVENT_NAMES,
    InstanceEvent,
    parse_event,
    resource_ids,
)
from comfyfleet.fleet.offers import OfferQuery
from comfyfleet.fleet.reaper import ReapPolicy, ReapReport, fleet_activity, reap
from comfyfleet.fleet.release import release_rent
from comfyfleet.fleet.rent import DEFAULT_DISK_GB, DEFAULT_IMAGE, RentRequest, default_onstart
from comfyfleet.fleet.vast import VastClient
from comfyfleet.generate.batch import DEFAULT_OPTIONS, BatchEvent, BatchOptions
from comfyfleet.render.assets import OnstartSettings
from comfyfleet.store.base import ObjectStore
from flows._common import artifact_key, load_tokens, open_flow_store, transient_only

TASK_RETRIES = 2
TASK_RETRY_DELAY_S = 30
# Pages of 50 events (the API's largest): a fleet's instances emit two per boot; the page
# cap only bounds a pathological store.
EVENT_PAGE = 50
EVENT_PAGES_MAX = 20


class PrefectInstanceEvents:
    """The fleet's :data:`~comfyfleet.fleet.instance_events.EventSource` over Prefect's
    event store (``POST /api/events/filter`` through the client): the ready and warm-up
    finished events whose resource is one of the instances'. A read that fails for a
    passing reason (server unreachable, 5xx) is logged once and counts as "nothing seen
    yet": the readiness wait polls again, and its timeout bounds it. Any other error (a 4xx:
    a request this code got wrong) is raised."""

    def __init__(self, warn: Any = None) -> None:
        self._warn = warn
        self._warned = False

    def __call__(self, instance_ids: Sequence[int]) -> list[InstanceEvent]:
        from prefect.client.orchestration import get_client
        from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

        if not instance_ids:
            return []
        wanted = EventFilter(
            event=EventNameFilter(name=list(EVENT_NAMES)),
            resource=EventResourceFilter(id=[r for i in instance_ids for r in resource_ids(i)]),
        )
        out: list[InstanceEvent] = []
        try:
            with get_client(sync_client=True) as client:
                page = client.read_events(wanted, limit=EVENT_PAGE)
                for _ in range(EVENT_PAGES_MAX):
                    for e in page.events:
                        parsed = parse_event(
                            e.event, e.resource.id, e.payload, e.occurred.timestamp()
                        )
                        if parsed is not None:
                            out.append(parsed)
                    if page.next_page is None:
                        break
                    page = client.read_events_page(str(page.next_page))
        except (httpx.TransportError, PrefectHTTPStatusError) as exc:
            status = getattr(getattr(exc, "response", None), "status_code", 0)
            if isinstance(exc, PrefectHTTPStatusError) and status < 500:
                raise
            if not self._warned and self._warn is not None:
                self._warn(f"reading the instances' events from Prefect failed: {exc!r}")
            self._warned = True
        return out


def _client(vast_block: str | None) -> VastClient:
    if not vast_block:
        return VastClient()  # $VAST_API_KEY, $VAST_URL
    from blocks import VastCredentials, load

    block = load(VastCredentials, vast_block)
    return VastClient(block.api_key, url=block.url)


def _table(report: ReapReport) -> list[dict[str, Any]]:
    outcome = {i: "destroyed" for i in report.released.destroyed}
    outcome.update({i: "already gone" for i in report.released.already_gone})
    outcome.update({i: f"FAILED: {why}" for i, why in report.released.failed.items()})
    return [
        {
            "instance": d.instance.id,
            "fleet": (d.instance.label or "").removeprefix("comfyfleet:"),
            "reason": d.reason,
            "detail": d.detail,
            "dph_usd": round(d.dph_total, 4),
            "cost_so_far_usd": round(d.cost_so_far_usd, 4),
            "outcome": "would destroy" if report.dry_run else outcome.get(d.instance.id, "?"),
        }
        for d in report.decisions
    ]


def _markdown(report: ReapReport) -> str:
    scope = f"fleet `{report.fleet}`" if report.fleet else "every comfyfleet fleet"
    if report.dry_run:
        dph = sum(d.dph_total for d in report.decisions)
        return (
            f"# fleet-reaper (dry run)\n\nChecked {report.checked} instance(s) of {scope}; "
            f"would destroy {len(report.decisions)}, stopping ${dph:.3f}/h.\n"
        )
    lines = [
        "# fleet-reaper",
        "",
        f"Checked {report.checked} instance(s) of {scope}; destroyed {len(report.destroyed)}.",
        "",
        f"- **Saved**: ${report.dph_stopped:.3f}/h stops being billed "
        f"({format_usd(report.dph_stopped * 24)} per day).",
        f"- They had cost {format_usd(report.cost_so_far_usd)} until now.",
    ]
    reasons: dict[str, int] = {}
    for d in report.destroyed:
        reasons[d.reason] = reasons.get(d.reason, 0) + 1
    if reasons:
        lines.append("- Reasons: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())))
    if report.released.failed:
        lines.append(f"- **Not destroyed**: {', '.join(map(str, report.released.failed))}")
    return "\n".join(lines) + "\n"


@task(
    name="reap",
    cache_policy=NO_CACHE,
    retries=TASK_RETRIES,
    retry_delay_seconds=TASK_RETRY_DELAY_S,
    retry_condition_fn=transient_only,
)
def reap_task(
    fleet: str | None, policy: ReapPolicy, vast_block: str | None, dry_run: bool
) -> dict[str, Any]:
    logger = get_run_logger()
    with _client(vast_block) as client:
        report = reap(
            client,
            policy,
            now=time.time(),
            fleet=fleet,
            events=PrefectInstanceEvents(logger.warning),
            activity=fleet_activity,
            dry_run=dry_run,
        )
    for d in report.decisions:
        logger.info("instance %s: %s (%s)", d.instance.id, d.reason, d.detail)
    key = artifact_key("fleet-reaper", report.fleet or "all")
    create_table_artifact(table=_table(report), key=key, description="instances reaped")
    create_markdown_artifact(
        markdown=_markdown(report), key=f"{key}-summary"[:100], description="reaper summary"
    )
    report.raise_for_failures()  # after the report: what was destroyed is on record
    return {
        "fleet": report.fleet,
        "checked": report.checked,
        "dry_run": dry_run,
        "destroyed": [d.instance.id for d in report.destroyed],
        "would_destroy": [d.instance.id for d in report.decisions] if dry_run else [],
        "reasons": {str(d.instance.id): d.reason for d in report.decisions},
        "dph_stopped": round(report.dph_stopped, 6),
        "cost_so_far_usd": round(report.cost_so_far_usd, 6),
    }


@flow(name="fleet-reaper")
def fleet_reaper(
    fleet: str | None = None,
    idle_minutes: float | None = 30,
    max_age_hours: float | None = 12,
    boot_timeout_minutes: float | None = 15,
    warmup_timeout_minutes: float | None = 20,
    vast_block: str | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Destroy instances of ``fleet`` (default: every comfyfleet fleet, never an instance
    without a ``comfyfleet:`` label) that failed, never booted within
    ``boot_timeout_minutes``, failed their warm-up (their ``comfyfleet.warmup.finished``
    event says so) or sent no ``comfyfleet.instance.ready`` within
    ``warmup_timeout_minutes``, idled ``idle_minutes`` (no request through their gateway)
    or outlived ``max_age_hours`` (None turns a limit off). Key: a ``comfyfleet-vast``
    block, else ``$VAST_API_KEY``."""
    policy = ReapPolicy(
        idle_s=None if idle_minutes is None else idle_minutes * 60,
        max_age_s=None if max_age_hours is None else max_age_hours * 3600,
        boot_timeout_s=None if boot_timeout_minutes is None else boot_timeout_minutes * 60,
        warmup_timeout_s=None if warmup_timeout_minutes is None else warmup_timeout_minutes * 60,
    )
    result: dict[str, Any] = reap_task(fleet, policy, vast_block, dry_run)
    return result


# ---------------------------------------------------------------- fleet-batch


def _rent_request(
    params: dict[str, Any],
    rent_id: str,
    store_uri: str,
    store_env: dict[str, str],
    store: ObjectStore,
) -> RentRequest:
    request = RentRequest(
        fleet=params["fleet"],
        count=params["count"],
        profile=params["profile"],
        query=OfferQuery(
            min_vram_gb=params["min_vram_gb"],
            disk_gb=params["disk_gb"],
            gpu_name=params["gpu"],
            max_dph=params["max_dph"],
        ),
        image=params["image"],
        store=store_uri,
        prefect_api_url=_prefect_api_url(),
        extra_env=store_env,
        onstart=OnstartSettings(profile=params["profile"], store=store_uri, mode=params["mode"]),
        rent_id=rent_id,
    )
    if urlsplit(store_uri).scheme == "s3" and params["mode"] == "script":
        from comfyfleet.fleet.wheel import cached_wheel, publish_wheel

        # The task's store: opened from the block when there is one, so its credentials
        # (not the worker's environment) sign the upload and the URL.
        wheel = publish_wheel(store, cached_wheel())
        # With the wheel in the store the instances run the fleet script (wheel checked by
        # sha256, ComfyUI behind the gateway, the warm-up reported to this Prefect server).
        request = replace(request, wheel=wheel, onstart=None)
        request = replace(request, onstart=default_onstart(request))
    return request


def _prefect_api_url() -> str | None:
    from comfyfleet.config import env

    return env("PREFECT_API_URL")


def _store_for_instances(store: str | None, store_block: str | None) -> tuple[str, dict[str, str]]:
    if store_block:
        from comfyfleet.cli.instances_cmd import store_block_env

        uri, env, _ = store_block_env(store_block)
        return uri, env
    return store or "", {}


@task(name="fleet-batch", cache_policy=NO_CACHE, retries=0)
def fleet_batch_task(params: dict[str, Any], rent_id: str) -> dict[str, Any]:
    """Rent/reuse, wait, run, release (in a ``finally``), then the cost artifacts, which
    are written also when the run failed. No task retries: a rerun of the flow resumes the
    batch (same batch id) on freshly rented instances."""
    logger = get_run_logger()
    store = open_flow_store(params["store"], params["store_block"])
    rent = None
    if not params["reuse"]:
        uri, store_env = _store_for_instances(params["store"], params["store_block"])
        rent = _rent_request(params, rent_id, uri, store_env, store)
    request = FleetBatchRequest(
        fleet=params["fleet"],
        jobs_file=params["jobs_file"],
        options=BatchOptions(
            batch_id=params["batch_id"],
            queue_depth=params["queue_depth"],
            retries=params["retries"],
            endpoint_timeout_s=params["endpoint_timeout_s"],
            ready_timeout_s=min(DEFAULT_OPTIONS.ready_timeout_s, params["ready_timeout_s"]),
            video=replace(DEFAULT_OPTIONS.video, fal=params["fal_fallback"]),
        ),
        rent=rent,
        ready_timeout_s=params["ready_timeout_s"],
    )

    def on_event(event: BatchEvent) -> None:
        if event.kind == "finished" and event.result is not None and event.result.error:
            logger.warning("job %s %s: %s", event.job_id, event.result.status, event.result.error)

    with _client(params["vast_block"]) as client:
        run = FleetBatch(
            client,
            request,
            store=store,
            tokens=load_tokens(params["tokens_block"]),
            on_event=on_event,
            say=logger.info,
            events=PrefectInstanceEvents(logger.warning) if params["ready_events"] else None,
        )
        try:
            report = run.run()
        finally:
            _batch_artifacts(run)
    batch = report.batch
    assert batch is not None  # run() raised otherwise
    return {
        "fleet": report.fleet,
        "batch_id": batch.batch_id,
        "counts": batch.counts,
        "results": f"{batch.store_uri}/{batch.results_key}",
        "instances": {str(u.instance_id): u.state for u in report.instances.values()},
        "released": report.released.destroyed,
        "not_released": sorted(report.released.failed),
        "cost_usd": round(report.cost_usd, 6),
        "cost_per_output_usd": (
            None if report.cost_per_output_usd is None else round(report.cost_per_output_usd, 8)
        ),
        "ok": batch.ok and report.released.ok,
    }


def _batch_artifacts(run: FleetBatch) -> None:
    report = run.report
    name = run.request.options.batch_id or run.request.fleet
    key = artifact_key("fleet-batch", name)
    try:
        create_table_artifact(
            table=report.table(), key=key, description="instances: state, jobs, $/h, cost"
        )
        create_markdown_artifact(
            markdown=report.markdown(), key=f"{key}-summary"[:100], description="batch cost"
        )
    except Exception as exc:  # noqa: BLE001 - the report must not hide the run's own error
        get_run_logger().warning("fleet-batch artifacts not written: %s", exc)


def _release_hook(flow: Any, flow_run: Any, state: Any) -> None:
    """``on_cancellation``/``on_crashed``: the run's process may be gone with its
    ``finally``; destroy every instance the run rented, found by its mark."""
    from prefect.logging.loggers import flow_run_logger

    params = flow_run.parameters or {}
    if params.get("reuse"):
        return
    with _client(params.get("vast_block")) as client:
        done = release_rent(client, params["fleet"], str(flow_run.id))
    # On the run's page: what the clean-up did (after a cancel the run's own ``finally``
    # usually released its instances already; this catches what it could not).
    flow_run_logger(flow_run).warning(
        "%s hook: destroyed %s; not destroyed: %s",
        getattr(state, "name", "release"),
        done.destroyed or "nothing left",
        sorted(done.failed) or "none",
    )


@flow(name="fleet-batch", on_cancellation=[_release_hook], on_crashed=[_release_hook])
def fleet_batch(
    fleet: str,
    jobs_file: str,
    count: int = 1,
    profile: str = "auto",
    max_dph: float | None = None,
    image: str = DEFAULT_IMAGE,
    batch_id: str | None = None,
    reuse: bool = False,
    ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S,
    ready_events: bool = True,
    min_vram_gb: float = 24.0,
    disk_gb: float = DEFAULT_DISK_GB,
    gpu: str | None = None,
    mode: str = "script",
    store: str | None = None,
    store_block: str | None = None,
    vast_block: str | None = None,
    tokens_block: str | None = None,
    queue_depth: int = DEFAULT_OPTIONS.queue_depth,
    retries: int = DEFAULT_OPTIONS.retries,
    endpoint_timeout_s: float = DEFAULT_OPTIONS.endpoint_timeout_s,
    fal_fallback: bool = DEFAULT_OPTIONS.video.fal,
) -> dict[str, Any]:
    """Rent ``count`` instances for ``fleet`` (``reuse``: take the fleet's instances as
    they are), run ``jobs_file`` from the moment the first is ready, each other one joining
    the batch as it gets ready (up to ``ready_timeout_s``; later ones are given up and
    released), destroy what was rented. An instance is ready when its gateway answers with
    the token (the fleet script starts it once the warm-up passed, seconds before its
    ``comfyfleet.instance.ready`` event can be read back); one whose warm-up failed event
    arrives in this Prefect server is released at once. ``ready_events=False``: the events
    are not read (a failed warm-up is then given up at the timeout). Key: a
    ``comfyfleet-vast`` block, else ``$VAST_API_KEY``."""
    params = dict(locals())
    rent_id = str(current_run.id or "")
    result: dict[str, Any] = fleet_batch_task(params, rent_id)
    if not result["ok"]:
        raise RuntimeError(
            f"fleet-batch {result['batch_id']}: {result['counts']['failed']} job(s) failed, "
            f"{len(result['not_released'])} instance(s) not released "
            f"({', '.join(map(str, result['not_released'])) or 'none'}); rerun with the same "
            "batch_id to retry only the failed jobs"
        )
    return result
