"""Hugging Face: metadata through the real ``huggingface_hub``, bytes through our stream.

``resolve`` makes three calls with ``HfApi(endpoint=..., token=...)``:

1. ``model_info(repo, revision=ref)``: the ref (branch, tag, commit) -> commit sha;
2. ``get_paths_info(repo, [path], revision=commit)``: size and the LFS sha256 (``lfs.oid``);
3. ``get_hf_file_metadata(hf_hub_url(...))``: the resolve HEAD, which is where the Hub
   enforces gating, so a gated repo fails here rather than after the first byte.

Bytes then stream from ``{endpoint}/{repo}/resolve/{commit}/{path}`` (``open_stream``),
with ``Range`` resume across processes, which ``hf_hub_download`` cannot do; it also
never checks sha256, and the mirror does.

``HF_ENDPOINT`` is read at call time and passed as ``endpoint=``, because the library
reads it once at import.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import httpx
import httpx2
from huggingface_hub import HfApi, hf_hub_url
from huggingface_hub.errors import (
    BadRequestError,
    DisabledRepoError,
    EntryNotFoundError,
    FileMetadataError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.errors import GatedRepoError as HfGatedRepoError
from huggingface_hub.hf_api import RepoFile

from comfyfleet import __version__
from comfyfleet.catalog import HFSource, ModelFile
from comfyfleet.config import env
from comfyfleet.errors import (
    ConfigError,
    GatedRepoError,
    RegionBlocked,
    SourceAuthError,
    SourceError,
    SourceNotFound,
    SourceProtocolError,
    SourceUnavailable,
)
from comfyfleet.files import is_sha256
from comfyfleet.sources.base import DownloadPlan, Tokens, sanitize_file_name
from comfyfleet.sources.http import HF_TOKEN_HINT, transient_status_error

DEFAULT_ENDPOINT = "https://huggingface.co"
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_TIMEOUT = 30.0


def hf_endpoint() -> str:
    """``HF_ENDPOINT`` as it is now (not as it was when huggingface_hub was imported)."""
    return (env("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _api(tokens: Tokens, endpoint: str) -> HfApi:
    # token=False: never fall back to a token file the user did not point us at.
    return HfApi(
        endpoint=endpoint,
        token=tokens.hf or False,
        library_name="comfyfleet",
        library_version=__version__,
    )


def _label(repo: str, revision: str, path: str) -> str:
    rev = revision[:12] if _COMMIT.match(revision) else revision
    return f"hf://{repo}@{rev}" + (f"/{path}" if path else "")


@contextlib.contextmanager
def hf_errors(
    *, repo: str, revision: str, path: str | None, endpoint: str, tokens: Tokens
) -> Iterator[None]:
    """Translate huggingface_hub / httpx2 errors into comfyfleet's tree (one boundary)."""
    label = _label(repo, revision, path or "")
    page = f"{endpoint}/{repo}"
    token_state = "HF_TOKEN is set" if tokens.hf else "no HF_TOKEN is set"
    try:
        yield
    except HfGatedRepoError as exc:
        raise GatedRepoError(
            f"{label}: {repo} is a gated repo and "
            + (
                "the token in HF_TOKEN has not been granted access"
                if tokens.hf
                else "no Hugging Face token was sent"
            ),
            source=label,
            hint=f"accept the terms at {page} with your account, then set HF_TOKEN to a "
            "read token of that account",
        ) from exc
    except RevisionNotFoundError as exc:
        raise SourceNotFound(
            f"{label}: revision {revision!r} not found in {repo}",
            source=label,
            hint=f"check the branch, tag or 40-hex commit at {page}/commits",
        ) from exc
    except EntryNotFoundError as exc:
        raise SourceNotFound(
            f"{label}: file {path!r} not found in {repo} at {revision}",
            source=label,
            hint=f"check the path at {page}/tree/{revision}",
        ) from exc
    except DisabledRepoError as exc:
        raise SourceNotFound(
            f"{label}: access to {repo} is disabled on the Hub",
            source=label,
            hint="the repo was disabled by its owner or the Hub; pick another source",
        ) from exc
    except RepositoryNotFoundError as exc:
        raise SourceNotFound(
            f"{label}: repository {repo} not found ({token_state})",
            source=label,
            hint="check the repo id; a private repo also needs HF_TOKEN with read access",
        ) from exc
    except BadRequestError as exc:
        raise SourceProtocolError(
            f"{label}: the Hub rejected the request ({exc.server_message or 'HTTP 400'})",
            source=label,
            hint="check the repo id, revision and path",
        ) from exc
    except HfHubHTTPError as exc:
        raise _status_error(exc, label, tokens) from exc
    except OfflineModeIsEnabled as exc:
        raise ConfigError(
            f"{label}: HF_HUB_OFFLINE is set, the Hub cannot be asked",
            hint="unset HF_HUB_OFFLINE to mirror from Hugging Face",
        ) from exc
    except FileMetadataError as exc:
        raise SourceProtocolError(
            f"{label}: {endpoint} did not answer like the Hugging Face Hub (missing file "
            "metadata headers)",
            source=label,
            hint="check HF_ENDPOINT",
        ) from exc
    except (httpx2.TransportError, httpx.TransportError) as exc:
        raise SourceUnavailable(
            f"{label}: cannot reach {endpoint} ({type(exc).__name__})",
            source=label,
            hint="usually temporary; check the network or HF_ENDPOINT",
        ) from exc


