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
user's entries always belong to ``full`` and to the profiles they name. The word
``builtin`` in the list of paths stands for the catalog shipped with comfyfleet, so
``load_catalog(["builtin", "loras.yaml"])`` is the built-in catalog plus a user's file.
The object key of a model in a store is ``models/<folder>/<file>`` and its place on an
instance is ``<comfy_root>/models/<folder>/<file>``.

``size`` and ``sha256`` are facts that every transfer checks; when one is unknown it is
left out (never guessed) and the mirror takes it from the source. ``size_estimate`` is a
rough figure for the storage table only; it is never used to check bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from comfyfleet.comfy.folders import KNOWN_FOLDERS, http_folder
from comfyfleet.errors import CatalogError
from comfyfleet.store.uris import redact_uri

SCHEMA_VERSION = 1
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
# Profile names may also use capitals (a user's own grouping); no spaces or slashes.
PROFILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
HF_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")

# Stands for the catalog shipped with comfyfleet in a list of catalog paths.
BUILTIN_CATALOG = "builtin"


BUILTIN_PROFILES = ("minimal", "image", "video-24gb", "full")
AUTO_PROFILE = "auto"
FULL_PROFILE = "full"
FULL_DESCRIPTION = "every model of the loaded catalog files"
VERIFIED_STATES = ("verified-primary", "verified-secondary")
SOURCE_TYPES = ("hf", "civitai", "url", "s3")
_TOP_LEVEL_KEYS = ("schema", "models", "profiles")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _not_a_yaml_number(value: Any) -> Any:
    # YAML reads an all-digit hash or commit as a number (and drops leading zeros).
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError("was read as a number: quote it in the YAML ('...')")
    return value


class HFSource(_Strict):
    type: Literal["hf"]
    repo: str
    revision: str = "main"
    path: str

    _revision_text = field_validator("revision", mode="before")(_not_a_yaml_number)

    @property
    def pinned(self) -> bool:
        return bool(COMMIT_RE.fullmatch(self.revision))

    def describe(self) -> str:
        rev = self.revision[:12] if self.pinned else self.revision
        return f"hf://{self.repo}@{rev}/{self.path}"


_CIVITAI_MODEL_PATH = re.compile(r"^/models/(\d+)(?:/[^/]*)?/?$")
_CIVITAI_VERSION_PATHS = (
    re.compile(r"^/model-versions/(\d+)/?$"),
    re.compile(r"^/api/download/models/(\d+)/?$"),
    re.compile(r"^/api/v1/model-versions/(\d+)/?$"),
)
_CIVITAI_AIR = re.compile(r"^urn:air:[^:]+:[^:]+:civitai:(\d+)@(\d+)$")


def parse_civitai_url(url: str) -> tuple[int | None, int | None] | None:
    """``(model_id, version_id)`` of a CivitAI link, or None when it is not one.

    Understands page links (``/models/{id}[/{slug}][?modelVersionId={v}]``),
    ``/model-versions/{v}``, ``/api/download/models/{v}``, ``/api/v1/model-versions/{v}``
    and AIR ids (``urn:air:sdxl:lora:civitai:{id}@{v}``). Either id may be None.
    """
    air = _CIVITAI_AIR.match(url.strip())
    if air:
        return int(air.group(1)), int(air.group(2))
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("https", "http") or not (
        host == "civitai.com" or host.endswith(".civitai.com")
    ):
        return None
    version: int | None = None
    query = parse_qs(parts.query)
    if query.get("modelVersionId", [""])[0].isdigit():
        version = int(query["modelVersionId"][0])
    page = _CIVITAI_MODEL_PATH.match(parts.path)
    if page:
        return int(page.group(1)), version
    for pattern in _CIVITAI_VERSION_PATHS:
        hit = pattern.match(parts.path)
        if hit:
            return None, int(hit.group(1))
    return None


