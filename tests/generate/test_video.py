"""Video stages: on the local ComfyUI when it can, on fal.ai (test server) when it cannot."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from comfyfleet.comfy.client import ComfyClient
from comfyfleet.generate.batch import BatchOptions, VideoSettings, read_results, run_batch
from comfyfleet.generate.fal import FalSettings
from comfyfleet.store.base import ObjectStore
from tests.doubles.comfyui import FakeComfyUI
from tests.doubles.fal import MP4_BYTES, FalAppBehaviour, FalDouble
from tests.generate.conftest import JobsFactory

GIB = 2**30


def gpu(vram_gb: float) -> dict[str, Any]:
    total = int(vram_gb * GIB)
    return {"name": "cuda:0 NVIDIA L40S : cudaMallocAsync", "type": "cuda", "index": 0,
            "vram_total": total, "vram_free": total, "torch_vram_total": 0,
            "torch_vram_free": 0}  # fmt: skip


def video_job(make_jobs: JobsFactory, video: str = "wan_i2v", **extra: Any) -> list[Any]:
    row = {"id": "clip", "workflow": "sdxl_txt2img", "prompt": "a fox in snow", "seed": 7,
           "negative": "blurry", "video": video, **extra}  # fmt: skip
    return make_jobs([row])


def classes(prompt: dict[str, Any]) -> set[str]:
    return {node["class_type"] for node in prompt.values()}


def test_model_missing_locally_goes_to_fal(
    fake: FakeComfyUI,
    client: ComfyClient,
    store: ObjectStore,
    fal: FalDouble,
    fal_settings: FalSettings,
    make_jobs: JobsFactory,
) -> None:
    fake.devices = [gpu(80)]
    fake.models["diffusion_models"] = []  # no Wan model on this ComfyUI
    report = run_batch(
        video_job(make_jobs),
        client=client,
        store=store,
        batch_id="v",
        options=BatchOptions(video=VideoSettings(fal_settings=fal_settings)),
    )
    result = report.results[0]
    assert result.status == "ok", result.error
    assert result.video_path == "fal"
    image_key, video_key = result.outputs
    assert video_key == "outputs/v/clip/fal_output.mp4"
    assert store.get_bytes(video_key) == MP4_BYTES
    assert len(fake.accepted) == 1  # only the image ran on ComfyUI
    (record,) = fal.records.values()
    assert record.model_id == "fal-ai/wan-i2v"
    assert record.payload["prompt"] == "a fox in snow" and record.payload["seed"] == 7
    assert record.payload["negative_prompt"] == "blurry"
    assert record.image_bytes == store.get_bytes(image_key)
    image_url = record.payload["image_url"]
    if store.uri.startswith("s3://"):
        assert image_url.startswith("http://127.0.0.1:") and "Signature" in image_url
    else:
        assert image_url.startswith("data:image/png;base64,")
        assert base64.b64decode(image_url.split(",", 1)[1]) == record.image_bytes
    row = next(r for r in read_results(store, "v") if r["id"] == "clip")
    assert row["video_path"] == "fal" and list(row["outputs"]) == result.outputs


def test_local_video_when_model_and_vram_are_there(
    fake: FakeComfyUI,
    client: ComfyClient,
    local_store: ObjectStore,
    fal: FalDouble,
    fal_settings: FalSettings,
    make_jobs: JobsFactory,
) -> None:
    fake.devices = [gpu(48)]
    report = run_batch(
        video_job(make_jobs),
        client=client,
        store=local_store,
        batch_id="v",
        options=BatchOptions(video=VideoSettings(fal_settings=fal_settings)),
    )
    result = report.results[0]
    assert result.status == "ok", result.error
    assert result.video_path == "local"
    image_key, video_key = result.outputs
    assert video_key.startswith("outputs/v/clip/clip_video") and video_key.endswith(".mp4")
    assert local_store.get_bytes(video_key)[4:8] == b"ftyp"
    assert fal.log == []
    first, second = (item[2] for item in fake.accepted)
    assert "WanImageToVideo" in classes(second) and "WanImageToVideo" not in classes(first)
    (load,) = [n for n in second.values() if n["class_type"] == "LoadImage"]
    assert fake.files[("input", "", load["inputs"]["image"])] == local_store.get_bytes(image_key)
    assert result.seconds >= 0 and result.video_seconds > 0


def test_local_video_failure_falls_back_to_fal(
    fake: FakeComfyUI,
    client: ComfyClient,
    local_store: ObjectStore,
    fal: FalDouble,
    fal_settings: FalSettings,
    make_jobs: JobsFactory,
) -> None:
    fake.devices = [gpu(48)]
    fake.fail_class = "WanImageToVideo"
    fake.fail_message = "CUDA out of memory. Tried to allocate 2.00 GiB"
    fake.fail_exception_type = "torch.OutOfMemoryError"
    report = run_batch(
        video_job(make_jobs),
        client=client,
        store=local_store,
        batch_id="v",
        options=BatchOptions(video=VideoSettings(fal_settings=fal_settings)),
    )
    result = report.results[0]
    assert result.status == "ok", result.error
    assert result.video_path == "fal"
    assert len(fake.accepted) == 2  # the local attempt did run
    assert len(fal.records) == 1
    assert local_store.get_bytes(result.outputs[-1]) == MP4_BYTES


@pytest.mark.parametrize("devices", [[gpu(8)], None], ids=["8gb-gpu", "cpu-only"])
def test_too_little_vram_goes_to_fal(
    fake: FakeComfyUI,
    client: ComfyClient,
    local_store: ObjectStore,
    fal: FalDouble,
    fal_settings: FalSettings,
    make_jobs: JobsFactory,
    devices: list[dict[str, Any]] | None,
) -> None:
    if devices is not None:
        fake.devices = devices
    report = run_batch(
        video_job(make_jobs, video="svd_i2v"),
        client=client,
        store=local_store,
        batch_id="v",
        options=BatchOptions(video=VideoSettings(fal_settings=fal_settings)),
    )
    result = report.results[0]
    assert result.status == "ok" and result.video_path == "fal"
    assert [r.model_id for r in fal.records.values()] == ["fal-ai/stable-video"]
    assert len(fake.accepted) == 1


def test_catalog_vram_need_decides(
    fake: FakeComfyUI,
    client: ComfyClient,
    local_store: ObjectStore,
    fal: FalDouble,
    fal_settings: FalSettings,
    make_jobs: JobsFactory,
) -> None:
    fake.devices = [gpu(24)]
    report = run_batch(
        video_job(make_jobs),
        client=client,
        store=local_store,
        batch_id="v",
        catalog_vram={"wan2.1_i2v_480p_14B_fp8_scaled.safetensors": 40.0},
        options=BatchOptions(video=VideoSettings(fal_settings=fal_settings)),
    )
    assert report.results[0].video_path == "fal"


def test_no_fal_and_no_local_model_fails_clearly(
    fake: FakeComfyUI, client: ComfyClient, local_store: ObjectStore, make_jobs: JobsFactory
) -> None:
    fake.models["diffusion_models"] = []
    report = run_batch(
        video_job(make_jobs),
        client=client,
        store=local_store,
        batch_id="v",
        options=BatchOptions(video=VideoSettings(fal=False)),
    )
    result = report.results[0]
    assert result.status == "failed" and result.attempt == 1
    assert "diffusion_models/wan2.1_i2v_480p_14B_fp8_scaled.safetensors" in result.error
    assert "--fal-fallback" in result.error


def test_fal_rejection_fails_the_job(
    fake: FakeComfyUI,
    client: ComfyClient,
    local_store: ObjectStore,
    fal: FalDouble,
    fal_settings: FalSettings,
    make_jobs: JobsFactory,
) -> None:
    fake.models["diffusion_models"] = []
    detail = {"loc": ["body", "prompt"], "msg": "Prompt flagged", "type": "content_policy"}
    fal.apps["fal-ai/wan-i2v"] = FalAppBehaviour(model_error=(422, {"detail": [detail]}))
    report = run_batch(
        video_job(make_jobs),
        client=client,
        store=local_store,
        batch_id="v",
        options=BatchOptions(video=VideoSettings(fal_settings=fal_settings), retries=2),
    )
    result = report.results[0]
    assert result.status == "failed" and result.attempt == 1
    assert "prompt: Prompt flagged" in result.error and "on fal.ai" in result.error
    assert len(fal.records) == 1  # a 422 is not retried


def test_fal_overload_is_retried(
    fake: FakeComfyUI,
    client: ComfyClient,
    local_store: ObjectStore,
    fal: FalDouble,
    make_jobs: JobsFactory,
) -> None:
    fake.models["diffusion_models"] = []
    fal.submit_failures.extend([503, 503])
    settings = FalSettings(key="fal-test-key-0123:secret-abcdef", base_url=fal.url,
                           poll_interval_s=0.0, backoff_s=0.0, max_retries=1)  # fmt: skip
    report = run_batch(
        video_job(make_jobs),
        client=client,
        store=local_store,
        batch_id="v",
        options=BatchOptions(
            video=VideoSettings(fal_settings=settings), retries=2, retry_backoff_s=0.01
        ),
    )
    result = report.results[0]
    assert result.status == "ok" and result.video_path == "fal", result.error
    assert [m for m, _, _ in fal.log].count("POST") == 3
