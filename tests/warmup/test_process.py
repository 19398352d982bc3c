"""ComfyUI started and found by the warm-up: the port a start command uses, what VRAM a
device has, and the offline environment a started command sees."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from comfyfleet.comfy.process import OFFLINE_ENV, device_facts, url_for_command
from comfyfleet.errors import ConfigError
from comfyfleet.warmup.driver import WarmupOptions, WarmupResult, warm_up
from tests.doubles.comfyui import RECORDED_DEVICE, RECORDED_SYSTEM
from tests.support.comfyui_launcher import DiskComfyUI

from .mirrored import catalog, facts, mirror

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("command", "url"),
    [
        ("python main.py", "http://127.0.0.1:8188"),
        ("python main.py --port 8190", "http://127.0.0.1:8190"),
        ("python main.py --port=9001 --cpu", "http://127.0.0.1:9001"),
        ("python main.py --listen --port 9002", "http://127.0.0.1:9002"),
        ("python main.py --listen 0.0.0.0 --port 9003", "http://127.0.0.1:9003"),
        ("python main.py --listen 10.1.2.3,::1 --port 9004", "http://10.1.2.3:9004"),
        ("python main.py --listen=::1", "http://[::1]:8188"),
        ("cd /x && exec python main.py --listen 127.0.0.1 --port 8189 --cpu",
         "http://127.0.0.1:8189"),
    ],
)  # fmt: skip
def test_url_for_command_reads_listen_and_port(command: str, url: str) -> None:
    assert url_for_command(command) == url


def test_a_port_that_is_no_number_is_refused() -> None:
    with pytest.raises(ConfigError, match="--port 'abc'"):
        url_for_command("python main.py --port abc")


def test_a_cpu_device_reports_no_vram() -> None:
    recorded = {"system": dict(RECORDED_SYSTEM), "devices": [dict(RECORDED_DEVICE)]}
    cpu = device_facts(recorded)
    assert (cpu.device_type, cpu.vram_total, cpu.version) == ("cpu", None, "0.3.64")
    cuda = {
        "system": dict(RECORDED_SYSTEM),
        "devices": [{**RECORDED_DEVICE, "name": "cuda:0 NVIDIA H200", "type": "cuda",
                     "index": 0, "vram_total": 150_000_000_000}],
    }  # fmt: skip
    gpu = device_facts(cuda)
    assert (gpu.device_type, gpu.vram_total) == ("cuda", 150_000_000_000)
    assert device_facts({"devices": [{**RECORDED_DEVICE, "type": "mps"}]}).vram_total is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(result: WarmupResult) -> None:
    if result.comfy is not None and result.comfy.pid:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(result.comfy.pid, signal.SIGTERM)


def _root(tmp_path: Path) -> Path:
    root = tmp_path / "ComfyUI"
    root.mkdir()
    return root


def test_warmup_on_a_cpu_comfyui_records_no_vram(local_store: Any, tmp_path: Path) -> None:
    mirror(local_store)
    root = _root(tmp_path)
    options = dict(comfy_root=root, profile="minimal", boot_timeout_s=20, history=False)
    with DiskComfyUI(root) as fake:  # /system_stats as recorded from a CPU ComfyUI
        result = warm_up(
            WarmupOptions(**options, comfy_url=fake.url),
            store=local_store,
            catalog=catalog(tmp_path),
            facts=facts(root, 12),
        )
        assert result.ok, result.error
        assert result.comfy is not None
        assert (result.comfy.device_type, result.comfy.vram_total) == ("cpu", None)
        fake.devices = [{**RECORDED_DEVICE, "type": "cuda", "vram_total": 24 * 2**30}]
        again = warm_up(
            WarmupOptions(**options, comfy_url=fake.url),
            store=local_store,
            catalog=catalog(tmp_path),
            facts=facts(root, 12),
        )
    assert again.comfy is not None and again.comfy.vram_total == 24 * 2**30


def test_start_comfy_without_comfy_url_polls_the_port_the_command_uses(
    local_store: Any, tmp_path: Path
) -> None:
    mirror(local_store)
    root = _root(tmp_path)
    port = _free_port()
    env_dump = tmp_path / "env.txt"
    command = (
        f"env > {env_dump}; PYTHONPATH={REPO} exec {sys.executable} "
        f"-m tests.support.comfyui_launcher --comfy-root . --port {port}"
    )
    result = warm_up(
        WarmupOptions(
            comfy_root=root,
            profile="minimal",
            start_comfy=command,
            boot_timeout_s=20,
            history=False,
        ),
        store=local_store,
        catalog=catalog(tmp_path),
        facts=facts(root, 12),
    )
    try:
        assert result.ok, result.error
        assert result.comfy is not None and result.comfy.url == f"http://127.0.0.1:{port}"
        # Models come from the mirror only: the started ComfyUI runs Hugging Face offline.
        seen = dict(line.split("=", 1) for line in env_dump.read_text().splitlines() if "=" in line)
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE",
                     "DIFFUSERS_OFFLINE"):  # fmt: skip
            assert seen.get(name) == "1", name
        assert {k: seen.get(k) for k in OFFLINE_ENV} == dict(OFFLINE_ENV)
        assert seen.get("PATH")  # the rest of the environment is kept
    finally:
        _stop(result)
