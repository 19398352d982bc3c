"""Where the minutes of a cold start went: a phase clock, the targets, one record per run.

A warm-up runs through fixed phases, in this order::

    preflight     lock, instance facts, manifest, profile choice, disk check
    verify        files already in place checked (markers, or re-hashed with --verify full)
    pull          bytes fetched from the store, sha256 computed while writing
    place         what makes the files visible to ComfyUI (extra_model_paths.yaml, markers)
    comfy_boot    ComfyUI started (or waited for) until it answers and lists the models
    first_prompt  the warm-up workflow ran, so the checkpoint sits in VRAM

``total`` is wall time from the first phase's start to the last one's end (phases may
leave gaps, so it is not the sum). The target is 300 s for an on-start script and 120 s for
a pre-baked image (``Targets``); the phase with the most seconds is the one that dominated.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, cast

from comfyfleet import __version__
from comfyfleet.errors import ConfigError

PHASES: tuple[str, ...] = ("preflight", "verify", "pull", "place", "comfy_boot", "first_prompt")
TOTAL = "total"

Mode = Literal["script", "baked"]
MODES: tuple[Mode, ...] = ("script", "baked")
PhaseStatus = Literal["pending", "ok", "failed", "skipped"]

# The plan's promises: under 5 minutes with a start-up script, under 2 with a baked image.
TARGET_SECONDS: dict[str, float] = {"script": 300.0, "baked": 120.0}


@dataclass
class Phase:
    """One phase: when it started (seconds after the clock started), how long, how many bytes."""

    name: str
    seconds: float = 0.0
    bytes: int = 0
    start_s: float | None = None
    status: PhaseStatus = "pending"
    note: str = ""

    @property
    def mb_per_s(self) -> float | None:
        """Throughput in MB/s (10^6 bytes), or None when no bytes moved."""
        if self.bytes <= 0 or self.seconds <= 0:
            return None
        return self.bytes / self.seconds / 1e6

    def to_dict(self) -> dict[str, Any]:
        rate = self.mb_per_s
        return {
            "name": self.name,
            "status": self.status,
            "seconds": round(self.seconds, 3),
            "start_s": None if self.start_s is None else round(self.start_s, 3),
            "bytes": self.bytes,
            "mb_per_s": None if rate is None else round(rate, 1),
            "note": self.note,
        }


class PhaseClock:
    """Times the phases of one warm-up.

    Use ``with clock.phase("pull") as p: ...; p.bytes += n``; a phase that raises is marked
    ``failed`` (the exception goes on). Phases measured by someone else (the pull engine
    reports its verify time) are added with ``record``. Entering a phase twice (a retried
    task) adds the seconds and bytes of both tries.
    """

    def __init__(self, *, monotonic: Callable[[], float] = time.perf_counter) -> None:
        self._now = monotonic
        self.started_at = datetime.now(UTC)
        self._t0 = monotonic()
        self._end: float | None = None
        self.phases: dict[str, Phase] = {name: Phase(name) for name in PHASES}

    def elapsed(self) -> float:
        """Seconds since the clock started (frozen once ``stop`` was called)."""
        end = self._end if self._end is not None else self._now()
        return end - self._t0

    def _get(self, name: str) -> Phase:
        if name not in self.phases:
            raise ConfigError(
                f"unknown warm-up phase {name!r}", hint=f"phases are: {', '.join(PHASES)}"
            )
        return self.phases[name]

    @contextmanager
    def phase(self, name: str) -> Iterator[Phase]:
        """Time the block as phase ``name``."""
        ph = self._get(name)
        start = self._now()
        if ph.start_s is None:
            ph.start_s = start - self._t0
        ph.status = "ok"
        try:
            yield ph
        except BaseException:
            ph.status = "failed"
            raise
        finally:
            ph.seconds += self._now() - start

    def record(
        self,
        name: str,
        seconds: float,
        *,
        bytes: int = 0,
        start_s: float | None = None,
        status: PhaseStatus = "ok",
        note: str = "",
    ) -> Phase:
        """Add a phase measured elsewhere; ``start_s`` defaults to 'ends now'."""
        ph = self._get(name)
        if ph.start_s is None:
            ph.start_s = start_s if start_s is not None else max(0.0, self.elapsed() - seconds)
        ph.seconds += max(0.0, seconds)
        ph.bytes += max(0, bytes)
        ph.status = status
        if note:
            ph.note = note
        return ph

    def skip(self, name: str, note: str) -> None:
        """Mark a phase as not run, with the reason."""
        ph = self._get(name)
        if ph.status == "pending":
            ph.status = "skipped"
            ph.note = note

    def stop(self) -> float:
        """Freeze the total; pending phases become skipped. Returns the total seconds."""
        if self._end is None:
            self._end = self._now()
        for ph in self.phases.values():
            if ph.status == "pending":
                ph.status = "skipped"
                ph.note = ph.note or "not reached"
        return self.elapsed()

    @property
    def total_s(self) -> float:
        return self.elapsed()

    def dominant(self) -> Phase | None:
        """The phase that took the most seconds (None when nothing ran)."""
        ran = [p for p in self.phases.values() if p.seconds > 0]
        return max(ran, key=lambda p: p.seconds) if ran else None

    def ordered(self) -> list[Phase]:
        return [self.phases[name] for name in PHASES]


@dataclass(frozen=True)
class Targets:
    """The cold-start budget for a mode: 300 s (script) or 120 s (baked)."""

    mode: Mode
    total_s: float

    @classmethod
    def for_mode(cls, mode: str, *, override_s: float | None = None) -> Targets:
        if mode not in TARGET_SECONDS:
            raise ConfigError(
                f"unknown warm-up mode {mode!r}", hint=f"use one of: {', '.join(MODES)}"
            )
        if override_s is not None and override_s <= 0:
            raise ConfigError(
                f"target {override_s} s is not positive", hint="pass a number of seconds > 0"
            )
        return cls(cast(Mode, mode), override_s if override_s else TARGET_SECONDS[mode])

    def met(self, total_s: float) -> bool:
        return total_s <= self.total_s


@dataclass
class ColdStartRecord:
    """One cold start, as a row of the history table and as a JSON document."""

    started_at: datetime
    mode: str
    target_s: float
    total_s: float
    ok: bool
    passed: bool
    phases: list[Phase]
    profile: str = ""
    profile_reason: str = ""
    verify: str = "fast"
    store: str = ""
    host: str = ""
    instance_id: str = ""
    gpu_name: str = "none"
    gpu_count: int = 0
    vram_gb: float = 0.0
    vram_source: str = ""
    cpu_count: int = 0
    free_disk_bytes: int = 0
    bytes_total: int = 0
    bytes_downloaded: int = 0
    files_total: int = 0
    files_placed: int = 0
    files_present: int = 0
    files_replaced: int = 0
    error: str = ""
    comfyfleet_version: str = __version__
    record_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def dominant_phase(self) -> str:
        ran = [p for p in self.phases if p.seconds > 0]
        return max(ran, key=lambda p: p.seconds).name if ran else ""

    @property
    def verdict(self) -> str:
        """PASS, MISS (finished, over target) or FAIL (did not finish)."""
        if not self.ok:
            return "FAIL"
        return "PASS" if self.passed else "MISS"

    def phase(self, name: str) -> Phase | None:
        return next((p for p in self.phases if p.name == name), None)

    def to_row(self) -> dict[str, Any]:
        """A flat dict of scalars (one history row); per phase ``<name>_s``/_bytes/_mbps."""
        row: dict[str, Any] = {
            "record_id": self.record_id,
            "started_at": self.started_at,
            "comfyfleet_version": self.comfyfleet_version,
            "host": self.host,
            "instance_id": self.instance_id,
            "gpu_name": self.gpu_name,
            "gpu_count": self.gpu_count,
            "vram_gb": float(self.vram_gb),
            "vram_source": self.vram_source,
            "cpu_count": self.cpu_count,
            "free_disk_bytes": self.free_disk_bytes,
            "store": self.store,
            "profile": self.profile,
            "mode": self.mode,
            "verify": self.verify,
            "target_s": float(self.target_s),
            "total_s": round(self.total_s, 3),
            "ok": self.ok,
            "passed": self.passed,
            "verdict": self.verdict,
            "dominant_phase": self.dominant_phase,
            "bytes_total": self.bytes_total,
            "bytes_downloaded": self.bytes_downloaded,
            "files_total": self.files_total,
            "files_placed": self.files_placed,
            "files_present": self.files_present,
            "files_replaced": self.files_replaced,
            "error": self.error,
        }
        for ph in self.phases:
            rate = ph.mb_per_s
            row[f"{ph.name}_s"] = round(ph.seconds, 3)
            row[f"{ph.name}_bytes"] = ph.bytes
            row[f"{ph.name}_mbps"] = float("nan") if rate is None else round(rate, 1)
            row[f"{ph.name}_status"] = ph.status
        return row

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the row's facts plus the phases as a list."""
        data = {
            k: v
            for k, v in self.to_row().items()
            if not k.endswith(("_s", "_bytes", "_mbps", "_status")) or k in ("target_s", "total_s")
        }
        data["started_at"] = self.started_at.isoformat()
        data["profile_reason"] = self.profile_reason
        data["phases"] = [p.to_dict() for p in self.phases]
        return data


def build_record(
    clock: PhaseClock,
    targets: Targets,
    *,
    ok: bool,
    **facts: Any,
) -> ColdStartRecord:
    """Stop ``clock`` and turn it into a record (``facts`` fill the other fields)."""
    total = clock.stop()
    return ColdStartRecord(
        started_at=clock.started_at,
        mode=targets.mode,
        target_s=targets.total_s,
        total_s=total,
        ok=ok,
        passed=ok and targets.met(total),
        phases=clock.ordered(),
        **facts,
    )
