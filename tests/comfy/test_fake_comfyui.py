"""The ComfyUI test double answers like the recorded real server (comfyui-recorded.md)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.comfy.graphs import smoke, txt2img
from tests.doubles.comfyui import FakeComfyUI, png_bytes

# Verbatim 400 bodies from comfyui-recorded.md §5.
RECORDED_400 = {
    "no_prompt_key": '{"error": {"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided", "extra_info": {}}, "node_errors": {}}',  # noqa: E501
    "missing_class_type": '{"error": {"type": "invalid_prompt", "message": "Cannot execute because a node is missing the class_type property.", "details": "Node ID \'#1\'", "extra_info": {}}, "node_errors": {}}',  # noqa: E501
    "unknown_class_type": '{"error": {"type": "invalid_prompt", "message": "Cannot execute because node NoSuchNode does not exist.", "details": "Node ID \'#3\'", "extra_info": {}}, "node_errors": {}}',  # noqa: E501
    "no_outputs": '{"error": {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": "", "extra_info": {}}, "node_errors": {}}',  # noqa: E501
    "missing_required_input": '{"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": "", "extra_info": {}}, "node_errors": {"2": {"errors": [{"type": "required_input_missing", "message": "Required input is missing", "details": "width", "extra_info": {"input_name": "width"}}], "dependent_outputs": ["3"], "class_type": "ImageScale"}}}',  # noqa: E501
    "unknown_checkpoint": '{"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": "", "extra_info": {}}, "node_errors": {"4": {"errors": [{"type": "value_not_in_list", "message": "Value not in list", "details": "ckpt_name: \'sd_xl_base_1.0.safetensors\' not in []", "extra_info": {"input_name": "ckpt_name", "input_config": [[], {"tooltip": "The name of the checkpoint (model) to load."}], "received_value": "sd_xl_base_1.0.safetensors"}}], "dependent_outputs": ["9"], "class_type": "CheckpointLoaderSimple"}}}',  # noqa: E501
    "missing_input_image_file": '{"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": "", "extra_info": {}}, "node_errors": {"1": {"errors": [{"type": "custom_validation_failed", "message": "Custom validation failed for node", "details": "image - Invalid image file: does-not-exist.png", "extra_info": {"input_name": "image"}}], "dependent_outputs": ["2"], "class_type": "LoadImage"}}}',  # noqa: E501
    "value_too_big": '{"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": "", "extra_info": {}}, "node_errors": {"2": {"errors": [{"type": "value_bigger_than_max", "message": "Value 99999 bigger than max of 16384", "details": "width", "extra_info": {"input_name": "width", "input_config": ["INT", {"default": 512, "min": 0, "max": 16384, "step": 1}], "received_value": 99999}}], "dependent_outputs": ["3"], "class_type": "ImageScale"}}}',  # noqa: E501
    "bad_int": '{"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": "", "extra_info": {}}, "node_errors": {"2": {"errors": [{"type": "invalid_input_type", "message": "Failed to convert an input value to a INT value", "details": "width, abc, invalid literal for int() with base 10: \'abc\'", "extra_info": {"input_name": "width", "input_config": ["INT", {"default": 512, "min": 0, "max": 16384, "step": 1}], "received_value": "abc", "exception_message": "invalid literal for int() with base 10: \'abc\'"}}], "dependent_outputs": ["3"], "class_type": "ImageScale"}}}',  # noqa: E501
    "type_mismatch": '{"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": "Return type mismatch between linked nodes: images, received_type(MASK) mismatch input_type(IMAGE)", "extra_info": {}}, "node_errors": {"2": {"errors": [{"type": "return_type_mismatch", "message": "Return type mismatch between linked nodes", "details": "images, received_type(MASK) mismatch input_type(IMAGE)", "extra_info": {"input_name": "images", "input_config": ["IMAGE", {"tooltip": "The images to save."}], "received_type": "MASK", "linked_node": ["1", 1]}}], "dependent_outputs": ["2"], "class_type": "SaveImage"}}}',  # noqa: E501
    "bad_link_len": '{"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": "Bad linked input, must be a length-2 list of [node_id, slot_index]: images", "extra_info": {}}, "node_errors": {"2": {"errors": [{"type": "bad_linked_input", "message": "Bad linked input, must be a length-2 list of [node_id, slot_index]", "details": "images", "extra_info": {"input_name": "images", "input_config": ["IMAGE", {"tooltip": "The images to save."}], "received_value": ["1"]}}], "dependent_outputs": ["2"], "class_type": "SaveImage"}}}',  # noqa: E501
    "prompt_not_dict": '{"error": {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": "", "extra_info": {}}, "node_errors": {}}',  # noqa: E501
}
LINK_TO_MISSING_NODE = '{"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": "Exception when validating node: \'99\'", "extra_info": {}}, "node_errors": {"2": {"errors": [{"type": "exception_during_validation", "message": "Exception when validating node", "details": "\'99\'", "extra_info": {"exception_type": "KeyError", "traceback": ["<2 traceback lines>"]}}], "dependent_outputs": ["2"], "class_type": "SaveImage"}}}'  # noqa: E501


def good_graph() -> dict[str, Any]:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "err-src.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "e"}},
    }


def scale_graph(**scale: Any) -> dict[str, Any]:
    inputs = {
        "image": ["1", 0],
        "upscale_method": "nearest-exact",
        "height": 48,
        "crop": "disabled",
    }
    inputs.update(scale)
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "err-src.png"}},
        "2": {"class_type": "ImageScale", "inputs": inputs},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "e"}},
    }


def with_save(images: Any) -> dict[str, Any]:
    graph = good_graph()
    graph["2"]["inputs"]["images"] = images
    return graph


CASES: dict[str, Any] = {
    "no_prompt_key": {"client_id": "x"},
    "missing_class_type": {"prompt": {"1": {"inputs": {}}}},
    "unknown_class_type": {
        "prompt": {**good_graph(), "3": {"class_type": "NoSuchNode", "inputs": {}}}
    },
    "no_outputs": {"prompt": {"1": good_graph()["1"]}},
    "missing_required_input": {"prompt": scale_graph()},
    "unknown_checkpoint": {"prompt": txt2img()},
    "missing_input_image_file": {
        "prompt": {
            "1": {"class_type": "LoadImage", "inputs": {"image": "does-not-exist.png"}},
            "2": {
                "class_type": "SaveImage",
                "inputs": {"images": ["1", 0], "filename_prefix": "e"},
            },
        }
    },
    "value_too_big": {"prompt": scale_graph(width=99999)},
    "bad_int": {"prompt": scale_graph(width="abc")},
    "type_mismatch": {"prompt": with_save(["1", 1])},
    "bad_link_len": {"prompt": with_save(["1"])},
    "prompt_not_dict": {"prompt": []},
}


@pytest.fixture
def bare() -> Iterator[FakeComfyUI]:
    """No model files at all, as in the recording; err-src.png uploaded."""
    with FakeComfyUI(models={}) as server:
        server.add_input_image("err-src.png", png_bytes())
        yield server


# One pooled client: creating an httpx.Client per request costs ~50 ms (SSL context).
HTTP = httpx.Client(timeout=5)


def post(server: FakeComfyUI, path: str, **kwargs: Any) -> httpx.Response:
    return HTTP.post(server.url + path, **kwargs)


def get(server: FakeComfyUI, path: str, **kwargs: Any) -> httpx.Response:
    return HTTP.get(server.url + path, **kwargs)


@pytest.mark.parametrize("case", sorted(CASES))
def test_prompt_400_bodies_are_verbatim(bare: FakeComfyUI, case: str) -> None:
    response = post(bare, "/prompt", json=CASES[case])
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.json() == json.loads(RECORDED_400[case])


def test_link_to_missing_node_matches_except_traceback(bare: FakeComfyUI) -> None:
    answer = post(bare, "/prompt", json={"prompt": with_save(["99", 0])}).json()
    expected = json.loads(LINK_TO_MISSING_NODE)
    for body in (answer, expected):
        body["node_errors"]["2"]["errors"][0]["extra_info"]["traceback"] = []
    assert answer == expected


def test_partially_valid_prompt_is_accepted_with_node_errors(bare: FakeComfyUI) -> None:
    prompt = {**good_graph(), "3": {"class_type": "SaveImage", "inputs": {"filename_prefix": "e"}}}
    response = post(bare, "/prompt", json={"prompt": prompt})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"prompt_id", "number", "node_errors"}
    assert body["node_errors"] == {
        "3": {
            "errors": [
                {
                    "type": "required_input_missing",
                    "message": "Required input is missing",
                    "details": "images",
                    "extra_info": {"input_name": "images"},
                }
            ],
            "dependent_outputs": ["3"],
            "class_type": "SaveImage",
        }
    }
    assert bare.wait_idle()
    entry = get(bare, f"/history/{body['prompt_id']}").json()[body["prompt_id"]]
    assert entry["prompt"][4] == ["2"]  # the invalid output was dropped
    assert list(entry["outputs"]) == ["2"]


def test_invalid_json_body_is_a_text_500(bare: FakeComfyUI) -> None:
    response = post(bare, "/prompt", content=b"{not json")
    assert response.status_code == 500
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text == "500 Internal Server Error\n\nServer got itself in trouble"


def test_number_counts_every_post_and_honours_front_number_and_id(bare: FakeComfyUI) -> None:
    bare.execution_time = 3.0  # A runs while the others queue up

    def prompt(tag: str) -> dict[str, Any]:
        return {"prompt": smoke("err-src.png", tag)}  # distinct outputs: nothing cached

    answers = [post(bare, "/prompt", json=prompt(f"a{i}")).json() for i in range(2)]
    post(bare, "/prompt", json={"client_id": "x"})  # failing POSTs count too
    front = post(bare, "/prompt", json={**prompt("c"), "front": True}).json()
    mine = post(bare, "/prompt", json={**prompt("d"), "prompt_id": "my-own-id-123"}).json()
    half = post(bare, "/prompt", json={**prompt("e"), "number": 0.5}).json()
    assert [a["number"] for a in answers] == [0, 1]
    assert front["number"] == -3
    assert mine == {"prompt_id": "my-own-id-123", "number": 4, "node_errors": {}}
    assert half["number"] == 0.5
    queue = get(bare, "/queue").json()
    assert [item[1] for item in queue["queue_running"]] == [answers[0]["prompt_id"]]
    assert all(len(item) == 5 for item in queue["queue_pending"])
    post(bare, "/queue", json={"delete": ["my-own-id-123"]})
    bare.execution_time = 0.01
    post(bare, "/interrupt", json={})
    assert bare.wait_idle(10)
    order = [run.prompt_id for run in bare.timeline]
    assert order == [
        answers[0]["prompt_id"],
        front["prompt_id"],
        half["prompt_id"],
        answers[1]["prompt_id"],
    ]


def test_system_stats_features_models_and_object_info(fake: FakeComfyUI) -> None:
    stats = get(fake, "/system_stats").json()
    assert stats["system"]["comfyui_version"] == "0.3.64"
    assert {"vram_total", "vram_free", "name", "type", "index"} <= set(stats["devices"][0])
    assert get(fake, "/api/system_stats").json() == stats
    assert get(fake, "/features").json() == {
        "supports_preview_metadata": True,
        "max_upload_size": 104857600,
    }
    assert "checkpoints" in get(fake, "/models").json()
    assert get(fake, "/models/checkpoints").json() == sorted(fake.models["checkpoints"])
    for legacy in ("unet", "clip", "nonexistent"):
        assert get(fake, f"/models/{legacy}").status_code == 404
    assert get(fake, "/object_info/Nope").json() == {}
    info = get(fake, "/object_info/CheckpointLoaderSimple").json()["CheckpointLoaderSimple"]
    assert info["input"]["required"]["ckpt_name"][0] == sorted(fake.models["checkpoints"])
    assert info["output"] == ["MODEL", "CLIP", "VAE"] and info["output_node"] is False
    webm = get(fake, "/object_info/SaveWEBM").json()["SaveWEBM"]
    assert webm["input"]["required"]["codec"] == [
        "COMBO",
        {"multiselect": False, "options": ["vp9", "av1"]},
    ]
    assert webm["input"]["hidden"] == {"prompt": ["PROMPT"], "extra_pnginfo": ["EXTRA_PNGINFO"]}
    assert (webm["display_name"], webm["experimental"]) == (None, True)
    fake.models["checkpoints"].append("new.safetensors")  # re-read per request
    assert "new.safetensors" in get(fake, "/models/checkpoints").json()


def test_origin_check_and_plain_get_ws(fake: FakeComfyUI) -> None:
    host = f"127.0.0.1:{fake.port}"
    assert get(fake, "/queue", headers={"Origin": "http://evil.example"}).status_code == 403
    assert get(fake, "/queue", headers={"Origin": f"http://{host}"}).status_code == 200
    assert get(fake, "/ws").status_code == 400


def test_uploads_collisions_dedupe_and_errors(fake: FakeComfyUI) -> None:
    a, b, c = png_bytes(rgb=(1, 2, 3)), png_bytes(rgb=(4, 5, 6)), png_bytes(rgb=(7, 8, 9))

    def up(data: bytes, **fields: str) -> httpx.Response:
        return post(fake, "/upload/image", files={"image": ("dup.png", data, "image/png")},
                    data=fields)  # fmt: skip

    names = [up(x).json()["name"] for x in (a, a, b, c, b)]
    assert names == ["dup.png", "dup.png", "dup (1).png", "dup (2).png", "dup (1).png"]
    assert up(c, overwrite="true").json()["name"] == "dup.png"
    assert fake.files[("input", "", "dup.png")] == c
    assert up(a, overwrite="false").json()["name"] == "dup (3).png"
    assert up(a, subfolder="clips/a").json() == {
        "name": "dup.png",
        "subfolder": "clips/a",
        "type": "input",
    }
    assert up(a, type="temp").json()["type"] == "temp"
    assert up(a, type="bogus").status_code == 500
    assert up(a, subfolder="../../etc").status_code == 400
    escape = post(fake, "/upload/image", files={"image": ("../escape.png", a, "image/png")})
    assert escape.status_code == 400
    assert post(fake, "/upload/image", data={"type": "input"}).status_code == 400


def test_view_rules(fake: FakeComfyUI) -> None:
    fake.add_input_image("dup.png", png_bytes())
    fake.add_input_image("sub.png", png_bytes(), subfolder="clips/a")

    def view(**params: str) -> httpx.Response:
        return get(fake, "/view", params=params)

    ok = view(filename="dup.png", type="input")
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/png"
    assert ok.headers["content-disposition"] == 'filename="dup.png"'
    assert view(filename="dup.png").status_code == 404  # type defaults to output
    assert view(filename="sub.png", subfolder="clips/a", type="input").status_code == 200
    assert view(filename="dup.png [input]").status_code == 200
    assert view(filename="nope.png", type="input").status_code == 404
    assert get(fake, "/view").status_code == 404
    assert view(filename="../x.png", type="input").status_code == 400
    assert view(filename="/etc/passwd").status_code == 400
    assert view(filename="dup.png", type="input", subfolder="../../../../etc").status_code == 403
    assert view(filename="dup.png", type="models").status_code == 400
    preview = view(filename="dup.png", type="input", preview="webp;50")
    assert preview.headers["content-type"] == "image/webp"


class Socket:
    """A raw WebSocket reader collecting text messages in a thread."""

    def __init__(self, server: FakeComfyUI, client_id: str) -> None:
        self.ws: ClientConnection = connect(f"ws://127.0.0.1:{server.port}/ws?clientId={client_id}")
        self.messages: list[dict[str, Any]] = []
        self.history_at_null: dict[str, Any] = {}
        self.server = server
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            self._read_all()

    def _read_all(self) -> None:
        for raw in self.ws:
            if isinstance(raw, str):
                message = json.loads(raw)
                data = message["data"]
                if message["type"] == "executing" and data.get("node") is None:
                    pid = data["prompt_id"]
                    self.history_at_null[pid] = get(self.server, f"/history/{pid}").json()
                self.messages.append(message)

    def wait_for_null(self, prompt_id: str, timeout: float = 5) -> None:
        deadline = time.monotonic() + timeout
        while prompt_id not in self.history_at_null:
            assert time.monotonic() < deadline, "no executing null"
            time.sleep(0.01)

    def kinds(self) -> list[str]:
        return [m["type"] for m in self.messages if m["type"] != "progress_state"]

    def close(self) -> None:
        self.ws.close()


def test_ws_order_history_and_cache(fake: FakeComfyUI) -> None:
    fake.add_input_image("smoke.png", png_bytes())
    sock = Socket(fake, "cid1")
    try:
        time.sleep(0.05)
        pid = post(fake, "/prompt", json={"prompt": smoke("smoke.png"), "client_id": "cid1"})
        prompt_id = pid.json()["prompt_id"]
        sock.wait_for_null(prompt_id)
        assert sock.messages[0]["data"]["sid"] == "cid1"
        assert sock.kinds() == [
            "status", "status", "status", "execution_start", "execution_cached",
            "executing", "executing", "executing", "executing", "executed",
            "execution_success", "status", "executing",
        ]  # fmt: skip
        assert [m["data"]["status"]["exec_info"]["queue_remaining"]
                for m in sock.messages if m["type"] == "status"] == [0, 1, 1, 0]  # fmt: skip
        entry = sock.history_at_null[prompt_id][prompt_id]  # written before executing null
        assert entry["status"]["status_str"] == "success" and entry["status"]["completed"]
        assert [m[0] for m in entry["status"]["messages"]] == [
            "execution_start",
            "execution_cached",
            "execution_success",
        ]
        assert entry["outputs"]["4"]["images"][0] == {
            "filename": "out_00001_.png",
            "subfolder": "smoke",
            "type": "output",
        }
        assert entry["meta"]["4"]["real_node_id"] == "4"
        assert entry["prompt"][3] == {"client_id": "cid1"}

        sock.messages.clear()
        again = post(fake, "/prompt", json={"prompt": smoke("smoke.png"), "client_id": "cid1"})
        second = again.json()["prompt_id"]
        sock.wait_for_null(second)
        assert sock.kinds() == [
            "status", "status", "execution_start", "execution_cached", "executed",
            "execution_success", "status", "executing",
        ]  # fmt: skip
        cached = next(m for m in sock.messages if m["type"] == "execution_cached")
        assert sorted(cached["data"]["nodes"]) == ["1", "2", "3", "4"]
        executed = next(m for m in sock.messages if m["type"] == "executed")
        assert executed["data"]["output"]["images"][0]["filename"] == "out_00001_.png"
    finally:
        sock.close()


def test_history_is_empty_until_done_and_no_client_id_is_not_routed(fake: FakeComfyUI) -> None:
    fake.add_input_image("smoke.png", png_bytes())
    fake.execution_time = 0.3
    other = Socket(fake, "watcher")
    try:
        time.sleep(0.05)
        prompt_id = post(fake, "/prompt", json={"prompt": smoke("smoke.png")}).json()["prompt_id"]
        assert get(fake, f"/history/{prompt_id}").json() == {}
        assert fake.wait_idle()
        assert prompt_id in get(fake, f"/history/{prompt_id}").json()
        time.sleep(0.05)
        assert set(m["type"] for m in other.messages) == {"status", "progress_state"}
    finally:
        other.close()


def test_error_and_interrupt_transcripts(fake: FakeComfyUI) -> None:
    fake.add_input_image("smoke.png", png_bytes())
    sock = Socket(fake, "cid2")
    try:
        time.sleep(0.05)
        fake.fail_node = "2"
        first = post(fake, "/prompt", json={"prompt": smoke("smoke.png"), "client_id": "cid2"})
        prompt_id = first.json()["prompt_id"]
        sock.wait_for_null(prompt_id)
        assert sock.kinds()[-4:] == ["executing", "execution_error", "status", "executing"]
        error = next(m for m in sock.messages if m["type"] == "execution_error")["data"]
        assert set(error) == {
            "prompt_id", "node_id", "node_type", "executed", "exception_message",
            "exception_type", "traceback", "current_inputs", "current_outputs", "timestamp",
        }  # fmt: skip
        assert (error["node_id"], error["node_type"]) == ("2", "ImageInvert")
        assert error["exception_message"].endswith("\n")
        status = sock.history_at_null[prompt_id][prompt_id]["status"]
        assert (status["status_str"], status["completed"]) == ("error", False)

        fake.fail_node = None
        fake.execution_time = 2.0
        sock.messages.clear()
        slow = post(fake, "/prompt", json={"prompt": smoke("smoke.png", "x"), "client_id": "cid2"})
        slow_id = slow.json()["prompt_id"]
        time.sleep(0.2)
        assert post(fake, "/interrupt", json={"prompt_id": "not-running"}).status_code == 200
        post(fake, "/interrupt", content=b"")
        sock.wait_for_null(slow_id)
        assert sock.kinds()[-3:] == ["execution_interrupted", "status", "executing"]
        interrupted = next(m for m in sock.messages if m["type"] == "execution_interrupted")
        assert set(interrupted["data"]) == {
            "prompt_id", "node_id", "node_type", "executed", "timestamp",
        }  # fmt: skip
        assert fake.timeline[-1].ended - fake.timeline[-1].started < 1.5
    finally:
        sock.close()


def test_reconnect_gets_sid_then_executing_and_drop_knob(fake: FakeComfyUI) -> None:
    fake.add_input_image("smoke.png", png_bytes())
    fake.execution_time = 0.6
    fake.drop_ws_after = 4
    fake.drop_ws_times = 1
    sock = Socket(fake, "cid3")
    try:
        time.sleep(0.05)
        prompt_id = post(fake, "/prompt", json={"prompt": smoke("smoke.png"), "client_id": "cid3"})
        sock.thread.join(timeout=5)  # dropped after 4 messages
        assert len(sock.messages) == 4
        time.sleep(0.1)
        again = Socket(fake, "cid3")
        try:
            again.wait_for_null(prompt_id.json()["prompt_id"])
            assert again.messages[0]["data"]["sid"] == "cid3"
            # Reconnecting while its prompt runs: status with sid, then the running node.
            assert again.messages[1]["type"] == "executing"
            assert set(again.messages[1]["data"]) == {"node"}
            assert again.messages[1]["data"]["node"] in {"1", "2", "3", "4"}
        finally:
            again.close()
    finally:
        sock.close()


def test_feature_flags_and_preview_frames(fake: FakeComfyUI) -> None:
    fake.preview_frames = True
    # max_queue=None: we stop reading early; a paused reader would stall close().
    ws = connect(f"ws://127.0.0.1:{fake.port}/ws?clientId=meta", max_queue=None)
    try:
        ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
        assert json.loads(ws.recv(timeout=5))["data"]["sid"] == "meta"
        assert json.loads(ws.recv(timeout=5))["type"] == "feature_flags"
        post(fake, "/prompt", json={"prompt": txt2img(), "client_id": "meta"})
        binary = None
        while binary is None:
            message = ws.recv(timeout=5)
            if isinstance(message, bytes):
                binary = message
        assert binary[:4] == b"\x00\x00\x00\x04"
        meta_len = int.from_bytes(binary[4:8], "big")
        assert json.loads(binary[8 : 8 + meta_len])["image_type"] == "image/png"
        assert binary[8 + meta_len :].startswith(b"\x89PNG")
    finally:
        ws.close()


def test_die_after_prompts_and_restart(fake: FakeComfyUI) -> None:
    fake.die_after_prompts = 1
    fake.execution_time = 0.3
    fake.add_input_image("smoke.png", png_bytes())
    url = fake.url
    post(fake, "/prompt", json={"prompt": smoke("smoke.png")})
    post(fake, "/prompt", json={"prompt": smoke("smoke.png", "other")})
    assert fake.wait_stopped(5)
    with pytest.raises(httpx.ConnectError):
        HTTP.get(url + "/queue")
    fake.die_after_prompts = None
    fake.restart()
    assert fake.url == url
    assert get(fake, "/queue").json() == {"queue_running": [], "queue_pending": []}
    assert get(fake, "/history").json() == {}
    assert ("input", "", "smoke.png") in fake.files


def test_video_outputs_shapes(fake: FakeComfyUI) -> None:
    fake.add_input_image("src.png", png_bytes())
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "src.png"}},
        "6": {"class_type": "SaveAnimatedWEBP", "inputs": {
            "images": ["1", 0], "filename_prefix": "anim/w", "fps": 6.0, "lossless": False,
            "quality": 80, "method": "default"}},
        "8": {"class_type": "SaveWEBM", "inputs": {
            "images": ["1", 0], "filename_prefix": "anim/webm", "codec": "vp9", "fps": 6.0,
            "crf": 32.0}},
        "9": {"class_type": "VHS_VideoCombine", "inputs": {
            "images": ["1", 0], "frame_rate": 8, "loop_count": 0, "filename_prefix": "vhs",
            "format": "image/gif", "pingpong": False, "save_output": True}},
    }  # fmt: skip
    prompt_id = post(fake, "/prompt", json={"prompt": prompt}).json()["prompt_id"]
    assert fake.wait_idle()
    outputs = get(fake, f"/history/{prompt_id}").json()[prompt_id]["outputs"]
    assert outputs["6"] == {
        "images": [{"filename": "w_00001_.webp", "subfolder": "anim", "type": "output"}],
        "animated": [True],
    }
    assert outputs["8"]["images"][0]["filename"] == "webm_00001_.webm"
    gif = outputs["9"]["gifs"][0]
    assert set(gif) == {
        "filename", "subfolder", "type", "format", "frame_rate", "workflow", "fullpath",
    }  # fmt: skip
    assert (gif["filename"], gif["format"]) == ("vhs_00001.gif", "image/gif")
    data = get(fake, "/view", params={"filename": "w_00001_.webp", "subfolder": "anim"})
    assert data.headers["content-type"] == "image/webp" and data.content[8:12] == b"WEBP"
    webm = get(fake, "/view", params={"filename": "webm_00001_.webm", "subfolder": "anim"})
    assert webm.headers["content-type"] == "video/webm"
    assert webm.content.startswith(b"\x1a\x45\xdf\xa3")
    assert fake.files[("output", "", "vhs_00001.gif")].startswith(b"GIF8")
