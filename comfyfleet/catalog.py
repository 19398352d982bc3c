"""The model catalog: which files exist, where they come from, where ComfyUI wants them.

A catalog file is YAML::

    schema: 1
    models:
      - id: sdxl-base-1.0
        folder: checkpoints                   # ComfyUI folder under models/
        file: sd_xl_base_1.0.safetensors      # may hold sub-folders (CogVideo/...)
        size: 6938078334
        sha256: 31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b
        source: {type: hf, repo: stabilityai/stable-diffusion-xl-base-1.0,
                 revision: <40-hex commit>, path: sd_xl_base_1.0.safetensors}
        tier: must
        min_vram_gb: 8
        profiles: [minimal, image]
    profiles:
      minimal: {description: ..., models: [sdxl-base-1.0, sdxl-vae-fp16-fix]}

Several files combine (``load_catalog([a, b])``): later files add models and profiles; a
user's entries always belong to ``full`` and to the profiles they name. The object key of a
model in a store is ``models/<folder>/<file>`` and its place on an instance is
``<comfy_root>/models/<folder>/<file>``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from comfyfleet.errors import CatalogError

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")

# ComfyUI's standard model folders (folder_paths.py) plus those the video custom nodes add.
KNOWN_FOLDERS = frozenset(
    {
        "checkpoints",
        "vae",
        "loras",
        "diffusion_models",
        "unet",
        "text_encoders",
        "clip",
        "clip_vision",
        "controlnet",
        "upscale_models",
        "embeddings",
        "vae_approx",
        "style_models",
        "hypernetworks",
        "photomaker",
        "gligen",
        "diffusers",
        "model_patches",
        "audio_encoders",
        "animatediff_models",
        "animatediff_motion_lora",
        "CogVideo",
        "LLM",
    }
)

BUILTIN_PROFILES = ("minimal", "image", "video-24gb", "full")
AUTO_PROFILE = "auto"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HFSource(_Strict):
    type: Literal["hf"]
    repo: str
    revision: str = "main"
    path: str

    @property
    def pinned(self) -> bool:
        return bool(re.fullmatch(r"[0-9a-f]{40}", self.revision))

    def describe(self) -> str:
        return f"hf://{self.repo}@{self.revision[:12]}/{self.path}"


class CivitaiSource(_Strict):
    """A CivitAI model version; ``url`` may be any user-facing link form."""

    type: Literal["civitai"]
    version_id: int | None = None
    model_id: int | None = None
    url: str | None = None
    file_name: str | None = None

    def describe(self) -> str:
        if self.version_id is not None:
            return f"civitai:version/{self.version_id}"
        return f"civitai:{self.url}"


class URLSource(_Strict):
    type: Literal["url"]
    url: str

    def describe(self) -> str:
        return self.url.split("?", 1)[0]


class S3Source(_Strict):
    type: Literal["s3"]
    url: str  # s3://bucket/key

    def describe(self) -> str:
        return self.url


Source = Annotated[HFSource | CivitaiSource | URLSource | S3Source, Field(discriminator="type")]


class ModelFile(_Strict):
    """One file ComfyUI loads, with the facts that prove it is the right one."""

    id: str
    folder: str
    file: str
    source: Source
    size: int | None = None
    sha256: str | None = None
    name: str | None = None
    kind: str | None = None
    tier: Literal["must", "should", "optional"] = "optional"
    min_vram_gb: float = 0
    gated: bool = False
    license: str | None = None
    verified: Literal["verified-primary", "verified-secondary", "unverified", "user"] = "user"
    notes: str | None = None
    profiles: tuple[str, ...] = ()
    # Where the entry came from (set by the loader, not by the file).
    origin: str = ""

    @field_validator("sha256")
    @classmethod
    def _sha256_lower(cls, v: str | None) -> str | None:
        return v.lower() if v else v

    @property
    def key(self) -> str:
        """Object key in a store."""
        return f"models/{self.folder}/{self.file}"

    @property
    def rel_path(self) -> str:
        """Path under the ComfyUI root."""
        return f"models/{self.folder}/{self.file}"


class Profile(_Strict):
    description: str = ""
    models: tuple[str, ...] = ()
    min_vram_gb: float = 0
    # Profiles this one includes in full (e.g. image includes minimal).
    includes: tuple[str, ...] = ()


class Catalog(BaseModel):
    """Models and profiles from one or more catalog files."""

    model_config = ConfigDict(frozen=False)

    models: dict[str, ModelFile] = Field(default_factory=dict)
    profiles: dict[str, Profile] = Field(default_factory=dict)
    sources: list[str] = Field(default_factory=list)

    def get(self, model_id: str) -> ModelFile:
        try:
            return self.models[model_id]
        except KeyError:
            raise CatalogError(
                f"unknown model id {model_id!r}",
                hint=f"known ids: {', '.join(sorted(self.models)) or '(none)'}; "
                "see `comfyfleet catalog list`",
            ) from None

    def profile_names(self) -> list[str]:
        names = set(self.profiles) | {"full"}
        return sorted(names)

    def profile_ids(self, name: str) -> list[str]:
        """Model ids of profile ``name`` in catalog order (``full`` = every model)."""
        if name == "full":
            return list(self.models)
        if name not in self.profiles and not any(name in m.profiles for m in self.models.values()):
            raise CatalogError(
                f"unknown profile {name!r}",
                hint=f"known profiles: {', '.join(self.profile_names())}, auto",
            )
        wanted: set[str] = set()
        self._collect(name, wanted, seen=set())
        return [mid for mid in self.models if mid in wanted]

    def _collect(self, name: str, wanted: set[str], seen: set[str]) -> None:
        if name in seen:
            return
        seen.add(name)
        if name == "full":
            wanted.update(self.models)
            return
        profile = self.profiles.get(name)
        if profile is not None:
            wanted.update(profile.models)
            for inc in profile.includes:
                self._collect(inc, wanted, seen)
        wanted.update(mid for mid, m in self.models.items() if name in m.profiles)

    def select(
        self, *, profile: str | None = None, ids: Sequence[str] = ()
    ) -> list[ModelFile]:
        """Models of ``profile`` plus ``ids``, no duplicates, catalog order."""
        chosen: list[str] = []
        if profile:
            chosen.extend(self.profile_ids(profile))
        for mid in ids:
            self.get(mid)
            if mid not in chosen:
                chosen.append(mid)
        return [self.models[mid] for mid in chosen]

    def profile_min_vram(self, name: str) -> float:
        models = self.select(profile=name)
        floor = self.profiles[name].min_vram_gb if name in self.profiles else 0
        return max([floor, *(m.min_vram_gb for m in models)])


def _load_one(path: Path) -> tuple[list[ModelFile], dict[str, Profile], list[str]]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CatalogError(
            f"catalog file {path} does not exist", hint="check the --catalog path"
        ) from None
    except yaml.YAMLError as exc:
        raise CatalogError(f"{path}: not valid YAML: {exc}", hint="fix the YAML syntax") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise CatalogError(
            f"{path}: expected a mapping with 'models' (and optionally 'profiles')",
            hint="see catalog/loras.example.yaml for the format",
        )
    problems: list[str] = []
    models: list[ModelFile] = []
    entries: Any = raw.get("models") or []
    if not isinstance(entries, list):
        raise CatalogError(f"{path}: 'models' must be a list", hint="write `models:` as a list")
    for index, entry in enumerate(entries):
        label = entry.get("id", f"#{index}") if isinstance(entry, dict) else f"#{index}"
        if not isinstance(entry, dict):
            problems.append(f"{path}: entry {label}: must be a mapping")
            continue
        try:
            models.append(ModelFile.model_validate({**entry, "origin": str(path)}))
        except ValidationError as exc:
            for err in exc.errors():
                field = ".".join(str(p) for p in err["loc"]) or "(entry)"
                problems.append(f"{path}: entry {label}: field '{field}': {err['msg']}")
    profiles: dict[str, Profile] = {}
    raw_profiles: Any = raw.get("profiles") or {}
    if not isinstance(raw_profiles, dict):
        problems.append(f"{path}: 'profiles' must be a mapping of name -> profile")
        raw_profiles = {}
    for pname, pdata in raw_profiles.items():
        try:
            profiles[str(pname)] = Profile.model_validate(pdata or {})
        except ValidationError as exc:
            for err in exc.errors():
                field = ".".join(str(p) for p in err["loc"]) or "(profile)"
                problems.append(f"{path}: profile {pname}: field '{field}': {err['msg']}")
    return models, profiles, problems


def builtin_catalog_path() -> Path:
    """``catalog/models.yaml`` of this checkout, or the copy shipped in the package."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "catalog" / "models.yaml", here / "data" / "models.yaml"):
        if candidate.is_file():
            return candidate
    raise CatalogError(
        "the built-in catalog (catalog/models.yaml) is missing from this install",
        hint="reinstall comfyfleet, or pass --catalog PATH",
    )


