"""The nvidia-smi answer recorded on a real (lent) H200 host drives the same code paths."""

from __future__ import annotations

from pathlib import Path

from comfyfleet.catalog import load_catalog
from comfyfleet.warmup.gpu import NVIDIA_SMI_QUERY, instance_facts, parse_nvidia_smi
from comfyfleet.warmup.profiles import choose_profile

RECORDED = Path(__file__).parent.parent / "data" / "nvidia-smi" / "h200-recorded.txt"


def test_recorded_h200_parses_to_one_141_gib_gpu_without_mig() -> None:
    (gpu,) = parse_nvidia_smi(RECORDED.read_text())
    assert gpu.name == "NVIDIA H200"
    assert (gpu.memory_total_mib, gpu.memory_free_mib) == (143771, 143156)
    assert gpu.mig is False and gpu.driver_version == "580.159.04"
    assert gpu.usable_vram_gb == 140.4


def test_recorded_h200_gets_a_video_profile_when_disk_allows(tmp_path: Path) -> None:
    def runner(argv: list[str]) -> str:
        assert argv == NVIDIA_SMI_QUERY
        return RECORDED.read_text()

    facts = instance_facts(tmp_path, runner=runner)
    assert facts.vram_gb == 140.4 and facts.gpu_name == "NVIDIA H200"
    plenty = facts.__class__(**{**facts.__dict__, "free_disk_bytes": 10**15})
    choice = choose_profile(load_catalog(), plenty)
    assert choice.name == "video-24gb"
    starved = facts.__class__(**{**facts.__dict__, "free_disk_bytes": 10 * 2**30})
    assert choose_profile(load_catalog(), starved).name == "minimal"
