"""Free space and the preflight that refuses before the first byte."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from comfyfleet.errors import InsufficientDiskError
from comfyfleet.pull.disk import existing_parent, free_bytes, preflight, required_bytes

MiB = 1024 * 1024


def test_free_bytes_uses_the_nearest_existing_parent(tmp_path: Path) -> None:
    deep = tmp_path / "not" / "yet" / "there"
    assert existing_parent(deep) == tmp_path
    assert abs(free_bytes(deep) - shutil.disk_usage(tmp_path).free) < 64 * MiB


def test_required_bytes_adds_the_margin() -> None:
    assert required_bytes(0) == 0
    assert required_bytes(1000 * MiB, margin_bytes=10, margin_ratio=0.5) == 1500 * MiB + 10


def test_preflight_refuses_naming_need_free_missing(tmp_path: Path) -> None:
    with pytest.raises(InsufficientDiskError) as info:
        preflight(
            3 * 1024 * MiB,
            tmp_path,
            margin_bytes=MiB,
            margin_ratio=0.0,
            free_fn=lambda p: 1024 * MiB,
        )
    err = info.value
    assert err.needed == 3 * 1024 * MiB + MiB
    assert err.free == 1024 * MiB
    assert err.missing == 2 * 1024 * MiB + MiB
    text = str(err)
    assert str(tmp_path) in text
    assert "need 3.0 GiB" in text and "free 1.0 GiB" in text and "missing 2.0 GiB" in text
    assert "--profile minimal" in text


def test_preflight_passes_when_it_fits_or_nothing_is_needed(tmp_path: Path) -> None:
    preflight(100 * MiB, tmp_path, margin_bytes=MiB, margin_ratio=0.1, free_fn=lambda p: 200 * MiB)

    def never(p: Path) -> int:
        raise AssertionError("nothing to write: free space is not even asked")

    preflight(0, tmp_path, free_fn=never)
