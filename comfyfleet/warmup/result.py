"""What a warm-up reports: ``WarmupResult`` (one JSON document, also the payload of
``events.WARMUP_FINISHED``), ComfyUI's status as found, and the error that stopped it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from comfyfleet.errors import ComfyfleetError
from comfyfleet.warmup.profiles import ProfileChoice
from comfyfleet.warmup.reports import Published
from comfyfleet.warmup.timing import ColdStartRecord


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
    """ComfyUI as the warm-up found (or started) it. ``vram_total`` is ``None`` when its
    device has no VRAM of its own (``device_type`` cpu: ComfyUI reports RAM there)."""

    url: str
    started: bool = False
    pid: int | None = None
    log_path: str | None = None
    ready: bool = False
    version: str = ""
    device: str = ""
    device_type: str = ""
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
            "device_type": self.device_type,
            "vram_total": self.vram_total,
            "models_listed": list(self.models_listed),
            "models_unchecked": dict(self.models_unchecked),
        }


@dataclass
class WarmupResult:
    """Everything a warm-up found and did; ``to_dict()`` is one JSON document (the payload
    of ``events.WARMUP_FINISHED``)."""

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
