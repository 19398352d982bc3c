"""The gateway in front of ComfyUI: no token, no ComfyUI; with it, HTTP, uploads, /view and
the /ws stream (binary previews included) pass through unchanged; a dead ComfyUI is a 502;
the token shows up in no log line, error or repr."""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from comfyfleet.errors import ConfigError
from comfyfleet.fleet.gateway import Gateway, bind, parse_listen, server, split_token
from tests.comfy.graphs import smoke, txt2img
from tests.doubles.comfyui import FakeComfyUI, png_bytes

TOKEN = secrets.token_urlsafe(32)


class RunningGateway:
    """A gateway under uvicorn in a thread, on a free loopback port."""

    def __init__(self, upstream: str, token: str = TOKEN) -> None:
        self.gateway = Gateway(upstream, token, read_timeout=10)
        self._sock = bind("127.0.0.1", 0)
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self._server = server(self.gateway)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def __enter__(self) -> RunningGateway:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every log record of the test, checked at the end: the token is in none of them."""
    caplog.set_level(logging.DEBUG)
    yield caplog
    assert TOKEN not in caplog.text
    assert all(TOKEN not in str(r.args) for r in caplog.records)


@pytest.fixture
def fake() -> Iterator[FakeComfyUI]:
    with FakeComfyUI() as comfy:
        yield comfy


@pytest.fixture
def gw(fake: FakeComfyUI, logs: pytest.LogCaptureFixture) -> Iterator[RunningGateway]:
    with RunningGateway(fake.url) as running:
        yield running


AUTH = {"Authorization": f"Bearer {TOKEN}"}
HTTP = httpx.Client(timeout=10)


@pytest.mark.parametrize(
    "headers, query",
    [
        ({}, ""),
        ({"Authorization": "Bearer " + "x" * 43}, ""),
        ({"Authorization": f"Basic {TOKEN}"}, ""),
        ({"Authorization": f"Bearer {TOKEN[:-1]}"}, ""),
        ({}, "?token=wrong"),
        ({"Authorization": "Bearer wrong"}, f"?token={TOKEN}"),  # the header decides
    ],
    ids=["none", "wrong", "basic", "prefix", "query-wrong", "header-wins"],
)
def test_http_without_the_token_is_refused_and_nothing_reaches_comfyui(
    gw: RunningGateway, fake: FakeComfyUI, headers: dict[str, str], query: str
) -> None:
    for method, path in (("GET", "/queue"), ("POST", "/prompt"), ("GET", "/api/view")):
        body = json.dumps({"prompt": smoke("x.png")}) if method == "POST" else None
        response = HTTP.request(method, gw.url + path + query, headers=headers, content=body)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error"] == "unauthorized"
        assert "Authorization: Bearer" in response.json()["message"]
    assert fake.requests == []


@pytest.mark.parametrize(
    "headers, query",
    [({}, ""), ({"Authorization": "Bearer wrong-token-wrong-token"}, ""), ({}, "&token=no")],
    ids=["none", "wrong", "query-wrong"],
)
def test_websocket_without_the_token_is_refused_with_401(
    gw: RunningGateway, fake: FakeComfyUI, headers: dict[str, str], query: str
) -> None:
    with pytest.raises(InvalidStatus) as refused:
        connect(f"{gw.ws_url}/ws?clientId=c{query}", additional_headers=headers, open_timeout=5)
    assert refused.value.response.status_code == 401
    assert json.loads(refused.value.response.body or b"{}")["error"] == "unauthorized"
    assert fake.requests == []


def test_authenticated_upload_prompt_ws_progress_and_view_round_trip(
    gw: RunningGateway, fake: FakeComfyUI
) -> None:
    fake.preview_frames = True
    image = png_bytes(64, 48, (10, 200, 30))
    uploaded = HTTP.post(
        gw.url + "/upload/image",
        headers=AUTH,
        files={"image": ("gw-in.png", image, "image/png")},
        data={"overwrite": "true"},
    )
    assert uploaded.status_code == 200, uploaded.text
    assert fake.files[("input", "", uploaded.json()["name"])] == image

    ws = connect(f"{gw.ws_url}/ws?clientId=gw-client", additional_headers=AUTH, open_timeout=5)
    try:
        assert json.loads(ws.recv(timeout=5))["data"]["sid"] == "gw-client"
        ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
        prompt = HTTP.post(
            gw.url + "/prompt",
            headers=AUTH,
            json={"prompt": txt2img(seed=7), "client_id": "gw-client"},
        )
        assert prompt.status_code == 200, prompt.text
        prompt_id = prompt.json()["prompt_id"]
        kinds, binary = [], []
        while True:
            message = ws.recv(timeout=10)
            if isinstance(message, bytes):
                binary.append(message)
                continue
            event = json.loads(message)
            kinds.append(event["type"])
            if event["type"] == "executing" and event["data"]["node"] is None:
                break
    finally:
        ws.close()
    assert "progress" in kinds and "execution_success" in kinds
    assert binary and binary[0][:4] == b"\x00\x00\x00\x04"  # preview frames relayed as binary

    history = HTTP.get(f"{gw.url}/history/{prompt_id}", headers=AUTH).json()
    output = history[prompt_id]["outputs"]["9"]["images"][0]
    view = HTTP.get(
        gw.url + "/view",
        headers=AUTH,
        params={k: output[k] for k in ("filename", "subfolder", "type")},
    )
    assert view.status_code == 200
    assert view.content == fake.files[("output", output["subfolder"], output["filename"])]
    assert view.headers["content-type"] == "image/png"
    assert ("POST", "/prompt") in fake.requests


def test_large_bodies_stream_both_ways(gw: RunningGateway, fake: FakeComfyUI) -> None:
    big = os.urandom(24 * 2**20)
    fake.files[("output", "", "big.bin")] = big
    with HTTP.stream(
        "GET", gw.url + "/view?filename=big.bin&type=output", headers=AUTH
    ) as response:
        assert response.headers["content-length"] == str(len(big))
        chunks = list(response.iter_raw())
    assert b"".join(chunks) == big
    assert len(chunks) > 1  # relayed as it came, not as one buffered body

    image = png_bytes(1024, 1024)

    def chunked() -> Iterator[bytes]:  # no Content-Length: chunked in, chunked on
        boundary = b"gwboundary"
        yield b"--" + boundary + b"\r\n"
        yield b'Content-Disposition: form-data; name="image"; filename="chunked.png"\r\n'
        yield b"Content-Type: image/png\r\n\r\n"
        for start in range(0, len(image), 65536):
            yield image[start : start + 65536]
        yield b"\r\n--" + boundary + b"--\r\n"

    uploaded = HTTP.post(
        gw.url + "/upload/image",
        headers={**AUTH, "Content-Type": "multipart/form-data; boundary=gwboundary"},
        content=chunked(),
    )
    assert uploaded.status_code == 200, uploaded.text
    assert fake.files[("input", "", "chunked.png")] == image


def test_query_token_works_for_http_and_websocket(gw: RunningGateway, fake: FakeComfyUI) -> None:
    assert HTTP.get(f"{gw.url}/queue?token={TOKEN}").json() == {
        "queue_running": [],
        "queue_pending": [],
    }
    with connect(f"{gw.ws_url}/ws?token={TOKEN}&clientId=browser", open_timeout=5) as ws:
        # The other parameters reach ComfyUI: it named the session after clientId.
        assert json.loads(ws.recv(timeout=5))["data"]["sid"] == "browser"


def test_origin_of_the_gateway_page_passes_comfyuis_origin_check(
    gw: RunningGateway, fake: FakeComfyUI
) -> None:
    same = HTTP.get(gw.url + "/queue", headers={**AUTH, "Origin": gw.url})
    assert same.status_code == 200
    other = HTTP.get(gw.url + "/queue", headers={**AUTH, "Origin": "http://evil.example"})
    assert other.status_code == 403  # ComfyUI's own refusal, passed on


class _Recorder(BaseHTTPRequestHandler):
    """An upstream that records the raw request line and headers (what went on the wire)."""

    seen: list[tuple[str, dict[str, str]]] = []

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return

    def do_GET(self) -> None:
        self.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.send_header("X-Upstream", "yes")
        self.end_headers()
        self.wfile.write(b"{}")


def test_token_and_hop_by_hop_headers_are_not_forwarded(
    logs: pytest.LogCaptureFixture,
) -> None:
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    _Recorder.seen = []
    try:
        with RunningGateway(f"http://127.0.0.1:{upstream.server_address[1]}") as gw:
            response = HTTP.get(
                f"{gw.url}/view?filename=a%20b.png&token={TOKEN}&type=output",
                headers={
                    "Proxy-Authorization": "x",
                    "X-Custom": "kept",
                    "Cookie": f"a=1; comfyfleet_gateway={TOKEN}; b=2",
                },
            )
            HTTP.get(f"{gw.url}/object_info", headers=AUTH)
    finally:
        upstream.shutdown()
        upstream.server_close()
    assert response.status_code == 200 and response.headers["x-upstream"] == "yes"
    (path, headers), (path2, headers2) = _Recorder.seen
    assert path == "/view?filename=a%20b.png&type=output"  # token gone, the rest byte-exact
    assert headers["x-custom"] == "kept" and headers["cookie"] == "a=1; b=2"
    assert "proxy-authorization" not in headers and "authorization" not in headers
    assert path2 == "/object_info" and "authorization" not in headers2
    assert "/view?filename=a%20b.png&type=output -> 200" in logs.text


def test_comfyui_down_is_a_502_with_a_clear_message(logs: pytest.LogCaptureFixture) -> None:
    sock = bind("127.0.0.1", 0)
    dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()  # nothing listens there now
    with RunningGateway(dead) as gw:
        response = HTTP.post(gw.url + "/prompt", headers=AUTH, json={"prompt": {}})
        assert response.status_code == 502
        assert response.json()["error"] == "bad_gateway"
        assert "ComfyUI behind this gateway is not answering" in response.json()["message"]
        with pytest.raises(InvalidStatus) as refused:
            connect(f"{gw.ws_url}/ws", additional_headers=AUTH, open_timeout=5)
        assert refused.value.response.status_code == 502
        health = HTTP.get(gw.url + "/healthz")
        assert (health.status_code, health.text) == (200, "ok")
    assert "is not answering" in logs.text


def test_healthz_needs_no_token_and_says_only_ok(gw: RunningGateway, fake: FakeComfyUI) -> None:
    health = HTTP.get(gw.url + "/healthz")
    assert (health.status_code, health.text) == (200, "ok")
    assert "server" not in health.headers
    assert fake.requests == []


def test_comfyui_closing_the_socket_closes_the_clients(
    gw: RunningGateway, fake: FakeComfyUI
) -> None:
    fake.drop_ws_after = 1
    with connect(f"{gw.ws_url}/ws?clientId=d", additional_headers=AUTH, open_timeout=5) as ws:
        assert json.loads(ws.recv(timeout=5))["type"] == "status"
        with pytest.raises(ConnectionClosed):
            while True:
                ws.recv(timeout=5)


def test_settings_are_checked_and_the_token_is_not_in_the_repr() -> None:
    gateway = Gateway("http://127.0.0.1:8188/", TOKEN)
    assert TOKEN not in repr(gateway) and "***" in repr(gateway)
    with pytest.raises(ConfigError, match="16 are needed") as short:
        Gateway("http://127.0.0.1:8188", "short-token")
    assert "short-token" not in str(short.value)
    with pytest.raises(ConfigError, match="not an http"):
        Gateway("127.0.0.1:8188", TOKEN)
    assert parse_listen("0.0.0.0:8080") == ("0.0.0.0", 8080)
    assert parse_listen("[::]:9000") == ("::", 9000)
    for bad in ("8080", "host:", ":80", "h:99999"):
        with pytest.raises(ConfigError):
            parse_listen(bad)
    assert split_token(b"a=1&token=s3cr%2Bt&b=x%20y") == ("a=1&b=x%20y", "s3cr+t")
    assert split_token(b"") == ("", None)


def test_cli_serves_with_the_env_token_and_never_prints_it(fake: FakeComfyUI) -> None:
    env = {**os.environ, "COMFYFLEET_GATEWAY_TOKEN": TOKEN}
    missing = subprocess.run(
        [sys.executable, "-m", "comfyfleet", "gateway", "--upstream", fake.url],
        env={k: v for k, v in env.items() if k != "COMFYFLEET_GATEWAY_TOKEN"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2 and "COMFYFLEET_GATEWAY_TOKEN is not set" in missing.stderr
    # The listen address from $COMFYFLEET_GATEWAY_LISTEN (what `instances up` sets).
    proc = subprocess.Popen(
        [sys.executable, "-m", "comfyfleet", "gateway", "--upstream", fake.url],
        env={**env, "COMFYFLEET_GATEWAY_LISTEN": "127.0.0.1:0"},
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        match = re.search(r"gateway on 127\.0\.0\.1:(\d+)", first)
        assert match, first
        url = f"http://127.0.0.1:{match.group(1)}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if HTTP.get(url + "/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert HTTP.get(f"{url}/queue?token={TOKEN}").status_code == 200
        assert HTTP.get(f"{url}/queue", headers=AUTH).status_code == 200
        assert HTTP.get(f"{url}/queue?token=nope").status_code == 401
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    assert TOKEN not in first + out + err
    assert "GET /queue -> 200" in err and "GET /queue -> 401" in err
    # --listen wins over the variable (which is not even valid here).
    bad_env = {**env, "COMFYFLEET_GATEWAY_LISTEN": "nowhere"}
    cmd = [sys.executable, "-m", "comfyfleet", "gateway", "--upstream", fake.url]
    refused = subprocess.run(cmd, env=bad_env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert "COMFYFLEET_GATEWAY_LISTEN='nowhere' is not" in refused.stderr
    proc = subprocess.Popen(
        [*cmd, "--listen", "127.0.0.1:0"], env=bad_env, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stderr is not None
        assert re.search(r"gateway on 127\.0\.0\.1:\d+", proc.stderr.readline())
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)


def test_a_browser_opens_with_token_in_the_url_and_goes_on_with_the_cookie(
    gw: RunningGateway, fake: FakeComfyUI
) -> None:
    browser = httpx.Client(timeout=10)
    first = browser.get(f"{gw.url}/queue?token={TOKEN}")
    assert first.status_code == 200
    cookie = first.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    then = browser.get(gw.url + "/queue", headers={"Cookie": f"theme=dark; {cookie.split(';')[0]}"})
    assert then.status_code == 200  # the page's own API calls carry no token in the URL
    with connect(
        f"{gw.ws_url}/ws?clientId=page",
        additional_headers={"Cookie": cookie.split(";")[0]},
        open_timeout=5,
    ) as ws:
        assert json.loads(ws.recv(timeout=5))["data"]["sid"] == "page"
    wrong = browser.get(gw.url + "/queue", headers={"Cookie": "comfyfleet_gateway=nope"})
    assert wrong.status_code == 401
    assert "set-cookie" not in HTTP.get(gw.url + "/queue", headers=AUTH).headers


def test_small_answers_do_not_wait_for_delayed_acks() -> None:
    """Regression: the listening socket was made with proto 0, so asyncio left Nagle on
    and each answer (headers, then body) took ~40 ms: p50 44 ms for /healthz.

    Checked on the socket itself (timing alone is flaky on CI's two loaded cores): the
    listener says it is TCP and has Nagle off, and so does a connection it accepts."""
    from comfyfleet.fleet.gateway import bind

    listener = bind("127.0.0.1", 0)
    try:
        assert listener.proto == socket.IPPROTO_TCP
        assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        with socket.create_connection(listener.getsockname()[:2], timeout=5):
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        listener.close()


class _Slow(BaseHTTPRequestHandler):
    """An upstream that takes its time: a request held open while the test looks."""

    release = threading.Event()

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        _Slow.release.wait(10)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


def test_activity_needs_the_token_and_counts_only_proxied_work(
    gw: RunningGateway, fake: FakeComfyUI
) -> None:
    url = gw.url + "/comfyfleet/activity"
    HTTP = httpx.Client(timeout=10)  # noqa: N806 - no cookie from an earlier test's browser
    assert HTTP.get(url).status_code == 401
    assert HTTP.get(url + "?token=nope").status_code == 401
    first = HTTP.get(url, headers=AUTH).json()
    assert first["last_request_at"] is None and first["in_flight"] == 0
    assert abs(first["started_at"] - time.time()) < 30
    HTTP.get(gw.url + "/healthz")
    HTTP.get(gw.url + "/queue")  # refused: no token, no work
    assert HTTP.get(url, headers=AUTH).json()["last_request_at"] is None
    assert fake.requests == []  # the activity endpoint is the gateway's own
    before = time.time()
    assert HTTP.get(gw.url + "/queue", headers=AUTH).status_code == 200
    after = HTTP.get(url, headers=AUTH).json()
    assert before <= after["last_request_at"] <= time.time() and after["in_flight"] == 0
    # A WebSocket frame is work too (a running prompt's progress).
    time.sleep(0.05)
    with connect(f"{gw.ws_url}/ws?clientId=a", additional_headers=AUTH, open_timeout=5) as ws:
        ws.recv(timeout=5)
    assert HTTP.get(url, headers=AUTH).json()["last_request_at"] > after["last_request_at"]


def test_activity_counts_requests_in_flight() -> None:
    _Slow.release.clear()
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    try:
        with RunningGateway(f"http://127.0.0.1:{upstream.server_address[1]}") as gw:
            slow = threading.Thread(target=lambda: HTTP.get(gw.url + "/slow", headers=AUTH))
            slow.start()
            deadline = time.monotonic() + 10
            while HTTP.get(gw.url + "/comfyfleet/activity", headers=AUTH).json()["in_flight"] != 1:
                assert time.monotonic() < deadline, "the slow request never showed"
                time.sleep(0.02)
            _Slow.release.set()
            slow.join(10)
            done = HTTP.get(gw.url + "/comfyfleet/activity", headers=AUTH).json()
            assert done["in_flight"] == 0 and done["last_request_at"] is not None
    finally:
        _Slow.release.set()
        upstream.shutdown()
        upstream.server_close()
