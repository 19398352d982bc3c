"""Sources: turn a catalog entry into a download plan, and stream its bytes.

::

    plan = resolve(model)                    # HF / CivitAI / https / s3 -> DownloadPlan
    with open_stream(plan, offset) as stream:   # bytes from `offset` to the end
        for chunk in stream: ...

``resolve`` asks the source for the facts (commit or version, size, sha256) and never
downloads the file itself. ``open_stream`` resumes with ``Range`` (and copes with servers
that ignore it), follows redirects without leaking ``Authorization`` to other hosts, and
raises only comfyfleet errors (see :mod:`comfyfleet.sources.http` for the mapping).
Tokens come from :class:`Tokens` (``Tokens.from_env()`` by default) and never appear in a
message or a ``repr``.

Modules: ``hf`` (huggingface_hub metadata), ``civitai`` (v1 API + download endpoint),
``url`` (plain https), ``s3`` (boto3), ``links`` (user-facing link forms), ``http``
(streaming, redirects, error mapping), ``base`` (Tokens, DownloadPlan, file names).
"""

from __future__ import annotations

import httpx

from comfyfleet.catalog import CivitaiSource, HFSource, ModelFile, S3Source, URLSource
from comfyfleet.sources.base import DownloadPlan, Tokens, Upstream, sanitize_file_name
from comfyfleet.sources.http import ByteStream, open_http_stream, parse_content_disposition

__all__ = [
    "ByteStream",
    "DownloadPlan",
    "Tokens",
    "Upstream",
    "civitai_latest_version",
    "describe_upstream",
    "latest_revision",
    "open_stream",
    "parse_content_disposition",
    "parse_link",
    "resolve",
    "sanitize_file_name",
]


def resolve(
    model: ModelFile, tokens: Tokens | None = None, *, http: httpx.Client | None = None
) -> DownloadPlan:
    """Ask ``model``'s source where its bytes are and what they must hash to."""
    tokens = Tokens.from_env() if tokens is None else tokens
    source = model.source
    if isinstance(source, HFSource):
        from comfyfleet.sources.hf import resolve_hf

        return resolve_hf(model, source, tokens)
    if isinstance(source, CivitaiSource):
        from comfyfleet.sources.civitai import resolve_civitai

        return resolve_civitai(model, source, tokens, http=http)
    if isinstance(source, URLSource):
        from comfyfleet.sources.url import resolve_url

        return resolve_url(model, source, http=http)
    if isinstance(source, S3Source):
        from comfyfleet.sources.s3 import resolve_s3

        return resolve_s3(model, source)
    raise TypeError(f"unknown source type {type(source).__name__}")


def open_stream(
    plan: DownloadPlan,
    offset: int = 0,
    *,
    http: httpx.Client | None = None,
    chunk_size: int = 1 << 20,
) -> ByteStream:
    """The file's bytes from ``offset`` to its end, as an iterator of chunks.

    The request is made when this is called (errors such as 401/404 raise here); reading
    raises :class:`~comfyfleet.errors.SourceUnavailable` if the connection drops, after
    which ``open_stream(plan, offset + bytes_received)`` continues. Close the stream (or
    use it as a context manager) when stopping early. ``stream.file_name`` is the
    server's ``Content-Disposition`` name, sanitised (else ``plan.file_name``);
    ``stream.total_size`` the whole file's size when the server says it.
    """
    if plan.kind == "s3":
        from comfyfleet.sources.s3 import open_s3_stream

        return open_s3_stream(plan, offset, chunk_size=chunk_size)
    return open_http_stream(plan, offset, http=http, chunk_size=chunk_size)


def parse_link(url: str) -> HFSource | CivitaiSource:
    """A Hugging Face or CivitAI link as a catalog source (see :mod:`.links`)."""
    from comfyfleet.sources.links import parse_link as _parse

    return _parse(url)


def latest_revision(
    model: ModelFile | HFSource, tokens: Tokens | None = None, *, ref: str | None = None
) -> str:
    """The commit an HF ref (default: the source's revision) points at now."""
    from comfyfleet.sources.hf import latest_revision as _latest

    return _latest(model, tokens, ref=ref)


def civitai_latest_version(
    model_id: int, tokens: Tokens | None = None, *, http: httpx.Client | None = None
) -> int:
    """The newest published version id of a CivitAI model."""
    from comfyfleet.sources.civitai import civitai_latest_version as _latest

    return _latest(model_id, tokens, http=http)


def describe_upstream(
    model: ModelFile, tokens: Tokens | None = None, *, http: httpx.Client | None = None
) -> Upstream:
    """What the upstream holds for ``model`` now, for refresh to compare with the manifest.

    ``revision`` is the commit the HF ref points at / the CivitAI version id / the ETag;
    ``latest_version`` (CivitAI only) the model's newest published version, which differs
    from ``revision`` when a newer version than the tracked one exists.
    """
    tokens = Tokens.from_env() if tokens is None else tokens
    source = model.source
    if isinstance(source, CivitaiSource):
        from comfyfleet.sources.civitai import describe_civitai

        return describe_civitai(model, source, tokens, http=http)
    plan = resolve(model, tokens, http=http)
    return Upstream(source=plan.source, revision=plan.revision, size=plan.size, sha256=plan.sha256)
