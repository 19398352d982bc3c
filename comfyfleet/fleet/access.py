"""How a fleet's ComfyUIs are reached: the gateway port, the fleet's token, the endpoints.

Every instance runs ``comfyfleet gateway`` (:mod:`comfyfleet.fleet.gateway`) on
:data:`GATEWAY_PORT`, the one container port ``instances up`` asks vast.ai to publish;
ComfyUI itself stays on 127.0.0.1. Clients send ``Authorization: Bearer <token>``.

**One token per fleet**, ``secrets.token_urlsafe(32)``, made by the first ``instances up``
of a fleet; a later ``up`` to the same fleet reuses it, so one credential opens every
endpoint of the fleet.

**Where the token lives: in the instances' own environment** (``COMFYFLEET_GATEWAY_TOKEN``
in the create call's ``env``; vast.ai returns it as ``extra_env`` from ``show`` and
``list``). Why there and not in a store object (``fleets/<fleet>.json``):

- It lives and dies with the instances: nothing to clean up, nothing stale when a fleet is
  destroyed by the reaper, the console or a crash; no write that can half-succeed.
- Whoever can read it already holds the vast.ai key, which can do more (destroy, SSH in,
  read the same env); a store object would add a second place with a second set of
  credentials (the store's) that must be guarded as well.
- ``generate --fleet`` and ``fleet-batch`` already list the fleet's instances for their
  endpoints: the token comes in the same answer (:func:`fleet_endpoints`).

It never goes into a report, ``repr``, log line or ``instances ls`` output.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from comfyfleet.fleet.vast import Instance

# The container port the gateway listens on (published as ``-p 9188:9188``). Not 8188:
# vast.ai's ComfyUI images put their own Caddy portal there (ComfyUI itself on 18188).
GATEWAY_PORT = 9188
GATEWAY_TOKEN_ENV = "COMFYFLEET_GATEWAY_TOKEN"
# ``comfyfleet gateway``'s listen address when --listen is not given.
GATEWAY_LISTEN_ENV = "COMFYFLEET_GATEWAY_LISTEN"


def new_token() -> str:
    return secrets.token_urlsafe(32)


def fleet_token(instances: Iterable[Instance]) -> str | None:
    """The token the fleet's instances carry (the most common one, should two rents have
    raced), or None for a fleet with no instance yet."""
    seen = Counter(
        token for i in instances if (token := i.extra_env.get(GATEWAY_TOKEN_ENV))
    ).most_common(1)
    return seen[0][0] if seen else None


def gateway_env(token: str, port: int = GATEWAY_PORT) -> dict[str, str]:
    """The instance's env for the gateway: its token, where it listens, the port request."""
    return {
        GATEWAY_TOKEN_ENV: token,
        GATEWAY_LISTEN_ENV: f"0.0.0.0:{port}",
        # The fleet on-start script reads the port alone (render's onstart_fleet template).
        "COMFYFLEET_GATEWAY_PORT": str(port),
        f"-p {port}:{port}": "1",
    }


@dataclass(frozen=True)
class Endpoint:
    """One instance's ComfyUI as a client reaches it (through its gateway)."""

    instance_id: int
    url: str
    token: str = field(repr=False)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def fleet_endpoints(instances: Iterable[Instance], port: int = GATEWAY_PORT) -> list[Endpoint]:
    """The endpoints of the running instances that publish the gateway and carry a token
    (readiness, i.e. a passed warm-up, is the caller's to check)."""
    out = []
    for instance in sorted(instances, key=lambda i: i.id):
        url = instance.endpoint(port)
        token = instance.extra_env.get(GATEWAY_TOKEN_ENV)
        if url and token:
            out.append(Endpoint(instance.id, url, token))
    return out
