"""``comfyfleet instances offers|up|ls|down``: rent, watch and release vast.ai GPU instances.

A thin front over :mod:`comfyfleet.fleet`. The key comes from ``--vast-block NAME`` (a saved
``comfyfleet-vast`` block) or ``$VAST_API_KEY``; the server from the block or ``$VAST_URL``.
``up`` puts this checkout's wheel (or ``--wheel``) into the store for the instances; the
fleet's gateway token goes into the instances' environment and is printed nowhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import SecretStr

from comfyfleet.cli.common import (
    add_json_option,
    non_negative_float,
    positive_float,
    positive_int,
    print_json,
)
from comfyfleet.config import env
from comfyfleet.errors import ConfigError
from comfyfleet.fleet.cost import format_duration, format_usd, total_cost_usd
from comfyfleet.fleet.labels import fleet_label, fleet_of
from comfyfleet.fleet.listing import InstanceRow
from comfyfleet.fleet.offers import OfferQuery, find_offers
from comfyfleet.fleet.ready import ready_endpoints
from comfyfleet.fleet.reaper import fleet_activity, idle_seconds
from comfyfleet.fleet.release import release
from comfyfleet.fleet.rent import DEFAULT_DISK_GB, DEFAULT_IMAGE, RentRequest, rent_fleet
from comfyfleet.fleet.vast import Instance, Offer, VastClient
from comfyfleet.fleet.wheel import (
    DEFAULT_URL_HOURS,
    PublishedWheel,
    cached_wheel,
    publish_wheel,
)
from comfyfleet.generate.endpoints import ComfyEndpoint
from comfyfleet.store import ObjectStore, open_store

# The clock the cost and idle columns use (tests point it at the test server's clock).
clock: Callable[[], float] = time.time
DEFAULT_MIN_VRAM_GB = 24.0


def _vast_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--vast-block",
        metavar="NAME",
        help="a saved comfyfleet-vast block (default: $VAST_API_KEY, $VAST_URL)",
    )


def _offer_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument(
        "--min-vram",
        type=positive_float,
        required=required,
        default=None if required else DEFAULT_MIN_VRAM_GB,
        metavar="GB",
        help="VRAM of the GPU" + ("" if required else f" (default {DEFAULT_MIN_VRAM_GB:g})"),
    )
    parser.add_argument("--gpu", metavar="NAME", help="GPU model, e.g. 'RTX 4090' or RTX_4090")
    parser.add_argument("--max-dph", type=positive_float, metavar="USD", help="max $/hour")
    parser.add_argument(
        "--min-reliability", type=non_negative_float, metavar="R", help="0-1, e.g. 0.98"
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "instances",
        help="rent, list and release vast.ai GPU instances (a fleet)",
        description="GPU instances on vast.ai. A fleet is the instances labelled "
        "comfyfleet:<fleet>. Key: --vast-block or $VAST_API_KEY.",
    )
    actions = parser.add_subparsers(dest="instances_command", metavar="ACTION", required=True)

    p = actions.add_parser("offers", help="offers that fit, cheapest VRAM first")
    _offer_options(p, required=True)
    p.add_argument("--disk", type=positive_float, required=True, metavar="GB", help="disk")
    _vast_option(p)
    add_json_option(p)
    p.set_defaults(func=cmd_offers)

    p = actions.add_parser("up", help="rent N instances with the on-start script (all or none)")
    p.add_argument("--fleet", required=True, metavar="NAME", help="labels them comfyfleet:NAME")
    p.add_argument("--count", type=positive_int, required=True, metavar="N")
    p.add_argument("--profile", required=True, metavar="P", help="catalog profile to warm")
    _offer_options(p, required=False)
    p.add_argument("--image", default=DEFAULT_IMAGE, metavar="IMAGE", help="docker image")
    p.add_argument(
        "--disk",
        type=positive_float,
        default=DEFAULT_DISK_GB,
        metavar="GB",
        help=f"container disk (default {DEFAULT_DISK_GB:g})",
    )
    store = p.add_mutually_exclusive_group()
    store.add_argument(
        "--store",
        metavar="URI",
        help="the mirror the instances pull from, s3://bucket/prefix (default "
        "$COMFYFLEET_STORE; credentials from the instance's account settings)",
    )
    store.add_argument(
        "--store-block",
        metavar="NAME",
        help="a saved comfyfleet-store block: its bucket and credentials go to the instances",
    )
    p.add_argument(
        "--wheel",
        type=Path,
        metavar="PATH",
        help="the comfyfleet wheel the instances install (default: build this checkout's, "
        "cached until a source file changes); uploaded into the store",
    )
    p.add_argument(
        "--wheel-hours",
        type=positive_float,
        default=DEFAULT_URL_HOURS,
        metavar="H",
        help=f"how long the instances may download the wheel (default {DEFAULT_URL_HOURS:g})",
    )
    _vast_option(p)
    add_json_option(p)
    p.set_defaults(func=cmd_up)

    p = actions.add_parser("ls", help="instances: status, $/h, uptime, cost so far, endpoint")
    p.add_argument("--fleet", metavar="NAME", help="only this fleet (default: every instance)")
    _vast_option(p)
    add_json_option(p)
    p.set_defaults(func=cmd_ls)

    p = actions.add_parser("down", help="destroy instances: by id, a whole fleet, or idle ones")
    p.add_argument("ids", nargs="*", type=positive_int, metavar="ID")
    p.add_argument("--fleet", metavar="NAME", help="every instance of the fleet")
    p.add_argument(
        "--idle",
        type=non_negative_float,
        metavar="MIN",
        help="comfyfleet instances (of --fleet, if given) idle for MIN minutes",
    )
    p.add_argument("--dry-run", action="store_true", help="say what would be destroyed")
    _vast_option(p)
    add_json_option(p)
    p.set_defaults(func=cmd_down)


def _client(args: argparse.Namespace) -> VastClient:
    if args.vast_block:
        from blocks import VastCredentials, load

        block = load(VastCredentials, args.vast_block)
        return VastClient(block.api_key, url=block.url)
    return VastClient()


def fleet_comfy_endpoints(fleet: str, vast_block: str | None = None) -> list[ComfyEndpoint]:
    """``generate --fleet``: the ComfyUIs of the fleet's ready instances, each with the
    fleet's gateway token (read from vast.ai here, never printed)."""
    fleet_label(fleet)  # a bad name fails before any call
    with _client(argparse.Namespace(vast_block=vast_block)) as client:
        return ready_endpoints(client, fleet)


