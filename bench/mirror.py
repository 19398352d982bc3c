"""Benchmark: mirror a generated file from a local HTTP source into SeaweedFS.

Ours: ``comfyfleet.mirror.driver.mirror_file`` streams source -> multipart upload, sha256 verified
before completion, in a child process whose peak RSS is measured.
Baseline (two steps, same run, same servers): a plain streaming GET to a file on disk, then
``s5cmd cp`` of that file into the bucket (no verification at all).

Each timed run starts after ``sync``; the figure is the median of ``--runs``. The source
server runs in its own process, so it does not share the GIL with either side.

    .venv/bin/python bench/mirror.py --size-mb 1024 --runs 3

Prints MB/s for both, the ratio (ours / baseline speed; > 1 means ours is faster), our
peak RSS, and the memory bound of the upload engine for this file and for a 7 GB file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# bench/_common.py puts the repository on sys.path and turns telemetry off, before any
# library is imported; this folder goes on sys.path first, however the file was started.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, find_s5cmd  # noqa: E402

MiB = 1024 * 1024
BENCH_KEY = "models/checkpoints/bench.safetensors"


# ---------------------------------------------------------------- the source server


def serve(path: str, port_file: str) -> None:
    """A threaded HTTP server for one file with ``Range`` support (sendfile), on 127.0.0.1."""
    size = os.path.getsize(path)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def do_HEAD(self) -> None:  # noqa: N802
            self._answer(send_body=False)

        def do_GET(self) -> None:  # noqa: N802
            self._answer(send_body=True)

        def _answer(self, *, send_body: bool) -> None:
            start, end, status = 0, size - 1, 200
            wanted = self.headers.get("Range", "")
            if wanted.startswith("bytes=") and "-" in wanted:
                first, _, last = wanted[6:].partition("-")
                start = int(first or 0)
                end = int(last) if last else size - 1
                status = 206
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", f'"bench-{size}"')
            self.send_header("Content-Length", str(end - start + 1))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if send_body:
                with open(path, "rb") as f:
                    self.connection.sendfile(f, offset=start, count=end - start + 1)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Path(port_file).write_text(str(server.server_address[1]))
    server.serve_forever()


def start_source(path: Path, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port_file = workdir / "source.port"
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(path), str(port_file)],
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text().strip():
            port = int(port_file.read_text())
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, f"http://127.0.0.1:{port}/bench.safetensors"
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the source server did not start")


# ---------------------------------------------------------------- our side (child process)


def child_mirror(spec_json: str) -> None:
    """Mirror once with comfyfleet's engine; print timing, hash and peak RSS as JSON."""
    from comfyfleet.catalog import ModelFile, URLSource
    from comfyfleet.mirror.driver import mirror_file
    from comfyfleet.mirror.upload import TransferSettings
    from comfyfleet.sources import Tokens
    from comfyfleet.store.s3 import S3Store

    spec = json.loads(spec_json)
    store = S3Store(
        spec["bucket"],
        endpoint_url=spec["endpoint"],
        access_key_id=spec["access_key"],
        secret_access_key=spec["secret_key"],
        region="us-east-1",
    )
    model = ModelFile(
        id="bench",
        folder="checkpoints",
        file="bench.safetensors",
        source=URLSource(type="url", url=spec["url"]),
        size=spec["size"],
        sha256=spec["sha256"],
    )
    settings = TransferSettings(
        part_size=spec["part_size"], max_parts_in_flight=spec["parts_in_flight"]
    )
    began = time.perf_counter()
    result = mirror_file(model, store, tokens=Tokens(), settings=settings, force=True)
    seconds = time.perf_counter() - began
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(
        json.dumps(
            {
                "seconds": seconds,
                "status": result.status,
                "sha256": result.sha256,
                "bytes": result.bytes,
                "peak_rss": peak_kib * 1024,
            }
        )
    )


