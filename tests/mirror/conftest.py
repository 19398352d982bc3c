"""Helpers for the mirror tests (the hub and civitai fixtures live in tests.doubles.fixtures)."""

from __future__ import annotations

from comfyfleet.catalog import HFSource, ModelFile
from comfyfleet.mirror.upload import MiB, TransferSettings

# Small parts and short waits: the behaviour is the same, the tests are fast.
SETTINGS = TransferSettings(part_size=5 * MiB, max_parts_in_flight=3, backoff_base=0.05)


def hf_model(
    model_id: str,
    repo: str,
    path: str,
    *,
    revision: str = "main",
    folder: str = "loras",
    sha256: str | None = None,
    size: int | None = None,
) -> ModelFile:
    return ModelFile(
        id=model_id,
        folder=folder,
        file=path.rsplit("/", 1)[-1],
        source=HFSource(type="hf", repo=repo, revision=revision, path=path),
        sha256=sha256,
        size=size,
    )
