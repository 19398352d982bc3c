"""A source URL with ``user:password@`` in it: the password never reaches a result row,
an error or the manifest (issue 9 item 14, the mirror's side)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from comfyfleet.catalog import ModelFile
from comfyfleet.mirror.driver import mirror_files
from comfyfleet.sources import Tokens
from comfyfleet.store.local import LocalStore
from comfyfleet.store.manifest import MANIFEST_KEY
from tests.doubles.faults import Faults, Request, Server, serve_bytes
from tests.mirror.support import payload

SECRET = "pa55-word-never-shown"
DATA = payload(20_000)


@pytest.fixture
def server() -> Iterator[str]:
    def route(req: Request) -> None:
        if req.path == "/ok.safetensors":
            serve_bytes(req, DATA, Faults())
        else:
            req.send(404, b"not found")

    srv = Server("files", route, [], threading.Lock())
    srv.start()
    try:
        yield srv.url.replace("http://", f"http://user:{SECRET}@")
    finally:
        srv.stop()


def test_url_userinfo_is_never_shown(server: str, tmp_path: Path) -> None:
    models = [
        ModelFile(
            id=name,
            folder="vae",
            file=f"{name}.safetensors",
            source={"type": "url", "url": f"{server}/{name}.safetensors"},
        )
        for name in ("ok", "missing")
    ]
    store = LocalStore(tmp_path / "store")
    run = mirror_files(models, store, tokens=Tokens())
    assert [r.status for r in run.results] == ["mirrored", "failed"]
    for r in run.results:
        assert SECRET not in repr(r.row()), r.row()
    assert "***@" in run.results[1].row()["source"]
    assert SECRET.encode() not in store.get_bytes(MANIFEST_KEY)
