"""Warm-up pull benchmark: our verified pull against ``s5cmd cp`` on the same objects.

Generates a set of random model files (several sizes, none a multiple of the range size),
uploads them to an S3 endpoint (a SeaweedFS started under ``--workdir`` unless
``--endpoint-url``/``--bucket`` name a real one, credentials then from the environment),
writes ``manifest.json``, and times, in the same run, median of ``--runs`` each, with
``sync`` and an empty target before every run (variants interleaved, order shuffled per run):

  (a) ``pull``               our pull, sha256 verified while writing, fsync, atomic rename
  (b) ``pull, hash off``     the same with hashing switched off (the cost of hashing)
  (c) ``s5cmd cp``           the fast baseline, verifies nothing
  (c') ``s5cmd cp`` + sync   the same held to our durability (we fsync before placing)
  (d) ``s5cmd + sha256sum``  what a careful operator does by hand
  (e) ``all present``        a warm-up where every file is in place (markers, verify fast)
  (f) ``s5cmd cp`` + read    a cold start by hand: copy, then the model load reads every file
  (f') (f) with a sync between (held to our durability)
  (g) ``pull`` + read        our cold start: the pull, then the model load's read
  (g') (g) on the other write paths (``--write-path write-behind|buffered|direct``)
  (g0) (g) with the hash off: what verification costs a cold start

(f), (f'), (g), (g'), (g0) start from an empty page cache (``sync; echo 3 >
/proc/sys/vm/drop_caches``; the output says so where the host does not permit it). With
``--link-rate 1gbit`` (root only) the bench runs again inside a fresh network namespace whose
loopback is capped with ``tc qdisc ... tbf``: SeaweedFS, s5cmd and the pull talk only over it,
and the namespace is deleted at the end; SeaweedFS's gateway-to-volume traffic crosses the same
loopback, so the effective link is about half the rate.

Targets (issue 11, 2-core box): (a)/(c) >= 0.9, (a)/(c') >= 1.15, (d)/(a) >= 3.0,
(g)/(f) >= 1.0; on a capped link (a)/(c) >= 0.97 (the link is the limit). (e) < 2 s.

    python bench/warmup.py --size-mb 512 --runs 3
    python bench/warmup.py --size-mb 512 --runs 3 --link-rate 1gbit
    python bench/warmup.py --size-mb 8192 --workdir /data/bench --workers 16 --json
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import random
import re
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
import _common  # noqa: E402

from comfyfleet.pull.transfer import WRITE_PATHS, MiB, PullSettings, plan_pull, pull  # noqa: E402
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


def s5cmd_cp(ep: dict[str, str], store: S3Store, dest: Path) -> None:
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": ep["access_key"],
        "AWS_SECRET_ACCESS_KEY": ep["secret_key"],
        "AWS_REGION": ep["region"],
    }
    src = f"s3://{ep['bucket']}/{store.prefix + '/' if store.prefix else ''}models/*"
    subprocess.run(
        [_common.find_s5cmd(), "--endpoint-url", ep["endpoint_url"], "cp", src, f"{dest}/"],
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


def drop_caches() -> str | None:
    """``sync; echo 3 > /proc/sys/vm/drop_caches``; why not, when this host does not allow it."""
    sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as exc:  # PermissionError in a container, read-only /proc, not Linux
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    return None


def read_all(dest: Path) -> int:
    """Read every model file once, in order, as a model load does; returns the bytes read."""
    total = 0
    buf = bytearray(8 * MiB)
    view = memoryview(buf)
    for path in sorted(dest.rglob("*.safetensors")):
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(view):
                total += n
    return total


LABELS = {
    "pull": "(a) pull, sha256 verified",
    "pull_nohash": "(b) pull, hash off",
    "s5cmd": "(c) s5cmd cp",
    "s5cmd_sync": "(c') s5cmd cp + sync",
    "s5cmd_sha256sum": "(d) s5cmd cp + sha256sum",
    "s5cmd_read": "(f) s5cmd cp + read",
    "s5cmd_sync_read": "(f') s5cmd cp + sync + read",
    "pull_read": "(g) pull + read",
    "pull_read_nohash": "(g0) pull + read, hash off",
    "pull_read_direct": "(g') pull + read, direct",
    "pull_read_buffered": "(g') pull + read, buffered",
    "pull_read_write-behind": "(g') pull + read, write-behind",
}
# Inside a capped link every byte costs seconds: the variants the link question needs.
LINK_VARIANTS = ("pull", "s5cmd", "s5cmd_sync", "s5cmd_read", "pull_read")
# The cold-start variants start from an empty page cache (the host just booted).
COLD = (
    "s5cmd_read",
    "s5cmd_sync_read",
    "pull_read",
    "pull_read_nohash",
    *(f"pull_read_{p}" for p in WRITE_PATHS),
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="total size of the set")
    parser.add_argument("--files", type=int, default=6, help="number of files in the set")
    parser.add_argument("--runs", type=int, default=3, help="runs per variant (median)")
    parser.add_argument("--range-mb", type=int, default=PullSettings.range_size // MiB)
    parser.add_argument("--workers", type=int, default=PullSettings.max_workers)
    parser.add_argument(
        "--write-path",
        choices=tuple(WRITE_PATHS),
        default=PullSettings().write_path,
        help="(a), (b), (g): O_DIRECT, buffered (one fsync at the end), or buffered with "
        "write-behind (default: PullSettings'); (g') takes the others",
    )
    parser.add_argument(
        "--boto3", action="store_true", help="pull with store.get_range, not presigned reads"
    )
    parser.add_argument(
        "--link-rate",
        metavar="RATE",
        help="cap the link: SeaweedFS and the clients in a network namespace whose loopback "
        "is shaped with tc tbf at RATE (1gbit, 4gbit, 500mbit); root only",
    )
    parser.add_argument("--in-netns", metavar="RATE", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help="where files go (default: a temp dir)")
    parser.add_argument("--endpoint-url", help="use this S3 endpoint instead of a SeaweedFS")
    parser.add_argument("--bucket", help="existing bucket at --endpoint-url")
    parser.add_argument(
        "--only",
        type=lambda v: [x.strip() for x in v.split(",") if x.strip()],
        help="time only these variants (comma separated names as in --json), for quick looks",
    )
    parser.add_argument("--keep", action="store_true", help="keep the workdir")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.link_rate:
        return link_capped(args, sys.argv[1:] if argv is None else argv)
    own_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="comfyfleet-bench-")) if own_workdir else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        figures = measure(args, workdir)
    finally:
        if own_workdir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print_figures(figures)
    return 0


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Upload the set, time every variant (interleaved, median of ``--runs``), and (outside a
    capped link) the everything-present pulls; returns the figures."""
    settings = PullSettings(
        range_size=args.range_mb * MiB,
        max_workers=args.workers,
        fast_http=not args.boto3,
        **WRITE_PATHS[args.write_path],
    )
    files = generate(workdir / "src", args.size_mb * MiB, args.files)
    total = sum(size for _, _, size, _ in files)
    expected = {name: sha for name, _, _, sha in files}
    extra: dict[str, Any] = {}
    with s3_endpoint(args, workdir) as ep:
        store = make_store(ep, f"bench-{uuid.uuid4().hex[:6]}", args.workers)
        t_up = timed(lambda: upload(ep, store, files))
        shutil.rmtree(workdir / "src")
        from comfyfleet.store.manifest import read_manifest

        comfy = workdir / "target" / "ComfyUI"
        items = plan_pull(read_manifest(store).entries, comfy)
        s5_dest = workdir / "target" / "s5cmd"

        def ours(s: PullSettings) -> Callable[[], None]:
            def run() -> None:
                report = pull(items, store, settings=s, preflight_fn=None)
                report.raise_for_failures()
                if report.bytes_downloaded != total:
                    raise SystemExit(f"pulled {report.bytes_downloaded} of {total} bytes")

            return run

        def then(*steps: Callable[[], Any]) -> Callable[[], None]:
            def run() -> None:
                for step in steps:
                    step()

            return run

        def s5cmd() -> None:
            s5cmd_cp(ep, store, s5_dest)

        def check_read(dest: Path) -> Callable[[], None]:
            def run() -> None:
                if read_all(dest) != total:
                    raise SystemExit(f"read back fewer than {total} bytes under {dest}")

            return run

        # Our pull fsyncs every file before it counts as placed; (c') is s5cmd held to the
        # same durability (its own timing ends while bytes sit in the page cache).
        variants: dict[str, Callable[[], None]] = {
            "pull": ours(settings),
            "pull_nohash": ours(dataclasses.replace(settings, hash=False)),
            "s5cmd": s5cmd,
            "s5cmd_sync": then(s5cmd, sync),
            "s5cmd_sha256sum": then(s5cmd, lambda: sha256sum_all(s5_dest, expected)),
            "s5cmd_read": then(s5cmd, check_read(s5_dest)),
            "s5cmd_sync_read": then(s5cmd, sync, check_read(s5_dest)),
            "pull_read": then(ours(settings), check_read(comfy)),
            # (g0): the same with sha256 off: what verification costs a cold start.
            "pull_read_nohash": then(
                ours(dataclasses.replace(settings, hash=False)), check_read(comfy)
            ),
        }
        for path, fields in WRITE_PATHS.items():  # (g'): the other write paths
            if path != args.write_path:
                other = dataclasses.replace(settings, **fields)
                variants[f"pull_read_{path}"] = then(ours(other), check_read(comfy))
        if args.in_netns:
            variants = {k: v for k, v in variants.items() if k in LINK_VARIANTS}
        if args.only:
            unknown = sorted(set(args.only) - set(variants))
            if unknown:
                raise SystemExit(f"--only: no variant {', '.join(unknown)} ({', '.join(variants)})")
            variants = {k: v for k, v in variants.items() if k in args.only}
        times: dict[str, list[float]] = {k: [] for k in variants}
        cpu: dict[str, list[float]] = {k: [] for k in variants}
        cache_note: str | None = None
        for run in range(args.runs):
            # Interleaved, so drift hits every variant alike, and shuffled, so no variant always
            # follows the same one: deleting the last variant's 512 MiB and its writeback
            # slows the next one (a fixed order favoured whichever (g) came later by ~35%).
            names = list(variants)
            random.Random(run).shuffle(names)
            for name in names:
                fn = variants[name]
                fresh(workdir / "target")
                if name in COLD:
                    cache_note = drop_caches()
                times[name].append(timed(fn, cpu[name]))
        fresh(workdir / "target")  # a download, so the reader in use is known
        extra["reader"] = pull(items[:1], store, settings=settings, preflight_fn=None).reader
        if not args.in_netns:
            extra.update(all_present(items, store, settings, ours(settings), args.runs, workdir))
    return figures_of(args, settings, files, total, t_up, times, cpu, cache_note, extra)


