"""Instance facts: which GPUs there are, how much VRAM, free disk, CPU count.

GPUs come from one ``nvidia-smi`` query (``NVIDIA_SMI_QUERY``), asked for as CSV without a
header and without units, so each line is::

    index, name, memory.total [MiB], memory.free [MiB], uuid, driver_version, mig.mode.current
    0, NVIDIA GeForce RTX 4090, 24564, 24080, GPU-5a4bd1f2-..., 550.54.14, [N/A]

``mig.mode.current`` is ``Enabled``, ``Disabled`` or ``[N/A]`` (GPUs without MIG). On a GPU
with MIG enabled a process only sees one MIG slice, not the whole board, so the slices are
read from ``nvidia-smi -L`` (``MIG 3g.40gb Device 0: (UUID: MIG-...)``) and the largest
slice is the VRAM that counts.

Everything is injectable: ``detect_gpus(run=...)`` takes the command runner, and
``instance_facts`` takes overrides (``--vram-gb``, ``--gpu none``) so CI and laptops work.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from comfyfleet.errors import ConfigError, InstanceError
from comfyfleet.pull.disk import free_bytes

QUERY_FIELDS = (
    "index",
    "name",
    "memory.total",
    "memory.free",
    "uuid",
    "driver_version",
    "mig.mode.current",
)
NVIDIA_SMI_QUERY = [
    "nvidia-smi",
    f"--query-gpu={','.join(QUERY_FIELDS)}",
    "--format=csv,noheader,nounits",
]
NVIDIA_SMI_LIST = ["nvidia-smi", "-L"]

# Values nvidia-smi prints where a field has no value on this GPU or driver.
_MISSING = {"[N/A]", "N/A", "[Not Supported]", "Not Supported", "[Unknown Error]", ""}
_NO_DEVICES = "No devices were found"
_MIG_LINE = re.compile(r"^\s*MIG\s+(\d+)g\.(\d+)gb\s+Device\s+\d+:", re.IGNORECASE)
_GPU_LINE = re.compile(r"^GPU\s+(\d+):")

Runner = Callable[[list[str]], str]


@dataclass(frozen=True)
class GPU:
    """One physical GPU as nvidia-smi reports it (memory in MiB)."""

    index: int
    name: str
    memory_total_mib: int
    memory_free_mib: int | None
    uuid: str | None
    mig: bool
    driver_version: str | None = None
    # Memory of each MIG slice in GB (from the profile name, e.g. 3g.40gb -> 40); empty if
    # MIG is off or no slices are configured.
    mig_slices_gb: tuple[int, ...] = ()

    @property
    def usable_vram_gb(self) -> float:
        """VRAM one process can use: the whole board, or the largest MIG slice."""
        if self.mig:
            return float(max(self.mig_slices_gb, default=0))
        return round(self.memory_total_mib / 1024, 1)


@dataclass(frozen=True)
class InstanceFacts:
    """What the warm-up needs to know about this machine."""

    gpus: list[GPU]
    vram_gb: float  # the largest single GPU (or MIG slice), or the --vram-gb override
    free_disk_bytes: int
    cpu_count: int
    target: Path
    vram_source: str = "nvidia-smi"  # "nvidia-smi", "override", "none"
    notes: tuple[str, ...] = field(default=())

    @property
    def gpu_name(self) -> str:
        """The name of the largest GPU, or 'none'."""
        if not self.gpus:
            return "none"
        return max(self.gpus, key=lambda g: g.usable_vram_gb).name


def _int_or_none(value: str) -> int | None:
    value = value.strip()
    if value in _MISSING:
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


def parse_nvidia_smi(csv_text: str) -> list[GPU]:
    """Parse the output of ``NVIDIA_SMI_QUERY``; raises ``InstanceError`` on anything else.

    "No devices were found" (driver loaded, no GPU) parses to ``[]``. Text that is not the
    CSV we asked for (for example "NVIDIA-SMI has failed because it couldn't communicate
    with the NVIDIA driver...") raises with that text, so the user sees nvidia-smi's words.
    """
    gpus: list[GPU] = []
    text = csv_text.strip()
    if not text or text.startswith(_NO_DEVICES):
        return []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != len(QUERY_FIELDS):
            raise _unreadable(
                text, f"line {lineno} has {len(cells)} fields, expected {len(QUERY_FIELDS)}"
            )
        index = _int_or_none(cells[0])
        total = _int_or_none(cells[2])
        if index is None or total is None:
            raise _unreadable(text, f"line {lineno} has no GPU index or memory.total")
        gpus.append(
            GPU(
                index=index,
                name=cells[1],
                memory_total_mib=total,
                memory_free_mib=_int_or_none(cells[3]),
                uuid=None if cells[4] in _MISSING else cells[4],
                mig=cells[6].lower() == "enabled",
                driver_version=None if cells[5] in _MISSING else cells[5],
            )
        )
    return gpus


def parse_mig_list(list_text: str) -> dict[int, tuple[int, ...]]:
    """MIG slice sizes in GB per GPU index, from ``nvidia-smi -L``."""
    slices: dict[int, list[int]] = {}
    current: int | None = None
    for line in list_text.splitlines():
        gpu = _GPU_LINE.match(line)
        if gpu:
            current = int(gpu.group(1))
            slices.setdefault(current, [])
            continue
        mig = _MIG_LINE.match(line)
        if mig and current is not None:
            slices[current].append(int(mig.group(2)))
    return {k: tuple(v) for k, v in slices.items()}


def _unreadable(text: str, why: str) -> InstanceError:
    first = text.strip().splitlines()[0] if text.strip() else "(no output)"
    return InstanceError(
        f"nvidia-smi output could not be read ({why}): {first}",
        hint="check the NVIDIA driver (run nvidia-smi by hand), or pass --vram-gb N / --gpu none",
    )


def run_nvidia_smi(argv: list[str]) -> str:
    """Run nvidia-smi; its error text becomes an ``InstanceError``.

    A missing binary raises ``FileNotFoundError`` (meaning: no GPU here).
    """
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        out = (proc.stdout + proc.stderr).strip()
        if out.startswith(_NO_DEVICES):
            return out
        raise InstanceError(
            f"nvidia-smi failed (exit {proc.returncode}): {out.splitlines()[0] if out else ''}",
            hint="check the NVIDIA driver (run nvidia-smi by hand), or pass --vram-gb N / "
            "--gpu none",
        )
    return proc.stdout


def detect_gpus(run: Runner | None = None) -> list[GPU]:
    """The GPUs of this machine; ``[]`` when nvidia-smi is not installed."""
    runner = run or run_nvidia_smi
    try:
        gpus = parse_nvidia_smi(runner(list(NVIDIA_SMI_QUERY)))
    except FileNotFoundError:
        return []
    if any(g.mig for g in gpus):
        slices = parse_mig_list(runner(list(NVIDIA_SMI_LIST)))
        gpus = [
            GPU(
                index=g.index,
                name=g.name,
                memory_total_mib=g.memory_total_mib,
                memory_free_mib=g.memory_free_mib,
                uuid=g.uuid,
                mig=g.mig,
                driver_version=g.driver_version,
                mig_slices_gb=slices.get(g.index, ()),
            )
            for g in gpus
        ]
    return gpus


def instance_facts(
    target: Path,
    *,
    vram_gb: float | None = None,
    gpu: str | None = None,
    runner: Runner | None = None,
    free_fn: Callable[[Path], int] = free_bytes,
) -> InstanceFacts:
    """GPU, VRAM, free disk at ``target`` (nearest existing parent) and CPU count.

    ``vram_gb`` overrides the detected VRAM (``--vram-gb``); ``gpu="none"`` skips nvidia-smi
    altogether (``--gpu none``: a laptop or CI) and means 0 GB unless ``vram_gb`` is given.
    """
    if gpu is not None and gpu != "none":
        raise ConfigError(
            f"--gpu {gpu!r} is not understood", hint="use --gpu none, or leave it out"
        )
    if vram_gb is not None and vram_gb < 0:
        raise ConfigError(f"--vram-gb {vram_gb} is negative", hint="pass the GPU memory in GB")
    notes: list[str] = []
    gpus = [] if gpu == "none" else detect_gpus(runner)
    detected = max((g.usable_vram_gb for g in gpus), default=0.0)
    for g in gpus:
        if g.mig and not g.mig_slices_gb:
            notes.append(f"GPU {g.index} ({g.name}) has MIG enabled but no MIG slices")
    if vram_gb is not None:
        source = "override"
        vram = float(vram_gb)
    elif gpus:
        source = "nvidia-smi"
        vram = detected
    else:
        source = "none"
        vram = 0.0
        if gpu != "none":
            notes.append("no NVIDIA GPU found (nvidia-smi missing or no devices)")
    return InstanceFacts(
        gpus=gpus,
        vram_gb=vram,
        free_disk_bytes=free_fn(target),
        cpu_count=os.cpu_count() or 1,
        target=target,
        vram_source=source,
        notes=tuple(notes),
    )