def run_ours(spec: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child-mirror", json.dumps(spec)],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    data: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if data["status"] != "mirrored" or data["sha256"] != spec["sha256"]:
        raise RuntimeError(f"our mirror did not land the right bytes: {data}")
    return data


# ---------------------------------------------------------------- the baseline


def run_baseline(url: str, tmp_file: Path, env: dict[str, str], target: str, s5cmd: str) -> float:
    """Plain streaming GET to disk, then ``s5cmd cp`` to the bucket; wall seconds."""
    import httpx

    began = time.perf_counter()
    with httpx.stream("GET", url, timeout=60) as response, open(tmp_file, "wb") as f:
        response.raise_for_status()
        for chunk in response.iter_raw(8 * MiB):
            f.write(chunk)
    subprocess.run(
        [s5cmd, "--endpoint-url", env["AWS_ENDPOINT_URL"], "cp", str(tmp_file), target],
        check=True,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
    )
    seconds = time.perf_counter() - began
    tmp_file.unlink()
    return seconds


# ---------------------------------------------------------------- driver


def make_file(path: Path, size: int) -> str:
    hasher = hashlib.sha256()
    block = os.urandom(64 * MiB)
    with open(path, "wb") as f:
        left = size
        i = 0
        while left:
            # Vary every block so nothing downstream can deduplicate or compress it away.
            data = (i.to_bytes(8, "little") + block[8:])[: min(left, len(block))]
            f.write(data)
            hasher.update(data)
            left -= len(data)
            i += 1
    return hasher.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="file size in MiB (1024)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per side (median)")
    parser.add_argument("--part-size-mb", type=int, default=64)
    parser.add_argument("--parts-in-flight", type=int, default=4)
    parser.add_argument("--workdir", help="where to put the file and SeaweedFS (default: temp)")
    args = parser.parse_args()

    from comfyfleet.mirror.upload import TransferSettings
    from comfyfleet.units import format_bytes
    from tests.support.seaweed import new_bucket, run_seaweedfs

    size = args.size_mb * MiB
    settings = TransferSettings(
        part_size=args.part_size_mb * MiB, max_parts_in_flight=args.parts_in_flight
    )
    work = Path(args.workdir or tempfile.mkdtemp(prefix="comfyfleet-bench-mirror-"))
    work.mkdir(parents=True, exist_ok=True)
    source_file = work / "bench.safetensors"
    print(f"generating {format_bytes(size)} ...", flush=True)
    digest = make_file(source_file, size)
    s5cmd = find_s5cmd()
    source, url = start_source(source_file, work)
    try:
        with run_seaweedfs(work / "seaweed") as server:
            bucket = new_bucket(server)
            env = server.env()
            client = server.client()
            spec = {
                "bucket": bucket,
                "endpoint": server.endpoint_url,
                "access_key": server.access_key,
                "secret_key": server.secret_key,
                "url": url,
                "size": size,
                "sha256": digest,
                "part_size": settings.part_size,
                "parts_in_flight": settings.max_parts_in_flight,
            }
            ours, base, peaks = timed_runs(args.runs, spec, client, env, work, s5cmd)
    finally:
        source.terminate()
        source.wait(timeout=10)
    report(size, digest, args.runs, settings, ours, base, peaks)
    shutil.rmtree(work, ignore_errors=True)


def timed_runs(
    runs: int, spec: dict[str, Any], client: Any, env: dict[str, str], work: Path, s5cmd: str
) -> tuple[list[float], list[float], list[int]]:
    """``runs`` rounds of both sides, alternating which goes first; seconds and peak RSS."""
    bucket, url = spec["bucket"], spec["url"]
    ours: list[float] = []
    base: list[float] = []
    peaks: list[int] = []
    for run in range(runs):
        for side in ("ours", "baseline") if run % 2 == 0 else ("baseline", "ours"):
            subprocess.run(["sync"], check=False)
            if side == "ours":
                data = run_ours(spec)
                ours.append(data["seconds"])
                peaks.append(data["peak_rss"])
                client.delete_object(Bucket=bucket, Key=BENCH_KEY)
            else:
                key = f"baseline/{uuid.uuid4().hex}.bin"
                base.append(
                    run_baseline(url, work / "download.bin", env, f"s3://{bucket}/{key}", s5cmd)
                )
                client.delete_object(Bucket=bucket, Key=key)
            print(
                f"  run {run + 1} {side:8s} {(ours if side == 'ours' else base)[-1]:6.2f} s",
                flush=True,
            )
    return ours, base, peaks


def report(
    size: int,
    digest: str,
    runs: int,
    settings: Any,
    ours: list[float],
    base: list[float],
    peaks: list[int],
) -> None:
    from comfyfleet.units import format_bytes

    ours_s, base_s = statistics.median(ours), statistics.median(base)
    ours_mbps, base_mbps = size / ours_s / 1e6, size / base_s / 1e6
    peak = max(peaks)
    bound = settings.memory_bound_for(size)
    bound_7gb = settings.memory_bound_for(7 * 1000**3)
    part = settings.part_size
    print()
    print(f"file: {format_bytes(size)}, sha256 {digest[:16]}..., median of {runs} runs")
    print(
        f"ours     (stream -> multipart, sha256 verified): {ours_s:6.2f} s  {ours_mbps:7.1f} MB/s"
    )
    print(
        f"baseline (GET to disk, then s5cmd cp):           {base_s:6.2f} s  {base_mbps:7.1f} MB/s"
    )
    print(f"ratio ours/baseline speed: {ours_mbps / base_mbps:.2f}x (> 1: ours is faster)")
    print(
        f"peak RSS of our mirror process: {format_bytes(peak)} "
        f"(includes the Python interpreter and imports)"
    )
    print(
        f"memory bound of the upload engine: (max_parts_in_flight + 1) x part_size + chunk "
        f"= ({settings.max_parts_in_flight} + 1) x {format_bytes(part)} + "
        f"{format_bytes(settings.chunk_size)} = {format_bytes(bound)} for this file, "
        f"{format_bytes(bound_7gb)} for a 7 GB file (same part size: "
        f"{-(-7 * 1000**3 // part)} parts)"
    )


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--serve":
        serve(sys.argv[2], sys.argv[3])
    elif len(sys.argv) >= 2 and sys.argv[1] == "--child-mirror":
        child_mirror(sys.argv[2])
    else:
        main()