def all_present(
    items: list[Any],
    store: S3Store,
    settings: PullSettings,
    place: Callable[[], None],
    runs: int,
    workdir: Path,
) -> dict[str, float]:
    """(e): a warm-up where everything is in place, markers too (verify fast, then full)."""
    fresh(workdir / "target")
    place()
    sync()
    present: list[float] = []
    for _ in range(runs):
        t0 = time.perf_counter()
        report = pull(items, store, settings=settings)
        present.append(time.perf_counter() - t0)
        assert report.count("present") == len(items) and report.bytes_downloaded == 0
    t0 = time.perf_counter()
    full = pull(items, store, settings=dataclasses.replace(settings, verify="full"))
    full_s = time.perf_counter() - t0
    assert full.count("present") == len(items)
    return {
        "all_present_s": round(statistics.median(present), 3),
        "all_present_full_verify_s": round(full_s, 3),
    }


def figures_of(
    args: argparse.Namespace,
    settings: PullSettings,
    files: list[Any],
    total: int,
    t_up: float,
    times: dict[str, list[float]],
    cpu: dict[str, list[float]],
    cache_note: str | None,
    extra: dict[str, Any],
) -> dict[str, Any]:
    med = {k: statistics.median(v) for k, v in times.items()}
    mbps = {k: total / 1e6 / v for k, v in med.items()}

    def speed(a: str, b: str) -> float | None:
        return round(mbps[a] / mbps[b], 3) if a in mbps and b in mbps else None

    ratios = {
        "(a)/(c)": speed("pull", "s5cmd"),
        "(a)/(c')": speed("pull", "s5cmd_sync"),
        "(d)/(a)": speed("pull", "s5cmd_sha256sum"),  # a time ratio: (d) takes this much longer
        "(g)/(f)": speed("pull_read", "s5cmd_read"),
        "(g)/(f')": speed("pull_read", "s5cmd_sync_read"),
        "(g0)/(f)": speed("pull_read_nohash", "s5cmd_read"),
        **{f"(g)/(g' {p})": speed("pull_read", f"pull_read_{p}") for p in WRITE_PATHS},
    }
    targets = {
        "(a)/(c)": 0.97 if args.in_netns else 0.9,
        "(a)/(c')": None if args.in_netns else 1.15,
        "(d)/(a)": 3.0,
        "(g)/(f)": 1.0,
        "(g)/(f')": 1.0,
    }
    hashing = med["pull"] / med["pull_nohash"] - 1 if "pull_nohash" in med else None
    return {
        "size_bytes": total,
        "files": len(files),
        "runs": args.runs,
        "range_mb": args.range_mb,
        "workers": args.workers,
        "cpus": os.cpu_count(),
        "load": os.getloadavg(),
        "write_path": args.write_path,
        "link_rate": args.in_netns,
        "drop_caches": cache_note or "done",
        "upload_s": round(t_up, 2),
        "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "median_s": {k: round(v, 3) for k, v in med.items()},
        "client_cpu_s": {k: round(statistics.median(v), 2) for k, v in cpu.items()},
        "mb_per_s": {k: round(v, 1) for k, v in mbps.items()},
        "ratios": {k: v for k, v in ratios.items() if v is not None},
        "targets": {
            f"{k} >= {t}": ratios[k] is not None and ratios[k] >= t  # type: ignore[operator]
            for k, t in targets.items()
            if t is not None and ratios.get(k) is not None
        },
        "hashing_cost": None if hashing is None else round(hashing, 3),
        **extra,
    }


