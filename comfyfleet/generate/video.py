"""The video stage of a job: an image output turned into a video, here or on fal.ai.

The policy: a job with a ``video`` column runs that built-in video workflow on this ComfyUI
when the workflow's model files are listed and the GPU reports the VRAM they need (from the
catalog, else :data:`DEFAULT_VIDEO_VRAM_GB`); otherwise, or when the local run fails, on
fal.ai (:mod:`comfyfleet.generate.fal`) with the image sent as a presigned store URL or a data
URI. The outcome says which path ran; when neither can, the job fails naming every reason.
"""

from __future__ import annotations

import mimetypes
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from comfyfleet.comfy.folders import IMAGE_EXTENSIONS
from comfyfleet.comfy.workflows import BUILTIN_WORKFLOWS, WorkflowSpec, build_workflow
from comfyfleet.errors import ComfyError, FalError, is_transient
from comfyfleet.generate.fal import FalClient, FalSettings, data_uri, result_files
from comfyfleet.generate.jobs import Job
from comfyfleet.generate.results import describe, job_prefix, safe_name, store_outputs
from comfyfleet.store.base import ObjectStore

if TYPE_CHECKING:
    from comfyfleet.comfy.tracking import OutputFile
    from comfyfleet.generate.api import ComfyBatchAPI

# VRAM a local video stage needs when the catalog does not say (GiB, fp8/fp16 weights).
DEFAULT_VIDEO_VRAM_GB: Mapping[str, float] = {"wan_i2v": 24.0, "svd_i2v": 12.0}


@dataclass(frozen=True)
class VideoSettings:
    """How video stages run.

    ``local``: try this ComfyUI first (model listed and ``vram_total`` >= the need);
    ``fal``: fall back to fal.ai (``fal_settings``: key, endpoint, apps per video workflow);
    ``min_vram_gb``: the need per video workflow when the catalog gives none;
    ``prompt_timeout_s``: how long a local video prompt may take;
    ``fal_image``: ``auto`` sends a presigned store URL when the store can make one (else a
    data URI), ``data-uri`` always inlines the image.
    """

    local: bool = True
    fal: bool = True
    fal_settings: FalSettings = field(default_factory=FalSettings)
    min_vram_gb: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_VIDEO_VRAM_GB))
    prompt_timeout_s: float | None = 3600.0
    fal_image: Literal["auto", "data-uri"] = "auto"


@dataclass(frozen=True)
class VideoOutcome:
    """Where a video stage ran (``local`` or ``fal``), the keys it stored, ComfyUI's
    execution seconds (0 on fal.ai) and the stage's wall seconds."""

    path: Literal["local", "fal"]
    keys: list[str]
    exec_seconds: float
    wall_seconds: float


