"""Helpers for warm-up tests: a small mirror (objects + manifest put with the store API),
a catalog that matches it, and instance facts without nvidia-smi."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from comfyfleet.catalog import Catalog, load_catalog
from comfyfleet.store.base import SHA256_METADATA_KEY, ObjectStore
from comfyfleet.store.manifest import Manifest, ManifestEntry, write_manifest
from comfyfleet.warmup.gpu import GPU, InstanceFacts


def blob(seed: str, size: int) -> bytes:
    """Deterministic bytes (so two tests never share content by accident)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


# id -> (folder, file, size); every profile below is built from these.
MODELS: dict[str, tuple[str, str, int]] = {
    "base": ("checkpoints", "base.safetensors", 60_000),
    "vae": ("vae", "vae.safetensors", 20_000),
    "style": ("loras", "style.safetensors", 10_000),
    "wan": ("diffusion_models", "wan.safetensors", 90_000),
    "umt5": ("text_encoders", "umt5.safetensors", 40_000),
    "cog-config": ("CogVideo", "CogVideoX-5b/transformer/config.json", 500),
    "big": ("diffusion_models", "big.safetensors", 150_000),
}

PROFILES: dict[str, tuple[float, Sequence[str]]] = {
    "minimal": (8, ["base", "vae"]),
    "image": (8, ["base", "vae", "style"]),
    "video-24gb": (24, ["base", "vae", "wan", "umt5", "cog-config"]),
    "video-48gb": (48, ["base", "vae", "wan", "umt5", "cog-config", "big"]),
}


def content(model_id: str) -> bytes:
    _, _, size = MODELS[model_id]
    return blob(model_id, size)


def sha(model_id: str) -> str:
    return hashlib.sha256(content(model_id)).hexdigest()


def mirror(store: ObjectStore, ids: Sequence[str] | None = None) -> list[ManifestEntry]:
    """Put the models (with their sha256 metadata) and a manifest into ``store``."""
    entries = []
    for model_id in ids if ids is not None else list(MODELS):
        folder, file, _ = MODELS[model_id]
        data = content(model_id)
        digest = hashlib.sha256(data).hexdigest()
        key = f"models/{folder}/{file}"
        store.put_bytes(key, data, metadata={SHA256_METADATA_KEY: digest})
        entries.append(
            ManifestEntry(
                id=model_id,
                key=key,
                folder=folder,
                file=file,
                size=len(data),
                sha256=digest,
                source=f"url:https://example.invalid/{file}",
                mirrored_at=datetime.now(UTC),
            )
        )
    write_manifest(store, Manifest(entries=entries))
    return entries


def write_catalog(
    path: Path,
    *,
    profiles: Mapping[str, tuple[float, Sequence[str]]] = PROFILES,
    ids: Sequence[str] | None = None,
) -> Path:
    """A catalog YAML with the models (pinned sizes and sha256) and ``profiles``."""
    lines = ["schema: 1", "models:"]
    for model_id in ids if ids is not None else list(MODELS):
        folder, file, size = MODELS[model_id]
        lines += [
            f"  - id: {model_id}",
            f"    folder: {folder}",
            f"    file: {file}",
            f"    size: {size}",
            f"    sha256: {sha(model_id)}",
            f'    source: {{type: url, url: "https://example.invalid/{file}"}}',
        ]
    if profiles:
        lines.append("profiles:")
        for name, (floor, members) in profiles.items():
            lines.append(f"  {name}: {{min_vram_gb: {floor}, models: [{', '.join(members)}]}}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def catalog(tmp_path: Path, **kwargs: object) -> Catalog:
    return load_catalog([write_catalog(tmp_path / "catalog.yaml", **kwargs)])  # type: ignore[arg-type]


def facts(
    target: Path,
    vram_gb: float,
    *,
    free: int = 10**12,
    source: str = "override",
    cpus: int = 2,
) -> InstanceFacts:
    gpus = (
        []
        if source == "none"
        else [
            GPU(
                index=0,
                name="Test GPU",
                memory_total_mib=int(vram_gb * 1024),
                memory_free_mib=None,
                uuid=None,
                mig=False,
            )
        ]
    )
    return InstanceFacts(
        gpus=gpus,
        vram_gb=vram_gb,
        free_disk_bytes=free,
        cpu_count=cpus,
        target=target,
        vram_source=source,
    )


def profile_bytes(name: str) -> int:
    return sum(MODELS[m][2] for m in PROFILES[name][1])


def mirrored_root(tmp_path: Path, store: ObjectStore) -> tuple[Path, list[str]]:
    """Mirror every model into ``store``; an empty ComfyUI root; and the ``--store``,
    ``--comfy-root`` and ``--catalog`` options a warm-up command line needs for them."""
    mirror(store)
    root = tmp_path / "ComfyUI"
    root.mkdir()
    args = [
        "--store",
        store.uri,
        "--comfy-root",
        str(root),
        "--catalog",
        str(write_catalog(tmp_path / "catalog.yaml")),
    ]
    return root, args