def print_figures(f: dict[str, Any]) -> None:
    print(
        f"set: {f['files']} files, {f['size_bytes'] / MiB:.0f} MiB; {f['cpus']} CPUs, load "
        f"{' '.join(f'{x:.2f}' for x in f['load'])}; range {f['range_mb']} MiB x {f['workers']} "
        f"workers; reads: {f['reader']}; write path: {f['write_path']} ((g') the others); "
        f"median of {f['runs']}"
    )
    if f["drop_caches"] != "done":
        print(
            f"  page cache NOT dropped before (f)/(g) (not permitted here: {f['drop_caches']}); "
            "reads after s5cmd and the buffered pull come from memory either way, an O_DIRECT "
            "pull's read from disk"
        )
    else:
        print("  page cache dropped (sync; echo 3 > /proc/sys/vm/drop_caches) before (f)/(g)")
    if f["link_rate"]:
        rate = parse_rate(f["link_rate"])
        print(
            f"  link: tbf {f['link_rate']} on a network namespace's loopback; SeaweedFS's own "
            "gateway-to-volume traffic crosses the same loopback, so the effective link is "
            f"about half: ~{rate / 2 / 1e6:.0f} MB/s"
        )
    for key, label in LABELS.items():
        if key in f["median_s"]:
            print(
                f"  {label:30s} {f['median_s'][key]:7.3f} s  {f['mb_per_s'][key]:7.1f} MB/s  "
                f"(client CPU {f['client_cpu_s'][key]:.2f} s)"
            )
    kinds = {"(d)/(a)": "time ratio"}
    met = {k.split(" >= ")[0]: (k.split(" >= ")[1], ok) for k, ok in f["targets"].items()}
    for name, value in f["ratios"].items():
        if value is None:  # a variant left out (--only)
            continue
        target = ""
        if name in met:
            target = f"  (target >= {met[name][0]}: {'met' if met[name][1] else 'MISSED'})"
        print(f"  {name:17s} {kinds.get(name, 'speed ratio'):11s} {value:6.2f}x{target}")
    if f["hashing_cost"] is not None:
        print(f"  hashing cost (a vs b)          {f['hashing_cost'] * 100:+.1f}%")
    if "all_present_s" in f:
        print(
            f"  (e) all present, verify fast {f['all_present_s']:.3f} s  (target < 2 s); "
            f"verify full {f['all_present_full_verify_s']:.2f} s"
        )


