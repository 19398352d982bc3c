"""Warm-up: from the mirror into ComfyUI on a fresh GPU instance, verified and timed.

``warm_up(...)`` runs the phases of ``timing.PHASES`` in order and returns a
``WarmupResult`` (JSON-ready with ``to_dict()``), whether it succeeded or not:

1. **preflight**: take the root's lock (``lock.RootLock``), read the instance's facts
   (``gpu.instance_facts``), read the store's manifest, choose the profile
   (``profiles.choose_profile``; a model of the profile missing from the manifest is
   refused with the mirror command that fixes it), plan the files (``transfer.plan_pull``)
   and refuse before the first byte when the disk cannot hold what is still to come.
   In ``baked`` mode the image's baked manifest replaces the store's.
2. **verify** and **pull**: ``transfer.pull`` checks what is in place (markers, or re-hash
   with ``verify="full"``) and fetches the rest, sha256 checked while writing. In baked
   mode ``baked.check_baked`` checks the image's files; anything wrong is pulled again
   from the store when one is given, else the warm-up fails naming the files.
3. **place**: ``extra_model_paths.yaml`` when the models live outside the ComfyUI tree.
4. **comfy_boot**: start ComfyUI (``start_comfy``: a shell command run in its own process
   group, output to ``<root>/.comfyfleet/comfyui.log``; if it exits, the warm-up fails at
   once with the log's last lines) or wait for one at ``comfy_url``. Ready means
   ``/system_stats`` answers *and* ComfyUI lists the placed models (``/models/<folder>``).
5. **first_prompt**: run a workflow file (API format) so the checkpoint is in VRAM before
   the first user job.

Then the clock stops and the ``ColdStartRecord`` is built (pass/fail against 300 s for
``script``, 120 s for ``baked``). Publishing it (history table, timeline PNG) is the
caller's choice: ``reports.publish``.

``WarmupSession`` exposes the phases one by one, for the Prefect flow's tasks.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from comfyfleet.catalog import AUTO_PROFILE, Catalog
from comfyfleet.comfy.folders import PT_EXTENSIONS, PT_FOLDERS, http_folder
from comfyfleet.errors import (
    ComfyConnectionError,
    ComfyError,
    ComfyfleetError,
    ConfigError,
    IntegrityError,
)
from comfyfleet.files import STATE_DIR
from comfyfleet.pull.disk import preflight as disk_preflight
from comfyfleet.pull.transfer import (
    EntryLike,
    PullItem,
    PullReport,
    PullSettings,
    bytes_to_write,
    plan_pull,
    pull,
)
from comfyfleet.store.base import ObjectStore
from comfyfleet.store.manifest import ManifestEntry, read_manifest
from comfyfleet.units import format_bytes
from comfyfleet.warmup.baked import (
    BakedCheck,
    BakedManifest,
    check_baked,
    default_baked_manifest_path,
    read_baked_manifest,
    write_baked_manifest,
)
from comfyfleet.warmup.gpu import InstanceFacts, Runner, instance_facts
from comfyfleet.warmup.lock import RootLock, write_extra_model_paths
from comfyfleet.warmup.profiles import ProfileChoice, choose_profile
from comfyfleet.warmup.reports import Published
from comfyfleet.warmup.timing import ColdStartRecord, PhaseClock, Targets, build_record

DEFAULT_COMFY_URL = "http://127.0.0.1:8188"
COMFY_LOG = "comfyui.log"
VERIFY_MODES = ("fast", "full")


class ComfyAPI(Protocol):
    """What the warm-up needs from a ComfyUI client (``comfy.ComfyClient``)."""

    def system_stats(self) -> dict[str, Any]: ...

    def list_models(self, folder: str) -> list[str]: ...


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


@dataclass(frozen=True)
class ErrorInfo:
    """A failure, JSON-ready: the error class, its message and its hint."""

    type: str
    message: str
    hint: str | None = None

    @classmethod
    def from_exc(cls, exc: BaseException) -> ErrorInfo:
        if isinstance(exc, ComfyfleetError):
            return cls(type(exc).__name__, exc.message, exc.hint)
        return cls(type(exc).__name__, str(exc) or repr(exc))

    def one_line(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "message": self.message, "hint": self.hint}


@dataclass
class ComfyStatus:
    """ComfyUI as the warm-up found (or started) it."""

    url: str
    started: bool = False
    pid: int | None = None
    log_path: str | None = None
    ready: bool = False
    version: str = ""
    device: str = ""
    vram_total: int | None = None
    models_listed: list[str] = field(default_factory=list)
    models_unchecked: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "started": self.started,
            "pid": self.pid,
            "log_path": self.log_path,
            "ready": self.ready,
            "version": self.version,
            "device": self.device,
            "vram_total": self.vram_total,
            "models_listed": list(self.models_listed),
            "models_unchecked": dict(self.models_unchecked),
        }


@dataclass
class WarmupResult:
    """Everything a warm-up found and did; ``to_dict()`` is one JSON document."""

    ok: bool
    record: ColdStartRecord
    comfy_root: str
    models_dir: str
    profile: ProfileChoice | None = None
    files: list[dict[str, Any]] = field(default_factory=list)
    comfy: ComfyStatus | None = None
    first_prompt: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    error: ErrorInfo | None = None
    published: Published | None = None
    exception: BaseException | None = field(default=None, repr=False, compare=False)

    @property
    def passed(self) -> bool:
        return self.record.passed

    @property
    def verdict(self) -> str:
        return self.record.verdict

    def raise_for_failure(self) -> None:
        """Re-raise the error that stopped the warm-up (no-op when it succeeded)."""
        if self.exception is not None:
            raise self.exception
        if self.error is not None:
            raise ComfyfleetError(self.error.message, hint=self.error.hint)

    def to_dict(self) -> dict[str, Any]:
        record = self.record.to_dict()
        phases = record.pop("phases")
        return {
            "ok": self.ok,
            "verdict": self.record.verdict,
            "passed": self.record.passed,
            "total_s": round(self.record.total_s, 3),
            "target_s": self.record.target_s,
            "mode": self.record.mode,
            "dominant_phase": self.record.dominant_phase,
            "phases": phases,
            "error": None if self.error is None else self.error.to_dict(),
            "comfy_root": self.comfy_root,
            "models_dir": self.models_dir,
            "profile": None if self.profile is None else self.profile.to_dict(),
            "files": self.files,
            "comfy": None if self.comfy is None else self.comfy.to_dict(),
            "first_prompt": self.first_prompt,
            "warnings": list(self.warnings),
            "record": record,
            "published": None if self.published is None else self.published.to_dict(),
        }


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


def load_workflow(path: Path) -> dict[str, Any]:
    """An API-format workflow (``{node_id: {class_type, inputs}}``) from a JSON file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"warm-up workflow {path} does not exist", hint="check the --warmup-workflow path"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"warm-up workflow {path} is not readable JSON ({exc})",
            hint="export it from ComfyUI with 'Save (API)'",
        ) from exc
    if isinstance(data, dict) and "prompt" in data and isinstance(data["prompt"], dict):
        data = data["prompt"]
    if not isinstance(data, dict) or not data or "nodes" in data:
        raise ConfigError(
            f"warm-up workflow {path} is not in API format ({{node_id: {{class_type, inputs}}}})",
            hint="in ComfyUI use 'Save (API)' (the UI format with nodes/links is not accepted)",
        )
    for node_id, node in data.items():
        if not isinstance(node, dict) or "class_type" not in node:
            raise ConfigError(
                f"warm-up workflow {path}: node {node_id!r} has no class_type",
                hint="export it from ComfyUI with 'Save (API)'",
            )
    return data


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _same_dir(a: Path, b: Path) -> bool:
    return a.absolute().resolve() == b.absolute().resolve()


