"""``fleet-batch`` without Prefect: rent (or reuse) a fleet, run one batch over its instances
as they get ready, release what was rented, and put a price on all of it.

:class:`FleetBatch` is the one place the order is kept:

1. **Rent** ``count`` instances (:func:`comfyfleet.fleet.rent.rent_fleet`, all or nothing,
   marked with the caller's ``rent_id``), or **reuse** the fleet's instances as they are.
2. **Watch** readiness (:class:`comfyfleet.fleet.ready.ReadyWatch`) in a background thread
   for up to the ready timeout: a probe through each gateway (started once the warm-up
   passed) and, with an event source, the instances' own events. A rented instance whose
   warm-up failed event arrives is **released the moment it is seen**; rented ones still
   not ready at the timeout are released then (the batch goes on): they would bill while
   taking no jobs. Reused ones are left alone (they are not ours; the reaper judges them).
   None ready by the timeout: :class:`~comfyfleet.errors.FleetError`.
3. **Run** the batch from the moment the **first** instance is ready, with the generate
   driver (:func:`comfyfleet.generate.batch.generate_from_file`): every instance that gets
   ready later joins the running batch and steals work at once (no paid GPU idles until the
   slowest is ready). One queue, work stealing, an instance that dies has its jobs re-run
   elsewhere, each job once in ``results.parquet`` with ``endpoint = instance-<id>``. When
   the batch ends first, the watch stops: the instances still warming up are not ready
   "when the batch ended" and released with the rest.
4. **Release**, in a ``finally``: every instance this run rented is destroyed whatever
   happened above, an error or a ``KeyboardInterrupt`` included. (A run killed outright
   never reaches its ``finally``: the flow's cancellation hook destroys the rent by its mark,
   :func:`comfyfleet.fleet.release.release_rent`, and the reaper is the backstop.)

**Cost** (:class:`InstanceUse`): $/h x the seconds the instance was billed for this batch.
A rented instance is billed from its rent (``start_date``) to its release; a reused one is
charged from the batch's start to its end (the batch's share of an instance it did not rent).
The report sums them per batch and divides by the outputs stored (and the jobs done).
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from comfyfleet.errors import FleetError
from comfyfleet.fleet.cost import cost_usd, format_duration, format_usd
from comfyfleet.fleet.instance_events import EventSource
from comfyfleet.fleet.ready import POLL_S, ReadyWatch, comfy_endpoint, endpoint_name
from comfyfleet.fleet.release import ReleaseReport, release
from comfyfleet.fleet.rent import RentRequest, rent_fleet
from comfyfleet.fleet.vast import VastClient
from comfyfleet.generate.batch import (
    BatchEvent,
    BatchOptions,
    BatchReport,
    EndpointQueue,
    generate_from_file,
)
from comfyfleet.generate.endpoints import ComfyEndpoint
from comfyfleet.generate.results import describe
from comfyfleet.store.base import ObjectStore

if TYPE_CHECKING:
    from comfyfleet.sources import Tokens

DEFAULT_READY_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class FleetBatchRequest:
    """What one ``fleet-batch`` does. ``rent`` None: reuse ``fleet`` as it is."""

    fleet: str
    jobs_file: str
    options: BatchOptions
    rent: RentRequest | None = None
    ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S


@dataclass
class InstanceUse:
    """One instance's part in the batch and what it cost."""

    instance_id: int
    rented: bool
    gpu_name: str = ""
    dph: float = 0.0
    billed_from: float = 0.0
    billed_to: float = 0.0
    state: str = "pending"  # ran jobs | not ready: ... | pending (| ready, while it runs)
    jobs_ok: int = 0
    outputs: int = 0
    released: str = ""  # destroyed | already gone | FAILED: ... | kept (reused)

    @property
    def seconds(self) -> float:
        return max(0.0, self.billed_to - self.billed_from)

    @property
    def cost_usd(self) -> float:
        return cost_usd(self.dph, self.seconds)


