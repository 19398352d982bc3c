"""Fixtures for batch generation: a ComfyUI test server, a client tuned for fast failure
detection, the fal.ai test server, a local image server (the Hugging Face test hub ``hub``
comes from tests.doubles.fixtures)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from comfyfleet.comfy.client import ComfyClient
from comfyfleet.generate.fal import FalSettings
from comfyfleet.generate.jobs import Job, parse_jobs
from tests.doubles.comfyui import FakeComfyUI, png_bytes
from tests.doubles.fal import TEST_KEY, FalDouble

BUILTINS = {
    "sdxl_txt2img", "pony_txt2img", "img2img", "wan_i2v", "hunyuan_t2v", "svd_i2v",
    "animatediff_sdxl", "cogvideox",
}  # fmt: skip
VIDEOS = {"wan_i2v", "svd_i2v", "cogvideox"}


@pytest.fixture
def fake() -> Iterator[FakeComfyUI]:
    with FakeComfyUI() as server:
        yield server


def make_client(url: str) -> ComfyClient:
    # Short reconnect/poll times: a dead server is noticed in about a second.
    return ComfyClient(url, timeout=5.0, poll_interval=0.05, idle_poll=1.0, reconnect_timeout=1.0)


@pytest.fixture
def client(fake: FakeComfyUI) -> Iterator[ComfyClient]:
    with make_client(fake.url) as c:
        yield c


@pytest.fixture
def fal() -> Iterator[FalDouble]:
    with FalDouble() as double:
        yield double


@pytest.fixture
def fal_settings(fal: FalDouble) -> FalSettings:
    return FalSettings(key=TEST_KEY, base_url=fal.url, poll_interval_s=0.0, backoff_s=0.0)


class ImageServer:
    """Serves files over HTTP on 127.0.0.1 (an input image 'on the web')."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.hits: list[str] = []
        files, hits = self.files, self.hits

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                data = files.get(self.path)
                self.send_response(200 if data is not None else 404)
                self.send_header("Content-Type", "image/png" if data else "text/plain")
                self.send_header("Content-Length", str(len(data or b"")))
                self.end_headers()
                self.wfile.write(data or b"")

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def images() -> Iterator[ImageServer]:
    server = ImageServer()
    server.files["/cat.png"] = png_bytes(rgb=(200, 40, 10))
    yield server
    server.close()


JobsFactory = Callable[..., list[Job]]


@pytest.fixture
def make_jobs(tmp_path: Path) -> JobsFactory:
    """Rows (dicts) -> validated jobs, as if read from ``tmp_path/jobs.csv``."""

    def build(rows: list[dict[str, Any]]) -> list[Job]:
        return parse_jobs(
            rows, source=tmp_path / "jobs.csv", builtin_workflows=BUILTINS, video_workflows=VIDEOS
        )

    return build
