"""``comfyfleet render onstart|dockerfile``: the start-up assets for GPU instances."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
from pathlib import Path
from urllib.parse import urlsplit

from comfyfleet.catalog import AUTO_PROFILE, BUILTIN_CATALOG, load_catalog
from comfyfleet.cli.common import add_catalog_option, add_json_option, print_json
from comfyfleet.errors import ConfigError
from comfyfleet.files import write_atomic
from comfyfleet.render.assets import (
    DEFAULT_BASE_IMAGE,
    DEFAULT_BUILD_PYTHON_IMAGE,
    DEFAULT_COMFY_PORT,
    DEFAULT_COMFY_URL,
    DEFAULT_GATEWAY_PORT,
    DEFAULT_IMAGE_COMFY_ROOT,
    DEFAULT_IMAGE_PYTHON,
    DEFAULT_PACKAGE,
    VIA,
    DockerfileSettings,
    OnstartSettings,
    render_dockerfile,
    render_onstart,
)
from comfyfleet.warmup import events


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "render",
        help="write the vast.ai on-start script or a Dockerfile that bakes a profile",
        description="Start-up assets for GPU instances: `render onstart` prints the vast.ai "
        "on-start script (bash); `render dockerfile` writes a Dockerfile that bakes a profile "
        "into a ComfyUI image.",
    )
    what = parser.add_subparsers(dest="render_command", metavar="WHAT", required=True)
    _register_onstart(what)
    _register_dockerfile(what)


def _register_onstart(what: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    o = what.add_parser("onstart", help="the vast.ai on-start script (bash) on stdout")
    o.add_argument("--profile", default=AUTO_PROFILE, metavar="NAME|auto")
    o.add_argument("--mode", choices=["script", "baked"], default="script")
    o.add_argument("--verify", choices=["fast", "full"], default="fast")
    o.add_argument(
        "--store",
        default="",
        metavar="URI",
        help="default for COMFYFLEET_STORE (credentials stay in the environment)",
    )
    o.add_argument(
        "--package",
        default=DEFAULT_PACKAGE,
        metavar="SPEC",
        help="what pip installs (default comfyfleet; e.g. comfyfleet==0.1.0 or a URL)",
    )
    o.add_argument(
        "--comfy-root",
        default="",
        metavar="DIR",
        help="ComfyUI root on the instance (default: search the usual places)",
    )
    o.add_argument(
        "--comfy-url",
        default=DEFAULT_COMFY_URL,
        metavar="URL",
        help=f"ComfyUI the image runs (default {DEFAULT_COMFY_URL}, vast.ai's)",
    )
    o.add_argument(
        "--start-comfy",
        default="",
        metavar="CMD",
        help="start ComfyUI with this command instead of waiting at --comfy-url",
    )
    o.add_argument(
        "--warmup-workflow",
        default="",
        metavar="PATH",
        help="workflow file on the instance to run once ComfyUI is up",
    )
    o.add_argument(
        "--catalog",
        action="append",
        default=[],
        metavar="PATH",
        help="catalog file on the instance (repeatable)",
    )
    o.add_argument(
        "--home",
        default="/opt/comfyfleet",
        metavar="DIR",
        help="venv, report and logs (default /opt/comfyfleet)",
    )
    o.add_argument(
        "--via",
        choices=VIA,
        default="cli",
        help="cli: run `comfyfleet warmup` here (default); flow: run the `warmup` flow here, "
        "recorded by the Prefect server at PREFECT_API_URL; worker: start a Prefect worker "
        f"and emit {events.INSTANCE_STARTED} for the event-triggered `warmup` deployment "
        "(one instance per work pool); fleet: what `instances up` rents with: comfyfleet from "
        "the wheel at $COMFYFLEET_WHEEL_URL (sha256 checked), ComfyUI on 127.0.0.1 kept "
        "running, the `warmup` flow run here, the token gateway as the one public port, and "
        f"{events.INSTANCE_READY} with the endpoint once the warm-up passed",
    )
    o.add_argument("--work-pool", default="comfyfleet-gpu", metavar="NAME")
    o.add_argument(
        "--gateway-port",
        type=int,
        default=DEFAULT_GATEWAY_PORT,
        metavar="PORT",
        help=f"--via fleet: the gateway's container port (default {DEFAULT_GATEWAY_PORT})",
    )
    o.add_argument(
        "--comfy-port",
        type=int,
        default=DEFAULT_COMFY_PORT,
        metavar="PORT",
        help=f"--via fleet: ComfyUI's port on 127.0.0.1 (default {DEFAULT_COMFY_PORT})",
    )
    o.add_argument("--fail-on-target", action="store_true")
    o.add_argument("--output", type=Path, metavar="PATH", help="write here instead of stdout")
    add_json_option(o)
    o.set_defaults(func=cmd_onstart)


def _register_dockerfile(what: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = what.add_parser("dockerfile", help="a Dockerfile that bakes PROFILE into a ComfyUI image")
    d.add_argument("--profile", required=True, metavar="NAME")
    add_catalog_option(d)
    d.add_argument("--base-image", default=DEFAULT_BASE_IMAGE, metavar="IMAGE")
    d.add_argument("--build-python-image", default=DEFAULT_BUILD_PYTHON_IMAGE, metavar="IMAGE")
    d.add_argument("--package", default=DEFAULT_PACKAGE, metavar="SPEC")
    d.add_argument(
        "--comfy-root",
        default=DEFAULT_IMAGE_COMFY_ROOT,
        metavar="DIR",
        help=f"ComfyUI root inside the base image (default {DEFAULT_IMAGE_COMFY_ROOT})",
    )
    d.add_argument(
        "--comfy-python",
        default=DEFAULT_IMAGE_PYTHON,
        metavar="PATH",
        help=f"ComfyUI's Python in the base image (default {DEFAULT_IMAGE_PYTHON})",
    )
    d.add_argument("--output", type=Path, metavar="PATH", help="write here instead of stdout")
    add_json_option(d)
    d.set_defaults(func=cmd_dockerfile)


def _check_store_uri(uri: str) -> None:
    # The store is opened on the instance, not here: check the URI's form only.
    if uri and urlsplit(uri).scheme == "s3" and not urlsplit(uri).netloc:
        raise ConfigError(
            f"--store {uri!r} names no bucket", hint="write it as s3://bucket or s3://bucket/prefix"
        )
    if uri and "@" in urlsplit(uri).netloc:
        raise ConfigError(
            "the --store URI carries credentials; they do not belong in a script",
            hint="pass s3://bucket/prefix and set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in "
            "the instance environment",
        )


def _emit(
    args: argparse.Namespace,
    what: str,
    text: str,
    settings: OnstartSettings | DockerfileSettings,
    *,
    executable: bool = False,
) -> None:
    """The rendered text to ``--output`` or stdout; with ``--json`` one document on stdout
    (the text itself unless it went to a file)."""
    if args.output is not None:
        _write_file(text, args.output, executable=executable)
    elif not args.json:
        sys.stdout.write(text)
    if args.json:
        print_json(
            {
                "what": what,
                "output": None if args.output is None else str(args.output),
                "sha256": hashlib.sha256(text.encode()).hexdigest(),
                "settings": dataclasses.asdict(settings),
                "text": text if args.output is None else None,
            }
        )


def _write_file(text: str, output: Path, *, executable: bool = False) -> None:
    try:
        write_atomic(output, text, mode=0o755 if executable else None)
    except OSError as exc:
        raise ConfigError(
            f"cannot write {output}: {exc.strerror or type(exc).__name__}",
            hint="pass --output a file path in a folder you can write to",
        ) from None
    print(f"wrote {output}", file=sys.stderr)


def cmd_onstart(args: argparse.Namespace) -> int:
    _check_store_uri(args.store)
    settings = OnstartSettings(
        profile=args.profile,
        mode=args.mode,
        verify=args.verify,
        store=args.store,
        package=args.package,
        comfy_root=args.comfy_root,
        comfy_url=args.comfy_url,
        start_comfy=args.start_comfy,
        warmup_workflow=args.warmup_workflow,
        catalogs=tuple(args.catalog),
        home=args.home,
        via=args.via,
        work_pool=args.work_pool,
        fail_on_target=args.fail_on_target,
        gateway_port=args.gateway_port,
        comfy_port=args.comfy_port,
    )
    _emit(args, "onstart", render_onstart(settings), settings, executable=True)
    return 0


def cmd_dockerfile(args: argparse.Namespace) -> int:
    catalog = load_catalog(args.catalog)
    catalog.profile_ids(args.profile)  # an unknown profile fails here, not in docker build
    for path in args.catalog:
        if path != BUILTIN_CATALOG and Path(path).is_absolute():
            raise ConfigError(
                f"catalog {path} is an absolute path; docker build can only COPY files from "
                "its build context",
                hint="put the catalog next to the Dockerfile and pass a relative path",
            )
    settings = DockerfileSettings(
        profile=args.profile,
        base_image=args.base_image,
        build_python_image=args.build_python_image,
        package=args.package,
        comfy_root=args.comfy_root,
        comfy_python=args.comfy_python,
        catalogs=tuple(args.catalog),
    )
    _emit(args, "dockerfile", render_dockerfile(settings), settings)
    return 0