# ------------------------------------------------------------------ the link-capped mode


def parse_rate(text: str) -> float:
    """tc's rate words in bytes per second: '1gbit' -> 125e6."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kmg]?)bit", text.strip().lower())
    if not match:
        raise SystemExit(f"--link-rate {text!r}: expected a rate like 1gbit, 4gbit, 500mbit")
    scale = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[match.group(2)]
    return float(match.group(1)) * scale / 8


def link_capped(args: argparse.Namespace, argv: list[str]) -> int:
    """Run this bench again inside a network namespace whose loopback is capped at the rate.

    Everything that talks (SeaweedFS, s5cmd, our pull) runs inside, on the namespace's own
    loopback; the host's network is never touched. The namespace is deleted at the end.
    """
    rate = parse_rate(args.link_rate)
    if os.geteuid() != 0:
        print(f"--link-rate {args.link_rate}: skipped, needs root (ip netns, tc)")
        return 0
    if args.endpoint_url:
        raise SystemExit("--link-rate starts its own SeaweedFS: drop --endpoint-url")
    name = f"cfbench-{uuid.uuid4().hex[:8]}"
    burst = max(int(rate / 100), 1 << 20)  # 10 ms of traffic, at least 1 MiB (> 64 KiB MTU)
    child = [a for a in argv if not a.startswith("--link-rate")]
    if "--link-rate" in argv:  # "--link-rate 1gbit" as two words
        at = argv.index("--link-rate")
        child = argv[:at] + argv[at + 2 :]
    try:
        subprocess.run(["ip", "netns", "add", name], check=True)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        subprocess.run(
            ["ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", "lo", "root", "tbf"]
            + ["rate", args.link_rate, "burst", str(burst), "latency", "100ms"],
            check=True,
        )
        cmd = [sys.executable, str(Path(__file__).resolve()), *child, "--in-netns", args.link_rate]
        return subprocess.run(["ip", "netns", "exec", name, *cmd], check=False).returncode
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


if __name__ == "__main__":
    raise SystemExit(main())
