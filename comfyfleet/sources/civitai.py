"""CivitAI: the v1 JSON API for facts, the download endpoint for bytes (sources-api.md B).

``resolve`` never touches the download endpoint (every hit there counts as a download and
against the rate limit): it reads ``GET {base}/api/v1/model-versions/{id}`` (after
``/api/v1/models/{id}`` when only a model id is known, or ``.../by-hash/{hash}``), picks
the file, and plans ``{base}/api/download/models/{version}?fileId={file}`` with
``Authorization: Bearer <token>``. ``open_stream`` follows its 307 to the storage host
without the header and reads the real file name from ``Content-Disposition``.

``base`` is ``CIVITAI_BASE_URL`` (default ``https://civitai.com``), read at call time;
links on civitai.red/.green/.blue resolve through it too (same API, same ids).
``sizeKB`` is only approximate (``approx_size``); ``hashes.SHA256`` is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from comfyfleet.catalog import CivitaiSource, ModelFile
from comfyfleet.config import env
from comfyfleet.errors import SourceNotFound, SourceProtocolError
from comfyfleet.files import is_sha256
from comfyfleet.sources.base import DownloadPlan, Tokens, Upstream, sanitize_file_name
from comfyfleet.sources.http import ErrorContext, client_or_new, get_json
from comfyfleet.sources.links import CivitaiRef, parse_civitai_ref

DEFAULT_BASE_URL = "https://civitai.com"

# Model types (v1 ``model.type``) and file types (``files[].type``) -> ComfyUI folder.
_MODEL_TYPE_FOLDERS = {
    "checkpoint": "checkpoints",
    "lora": "loras",
    "locon": "loras",
    "dora": "loras",
    "lycoris": "loras",
    "textualinversion": "embeddings",
    "hypernetwork": "hypernetworks",
    "controlnet": "controlnet",
    "upscaler": "upscale_models",
    "vae": "vae",
    "motionmodule": "animatediff_models",
}
_FILE_TYPE_FOLDERS = {
    "vae": "vae",
    "text encoder": "text_encoders",
    "unet": "diffusion_models",
    "diffusion model": "diffusion_models",
    "clipvision": "clip_vision",
    "controlnet": "controlnet",
    "upscaler": "upscale_models",
    "negative": "embeddings",
}


def civitai_base_url() -> str:
    return (env("CIVITAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")


def comfy_folder_for(model_type: str | None, file_type: str | None = None) -> str | None:
    """The ComfyUI models/ folder for a CivitAI model type and file type, if one fits."""
    if file_type and file_type.lower() in _FILE_TYPE_FOLDERS:
        return _FILE_TYPE_FOLDERS[file_type.lower()]
    if model_type:
        return _MODEL_TYPE_FOLDERS.get(model_type.lower().replace(" ", ""))
    return None


@dataclass(frozen=True)
class CivitaiChoice:
    """One file of one CivitAI version, as the v1 API describes it."""

    model_id: int | None
    model_name: str
    model_type: str
    version_id: int
    version_name: str
    base_model: str
    file_id: int
    file_name: str  # sanitised
    file_type: str
    sha256: str | None  # lowercase
    approx_size: int | None
    primary: bool
    air: str | None

    @property
    def folder(self) -> str | None:
        """The ComfyUI folder this file belongs in (``loras`` for a LoRA, ...)."""
        return comfy_folder_for(self.model_type, self.file_type)

    @property
    def label(self) -> str:
        return f"civitai:version/{self.version_id}/file/{self.file_id}"


def _headers(tokens: Tokens) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens.civitai}"} if tokens.civitai else {}


def _ctx(label: str, tokens: Tokens) -> ErrorContext:
    secrets = (tokens.civitai,) if tokens.civitai else ()
    return ErrorContext(label, "civitai", bool(tokens.civitai), None, secrets)


def _ref(source: CivitaiSource) -> CivitaiRef:
    ref = parse_civitai_ref(source.url) if source.url else CivitaiRef()
    return CivitaiRef(
        model_id=source.model_id if source.model_id is not None else ref.model_id,
        version_id=source.version_id if source.version_id is not None else ref.version_id,
        params=ref.params,
        by_hash=ref.by_hash,
    )


def fetch_model(model_id: int, tokens: Tokens, client: httpx.Client, base: str) -> dict[str, Any]:
    label = f"civitai:model/{model_id}"
    data = get_json(
        client, f"{base}/api/v1/models/{model_id}", _headers(tokens), _ctx(label, tokens)
    )
    if not isinstance(data, dict):
        raise SourceProtocolError(
            f"{label}: the API answered {type(data).__name__}, not an object",
            source=label,
            hint="retry later",
        )
    return data


def fetch_version(
    version_id: int | None,
    tokens: Tokens,
    client: httpx.Client,
    base: str,
    *,
    by_hash: str | None = None,
) -> dict[str, Any]:
    if by_hash is not None:
        label = f"civitai:hash/{by_hash}"
        url = f"{base}/api/v1/model-versions/by-hash/{quote(by_hash)}"
    else:
        label = f"civitai:version/{version_id}"
        url = f"{base}/api/v1/model-versions/{version_id}"
    data = get_json(client, url, _headers(tokens), _ctx(label, tokens))
    if not isinstance(data, dict) or not isinstance(data.get("id"), int):
        raise SourceProtocolError(
            f"{label}: the API answered without a version id", source=label, hint="retry later"
        )
    return data


def latest_version_of(model: dict[str, Any], label: str) -> int:
    """The newest published version: the API lists ``modelVersions`` newest first."""
    versions = [v for v in model.get("modelVersions") or [] if isinstance(v, dict)]
    ids = [v["id"] for v in versions if isinstance(v.get("id"), int)]
    if not ids:
        raise SourceNotFound(
            f"{label}: the model has no published version",
            source=label,
            hint="pick another model or pin a version id",
        )
    return int(ids[0])


def civitai_latest_version(
    model_id: int, tokens: Tokens | None = None, *, http: httpx.Client | None = None
) -> int:
    tokens = Tokens.from_env() if tokens is None else tokens
    with client_or_new(http) as client:
        model = fetch_model(model_id, tokens, client, civitai_base_url())
    return latest_version_of(model, f"civitai:model/{model_id}")


def _choose_file(
    version: dict[str, Any], ref: CivitaiRef, file_name: str | None, label: str
) -> dict[str, Any]:
    files = [f for f in version.get("files") or [] if isinstance(f, dict)]
    if not files:
        raise SourceNotFound(
            f"{label}: the version lists no downloadable file (archived or removed?)",
            source=label,
            hint="pick another version",
        )
    listing = ", ".join(f"{f.get('name')} (id {f.get('id')}, {f.get('type')})" for f in files)
    if ref.file_id is not None:
        hit = [f for f in files if f.get("id") == ref.file_id]
        if not hit:
            raise SourceNotFound(
                f"{label}: no file with id {ref.file_id}; files: {listing}",
                source=label,
                hint="fix fileId in the link",
            )
        return hit[0]
    if file_name:
        wanted = file_name.lower()
        hit = [
            f
            for f in files
            if str(f.get("name", "")).lower() == wanted
            or (sanitize_file_name(str(f.get("name", ""))) or "").lower() == wanted
        ]
        if not hit:
            raise SourceNotFound(
                f"{label}: no file named {file_name!r}; files: {listing}",
                source=label,
                hint="fix source.file_name in the catalog",
            )
        return hit[0]
    params = ref.params
    candidates = files
    if params.get("type"):
        candidates = [f for f in candidates if f.get("type") == params["type"]]
    for key in ("format", "size", "fp", "quantType"):
        if params.get(key):
            candidates = [
                f
                for f in candidates
                if str((f.get("metadata") or {}).get(key, "")).lower() == params[key].lower()
            ]
    if not candidates:
        wanted_params = ", ".join(f"{k}={v}" for k, v in params.items())
        raise SourceNotFound(
            f"{label}: no file matches {wanted_params}; files: {listing}",
            source=label,
            hint="use ?fileId=<id> to name the file exactly",
        )
    for pick in (
        lambda f: f.get("primary") is True,
        lambda f: f.get("type") == "Model",
        lambda f: True,
    ):
        hit = [f for f in candidates if pick(f)]
        if hit:
            return hit[0]
    raise AssertionError("unreachable")


def inspect_civitai(
    source: CivitaiSource, tokens: Tokens | None = None, *, http: httpx.Client | None = None
) -> CivitaiChoice:
    """The version and file a CivitAI source means, from the v1 API (no download)."""
    tokens = Tokens.from_env() if tokens is None else tokens
    ref = _ref(source)
    base = civitai_base_url()
    with client_or_new(http) as client:
        version_id = ref.version_id
        if version_id is None and ref.by_hash is None:
            if ref.model_id is None:
                raise SourceNotFound(
                    f"civitai:{source.url}: names neither a model nor a version",
                    source="civitai",
                    hint="give version_id, model_id or a CivitAI link",
                )
            model = fetch_model(ref.model_id, tokens, client, base)
            version_id = latest_version_of(model, f"civitai:model/{ref.model_id}")
        version = fetch_version(version_id, tokens, client, base, by_hash=ref.by_hash)
    version_id = int(version["id"])
    label = f"civitai:version/{version_id}"
    chosen = _choose_file(version, ref, source.file_name, label)
    if not isinstance(chosen.get("id"), int):
        raise SourceProtocolError(
            f"{label}: a file without an id", source=label, hint="retry later"
        )
    hashes = chosen.get("hashes") or {}
    sha = next((str(v) for k, v in hashes.items() if k.upper() == "SHA256"), None)
    size_kb = chosen.get("sizeKB")
    model_info = version.get("model") or {}
    name = sanitize_file_name(str(chosen.get("name") or "")) or (
        f"civitai-{version_id}-{chosen['id']}.safetensors"
    )
    model_id = version.get("modelId")
    return CivitaiChoice(
        model_id=model_id if isinstance(model_id, int) else ref.model_id,
        model_name=str(model_info.get("name") or ""),
        model_type=str(model_info.get("type") or ""),
        version_id=version_id,
        version_name=str(version.get("name") or ""),
        base_model=str(version.get("baseModel") or ""),
        file_id=int(chosen["id"]),
        file_name=name,
        file_type=str(chosen.get("type") or ""),
        sha256=sha.lower() if sha and is_sha256(sha.lower()) else None,
        approx_size=round(float(size_kb) * 1024) if isinstance(size_kb, int | float) else None,
        primary=chosen.get("primary") is True,
        air=str(version["air"]) if version.get("air") else None,
    )


def resolve_civitai(
    model: ModelFile,
    source: CivitaiSource,
    tokens: Tokens | None = None,
    *,
    http: httpx.Client | None = None,
) -> DownloadPlan:
    tokens = Tokens.from_env() if tokens is None else tokens
    choice = inspect_civitai(source, tokens, http=http)
    url = f"{civitai_base_url()}/api/download/models/{choice.version_id}?fileId={choice.file_id}"
    return DownloadPlan(
        url=url,
        file_name=choice.file_name,
        size=model.size,
        sha256=choice.sha256 or model.sha256,
        revision=str(choice.version_id),
        source=choice.label,
        headers=_headers(tokens),
        approx_size=choice.approx_size,
    )


def describe_civitai(
    model: ModelFile,
    source: CivitaiSource,
    tokens: Tokens | None = None,
    *,
    http: httpx.Client | None = None,
) -> Upstream:
    """The tracked version's facts now, and the model's newest version."""
    tokens = Tokens.from_env() if tokens is None else tokens
    choice = inspect_civitai(source, tokens, http=http)
    latest = (
        civitai_latest_version(choice.model_id, tokens, http=http)
        if choice.model_id is not None
        else None
    )
    return Upstream(
        source=choice.label,
        revision=str(choice.version_id),
        size=None,
        sha256=choice.sha256,
        latest_version=latest,
    )
