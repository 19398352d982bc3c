"""ComfyClient against FakeComfyUI: queue + wait, completion, errors, drops, concurrency."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from comfyfleet.comfy import ComfyClient, OutputFile, ProgressEvent
from comfyfleet.comfy.client import parse_outputs, validation_error
from comfyfleet.errors import (
    ComfyConnectionError,
    ComfyError,
    ComfyExecutionError,
    ComfyInterrupted,
    ComfyPartialPrompt,
    ComfyTimeout,
    ComfyValidationError,
    is_transient,
)
from tests.comfy.graphs import smoke, txt2img
from tests.doubles.comfyui import FakeComfyUI, png_bytes


def test_run_follows_websocket_to_node_null_and_reads_history(
    fake: FakeComfyUI, client: ComfyClient
) -> None:
    image = client.upload_image(png_bytes()).ref
    events: list[ProgressEvent] = []
    result = client.run(txt2img(seed=1), timeout=10, on_progress=events.append)
    assert [(o.node_id, o.kind, o.type) for o in result.outputs] == [("9", "images", "output")]
    assert client.fetch_output(result.outputs[0]).startswith(b"\x89PNG")
    kinds = [e.type for e in events]
    assert kinds[0] == "execution_start" and kinds[-1] == "execution_success"
    progress = [e for e in events if e.type == "progress"]
    assert progress and progress[-1].value == progress[-1].max == 20
    assert progress[-1].node == "3" and progress[-1].fraction == 1.0
    # The socket reported it; history was only read once, at the end (no polling).
    history_reads = [p for m, p in fake.requests if p.startswith("/history/")]
    assert history_reads == [f"/history/{result.prompt_id}"]
    assert result.cached_nodes == []
    smoke_result = client.run(smoke(image), timeout=10)
    assert smoke_result.outputs[0].subfolder == "smoke"


def test_finished_only_at_executing_null() -> None:
    from comfyfleet.comfy.tracking import PromptTrack

    track = PromptTrack()
    assert track.absorb("execution_success", {"prompt_id": "p", "timestamp": 5}) is False
    assert track.absorb("executing", {"node": "3", "prompt_id": "p"}) is False
    assert track.absorb("executing", {"node": "3"}) is False  # reconnect notice, no id
    assert track.absorb("executing", {"node": None, "prompt_id": "p"}) is True
    assert track.success and track.end_ms == 5


def test_fully_cached_prompt_returns_previous_files(client: ComfyClient) -> None:
    first = client.run(txt2img(seed=7), timeout=10)
    again = client.run(txt2img(seed=7), timeout=10)
    assert sorted(again.cached_nodes) == ["3", "4", "5", "6", "7", "8", "9"]
    assert [o.filename for o in again.outputs] == [o.filename for o in first.outputs]
    assert again.seconds < 0.5


def test_execution_seconds_come_from_comfyui_timestamps(
    fake: FakeComfyUI, client: ComfyClient
) -> None:
    fake.execution_time = 0.3
    result = client.run(txt2img(seed=2), timeout=10)
    assert 0.25 <= result.seconds < 1.5


def test_dropped_socket_still_completes_via_history(fake: FakeComfyUI) -> None:
    fake.execution_time = 0.4
    fake.drop_ws_after = 1  # every connection dies after its first status message
    with ComfyClient(fake.url, poll_interval=0.05, reconnect_timeout=5) as client:
        result = client.run(txt2img(seed=3), timeout=10)
    assert result.outputs[0].filename.startswith("t2i_")
    assert fake._drops_scheduled >= 2  # it reconnected at least once
    # No prompt event ever reached the client: only /history polling could finish it.
    polls = [p for _, p in fake.requests if p == f"/history/{result.prompt_id}"]
    assert len(polls) >= 2


def test_wait_on_a_prompt_queued_elsewhere_polls_history(
    fake: FakeComfyUI, client: ComfyClient
) -> None:
    fake.execution_time = 0.2
    answer = httpx.post(fake.url + "/prompt", json={"prompt": txt2img(seed=4)}).json()
    result = client.wait(answer["prompt_id"], timeout=10)
    assert result.outputs and result.prompt_id == answer["prompt_id"]


def test_validation_error_lists_node_class_input_message(
    fake: FakeComfyUI, client: ComfyClient
) -> None:
    with pytest.raises(ComfyValidationError) as caught:
        client.submit(txt2img(ckpt="missing.safetensors"))
    error = caught.value
    assert [(e.node_id, e.class_type, e.input_name, e.message) for e in error.node_errors] == [
        ("4", "CheckpointLoaderSimple", "ckpt_name", "Value not in list")
    ]
    assert "missing.safetensors" in error.node_errors[0].details
    assert "models/checkpoints" in (error.hint or "")
    assert not is_transient(error)

    broken = txt2img()
    del broken["5"]["inputs"]["width"]
    broken["3"]["inputs"]["steps"] = 0
    with pytest.raises(ComfyValidationError) as caught:
        client.submit(broken)
    found = {(e.node_id, e.input_name, e.message) for e in caught.value.node_errors}
    assert found == {
        ("5", "width", "Required input is missing"),
        ("3", "steps", "Value 0 smaller than min of 1"),
    }

    unknown = {**txt2img(), "12": {"class_type": "NoSuchNode", "inputs": {}}}
    with pytest.raises(ComfyValidationError) as caught:
        client.submit(unknown)
    assert [(e.node_id, e.class_type) for e in caught.value.node_errors] == [("12", "NoSuchNode")]
    assert "does not exist" in str(caught.value)


def test_partially_valid_prompt_is_refused_and_removed(
    fake: FakeComfyUI, client: ComfyClient
) -> None:
    fake.execution_time = 1.0
    client.submit(txt2img(seed=50))  # occupies the worker
    partial = {**txt2img(seed=51), "20": {"class_type": "PreviewImage", "inputs": {}}}
    with pytest.raises(ComfyValidationError) as caught:
        client.submit(partial)
    assert "dropped the outputs" in str(caught.value)
    assert [(e.node_id, e.input_name) for e in caught.value.node_errors] == [("20", "images")]
    assert isinstance(caught.value, ComfyPartialPrompt)
    assert caught.value.prompt_id == fake.accepted[-1][1]  # the id it was queued under
    pending = client.queue()["queue_pending"]
    assert pending == []  # the half-valid prompt did not stay queued
    client.interrupt()


def test_validation_error_parses_both_shapes() -> None:
    prompt_level = validation_error(
        {
            "error": {
                "type": "invalid_prompt",
                "message": "Cannot execute because node VHS_VideoCombine does not exist.",
                "details": "Node ID '#60'",
                "extra_info": {},
            },
            "node_errors": {},
        }
    )
    assert [(e.node_id, e.class_type) for e in prompt_level.node_errors] == [
        ("60", "VHS_VideoCombine")
    ]
    no_prompt = validation_error(
        {"error": {"type": "no_prompt", "message": "No prompt provided", "details": "x"}}
    )
    assert no_prompt.node_errors == [] and "No prompt provided" in str(no_prompt)


def test_execution_error_names_node_type_and_exception(
    fake: FakeComfyUI, client: ComfyClient
) -> None:
    fake.fail_class = "CheckpointLoaderSimple"
    with pytest.raises(ComfyExecutionError) as caught:
        client.run(txt2img(seed=5), timeout=10)
    error = caught.value
    assert (error.node_id, error.node_type) == ("4", "CheckpointLoaderSimple")
    assert error.exception_type == "safetensors._safetensors_rust.SafetensorError"
    assert error.exception_message == "Error while deserializing header: header too small\n"
    assert "sha256" in (error.hint or "")


def test_interrupt(fake: FakeComfyUI, client: ComfyClient) -> None:
    fake.execution_time = 3.0
    prompt_id = client.submit(txt2img(seed=6))
    time.sleep(0.2)
    client.interrupt(prompt_id)
    started = time.monotonic()
    with pytest.raises(ComfyInterrupted) as caught:
        client.wait(prompt_id, timeout=10)
    assert time.monotonic() - started < 2.0
    assert "node 3 (KSampler)" in str(caught.value)
    assert fake.interrupt_calls[-1] == {"prompt_id": prompt_id}


def test_concurrent_waits_share_one_socket(fake: FakeComfyUI, client: ComfyClient) -> None:
    fake.execution_time = 0.05
    ids = [client.submit(txt2img(seed=100 + i)) for i in range(8)]
    results: dict[str, str] = {}
    errors: list[BaseException] = []

    def wait(prompt_id: str) -> None:
        try:
            results[prompt_id] = client.wait(prompt_id, timeout=20).outputs[0].filename
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=wait, args=(i,)) for i in reversed(ids)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    assert sorted(results) == sorted(ids)
    assert len(set(results.values())) == 8  # each its own file
    assert sum(1 for _, p in fake.requests if p == "/ws") == 1
    assert max(fake.idle_gaps()) < 0.5  # the queue was full the whole time


def test_timeout(fake: FakeComfyUI, client: ComfyClient) -> None:
    fake.execution_time = 2.0
    prompt_id = client.submit(txt2img(seed=8))
    with pytest.raises(ComfyTimeout) as caught:
        client.wait(prompt_id, timeout=0.3)
    assert is_transient(caught.value)
    client.interrupt()


def test_comfyui_dying_midway_is_a_connection_error(fake: FakeComfyUI) -> None:
    fake.execution_time = 0.1
    fake.die_after_prompts = 1
    with ComfyClient(fake.url, poll_interval=0.05, reconnect_timeout=0.5) as client:
        first = client.submit(txt2img(seed=9))
        second = client.submit(txt2img(seed=10))
        assert client.wait(first, timeout=10).outputs
        with pytest.raises(ComfyConnectionError) as caught:
            client.wait(second, timeout=10)
    assert is_transient(caught.value)


def test_prompt_lost_by_a_restart_is_reported(fake: FakeComfyUI) -> None:
    fake.execution_time = 1.0
    with ComfyClient(fake.url, poll_interval=0.05, reconnect_timeout=5) as client:
        client.submit(txt2img(seed=11))
        queued = client.submit(txt2img(seed=12))
        fake.restart()  # same port, empty queue and history
        with pytest.raises(ComfyConnectionError) as caught:
            client.wait(queued, timeout=10)
    assert "neither queued nor in ComfyUI's history" in str(caught.value)


def test_unreachable_comfyui() -> None:
    with FakeComfyUI() as server:
        url = server.url
    with ComfyClient(url, timeout=2) as client:
        with pytest.raises(ComfyConnectionError) as caught:
            client.queue_remaining()
        assert "cannot reach ComfyUI" in str(caught.value)
        with pytest.raises(ComfyTimeout):
            client.wait_ready(timeout=0.3, interval=0.1)


def test_wait_ready_returns_stats_once_up(fake: FakeComfyUI) -> None:
    port = fake.port
    fake.stop()

    def start_later() -> None:
        time.sleep(0.3)
        fake.start()

    thread = threading.Thread(target=start_later)
    thread.start()
    with ComfyClient(f"http://127.0.0.1:{port}") as client:
        stats = client.wait_ready(timeout=10, interval=0.05)
    thread.join()
    assert stats["devices"][0]["vram_total"] > 0


def test_check_workflow_catches_missing_node_type_and_model_early(
    fake: FakeComfyUI, client: ComfyClient
) -> None:
    client.check_workflow(txt2img())
    workflow = txt2img(ckpt="sdxl-missing.safetensors")
    workflow["60"] = {"class_type": "VHS_VideoCombine_Missing", "inputs": {"images": ["8", 0]}}
    workflow["3"]["inputs"]["sampler_name"] = "euler_typo"
    workflow["8"]["inputs"]["samples"] = ["77", 0]
    del workflow["5"]["inputs"]["height"]
    with pytest.raises(ComfyValidationError) as caught:
        client.check_workflow(workflow)
    found = {(e.node_id, e.input_name): e.message for e in caught.value.node_errors}
    assert found[("60", "")] == "node type is not installed in this ComfyUI"
    assert "model file 'sdxl-missing.safetensors'" in found[("4", "ckpt_name")]
    assert "not a valid choice" in found[("3", "sampler_name")]
    assert "not in the workflow" in found[("8", "samples")]
    assert found[("5", "height")] == "required input is missing"
    assert "custom nodes" in (caught.value.hint or "")
    assert not any(p == "/prompt" for m, p in fake.requests if m == "POST")


def test_models_list_refresh_and_legacy_names(fake: FakeComfyUI, client: ComfyClient) -> None:
    assert "sd_xl_base_1.0.safetensors" in client.list_models("checkpoints")
    assert client.list_models("unet") == client.list_models("diffusion_models")
    with pytest.raises(ComfyError):
        client.list_models("no_such_folder")
    missing = txt2img(ckpt="late.safetensors")
    with pytest.raises(ComfyValidationError):
        client.check_workflow(missing)

    def add_later() -> None:
        time.sleep(0.2)
        fake.models["checkpoints"].append("late.safetensors")

    thread = threading.Thread(target=add_later)
    thread.start()
    client.refresh_models(expect={"checkpoints": ["late.safetensors"]}, timeout=5)
    thread.join()
    client.check_workflow(missing)  # the cached node list was refreshed
    with pytest.raises(ComfyError, match="does not list loras/never.safetensors"):
        client.refresh_models(expect={"loras": ["never.safetensors"]}, timeout=0.3)


def test_view_errors_and_download(fake: FakeComfyUI, client: ComfyClient, tmp_path: Path) -> None:
    result = client.run(txt2img(seed=13), timeout=10)
    target = tmp_path / "out" / "a.png"
    size = client.download_output(result.outputs[0], target)
    assert target.read_bytes() == client.fetch_output(result.outputs[0])
    assert size == target.stat().st_size and not target.with_name("a.png.part").exists()
    gone = OutputFile("9", "gone_00001_.png", "", "output", "images")
    with pytest.raises(ComfyError, match="HTTP 404"):
        client.fetch_output(gone)
    with pytest.raises(ComfyError, match="HTTP 404"):
        client.download_output(gone, tmp_path / "gone.png")
    assert not (tmp_path / "gone.png").exists()
    with pytest.raises(ComfyError, match="HTTP 400"):
        client.fetch_output(OutputFile("9", "../x.png", "", "output", "images"))


def test_queue_controls(fake: FakeComfyUI, client: ComfyClient) -> None:
    fake.execution_time = 1.0
    running = client.submit(txt2img(seed=20))
    pending = client.submit(txt2img(seed=21))
    assert client.queue_remaining() == 2
    client.delete_queued([pending])
    assert client.queue_remaining() == 1
    client.free(unload_models=True, free_memory=False)
    assert fake.free_calls == [{"unload_models": True, "free_memory": False}]
    client.interrupt()
    with pytest.raises(ComfyInterrupted):
        client.wait(running, timeout=10)


def test_parse_outputs_kinds() -> None:
    outputs = {
        "9": {"images": [{"filename": "a_00001_.png", "subfolder": "", "type": "output"}]},
        "6": {
            "images": [{"filename": "w_00001_.webp", "subfolder": "anim", "type": "output"}],
            "animated": [True],
        },
        "60": {
            "gifs": [
                {
                    "filename": "v_00001.mp4",
                    "subfolder": "",
                    "type": "output",
                    "format": "video/h264-mp4",
                    "frame_rate": 8.0,
                    "workflow": "v_00001.png",
                    "fullpath": "/x/v_00001.mp4",
                }
            ]
        },
        "4": {"text": ["not a file"]},
    }
    files = parse_outputs(outputs)
    assert [(f.node_id, f.kind, f.is_video) for f in files] == [
        ("9", "images", False),
        ("6", "animated", True),
        ("60", "gifs", True),
    ]
    assert files[2].format == "video/h264-mp4" and files[1].ref == "anim/w_00001_.webp"


def test_check_workflow_refuses_numbers_comfyui_would_refuse(client: ComfyClient) -> None:
    """Issue 9 item 6: the preflight covers INT/FLOAT conversion and min/max, so a prompt
    never reaches ComfyUI half valid for a reason the check could have seen."""
    graph = txt2img(seed=1)
    graph["5"]["inputs"]["width"] = 99999
    graph["3"]["inputs"]["steps"] = "many"
    with pytest.raises(ComfyValidationError) as caught:
        client.check_workflow(graph)
    found = {(e.node_id, e.input_name): e.message for e in caught.value.node_errors}
    assert found[("5", "width")] == "Value 99999 bigger than max of 16384"
    assert found[("3", "steps")].startswith("Failed to convert an input value to a INT value")
