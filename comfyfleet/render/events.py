"""The Prefect events the start-up assets emit, and the payload keys they carry: one place.

The on-start script (``--via worker``) emits :data:`INSTANCE_STARTED` with a payload of
:data:`STARTED_PAYLOAD_KEYS`; ``prefect.yaml``'s ``warmup`` trigger expects that event and
maps each key but ``work_pool`` to the flow parameter of the same name (a test checks the
YAML against these constants). After a warm-up the script emits :data:`WARMUP_FINISHED`
with the warm-up's JSON report as payload. The resource of both is
``comfyfleet.instance.<instance id>`` (:func:`instance_resource`).
"""

from __future__ import annotations

INSTANCE_STARTED = "comfyfleet.instance.started"
WARMUP_FINISHED = "comfyfleet.warmup.finished"

# What the started event's payload holds, in this order (every value a string).
STARTED_PAYLOAD_KEYS: tuple[str, ...] = (
    "comfy_root",
    "profile",
    "mode",
    "verify",
    "comfy_url",
    "instance_id",
    "work_pool",
)
# Payload keys the `warmup` deployment's trigger passes on as flow parameters.
TRIGGER_PARAMETER_KEYS: tuple[str, ...] = tuple(k for k in STARTED_PAYLOAD_KEYS if k != "work_pool")

INSTANCE_RESOURCE_PREFIX = "comfyfleet.instance."


def instance_resource(instance_id: str) -> str:
    """The ``prefect.resource.id`` of an instance's events."""
    return f"{INSTANCE_RESOURCE_PREFIX}{instance_id}"
