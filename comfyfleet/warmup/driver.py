"""Warm-up: from the mirror into ComfyUI on a fresh GPU instance, verified and timed.

``warm_up(options, store=..., catalog=...)`` is the one driver: ``comfyfleet warmup`` and
the ``warmup`` flow both build a :class:`~comfyfleet.warmup.options.WarmupOptions` and call
it. It runs the phases of :data:`PHASE_STEPS` in order, publishes the cold-start record
(``reports.publish``) and returns a ``WarmupResult`` (JSON-ready with ``to_dict()``),
whether it succeeded or not:

1. **preflight**: take the root's lock (``lock.RootLock``), read the instance's facts
   (``gpu.instance_facts``), plan the profile's files (``plan.plan_script`` from the store's
   manifest, or ``plan.plan_baked`` from the image's) and refuse before the first byte when
   the disk cannot hold what is still to come.
2. **verify** and **pull**: ``transfer.pull`` checks what is in place (markers, or re-hash
   with ``verify="full"``) and fetches the rest, sha256 checked while writing. In baked
   mode ``baked.check_baked`` checks the image's files; anything wrong is pulled again
   from the store when one is given, else the warm-up fails naming the files.
3. **place**: ``extra_model_paths.yaml`` when the models live outside the ComfyUI tree.
4. **comfy_boot**: start ComfyUI (``comfy.process.ComfyProcess``: own process group, log in
   ``<root>/.comfyfleet/comfyui.log``, Hugging Face offline) or find one at ``comfy_url``;
   ready means ``/system_stats`` answers *and* ComfyUI lists the placed models.
5. **first_prompt**: run a workflow file (API format) so the checkpoint is in VRAM before
   the first user job.

Retries follow the rule in ``comfyfleet.errors``: the pull retries its ranges itself; a
whole phase is retried by exactly one owner. Run from the command line that owner is this
driver (:func:`run_with_retries`, :data:`PHASE_RETRY_DELAYS_S`); the flow passes its own
``run_phase`` (a task per phase, whose ``retries`` come from the same table) and the driver
then retries nothing.

``WarmupSession`` exposes the phases one by one; ``bake`` reuses its preflight and pull.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from comfyfleet.catalog import AUTO_PROFILE, Catalog, load_catalog
from comfyfleet.comfy.process import (
    ComfyProbe,
    ComfyProcess,
    device_facts,
    url_for_command,
    wait_ready,
)
from comfyfleet.errors import ComfyfleetError, ConfigError, IntegrityError, TransientError
from comfyfleet.files import STATE_DIR
from comfyfleet.pull.disk import preflight as disk_preflight
from comfyfleet.pull.transfer import PullItem, PullReport, PullSettings, bytes_to_write, pull
from comfyfleet.store.base import ObjectStore
from comfyfleet.units import format_bytes
from comfyfleet.warmup.baked import BakedCheck, check_baked, write_baked_manifest
from comfyfleet.warmup.gpu import InstanceFacts, Runner, instance_facts
from comfyfleet.warmup.lock import RootLock, write_extra_model_paths
from comfyfleet.warmup.options import VERIFY_MODES, WarmupOptions
from comfyfleet.warmup.plan import (
    WarmupPlan,
    expected_listing,
    load_workflow,
    plan_baked,
    plan_script,
    same_dir,
)
from comfyfleet.warmup.profiles import ProfileChoice
from comfyfleet.warmup.reports import publish
from comfyfleet.warmup.result import ComfyStatus, ErrorInfo, WarmupResult
from comfyfleet.warmup.timing import PhaseClock, Targets, build_record

__all__ = [
    "PHASE_RETRY_DELAYS_S",
    "PHASE_STEPS",
    "VERIFY_MODES",
    "WarmupOptions",
    "WarmupResult",
    "WarmupSession",
    "bake",
    "load_workflow",
    "warm_up",
]

COMFY_LOG = "comfyui.log"

# The phases as the driver runs them (the flow runs each as a task of the same name).
PHASE_STEPS: tuple[str, ...] = ("preflight", "pull", "place", "comfy_boot", "first_prompt")

# Whole-phase retries on a TransientError (seconds to wait before each retry). Only the
# pull: a retried pull resumes its .part files. A boot already polls for --boot-timeout.
PHASE_RETRY_DELAYS_S: dict[str, tuple[float, ...]] = {"pull": (5.0, 20.0, 60.0)}

PhaseRunner = Callable[[str, Callable[[], None]], None]


def run_with_retries(
    name: str, step: Callable[[], None], *, sleep: Callable[[float], None] = time.sleep
) -> None:
    """Run phase ``name``, retrying it per :data:`PHASE_RETRY_DELAYS_S` on transient errors."""
    delays = PHASE_RETRY_DELAYS_S.get(name, ())
    for delay in (*delays, None):
        try:
            step()
            return
        except TransientError:
            if delay is None:
                raise
            sleep(delay)


class WarmupProgress(Protocol):
    """Progress sink (a rich bar in the CLI, a progress artifact in the flow)."""

    def phase(self, name: str) -> None:
        """A phase starts."""

    def plan(self, files: int, total_bytes: int) -> None:
        """The pull knows what it will download."""

    def advance(self, n: int) -> None:
        """``n`` more bytes downloaded (called from worker threads, serialised)."""


ClientFactory = Callable[[str], Any]
PromptRunner = Callable[[Any, dict[str, Any], float], dict[str, Any]]


def _default_client(url: str) -> Any:
    from comfyfleet.comfy.client import ComfyClient

    return ComfyClient(url)


def _default_prompt_runner(client: Any, workflow: dict[str, Any], timeout: float) -> dict[str, Any]:
    result = client.run(workflow, timeout=timeout)
    return {
        "prompt_id": result.prompt_id,
        "outputs": [f.ref for f in result.outputs],
        "comfy_seconds": round(result.seconds, 3),
        "cached_nodes": len(result.cached_nodes),
    }


@dataclass(frozen=True)
class WarmupSeams:
    """What tests and other callers may swap: the ComfyUI client, the first-prompt runner
    and the command runner ``nvidia-smi`` goes through."""

    client_factory: ClientFactory = _default_client
    prompt_runner: PromptRunner = _default_prompt_runner
    gpu_runner: Runner | None = None


def needs_store(options: WarmupOptions, *, store_given: bool) -> bool:
    """Script mode always pulls from a store; baked mode only repairs from one if given."""
    return options.mode != "baked" or store_given


def open_catalog(paths: Sequence[str | Path], options: WarmupOptions) -> Catalog | None:
    """The catalog (``paths``, else the built-in one); baked mode runs without one."""
    try:
        return load_catalog(list(paths))
    except ComfyfleetError:
        if options.mode != "baked":
            raise
        return None


class WarmupSession:
    """One warm-up, phase by phase: ``preflight``, ``pull``, ``place``, ``boot``,
    ``first_prompt``, then ``finish`` (always; it releases the lock and builds the result).

    ``run()`` does all of that and turns a ``ComfyfleetError`` (or ``OSError``) into a
    failed result instead of raising.
    """

    def __init__(
        self,
        options: WarmupOptions,
        *,
        store: ObjectStore | None,
        catalog: Catalog | None,
        facts: InstanceFacts | None = None,
        progress: WarmupProgress | None = None,
        clock: PhaseClock | None = None,
        seams: WarmupSeams | None = None,
        settings: PullSettings | None = None,
    ) -> None:
        """``settings`` replaces ``options.pull_settings()`` (``bake`` and benchmarks)."""
        self.options = options
        self.targets = Targets.for_mode(options.mode, override_s=options.target_s)
        if options.mode == "script" and store is None:
            raise ConfigError(
                "a warm-up in script mode needs a store",
                hint="pass --store URI (or set COMFYFLEET_STORE)",
            )
        if options.mode == "script" and catalog is None:
            raise ConfigError("a warm-up in script mode needs a catalog")
        self.store = store
        self.catalog = catalog
        self.comfy_root = Path(options.comfy_root).absolute()
        self.models_dir = options.models_dir.absolute() if options.models_dir else None
        self.facts = facts
        self.progress = progress
        self.clock = clock or PhaseClock()
        self.seams = seams or WarmupSeams()
        self.settings = settings or options.pull_settings()

        self.lock: RootLock | None = None
        self.plan: WarmupPlan | None = None
        self.baked_check: BakedCheck | None = None
        self.report: PullReport | None = None
        self.workflow: dict[str, Any] | None = None
        self.comfy: ComfyStatus | None = None
        self.process: ComfyProcess | None = None
        self.first_prompt_info: dict[str, Any] | None = None
        self.warnings: list[str] = []
        self._client: Any = None

    # ------------------------------------------------------------------ helpers

    @property
    def models_base(self) -> Path:
        if self.models_dir is not None:
            return self.models_dir
        return self.comfy_root / "models"

    @property
    def choice(self) -> ProfileChoice | None:
        return self.plan.choice if self.plan else None

    @property
    def items(self) -> list[PullItem]:
        return self.plan.items if self.plan else []

    def _phase_started(self, name: str) -> None:
        if self.progress is not None:
            self.progress.phase(name)

    # ------------------------------------------------------------------ phases

    def preflight(self) -> None:
        """Lock, facts, manifest, profile, plan, disk: everything before the first byte."""
        self._phase_started("preflight")
        with self.clock.phase("preflight") as ph:
            if not self.comfy_root.is_dir():
                raise ConfigError(
                    f"ComfyUI root {self.comfy_root} is not a directory",
                    hint="pass --comfy-root pointing at the ComfyUI checkout (it holds main.py)",
                )
            base = self.models_base
            if base.exists() and not base.is_dir():
                raise ConfigError(
                    f"models folder {base} is a file, not a directory",
                    hint="pass --models-dir a directory (it is created if missing), or leave "
                    "it out to use <comfy-root>/models",
                )
            if self.options.warmup_workflow is not None:
                self.workflow = load_workflow(self.options.warmup_workflow)
            if self.lock is None:
                self.lock = RootLock(self.comfy_root, wait_s=self.options.wait_lock_s).acquire()
            self.plan = self._plan()
            self.models_dir = self.plan.models_dir
            self.warnings.extend(self.plan.warnings)
            needed = bytes_to_write(self.plan.items)
            if self.options.mode == "script":
                disk_preflight(needed, self.models_base)
            ph.note = f"{len(self.plan.items)} files, {format_bytes(needed)} to write"

    def _facts(self) -> InstanceFacts:
        if self.facts is None:
            self.facts = instance_facts(
                self.models_base,
                vram_gb=self.options.vram_gb,
                gpu=self.options.gpu,
                runner=self.seams.gpu_runner,
            )
            self.warnings.extend(self.facts.notes)
        return self.facts

    def _plan(self) -> WarmupPlan:
        requested = self.options.profile or AUTO_PROFILE
        if self.options.mode == "baked":
            return plan_baked(
                catalog=self.catalog,
                facts=self._facts(),
                comfy_root=self.comfy_root,
                models_dir=self.models_dir,
                requested=requested,
                manifest_path=self.options.baked_manifest,
            )
        assert self.store is not None and self.catalog is not None
        return plan_script(
            store=self.store,
            catalog=self.catalog,
            facts=self._facts(),
            comfy_root=self.comfy_root,
            models_dir=self.models_dir,
            requested=requested,
            force=self.options.force,
        )

    def pull(self) -> None:
        """Verify what is in place and fetch the rest (baked: check the image's files)."""
        if self.options.mode == "baked":
            self._pull_baked()
            return
        assert self.store is not None
        self._run_pull(self.items, self.store)

    def _run_pull(self, items: list[PullItem], store: ObjectStore) -> None:
        self._phase_started("verify")
        start = self.clock.elapsed()
        on_plan = None
        if self.progress is not None:
            progress = self.progress

            def on_plan(files: int, total: int) -> None:
                progress.phase("pull")
                progress.plan(files, total)

        try:
            report = pull(
                items,
                store,
                settings=self.settings,
                progress=self.progress.advance if self.progress is not None else None,
                on_plan=on_plan,
            )
        except BaseException:
            self.clock.record("pull", self.clock.elapsed() - start, start_s=start, status="failed")
            raise
        self.report = report
        self._record_pull(report, start, fetched=len(items) - report.count("present"))
        report.raise_for_failures()

    def _record_pull(self, report: PullReport, start: float, *, fetched: int) -> None:
        if self.options.mode == "script" or self.clock.phases["verify"].status == "pending":
            hashed = report.bytes_hashed_present
            self.clock.record(
                "verify",
                report.verify_seconds,
                bytes=hashed,
                start_s=start,
                note=f"{report.count('present')} present"
                + (f", {format_bytes(hashed)} re-hashed" if hashed else ""),
            )
        self.clock.record(
            "pull",
            report.seconds - report.verify_seconds,
            bytes=report.bytes_downloaded,
            start_s=start + report.verify_seconds,
            status="ok" if report.ok else "failed",
            note=f"{fetched} files fetched" if fetched else "nothing to fetch",
        )

    def _pull_baked(self) -> None:
        assert self.plan is not None and self.plan.baked is not None
        self._phase_started("verify")
        with self.clock.phase("verify") as ph:
            check = check_baked(
                self.plan.baked, verify=self.options.verify, max_workers=self.settings.max_workers
            )
            self.baked_check = check
            ph.bytes = check.hashed_bytes
            hashed = sum(1 for f in check.files if f.how == "hashed")
            ph.note = f"{len(check.files)} baked files, {hashed} re-hashed, {len(check.bad)} bad"
        bad = check.bad
        if not bad:
            self.clock.skip("pull", "every baked file is intact")
            return
        names = ", ".join(f"{f.entry.key} ({f.status})" for f in bad[:5])
        if self.store is None:
            first = bad[0]
            raise IntegrityError(
                first.entry.key,
                expected_sha256=first.entry.sha256,
                expected_size=first.entry.size,
                actual_size=first.path.stat().st_size if first.path.exists() else 0,
                hint=f"{len(bad)} baked file(s) are missing or damaged: {names}; pass --store "
                "to repair them from the mirror, or rebuild the image",
            )
        self.warnings.append(f"repairing {len(bad)} baked file(s) from the store: {names}")
        keys = {f.entry.key for f in bad}
        items = [i for i in self.items if i.key in keys]
        disk_preflight(bytes_to_write(items), self.models_base)
        self._run_pull(items, self.store)

    def place(self) -> None:
        """Make the files visible to ComfyUI (extra_model_paths.yaml for outside models)."""
        self._phase_started("place")
        with self.clock.phase("place") as ph:
            if same_dir(self.models_base, self.comfy_root / "models"):
                ph.note = "models inside the ComfyUI tree"
                return
            entries = self.plan.entries if self.plan else []
            folders = sorted({e.folder for e in entries})
            path = write_extra_model_paths(self.comfy_root, self.models_base, folders=folders)
            ph.note = f"wrote {path.name} -> {self.models_base}"

    # ------------------------------------------------------------------ ComfyUI

    def boot(self) -> None:
        """Start ComfyUI or find it, until it answers and lists the placed models."""
        opts = self.options
        if not opts.comfy_url and not opts.start_comfy:
            self.clock.skip("comfy_boot", "no --comfy-url or --start-comfy")
            self.clock.skip("first_prompt", "no ComfyUI")
            return
        url = opts.comfy_url or url_for_command(opts.start_comfy or "")
        self.comfy = ComfyStatus(url=url.rstrip("/"))
        self._phase_started("comfy_boot")
        with self.clock.phase("comfy_boot") as ph:
            try:
                if opts.start_comfy:
                    self._start_process(opts.start_comfy)
                self._client = self.seams.client_factory(self.comfy.url)
                self._wait_ready(self._client)
            except BaseException:
                self.stop_comfy()
                raise
            listed = len(self.comfy.models_listed)
            ph.note = f"ComfyUI {self.comfy.version or '?'} lists {listed} placed file(s)"

    def _start_process(self, command: str) -> None:
        assert self.comfy is not None
        self.process = ComfyProcess(
            command, cwd=self.comfy_root, log_path=self.comfy_root / STATE_DIR / COMFY_LOG
        )
        self.process.start()
        self.comfy.started = True
        self.comfy.pid = self.process.pid
        self.comfy.log_path = str(self.process.log_path)

    def _wait_ready(self, probe: ComfyProbe) -> None:
        assert self.comfy is not None
        expected, unchecked = expected_listing(self.plan.entries if self.plan else [])
        ready = wait_ready(
            probe,
            url=self.comfy.url,
            expected=expected,
            timeout_s=self.options.boot_timeout_s,
            check_alive=self.process.check_alive if self.process else lambda: None,
            log_path=self.comfy.log_path,
        )
        unchecked.update(ready.unchecked)
        self.comfy.ready = True
        self.comfy.models_unchecked = unchecked
        self.comfy.models_listed = sorted(
            f"models/{k}/{f}"
            for k, files in expected.items()
            for f in files
            if f"models/{k}/{f}" not in unchecked
        )
        device = device_facts(ready.stats)
        self.comfy.version = device.version
        self.comfy.device = device.device
        self.comfy.device_type = device.device_type
        self.comfy.vram_total = device.vram_total

    def first_prompt(self) -> None:
        """Run the warm-up workflow (if any) so the models sit in VRAM."""
        if self.workflow is None:
            self.clock.skip("first_prompt", "no --warmup-workflow")
            return
        if self._client is None:
            self.clock.skip("first_prompt", "no ComfyUI")
            return
        self._phase_started("first_prompt")
        with self.clock.phase("first_prompt") as ph:
            t0 = time.monotonic()
            info = self.seams.prompt_runner(
                self._client, self.workflow, self.options.prompt_timeout_s
            )
            info["seconds"] = round(time.monotonic() - t0, 3)
            info["workflow"] = str(self.options.warmup_workflow)
            self.first_prompt_info = info
            ph.note = f"prompt {info.get('prompt_id', '')}"

    def stop_comfy(self) -> None:
        """Stop the ComfyUI this session started (its whole process group)."""
        if self.process is not None:
            self.process.stop()

    # ------------------------------------------------------------------ the end

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        close = getattr(self._client, "close", None)
        if callable(close):
            close()

    def _files(self) -> list[dict[str, Any]]:
        """One row per planned file: what the pull (or the baked check) did with it."""
        files: list[dict[str, Any]] = []
        if self.report is not None:
            for r in self.report.items:
                files.append(
                    {
                        "key": r.key,
                        "dest": str(r.dest),
                        "status": r.status,
                        "bytes": r.bytes,
                        "seconds": round(r.seconds, 3),
                        "verified": r.verified,
                        "error": r.error,
                    }
                )
        if self.baked_check is not None:
            pulled = {f["key"] for f in files}
            for c in self.baked_check.files:
                if c.entry.key not in pulled:
                    files.append(
                        {
                            "key": c.entry.key,
                            "dest": str(c.path),
                            "status": "present" if c.ok else c.status,
                            "bytes": 0,
                            "seconds": 0.0,
                            "verified": c.how,
                            "error": None,
                        }
                    )
        return files

    def finish(self, exc: BaseException | None = None) -> WarmupResult:
        """Release the lock, stop the clock and build the result (``exc``: what failed)."""
        self.close()
        facts, report, choice = self.facts, self.report, self.choice
        error = ErrorInfo.from_exc(exc) if exc is not None else None
        files = self._files()

        def count(status: str) -> int:
            return sum(1 for f in files if f["status"] == status)

        record = build_record(
            self.clock,
            self.targets,
            ok=exc is None,
            profile=choice.name if choice else "",
            profile_reason=choice.reason if choice else "",
            verify=self.options.verify,
            store=self.store.uri if self.store is not None else "",
            host=socket.gethostname(),
            instance_id=self.options.instance_id,
            gpu_name=facts.gpu_name if facts else "none",
            gpu_count=len(facts.gpus) if facts else 0,
            vram_gb=facts.vram_gb if facts else 0.0,
            vram_source=facts.vram_source if facts else "",
            cpu_count=facts.cpu_count if facts else (os.cpu_count() or 1),
            free_disk_bytes=facts.free_disk_bytes if facts else 0,
            bytes_total=choice.total_bytes if choice else 0,
            bytes_downloaded=report.bytes_downloaded if report else 0,
            files_total=len(self.items),
            files_placed=count("placed"),
            files_present=count("present"),
            files_replaced=count("replaced"),
            error=error.one_line() if error else "",
        )
        return WarmupResult(
            ok=exc is None,
            record=record,
            comfy_root=str(self.comfy_root),
            models_dir=str(self.models_base),
            profile=choice,
            files=files,
            comfy=self.comfy,
            first_prompt=self.first_prompt_info,
            warnings=list(self.warnings),
            error=error,
            exception=exc,
        )

    def steps(self) -> dict[str, Callable[[], None]]:
        """The phase methods by :data:`PHASE_STEPS` name."""
        return {
            "preflight": self.preflight,
            "pull": self.pull,
            "place": self.place,
            "comfy_boot": self.boot,
            "first_prompt": self.first_prompt,
        }

    def run(self, run_phase: PhaseRunner | None = None) -> WarmupResult:
        """Every phase in order through ``run_phase`` (default :func:`run_with_retries`);
        a failure ends the run and is reported in the result."""
        runner = run_phase or run_with_retries
        steps = self.steps()
        try:
            for name in PHASE_STEPS:
                runner(name, steps[name])
        except (ComfyfleetError, OSError) as exc:
            return self.finish(exc)
        except BaseException:
            self.close()
            raise
        return self.finish()


def warm_up(
    options: WarmupOptions,
    *,
    store: ObjectStore | None,
    catalog: Catalog | None,
    facts: InstanceFacts | None = None,
    progress: WarmupProgress | None = None,
    clock: PhaseClock | None = None,
    seams: WarmupSeams | None = None,
    run_phase: PhaseRunner | None = None,
) -> WarmupResult:
    """Warm up one ComfyUI root and publish its record (see the module docstring).

    Arguments that cannot work (no store or catalog in script mode) raise ``ConfigError``
    before anything runs. Every later failure comes back as ``result.ok is False`` with
    ``result.error``, the record included; ``result.raise_for_failure()`` re-raises it.
    ``run_phase(name, step)`` runs each phase (the flow's tasks); without it the driver
    retries transient phase failures itself.
    """
    session = WarmupSession(
        options,
        store=store,
        catalog=catalog,
        facts=facts,
        progress=progress,
        clock=clock,
        seams=seams,
    )
    result = session.run(run_phase)
    result.published = publish(
        result.record,
        store,
        timeline_path=options.timeline,
        history=options.history,
        presign_s=options.timeline_presign_s,
    )
    return result


# ---------------------------------------------------------------------- bake (build time)


@dataclass
class BakeResult:
    profile: ProfileChoice
    manifest_path: str
    models_dir: str
    report: PullReport

    def to_dict(self) -> dict[str, Any]:
        r = self.report
        return {
            "profile": self.profile.to_dict(),
            "manifest_path": self.manifest_path,
            "models_dir": self.models_dir,
            "files": len(r.items),
            "placed": r.count("placed") + r.count("replaced"),
            "present": r.count("present"),
            "bytes_downloaded": r.bytes_downloaded,
            "seconds": round(r.seconds, 3),
        }


def bake(
    *,
    store: ObjectStore,
    catalog: Catalog,
    profile: str,
    models_dir: Path,
    manifest_out: Path,
    progress: WarmupProgress | None = None,
    settings: PullSettings | None = None,
) -> BakeResult:
    """Pull ``profile`` into ``models_dir`` with full verification and write the baked
    manifest (for ``docker build``; no GPU there, so the VRAM floor is not checked)."""
    if profile == AUTO_PROFILE:
        raise ConfigError(
            "bake needs a concrete profile, not auto (there is no GPU at build time)",
            hint="pass --profile image or --profile video-24gb",
        )
    models_dir = models_dir.absolute()
    root = models_dir.parent
    root.mkdir(parents=True, exist_ok=True)
    options = WarmupOptions(
        comfy_root=root,
        profile=profile,
        gpu="none",
        mode="script",
        verify="full",
        models_dir=models_dir,
    )
    session = WarmupSession(
        options,
        store=store,
        catalog=catalog,
        progress=progress,
        settings=replace(settings, verify="full") if settings else None,
    )
    try:
        session.preflight()
        session.pull()
    finally:
        session.close()
    assert session.choice is not None and session.report is not None
    ids = {m.key: m.id for m in session.choice.models}
    write_baked_manifest(
        manifest_out,
        profile=session.choice.name,
        models_dir=models_dir,
        entries=session.plan.entries if session.plan else [],
        ids=ids,
        store=store.uri,
    )
    return BakeResult(session.choice, str(manifest_out), str(models_dir), session.report)
