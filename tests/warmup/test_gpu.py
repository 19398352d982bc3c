"""nvidia-smi parsing on recorded outputs, detection with an injected runner, overrides."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from comfyfleet.errors import ConfigError, InstanceError
from comfyfleet.warmup.gpu import (
    NVIDIA_SMI_LIST,
    NVIDIA_SMI_QUERY,
    detect_gpus,
    instance_facts,
    parse_mig_list,
    parse_nvidia_smi,
    run_nvidia_smi,
)

DATA = Path(__file__).parent.parent / "data" / "nvidia-smi"


def recorded(name: str) -> str:
    return (DATA / name).read_text()


def runner_for(query: str, listing: str | None = None):  # type: ignore[no-untyped-def]
    calls: list[list[str]] = []

    def run(argv: list[str]) -> str:
        calls.append(argv)
        if argv == NVIDIA_SMI_QUERY:
            return recorded(query)
        if argv == NVIDIA_SMI_LIST and listing is not None:
            return recorded(listing)
        raise AssertionError(f"unexpected command {argv}")

    run.calls = calls  # type: ignore[attr-defined]
    return run


def test_query_is_the_documented_one() -> None:
    assert NVIDIA_SMI_QUERY == [
        "nvidia-smi",
        "--query-gpu=index,name,memory.total,memory.free,uuid,driver_version,mig.mode.current",
        "--format=csv,noheader,nounits",
    ]


def test_one_gpu() -> None:
    [gpu] = parse_nvidia_smi(recorded("one-rtx4090.txt"))
    assert gpu.index == 0
    assert gpu.name == "NVIDIA GeForce RTX 4090"
    assert gpu.memory_total_mib == 24564
    assert gpu.memory_free_mib == 24083
    assert gpu.uuid == "GPU-4f8a2c1e-9b3d-4e6f-a1c2-7d8e9f0a1b2c"
    assert gpu.driver_version == "550.54.14"
    assert gpu.mig is False
    # 24564 MiB is what a "24 GB" card reports: it must count as 24 GB for the video profile.
    assert gpu.usable_vram_gb == 24.0


def test_several_gpus() -> None:
    gpus = parse_nvidia_smi(recorded("several-a100.txt"))
    assert [g.index for g in gpus] == [0, 1, 2, 3]
    assert {g.name for g in gpus} == {"NVIDIA A100-SXM4-80GB"}
    assert gpus[2].memory_free_mib == 2113
    assert len({g.uuid for g in gpus}) == 4
    assert all(g.usable_vram_gb == 80.0 for g in gpus)


def test_mixed_gpus_vram_is_the_largest_single_gpu(tmp_path: Path) -> None:
    facts = instance_facts(
        tmp_path, runner=runner_for("mixed-3060-3090.txt"), free_fn=lambda p: 10**12
    )
    assert [g.name for g in facts.gpus] == ["NVIDIA GeForce RTX 3060", "NVIDIA GeForce RTX 3090"]
    assert facts.vram_gb == 24.0  # not 36: a model must fit on one GPU
    assert facts.gpu_name == "NVIDIA GeForce RTX 3090"
    assert facts.vram_source == "nvidia-smi"
    assert facts.free_disk_bytes == 10**12
    assert facts.cpu_count >= 1
    assert facts.target == tmp_path


def test_missing_fields_are_none() -> None:
    [gpu] = parse_nvidia_smi(recorded("one-l4-missing-fields.txt"))
    assert gpu.name == "NVIDIA L4"
    assert gpu.memory_total_mib == 23034
    assert gpu.memory_free_mib is None
    assert gpu.uuid is None
    assert gpu.usable_vram_gb == 22.5  # an L4 is below the 24 GB video floor


def test_mig_uses_the_largest_slice() -> None:
    run = runner_for("mig-a100.txt", "mig-a100-list.txt")
    gpus = detect_gpus(run)
    assert gpus[0].mig is True
    assert gpus[0].mig_slices_gb == (20, 10, 5)
    assert gpus[0].usable_vram_gb == 20.0
    assert gpus[1].mig is False
    assert gpus[1].usable_vram_gb == 40.0
    assert run.calls == [NVIDIA_SMI_QUERY, NVIDIA_SMI_LIST]  # type: ignore[attr-defined]


def test_mig_list_parser() -> None:
    assert parse_mig_list(recorded("mig-a100-list.txt")) == {0: (20, 10, 5), 1: ()}


def test_mig_without_slices_is_noted(tmp_path: Path) -> None:
    def run(argv: list[str]) -> str:
        if argv == NVIDIA_SMI_QUERY:
            return recorded("mig-a100.txt").splitlines()[0] + "\n"
        return "GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77)\n"

    facts = instance_facts(tmp_path, runner=run, free_fn=lambda p: 1)
    assert facts.vram_gb == 0.0
    assert any("MIG enabled but no MIG slices" in n for n in facts.notes)


def test_error_text_raises_with_the_text() -> None:
    text = recorded("error-driver.txt")
    with pytest.raises(InstanceError) as info:
        parse_nvidia_smi(text)
    assert "couldn't communicate with the NVIDIA driver" in str(info.value)
    assert "--vram-gb" in str(info.value)

    with pytest.raises(InstanceError, match="couldn't communicate"):
        detect_gpus(lambda argv: text)


def test_no_devices_is_empty() -> None:
    assert parse_nvidia_smi(recorded("no-devices.txt")) == []
    assert parse_nvidia_smi("") == []


def test_missing_command_is_no_gpu(tmp_path: Path) -> None:
    def run(argv: list[str]) -> str:
        raise FileNotFoundError(2, "No such file or directory", argv[0])

    assert detect_gpus(run) == []
    facts = instance_facts(tmp_path, runner=run, free_fn=lambda p: 5)
    assert facts.gpus == [] and facts.vram_gb == 0.0 and facts.vram_source == "none"
    assert facts.gpu_name == "none"


def test_overrides(tmp_path: Path) -> None:
    def boom(argv: list[str]) -> str:
        raise AssertionError("--gpu none must not run nvidia-smi")

    facts = instance_facts(tmp_path, gpu="none", vram_gb=48, runner=boom, free_fn=lambda p: 7)
    assert facts.gpus == [] and facts.vram_gb == 48.0 and facts.vram_source == "override"
    facts = instance_facts(
        tmp_path, vram_gb=12, runner=runner_for("one-rtx4090.txt"), free_fn=lambda p: 7
    )
    assert facts.vram_gb == 12.0 and facts.gpus[0].memory_total_mib == 24564
    with pytest.raises(ConfigError, match="--gpu 'h100'"):
        instance_facts(tmp_path, gpu="h100")
    with pytest.raises(ConfigError, match="negative"):
        instance_facts(tmp_path, vram_gb=-1, gpu="none")


def fake_nvidia_smi(tmp_path: Path, script: str) -> Path:
    exe = tmp_path / "nvidia-smi"
    exe.write_text("#!/bin/sh\n" + script)
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe


def test_real_runner_with_a_failing_binary(tmp_path: Path) -> None:
    exe = fake_nvidia_smi(tmp_path, f"cat '{DATA / 'error-driver.txt'}'\nexit 9\n")
    with pytest.raises(InstanceError, match=r"exit 9.*couldn't communicate"):
        run_nvidia_smi([str(exe), *NVIDIA_SMI_QUERY[1:]])
    exe = fake_nvidia_smi(tmp_path, f"cat '{DATA / 'one-rtx4090.txt'}'\n")
    out = run_nvidia_smi([str(exe), *NVIDIA_SMI_QUERY[1:]])
    assert parse_nvidia_smi(out)[0].name == "NVIDIA GeForce RTX 4090"
    with pytest.raises(FileNotFoundError):
        run_nvidia_smi([str(tmp_path / "absent-nvidia-smi")])
