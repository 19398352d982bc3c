"""Start-up assets: the vast.ai on-start script and the Dockerfile that bakes a profile.

Both are template files shipped as package data (``templates/onstart.sh.tmpl``,
``templates/Dockerfile.tmpl``), rendered by :mod:`comfyfleet.render.template` from a few
settings quoted here for their language. Tests parse every variant that comes out
(``bash -n`` and ``shellcheck`` for the script; stages, pins and secret mounts and
``sh -n`` of every RUN for the Dockerfile). The script's Python steps (JSON payloads, the
report's one-line summary) are :mod:`comfyfleet.render.onstart_steps`, run with
``python -m``; its events are sent with ``prefect event emit``, names from
:mod:`comfyfleet.warmup.events`.

The on-start script (``render_onstart``) is the plan's ``download_models.sh`` done right:
it installs comfyfleet into its own venv, reads the store settings from the environment
(``COMFYFLEET_STORE``, ``AWS_*``; they are never printed), finds the ComfyUI root, runs
``comfyfleet warmup --json``, keeps the report and prints one line. Reboots re-run it:
the venv is reused, files already in place are skipped, and a lock keeps two runs apart.

With ``via="fleet"`` it is ``templates/onstart_fleet.sh.tmpl`` instead, the script
``comfyfleet instances up`` rents with (kept within vast.ai's onstart limit once packed):

* comfyfleet from the wheel ``instances up`` put in the store (``COMFYFLEET_WHEEL_URL``, a
  presigned URL whose query is never printed; ``COMFYFLEET_WHEEL_SHA256`` checked before pip
  sees the file, a mismatch exits 3), never a PyPI name;
* ComfyUI started on ``127.0.0.1:COMFYFLEET_COMFY_PORT`` only, under
  :mod:`comfyfleet.render.supervise` (restarted with backoff when it dies);
* the ``warmup`` flow run in place (``python -m flows.warmup``), reported to
  ``PREFECT_API_URL``; no work pool is involved, so no other worker can take it;
* then ``comfyfleet gateway`` on ``0.0.0.0:COMFYFLEET_GATEWAY_PORT`` (token from
  ``COMFYFLEET_GATEWAY_TOKEN``), the instance's only public door, and the
  ``comfyfleet.instance.ready`` event with the public endpoint (``PUBLIC_IPADDR`` and
  ``VAST_TCP_PORT_<gateway port>``). A failed warm-up stops ComfyUI and emits only the
  finished event.

The Dockerfile (``render_dockerfile``) has three stages:

* ``models``: installs comfyfleet and runs ``comfyfleet bake``, which pulls the profile
  from the mirror with full verification and writes the baked manifest. The store
  settings arrive as a BuildKit secret (``RUN --mount=type=secret``), never as ARG/ENV, so
  they are in no layer and no image history.
* ``nodes``: the video custom nodes, each fetched at a pinned commit (``CUSTOM_NODES``)
  and checked against it.
* the final stage: the ComfyUI base image plus the nodes (and their requirements), the
  models, the baked manifest at ``/opt/comfyfleet/baked-manifest.json`` and comfyfleet
  itself, so ``comfyfleet warmup --mode baked`` can check the files at start.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from comfyfleet import __version__
from comfyfleet.errors import ConfigError
from comfyfleet.fleet.access import GATEWAY_PORT
from comfyfleet.render.template import render_template
from comfyfleet.warmup import events


@dataclass(frozen=True)
class CustomNode:
    """A ComfyUI custom node repository pinned to one commit."""

    name: str
    repo: str
    commit: str
    purpose: str


# The video custom nodes, each pinned to a full commit SHA (check them all in one place).
# VHS, AnimateDiff-Evolved and CogVideoXWrapper are the commits the ComfyUI reference was
# read at (comfyui-api.md §6); HunyuanVideoWrapper is a commit of kijai's repository as
# stored in the public index (nodes.py at that commit).
CUSTOM_NODES: tuple[CustomNode, ...] = (
    CustomNode(
        "ComfyUI-VideoHelperSuite",
        "https://github.com/Kosinkadink/ComfyUI-VideoHelperSuite",
        "4ee72c065db22c9d96c2427954dc69e7b908444b",
        "VHS_VideoCombine: frames -> mp4/webm/gif",
    ),
    CustomNode(
        "ComfyUI-AnimateDiff-Evolved",
        "https://github.com/Kosinkadink/ComfyUI-AnimateDiff-Evolved",
        "d8d163cd90b1111f6227495e3467633676fbb346",
        "AnimateDiff loaders and samplers (ADE_*)",
    ),
    CustomNode(
        "ComfyUI-CogVideoXWrapper",
        "https://github.com/kijai/ComfyUI-CogVideoXWrapper",
        "fdb8abd2790b5459ddc7066c31861bb0b62e988b",
        "CogVideoX loaders and sampler (CogVideo*)",
    ),
    CustomNode(
        "ComfyUI-HunyuanVideoWrapper",
        "https://github.com/kijai/ComfyUI-HunyuanVideoWrapper",
        "7aeb82499c8c9985cb710abb2cc5db49d49ff0e5",
        "HunyuanVideo wrapper nodes (HyVideo*)",
    ),
)

# vast.ai's ComfyUI image: ComfyUI lives in /opt/workspace-internal/ComfyUI in the image
# (synced to /workspace/ComfyUI at boot), Python in /venv/main, ComfyUI on port 18188.
DEFAULT_BASE_IMAGE = "vastai/comfy:v0.19.3-cuda-12.9-py312"
DEFAULT_BUILD_PYTHON_IMAGE = "python:3.12-slim"
DEFAULT_IMAGE_COMFY_ROOT = "/opt/workspace-internal/ComfyUI"
DEFAULT_IMAGE_PYTHON = "/venv/main/bin/python"
DEFAULT_COMFY_URL = "http://127.0.0.1:18188"
DEFAULT_PACKAGE = "comfyfleet"
BAKED_DIR = "/opt/comfyfleet"
BAKED_MANIFEST_PATH = f"{BAKED_DIR}/baked-manifest.json"
BAKED_MODELS_DIR = f"{BAKED_DIR}/models"
SECRET_ID = "comfyfleet_env"
ONSTART_TEMPLATE = "onstart.sh.tmpl"
DOCKERFILE_TEMPLATE = "Dockerfile.tmpl"
# Where vast.ai images and common ComfyUI images keep ComfyUI (first hit wins).
COMFY_ROOT_CANDIDATES = (
    "/workspace/ComfyUI",
    "/opt/workspace-internal/ComfyUI",
    "/opt/ComfyUI",
    "/ComfyUI",
    "/root/ComfyUI",
    "/comfyui",
)
VIA = ("cli", "flow", "worker", "fleet")
ONSTART_FLEET_TEMPLATE = "onstart_fleet.sh.tmpl"
# The fleet script's ports: the gateway on the container port `instances up` publishes
# (comfyfleet.fleet.access.GATEWAY_PORT), ComfyUI behind it on loopback.
DEFAULT_GATEWAY_PORT = GATEWAY_PORT
DEFAULT_COMFY_PORT = 18188


def _q(value: str) -> str:
    return shlex.quote(value)


def _check_profile(profile: str) -> None:
    if not profile or any(c in profile for c in " /\\'\"$`"):
        raise ConfigError(
            f"profile name {profile!r} cannot be used here",
            hint="use a catalog profile name such as image or video-24gb (or auto)",
        )


@dataclass(frozen=True)
class OnstartSettings:
    """What the on-start script does; every value can still be overridden by env at boot."""

    profile: str = "auto"
    mode: str = "script"
    verify: str = "fast"
    store: str = ""  # default for COMFYFLEET_STORE; empty = must come from the environment
    package: str = DEFAULT_PACKAGE
    comfy_root: str = ""  # empty = search COMFY_ROOT_CANDIDATES
    comfy_url: str = DEFAULT_COMFY_URL
    start_comfy: str = ""
    warmup_workflow: str = ""
    catalogs: tuple[str, ...] = ()
    home: str = BAKED_DIR
    via: str = "cli"
    work_pool: str = "comfyfleet-gpu"
    fail_on_target: bool = False
    gateway_port: int = DEFAULT_GATEWAY_PORT  # --via fleet only
    comfy_port: int = DEFAULT_COMFY_PORT  # --via fleet only


def _check_onstart(s: OnstartSettings) -> None:
    _check_profile(s.profile)
    if s.mode not in ("script", "baked"):
        raise ConfigError(f"unknown mode {s.mode!r}", hint="use --mode script or --mode baked")
    if s.verify not in ("fast", "full"):
        raise ConfigError(f"unknown verify {s.verify!r}", hint="use --verify fast or full")
    if s.via not in VIA:
        raise ConfigError(f"unknown --via {s.via!r}", hint="use --via cli, flow, worker or fleet")
    if s.via == "fleet":
        _check_fleet(s)


def _check_fleet(s: OnstartSettings) -> None:
    """The fleet script starts ComfyUI itself, on loopback, behind the gateway."""
    if s.start_comfy:
        raise ConfigError(
            "--start-comfy does not go with --via fleet: the fleet script starts ComfyUI "
            "itself, on 127.0.0.1 behind the gateway",
            hint="leave --start-comfy out (COMFY_ARGS in the instance env adds ComfyUI options)",
        )
    for name, port in (("gateway", s.gateway_port), ("comfy", s.comfy_port)):
        if not 1 <= port <= 65535:
            raise ConfigError(f"--{name}-port {port} is not a TCP port", hint="give 1-65535")
    if s.gateway_port == s.comfy_port:
        raise ConfigError(
            f"--gateway-port and --comfy-port are both {s.comfy_port}",
            hint="ComfyUI listens behind the gateway: give them different ports",
        )


def onstart_values(s: OnstartSettings) -> dict[str, str]:
    """The template values of the on-start script, each quoted for bash."""
    return {
        "version": __version__,
        "home": _q(s.home),
        "package": _q(s.package),
        "profile": _q(s.profile),
        "mode": _q(s.mode),
        "verify": _q(s.verify),
        "store": _q(s.store),
        "comfy_root": _q(s.comfy_root),
        "comfy_url": _q(s.comfy_url),
        "start_comfy": _q(s.start_comfy),
        "warmup_workflow": _q(s.warmup_workflow),
        "work_pool": _q(s.work_pool),
        "via": _q(s.via),
        "catalogs": " ".join(_q(c) for c in s.catalogs),
        "fail_on_target": "1" if s.fail_on_target else "0",
        "root_candidates": " ".join(_q(c) for c in COMFY_ROOT_CANDIDATES),
        "event_started": _q(events.INSTANCE_STARTED),
        "event_finished": _q(events.WARMUP_FINISHED),
    }


def onstart_fleet_values(s: OnstartSettings) -> dict[str, str]:
    """The template values of the fleet on-start script, each quoted for bash."""
    return {
        "version": __version__,
        "home": _q(s.home),
        "profile": _q(s.profile),
        "mode": _q(s.mode),
        "verify": _q(s.verify),
        "store": _q(s.store),
        "comfy_root": _q(s.comfy_root),
        "warmup_workflow": _q(s.warmup_workflow),
        "gateway_port": str(s.gateway_port),
        "comfy_port": str(s.comfy_port),
        "catalogs": " ".join(_q(c) for c in s.catalogs),
        "fail_on_target": "1" if s.fail_on_target else "0",
        "root_candidates": " ".join(_q(c) for c in COMFY_ROOT_CANDIDATES),
        "event_finished": _q(events.WARMUP_FINISHED),
        "event_ready": _q(events.INSTANCE_READY),
    }


def render_onstart(settings: OnstartSettings | None = None) -> str:
    """The vast.ai on-start script (bash) for ``settings``: ``templates/onstart.sh.tmpl``,
    or ``templates/onstart_fleet.sh.tmpl`` for ``via="fleet"`` (comfyfleet from the wheel
    ``instances up`` uploads, ComfyUI on loopback behind the gateway, the ready event).
    ``package``, ``comfy_url`` and ``work_pool`` do not apply to the fleet script."""
    s = settings or OnstartSettings()
    _check_onstart(s)
    if s.via == "fleet":
        return render_template(ONSTART_FLEET_TEMPLATE, onstart_fleet_values(s))
    return render_template(ONSTART_TEMPLATE, onstart_values(s))


@dataclass(frozen=True)
class DockerfileSettings:
    """What the Dockerfile bakes and on top of which image."""

    profile: str
    base_image: str = DEFAULT_BASE_IMAGE
    build_python_image: str = DEFAULT_BUILD_PYTHON_IMAGE
    package: str = DEFAULT_PACKAGE
    comfy_root: str = DEFAULT_IMAGE_COMFY_ROOT
    comfy_python: str = DEFAULT_IMAGE_PYTHON
    catalogs: tuple[str, ...] = ()  # files next to the Dockerfile (build context)
    nodes: tuple[CustomNode, ...] = CUSTOM_NODES


def _check_dockerfile(s: DockerfileSettings) -> None:
    _check_profile(s.profile)
    if s.profile == "auto":
        raise ConfigError(
            "a baked image needs a concrete profile, not auto (there is no GPU at build time)",
            hint="pass --profile image or --profile video-24gb",
        )
    for node in s.nodes:
        if len(node.commit) != 40 or any(c not in "0123456789abcdef" for c in node.commit):
            raise ConfigError(
                f"custom node {node.name} is pinned to {node.commit!r}, not a 40-hex commit",
                hint="pin every custom node to a full commit SHA",
            )
    # Dockerfile ARG defaults and paths are single words: whitespace would split them.
    for field in ("base_image", "build_python_image", "package", "comfy_root", "comfy_python"):
        value = getattr(s, field)
        if not value or any(c.isspace() for c in value):
            raise ConfigError(
                f"--{field.replace('_', '-')} {value!r} cannot be used in a Dockerfile",
                hint="give one word without spaces (an image name, a package spec, a path)",
            )


def _catalog_lines(catalogs: Sequence[str]) -> tuple[str, str]:
    """(COPY lines, ``--catalog`` arguments) for the catalog files of the bake step."""
    copies: list[str] = []
    args = ""
    for i, path in enumerate(catalogs):
        if path == "builtin":  # the catalog shipped inside the comfyfleet package
            args += " --catalog builtin"
            continue
        target = f"{BAKED_DIR}/catalog/{i:02d}-{path.rsplit('/', 1)[-1]}"
        copies.append(f"COPY {_q(path)} {target}")
        args += f" --catalog {target}"
    return "\n".join(copies), args


def dockerfile_values(s: DockerfileSettings) -> dict[str, str]:
    """The template values of the Dockerfile."""
    copies, catalog_args = _catalog_lines(s.catalogs)
    return {
        "version": __version__,
        "profile": s.profile,
        "base_image": s.base_image,
        "build_python_image": s.build_python_image,
        "package": s.package,
        "comfy_root": s.comfy_root,
        "comfy_python": s.comfy_python,
        "secret_id": SECRET_ID,
        "baked_dir": BAKED_DIR,
        "baked_models": BAKED_MODELS_DIR,
        "baked_manifest": BAKED_MANIFEST_PATH,
        "catalog_copies": copies,
        "catalog_args": catalog_args,
        "node_pins": "\n".join(f"#   {n.name:<30} {n.commit}  {n.purpose}" for n in s.nodes),
        "node_fetches": "\n".join(
            f"    fetch_node {_q(n.name)} {_q(n.repo)} {n.commit} && \\" for n in s.nodes
        ),
        "node_names": " ".join(_q(n.name) for n in s.nodes),
    }


def render_dockerfile(settings: DockerfileSettings) -> str:
    """A multi-stage Dockerfile that bakes ``settings.profile`` into a ComfyUI image, from
    ``templates/Dockerfile.tmpl``."""
    _check_dockerfile(settings)
    return render_template(DOCKERFILE_TEMPLATE, dockerfile_values(settings))