def load_catalog(paths: Iterable[str | Path] | None = None, *, check: bool = True) -> Catalog:
    """Load and merge catalog files (the built-in one when ``paths`` is empty).

    With ``check`` (the default) every problem is collected and raised as one
    ``CatalogError`` naming file, entry and field.
    """
    files = [Path(p) for p in (paths or [])] or [builtin_catalog_path()]
    catalog = Catalog(sources=[str(f) for f in files])
    problems: list[str] = []
    for path in files:
        models, profiles, found = _load_one(path)
        problems.extend(found)
        for model in models:
            if model.id in catalog.models:
                first = catalog.models[model.id].origin
                problems.append(
                    f"{path}: entry {model.id}: field 'id': duplicate id, already defined in {first}"
                )
                continue
            catalog.models[model.id] = model
        for name, profile in profiles.items():
            if name in catalog.profiles:
                old = catalog.profiles[name]
                profile = Profile(
                    description=old.description or profile.description,
                    models=old.models + tuple(m for m in profile.models if m not in old.models),
                    min_vram_gb=max(old.min_vram_gb, profile.min_vram_gb),
                    includes=old.includes + profile.includes,
                )
            catalog.profiles[name] = profile
    if check:
        problems.extend(validate_catalog(catalog))
        if problems:
            raise CatalogError(
                f"{len(problems)} problem(s) in {', '.join(str(f) for f in files)}",
                problems=problems,
                hint="fix the entries named above; `comfyfleet catalog validate` re-checks",
            )
    return catalog


