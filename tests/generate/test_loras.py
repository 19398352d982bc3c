"""LoRAs on demand: a catalog id or a Hugging Face link is mirrored, pulled and chained."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from comfyfleet.catalog import Catalog, HFSource, ModelFile
from comfyfleet.comfy.client import ComfyClient
from comfyfleet.comfy.workflows import LoraSpec
from comfyfleet.generate.batch import run_batch
from comfyfleet.generate.loras import LoraResolver
from comfyfleet.sources import Tokens
from comfyfleet.store.base import ObjectStore
from comfyfleet.store.manifest import read_manifest
from tests.doubles.comfyui import FakeComfyUI
from tests.doubles.hf_hub import FakeHub
from tests.generate.conftest import JobsFactory

LORA = b"lora weights " * 4000


class DiskModels(dict[str, list[str]]):
    """The fake's model lists, with ``loras`` read from disk on every request the way
    ComfyUI re-scans a folder whose mtime changed."""

    def __init__(self, base: dict[str, list[str]], loras_dir: Path) -> None:
        super().__init__(base)
        self.loras_dir = loras_dir

    def get(self, key: str, default: Any = None) -> Any:
        if key == "loras":
            return sorted(p.name for p in self.loras_dir.glob("*.safetensors"))
        return super().get(key, default)


@pytest.fixture
def comfy_root(tmp_path: Path, fake: FakeComfyUI) -> Path:
    root = tmp_path / "ComfyUI"
    loras = root / "models" / "loras"
    loras.mkdir(parents=True)
    (loras / "already-here.safetensors").write_bytes(b"x")
    fake.models = DiskModels(fake.models, loras)
    return root


def lora_chain(fake: FakeComfyUI) -> list[list[tuple[str, float]]]:
    """The LoraLoader chain of each accepted prompt, in job order (feeders prepare jobs in
    parallel, so a job whose LoRA is mirrored first may be submitted after the next one)."""
    by_job = {
        _job_of(item[2]): [
            (n["inputs"]["lora_name"], n["inputs"]["strength_model"])
            for n in item[2].values()
            if n["class_type"] == "LoraLoader"
        ]
        for item in fake.accepted
    }
    return [by_job[job] for job in sorted(by_job)]


def _job_of(prompt: dict[str, Any]) -> str:
    prefixes = [n["inputs"]["filename_prefix"] for n in prompt.values()
                if "filename_prefix" in n.get("inputs", {})]  # fmt: skip
    return str(prefixes[0]).rsplit("/", 1)[-1]


def test_catalog_id_and_link_are_mirrored_pulled_and_chained(
    hub: FakeHub,
    fake: FakeComfyUI,
    client: ComfyClient,
    store: ObjectStore,
    comfy_root: Path,
    make_jobs: JobsFactory,
) -> None:
    commit = hub.add_file("artist/detail-lora", "detail.safetensors", LORA)
    hub.add_file("artist/style-lora", "style_v2.safetensors", LORA[::-1])
    catalog = Catalog(
        models={
            "detail": ModelFile(
                id="detail", folder="loras", file="detail.safetensors",
                source=HFSource(type="hf", repo="artist/detail-lora", revision=commit,
                                path="detail.safetensors"),
                size=len(LORA), sha256=hashlib.sha256(LORA).hexdigest(),
            )
        }
    )  # fmt: skip
    link = "https://huggingface.co/artist/style-lora/blob/main/style_v2.safetensors"
    resolver = LoraResolver(
        client, store=store, comfy_root=comfy_root, catalog=catalog, tokens=Tokens()
    )
    jobs = make_jobs([
        {"id": "a", "workflow": "sdxl_txt2img", "prompt": "x", "loras": "detail:0.8"},
        {"id": "b", "workflow": "sdxl_txt2img", "prompt": "y",
         "loras": f"{link}:0.5;already-here.safetensors"},
        {"id": "c", "workflow": "sdxl_txt2img", "prompt": "z", "loras": "detail:0.2"},
    ])  # fmt: skip
    report = run_batch(jobs, client=client, store=store, batch_id="lora", loras=resolver)
    assert report.counts["ok"] == 3, report.markdown()
    # Mirrored into the store (and the manifest), pulled verified into models/loras.
    placed = comfy_root / "models" / "loras"
    assert (placed / "detail.safetensors").read_bytes() == LORA
    assert (placed / "style_v2.safetensors").read_bytes() == LORA[::-1]
    assert store.get_bytes("models/loras/detail.safetensors") == LORA
    keys = {e.key for e in read_manifest(store).entries}
    assert {"models/loras/detail.safetensors", "models/loras/style_v2.safetensors"} <= keys
    assert not list(placed.glob("*.part"))
    # Each LoRA was fetched once, even though two jobs use "detail".
    assert sorted(resolver.pulled) == ["detail.safetensors", "style_v2.safetensors"]
    assert lora_chain(fake) == [
        [("detail.safetensors", 0.8)],
        [("style_v2.safetensors", 0.5), ("already-here.safetensors", 1.0)],
        [("detail.safetensors", 0.2)],
    ]
    assert report.results[1].loras == ["style_v2.safetensors", "already-here.safetensors"]


def test_unknown_or_unpullable_loras_fail_the_job_with_a_reason(
    fake: FakeComfyUI,
    client: ComfyClient,
    local_store: ObjectStore,
    make_jobs: JobsFactory,
) -> None:
    catalog = Catalog(
        models={
            "remote": ModelFile(
                id="remote", folder="loras", file="remote.safetensors",
                source=HFSource(type="hf", repo="o/r", revision="main", path="remote.safetensors"),
            ),
            "ckpt": ModelFile(
                id="ckpt", folder="checkpoints", file="big.safetensors",
                source=HFSource(type="hf", repo="o/r", revision="main", path="big.safetensors"),
            ),
        }
    )  # fmt: skip
    resolver = LoraResolver(client, store=local_store, comfy_root=None, catalog=catalog)
    jobs = make_jobs([
        {"id": "typo", "workflow": "sdxl_txt2img", "prompt": "x", "loras": "no-such-lora"},
        {"id": "noroot", "workflow": "sdxl_txt2img", "prompt": "x", "loras": "remote"},
        {"id": "notlora", "workflow": "sdxl_txt2img", "prompt": "x", "loras": "ckpt"},
        {"id": "fine", "workflow": "sdxl_txt2img", "prompt": "x",
         "loras": "add-detail-xl.safetensors"},
    ])  # fmt: skip
    report = run_batch(jobs, client=client, store=local_store, batch_id="bad", loras=resolver)
    errors = {r.id: r.error for r in report.results}
    assert "neither a catalog id nor a CivitAI / Hugging Face link" in errors["typo"]
    assert "no --comfy-root given" in errors["noroot"]
    assert "is a checkpoints file, not a LoRA" in errors["notlora"]
    assert errors["fine"] == ""
    assert len(fake.accepted) == 1


def test_resolver_uses_listed_names_without_any_store(
    fake: FakeComfyUI, client: ComfyClient
) -> None:
    resolver = LoraResolver(client)
    (resolved,) = resolver.resolve([LoraSpec("wan-motion.safetensors", 0.4, 0.9)])
    assert (resolved.name, resolved.strength_model, resolved.strength_clip) == (
        "wan-motion.safetensors",
        0.4,
        0.9,
    )
    assert resolved.pulled is False