class CivitaiSource(_Strict):
    """A CivitAI model version; ``url`` may be any user-facing link form.

    When only ``url`` is given, ``model_id`` and ``version_id`` are read from it.
    """

    type: Literal["civitai"]
    version_id: int | None = None
    model_id: int | None = None
    url: str | None = None
    file_name: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _ids_from_url(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("url"), str):
            parsed = parse_civitai_url(data["url"])
            if parsed is not None:
                model_id, version_id = parsed
                data = dict(data)
                if data.get("model_id") is None and model_id is not None:
                    data["model_id"] = model_id
                if data.get("version_id") is None and version_id is not None:
                    data["version_id"] = version_id
        return data

    def describe(self) -> str:
        if self.version_id is not None:
            return f"civitai:version/{self.version_id}"
        url = redact_uri(self.url) if self.url else self.url
        return f"civitai:{url}"


class URLSource(_Strict):
    type: Literal["url"]
    url: str

    def describe(self) -> str:
        # The query may hold a token or a signature, the userinfo a password: never show them.
        return redact_uri(self.url.split("?", 1)[0])


class S3Source(_Strict):
    type: Literal["s3"]
    url: str  # s3://bucket/key

    def describe(self) -> str:
        return redact_uri(self.url)


Source = Annotated[HFSource | CivitaiSource | URLSource | S3Source, Field(discriminator="type")]


class ModelFile(_Strict):
    """One file ComfyUI loads, with the facts that prove it is the right one."""

    id: str
    folder: str
    file: str
    source: Source
    # Other places with the same bytes (same sha256), tried when ``source`` fails.
    alternates: tuple[Source, ...] = ()
    size: int | None = None
    # A rough size for the storage table when ``size`` is unknown; never checked.
    size_estimate: int | None = None
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

    _sha256_text = field_validator("sha256", mode="before")(_not_a_yaml_number)

    @field_validator("sha256")
    @classmethod
    def _sha256_lower(cls, v: str | None) -> str | None:
        # CivitAI reports hashes in upper case.
        return v.strip().lower() if v else v

    @property
    def key(self) -> str:
        """Object key in a store."""
        return f"models/{self.folder}/{self.file}"

    @property
    def rel_path(self) -> str:
        """Path under the ComfyUI root."""
        return f"models/{self.folder}/{self.file}"

    @property
    def planned_size(self) -> int | None:
        """``size`` when known, else ``size_estimate`` (storage planning only)."""
        return self.size if self.size is not None else self.size_estimate


class Profile(_Strict):
    description: str = ""
    models: tuple[str, ...] = ()
    min_vram_gb: float = 0
    # Profiles this one includes in full (e.g. image includes minimal).
    includes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProfileSummary:
    """One row of the storage table: what a profile holds and what it needs."""

    name: str
    description: str
    ids: tuple[str, ...]
    # Exact sizes plus estimates; ``estimated_ids`` and ``unknown_size_ids`` say how exact.
    total_bytes: int
    exact_bytes: int
    estimated_ids: tuple[str, ...]
    unknown_size_ids: tuple[str, ...]
    min_vram_gb: float

    @property
    def exact(self) -> bool:
        return not self.estimated_ids and not self.unknown_size_ids

    def as_dict(self) -> dict[str, Any]:
        return {
            "description": self.description,
            "models": list(self.ids),
            "count": len(self.ids),
            "total_bytes": self.total_bytes,
            "exact_bytes": self.exact_bytes,
            "estimated": list(self.estimated_ids),
            "unknown_size": list(self.unknown_size_ids),
            "min_vram_gb": self.min_vram_gb,
        }


