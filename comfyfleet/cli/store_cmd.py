"""``comfyfleet store``: check that a store is usable, list what it holds."""

from __future__ import annotations

import argparse

from comfyfleet.cli.common import add_json_option, add_store_options, print_json
from comfyfleet.cli.stores import resolve_store
from comfyfleet.store import check_store
from comfyfleet.units import format_bytes


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "store",
        help="check and list the object store",
        description="The object store comfyfleet mirrors to: an S3 bucket + prefix or a "
        "directory. Without --store/--store-block: $COMFYFLEET_STORE, else ~/.comfyfleet/store.",
    )
    actions = parser.add_subparsers(dest="store_command", metavar="ACTION", required=True)

    p_check = actions.add_parser(
        "check", help="reachable, credentials accepted, bucket exists (writes nothing)"
    )
    add_store_options(p_check)
    add_json_option(p_check)
    p_check.set_defaults(func=cmd_check)

    p_ls = actions.add_parser("ls", help="list objects (key, size, modified)")
    add_store_options(p_ls)
    p_ls.add_argument("prefix", nargs="?", default="", metavar="PREFIX", help="e.g. models/")
    add_json_option(p_ls)
    p_ls.set_defaults(func=cmd_ls)


def _where(store: object) -> str:
    return str(getattr(store, "where", None) or getattr(store, "uri", store))


def cmd_check(args: argparse.Namespace) -> int:
    store = resolve_store(args)
    check_store(store)
    if args.json:
        print_json({"store": store.uri, "where": _where(store), "ok": True})
    else:
        print(f"ok: {_where(store)} is reachable, credentials accepted, bucket/directory usable")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    store = resolve_store(args)
    objects = list(store.list(args.prefix))
    if args.json:
        print_json(
            {
                "store": store.uri,
                "prefix": args.prefix,
                "objects": [
                    {
                        "key": o.key,
                        "size": o.size,
                        "etag": o.etag,
                        "last_modified": o.last_modified.isoformat() if o.last_modified else None,
                    }
                    for o in objects
                ],
            }
        )
        return 0
    for o in objects:
        modified = o.last_modified.strftime("%Y-%m-%d %H:%M") if o.last_modified else "-"
        print(f"{format_bytes(o.size):>10}  {modified}  {o.key}")
    total = sum(o.size for o in objects)
    print(f"{len(objects)} object(s), {format_bytes(total)} in {store.uri}/{args.prefix}")
    return 0
