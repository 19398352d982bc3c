"""ComfyClient behind the fleet's gateway: the bearer token on every HTTP request and on the
/ws handshake, nowhere else, and never in a repr, an error or a log line."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from comfyfleet.comfy import ComfyClient
from comfyfleet.errors import ComfyAuthError, is_transient
from tests.comfy.graphs import smoke
from tests.doubles.comfyui import FakeComfyUI, png_bytes

TOKEN = "gw-token-5f1c0ffee5f1c0ffee5f1c0ffee"


@pytest.fixture
def gated() -> Iterator[FakeComfyUI]:
    with FakeComfyUI() as server:
        server.gateway_token = TOKEN
        yield server


class _HeaderRecorder:
    """An image 'on the web' that records the headers it was asked with."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        seen = self.seen

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append({k.lower(): v for k, v in self.headers.items()})
                body = png_bytes(rgb=(1, 2, 3))
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/in.png"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_token_goes_with_every_request_and_the_websocket(
    gated: FakeComfyUI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    web = _HeaderRecorder()
    caplog.set_level(logging.DEBUG)
    try:
        with ComfyClient(
            gated.url, token=SecretStr(TOKEN), poll_interval=0.05, reconnect_timeout=2
        ) as client:
            image = client.upload_image(web.url).ref
            result = client.run(smoke(image))
            assert client._listener.connected  # the /ws handshake passed the gateway
            for out in result.outputs:
                assert client.fetch_output(out)
                assert client.download_output(out, tmp_path / out.filename) > 0
            client.system_stats()
            shown = [repr(client), repr(client._listener), str(result)]
    finally:
        web.close()
    assert gated.refused == []
    assert ("GET", "/ws") in gated.requests
    assert {"POST", "GET"} <= {method for method, _ in gated.requests}
    # The image host is not ComfyUI: it never sees the gateway's token.
    assert web.seen and all("authorization" not in h for h in web.seen)
    assert all(TOKEN not in text for text in shown), shown
    assert "token=***" in shown[0]
    assert TOKEN not in caplog.text


def test_without_or_with_a_wrong_token_the_gateway_refuses(
    gated: FakeComfyUI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with ComfyClient(gated.url, timeout=5) as anonymous:
        with pytest.raises(ComfyAuthError, match="no token was given") as missing:
            anonymous.system_stats()
        # The WebSocket handshake is refused as well (401, no upgrade).
        assert not anonymous._listener.start(timeout=2)
    assert ("GET", "/ws") in gated.refused
    assert "--comfy-token-env" in (missing.value.hint or "")
    wrong = "not-the-token-0123456789abcdef"
    with (
        ComfyClient(gated.url, timeout=5, token=wrong) as client,
        pytest.raises(ComfyAuthError, match="refused the bearer token") as refused,
    ):
        client.submit(smoke("x.png"))
    assert not is_transient(refused.value)
    for text in (str(refused.value), repr(refused.value), caplog.text):
        assert wrong not in text and TOKEN not in text