class Catalog(BaseModel):
    """Models and profiles from one or more catalog files."""

    model_config = ConfigDict(frozen=False)

    models: dict[str, ModelFile] = Field(default_factory=dict)
    profiles: dict[str, Profile] = Field(default_factory=dict)
    sources: list[str] = Field(default_factory=list)
    # Files that define (or extend) each profile, for messages.
    profile_origins: dict[str, list[str]] = Field(default_factory=dict)
    # Entry problems found while parsing (bad fields, duplicate ids), kept by check=False.
    load_problems: list[str] = Field(default_factory=list)

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
        """Every profile: defined ones, ones entries name, and ``full``."""
        names = set(self.profiles) | {FULL_PROFILE}
        for model in self.models.values():
            names.update(model.profiles)
        names.discard(AUTO_PROFILE)
        return sorted(names)

    def require_profile(self, name: str, *, accept_auto: bool = False) -> None:
        """Refuse a profile name the catalog does not know. ``auto`` is listed in the hint
        only where the caller takes it (``warmup --profile``; mirror, ``catalog list`` and
        ``render dockerfile`` need a fixed list of models)."""
        if name == FULL_PROFILE or (accept_auto and name == AUTO_PROFILE):
            return
        if name in self.profiles or any(name in m.profiles for m in self.models.values()):
            return
        names = self.profile_names() + ([AUTO_PROFILE] if accept_auto else [])
        raise CatalogError(f"unknown profile {name!r}", hint=f"known profiles: {', '.join(names)}")

    def profile_ids(self, name: str) -> list[str]:
        """Model ids of profile ``name`` in catalog order (``full`` = every model)."""
        if name == FULL_PROFILE:
            return list(self.models)
        if name == AUTO_PROFILE:
            raise CatalogError(
                "profile 'auto' is chosen on the instance from its VRAM and free disk, "
                "it has no fixed list of models",
                hint=f"name a concrete profile ({', '.join(self.profile_names())}), "
                "or let `comfyfleet warmup --profile auto` choose",
            )
        self.require_profile(name)
        wanted: set[str] = set()
        self._collect(name, wanted, seen=set())
        return [mid for mid in self.models if mid in wanted]

    def _collect(self, name: str, wanted: set[str], seen: set[str]) -> None:
        if name in seen:
            return
        seen.add(name)
        if name == FULL_PROFILE:
            wanted.update(self.models)
            return
        profile = self.profiles.get(name)
        if profile is not None:
            wanted.update(profile.models)
            for inc in profile.includes:
                self._collect(inc, wanted, seen)
        wanted.update(mid for mid, m in self.models.items() if name in m.profiles)

    def select(self, *, profile: str | None = None, ids: Sequence[str] = ()) -> list[ModelFile]:
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

    def profiles_of(self, model_id: str) -> list[str]:
        """Names of the profiles that hold ``model_id`` (``full`` always among them)."""
        self.get(model_id)
        return [n for n in self.profile_names() if model_id in self.profile_ids(n)]

    def total_size(self, profile: str | None = None, *, ids: Sequence[str] = ()) -> int:
        """Bytes of the selection (every model when both are empty); estimates count too."""
        models = self.select(profile=profile, ids=ids) if (profile or ids) else self.models.values()
        return sum(m.planned_size or 0 for m in models)

    def summary(self, profile: str) -> ProfileSummary:
        """Count, bytes and VRAM floor of ``profile``: a row of the storage table."""
        models = self.select(profile=profile)
        defined = self.profiles.get(profile)
        if defined is not None and defined.description:
            description = defined.description
        elif profile == FULL_PROFILE:
            description = FULL_DESCRIPTION
        else:
            description = ""
        return ProfileSummary(
            name=profile,
            description=description,
            ids=tuple(m.id for m in models),
            total_bytes=sum(m.planned_size or 0 for m in models),
            exact_bytes=sum(m.size or 0 for m in models),
            estimated_ids=tuple(
                m.id for m in models if m.size is None and m.size_estimate is not None
            ),
            unknown_size_ids=tuple(m.id for m in models if m.planned_size is None),
            min_vram_gb=self.profile_min_vram(profile),
        )


def _field_name(loc: Sequence[int | str]) -> str:
    parts = [str(p) for p in loc]
    # A discriminated union puts its tag in the location (source.hf.repo): drop it.
    cleaned: list[str] = []
    for i, part in enumerate(parts):
        after_source = i > 0 and (
            parts[i - 1] == "source" or (i > 1 and parts[i - 2] == "alternates")
        )
        if after_source and part in SOURCE_TYPES:
            continue
        cleaned.append(part)
    return ".".join(cleaned) or "(entry)"