class WarmupSession:
    """One warm-up, phase by phase: ``preflight``, ``pull``, ``place``, ``boot``,
    ``first_prompt``, then ``finish`` (always; it releases the lock and builds the result).

    ``run()`` does all of that and turns a ``ComfyfleetError`` (or ``OSError``) into a
    failed result instead of raising.
    """

    def __init__(
        self,
        *,
        store: ObjectStore | None,
        comfy_root: Path,
        catalog: Catalog | None = None,
        profile: str = AUTO_PROFILE,
        facts: InstanceFacts | None = None,
        vram_gb: float | None = None,
        gpu: str | None = None,
        mode: str = "script",
        verify: str = "fast",
        comfy_url: str | None = None,
        start_comfy: str | None = None,
        warmup_workflow: Path | None = None,
        models_dir: Path | None = None,
        progress: WarmupProgress | None = None,
        clock: PhaseClock | None = None,
        force: bool = False,
        baked_manifest: Path | None = None,
        instance_id: str = "",
        target_s: float | None = None,
        settings: PullSettings | None = None,
        boot_timeout_s: float = 600.0,
        prompt_timeout_s: float = 1800.0,
        wait_lock_s: float = 0.0,
        client_factory: ClientFactory | None = None,
        prompt_runner: PromptRunner | None = None,
        gpu_runner: Runner | None = None,
    ) -> None:
        if verify not in VERIFY_MODES:
            raise ConfigError(f"unknown --verify {verify!r}", hint="use --verify fast or full")
        self.targets = Targets.for_mode(mode, override_s=target_s)
        if mode == "script" and store is None:
            raise ConfigError(
                "a warm-up in script mode needs a store",
                hint="pass --store URI (or set COMFYFLEET_STORE)",
            )
        if mode == "script" and catalog is None:
            raise ConfigError("a warm-up in script mode needs a catalog")
        if start_comfy is not None and not start_comfy.strip():
            raise ConfigError("--start-comfy is empty", hint="pass the command that starts ComfyUI")
        self.store = store
        self.catalog = catalog
        self.comfy_root = Path(comfy_root).absolute()
        self.requested = profile or AUTO_PROFILE
        self.facts = facts
        self.vram_gb = vram_gb
        self.gpu = gpu
        self.mode = mode
        self.verify = verify
        self.comfy_url = comfy_url
        self.start_comfy = start_comfy
        self.workflow_path = warmup_workflow
        self.models_dir = Path(models_dir).absolute() if models_dir is not None else None
        self.progress = progress
        self.clock = clock or PhaseClock()
        self.force = force
        self.baked_path = baked_manifest
        self.instance_id = instance_id
        self.settings = settings or PullSettings()
        self.boot_timeout_s = boot_timeout_s
        self.prompt_timeout_s = prompt_timeout_s
        self.wait_lock_s = wait_lock_s
        self.client_factory = client_factory or _default_client
        self.prompt_runner = prompt_runner or _default_prompt_runner
        self.gpu_runner = gpu_runner

        self.lock: RootLock | None = None
        self.choice: ProfileChoice | None = None
        self.items: list[PullItem] = []
        self.entries: list[EntryLike] = []
        self.baked: BakedManifest | None = None
        self.baked_check: BakedCheck | None = None
        self.report: PullReport | None = None
        self.workflow: dict[str, Any] | None = None
        self.comfy: ComfyStatus | None = None
        self.first_prompt_info: dict[str, Any] | None = None
        self.warnings: list[str] = []
        self.process: subprocess.Popen[bytes] | None = None
        self._client: Any = None

    # ------------------------------------------------------------------ helpers

    @property
    def models_base(self) -> Path:
        if self.models_dir is not None:
            return self.models_dir
        return self.comfy_root / "models"

    def _phase_started(self, name: str) -> None:
        if self.progress is not None:
            self.progress.phase(name)

    def _settings(self) -> PullSettings:
        s = self.settings
        if s.verify == self.verify:
            return s
        return PullSettings(
            range_size=s.range_size,
            max_workers=s.max_workers,
            verify="full" if self.verify == "full" else "fast",
            fsync=s.fsync,
            hash=s.hash,
            buffered_ranges=s.buffered_ranges,
            journal_interval_s=s.journal_interval_s,
            integrity_retries=s.integrity_retries,
            transient_retries=s.transient_retries,
            retry_backoff_s=s.retry_backoff_s,
        )

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
            if self.workflow_path is not None:
                self.workflow = load_workflow(self.workflow_path)
            if self.lock is None:
                self.lock = RootLock(self.comfy_root, wait_s=self.wait_lock_s).acquire()
            if self.mode == "baked":
                self._plan_baked()
            else:
                self._plan_script()
            needed = bytes_to_write(self.items)
            if self.mode == "script":
                disk_preflight(needed, self.models_base)
            ph.note = f"{len(self.items)} files, {format_bytes(needed)} to write"

    def _facts(self) -> InstanceFacts:
        if self.facts is None:
            self.facts = instance_facts(
                self.models_base, vram_gb=self.vram_gb, gpu=self.gpu, runner=self.gpu_runner
            )
            self.warnings.extend(self.facts.notes)
        return self.facts

    def _plan_script(self) -> None:
        assert self.store is not None and self.catalog is not None
        facts = self._facts()
        manifest = read_manifest(self.store)
        by_key = manifest.by_key()
        # A catalog model counts as mirrored only with the bytes the catalog pins.
        mirrored = {
            m.key
            for m in self.catalog.models.values()
            if m.key in by_key and (m.sha256 is None or m.sha256 == by_key[m.key].sha256)
        }

        def needed(models: Sequence[Any]) -> int:
            entries = [by_key[m.key] for m in models if m.key in by_key]
            return bytes_to_write(plan_pull(entries, self.comfy_root, models_dir=self.models_dir))

        self.choice = choose_profile(
            self.catalog,
            facts,
            requested=self.requested,
            sizes={k: e.size for k, e in by_key.items()},
            needed_bytes=needed,
            mirrored=mirrored,
            store=self.store.uri,
            force=self.force,
        )
        self.warnings.extend(self.choice.warnings)
        entries: list[ManifestEntry] = [by_key[m.key] for m in self.choice.models]
        self.entries = list(entries)
        self.items = plan_pull(entries, self.comfy_root, models_dir=self.models_dir)

    def _plan_baked(self) -> None:
        facts = self._facts()
        path = self.baked_path or default_baked_manifest_path()
        baked = read_baked_manifest(path)
        if self.requested not in (AUTO_PROFILE, baked.profile):
            raise ConfigError(
                f"this image was baked with profile {baked.profile}, not {self.requested}",
                hint=f"pass --profile {baked.profile} (or auto), or use --mode script",
            )
        baked_dir = Path(baked.models_dir)
        if self.models_dir is not None and not _same_dir(self.models_dir, baked_dir):
            raise ConfigError(
                f"--models-dir {self.models_dir} differs from the baked models at {baked_dir}",
                hint="leave --models-dir out in baked mode",
            )
        self.models_dir = baked_dir
        self.baked = baked
        self.entries = list(baked.entries)
        self.items = plan_pull(baked.entries, self.comfy_root, models_dir=baked_dir)
        self.choice = ProfileChoice(
            name=baked.profile,
            models=(),
            total_bytes=baked.total_bytes,
            reason=f"baked into the image ({path})",
            requested=self.requested,
            needed_bytes=0,
        )
        if facts.vram_source != "none" and self.catalog is not None:
            try:
                floor = self.catalog.profile_min_vram(baked.profile)
            except ComfyfleetError:
                floor = 0.0
            if floor > facts.vram_gb:
                self.warnings.append(
                    f"profile {baked.profile} needs {floor:g} GB VRAM, this instance has "
                    f"{facts.vram_gb:g} GB"
                )

    def pull(self) -> None:
        """Verify what is in place and fetch the rest (baked: check the image's files)."""
        if self.mode == "baked":
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
                settings=self._settings(),
                progress=self.progress.advance if self.progress is not None else None,
                on_plan=on_plan,
            )
        except BaseException:
            self.clock.record("pull", self.clock.elapsed() - start, start_s=start, status="failed")
            raise
        self.report = report
        if self.mode == "script" or self.clock.phases["verify"].status == "pending":
            self.clock.record(
                "verify",
                report.verify_seconds,
                bytes=report.bytes_hashed_present,
                start_s=start,
                note=f"{report.count('present')} present"
                + (
                    f", {format_bytes(report.bytes_hashed_present)} re-hashed"
                    if report.bytes_hashed_present
                    else ""
                ),
            )
        jobs = len(items) - report.count("present")
        self.clock.record(
            "pull",
            report.seconds - report.verify_seconds,
            bytes=report.bytes_downloaded,
            start_s=start + report.verify_seconds,
            status="ok" if report.ok else "failed",
            note=f"{jobs} files fetched" if jobs else "nothing to fetch",
        )
        report.raise_for_failures()

    def _pull_baked(self) -> None:
        assert self.baked is not None
        self._phase_started("verify")
        with self.clock.phase("verify") as ph:
            check = check_baked(
                self.baked, verify=self.verify, max_workers=self.settings.max_workers
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
            inside = _same_dir(self.models_base, self.comfy_root / "models")
            if inside:
                ph.note = "models inside the ComfyUI tree"
                return
            folders = sorted({e.folder for e in self.entries})
            path = write_extra_model_paths(self.comfy_root, self.models_base, folders=folders)
            ph.note = f"wrote {path.name} -> {self.models_base}"

    # ------------------------------------------------------------------ ComfyUI

    def boot(self) -> None:
        """Start ComfyUI or find it, until it answers and lists the placed models."""
        if not self.comfy_url and not self.start_comfy:
            self.clock.skip("comfy_boot", "no --comfy-url or --start-comfy")
            self.clock.skip("first_prompt", "no ComfyUI")
            return
        url = (self.comfy_url or DEFAULT_COMFY_URL).rstrip("/")
        self.comfy = ComfyStatus(url=url)
        self._phase_started("comfy_boot")
        with self.clock.phase("comfy_boot") as ph:
            try:
                if self.start_comfy:
                    self._start_process()
                self._client = self.client_factory(url)
                self._wait_ready()
            except BaseException:
                self.stop_comfy()
                raise
            listed = len(self.comfy.models_listed)
            ph.note = f"ComfyUI {self.comfy.version or '?'} lists {listed} placed file(s)"

    def _start_process(self) -> None:
        assert self.comfy is not None and self.start_comfy
        log_path = self.comfy_root / STATE_DIR / COMFY_LOG
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - kept by the child
        try:
            log.write(f"\n--- comfyfleet: {self.start_comfy}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                ["/bin/sh", "-c", self.start_comfy],
                cwd=self.comfy_root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: it outlives the CLI
            )
        except OSError as exc:
            raise ComfyError(
                f"could not start ComfyUI with {self.start_comfy!r}: {exc}",
                hint="check the --start-comfy command",
            ) from exc
        finally:
            log.close()
        self.comfy.started = True
        self.comfy.pid = self.process.pid
        self.comfy.log_path = str(log_path)

    def _check_process(self) -> None:
        if self.process is None:
            return
        code = self.process.poll()
        if code is None:
            return
        assert self.comfy is not None
        tail = _tail(Path(self.comfy.log_path or ""))
        raise ComfyError(
            f"ComfyUI exited with code {code} while starting ({self.start_comfy!r})"
            + (f"; last log lines:\n{tail}" if tail else ""),
            hint=f"see {self.comfy.log_path}; run the command by hand in {self.comfy_root}",
        )

    def _expected(self) -> tuple[dict[str, set[str]], dict[str, str]]:
        """Files ComfyUI should list per HTTP folder key, and files it cannot list (why)."""
        expected: dict[str, set[str]] = {}
        unchecked: dict[str, str] = {}
        for entry in self.entries:
            folder = http_folder(entry.folder)
            suffix = Path(entry.file).suffix.lower()
            if folder in PT_FOLDERS and suffix not in PT_EXTENSIONS:
                unchecked[entry.key] = f"ComfyUI lists only model files in {folder}"
                continue
            expected.setdefault(folder, set()).add(entry.file)
        return expected, unchecked

    def _wait_ready(self) -> None:
        assert self.comfy is not None
        client = self._client
        expected, unchecked = self._expected()
        deadline = time.monotonic() + self.boot_timeout_s
        stats: dict[str, Any] | None = None
        missing: dict[str, set[str]] = {k: set(v) for k, v in expected.items()}
        last_error = ""
        while True:
            self._check_process()
            try:
                if stats is None:
                    stats = client.system_stats()
                for folder in list(missing):
                    try:
                        listed = set(client.list_models(folder))
                    except ComfyConnectionError:
                        raise
                    except ComfyError as exc:
                        # 404: no such folder key (its custom node is not installed).
                        for f in missing.pop(folder):
                            unchecked[f"models/{folder}/{f}"] = (
                                f"ComfyUI has no model folder {folder!r} ({exc.message})"
                            )
                        continue
                    missing[folder] -= listed
                    if not missing[folder]:
                        del missing[folder]
                if not missing:
                    break
                last_error = "not listed yet: " + ", ".join(
                    f"models/{k}/{f}" for k, v in sorted(missing.items()) for f in sorted(v)[:3]
                )
            except ComfyConnectionError as exc:
                last_error = exc.message
            if time.monotonic() >= deadline:
                if stats is None:
                    raise ComfyConnectionError(
                        f"ComfyUI at {self.comfy.url} did not answer within "
                        f"{self.boot_timeout_s:.0f} s ({last_error})",
                        hint="check that ComfyUI runs and --comfy-url is right"
                        + (f"; its log: {self.comfy.log_path}" if self.comfy.log_path else ""),
                    )
                raise ComfyError(
                    f"ComfyUI at {self.comfy.url} answers but does not list the placed models "
                    f"after {self.boot_timeout_s:.0f} s ({last_error})",
                    hint="--comfy-url and --comfy-root (or --models-dir) must be the same "
                    "ComfyUI; with models outside the tree ComfyUI reads extra_model_paths.yaml "
                    "only at start: restart it",
                )
            time.sleep(0.25)
        self.comfy.ready = True
        self.comfy.models_unchecked = unchecked
        self.comfy.models_listed = sorted(
            f"models/{k}/{f}"
            for k, files in expected.items()
            for f in files
            if f"models/{k}/{f}" not in unchecked
        )
        system = stats.get("system", {}) if isinstance(stats, Mapping) else {}
        devices = stats.get("devices", []) if isinstance(stats, Mapping) else []
        self.comfy.version = str(system.get("comfyui_version", ""))
        if devices and isinstance(devices[0], Mapping):
            self.comfy.device = str(devices[0].get("name", ""))
            total = devices[0].get("vram_total")
            self.comfy.vram_total = int(total) if isinstance(total, int | float) else None

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
            info = self.prompt_runner(self._client, self.workflow, self.prompt_timeout_s)
            info["seconds"] = round(time.monotonic() - t0, 3)
            info["workflow"] = str(self.workflow_path)
            self.first_prompt_info = info
            ph.note = f"prompt {info.get('prompt_id', '')}"

    def stop_comfy(self) -> None:
        """Stop the ComfyUI this session started (its whole process group)."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    # ------------------------------------------------------------------ the end

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        close = getattr(self._client, "close", None)
        if callable(close):
            close()

    def finish(self, exc: BaseException | None = None) -> WarmupResult:
        """Release the lock, stop the clock and build the result (``exc``: what failed)."""
        self.close()
        facts = self.facts
        report = self.report
        choice = self.choice
        error = ErrorInfo.from_exc(exc) if exc is not None else None
        files: list[dict[str, Any]] = []
        if report is not None:
            for r in report.items:
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
        present = sum(1 for f in files if f["status"] == "present")
        record = build_record(
            self.clock,
            self.targets,
            ok=exc is None,
            profile=choice.name if choice else "",
            profile_reason=choice.reason if choice else "",
            verify=self.verify,
            store=self.store.uri if self.store is not None else "",
            host=socket.gethostname(),
            instance_id=self.instance_id,
            gpu_name=facts.gpu_name if facts else "none",
            gpu_count=len(facts.gpus) if facts else 0,
            vram_gb=facts.vram_gb if facts else 0.0,
            vram_source=facts.vram_source if facts else "",
            cpu_count=facts.cpu_count if facts else (os.cpu_count() or 1),
            free_disk_bytes=facts.free_disk_bytes if facts else 0,
            bytes_total=choice.total_bytes if choice else 0,
            bytes_downloaded=report.bytes_downloaded if report else 0,
            files_total=len(self.items),
            files_placed=sum(1 for f in files if f["status"] == "placed"),
            files_present=present,
            files_replaced=sum(1 for f in files if f["status"] == "replaced"),
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

    def run(self) -> WarmupResult:
        """Every phase in order; a failure ends the run and is reported in the result."""
        try:
            self.preflight()
            self.pull()
            self.place()
            self.boot()
            self.first_prompt()
        except (ComfyfleetError, OSError) as exc:
            return self.finish(exc)
        except BaseException:
            self.close()
            raise
        return self.finish()


def warm_up(
    *,
    store: ObjectStore | None,
    comfy_root: Path,
    catalog: Catalog | None,
    profile: str = AUTO_PROFILE,
    facts: InstanceFacts | None = None,
    vram_gb: float | None = None,
    gpu: str | None = None,
    mode: str = "script",
    verify: str = "fast",
    comfy_url: str | None = None,
    start_comfy: str | None = None,
    warmup_workflow: Path | None = None,
    models_dir: Path | None = None,
    progress: WarmupProgress | None = None,
    clock: PhaseClock | None = None,
    **options: Any,
) -> WarmupResult:
    """Warm up one ComfyUI root (see the module docstring).

    Arguments that cannot work (unknown mode or verify, no store in script mode) raise
    ``ConfigError`` before anything runs. Every later failure comes back as
    ``result.ok is False`` with ``result.error``, the record included;
    ``result.raise_for_failure()`` re-raises it. ``options`` go to ``WarmupSession``.
    """
    session = WarmupSession(
        store=store,
        comfy_root=comfy_root,
        catalog=catalog,
        profile=profile,
        facts=facts,
        vram_gb=vram_gb,
        gpu=gpu,
        mode=mode,
        verify=verify,
        comfy_url=comfy_url,
        start_comfy=start_comfy,
        warmup_workflow=warmup_workflow,
        models_dir=models_dir,
        progress=progress,
        clock=clock,
        **options,
    )
    return session.run()


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
    session = WarmupSession(
        store=store,
        comfy_root=root,
        catalog=catalog,
        profile=profile,
        gpu="none",
        verify="full",
        models_dir=models_dir,
        progress=progress,
        settings=settings,
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
        entries=session.entries,
        ids=ids,
        store=store.uri,
    )
    return BakeResult(session.choice, str(manifest_out), str(models_dir), session.report)
