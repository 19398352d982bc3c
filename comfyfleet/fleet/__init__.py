"""The fleet: rent GPU instances on vast.ai, see what runs and what it costs, release them.

- :mod:`comfyfleet.fleet.vast`: the REST client and the typed ``Offer``/``Instance`` records.
- :mod:`comfyfleet.fleet.offers`: the search query and the ranking ($/h per GB of VRAM).
- :mod:`comfyfleet.fleet.rent`: ``instances up``: rent N offers with the on-start script,
  take the next offer when one is gone, destroy what was rented when renting fails.
- :mod:`comfyfleet.fleet.cost`: $/h x uptime, per instance and summed.
- :mod:`comfyfleet.fleet.listing`: one row per instance (status, $/h, uptime, cost, endpoint).
- :mod:`comfyfleet.fleet.release`: destroy many, with the outcome of each.
- :mod:`comfyfleet.fleet.reaper`: which instances of a fleet to destroy (failed, stuck,
  idle, old) and one reaper pass.
- :mod:`comfyfleet.fleet.access`: the gateway port, the fleet's token (kept in the
  instances' own env) and the endpoints (URL + bearer token) of a fleet's ComfyUIs.
- :mod:`comfyfleet.fleet.wheel`: this checkout's wheel, uploaded into the store under its
  sha256, and the presigned URL + sha256 the on-start script installs it from.
- :mod:`comfyfleet.fleet.instance_events`: what an instance's own events say (ready, warm-up
  failed), matched to vast.ai ids; the ``EventSource`` seam the flows fill from Prefect.
- :mod:`comfyfleet.fleet.ready`: which instances can take jobs (ComfyUI answering through
  the gateway with the token, which the fleet script starts once the warm-up passed; a
  failed warm-up event fails one at once) and their endpoints (``generate --fleet``).
- :mod:`comfyfleet.fleet.batch`: ``fleet-batch`` without Prefect: rent or reuse, wait,
  run one batch over the ready instances, release in a ``finally``, the cost per output.
- :mod:`comfyfleet.fleet.gateway`: the token-checking reverse proxy that is the only public
  door to an instance's ComfyUI (``comfyfleet gateway``).

Fleet membership is the label ``comfyfleet:<fleet>`` (:mod:`comfyfleet.fleet.labels`). No
module here imports Prefect: ``flows/fleet.py`` and ``comfyfleet/cli/instances_cmd.py`` are
the two faces over the same functions.
"""

from __future__ import annotations

from comfyfleet.fleet.labels import FLEET_LABEL_PREFIX, fleet_label, fleet_of

__all__ = ["FLEET_LABEL_PREFIX", "fleet_label", "fleet_of"]
