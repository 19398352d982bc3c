"""Plain https:// URL source against a small local file server."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from comfyfleet.catalog import ModelFile
from comfyfleet.errors import (
    SourceAuthError,
    SourceNotFound,
    SourceProtocolError,
    SourceUnavailable,
)
from comfyfleet.sources import Tokens, open_stream, resolve
from tests.doubles.faults import Faults, Recorded, Request, Server, serve_bytes

DATA = os.urandom(100_000)


@dataclass
class Files:
    """Files by path; ``head_refused`` answers HEAD 403 like a presigned GET URL does."""

    files: dict[str, bytes] = field(default_factory=dict)
    etags: dict[str, str] = field(default_factory=dict)
    disposition: dict[str, str] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)
    status: dict[str, int] = field(default_factory=dict)
    head_refused: bool = False
    faults: Faults = field(default_factory=Faults)

    def route(self, req: Request) -> None:
        if req.path in self.redirects:
            req.send(302, b"", {"Location": self.redirects[req.path]})
            return
        if req.path in self.status:
            req.send_json(self.status[req.path], {"error": "nope"})
            return
        data = self.files.get(req.path)
        if data is None:
            req.send(404, b"not found", content_type="text/plain")
            return
        if req.method == "HEAD" and self.head_refused:
            req.send(403, b"", content_type="application/xml")
            return
        headers = {"ETag": self.etags.get(req.path, f'"{hashlib.md5(data).hexdigest()}"')}
        if req.path in self.disposition:
            headers["Content-Disposition"] = self.disposition[req.path]
        serve_bytes(req, data, self.faults, headers)


@pytest.fixture
def files() -> Iterator[tuple[Files, str, str]]:
    state = Files()
    log: list[Recorded] = []
    lock = threading.Lock()
    a, b = Server("a", state.route, log, lock), Server("b", state.route, log, lock)
    a.start()
    b.start()
    try:
        yield state, a.url, b.url
    finally:
        a.stop()
        b.stop()


def url_model(url: str, sha256: str | None = None) -> ModelFile:
    return ModelFile(
        id="u",
        folder="vae",
        file="vae.safetensors",
        sha256=sha256,
        source={"type": "url", "url": url},
    )


def test_resolve_and_stream(files: tuple[Files, str, str]) -> None:
    state, base, _ = files
    state.files["/dl/my%20vae.safetensors"] = DATA
    plan = resolve(url_model(f"{base}/dl/my%20vae.safetensors?sig=abc"), Tokens())
    assert plan.size == len(DATA)
    assert plan.revision == f'"{hashlib.md5(DATA).hexdigest()}"'
    assert plan.file_name == "my vae.safetensors"
    assert plan.sha256 is None and plan.headers == {}
    assert plan.source == f"{base}/dl/my%20vae.safetensors"
    with open_stream(plan, 777) as stream:
        assert b"".join(stream) == DATA[777:]


def test_pinned_sha_and_content_disposition(files: tuple[Files, str, str]) -> None:
    state, base, _ = files
    state.files["/x"] = DATA
    state.disposition["/x"] = 'attachment; filename="../../real.safetensors"'
    sha = hashlib.sha256(DATA).hexdigest()
    plan = resolve(url_model(f"{base}/x", sha256=sha), Tokens())
    assert plan.sha256 == sha and plan.file_name == "real.safetensors"


def test_head_refused_falls_back_to_ranged_get(files: tuple[Files, str, str]) -> None:
    state, base, _ = files
    state.files["/signed.bin"] = DATA
    state.head_refused = True
    plan = resolve(url_model(f"{base}/signed.bin"), Tokens())
    assert plan.size == len(DATA)
    with open_stream(plan) as stream:
        assert b"".join(stream) == DATA


def test_redirect_to_other_origin(files: tuple[Files, str, str]) -> None:
    state, base, other = files
    state.files["/real.bin"] = DATA
    state.redirects["/short"] = f"{other}/real.bin"
    plan = resolve(url_model(f"{base}/short"), Tokens())
    assert plan.url == f"{base}/short"  # the redirect target may be a URL that expires
    assert plan.file_name == "real.bin"
    state.faults.ignore_range()
    with open_stream(plan, 10) as stream:
        assert b"".join(stream) == DATA[10:]


def test_file_changed_between_resolve_and_resume(files: tuple[Files, str, str]) -> None:
    state, base, _ = files
    state.files["/f.bin"] = DATA
    plan = resolve(url_model(f"{base}/f.bin"), Tokens())
    state.etags["/f.bin"] = '"another-version"'
    with pytest.raises(SourceProtocolError, match="changed upstream"):
        open_stream(plan, 50)


@pytest.mark.parametrize(
    ("status", "error", "needle"),
    [
        (404, SourceNotFound, "check the URL"),
        (401, SourceAuthError, "presigned URL"),
        (502, SourceUnavailable, "HTTP 502"),
    ],
)
def test_status_errors(
    files: tuple[Files, str, str], status: int, error: type[Exception], needle: str
) -> None:
    state, base, _ = files
    state.status["/e"] = status
    with pytest.raises(error, match=needle):
        resolve(url_model(f"{base}/e"), Tokens())
