"""Input images: URL / path / bytes, content sniffing, size caps, content-hash upload names."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from comfyfleet.comfy import ComfyClient, load_image_source, sniff_image
from comfyfleet.comfy.images import content_name, describe_bytes
from comfyfleet.errors import InputImageError, SourceUnavailable, is_transient
from tests.doubles.comfyui import FakeComfyUI, png_bytes

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 64
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8L" + b"\x00" * 32


class Files(BaseHTTPRequestHandler):
    """Serves ROUTES: path -> (status, body, send Content-Length)."""

    protocol_version = "HTTP/1.1"
    routes: dict[str, tuple[int, bytes, bool]] = {}
    served: list[str] = []

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return

    def do_GET(self) -> None:
        self.served.append(self.path)
        status, body, with_length = self.routes.get(self.path.split("?")[0], (404, b"", True))
        self.send_response(status)
        if with_length:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        # No length: chunked, so only counting while reading can enforce the cap.
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for start in range(0, len(body), 4096):
            chunk = body[start : start + 4096]
            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")


@pytest.fixture
def web() -> Iterator[str]:
    Files.routes = {
        "/cat.png": (200, png_bytes(rgb=(10, 20, 30)), True),
        "/photo.jpg": (200, JPEG, True),
        "/page.html": (200, b"<!DOCTYPE html><html><body>login</body></html>", True),
        "/big.png": (200, png_bytes() + b"\x00" * 5000, True),
        "/big-chunked.png": (200, png_bytes() + b"\x00" * 20000, False),
        "/broken.png": (500, b"oops", True),
    }
    Files.served = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Files)
    server.daemon_threads = True
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_sniff_and_describe() -> None:
    assert sniff_image(png_bytes()) == ("image/png", ".png")
    assert sniff_image(JPEG) == ("image/jpeg", ".jpg")
    assert sniff_image(WEBP) == ("image/webp", ".webp")
    assert sniff_image(b"GIF89a....") is None
    assert describe_bytes(b"GIF89a") == "a GIF image"
    assert describe_bytes(b"%PDF-1.7") == "a PDF document"
    assert describe_bytes(b"  <html><head>") == "an HTML page"
    assert describe_bytes(b"") == "empty (0 bytes)"
    assert describe_bytes(bytes(range(200, 256))).startswith("unrecognised binary data")


def test_bytes_path_url_and_data_uri(web: str, tmp_path: Path) -> None:
    data = png_bytes()
    assert load_image_source(data) == (data, "image/png", ".png")
    path = tmp_path / "in.jpeg"
    path.write_bytes(JPEG)
    assert load_image_source(path)[1:] == ("image/jpeg", ".jpg")
    assert load_image_source(str(path))[0] == JPEG
    fetched, mime, ext = load_image_source(f"{web}/cat.png")
    assert (fetched, mime, ext) == (png_bytes(rgb=(10, 20, 30)), "image/png", ".png")
    uri = "data:image/webp;base64," + base64.b64encode(WEBP).decode()
    assert load_image_source(uri)[1] == "image/webp"


def test_non_images_are_refused_naming_source_and_kind(web: str, tmp_path: Path) -> None:
    with pytest.raises(InputImageError) as caught:
        load_image_source(f"{web}/page.html?X-Amz-Signature=secret")
    message = str(caught.value)
    assert f"{web}/page.html is an HTML page, not a PNG, JPEG or WebP image" in message
    assert "secret" not in message  # presigned query strings are never shown
    notes = tmp_path / "notes.gif"
    notes.write_bytes(b"GIF89a" + b"\x00" * 10)
    with pytest.raises(InputImageError, match="notes.gif is a GIF image"):
        load_image_source(notes)
    with pytest.raises(InputImageError, match="does not exist"):
        load_image_source(tmp_path / "missing.png")
    with pytest.raises(InputImageError, match="is a directory"):
        load_image_source(tmp_path)
    with pytest.raises(InputImageError, match="answered HTTP 404"):
        load_image_source(f"{web}/nothing.png")


def test_oversize_is_refused_before_and_while_reading(web: str, tmp_path: Path) -> None:
    small = len(png_bytes()) + 100
    with pytest.raises(InputImageError, match="over the"):
        load_image_source(png_bytes() + b"\x00" * 200, max_bytes=small)
    big = tmp_path / "big.png"
    big.write_bytes(png_bytes() + b"\x00" * 500)
    with pytest.raises(InputImageError, match="over the"):
        load_image_source(big, max_bytes=small)
    with pytest.raises(InputImageError, match="over the"):
        load_image_source(f"{web}/big.png", max_bytes=small)  # Content-Length
    with pytest.raises(InputImageError, match="over the"):
        load_image_source(f"{web}/big-chunked.png", max_bytes=10_000)  # counted while reading


def test_server_errors_are_transient(web: str) -> None:
    with pytest.raises(SourceUnavailable) as caught:
        load_image_source(f"{web}/broken.png")
    assert is_transient(caught.value)


def test_upload_names_by_content_and_reuses_identical_bytes(
    fake: FakeComfyUI, client: ComfyClient, web: str, tmp_path: Path
) -> None:
    data = png_bytes(rgb=(10, 20, 30))
    path = tmp_path / "same.png"
    path.write_bytes(data)
    from_url = client.upload_image(f"{web}/cat.png")
    from_path = client.upload_image(path)
    from_bytes = client.upload_image(data)
    expected = hashlib.sha256(data).hexdigest()[:16] + ".png"
    assert (
        from_url.name == from_path.name == from_bytes.name == expected == content_name(data, ".png")
    )
    assert from_url.ref == expected
    inputs = [key for key in fake.files if key[0] == "input"]
    assert inputs == [("input", "", expected)]  # stored once
    jpeg = client.upload_image(JPEG)
    assert jpeg.name.endswith(".jpg")
    assert fake.files[("input", "", jpeg.name)] == JPEG


def test_upload_sends_mime_type_and_fields(fake: FakeComfyUI, client: ComfyClient) -> None:
    seen: list[bytes] = []
    original = fake._upload

    def spy(body: bytes, headers: Mapping[str, str]) -> Any:
        seen.append(body)
        return original(body, headers)

    fake._upload = spy  # type: ignore[method-assign]
    client.upload_image(WEBP)
    body = seen[0]
    assert b"Content-Type: image/webp" in body
    assert b'name="type"\r\n\r\ninput' in body
    assert b'name="overwrite"\r\n\r\nfalse' in body
    assert b'name="subfolder"\r\n\r\n' in body


def test_refused_upload_never_reaches_comfyui(fake: FakeComfyUI, client: ComfyClient) -> None:
    with pytest.raises(InputImageError):
        client.upload_image(io.BytesIO(b"x").getvalue())
    assert not any(p == "/upload/image" for _, p in fake.requests)
    small = ComfyClient(fake.url, max_image_bytes=100)
    try:
        with pytest.raises(InputImageError, match="over the"):
            small.upload_image(png_bytes(64, 64))
    finally:
        small.close()


def test_loadimage_template_fed_by_an_image_url(
    fake: FakeComfyUI, client: ComfyClient, web: str, tmp_path: Path
) -> None:
    from comfyfleet.comfy import build_workflow
    from tests.comfy.graphs import smoke

    template = tmp_path / "invert.json"
    template.write_text(json.dumps(smoke("{{image}}", prefix="{{out}}")))
    values = {"image": f"{web}/cat.png", "out": "jobs/j1", "prompt": "unused"}
    prepared = client.upload_images(values)
    assert prepared["image"] == content_name(png_bytes(rgb=(10, 20, 30)), ".png")
    assert prepared["out"] == "jobs/j1" and values["image"].startswith("http")
    result = client.run(build_workflow(str(template), prepared), timeout=10)
    assert [(o.subfolder, o.filename) for o in result.outputs] == [("jobs", "j1_00001_.png")]