def _query(args: argparse.Namespace) -> OfferQuery:
    return OfferQuery(
        min_vram_gb=args.min_vram,
        disk_gb=args.disk,
        gpu_name=args.gpu,
        max_dph=args.max_dph,
        min_reliability=args.min_reliability,
    )


def _offer_json(o: Offer) -> dict[str, object]:
    return {
        "id": o.id,
        "gpu_name": o.gpu_name,
        "num_gpus": o.num_gpus,
        "vram_gb": round(o.vram_gb, 3),
        "dph_total": round(o.dph_total, 6),
        "dph_per_vram_gb": round(o.dph_per_vram_gb, 6),
        "reliability": o.reliability,
        "inet_down": o.inet_down,
        "disk_space": o.disk_space,
        "geolocation": o.geolocation,
    }


def cmd_offers(args: argparse.Namespace) -> int:
    query = _query(args)
    with _client(args) as client:
        offers = find_offers(client, query)
    if args.json:
        print_json({"offers": [_offer_json(o) for o in offers]})
        return 0
    print(
        f"{'OFFER':>10}  {'GPU':<16} {'VRAM':>7} {'$/h':>8} {'$/h/GB':>8} "
        f"{'RELIAB':>7} {'DOWN Mb/s':>10} {'DISK GB':>8}  LOCATION"
    )
    for o in offers:
        print(
            f"{o.id:>10}  {o.gpu_name[:16]:<16} {o.vram_gb:>6.1f}G {o.dph_total:>8.3f} "
            f"{o.dph_per_vram_gb:>8.4f} {o.reliability * 100:>6.1f}% {o.inet_down:>10.0f} "
            f"{o.disk_space:>8.0f}  {o.geolocation}"
        )
    print(f"{len(offers)} offer(s), sorted by $/h per GB of VRAM")
    return 0


