"""The ``warmup`` flow on Prefect's real engine: tasks per phase, artifacts, failure."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from comfyfleet.errors import ConfigError
from comfyfleet.warmup.lock import RootLock
from comfyfleet.warmup.reports import read_history
from tests.support.comfyui_launcher import DiskComfyUI

from .mirrored import content, mirror, mirrored_root, write_catalog

pytestmark = pytest.mark.flow


async def _artifacts(flow_run_id: Any) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async with get_client() as client:
        return list(
            await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
                )
            )
        )


async def _task_names(flow_run_id: Any) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return sorted(r.name.rsplit("-", 1)[0] for r in runs)


def test_warmup_flow_runs_each_phase_as_a_task_and_reports(
    prefect_harness: None, tmp_path: Path, local_store: Any
) -> None:
    from flows.warmup import warmup

    mirror(local_store)
    catalog = str(write_catalog(tmp_path / "catalog.yaml"))
    root = tmp_path / "ComfyUI"
    root.mkdir()
    with DiskComfyUI(root) as fake:
        state = warmup(
            comfy_root=str(root),
            store=local_store.uri,
            catalog=[catalog],
            vram_gb=12,
            comfy_url=fake.url,
            instance_id="C.77",
            boot_timeout_s=20,
            return_state=True,
        )
    assert state.is_completed()
    result = state.result()
    assert result["ok"] and result["profile"]["name"] == "image"
    assert (root / "models/checkpoints/base.safetensors").read_bytes() == content("base")
    run_id = state.state_details.flow_run_id
    names = asyncio.run(_task_names(run_id))
    assert names == sorted(["preflight", "pull", "place", "comfy-boot", "first-prompt"])
    artifacts = asyncio.run(_artifacts(run_id))
    by_key = {a.key: a for a in artifacts if a.key}
    assert {"warmup-phases-c-77", "warmup-summary-c-77", "warmup-timeline-c-77"} <= set(by_key)
    assert by_key["warmup-summary-c-77"].data.startswith("# Warm-up PASS")
    assert "pull" in str(by_key["warmup-phases-c-77"].data)
    assert any(a.type == "progress" for a in artifacts)
    assert read_history(local_store)["instance_id"].tolist() == ["C.77"]


def test_warmup_flow_fails_on_a_failed_phase_and_records_it(
    prefect_harness: None, tmp_path: Path, local_store: Any
) -> None:
    from flows.warmup import warmup

    mirror(local_store, ["base", "vae"])
    catalog = str(write_catalog(tmp_path / "catalog.yaml"))
    root = tmp_path / "ComfyUI"
    root.mkdir()
    state = warmup(
        comfy_root=str(root),
        store=local_store.uri,
        catalog=[catalog],
        vram_gb=12,
        profile="image",
        return_state=True,
    )
    assert state.is_failed()
    with pytest.raises(ConfigError, match="not mirrored"):
        state.result()
    history = read_history(local_store)
    assert history["verdict"].tolist() == ["FAIL"]
    assert "not mirrored" in history["error"][0]
    artifacts = asyncio.run(_artifacts(state.state_details.flow_run_id))
    summary = next(a for a in artifacts if a.key == "warmup-summary")
    assert summary.data.startswith("# Warm-up FAIL")


def test_python_m_flows_warmup_takes_the_cli_options(
    prefect_harness: None, tmp_path: Path, local_store: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.warmup import main

    root, args = mirrored_root(tmp_path, local_store)
    argv = [*args, "--gpu", "none", "--json"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] and data["profile"]["name"] == "minimal"
    with RootLock(root):
        assert main(argv) == 1
    failed = json.loads(capsys.readouterr().out)
    assert failed["error"]["type"] == "LockHeldError"


def _comparable(data: dict[str, Any], root: Path) -> dict[str, Any]:
    """What a warm-up did, independent of where and when it ran."""
    return {
        "ok": data["ok"],
        "verdict": data["verdict"],
        "profile": data["profile"]["name"],
        "phases": [(p["name"], p["status"]) for p in data["phases"]],
        "files": sorted(
            (f["key"], f["status"], f["verified"], str(Path(f["dest"]).relative_to(root)))
            for f in data["files"]
        ),
        "listed": data["comfy"]["models_listed"],
        "placed": sorted(str(p.relative_to(root)) for p in root.rglob("*.safetensors")),
    }


def test_cli_and_flow_run_the_same_warmup(
    prefect_harness: None, tmp_path: Path, local_store: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from comfyfleet.cli import main
    from flows.warmup import warmup

    results = {}
    for face in ("cli", "flow"):
        (tmp_path / face).mkdir()
        root, args = mirrored_root(tmp_path / face, local_store)
        with DiskComfyUI(root) as fake:
            common = ["--vram-gb", "12", "--comfy-url", fake.url, "--no-history"]
            if face == "cli":
                assert main(["warmup", *args, *common, "--json"]) == 0
                data = json.loads(capsys.readouterr().out)
            else:
                data = warmup(
                    comfy_root=str(root),
                    store=local_store.uri,
                    catalog=[str(tmp_path / face / "catalog.yaml")],
                    vram_gb=12,
                    comfy_url=fake.url,
                    history=False,
                )
        results[face] = _comparable(data, root)
    assert results["cli"] == results["flow"]
    assert results["cli"]["profile"] == "image" and len(results["cli"]["placed"]) == 3