@dataclass
class FleetBatchReport:
    fleet: str
    started: float
    ended: float = 0.0
    instances: dict[int, InstanceUse] = field(default_factory=dict)
    batch: BatchReport | None = None
    released: ReleaseReport = field(default_factory=ReleaseReport)
    error: str = ""

    @property
    def cost_usd(self) -> float:
        return sum(u.cost_usd for u in self.instances.values())

    @property
    def outputs(self) -> int:
        return sum(u.outputs for u in self.instances.values())

    @property
    def jobs_ok(self) -> int:
        return sum(u.jobs_ok for u in self.instances.values())

    @property
    def cost_per_output_usd(self) -> float | None:
        return self.cost_usd / self.outputs if self.outputs else None

    def table(self) -> list[dict[str, Any]]:
        """One row per instance: the cost table of the summary artifact."""
        return [
            {
                "instance": u.instance_id,
                "gpu": u.gpu_name,
                "rented": u.rented,
                "state": u.state,
                "jobs_ok": u.jobs_ok,
                "outputs": u.outputs,
                "dph_usd": round(u.dph, 4),
                "billed_s": round(u.seconds, 1),
                "cost_usd": round(u.cost_usd, 6),
                "released": u.released,
            }
            for u in sorted(self.instances.values(), key=lambda u: u.instance_id)
        ]

    def markdown(self) -> str:
        per_output = self.cost_per_output_usd
        per_job = self.cost_usd / self.jobs_ok if self.jobs_ok else None
        lines = [
            f"# fleet-batch `{self.fleet}`",
            "",
            f"- **Cost**: {format_usd(self.cost_usd)} for the batch, "
            f"{format_usd(per_output) if per_output is not None else 'n/a'} per output "
            f"({self.outputs} outputs), "
            f"{format_usd(per_job) if per_job is not None else 'n/a'} per job "
            f"({self.jobs_ok} ok)",
            f"- Wall time: {format_duration(self.ended - self.started)} on "
            f"{sum(u.state == 'ran jobs' for u in self.instances.values())} ready of "
            f"{len(self.instances)} instance(s)",
        ]
        if self.batch is not None:
            c = self.batch.counts
            lines.append(
                f"- Batch `{self.batch.batch_id}`: {c['ok']} ok, {c['failed']} failed, "
                f"{c['skipped']} skipped; results `{self.batch.store_uri}/"
                f"{self.batch.results_key}`"
            )
        if self.error:
            lines.append(f"- **Stopped**: {self.error}")
        if self.released.failed:
            left = ", ".join(map(str, self.released.failed))
            lines.append(f"- **NOT released**: {left}: run `comfyfleet instances down {left}`")
        lines += [
            "",
            "| instance | GPU | state | jobs | outputs | $/h | billed | cost | released |",
        ]
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for u in sorted(self.instances.values(), key=lambda u: u.instance_id):
            lines.append(
                f"| {u.instance_id}{'' if u.rented else ' (reused)'} | {u.gpu_name} | "
                f"{u.state} | {u.jobs_ok} | {u.outputs} | ${u.dph:.3f} | "
                f"{format_duration(u.seconds)} | {format_usd(u.cost_usd)} | {u.released} |"
            )
        return "\n".join(lines) + "\n"


