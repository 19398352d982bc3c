"""User-facing links -> catalog sources (``comfyfleet lora add <link>``).

Hugging Face (huggingface.co, hf.co, or the ``HF_ENDPOINT`` host)::

    https://huggingface.co/<org>/<repo>/blob/<rev>/<path>      (also /resolve/, ?download=true)
    https://huggingface.co/<repo>/resolve/<rev>/<path>          (canonical repos, no org)
    hf://<org>/<repo>[@<rev>]/<path>

``<rev>`` may be percent-encoded (``refs%2Fpr%2F1``). Dataset and Space links are refused.

CivitAI (civitai.com, civitai.red, civitai.green, civitai.blue, www., or the
``CIVITAI_BASE_URL`` host; sources-api.md B7)::

    /models/<id>[/<slug>][?modelVersionId=<v>]     model page (latest version unless pinned)
    /model-versions/<v>                            version page
    /api/download/models/<v>[?type=&format=&size=&fp=&quantType=&fileId=]
    /api/download/training-data/<v>                (= ?type=Training Data)
    /api/v1/models/<id>, /api/v1/model-versions/<v>, /api/v1/model-versions/by-hash/<hash>
    urn:air:<ecosystem>:<type>:civitai:<id>[@<v>]  AIR identifier

A ``token=`` query parameter is dropped (it would otherwise land in the catalog file).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import SplitResult, parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from comfyfleet.catalog import CivitaiSource, HFSource
from comfyfleet.config import env
from comfyfleet.errors import ConfigError
from comfyfleet.sources.base import redact_url

HF_HOSTS = frozenset({"huggingface.co", "hf.co"})
CIVITAI_HOSTS = frozenset({"civitai.com", "civitai.red", "civitai.green", "civitai.blue"})
# Download-endpoint parameters that select a file (B5); anything else in the query is noise.
CIVITAI_FILE_PARAMS = ("type", "format", "size", "fp", "quantType", "fileId")

_AIR = re.compile(
    r"^urn:air:(?P<eco>[a-z0-9_.-]+):(?P<type>[a-z0-9_.-]+):civitai:(?P<model>\d+)"
    r"(?:@(?P<version>\d+))?(?::[^.]*)?(?:\.[a-z0-9]+)?$",
    re.I,
)
_HASH = re.compile(r"^[0-9A-Fa-f]{8,64}$")

_HINT = (
    "give a Hugging Face file link (https://huggingface.co/<org>/<repo>/blob/<rev>/<path>) "
    "or a CivitAI link (https://civitai.com/models/<id>?modelVersionId=<v>)"
)


@dataclass(frozen=True)
class CivitaiRef:
    """What a CivitAI link says: ids, and the download parameters that select a file."""

    model_id: int | None = None
    version_id: int | None = None
    params: dict[str, str] = field(default_factory=dict)
    by_hash: str | None = None

    @property
    def file_id(self) -> int | None:
        value = self.params.get("fileId")
        return int(value) if value and value.isdigit() else None


def _host_of(env_var: str) -> str | None:
    value = env(env_var)
    if not value:
        return None
    return urlsplit(value).netloc.lower() or None


def _netloc(parts: SplitResult) -> tuple[str, str]:
    host = (parts.hostname or "").lower()
    return host.removeprefix("www."), parts.netloc.lower()


def is_hf_link(url: str) -> bool:
    parts = urlsplit(url.strip())
    if parts.scheme == "hf":
        return True
    host, netloc = _netloc(parts)
    return parts.scheme in ("http", "https") and (
        host in HF_HOSTS or netloc == _host_of("HF_ENDPOINT")
    )


def is_civitai_link(url: str) -> bool:
    text = url.strip()
    if _AIR.match(text):
        return True
    parts = urlsplit(text)
    host, netloc = _netloc(parts)
    return parts.scheme in ("http", "https") and (
        host in CIVITAI_HOSTS or netloc == _host_of("CIVITAI_BASE_URL")
    )


def parse_hf_link(url: str) -> HFSource:
    """A Hugging Face file link as an :class:`HFSource` (ConfigError if it names no file)."""
    text = url.strip()
    shown = redact_url(text)  # a pasted ?token= never reaches the message
    parts = urlsplit(text)
    if parts.scheme == "hf":
        return _parse_hf_uri(text)
    segments = [s for s in parts.path.split("/") if s]
    if segments and segments[0] in ("datasets", "spaces", "buckets"):
        raise ConfigError(
            f"{shown}: a Hugging Face {segments[0][:-1]} link; only model repos are supported",
            hint="link a file of a model repo: https://huggingface.co/<org>/<repo>/blob/<rev>/<path>",
        )
    for n in (2, 1):
        if len(segments) > n + 1 and segments[n] in ("blob", "resolve"):
            repo = "/".join(unquote(s) for s in segments[:n])
            rest = segments[n + 1 :]
            break
    else:
        raise ConfigError(
            f"{shown}: a Hugging Face link without a file (expected .../blob/<rev>/<path>)",
            hint="open the file on the Hub and copy its link (or its download link)",
        )
    revision = unquote(rest[0])
    if revision == "refs" and len(rest) > 3 and rest[1] in ("pr", "convert"):
        revision, rest = f"refs/{rest[1]}/{rest[2]}", rest[2:]
    path = "/".join(unquote(s) for s in rest[1:])
    if not path:
        raise ConfigError(
            f"{shown}: the link names revision {revision!r} but no file",
            hint="link a file: https://huggingface.co/<org>/<repo>/blob/<rev>/<path>",
        )
    return HFSource(type="hf", repo=repo, revision=revision, path=path)


def _parse_hf_uri(text: str) -> HFSource:
    body = text[len("hf://") :]
    match = re.match(r"^([^/@]+)/([^/@]+)(?:@([^/]+))?/(.+)$", body)
    if not match or body.startswith(("datasets/", "spaces/")):
        raise ConfigError(
            f"{text}: expected hf://<org>/<repo>[@<rev>]/<path>",
            hint="or give the file's https://huggingface.co/... link",
        )
    org, name, rev, path = match.groups()
    return HFSource(
        type="hf", repo=f"{org}/{name}", revision=unquote(rev or "main"), path=unquote(path)
    )


def parse_civitai_ref(url: str) -> CivitaiRef:
    """The ids and file-selecting parameters of any CivitAI link form (ConfigError if none)."""
    text = url.strip()
    shown = redact_url(text)  # a pasted ?token= never reaches the message
    air = _AIR.match(text)
    if air:
        version = air.group("version")
        return CivitaiRef(int(air.group("model")), int(version) if version else None)
    parts = urlsplit(text)
    query = dict(parse_qsl(parts.query, keep_blank_values=False))
    path = re.sub(r"/+", "/", parts.path).rstrip("/")
    params = {k: v for k, v in query.items() if k in CIVITAI_FILE_PARAMS}
    version_q = query.get("modelVersionId", "")

    def number(value: str, what: str) -> int:
        if not value.isdigit() or not 0 < int(value) <= 2_147_483_647:
            raise ConfigError(f"{shown}: {what} {value!r} is not a valid id", hint=_HINT)
        return int(value)

    if m := re.fullmatch(r"/models/(\d+)(?:/[^/]*)?", path):
        version = number(version_q, "modelVersionId") if version_q else None
        return CivitaiRef(number(m.group(1), "model id"), version)
    if m := re.fullmatch(r"/model-versions/(\d+)", path):
        return CivitaiRef(None, number(m.group(1), "version id"))
    if m := re.fullmatch(r"/api/download/models/(\d+)", path):
        return CivitaiRef(None, number(m.group(1), "version id"), params)
    if m := re.fullmatch(r"/api/download/training-data/(\d+)", path):
        return CivitaiRef(None, number(m.group(1), "version id"), {"type": "Training Data"})
    if m := re.fullmatch(r"/api/v1/models/(\d+)", path):
        return CivitaiRef(number(m.group(1), "model id"), None)
    if m := re.fullmatch(r"/api/v1/model-versions/by-hash/([^/]+)", path):
        digest = m.group(1)
        if not _HASH.match(digest):
            raise ConfigError(f"{shown}: {digest!r} is not a file hash", hint=_HINT)
        return CivitaiRef(None, None, by_hash=digest.upper())
    if m := re.fullmatch(r"/api/v1/model-versions/(\d+)", path):
        return CivitaiRef(None, number(m.group(1), "version id"))
    raise ConfigError(
        f"{shown}: a CivitAI link, but not one that names a model or version",
        hint="use the model page (https://civitai.com/models/<id>?modelVersionId=<v>) "
        "or the download link (https://civitai.com/api/download/models/<v>)",
    )


def clean_civitai_url(url: str) -> str:
    """``url`` without its ``token`` (or other non-selecting) query parameters."""
    text = url.strip()
    if _AIR.match(text):
        return text
    parts = urlsplit(text)
    keep = [
        (k, v)
        for k, v in parse_qsl(parts.query, keep_blank_values=False)
        if k in CIVITAI_FILE_PARAMS or k == "modelVersionId"
    ]
    return urlunsplit(parts._replace(query=urlencode(keep), fragment=""))


def parse_civitai_link(url: str) -> CivitaiSource:
    ref = parse_civitai_ref(url)
    return CivitaiSource(
        type="civitai",
        version_id=ref.version_id,
        model_id=ref.model_id,
        url=clean_civitai_url(url),
    )


def parse_link(url: str) -> HFSource | CivitaiSource:
    """Any supported Hugging Face or CivitAI link as a catalog source."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigError("empty link", hint=_HINT)
    if is_civitai_link(url):
        return parse_civitai_link(url)
    if is_hf_link(url):
        return parse_hf_link(url)
    raise ConfigError(f"{redact_url(url.strip())}: not a Hugging Face or CivitAI link", hint=_HINT)
