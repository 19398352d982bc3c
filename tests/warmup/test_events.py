"""The warm-up's event names and payload keys are spelled once (comfyfleet.warmup.events):
the result document, the flow's trigger parameters and prefect.yaml agree with them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from comfyfleet.warmup import events
from comfyfleet.warmup.driver import WarmupOptions, WarmupSession
from tests.warmup.mirrored import facts

REPO = Path(__file__).resolve().parents[2]


def test_finished_payload_keys_are_the_result_documents_keys(tmp_path: Path) -> None:
    session = WarmupSession(
        WarmupOptions(comfy_root=tmp_path, mode="baked"),
        store=None,
        catalog=None,
        facts=facts(tmp_path, 12),
    )
    data: dict[str, Any] = session.finish().to_dict()
    assert tuple(data) == events.FINISHED_PAYLOAD_KEYS


def test_the_flow_trigger_takes_every_started_key_it_accepts_as_a_parameter() -> None:
    from flows.warmup import EVENT_PARAMETERS

    assert {
        k: f"{{{{ event.payload.{k} }}}}" for k in events.TRIGGER_PARAMETER_KEYS
    } == EVENT_PARAMETERS
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    (warmup,) = [d for d in spec["deployments"] if d["name"] == "warmup"]
    (trigger,) = warmup["triggers"]
    assert trigger["expect"] == [events.INSTANCE_STARTED]
    assert trigger["parameters"] == EVENT_PARAMETERS