def store_block_env(name: str) -> tuple[str, dict[str, str], ObjectStore]:
    """The store URI, the ``AWS_*`` variables of a saved ``comfyfleet-store`` block, as
    the on-start script reads them (secrets stay out of every output), and the store."""
    from blocks import ComfyfleetStore, load

    block = load(ComfyfleetStore, name)
    if block.path:
        raise ConfigError(
            f"comfyfleet-store block {name!r} is a local directory; a rented instance "
            "cannot reach it",
            hint="use a block with an S3-compatible bucket",
        )

    def plain(secret: SecretStr | None) -> str | None:
        return secret.get_secret_value() if secret is not None else None

    values = {
        "AWS_ACCESS_KEY_ID": block.access_key_id,
        "AWS_SECRET_ACCESS_KEY": plain(block.secret_access_key),
        "AWS_SESSION_TOKEN": plain(block.session_token),
        "AWS_ENDPOINT_URL": block.endpoint_url,
        "AWS_DEFAULT_REGION": block.region,
    }
    return block.uri, {k: v for k, v in values.items() if v}, block.open()


def _warn_if_unreachable(prefect_api_url: str | None) -> None:
    host = urlsplit(prefect_api_url or "").hostname or ""
    if host in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: PREFECT_API_URL is {prefect_api_url}; a rented instance cannot reach "
            "a loopback address, so its warm-up will not report to this Prefect server",
            file=sys.stderr,
        )


def cmd_up(args: argparse.Namespace) -> int:
    fleet_label(args.fleet)  # a bad name fails before any call
    store: str = args.store or env("COMFYFLEET_STORE") or ""
    store_env: dict[str, str] = {}
    opened: ObjectStore | None = None
    if args.store_block:
        store, store_env, opened = store_block_env(args.store_block)
    request = RentRequest(
        fleet=args.fleet,
        count=args.count,
        profile=args.profile,
        query=_query(args),
        image=args.image,
        store=store,
        prefect_api_url=env("PREFECT_API_URL"),
        extra_env=store_env,
    )
    _warn_if_unreachable(request.prefect_api_url)
    if urlsplit(store).scheme == "s3":  # otherwise rent_fleet refuses (or the image is baked)
        request = dataclasses.replace(request, wheel=_publish_wheel(args, opened or store))
    with _client(args) as client:
        report = rent_fleet(client, request, on_event=lambda line: print(line, file=sys.stderr))
    if args.json:
        print_json(
            {
                "fleet": report.fleet,
                "label": report.label,
                "instances": [
                    {"id": r.instance_id, "offer": _offer_json(r.offer)} for r in report.rented
                ],
                "offers_gone": report.gone,
                "dph_total": round(report.dph_total, 6),
                "gateway_port": request.gateway_port,
                "wheel": None
                if request.wheel is None
                else {
                    "filename": request.wheel.filename,
                    "sha256": request.wheel.sha256,
                    "key": request.wheel.key,
                },
            }
        )
        return 0
    ids = " ".join(str(r.instance_id) for r in report.rented)
    print(
        f"fleet {report.fleet}: rented {len(report.rented)} instance(s) ({ids}) at "
        f"${report.dph_total:.3f}/h in all; they boot and warm up on their own"
    )
    print(f"watch: comfyfleet instances ls --fleet {report.fleet}")
    print(
        f"each ComfyUI is reached through its gateway (port {request.gateway_port}, header "
        "'Authorization: Bearer <fleet token>'); the token stays in the instances' env"
    )
    return 0


