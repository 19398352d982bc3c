"""Tokens never appear in an error message, a plan's repr, or a formatted traceback."""

from __future__ import annotations

import json
import threading
import traceback
from collections.abc import Callable, Iterator

import pytest

from comfyfleet.catalog import ModelFile
from comfyfleet.errors import ComfyfleetError, SourceError
from comfyfleet.sources import Tokens, open_stream, resolve
from tests.doubles.civitai import FakeCivitai
from tests.doubles.faults import Recorded, Request, Server
from tests.doubles.hf_hub import FakeHub

HF_SECRET = "hf_SUPERSECRETvalue0123456789"
CIV_SECRET = "civSUPERSECRETvalue0123456789"
TOKENS = Tokens(hf=HF_SECRET, civitai=CIV_SECRET)


def assert_clean(exc: BaseException, *, traceback_too: bool = True) -> None:
    texts = [str(exc), repr(exc)]
    if isinstance(exc, ComfyfleetError):
        texts += [exc.message, exc.hint or "", exc.one_line()]
    if traceback_too:
        texts.append("".join(traceback.format_exception(exc)))
    for text in texts:
        assert HF_SECRET not in text and CIV_SECRET not in text, text


def hf(repo: str = "org/repo") -> ModelFile:
    return ModelFile(
        id="m",
        folder="vae",
        file="a.safetensors",
        source={"type": "hf", "repo": repo, "path": "a.safetensors"},
    )


def civ(version: int = 201) -> ModelFile:
    return ModelFile(
        id="c",
        folder="loras",
        file="c.safetensors",
        source={"type": "civitai", "version_id": version},
    )


def _hf_cases(hub: FakeHub) -> list[Callable[[], object]]:
    hub.add_file("org/repo", "a.safetensors", b"x" * 1000)
    hub.add_file("org/gated", "a.safetensors", b"y" * 1000)
    hub.add_repo("org/gated", gated="manual")

    def stream_cut() -> object:
        plan = resolve(hf(), TOKENS)
        hub.faults.cut_after(10)
        return b"".join(open_stream(plan, chunk_size=4))

    def stream_503() -> object:
        plan = resolve(hf(), TOKENS)
        hub.faults.fail(503)
        return open_stream(plan)

    return [
        lambda: resolve(hf("org/gated"), TOKENS),  # unknown token -> 401
        lambda: resolve(hf("org/missing"), TOKENS),
        stream_cut,
        stream_503,
    ]


def test_hf_errors_hold_no_token(hub: FakeHub) -> None:
    cases = _hf_cases(hub)
    hub.add_token(HF_SECRET)  # from now on the token is known but not granted
    for case in [*cases, lambda: resolve(hf("org/gated"), TOKENS)]:
        with pytest.raises(SourceError) as info:
            case()
        assert_clean(info.value)
    plan = resolve(hf(), TOKENS)
    assert HF_SECRET not in repr(plan) and HF_SECRET not in str(plan)


def test_civitai_errors_hold_no_token(civitai: FakeCivitai) -> None:
    civitai.add_model(100, "m")
    civitai.add_version(100, 201, "v", require_auth=True)
    civitai.add_file(201, "c.safetensors", b"z" * 100)
    plan = resolve(civ(), TOKENS)  # unknown key: anonymous
    assert CIV_SECRET not in repr(plan)
    with pytest.raises(SourceError) as info:
        open_stream(plan)
    assert_clean(info.value)
    civitai.faults.rate_limit("5", where="api")
    with pytest.raises(SourceError) as info:
        resolve(civ(), TOKENS)
    assert_clean(info.value)
    civitai.region_blocked = True
    with pytest.raises(SourceError) as info:
        open_stream(plan)
    assert_clean(info.value)


@pytest.fixture
def echo_server() -> Iterator[str]:
    """A hostile server that echoes the Authorization header back in its errors."""

    def route(req: Request) -> None:
        said = req.headers.get("authorization", "")
        req.send(
            500,
            json.dumps({"error": f"bad header {said}"}).encode(),
            {"X-Error-Message": f"you sent {said}"},
            content_type="application/json",
        )

    server = Server("echo", route, list[Recorded](), threading.Lock())
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def test_echoed_tokens_are_scrubbed(echo_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", echo_server)
    with pytest.raises(SourceError) as info:
        resolve(hf(), TOKENS)  # through huggingface_hub's error
    assert_clean(info.value, traceback_too=False)  # the library's own error is the cause
    monkeypatch.setenv("CIVITAI_BASE_URL", echo_server)
    with pytest.raises(SourceError) as info:
        resolve(civ(), TOKENS)  # through our own HTTP path
    assert_clean(info.value)
    assert "***" in str(info.value)
