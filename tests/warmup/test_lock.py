"""The warm-up lock and extra_model_paths.yaml."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from comfyfleet.errors import ConfigError, LockHeldError
from comfyfleet.warmup.lock import RootLock, lock_path, write_extra_model_paths


def test_second_lock_fails_naming_the_holder(tmp_path: Path) -> None:
    with RootLock(tmp_path) as first:
        assert first.held
        assert lock_path(tmp_path).read_text().startswith(f"pid {os.getpid()} since ")
        with pytest.raises(LockHeldError) as info:
            RootLock(tmp_path).acquire()
        text = str(info.value)
        assert f"held by pid {os.getpid()}" in text
        assert "--wait-lock" in text
    assert not first.held
    with RootLock(tmp_path):  # free again
        pass


def test_wait_gets_the_lock_once_released(tmp_path: Path) -> None:
    first = RootLock(tmp_path).acquire()
    threading.Timer(0.3, first.release).start()
    start = time.monotonic()
    with RootLock(tmp_path, wait_s=5, poll_s=0.02) as second:
        assert second.held
    assert 0.2 < time.monotonic() - start < 4


def test_wait_times_out(tmp_path: Path) -> None:
    with RootLock(tmp_path), pytest.raises(LockHeldError, match=r"waited 0.2 s"):
        RootLock(tmp_path, wait_s=0.2, poll_s=0.05).acquire()


def test_lock_of_a_killed_process_is_free(tmp_path: Path) -> None:
    code = (
        "import sys, time; from pathlib import Path; from comfyfleet.warmup.lock import RootLock;"
        f"RootLock(Path({str(tmp_path)!r})).acquire(); print('locked', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        with pytest.raises(LockHeldError, match=f"pid {proc.pid}"):
            RootLock(tmp_path).acquire()
    finally:
        proc.kill()
        proc.wait()
    with RootLock(tmp_path) as lock:  # the kernel dropped it with the process
        assert lock.held


def test_extra_model_paths_content(tmp_path: Path) -> None:
    comfy = tmp_path / "ComfyUI"
    models = tmp_path / "volume" / "models"
    path = write_extra_model_paths(comfy, models, folders=["loras", "checkpoints", "CogVideo"])
    assert path == comfy / "extra_model_paths.yaml"
    data = yaml.safe_load(path.read_text())
    assert data == {
        "comfyfleet": {
            "base_path": str(models),
            "is_default": True,
            "CogVideo": "CogVideo/",
            "checkpoints": "checkpoints/",
            "loras": "loras/",
        }
    }
    assert not list(comfy.glob(".*.tmp"))


def test_extra_model_paths_keeps_other_sections(tmp_path: Path) -> None:
    comfy = tmp_path / "ComfyUI"
    comfy.mkdir()
    (comfy / "extra_model_paths.yaml").write_text(
        "a111:\n    base_path: /opt/sd\n    checkpoints: models/Stable-diffusion\n"
        "comfyfleet:\n    base_path: /old\n"
    )
    write_extra_model_paths(comfy, tmp_path / "m")
    data = yaml.safe_load((comfy / "extra_model_paths.yaml").read_text())
    assert data["a111"] == {"base_path": "/opt/sd", "checkpoints": "models/Stable-diffusion"}
    ours = data["comfyfleet"]
    assert ours["base_path"] == str(tmp_path / "m")
    assert ours["checkpoints"] == "checkpoints/" and ours["diffusion_models"] == "diffusion_models/"
    assert ours["unet"] == "unet/" and ours["text_encoders"] == "text_encoders/"


def test_extra_model_paths_refuses_broken_yaml(tmp_path: Path) -> None:
    (tmp_path / "extra_model_paths.yaml").write_text("a: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        write_extra_model_paths(tmp_path, tmp_path / "m")
    (tmp_path / "extra_model_paths.yaml").write_text("- a list\n")
    with pytest.raises(ConfigError, match="not a mapping"):
        write_extra_model_paths(tmp_path, tmp_path / "m")
