"""The ``mirror-models`` and ``mirror-refresh`` flows on Prefect's real engine."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.events.filters import (
    EventFilter,
    EventNameFilter,
    EventOccurredFilter,
    EventRelatedFilter,
)
from prefect.states import Failed

from comfyfleet.errors import GatedRepoError, SourceUnavailable
from comfyfleet.store.local import LocalStore
from comfyfleet.store.manifest import read_manifest
from flows._common import transient_only as _transient_only
from flows.mirror import mirror_models_flow, mirror_refresh_flow
from tests.doubles.faults import Faults, Request, Server, serve_bytes
from tests.doubles.hf_hub import FakeHub
from tests.mirror.support import payload, sha

pytestmark = pytest.mark.flow


def artifacts_of(flow_run_id: UUID) -> dict[str, Any]:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    by_type: dict[str, Any] = {}
    for artifact in found:
        by_type.setdefault(artifact.type, []).append(artifact)
    return by_type


def catalog(tmp_path: Path, *files: str, repo: str = "org/l") -> str:
    models = [
        {
            "id": f.split(".")[0],
            "folder": "loras",
            "file": f,
            "source": {"type": "hf", "repo": repo, "revision": "main", "path": f},
        }
        for f in files
    ]
    path = tmp_path / "cat.yaml"
    path.write_text(yaml.safe_dump({"schema": 1, "models": models}))
    return str(path)


def test_flow_mirrors_and_writes_artifacts(
    prefect_harness: None, hub: FakeHub, tmp_path: Path
) -> None:
    a, b = payload(90_000, seed=1), payload(70_000, seed=2)
    hub.add_file("org/l", "a.safetensors", a)
    hub.add_file("org/l", "b.safetensors", b)
    store = tmp_path / "store"
    state = mirror_models_flow(
        catalog_paths=[catalog(tmp_path, "a.safetensors", "b.safetensors")],
        profile="full",
        store=str(store),
        max_parallel=2,
        return_state=True,
    )
    assert state.is_completed(), state
    rows = state.result()
    assert [(r["id"], r["status"]) for r in rows] == [("a", "mirrored"), ("b", "mirrored")]
    assert {e.id: e.sha256 for e in read_manifest(LocalStore(store)).entries} == {
        "a": sha(a),
        "b": sha(b),
    }
    arts = artifacts_of(state.state_details.flow_run_id)
    (table,) = arts["table"]
    assert table.key == "mirror-results"
    data = table.data if isinstance(table.data, list) else yaml.safe_load(table.data)
    assert [row["status"] for row in data] == ["mirrored", "mirrored"]
    assert set(data[0]) == {"file", "bytes", "seconds", "MB/s", "sha256", "status", "error"}
    assert data[0]["sha256"] == sha(a)
    (markdown,) = arts["markdown"]
    assert "| 2 | 0 | 0 |" in str(markdown.data)
    (progress,) = arts["progress"]
    assert float(progress.data) == 100.0

    # Second run: everything skipped, not a byte downloaded.
    gets = sum(1 for r in hub.requests if r.server == "cdn")
    again = mirror_models_flow(
        catalog_paths=[catalog(tmp_path, "a.safetensors", "b.safetensors")],
        ids=["a", "b"],
        store=str(store),
        return_state=True,
    )
    assert [r["status"] for r in again.result()] == ["skipped", "skipped"]
    assert sum(1 for r in hub.requests if r.server == "cdn") == gets


def test_flow_fails_when_a_file_fails_after_writing_artifacts(
    prefect_harness: None, hub: FakeHub, tmp_path: Path
) -> None:
    hub.add_file("org/l", "good.safetensors", payload(10_000))
    store = tmp_path / "store"
    state = mirror_models_flow(
        catalog_paths=[catalog(tmp_path, "good.safetensors", "missing.safetensors")],
        profile=None,
        store=str(store),
        return_state=True,
    )
    assert state.is_failed()
    assert "1 of 2 file(s) failed to mirror: missing: SourceNotFound" in str(state.message)
    arts = artifacts_of(state.state_details.flow_run_id)
    (table,) = arts["table"]
    data = table.data if isinstance(table.data, list) else yaml.safe_load(table.data)
    by_file = {row["file"]: row for row in data}
    assert by_file["models/loras/good.safetensors"]["status"] == "mirrored"
    bad = by_file["models/loras/missing.safetensors"]
    assert bad["status"] == "failed" and "SourceNotFound" in bad["error"]
    # The good file still reached the manifest.
    assert [e.id for e in read_manifest(LocalStore(store)).entries] == ["good"]


def test_retry_condition_allows_only_transient_errors() -> None:
    assert _transient_only(None, None, Failed(data=SourceUnavailable("503")))
    assert not _transient_only(None, None, Failed(data=GatedRepoError("gated")))
    assert not _transient_only(None, None, Failed(data=ValueError("bug")))


def test_refresh_flow_reports_new_commit(
    prefect_harness: None, hub: FakeHub, tmp_path: Path
) -> None:
    hub.add_file("org/l", "a.safetensors", payload(5_000, seed=1))
    store = tmp_path / "store"
    cat = catalog(tmp_path, "a.safetensors")
    first = mirror_models_flow(
        catalog_paths=[cat], profile=None, store=str(store), return_state=True
    )
    assert first.is_completed()
    clean = mirror_refresh_flow(catalog_paths=[cat], store=str(store), return_state=True)
    assert clean.is_completed() and clean.result() == []  # nothing changed: green
    new_commit = hub.add_file("org/l", "a.safetensors", payload(5_000, seed=2))
    state = mirror_refresh_flow(catalog_paths=[cat], store=str(store), return_state=True)
    # Changes upstream end in a state an operator notices (see the flow's docstring).
    assert state.is_failed() and state.name == "UpstreamChanged", state
    assert "upstream changed for 1 file(s)" in str(state.message) and ": a;" in str(state.message)
    kinds = {(c["id"], c["kind"]) for c in state.result(raise_on_failure=False)}
    assert ("a", "new-commit") in kinds and ("a", "changed-sha256") in kinds
    arts = artifacts_of(state.state_details.flow_run_id)
    assert new_commit[:12] in str(arts["markdown"][0].data)
    # Reported only: the store still holds the old bytes.
    assert LocalStore(store).get_bytes("models/loras/a.safetensors") == payload(5_000, seed=1)


def _events(name: str, flow_run_id: UUID) -> list[Any]:
    """Events named ``name`` related to the flow run, read back from the Prefect server."""
    deadline = time.monotonic() + 30
    while True:
        with get_client(sync_client=True) as client:
            page = client.read_events(
                filter=EventFilter(
                    event=EventNameFilter(name=[name]),
                    related=EventRelatedFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
                    occurred=EventOccurredFilter(since=datetime.now(UTC) - timedelta(hours=1)),
                ),
                limit=50,
            )
        if page.events or time.monotonic() > deadline:
            return list(page.events)
        time.sleep(0.5)  # the server persists events asynchronously


def test_refresh_emits_upstream_changed_for_changes_and_unreachable_sources(
    prefect_harness: None, hub: FakeHub, tmp_path: Path
) -> None:
    hub.add_file("org/l", "a.safetensors", payload(5_000, seed=1))
    store = tmp_path / "store"
    cat = catalog(tmp_path, "a.safetensors", "gone.safetensors")
    assert mirror_models_flow(catalog_paths=[cat], ids=["a"], store=str(store), return_state=True)
    hub.add_file("org/l", "a.safetensors", payload(6_000, seed=3))
    # "gone" was never on the hub: its source cannot be asked (unreachable).
    state = mirror_refresh_flow(catalog_paths=[cat], store=str(store), return_state=True)
    assert state.is_failed() and state.name == "UpstreamChanged"
    (event,) = _events("comfyfleet.mirror.upstream-changed", state.state_details.flow_run_id)
    payload_ = event.payload
    assert payload_["ids"] == ["a", "gone"]
    assert payload_["unpinned_ids"] == ["a"] and payload_["unreachable_ids"] == ["gone"]
    assert payload_["kinds"]["unreachable"] == 1 and payload_["kinds"]["changed-size"] == 1
    assert event.resource["comfyfleet.mirror.unpinned"] == "true"
    assert event.resource.id.startswith("comfyfleet.mirror.")


def test_a_missing_tokens_block_fails_only_the_files_that_may_need_a_token(
    prefect_harness: None, hub: FakeHub, tmp_path: Path
) -> None:
    data = payload(30_000, seed=4)
    hub.add_file("org/l", "a.safetensors", payload(5_000, seed=1))

    def route(req: Request) -> None:
        serve_bytes(req, data, Faults())

    server = Server("files", route, [], threading.Lock())
    server.start()
    try:
        cat = tmp_path / "mixed.yaml"
        models = [
            {
                "id": "plain",
                "folder": "vae",
                "file": "plain.safetensors",
                "source": {"type": "url", "url": f"{server.url}/plain.safetensors"},
            },
            {
                "id": "hf",
                "folder": "loras",
                "file": "a.safetensors",
                "source": {"type": "hf", "repo": "org/l", "path": "a.safetensors"},
            },
        ]
        cat.write_text(yaml.safe_dump({"schema": 1, "models": models}))
        store = tmp_path / "store"
        only_url = mirror_models_flow(
            catalog_paths=[str(cat)],
            ids=["plain"],
            store=str(store),
            tokens_block="no-such-tokens-block",
            return_state=True,
        )
        assert only_url.is_completed(), only_url  # the block was never needed
        both = mirror_models_flow(
            catalog_paths=[str(cat)],
            store=str(store),
            tokens_block="no-such-tokens-block",
            return_state=True,
        )
    finally:
        server.stop()
    assert both.is_failed()
    assert "hf: BlockNotFound" in str(both.message) and "plain:" not in str(both.message)
    assert {e.id for e in read_manifest(LocalStore(store)).entries} == {"plain"}


def test_prefect_yaml_mirrors_unpinned_changes_on_the_upstream_changed_event() -> None:
    from deployments.serve import load_deployments, to_runner_deployments
    from flows.mirror import UPSTREAM_CHANGED_EVENT

    specs = {d["name"]: d for d in load_deployments()}
    (trigger,) = specs["mirror"]["triggers"]
    assert trigger["expect"] == [UPSTREAM_CHANGED_EVENT]
    assert trigger["match"]["comfyfleet.mirror.unpinned"] == "true"
    assert trigger["parameters"] == {"ids": "{{ event.payload.unpinned_ids }}"}
    (runner,) = [r for r in to_runner_deployments(load_deployments()) if r.name == "mirror-serve"]
    (automation,) = runner.triggers
    assert automation.expect == {UPSTREAM_CHANGED_EVENT}


def test_flow_retries_whole_files_through_the_task_only(
    prefect_harness: None, hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retry rule: the task owns whole-file retries; the driver starts the file once per
    task attempt (FLOW_FILE_ATTEMPTS), so attempts add up instead of multiplying."""
    import flows.mirror as mirror_flows

    hub.add_file("org/l", "a.safetensors", payload(5_000))
    monkeypatch.setattr(
        mirror_flows,
        "mirror_file_task",
        mirror_flows.mirror_file_task.with_options(retries=2, retry_delay_seconds=0),
    )
    hub.faults.fail(503, times=None, where="resolve")
    state = mirror_models_flow(
        catalog_paths=[catalog(tmp_path, "a.safetensors")],
        store=str(tmp_path / "store"),
        return_state=True,
    )
    assert state.is_failed() and "SourceUnavailable" in str(state.message)
    starts = [r for r in hub.requests if "/resolve/" in r.path]
    assert len(starts) == 3  # 1 start x (1 try + 2 task retries); was 3 x 3