def validate_catalog(catalog: Catalog) -> list[str]:
    """Every cross-entry and field problem, one line each (empty list = valid)."""
    problems: list[str] = []
    targets: dict[str, ModelFile] = {}
    for model in catalog.models.values():
        where = f"{model.origin}: entry {model.id}"
        if not ID_RE.match(model.id):
            problems.append(
                f"{where}: field 'id': must be lowercase letters, digits, '.', '_' or '-'"
            )
        if model.folder not in KNOWN_FOLDERS:
            problems.append(
                f"{where}: field 'folder': unknown ComfyUI folder {model.folder!r} "
                f"(known: {', '.join(sorted(KNOWN_FOLDERS))})"
            )
        file_parts = model.file.split("/")
        if (
            not model.file
            or model.file.startswith("/")
            or "\\" in model.file
            or any(p in ("", ".", "..") for p in file_parts)
        ):
            problems.append(
                f"{where}: field 'file': {model.file!r} must be a relative path without '..'"
            )
        if model.sha256 is not None and not SHA256_RE.match(model.sha256):
            problems.append(
                f"{where}: field 'sha256': must be 64 hex characters, got {len(model.sha256)}"
            )
        if model.size is not None and model.size <= 0:
            problems.append(f"{where}: field 'size': must be a positive number of bytes")
        src = model.source
        if isinstance(src, HFSource) and (not src.repo or not src.path):
            problems.append(f"{where}: field 'source': hf source needs repo and path")
        if isinstance(src, CivitaiSource) and src.version_id is None and not src.url:
            problems.append(f"{where}: field 'source': civitai source needs version_id or url")
        if isinstance(src, URLSource) and not src.url.startswith(("https://", "http://")):
            problems.append(f"{where}: field 'source.url': must start with https://")
        if isinstance(src, S3Source) and not src.url.startswith("s3://"):
            problems.append(f"{where}: field 'source.url': must start with s3://")
        target = model.key.lower()
        if target in targets:
            other = targets[target]
            problems.append(
                f"{where}: field 'file': writes {model.key}, the same target as entry "
                f"{other.id} ({other.origin}); rename one of them"
            )
        else:
            targets[target] = model
        for pname in model.profiles:
            if pname == AUTO_PROFILE:
                problems.append(f"{where}: field 'profiles': 'auto' is chosen, not listed")
    for pname, profile in catalog.profiles.items():
        for mid in profile.models:
            if mid not in catalog.models:
                problems.append(f"profile {pname}: field 'models': unknown model id {mid!r}")
        for inc in profile.includes:
            if inc not in catalog.profiles and inc != "full":
                problems.append(f"profile {pname}: field 'includes': unknown profile {inc!r}")
    return problems
