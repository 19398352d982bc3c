"""Profile choice: auto by VRAM and disk, named profiles checked, mirrored-only."""

from __future__ import annotations

from pathlib import Path

import pytest

from comfyfleet.catalog import load_catalog
from comfyfleet.errors import CatalogError, ConfigError, InsufficientDiskError
from comfyfleet.warmup.profiles import choose_profile, measure

from .mirrored import MODELS, PROFILES, catalog, facts, profile_bytes


@pytest.mark.parametrize(
    ("vram", "expected"),
    [
        (8, "image"),
        (12, "image"),
        (23.9, "image"),
        (24, "video-24gb"),
        (47, "video-24gb"),
        (48, "video-48gb"),
        (80, "video-48gb"),
    ],
)
def test_auto_picks_the_largest_profile_that_fits_vram(
    tmp_path: Path, vram: float, expected: str
) -> None:
    cat = catalog(tmp_path)
    choice = choose_profile(cat, facts(tmp_path, vram))
    assert choice.name == expected
    assert choice.requested == "auto"
    assert choice.total_bytes == profile_bytes(expected)
    assert [m.id for m in choice.models] == [m for m in MODELS if m in PROFILES[expected][1]]
    assert f"{vram:g} GB VRAM" in choice.reason


def test_auto_below_every_floor_is_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        choose_profile(catalog(tmp_path), facts(tmp_path, 6))
    assert "no profile fits 6 GB VRAM" in info.value.message
    assert "--force" in (info.value.hint or "")


def test_no_gpu_takes_the_smallest_profile(tmp_path: Path) -> None:
    choice = choose_profile(catalog(tmp_path), facts(tmp_path, 0, source="none"))
    assert choice.name == "minimal"
    assert "no GPU" in choice.reason
    assert choice.warnings


def test_auto_passes_over_profiles_the_disk_cannot_hold(tmp_path: Path) -> None:
    cat = catalog(tmp_path)
    free = profile_bytes("video-24gb") + 1  # video-48gb does not fit, video-24gb does
    choice = choose_profile(cat, facts(tmp_path, 80, free=free), margin_bytes=0, margin_ratio=0)
    assert choice.name == "video-24gb"
    assert "video-48gb lacks" in choice.reason


def test_auto_refuses_when_nothing_fits_the_disk_and_says_how_much_is_missing(
    tmp_path: Path,
) -> None:
    cat = catalog(tmp_path)
    with pytest.raises(InsufficientDiskError) as info:
        choose_profile(cat, facts(tmp_path, 12, free=1000), margin_bytes=0, margin_ratio=0)
    # The least demanding profile that fits the GPU is the one measured: image (minimal is
    # smaller, but auto's message names the smallest fitting VRAM; both miss the disk).
    assert info.value.missing == profile_bytes("minimal") - 1000
    assert "missing" in info.value.message


def test_needed_bytes_leaves_out_files_already_in_place(tmp_path: Path) -> None:
    cat = catalog(tmp_path)
    # Everything of video-48gb is "already there": it fits a disk with no room at all.
    choice = choose_profile(
        cat, facts(tmp_path, 80, free=0), needed_bytes=lambda models: 0, margin_bytes=0
    )
    assert choice.name == "video-48gb"
    assert choice.needed_bytes == 0


def test_named_profile_above_the_vram_floor_is_refused_unless_forced(tmp_path: Path) -> None:
    cat = catalog(tmp_path)
    with pytest.raises(ConfigError) as info:
        choose_profile(cat, facts(tmp_path, 12), requested="video-24gb")
    assert "needs 24 GB VRAM" in info.value.message
    assert "12 GB VRAM" in info.value.message
    assert "--force" in (info.value.hint or "")
    forced = choose_profile(cat, facts(tmp_path, 12), requested="video-24gb", force=True)
    assert forced.name == "video-24gb"
    assert any("--force" in w for w in forced.warnings)


def test_named_profile_without_gpu_is_allowed_with_a_warning(tmp_path: Path) -> None:
    choice = choose_profile(
        catalog(tmp_path), facts(tmp_path, 0, source="none"), requested="video-48gb"
    )
    assert choice.name == "video-48gb"
    assert choice.reason == "asked for by name"
    assert any("not checked" in w for w in choice.warnings)


def test_named_profile_too_big_for_the_disk_is_refused_even_with_force(tmp_path: Path) -> None:
    with pytest.raises(InsufficientDiskError) as info:
        choose_profile(
            catalog(tmp_path), facts(tmp_path, 80, free=10), requested="image", force=True
        )
    assert "profile image needs" in (info.value.hint or "")


def test_unknown_profile_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(CatalogError) as info:
        choose_profile(catalog(tmp_path), facts(tmp_path, 24), requested="vidoe")
    assert "video-24gb" in (info.value.hint or "")


def test_profiles_that_are_not_mirrored(tmp_path: Path) -> None:
    cat = catalog(tmp_path)
    mirrored = {f"models/{MODELS[m][0]}/{MODELS[m][1]}" for m in PROFILES["video-24gb"][1]}
    # auto at 80 GB would take video-48gb, but "big" is not in the store.
    choice = choose_profile(cat, facts(tmp_path, 80), mirrored=mirrored, store="s3://b/p")
    assert choice.name == "video-24gb"
    assert "video-48gb not fully mirrored" in choice.reason
    with pytest.raises(ConfigError) as info:
        choose_profile(
            cat, facts(tmp_path, 80), requested="video-48gb", mirrored=mirrored, store="s3://b/p"
        )
    assert "not mirrored in s3://b/p: big" in info.value.message
    assert "comfyfleet mirror --profile video-48gb" in (info.value.hint or "")
    with pytest.raises(ConfigError, match="not mirrored"):
        choose_profile(cat, facts(tmp_path, 80), mirrored=set())


def test_a_catalog_without_profiles_offers_full(tmp_path: Path) -> None:
    cat = catalog(tmp_path, profiles={}, ids=["base", "vae"])
    choice = choose_profile(cat, facts(tmp_path, 24))
    assert choice.name == "full"
    assert choice.total_bytes == MODELS["base"][2] + MODELS["vae"][2]


def test_manifest_sizes_win_over_catalog_sizes(tmp_path: Path) -> None:
    cat = catalog(tmp_path)
    key = f"models/{MODELS['base'][0]}/{MODELS['base'][1]}"
    fit = measure(cat, facts(tmp_path, 24), "minimal", sizes={key: 1})
    assert fit.total_bytes == 1 + MODELS["vae"][2]


@pytest.mark.parametrize(("vram", "expected"), [(12, "image"), (24, "video-24gb")])
def test_builtin_catalog_is_image_only_below_24_gb_and_video_from_24(
    vram: float, expected: str
) -> None:
    cat = load_catalog()
    choice = choose_profile(cat, facts(Path("/"), vram))
    assert choice.name == expected


def test_an_unknown_profile_on_warmup_offers_auto(tmp_path: Path) -> None:
    """Only the warm-up takes ``auto``: its hint lists it (the mirror's does not)."""
    cat = catalog(tmp_path)
    with pytest.raises(CatalogError) as info:
        choose_profile(cat, facts(tmp_path, 80), requested="vidoe-24gb", mirrored=set())
    assert "vidoe-24gb" in info.value.message
    assert "auto" in (info.value.hint or "")
    with pytest.raises(CatalogError) as plain:
        cat.require_profile("vidoe-24gb")
    assert "auto" not in (plain.value.hint or "")