class FleetBatch:
    """One run (see the module docstring). :attr:`report` is filled as it goes, so a caller
    whose :meth:`run` raised still has the costs and the release outcome to show."""

    def __init__(
        self,
        client: VastClient,
        request: FleetBatchRequest,
        *,
        store: ObjectStore,
        tokens: Tokens | None = None,
        on_event: Callable[[BatchEvent], None] | None = None,
        say: Callable[[str], None] | None = None,
        events: EventSource | None = None,
        clock: Callable[[], float] = time.time,
        poll_s: float = POLL_S,
    ) -> None:
        self.client = client
        self.request = request
        self.store = store
        self.tokens = tokens
        self.on_event = on_event
        self.say = say or (lambda _line: None)
        self.events = events
        self.clock = clock
        self.poll_s = poll_s  # how often the fleet is polled for instances getting ready
        self.rented: list[int] = []
        self.report = FleetBatchReport(fleet=request.fleet, started=clock())
        self._watch_error: BaseException | None = None

    def run(self) -> FleetBatchReport:
        try:
            self._run()
        except BaseException as exc:
            self.report.error = getattr(exc, "message", "") or type(exc).__name__
            raise
        finally:
            self._release_all()
        return self.report

    def _run(self) -> None:
        req = self.request
        ids: list[int] | None = None
        if req.rent is not None:
            rent = rent_fleet(self.client, req.rent, on_event=self.say)
            self.rented = [r.instance_id for r in rent.rented]
            for r in rent.rented:
                self.report.instances[r.instance_id] = InstanceUse(
                    r.instance_id, True, r.offer.gpu_name, r.offer.dph_total, self.report.started
                )
            ids = list(self.rented)
        watch = ReadyWatch(
            self.client,
            req.fleet,
            ids,
            timeout_s=req.ready_timeout_s,
            events=self.events,
            on_failed=self._failed,
            poll_s=self.poll_s,
        )
        feed: EndpointQueue[ComfyEndpoint] = EndpointQueue()
        # The caller's context goes along: a flow's settings (which API its event source
        # reads) and run logger live in context variables a new thread would not see.
        context = contextvars.copy_context()
        watcher = threading.Thread(
            target=context.run,
            args=(self._watch, watch, feed),
            name="comfyfleet-ready",
            daemon=True,
        )
        watcher.start()
        try:
            if not feed.wait():
                watcher.join()
                if self._watch_error is not None:
                    raise self._watch_error
                not_ready = watch.readiness.not_ready
                raise FleetError(
                    f"no instance of fleet {req.fleet} got ready within "
                    f"{req.ready_timeout_s:g} s "
                    f"({'; '.join(f'{i}: {w}' for i, w in sorted(not_ready.items()))})",
                    hint="see the instances' warm-up runs in the Prefect UI; raise "
                    "ready_timeout, or try other offers",
                )
            first = feed.take_all()
            seen = watch.readiness  # written by the watch's thread: counts only
            waiting = len(seen.instances) - len(first) - len(seen.failed)
            self.say(
                f"running the batch on {len(first)} ready instance(s)"
                + ("; the others join as they get ready" if waiting > 0 else "")
            )
            batch = generate_from_file(
                req.jobs_file,
                req.options,
                endpoints=first,
                joining=feed,
                store=self.store,
                tokens=self.tokens,
                on_event=self.on_event,
            )
        finally:
            # The batch is over (or failed): stop waiting for the rest, and settle every
            # instance's state before anything is released in run()'s finally.
            watch.stop("when the batch ended")
            watcher.join()
        self.report.batch = batch
        for result in batch.results:
            use = self._use_of(result.endpoint)
            if use is not None and result.status == "ok":
                use.jobs_ok += 1
                use.outputs += len(result.outputs)

    def _watch(self, watch: ReadyWatch, feed: EndpointQueue[ComfyEndpoint]) -> None:
        """The readiness watch, in its own thread: each ready instance joins the batch; at
        the end (all decided, the timeout, or the batch over) the states are recorded and
        the rented ones not ready released; then the batch is told no more will join."""
        try:
            for endpoint in watch:
                self._add_reused(watch)
                use = self.report.instances.get(endpoint.instance_id)
                if use is not None:
                    use.state = "ready"
                self.say(f"instance {endpoint.instance_id} is ready: it joins the batch")
                feed.put(comfy_endpoint(endpoint))
        except Exception as exc:  # noqa: BLE001 - raised by the run's thread if none is ready
            # Once the batch runs, a failed poll (vast.ai down) only ends the joining: the
            # batch goes on with the instances it has.
            self._watch_error = exc
            self.say(f"watching the fleet's readiness stopped: {describe(exc)}")
        finally:
            feed.close()
            try:
                self._note(watch)
            except Exception as exc:  # noqa: BLE001 - same as above
                self._watch_error = self._watch_error or exc
                self.say(f"recording the fleet's readiness failed: {describe(exc)}")

    def _use_of(self, name: str) -> InstanceUse | None:
        for use in self.report.instances.values():
            if endpoint_name(use.instance_id) == name:
                return use
        return None

    def _failed(self, instance_id: int, why: str) -> None:
        """An instance failed for good while the others still warm up: release it now if
        this run rented it (it bills while it can never take a job)."""
        use = self.report.instances.get(instance_id)
        if use is not None:
            use.state = f"not ready: {why}"
        if instance_id in self.rented:
            self.say(f"instance {instance_id} failed ({why}): releasing it now")
            self._record_release(release(self.client, [instance_id]), self.clock())

    def _add_reused(self, watch: ReadyWatch) -> None:
        """Instances seen that this run did not rent: charged from the batch's start."""
        for instance_id, instance in list(watch.readiness.instances.items()):
            if instance_id not in self.report.instances:
                self.report.instances[instance_id] = InstanceUse(
                    instance_id, False, instance.gpu_name, instance.dph_total, self.report.started
                )

    def _note(self, watch: ReadyWatch) -> None:
        """Record every instance's state; release at once the rented ones not ready."""
        now = self.clock()
        readiness = watch.readiness
        self._add_reused(watch)
        for instance_id, instance in readiness.instances.items():
            use = self.report.instances[instance_id]
            if use.rented and instance.start_date:
                use.billed_from = min(use.billed_from, instance.start_date)
            use.dph = instance.dph_total or use.dph
        for instance_id in readiness.ready:
            self.report.instances[instance_id].state = "ran jobs"
        gone = set(self.report.released.destroyed) | set(self.report.released.already_gone)
        doomed = [i for i in readiness.not_ready if i in self.rented and i not in gone]
        for instance_id, why in readiness.not_ready.items():
            if instance_id in self.report.instances:
                self.report.instances[instance_id].state = f"not ready: {why}"
        if doomed:
            self.say(f"releasing {len(doomed)} instance(s) that did not get ready: {doomed}")
            self._record_release(release(self.client, doomed), now)

    def _record_release(self, outcome: ReleaseReport, when: float) -> None:
        done = self.report.released
        done.destroyed += outcome.destroyed
        done.already_gone += outcome.already_gone
        done.failed.update(outcome.failed)
        done.transient = done.transient and outcome.transient
        for instance_id in outcome.destroyed + outcome.already_gone:
            use = self.report.instances.get(instance_id)
            if use is not None:
                use.billed_to = when
                use.released = "destroyed" if instance_id in outcome.destroyed else "already gone"
        for instance_id, why in outcome.failed.items():
            if instance_id in self.report.instances:
                self.report.instances[instance_id].released = f"FAILED: {why}"

    def _release_all(self) -> None:
        done = set(self.report.released.destroyed) | set(self.report.released.already_gone)
        left = [i for i in self.rented if i not in done]
        now = self.clock()
        self.report.ended = now
        if left:
            self.say(f"releasing {len(left)} rented instance(s)")
            self._record_release(release(self.client, left), now)
        for use in self.report.instances.values():
            if not use.rented:
                use.billed_to, use.released = now, "kept (reused)"
            elif not use.billed_to:
                use.billed_to = now  # release failed: still billing, at least until now