def _status_error(exc: HfHubHTTPError, label: str, tokens: Tokens) -> SourceError:
    status = exc.response.status_code
    said = (exc.server_message or "").strip().replace("\n", " ")[:200]
    detail = f"HTTP {status}" + (f": {said}" if said else "")
    if tokens.hf:
        said_clean = detail.replace(tokens.hf, "***")
        detail = said_clean
    transient = transient_status_error(
        status, exc.response.headers.get("Retry-After"), label, detail, server="the Hub"
    )
    if transient is not None:
        return transient
    if status in (401, 403):
        hint = (
            "the token in HF_TOKEN was refused or cannot read this repo; " + HF_TOKEN_HINT
            if tokens.hf
            else HF_TOKEN_HINT
        )
        return SourceAuthError(f"{label}: access denied ({detail})", source=label, hint=hint)
    if status == 404:
        return SourceNotFound(
            f"{label}: not found ({detail})", source=label, hint="check the repo, revision and path"
        )
    if status == 451:
        return RegionBlocked(
            f"{label}: unavailable in this region ({detail})",
            source=label,
            hint="run the mirror from a machine in another region",
        )
    return SourceProtocolError(
        f"{label}: unexpected answer from the Hub ({detail})",
        source=label,
        hint="check HF_ENDPOINT and the source fields",
    )


def commit_for(
    repo: str, revision: str, tokens: Tokens | None = None, *, endpoint: str | None = None
) -> str:
    """The commit sha that ``revision`` (branch, tag or commit) of ``repo`` points at now."""
    tokens = Tokens.from_env() if tokens is None else tokens
    endpoint = endpoint or hf_endpoint()
    with hf_errors(repo=repo, revision=revision, path=None, endpoint=endpoint, tokens=tokens):
        info = _api(tokens, endpoint).model_info(repo, revision=revision, timeout=_TIMEOUT)
    sha = info.sha
    if not isinstance(sha, str) or not _COMMIT.match(sha):
        raise SourceProtocolError(
            f"{_label(repo, revision, '')}: the Hub answered without a commit sha",
            source=_label(repo, revision, ""),
            hint="check HF_ENDPOINT",
        )
    return sha


def latest_revision(
    model: ModelFile | HFSource, tokens: Tokens | None = None, *, ref: str | None = None
) -> str:
    """The commit ``ref`` (default: the source's revision) points at now, for refresh."""
    source = model.source if isinstance(model, ModelFile) else model
    if not isinstance(source, HFSource):
        raise ConfigError(f"latest_revision needs a Hugging Face source, got {source.type}")
    return commit_for(source.repo, ref or source.revision, tokens)


def resolve_hf(model: ModelFile, source: HFSource, tokens: Tokens | None = None) -> DownloadPlan:
    """Commit, size and sha256 of one file, and the URL + headers to stream it."""
    tokens = Tokens.from_env() if tokens is None else tokens
    endpoint = hf_endpoint()
    repo, path = source.repo, source.path.lstrip("/")
    commit = commit_for(repo, source.revision, tokens, endpoint=endpoint)
    label = _label(repo, commit, path)
    api = _api(tokens, endpoint)
    with hf_errors(repo=repo, revision=commit, path=path, endpoint=endpoint, tokens=tokens):
        entries = api.get_paths_info(repo, [path], revision=commit)
    entry = next((e for e in entries if e.path == path), None)
    if entry is None:
        raise SourceNotFound(
            f"{label}: file {path!r} not found in {repo} at {source.revision}",
            source=label,
            hint=f"check the path at {endpoint}/{repo}/tree/{source.revision}",
        )
    if not isinstance(entry, RepoFile):
        raise ConfigError(
            f"{label}: {path!r} is a folder in {repo}, not a file",
            hint="name one file in source.path (one catalog entry per file)",
        )
    sha256 = entry.lfs.sha256.lower() if entry.lfs is not None else None
    size = entry.lfs.size if entry.lfs is not None else entry.size
    url = hf_hub_url(repo, path, revision=commit, endpoint=endpoint)
    with hf_errors(repo=repo, revision=commit, path=path, endpoint=endpoint, tokens=tokens):
        meta = api.get_hf_file_metadata(url=url, timeout=_TIMEOUT)
    etag = (meta.etag or "").lower()
    if sha256 is not None and is_sha256(etag) and etag != sha256:
        raise SourceProtocolError(
            f"{label}: the Hub disagrees with itself: paths-info sha256 {sha256}, "
            f"resolve etag {etag}",
            source=label,
            hint="retry later; if it persists pin another revision",
        )
    if meta.size is not None and size is not None and meta.size != size:
        raise SourceProtocolError(
            f"{label}: paths-info says {size} bytes, the resolve endpoint {meta.size}",
            source=label,
            hint="retry later; if it persists pin another revision",
        )
    headers = {"Authorization": f"Bearer {tokens.hf}"} if tokens.hf else {}
    return DownloadPlan(
        url=url,
        file_name=sanitize_file_name(path.rsplit("/", 1)[-1]) or model.file.rsplit("/", 1)[-1],
        size=size if size is not None else model.size,
        sha256=sha256 or model.sha256,
        revision=commit,
        source=label,
        headers=headers,
    )