def _publish_wheel(args: argparse.Namespace, store: ObjectStore | str) -> PublishedWheel:
    """The wheel the instances install, in the store (its URL never printed)."""
    wheel = args.wheel or cached_wheel()
    opened = open_store(store) if isinstance(store, str) else store
    published = publish_wheel(opened, wheel, expires_s=int(args.wheel_hours * 3600))
    print(
        f"comfyfleet wheel {published.filename} (sha256 {published.sha256[:12]}) is in the "
        f"store; the instances may fetch it for {args.wheel_hours:g} h",
        file=sys.stderr,
    )
    return published


def cmd_ls(args: argparse.Namespace) -> int:
    label = fleet_label(args.fleet) if args.fleet else None
    with _client(args) as client:
        instances = client.list_instances(label=label)
    now = clock()
    rows = [InstanceRow.of(i, now) for i in sorted(instances, key=lambda i: i.id)]
    total = total_cost_usd(instances, now)
    dph = sum(r.dph_total for r in rows)
    if args.json:
        print_json(
            {
                "fleet": args.fleet,
                "instances": [r.to_json() for r in rows],
                "dph_total": round(dph, 6),
                "cost_usd": round(total, 6),
            }
        )
        return 0
    print(
        f"{'ID':>10}  {'FLEET':<12} {'STATUS':<13} {'GPU':<14} {'$/h':>7} {'UPTIME':>7} "
        f"{'COST':>9}  ENDPOINT"
    )
    for r in rows:
        print(
            f"{r.id:>10}  {(r.fleet or '-')[:12]:<12} {r.status[:13]:<13} {r.gpu_name[:14]:<14} "
            f"{r.dph_total:>7.3f} {format_duration(r.uptime_s):>7} {format_usd(r.cost_usd):>9}"
            f"  {r.endpoint or '-'}"
        )
    print(f"{len(rows)} instance(s), ${dph:.3f}/h, {format_usd(total)} so far")
    return 0


def _down_targets(args: argparse.Namespace, client: VastClient) -> list[Instance] | list[int]:
    if args.ids:
        if args.fleet or args.idle is not None:
            raise ConfigError(
                "pass instance ids, or --fleet, or --idle, not ids together with the others",
                hint="comfyfleet instances down 123 456 | --fleet NAME | --idle MIN [--fleet N]",
            )
        return list(args.ids)
    if not args.fleet and args.idle is None:
        raise ConfigError(
            "nothing to destroy was named",
            hint="comfyfleet instances down 123 456 | --fleet NAME | --idle MIN [--fleet N]",
        )
    label = fleet_label(args.fleet) if args.fleet else None
    instances = client.list_instances(label=label)
    # Without --fleet, --idle only ever touches instances comfyfleet rented.
    instances = [i for i in instances if fleet_of(i.label)]
    if args.idle is not None:
        now = clock()
        # Real work as the gateways saw it (the last proxied request), as the reaper does.
        active = fleet_activity(instances, now)
        instances = [
            i for i in instances if idle_seconds(i, now, active.get(i.id)) >= args.idle * 60
        ]
    return instances


def cmd_down(args: argparse.Namespace) -> int:
    with _client(args) as client:
        targets = _down_targets(args, client)
        ids = [t.id if isinstance(t, Instance) else t for t in targets]
        if args.dry_run:
            if args.json:
                print_json({"dry_run": True, "would_destroy": ids})
            else:
                print(f"would destroy {len(ids)} instance(s): {' '.join(map(str, ids)) or '-'}")
            return 0
        report = release(client, ids)
    if args.json:
        print_json(
            {
                "destroyed": report.destroyed,
                "already_gone": report.already_gone,
                "failed": {str(k): v for k, v in report.failed.items()},
            }
        )
    else:
        print(
            f"destroyed {len(report.destroyed)} instance(s)"
            + (f": {' '.join(map(str, report.destroyed))}" if report.destroyed else "")
        )
        if report.already_gone:
            print(f"already gone: {' '.join(map(str, report.already_gone))}")
        for instance_id, why in report.failed.items():
            print(f"error: instance {instance_id} was not destroyed: {why}", file=sys.stderr)
        if report.failed:
            left = " ".join(map(str, report.failed))
            print(f"hint: run `comfyfleet instances down {left}` again", file=sys.stderr)
    return 0 if report.ok else 1
