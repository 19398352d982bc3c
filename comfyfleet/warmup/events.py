"""The warm-up's Prefect events, their names and payload keys, spelled once.

The on-start script emits :data:`INSTANCE_STARTED` with :data:`STARTED_PAYLOAD_KEYS` (the
``warmup`` deployment's trigger turns them into flow parameters: :func:`trigger_parameters`)
and, when the warm-up has reported, :data:`WARMUP_FINISHED` whose payload is the warm-up's
result document (``WarmupResult.to_dict()``, top-level keys :data:`FINISHED_PAYLOAD_KEYS`).
The fleet on-start script also emits :data:`INSTANCE_READY` (:data:`READY_PAYLOAD_KEYS`) when
its warm-up passed and its gateway answers; a failed warm-up emits no ready event.
The render templates, ``flows/warmup.py`` and ``prefect.yaml`` take the names from here (tests
check the YAML, which cannot import them).
"""

from __future__ import annotations

INSTANCE_STARTED = "comfyfleet.instance.started"
WARMUP_FINISHED = "comfyfleet.warmup.finished"
# Emitted by the fleet on-start script (``render onstart --via fleet``) once the warm-up has
# passed and the gateway answers: the instance takes jobs at ``endpoint`` from now on.
INSTANCE_READY = "comfyfleet.instance.ready"

# Every instance's events name it as the resource ``comfyfleet.instance.<instance_id>``.
INSTANCE_RESOURCE_PREFIX = "comfyfleet.instance."

# Payload of INSTANCE_STARTED, in the order the on-start script writes them.
STARTED_PAYLOAD_KEYS: tuple[str, ...] = (
    "comfy_root",
    "profile",
    "mode",
    "verify",
    "comfy_url",
    "instance_id",
    "work_pool",
)

# Payload of INSTANCE_READY, in the order the on-start script passes them: the instance's
# label (``C.<id>``, also the resource), vast.ai's numeric id (``CONTAINER_ID``), the gateway's
# public URL ``http://host:port`` and its parts, the fleet (``COMFYFLEET_FLEET``), the profile
# and the warm-up's seconds. The gateway token is never part of it.
READY_PAYLOAD_KEYS: tuple[str, ...] = (
    "instance_id",
    "contract_id",
    "endpoint",
    "host",
    "port",
    "fleet",
    "profile",
    "warmup_s",
)

# The payload keys the warmup flow takes as parameters (work_pool only routes the run).
TRIGGER_PARAMETER_KEYS: tuple[str, ...] = tuple(k for k in STARTED_PAYLOAD_KEYS if k != "work_pool")

# Top-level keys of WARMUP_FINISHED's payload (WarmupResult.to_dict(); a test keeps them equal).
FINISHED_PAYLOAD_KEYS: tuple[str, ...] = (
    "ok",
    "verdict",
    "passed",
    "total_s",
    "target_s",
    "mode",
    "dominant_phase",
    "phases",
    "error",
    "comfy_root",
    "models_dir",
    "profile",
    "files",
    "comfy",
    "first_prompt",
    "warnings",
    "record",
    "published",
)


def trigger_parameters() -> dict[str, str]:
    """The ``warmup`` deployment trigger's ``parameters``: each from the started event."""
    return {key: "{{ event.payload.%s }}" % key for key in TRIGGER_PARAMETER_KEYS}  # noqa: UP031


def instance_resource(instance_id: str) -> str:
    """The ``prefect.resource.id`` of an instance's events."""
    return f"{INSTANCE_RESOURCE_PREFIX}{instance_id}"