class VideoStage:
    """Runs video stages for one batch; thread-safe (post workers share it).

    ``check`` is the batch's pre-submit check of a workflow; ``retries``/``backoff_s`` apply
    to transient fal.ai failures; ``fal`` may be given (else one is opened on first use and
    closed by :meth:`close`).
    """

    def __init__(
        self,
        *,
        client: ComfyBatchAPI,
        store: ObjectStore,
        batch_id: str,
        settings: VideoSettings,
        catalog_vram: Mapping[str, float],
        check: Callable[[Mapping[str, Any]], None],
        retries: int,
        backoff_s: float,
        fal: FalClient | None = None,
    ) -> None:
        self.client = client
        self.store = store
        self.batch_id = batch_id
        self.settings = settings
        self.catalog_vram = catalog_vram
        self.check = check
        self.retries = retries
        self.backoff = backoff_s
        self._fal = fal
        self._own_fal = False
        self._memo_lock = threading.Lock()
        self._local_video_why: dict[str, str] = {}  # video workflow -> "" (possible) or why not

    def close(self) -> None:
        if self._own_fal and self._fal is not None:
            self._fal.close()

    def _prefix(self, job: Job) -> str:
        return job_prefix(self.batch_id, job.id)

    def run(self, job: Job, outputs: Sequence[OutputFile], keys: Sequence[str]) -> VideoOutcome:
        """Run the job's video stage on the image among ``outputs`` (stored as ``keys``)."""
        assert job.video is not None
        began = time.monotonic()
        chosen = [o for o in outputs if o.type == "output"] or list(outputs)
        index = next(
            (
                n
                for n, o in enumerate(chosen)
                if not o.is_video and o.filename.lower().endswith(IMAGE_EXTENSIONS)
            ),
            None,
        )
        if index is None or index >= len(keys):
            raise ComfyError(
                f"job {job.id}: video stage {job.video} needs an image output, the workflow "
                "produced none",
                hint="give the job a workflow that saves an image (SaveImage)",
            )
        image_key = keys[index]
        image_bytes = self.store.get_bytes(image_key)
        reasons: list[str] = []
        if self.settings.local:
            why_not = self._local_video_possible(job.video)
            if not why_not:
                try:
                    video_keys, exec_seconds = self._local_video(job, image_bytes)
                    return VideoOutcome("local", video_keys, exec_seconds, time.monotonic() - began)
                except ComfyError as exc:
                    reasons.append(f"local {job.video} failed: {describe(exc)}")
            else:
                reasons.append(why_not)
        else:
            reasons.append("local video stages are off")
        if not self.settings.fal:
            raise ComfyError(
                f"job {job.id}: video stage {job.video} cannot run: {'; '.join(reasons)}",
                hint="turn on the fal.ai fallback (--fal-fallback with FAL_KEY set), or put the "
                "video model on this ComfyUI",
            )
        try:
            video_keys = self._fal_video(job, image_key, image_bytes)
        except FalError as exc:
            raise FalError(
                f"job {job.id}: video stage {job.video} failed locally and on fal.ai: "
                f"{'; '.join(reasons)}; fal.ai: {exc.message}",
                hint=exc.hint,
            ) from exc
        return VideoOutcome("fal", video_keys, 0.0, time.monotonic() - began)

    def _local_video_possible(self, name: str) -> str:
        """'' when this ComfyUI can run video workflow ``name``, else why not (cached)."""
        with self._memo_lock:
            if name in self._local_video_why:
                return self._local_video_why[name]
        reason = self._why_no_local_video(name)
        with self._memo_lock:
            self._local_video_why[name] = reason
        return reason

    def _why_no_local_video(self, name: str) -> str:
        spec = BUILTIN_WORKFLOWS.get(name)
        if spec is None:
            return f"{name} is not a built-in workflow"
        values = {"image": "input.png"}
        try:
            missing = []
            listed: dict[str, set[str]] = {}
            for folder, file in _required_models(spec, values):
                if folder not in listed:
                    listed[folder] = set(self.client.list_models(folder))
                if file not in listed[folder]:
                    missing.append(f"{folder}/{file}")
            if missing:
                return f"{name} needs {', '.join(missing)}, which this ComfyUI does not list"
            need = self._vram_need(name, spec, values)
            have = _vram_total_gb(self.client.system_stats())
            if need > 0 and have is None:
                return f"{name} needs {need:g} GiB of VRAM, this ComfyUI reports no GPU"
            if need > 0 and have is not None and have < need:
                return f"{name} needs {need:g} GiB of VRAM, this GPU has {have:.1f} GiB"
        except ComfyError as exc:
            return f"cannot ask ComfyUI about {name}: {describe(exc)}"
        return ""

    def _vram_need(self, name: str, spec: WorkflowSpec, values: Mapping[str, Any]) -> float:
        files = [file for _, file in _required_models(spec, values)]
        from_catalog = [self.catalog_vram[f] for f in files if f in self.catalog_vram]
        if from_catalog:
            return max(from_catalog)
        return float(self.settings.min_vram_gb.get(name, 0.0))

    def _local_video(self, job: Job, image_bytes: bytes) -> tuple[list[str], float]:
        assert job.video is not None
        uploaded = self.client.upload_image(image_bytes)
        values: dict[str, Any] = {
            "image": uploaded.ref,
            "filename_prefix": f"comfyfleet/{self.batch_id}/{job.id}_video",
        }
        for name in ("prompt", "negative", "seed"):
            value = getattr(job, name)
            if value is not None:
                values[name] = value
        workflow = build_workflow(job.video, values)
        self.check(workflow)
        prompt_id = self.client.submit(workflow)
        result = self.client.wait(prompt_id, timeout=self.settings.prompt_timeout_s)
        videos = [o for o in result.outputs if o.is_video] or list(result.outputs)
        return (
            store_outputs(self.client, self.store, self._prefix(job), videos, clean=False),
            result.seconds,
        )

    def _fal_client(self) -> FalClient:
        with self._memo_lock:
            if self._fal is None:
                self._fal = FalClient(self.settings.fal_settings)
                self._own_fal = True
            return self._fal

    def _fal_video(self, job: Job, image_key: str, image_bytes: bytes) -> list[str]:
        assert job.video is not None
        fal = self._fal_client()
        app = self.settings.fal_settings.apps.get(job.video)
        if not app:
            raise FalError(
                f"no fal.ai app is configured for video workflow {job.video}",
                hint="add it to FalSettings.apps (video workflow -> fal app id)",
            )
        image_url = None
        if self.settings.fal_image == "auto":
            image_url = self.store.presign_get(image_key, expires_s=3600)
        if image_url is None:
            mime = mimetypes.guess_type(image_key)[0] or "image/png"
            image_url = data_uri(image_bytes, mime)
        payload: dict[str, Any] = {"image_url": image_url}
        if job.prompt:
            payload["prompt"] = job.prompt
        if job.negative:
            payload["negative_prompt"] = job.negative
        if job.seed is not None:
            payload["seed"] = job.seed
        attempt = 0
        while True:
            attempt += 1
            try:
                _, result = fal.run(app, payload)
                break
            except FalError as exc:
                if not is_transient(exc) or attempt > self.retries:
                    raise
                time.sleep(self.backoff * 2 ** (attempt - 1))
        files = result_files(result)
        if not files:
            raise FalError(
                f"fal.ai app {app} answered without a file for job {job.id}",
                hint="check the app's output schema; a 'video' {url} is expected",
            )
        keys = []
        prefix = self._prefix(job)
        for n, file in enumerate(files):
            data = fal.download(file)
            ext = mimetypes.guess_extension(file.content_type or "") or ".mp4"
            name = safe_name(f"fal_{file.file_name or f'video{ext}'}")
            if n:
                name = safe_name(f"fal_{n}_{file.file_name or f'video{ext}'}")
            key = prefix + name
            self.store.put_bytes(
                key, data, content_type=file.content_type or mimetypes.guess_type(name)[0]
            )
            keys.append(key)
        return keys


def _required_models(spec: WorkflowSpec, values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(folder, file) pairs a built-in workflow needs for ``values``."""
    return [(str(f), str(n)) for f, n in spec.required_models(values)]


def _vram_total_gb(stats: Mapping[str, Any]) -> float | None:
    devices = stats.get("devices")
    if not isinstance(devices, list):
        return None
    totals = [
        float(d["vram_total"])
        for d in devices
        if isinstance(d, Mapping)
        and isinstance(d.get("vram_total"), (int, float))
        and str(d.get("type", "")).lower() != "cpu"
    ]
    return max(totals) / 2**30 if totals else None