def _error_text(err: ErrorDetails) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "missing":
        return "is required but missing"
    if kind == "extra_forbidden":
        return "unknown field (check the spelling; see catalog/loras.example.yaml)"
    if kind == "union_tag_invalid":
        return f"unknown source type {ctx.get('tag')!r}; use one of {', '.join(SOURCE_TYPES)}"
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"])
    if kind == "union_tag_not_found":
        return f"needs a 'type' ({', '.join(SOURCE_TYPES)})"
    return str(err["msg"])


def _read_yaml(path: Path) -> dict[str, Any]:
    """The top-level mapping of one catalog file (file-level problems raise)."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CatalogError(
            f"catalog file {path} does not exist", hint="check the --catalog path"
        ) from None
    except IsADirectoryError:
        raise CatalogError(
            f"catalog file {path} is a directory", hint="pass the path of a .yaml file"
        ) from None
    except UnicodeDecodeError:
        raise CatalogError(
            f"catalog file {path} is not UTF-8 text", hint="save it as UTF-8 YAML"
        ) from None
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise CatalogError(
            f"{path}: not valid YAML: {detail}", hint="fix the YAML syntax"
        ) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise CatalogError(
            f"{path}: expected a mapping with 'models' (and optionally 'profiles')",
            hint="see catalog/loras.example.yaml for the format",
        )
    return raw


def _top_level_problems(path: Path, raw: dict[str, Any]) -> list[str]:
    problems = [
        f"{path}: field '{key}': unknown top-level key (expected {', '.join(_TOP_LEVEL_KEYS)})"
        for key in raw
        if key not in _TOP_LEVEL_KEYS
    ]
    schema = raw.get("schema", SCHEMA_VERSION)
    if schema != SCHEMA_VERSION:
        problems.append(
            f"{path}: field 'schema': unsupported schema {schema!r}; "
            f"this comfyfleet reads schema {SCHEMA_VERSION}"
        )
    return problems


def _parse_models(path: Path, raw: dict[str, Any], problems: list[str]) -> list[ModelFile]:
    """The file's valid entries; each invalid one adds its problems to ``problems``."""
    models: list[ModelFile] = []
    entries: Any = raw.get("models") or []
    if not isinstance(entries, list):
        raise CatalogError(f"{path}: 'models' must be a list", hint="write `models:` as a list")
    for index, entry in enumerate(entries):
        label = entry.get("id", f"#{index}") if isinstance(entry, dict) else f"#{index}"
        if not isinstance(entry, dict):
            problems.append(f"{path}: entry {label}: must be a mapping of field: value")
            continue
        try:
            models.append(ModelFile.model_validate({**entry, "origin": str(path)}))
        except ValidationError as exc:
            for err in exc.errors():
                problems.append(
                    f"{path}: entry {label}: field '{_field_name(err['loc'])}': {_error_text(err)}"
                )
    return models


def _parse_profile(where: str, pname: Any, pdata: Any, problems: list[str]) -> Profile | None:
    """One profile of a file, or None (with its problems added to ``problems``)."""
    if pname in (AUTO_PROFILE, FULL_PROFILE):
        problems.append(
            f"{where}: 'full' is reserved (it is {FULL_DESCRIPTION})"
            if pname == FULL_PROFILE
            else f"{where}: 'auto' is reserved (chosen on the instance from VRAM and disk)"
        )
        return None
    if not PROFILE_RE.match(str(pname)):
        problems.append(f"{where}: name must be letters, digits, '.', '_' or '-'")
        return None
    if not isinstance(pdata, dict | None):
        problems.append(
            f"{where}: must be a mapping, got a {type(pdata).__name__}; "
            f"write it as `{pname}: {{models: [id, ...]}}`"
        )
        return None
    try:
        return Profile.model_validate(pdata or {})
    except ValidationError as exc:
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "(profile)"
            problems.append(f"{where}: field '{field}': {_error_text(err)}")
        return None


