"""LoRAs on demand: make a job's LoRA loadable by ComfyUI before its prompt is queued.

A job names a LoRA as a file ComfyUI already lists, a catalog id, or a CivitAI / Hugging
Face link. :class:`LoraResolver` turns each into the ``lora_name`` ComfyUI accepts:

1. listed by ComfyUI (``/models/loras``) -> used as is, nothing else happens;
2. a catalog id -> its catalog entry; a link -> resolved by its source (file name, size,
   sha256, pinned revision) into an entry of folder ``loras``;
3. not in the object store yet -> mirrored (``mirror.mirror_file``, sha256-verified) and
   recorded in the manifest;
4. pulled into ``<comfy_root>/models/loras`` (``transfer.pull``: verified, atomic);
5. ComfyUI's model list refreshed and checked to list the file.

Steps 3-5 need the store and ``comfy_root`` (ComfyUI's folder on this machine); without
them a LoRA that is not listed fails with a message saying so. Each distinct reference is
resolved once per resolver (thread-safe); transient failures are not remembered, so a
retry tries again.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from comfyfleet.catalog import ID_RE, Catalog, CivitaiSource, ModelFile
from comfyfleet.comfy.workflows import LoraSpec
from comfyfleet.errors import ComfyError, ComfyfleetError, ConfigError, TransientError
from comfyfleet.store.base import ObjectStore

if TYPE_CHECKING:
    from comfyfleet.pull.transfer import PullSettings
    from comfyfleet.sources import Tokens
    from comfyfleet.store.manifest import ManifestEntry

LORA_FOLDER = "loras"


class ModelLister(Protocol):
    """What the resolver needs from the ComfyUI client."""

    def list_models(self, folder: str) -> list[str]: ...

    def refresh_models(
        self, *, expect: Mapping[str, Iterable[str]] | None = None, timeout: float = 10.0
    ) -> None: ...


@dataclass(frozen=True)
class ResolvedLora:
    """A LoRA ComfyUI lists, with the strengths the job asked for."""

    name: str
    strength_model: float
    strength_clip: float
    ref: str
    pulled: bool = False


def is_link(ref: str) -> bool:
    return ref.startswith(("https://", "http://", "urn:air:"))


def _default_id(file_name: str) -> str:
    stem = file_name.rsplit(".", 1)[0] if "." in file_name else file_name
    slug = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._")
    return slug or "lora"


def lora_entry(
    link: str, tokens: Tokens | None = None, *, entry_id: str | None = None
) -> dict[str, Any]:
    """The catalog entry (plain data) for the LoRA ``link`` points at, pinned: the exact
    Hugging Face revision or CivitAI version and file, with size and sha256 where the
    source tells them. ``entry_id`` defaults to a slug of the file name."""
    from comfyfleet.sources import parse_link, resolve, sanitize_file_name

    source = parse_link(link)
    if isinstance(source, CivitaiSource):
        from comfyfleet.sources.civitai import inspect_civitai

        choice = inspect_civitai(source, tokens)
        file_name = choice.file_name
        pinned: dict[str, Any] = {"type": "civitai"}
        if choice.model_id is not None:
            pinned["model_id"] = choice.model_id
        pinned.update(version_id=choice.version_id, file_name=choice.file_name)
        sha256, size = choice.sha256, None
        name = " ".join(p for p in (choice.model_name, choice.version_name) if p) or None
    else:
        placeholder = ModelFile(
            id="lora", folder=LORA_FOLDER, file="pending.safetensors", source=source
        )
        plan = resolve(placeholder, tokens)
        file_name = sanitize_file_name(plan.file_name) or ""
        pinned = {
            "type": "hf",
            "repo": source.repo,
            "revision": plan.revision or source.revision,
            "path": source.path,
        }
        sha256, size = plan.sha256, plan.size
        name = f"{source.repo}/{source.path}"
    if not file_name:
        raise ConfigError(
            f"{link.split('?', 1)[0]}: the source names no usable file name",
            hint="add the LoRA to the catalog by hand with an explicit 'file'",
        )
    model_id = entry_id or _default_id(file_name)
    if not ID_RE.match(model_id):
        raise ConfigError(
            f"invalid id {model_id!r}: use lowercase letters, digits, '.', '_' or '-'",
            hint="pass --id with a valid id",
        )
    entry: dict[str, Any] = {"id": model_id}
    if name:
        entry["name"] = name
    entry.update(kind="lora", folder=LORA_FOLDER, file=file_name)
    if size is not None:
        entry["size"] = size
    if sha256:
        entry["sha256"] = sha256.lower()
    entry.update(source=pinned, verified="user", profiles=[])
    return entry


class LoraResolver:
    """Resolve, mirror, pull and register LoRAs; see the module docstring."""

    def __init__(
        self,
        client: ModelLister,
        *,
        store: ObjectStore | None = None,
        comfy_root: Path | None = None,
        catalog: Catalog | None = None,
        tokens: Tokens | None = None,
        pull_settings: PullSettings | None = None,
        model_from_link: Callable[[str], ModelFile] | None = None,
    ) -> None:
        self._client = client
        self._store = store
        self._root = comfy_root
        self._catalog = catalog
        self._tokens = tokens
        self._pull_settings = pull_settings
        self._from_link = model_from_link or self._model_from_link
        self._lock = threading.Lock()
        self._names: dict[str, tuple[str, bool]] = {}
        self._failures: dict[str, ComfyfleetError] = {}
        self._listed: set[str] | None = None
        self.pulled: list[str] = []

    def resolve(self, refs: Sequence[LoraSpec]) -> list[ResolvedLora]:
        """ComfyUI names for ``refs`` (each ``name`` a listed file, a catalog id or a link),
        pulling what is missing (serialised)."""
        out: list[ResolvedLora] = []
        for ref in refs:
            name, pulled = self._name_for(ref.name)
            out.append(ResolvedLora(name, ref.strength_model, ref.strength_clip, ref.name, pulled))
        return out

    # ------------------------------------------------------------ internals

    def _name_for(self, ref: str) -> tuple[str, bool]:
        with self._lock:
            if ref in self._names:
                return self._names[ref]
            if ref in self._failures:
                raise self._failures[ref]
            try:
                found = self._resolve(ref)
            except ComfyfleetError as exc:
                if not isinstance(exc, TransientError):
                    self._failures[ref] = exc
                raise
            self._names[ref] = found
            return found

    def _list(self, *, fresh: bool = False) -> set[str]:
        if fresh or self._listed is None:
            self._listed = set(self._client.list_models(LORA_FOLDER))
        return self._listed

    def _resolve(self, ref: str) -> tuple[str, bool]:
        if ref in self._list():
            return ref, False
        model = self._model_for(ref)
        if model.folder != LORA_FOLDER:
            raise ConfigError(
                f"LoRA {ref!r}: catalog entry {model.id} is a {model.folder} file, not a LoRA",
                hint="name an entry whose folder is 'loras'",
            )
        if model.file in self._list():
            return model.file, False
        if self._root is None or self._store is None:
            raise ConfigError(
                f"LoRA {ref!r} ({model.file}) is not on this ComfyUI and cannot be pulled: "
                + ("no --comfy-root given" if self._root is None else "no store configured"),
                hint="pass --comfy-root DIR (the ComfyUI folder whose models/loras ComfyUI "
                "reads) and --store, or put the file there yourself",
            )
        entry = self._ensure_mirrored(model)
        self._pull(entry)
        try:
            # ComfyUI re-scans a folder whose mtime changed; give it a moment to list the file.
            self._client.refresh_models(expect={LORA_FOLDER: [model.file]}, timeout=10.0)
        except ComfyError as exc:
            if isinstance(exc, TransientError):
                raise
            # Not listed in time: reported below with what to check.
        if model.file not in self._list(fresh=True):
            raise ConfigError(
                f"LoRA {ref!r}: {model.file} was placed in {self._root / 'models' / LORA_FOLDER} "
                "but ComfyUI does not list it",
                hint="check that --comfy-root is the folder this ComfyUI serves models from "
                "(or its extra_model_paths.yaml)",
            )
        self.pulled.append(model.file)
        return model.file, True

    def _model_for(self, ref: str) -> ModelFile:
        if is_link(ref):
            return self._from_link(ref)
        if self._catalog is not None and ref in self._catalog.models:
            return self._catalog.get(ref)
        raise ConfigError(
            f"LoRA {ref!r} is not listed by ComfyUI (models/loras) and is neither a catalog id "
            "nor a CivitAI / Hugging Face link",
            hint="use a file name ComfyUI lists, an id from your loras catalog (--catalog), "
            "or a link such as https://civitai.com/models/<id>?modelVersionId=<version>",
        )

    def _model_from_link(self, link: str) -> ModelFile:
        entry = lora_entry(link, self._tokens)
        # An id of its own per link, so two links to same-named files never collide.
        digest = hashlib.sha256(link.encode()).hexdigest()[:8]
        stem = re.sub(r"[^a-z0-9._-]+", "-", Path(entry["file"]).stem.lower()).strip("-.")
        entry["id"] = f"lora-{stem or 'lora'}-{digest}"
        return ModelFile.model_validate(entry)

    def _ensure_mirrored(self, model: ModelFile) -> ManifestEntry:
        from comfyfleet.mirror.driver import mirror_file
        from comfyfleet.sources import Tokens
        from comfyfleet.store.manifest import update_manifest

        assert self._store is not None
        tokens = self._tokens if self._tokens is not None else Tokens.from_env()
        result = mirror_file(model, self._store, tokens=tokens)
        if result.entry is None:
            raise ComfyfleetError(
                f"LoRA {model.id}: the mirror recorded no sha256 for {model.key}",
                hint="pin the LoRA's sha256 in its catalog entry",
            )
        if result.status == "mirrored":
            update_manifest(self._store, [result.entry])
        return result.entry

    def _pull(self, entry: ManifestEntry) -> None:
        from comfyfleet.pull.transfer import plan_pull, pull

        assert self._store is not None and self._root is not None
        items = plan_pull([entry], self._root)
        report = pull(items, self._store, settings=self._pull_settings)
        report.raise_for_failures()
