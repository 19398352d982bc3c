"""Warm-up planning: which profile, which files, where they go, what ComfyUI must list.

Pure glue between the catalog, the store's manifest (or a baked image's manifest), the
instance's facts and the pull planner; no bytes move here. ``plan_script`` and
``plan_baked`` return a :class:`WarmupPlan` the driver then verifies, pulls and places.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfyfleet.catalog import AUTO_PROFILE, Catalog, ModelFile
from comfyfleet.comfy.folders import PT_EXTENSIONS, PT_FOLDERS, http_folder
from comfyfleet.errors import ComfyfleetError, ConfigError
from comfyfleet.pull.transfer import EntryLike, PullItem, bytes_to_write, plan_pull
from comfyfleet.store.base import ObjectStore
from comfyfleet.store.manifest import ManifestEntry, read_manifest, require_current
from comfyfleet.warmup.baked import BakedManifest, default_baked_manifest_path, read_baked_manifest
from comfyfleet.warmup.gpu import InstanceFacts
from comfyfleet.warmup.profiles import ProfileChoice, choose_profile


@dataclass
class WarmupPlan:
    """The files of the chosen profile, planned into ``models_dir``."""

    choice: ProfileChoice
    entries: list[EntryLike]
    items: list[PullItem]
    models_dir: Path | None
    baked: BakedManifest | None = None
    warnings: list[str] = field(default_factory=list)


def same_dir(a: Path, b: Path) -> bool:
    return a.absolute().resolve() == b.absolute().resolve()


def load_workflow(path: Path) -> dict[str, Any]:
    """An API-format workflow (``{node_id: {class_type, inputs}}``) from a JSON file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"warm-up workflow {path} does not exist", hint="check the --warmup-workflow path"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"warm-up workflow {path} is not readable JSON ({exc})",
            hint="export it from ComfyUI with 'Save (API)'",
        ) from exc
    if isinstance(data, dict) and "prompt" in data and isinstance(data["prompt"], dict):
        data = data["prompt"]
    if not isinstance(data, dict) or not data or "nodes" in data:
        raise ConfigError(
            f"warm-up workflow {path} is not in API format ({{node_id: {{class_type, inputs}}}})",
            hint="in ComfyUI use 'Save (API)' (the UI format with nodes/links is not accepted)",
        )
    for node_id, node in data.items():
        if not isinstance(node, dict) or "class_type" not in node:
            raise ConfigError(
                f"warm-up workflow {path}: node {node_id!r} has no class_type",
                hint="export it from ComfyUI with 'Save (API)'",
            )
    return data


def plan_script(
    *,
    store: ObjectStore,
    catalog: Catalog,
    facts: InstanceFacts,
    comfy_root: Path,
    models_dir: Path | None,
    requested: str,
    force: bool,
) -> WarmupPlan:
    """Choose the profile from the store's manifest and plan its files."""
    by_key = read_manifest(store).by_key()
    # A catalog model counts as mirrored only with the bytes the catalog pins.
    mirrored = {
        m.key
        for m in catalog.models.values()
        if m.key in by_key and (m.sha256 is None or m.sha256 == by_key[m.key].sha256)
    }

    def needed(models: Sequence[ModelFile]) -> int:
        entries = [by_key[m.key] for m in models if m.key in by_key]
        return bytes_to_write(plan_pull(entries, comfy_root, models_dir=models_dir))

    choice = choose_profile(
        catalog,
        facts,
        requested=requested,
        sizes={k: e.size for k, e in by_key.items()},
        needed_bytes=needed,
        mirrored=mirrored,
        store=store.uri,
        force=force,
    )
    entries: list[ManifestEntry] = [by_key[m.key] for m in choice.models]
    items = plan_pull(entries, comfy_root, models_dir=models_dir)
    # An object replaced in the store keeps its sha256 metadata: only its size and ETag
    # against the manifest tell, so check the ones to fetch before the first byte.
    to_fetch = {item.key for item in items if not _in_place(item.dest, item.size)}
    require_current(store, [e for e in entries if e.key in to_fetch])
    return WarmupPlan(
        choice=choice,
        entries=list(entries),
        items=items,
        models_dir=models_dir,
        warnings=list(choice.warnings),
    )


def _in_place(path: Path, size: int) -> bool:
    """A file already at ``path`` with the right size (the pull verifies it, not the store)."""
    try:
        return path.is_file() and path.stat().st_size == size
    except OSError:
        return False


def plan_baked(
    *,
    catalog: Catalog | None,
    facts: InstanceFacts,
    comfy_root: Path,
    models_dir: Path | None,
    requested: str,
    manifest_path: Path | None,
) -> WarmupPlan:
    """The image's baked manifest is the plan; the VRAM floor only warns (the image is
    what it is)."""
    path = manifest_path or default_baked_manifest_path()
    baked = read_baked_manifest(path)
    if requested not in (AUTO_PROFILE, baked.profile):
        raise ConfigError(
            f"this image was baked with profile {baked.profile}, not {requested}",
            hint=f"pass --profile {baked.profile} (or auto), or use --mode script",
        )
    baked_dir = Path(baked.models_dir)
    if models_dir is not None and not same_dir(models_dir, baked_dir):
        raise ConfigError(
            f"--models-dir {models_dir} differs from the baked models at {baked_dir}",
            hint="leave --models-dir out in baked mode",
        )
    plan = WarmupPlan(
        choice=ProfileChoice(
            name=baked.profile,
            models=(),
            total_bytes=baked.total_bytes,
            reason=f"baked into the image ({path})",
            requested=requested,
            needed_bytes=0,
        ),
        entries=list(baked.entries),
        items=plan_pull(baked.entries, comfy_root, models_dir=baked_dir),
        models_dir=baked_dir,
        baked=baked,
    )
    if facts.vram_source != "none" and catalog is not None:
        try:
            floor = catalog.profile_min_vram(baked.profile)
        except ComfyfleetError:
            floor = 0.0
        if floor > facts.vram_gb:
            plan.warnings.append(
                f"profile {baked.profile} needs {floor:g} GB VRAM, this instance has "
                f"{facts.vram_gb:g} GB"
            )
    return plan


def expected_listing(entries: Sequence[EntryLike]) -> tuple[dict[str, set[str]], dict[str, str]]:
    """Files ComfyUI should list per HTTP folder key, and files it cannot list (why)."""
    expected: dict[str, set[str]] = {}
    unchecked: dict[str, str] = {}
    for entry in entries:
        folder = http_folder(entry.folder)
        suffix = Path(entry.file).suffix.lower()
        if folder in PT_FOLDERS and suffix not in PT_EXTENSIONS:
            unchecked[entry.key] = f"ComfyUI lists only model files in {folder}"
            continue
        expected.setdefault(folder, set()).add(entry.file)
    return expected, unchecked