def _parse_profiles(path: Path, raw: dict[str, Any], problems: list[str]) -> dict[str, Profile]:
    raw_profiles: Any = raw.get("profiles") or {}
    if not isinstance(raw_profiles, dict):
        problems.append(f"{path}: field 'profiles': must be a mapping of name -> profile")
        return {}
    profiles: dict[str, Profile] = {}
    for pname, pdata in raw_profiles.items():
        profile = _parse_profile(f"{path}: profile {pname}", pname, pdata, problems)
        if profile is not None:
            profiles[str(pname)] = profile
    return profiles


def _load_one(path: Path) -> tuple[list[ModelFile], dict[str, Profile], list[str]]:
    """One catalog file: its valid entries and profiles, and every problem found."""
    raw = _read_yaml(path)
    problems = _top_level_problems(path, raw)
    models = _parse_models(path, raw, problems)
    profiles = _parse_profiles(path, raw, problems)
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


def resolve_catalog_paths(paths: Iterable[str | Path] | None = None) -> list[Path]:
    """The files ``load_catalog`` reads: ``builtin`` resolved, the built-in one if empty."""
    files = [
        builtin_catalog_path() if str(p) == BUILTIN_CATALOG else Path(p) for p in (paths or [])
    ]
    return files or [builtin_catalog_path()]


def load_catalog(paths: Iterable[str | Path] | None = None, *, check: bool = True) -> Catalog:
    """Load and merge catalog files (the built-in one when ``paths`` is empty).

    ``builtin`` among ``paths`` stands for the built-in catalog. With ``check`` (the
    default) every problem is collected and raised as one ``CatalogError`` naming file,
    entry and field. Without it, file-level problems (missing file, bad YAML) still raise;
    entries that failed to parse are skipped and listed in ``catalog.load_problems``, and
    cross-entry checks are left to :func:`validate_catalog`.
    """
    files = resolve_catalog_paths(paths)
    catalog = Catalog(sources=[str(f) for f in files])
    problems: list[str] = []
    for path in files:
        models, profiles, found = _load_one(path)
        problems.extend(found)
        for model in models:
            if model.id in catalog.models:
                first = catalog.models[model.id].origin
                problems.append(
                    f"{path}: entry {model.id}: field 'id': duplicate id, "
                    f"already defined in {first}"
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
                    includes=old.includes
                    + tuple(i for i in profile.includes if i not in old.includes),
                )
            catalog.profiles[name] = profile
            catalog.profile_origins.setdefault(name, []).append(str(path))
    catalog.load_problems = problems
    if check:
        problems = problems + validate_catalog(catalog)
        if problems:
            raise CatalogError(
                f"{len(problems)} problem(s) in {', '.join(str(f) for f in files)}",
                problems=problems,
                hint="fix the entries named above; `comfyfleet catalog validate` re-checks",
            )
    return catalog


def _bad_relative_path(value: str) -> bool:
    parts = value.split("/")
    return (
        not value
        or value.startswith("/")
        or "\\" in value
        or any(p in ("", ".", "..") for p in parts)
        or any(ord(c) < 32 or ord(c) == 127 for c in value)
        or value != value.strip()
    )


def _hf_problems(where: str, field: str, src: HFSource) -> list[str]:
    out: list[str] = []
    if not HF_REPO_RE.match(src.repo):
        out.append(f"{where}: field '{field}.repo': {src.repo!r} is not an 'owner/name' repo id")
    if _bad_relative_path(src.path):
        out.append(
            f"{where}: field '{field}.path': {src.path!r} must be a file path inside the repo"
        )
    if not src.revision or any(c.isspace() for c in src.revision):
        out.append(f"{where}: field '{field}.revision': must be a 40-hex commit (or a branch name)")
    return out


