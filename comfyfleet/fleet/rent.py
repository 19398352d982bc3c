"""``instances up``: rent N offers for a fleet, all or nothing.

What one rent does:

1. Find the offers (:mod:`comfyfleet.fleet.offers`), cheapest VRAM first. Fewer matching
   offers than instances asked for: fail before renting anything.
2. Rent them one by one with the image, the disk, the label ``comfyfleet:<fleet>``, the
   on-start script (:func:`comfyfleet.render.assets.render_onstart`, packed to fit the
   API's size limit by :func:`pack_onstart`) and the environment the script needs
   (:func:`instance_env`). An offer that is gone (someone rented it first) is skipped and
   the next one taken.
3. If renting stops before N (an error, the offers ran out, Ctrl-C), destroy every instance
   this command rented and say so: a half-rented fleet is money spent on nothing. Each
   instance carries ``COMFYFLEET_RENT_ID`` in its environment, so the clean-up also finds an
   instance whose rent answered with an error after all (a 5xx that rented anyway).
   Instances it could not destroy are named in the error, with the command that does it.

The environment (:func:`instance_env`) also carries what the instance side needs to be
reachable and to install comfyfleet: the fleet's gateway token and listen address, with the
gateway's port as the one published port (:mod:`comfyfleet.fleet.access`: ComfyUI itself is
never published), and, when given, the wheel's presigned URL and sha256
(:mod:`comfyfleet.fleet.wheel`).

The environment holds no vast.ai key. It may hold store credentials (``extra_env``), the
gateway token and the wheel URL: they go to vast.ai in the rent call only, and never into a
report, a ``repr`` or a log line.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from comfyfleet.errors import ComfyfleetError, ConfigError, FleetError, OfferGone
from comfyfleet.fleet.access import (
    GATEWAY_LISTEN_ENV,
    GATEWAY_PORT,
    GATEWAY_TOKEN_ENV,
    fleet_token,
    gateway_env,
    new_token,
)
from comfyfleet.fleet.labels import fleet_label
from comfyfleet.fleet.offers import OfferQuery, find_offers
from comfyfleet.fleet.vast import Offer, VastClient
from comfyfleet.fleet.wheel import (
    WHEEL_NAME_ENV,
    WHEEL_SHA256_ENV,
    WHEEL_URL_ENV,
    PublishedWheel,
    wheel_env,
)
from comfyfleet.render.assets import DEFAULT_BASE_IMAGE, OnstartSettings, render_onstart

DEFAULT_IMAGE = DEFAULT_BASE_IMAGE
DEFAULT_DISK_GB = 80.0
# ComfyUI's own port on the instance: loopback only, behind the gateway (never published).
COMFY_PORT = 8188
# vast.ai's onstart limit: the spec says 4048 characters, the CLI docs 16 KB (§7); the
# smaller one is the one that is safe.
ONSTART_LIMIT = 4048
FLEET_ENV = "COMFYFLEET_FLEET"
RENT_ID_ENV = "COMFYFLEET_RENT_ID"
_RESERVED_ENV = (
    FLEET_ENV,
    RENT_ID_ENV,
    GATEWAY_TOKEN_ENV,
    GATEWAY_LISTEN_ENV,
    WHEEL_URL_ENV,
    WHEEL_SHA256_ENV,
    WHEEL_NAME_ENV,
)


@dataclass(frozen=True)
class RentRequest:
    """What ``instances up`` asks for. ``extra_env`` may hold secrets (never shown).

    ``gateway_token``: the fleet's token; empty = the one the fleet's instances carry, or a
    new one for a new fleet. ``wheel``: the comfyfleet wheel the instances install (None:
    the image brings comfyfleet itself).
    """

    fleet: str
    count: int
    profile: str
    query: OfferQuery
    image: str = DEFAULT_IMAGE
    store: str = ""
    prefect_api_url: str | None = None
    extra_env: Mapping[str, str] = field(default_factory=dict, repr=False)
    onstart: OnstartSettings | None = None
    gateway_token: str = field(default="", repr=False)
    gateway_port: int = GATEWAY_PORT
    wheel: PublishedWheel | None = None
    # The mark every instance of this rent carries (COMFYFLEET_RENT_ID); empty = a new one.
    # ``fleet-batch`` passes its flow run's id, so a clean-up that outlives the run (its
    # cancellation hook) finds exactly what the run rented.
    rent_id: str = ""


@dataclass(frozen=True)
class Rented:
    """One instance this command rented, and the offer it came from."""

    instance_id: int
    offer: Offer


@dataclass
class RentReport:
    """What a successful rent did."""

    fleet: str
    label: str
    rent_id: str
    rented: list[Rented] = field(default_factory=list)
    gone: list[int] = field(default_factory=list)  # offers taken by someone else first

    @property
    def dph_total(self) -> float:
        return sum(r.offer.dph_total for r in self.rented)


def pack_onstart(script: str, limit: int = ONSTART_LIMIT) -> str:
    """``script`` as vast.ai's ``onstart`` value, within ``limit`` characters.

    A script that fits is sent as it is. A longer one is sent as gzip + base64 (the docs'
    advice, §7), unpacked into a temp file and run with bash, after dropping its full-line
    comments (a line starting with ``#``; the shebang goes too, bash runs the file).
    """
    if len(script) <= limit:
        return script
    lean = "\n".join(line for line in script.splitlines() if not line.startswith("#")) + "\n"
    blob = base64.b64encode(gzip.compress(lean.encode(), 9, mtime=0)).decode()
    packed = f'f="$(mktemp)" && echo {blob} | base64 -d | gzip -dc > "$f" && exec bash "$f"'
    if len(packed) > limit:
        raise ConfigError(
            f"the on-start script is {len(script)} characters, {len(packed)} packed; vast.ai "
            f"takes {limit}",
            hint="drop options from the script, or bake the profile into an image "
            "(comfyfleet render dockerfile)",
        )
    return packed


def check_store(request: RentRequest, settings: OnstartSettings) -> None:
    """A script-mode instance pulls its models from the store: refuse to rent one that
    would boot without a store it can reach (it would bill while failing its warm-up)."""
    if settings.mode != "script":
        return  # a baked image carries its models
    store = request.store or request.extra_env.get("COMFYFLEET_STORE", "")
    if not store:
        raise ConfigError(
            "the instances would have no store to pull their models from; nothing was rented",
            hint="pass --store s3://bucket/prefix or --store-block NAME (or set COMFYFLEET_STORE)",
        )
    if urlsplit(store).scheme != "s3":
        raise ConfigError(
            f"a rented instance cannot reach the store {store}; nothing was rented",
            hint="mirror into an S3-compatible bucket and pass it as s3://bucket/prefix",
        )


def instance_env(request: RentRequest, rent_id: str, token: str = "") -> dict[str, str]:
    """The create call's ``env``: what the on-start script reads, the fleet's marks, the
    gateway (token, listen address, port request) and the wheel's URL + sha256."""
    clash = [k for k in request.extra_env if k in _RESERVED_ENV]
    if clash:
        raise ConfigError(
            f"{clash[0]} is set by comfyfleet itself", hint="leave it out of the extra env"
        )
    env = {
        FLEET_ENV: request.fleet,
        RENT_ID_ENV: rent_id,
        "COMFYFLEET_PROFILE": request.profile,
    }
    if request.store:
        env["COMFYFLEET_STORE"] = request.store
    if request.prefect_api_url:
        env["PREFECT_API_URL"] = request.prefect_api_url
    env.update(request.extra_env)
    if request.wheel is not None:
        env.update(wheel_env(request.wheel))
    env.update(gateway_env(token or request.gateway_token or new_token(), request.gateway_port))
    return env


def default_onstart(request: RentRequest) -> OnstartSettings:
    """The on-start script an instance gets: with a published wheel, the fleet script
    (wheel checked by sha256, ComfyUI on loopback behind the gateway, warm-up as a flow run
    that reports to ``PREFECT_API_URL``, the ready event); else the plain CLI script."""
    if request.wheel is None:
        return OnstartSettings(profile=request.profile, store=request.store)
    if not request.prefect_api_url:
        raise ConfigError(
            "the fleet on-start script reports its warm-up to Prefect, and PREFECT_API_URL "
            "is not set; nothing was rented",
            hint="export PREFECT_API_URL=https://<your prefect server>/api (one the instances "
            "can reach)",
        )
    # The store and the profile travel in the env (instance_env), not in the script: vast.ai
    # takes 4048 characters of on-start, and a long store URI would eat into them.
    return OnstartSettings(via="fleet")


def rent_fleet(
    client: VastClient,
    request: RentRequest,
    *,
    on_event: Callable[[str], None] | None = None,
) -> RentReport:
    """Rent ``request.count`` instances or none (see the module docstring)."""
    say = on_event or (lambda _line: None)
    if request.count < 1:
        raise ConfigError(f"--count {request.count}: rent at least one instance")
    label = fleet_label(request.fleet)
    settings = request.onstart or default_onstart(request)
    check_store(request, settings)
    onstart = pack_onstart(render_onstart(settings))
    offers = find_offers(client, request.query)
    if len(offers) < request.count:
        raise FleetError(
            f"{len(offers)} offer(s) match, {request.count} instance(s) asked for; nothing "
            "was rented",
            hint="loosen --max-dph / --min-vram / --gpu, or ask for fewer instances "
            "(`comfyfleet instances offers` shows what is there)",
        )
    rent_id = request.rent_id or uuid.uuid4().hex[:16]
    report = RentReport(fleet=request.fleet, label=label, rent_id=rent_id)
    # One token per fleet: a second `up` to a fleet joins it with the token it has.
    token = request.gateway_token or fleet_token(client.list_instances(label=label)) or ""
    env = instance_env(request, report.rent_id, token or new_token())
    try:
        for offer in offers:
            if len(report.rented) == request.count:
                break
            try:
                instance_id = client.create_instance(
                    offer.id,
                    image=request.image,
                    disk_gb=request.query.disk_gb,
                    label=label,
                    onstart=onstart,
                    env=env,
                )
            except OfferGone:
                report.gone.append(offer.id)
                say(f"offer {offer.id} is gone; taking the next")
                continue
            report.rented.append(Rented(instance_id, offer))
            say(
                f"rented instance {instance_id} ({offer.gpu_name}, ${offer.dph_total:.3f}/h) "
                f"[{len(report.rented)}/{request.count}]"
            )
        if len(report.rented) < request.count:
            raise FleetError(
                f"the offers ran out: {len(report.gone)} were gone before they could be rented",
                hint="run the command again (it searches afresh), or loosen the filters",
            )
    except BaseException as exc:  # also Ctrl-C: a half-rented fleet must not keep billing
        error = _rolled_back(client, report, request.count, exc)
        if error is exc:
            raise
        raise error from exc
    return report


def _rolled_back(
    client: VastClient, report: RentReport, count: int, cause: BaseException
) -> BaseException:
    """Destroy what this rent created; the error to raise (``cause`` itself when it is
    not ours, e.g. KeyboardInterrupt, after the clean-up)."""
    ids = [r.instance_id for r in report.rented]
    # An instance whose rent answered with an error may exist anyway: find it by its mark.
    # If listing fails, destroy what we know of; the hint below still names the fleet.
    with contextlib.suppress(ComfyfleetError):
        ids += [
            i.id
            for i in client.list_instances(label=report.label)
            if i.extra_env.get(RENT_ID_ENV) == report.rent_id and i.id not in ids
        ]
    destroyed, left = [], []
    for instance_id in ids:
        try:
            client.destroy_instance(instance_id, missing_ok=True)
            destroyed.append(instance_id)
        except ComfyfleetError:
            left.append(instance_id)
    if not isinstance(cause, Exception):
        return cause
    what = cause.message if isinstance(cause, ComfyfleetError) else f"{type(cause).__name__}"
    message = (
        f"renting stopped at {len(report.rented)} of {count} instance(s): {what}; "
        f"destroyed {len(destroyed)} ({', '.join(map(str, destroyed)) or 'none'})"
    )
    hint = cause.hint if isinstance(cause, ComfyfleetError) else None
    if left:
        message += f"; could NOT destroy {', '.join(map(str, left))}"
        hint = (
            f"destroy them now: comfyfleet instances down {' '.join(map(str, left))} "
            f"(or --fleet {report.fleet})"
        )
    return FleetError(message, hint=hint)