def _civitai_problems(where: str, field: str, src: CivitaiSource) -> list[str]:
    out: list[str] = []
    if src.version_id is None and not src.url:
        out.append(f"{where}: field '{field}': civitai source needs version_id or url")
    if src.url:
        parsed = parse_civitai_url(src.url)
        if parsed is None:
            out.append(
                f"{where}: field '{field}.url': {src.url.split('?', 1)[0]!r} is not a CivitAI "
                "link (use https://civitai.com/models/<id>?modelVersionId=<version>)"
            )
        elif parsed[1] is not None and src.version_id not in (None, parsed[1]):
            out.append(
                f"{where}: field '{field}.version_id': {src.version_id} disagrees with the "
                f"url's version {parsed[1]}; keep one of them"
            )
    if src.version_id is not None and src.version_id <= 0:
        out.append(f"{where}: field '{field}.version_id': must be a positive number")
    return out


def _source_problems(
    where: str, field: str, src: HFSource | CivitaiSource | URLSource | S3Source
) -> list[str]:
    """Problems of one source (``field`` is ``source`` or ``alternates.<i>``)."""
    if isinstance(src, HFSource):
        return _hf_problems(where, field, src)
    if isinstance(src, CivitaiSource):
        return _civitai_problems(where, field, src)
    if isinstance(src, URLSource):
        if not src.url.startswith(("https://", "http://")):
            return [f"{where}: field '{field}.url': must start with https://"]
        return []
    if not src.url.startswith("s3://") or len(src.url) <= len("s3://"):
        return [f"{where}: field '{field}.url': must look like s3://bucket/key"]
    return []


def _name_problems(where: str, model: ModelFile) -> list[str]:
    """The entry's id, ComfyUI folder and file name."""
    out: list[str] = []
    if not ID_RE.match(model.id):
        out.append(f"{where}: field 'id': must be lowercase letters, digits, '.', '_' or '-'")
    if model.folder not in KNOWN_FOLDERS:
        out.append(
            f"{where}: field 'folder': unknown ComfyUI folder {model.folder!r} "
            f"(known: {', '.join(sorted(KNOWN_FOLDERS))})"
        )
    if _bad_relative_path(model.file):
        out.append(f"{where}: field 'file': {model.file!r} must be a relative path without '..'")
    return out


def _identity_problems(where: str, model: ModelFile) -> list[str]:
    """The entry's sha256, size, size estimate and VRAM need, and its verified claim."""
    out: list[str] = []
    if model.sha256 is not None and not SHA256_RE.match(model.sha256):
        out.append(
            f"{where}: field 'sha256': must be 64 hex characters, got {len(model.sha256)}"
            + ("" if len(model.sha256) != 64 else " with non-hex characters")
        )
    if model.size is not None and model.size <= 0:
        out.append(f"{where}: field 'size': must be a positive number of bytes")
    if model.size_estimate is not None:
        if model.size is not None:
            out.append(f"{where}: field 'size_estimate': drop it, the exact size is known")
        elif model.size_estimate <= 0:
            out.append(f"{where}: field 'size_estimate': must be a positive number")
    if model.min_vram_gb < 0:
        out.append(f"{where}: field 'min_vram_gb': must be 0 or more")
    if model.verified in VERIFIED_STATES:
        for fname, value in (("sha256", model.sha256), ("size", model.size)):
            if value is None:
                out.append(
                    f"{where}: field '{fname}': missing, but the entry is marked "
                    f"{model.verified}; add it or mark the entry unverified"
                )
    return out


def _entry_profile_problems(where: str, model: ModelFile) -> list[str]:
    """The profile names an entry lists."""
    out: list[str] = []
    for pname in model.profiles:
        if pname == AUTO_PROFILE:
            out.append(f"{where}: field 'profiles': 'auto' is chosen, not listed")
        elif not PROFILE_RE.match(pname):
            out.append(
                f"{where}: field 'profiles': {pname!r} must be letters, digits, '.', '_' or '-'"
            )
    return out


def _entry_problems(model: ModelFile) -> list[str]:
    """Every problem one entry has on its own (fields, sources, profile names)."""
    where = f"{model.origin}: entry {model.id}"
    out = _name_problems(where, model) + _identity_problems(where, model)
    out += _source_problems(where, "source", model.source)
    for i, alt in enumerate(model.alternates):
        out += _source_problems(where, f"alternates.{i}", alt)
    return out + _entry_profile_problems(where, model)


def _target_problems(catalog: Catalog) -> list[str]:
    """Entries that would write the same file (ComfyUI folders are case-insensitive here)."""
    out: list[str] = []
    targets: dict[str, ModelFile] = {}
    for model in catalog.models.values():
        other = targets.setdefault(model.key.lower(), model)
        if other is not model:
            out.append(
                f"{model.origin}: entry {model.id}: field 'file': writes {model.key}, the same "
                f"target as entry {other.id} ({other.origin}); rename one of them"
            )
    return out


def _profile_problems(catalog: Catalog, pname: str, profile: Profile) -> list[str]:
    """A profile's unknown model ids, unknown includes and VRAM need."""
    origin = ", ".join(catalog.profile_origins.get(pname, [])) or "(catalog)"
    where = f"{origin}: profile {pname}"
    out = [
        f"{where}: field 'models': unknown model id {mid!r}"
        for mid in profile.models
        if mid not in catalog.models
    ]
    for inc in profile.includes:
        if inc not in catalog.profiles and inc != FULL_PROFILE:
            extra = (
                f" (it is built in: add `--catalog {BUILTIN_CATALOG}`)"
                if inc in BUILTIN_PROFILES
                else ""
            )
            out.append(f"{where}: field 'includes': unknown profile {inc!r}{extra}")
    if profile.min_vram_gb < 0:
        out.append(f"{where}: field 'min_vram_gb': must be 0 or more")
    return out


def validate_catalog(catalog: Catalog) -> list[str]:
    """Every cross-entry and field problem, one line each (empty list = valid).

    Per entry (in catalog order): name, identity, sources, profile names; then entries
    sharing a target file; then each profile.
    """
    problems: list[str] = []
    for model in catalog.models.values():
        problems += _entry_problems(model)
    problems += _target_problems(catalog)
    for pname, profile in catalog.profiles.items():
        problems += _profile_problems(catalog, pname, profile)
    return problems


def catalog_warnings(catalog: Catalog) -> list[str]:
    """Things that are allowed but worth knowing (unpinned revisions, unknown hashes)."""
    warnings: list[str] = []
    by_name: dict[str, ModelFile] = {}
    builtin_loaded = _builtin_loaded(catalog)
    for model in catalog.models.values():
        where = f"{model.origin}: entry {model.id}"
        src = model.source
        if isinstance(src, HFSource) and not src.pinned:
            warnings.append(
                f"{where}: field 'source.revision': {src.revision!r} is a branch, not a commit; "
                "upstream may change the file"
                + (" (the sha256 pin catches that)" if model.sha256 else "")
            )
        if isinstance(src, CivitaiSource) and src.version_id is None:
            warnings.append(
                f"{where}: field 'source.url': names no model version; the latest version is "
                "mirrored (add ?modelVersionId=... to pin one)"
            )
        if model.sha256 is None:
            warnings.append(
                f"{where}: field 'sha256': unknown; the mirror takes it from the source"
            )
        # ComfyUI lists unet/ with diffusion_models/ and clip/ with text_encoders/.
        shown = f"{http_folder(model.folder)}/{model.file}".lower()
        other = by_name.get(shown)
        if other is not None and other.folder != model.folder:
            warnings.append(
                f"{where}: field 'folder': ComfyUI lists {model.folder}/{model.file} and "
                f"{other.folder}/{other.file} (entry {other.id}) under one name; rename one"
            )
        by_name.setdefault(shown, model)
        if not builtin_loaded:
            for pname in model.profiles:
                if pname in BUILTIN_PROFILES and pname not in catalog.profiles and pname != "full":
                    warnings.append(
                        f"{where}: field 'profiles': {pname!r} here holds only this file's "
                        f"entries; pass `--catalog {BUILTIN_CATALOG}` too to join the built-in one"
                    )
    return warnings


def _builtin_loaded(catalog: Catalog) -> bool:
    try:
        builtin = builtin_catalog_path().resolve()
    except CatalogError:
        return False
    return any(Path(src).resolve() == builtin for src in catalog.sources)
